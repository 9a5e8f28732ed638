using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Moe.Gating;

namespace ILGpuMoE.Tests.Kernels.Moe;

/// <summary>
/// The routing of the new families through the MoE data path: gating (V1, V2) at Qwen3's E = 128, K = 8 and Qwen1.5's
/// E = 60, K = 4 with 4 shared slots, its ids through moe/permute with E' = E + m experts and K' = K + m slots, and
/// Qwen2-MoE's shared expert computed as m stacked, zero-padded F-wide experts of the same MoeBlock launch against
/// Hugging Face's formula (routed block + sigmoid(gate) * shared SwiGLU MLP of width Fs, unpadded).
/// </summary>
public class SharedExpertTests
{
    private static readonly GatingVersion[] Versions = [GatingVersion.V1, GatingVersion.V2];

    /// <summary>Gating on the device, its outputs read back (ids [T, K + m], weights [T, K + m]).</summary>
    private static RefRouting Gate(GatingVersion version, RouterSpec spec, float[] logits, int tokens)
    {
        var acc = TestDevice.Accelerator;
        using var gating = GatingKernel.Create(acc, version);
        using var l = TestDevice.Upload(logits);
        using var ids = TestDevice.PoisonedInts((long)tokens * spec.SlotsPerToken);
        using var w = TestDevice.PoisonedFloats((long)tokens * spec.SlotsPerToken);
        gating.Launch(acc.DefaultStream, spec, l.View, ids.View, w.View, tokens);
        acc.Synchronize();
        return new RefRouting(ids.GetAsArray1D(), w.GetAsArray1D(), tokens, spec.SlotsPerToken, 0);
    }

    [TestCase(5, 128, 8, 0, 8)]
    [TestCase(3, 60, 4, 4, 8)]
    [TestCase(4, 60, 4, 4, 32)]
    [TestCase(2, 64, 8, 8, 8)]
    public void GatingThenPermuteAtQwenShapes(int tokens, int experts, int k, int shared, int tileRows)
    {
        var spec = RouterSpec.SoftmaxTopK(experts, k).WithSharedSlots(shared);
        var logits = GatingTests.SeparatedLogits(40 + tokens + experts, tokens, spec.LogitsPerToken);
        var expected = RefMoe.Route(GatingTests.ToRef(spec), logits, tokens);
        foreach (var v in Versions)
        {
            var got = Gate(v, spec, logits, tokens);
            Assert.That(got.ExpertIds, Is.EqualTo(expected.ExpertIds), $"{v} ids");
            Check.Close(expected.Weights, got.Weights, 1e-5, 1e-6, $"{v} weights");
            // The permutation sees E' = E + m experts and K' = K + m slots per token.
            MoePermuteTests.CheckAgainstReference(got, experts + shared, tileRows);
        }
    }

    /// <summary>
    /// Routed experts E = 8 (K = 2, Mixtral or SoftmaxTopK), shared expert of width Fs = 60 over F = 24: m = 3 chunks,
    /// the last padded from 12 to 24 with zero rows (w1, w3) and zero columns (w2). Gating V2 with 3 shared slots feeds
    /// the MoeBlock (E' = 11, K' = 5) on the device; expected = RefMoe.MoeBlock over the K routed slots + sigmoid(gate
    /// logit) * the shared MLP (RefMoe.MoeBlock of one unpadded expert of hidden Fs with that weight).
    /// </summary>
    [TestCase(GroupedGemmVersion.V1Simple, RouterKind.SoftmaxTopK)]
    [TestCase(GroupedGemmVersion.V2Tiled, RouterKind.SoftmaxTopK)]
    [TestCase(GroupedGemmVersion.V3Gemv, RouterKind.Mixtral)]
    public void SharedExpertAsStackedExpertsMatchesHuggingFaceFormula(GroupedGemmVersion version, RouterKind kind)
    {
        const int tokens = 5, dim = 40, hidden = 24, experts = 8, k = 2, sharedHidden = 60;
        int m = (sharedHidden + hidden - 1) / hidden;
        var spec = new RouterSpec(kind, experts, k, sharedSlots: m);
        var logits = Data.Gaussian(11, (long)tokens * spec.LogitsPerToken, 2);
        var x = Data.Uniform(12, (long)tokens * dim);
        var w1 = MoeTestData.ExpertWeights(13, experts, hidden, dim);
        var w3 = MoeTestData.ExpertWeights(14, experts, hidden, dim);
        var w2 = MoeTestData.ExpertWeights(15, experts, dim, hidden);
        var sg = Data.Uniform(16, (long)sharedHidden * dim, 1f / MathF.Sqrt(dim));   // shared gate_proj [Fs, D]
        var su = Data.Uniform(17, (long)sharedHidden * dim, 1f / MathF.Sqrt(dim));   // shared up_proj [Fs, D]
        var sd = Data.Uniform(18, (long)dim * sharedHidden, 1f / MathF.Sqrt(sharedHidden)); // shared down_proj [D, Fs]

        // Expected, as Hugging Face's Qwen2MoeSparseMoeBlock: routed output + sigmoid(gate logit) * shared_expert(x).
        var routing = RefMoe.Route(GatingTests.ToRef(spec), logits, tokens);
        var routed = new RefRouting(
            Enumerable.Range(0, tokens).SelectMany(t => routing.ExpertIds.Skip(t * (k + m)).Take(k)).ToArray(),
            Enumerable.Range(0, tokens).SelectMany(t => routing.Weights.Skip(t * (k + m)).Take(k)).ToArray(), tokens, k, 0);
        var gate = Enumerable.Range(0, tokens)
            .Select(t => (float)(1 / (1 + Math.Exp(-(double)logits[t * spec.LogitsPerToken + experts])))).ToArray();
        var routedOut = RefMoe.MoeBlock(x, routed, w1, w3, w2, tokens, dim, hidden);
        var sharedOut = RefMoe.MoeBlock(x, new RefRouting(new int[tokens], gate, tokens, 1, 0), [sg], [su], [sd], tokens, dim, sharedHidden);
        var expected = routedOut.Select((v, i) => (float)((double)v + sharedOut[i])).ToArray();
        Assert.That(sharedOut.Max(MathF.Abs), Is.GreaterThan(0.05f), "the shared expert contributes");

        // The stacking the runtime does: chunk j holds shared hidden units [j F, (j + 1) F), zero past Fs.
        var s1 = w1.Concat(Chunks(sg, rowsFirst: true)).ToArray();
        var s3 = w3.Concat(Chunks(su, rowsFirst: true)).ToArray();
        var s2 = w2.Concat(Chunks(sd, rowsFirst: false)).ToArray();

        var acc = TestDevice.Accelerator;
        using var gating = GatingKernel.Create(acc, GatingVersion.V2);
        using var l = TestDevice.Upload(logits);
        using var ids = TestDevice.PoisonedInts((long)tokens * (k + m));
        using var wts = TestDevice.PoisonedFloats((long)tokens * (k + m));
        using var ws = new MoeWorkspace(acc, tokens, k + m, experts + m, dim, hidden);
        MoeTestData.Poison(ws);
        using var xb = TestDevice.Upload(x);
        using var b1 = TestDevice.Upload(MoeTestData.Stack(s1));
        using var b3 = TestDevice.Upload(MoeTestData.Stack(s3));
        using var b2 = TestDevice.Upload(MoeTestData.Stack(s2));
        using var output = TestDevice.PoisonedFloats((long)tokens * dim);
        gating.Launch(acc.DefaultStream, spec, l.View, ids.View, wts.View, tokens);
        MoeTestData.BlockF32.Launch(acc.DefaultStream, ws, xb.View, ids.View, wts.View, tokens, new F32Weights(b1.View),
            new F32Weights(b3.View), new F32Weights(b2.View), output.View, version: version);
        acc.Synchronize();
        Check.Close(expected, output.GetAsArray1D(), 1e-5, 1e-5, $"{kind} shared expert in the grouped launch, {version}");

        // m F-wide chunks of the shared weights, zero-padded: [F, D] row blocks of w [Fs, D] (gate, up), or [D, F]
        // column blocks of w [D, Fs] (down).
        float[][] Chunks(float[] w, bool rowsFirst)
        {
            var chunks = new float[m][];
            for (int j = 0; j < m; j++)
            {
                chunks[j] = new float[hidden * dim];
                for (int f = 0; f < hidden && j * hidden + f < sharedHidden; f++)
                {
                    int fs = j * hidden + f;
                    for (int d = 0; d < dim; d++)
                    {
                        if (rowsFirst)
                            chunks[j][f * dim + d] = w[fs * dim + d];
                        else
                            chunks[j][d * hidden + f] = w[d * sharedHidden + fs];
                    }
                }
            }

            return chunks;
        }
    }
}
