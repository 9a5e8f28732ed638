// cpu/experts (CpuExperts.Run, the whole MoE block: sort by expert, gather, up/gate, activation, down, combine onto the
// residual) against the oracle's MoE blocks on the values the readers hold:
//   SiLU, no biases      RefMoe.MoeBlock (mistral-inference's loop over experts);
//   SiLU with biases     RefGroupedExperts.MoeBlock with a RefExpertActivation carrying the biases;
//   gpt-oss clamped GLU  RefExpertGlu.MoeBlock (alpha 1.702, limit 7, inputs scaled so that every clamp is hit).
// The kernel writes output = residual + MoE(x), so the expectation is RefOps.Add(residual, oracle). Routings (Kernels/Moe/
// MoeTestData.Routing): random, every token to the same experts, experts with no token, ids of -1 (Switch's drops, token
// 0 entirely), one token (decode), and routings from RefMoe.Route with shared slots (experts E..E+m-1 stacked after the
// routed ones: Qwen2's gated shared expert, DeepSeek's ungated one). Weights F32, BF16, F16, and GPTQ act-order int4
// (CpuQuantRows; each expert's input gathered through its own permutation); output NaN before the call, or the residual
// itself (in place). One and three workers give the same bits; the largest case is big enough that every step of the
// block is split over the three.
using ILGpuMoE.Cpu;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Moe;
using ILGpuMoE.Tests.Kernels.Moe.Gating;
using static ILGpuMoE.Tests.Cpu.CpuTestData;

namespace ILGpuMoE.Tests.Cpu;

/// <summary>The experts' activation in a test case.</summary>
public enum ExpertAct
{
    SiLU,
    SiLUWithBiases,
    GptOss,
}

public unsafe class CpuExpertsTests
{
    private const float Alpha = 1.702f, Limit = 7f;

    /// <summary>One MoE block problem: x [T, D], routing [T, slots] over E experts of hidden F, per-expert weights and biases.</summary>
    private sealed record Problem(int T, int D, int F, float[] X, RefRouting Routing, float[][] W1, float[][] W3, float[][] W2,
        float[][]? Bg, float[][]? Bu, float[][]? B2, float[] Residual)
    {
        public int Experts => W1.Length;

        public int Slots => Routing.TopK;

        public static Problem Make(int seed, RefRouting routing, int experts, int d, int f, ExpertAct act)
        {
            int t = routing.Tokens;
            bool biases = act != ExpertAct.SiLU;
            float[][]? Bias(int s, int n) => biases ? Enumerable.Range(0, experts).Select(e => Data.Uniform(s * 17 + e, n, 0.5f)).ToArray() : null;
            return new Problem(t, d, f,
                Data.Uniform(seed, (long)t * d, act == ExpertAct.GptOss ? 10f : 1f),
                routing,
                MoeTestData.ExpertWeights(seed + 1, experts, f, d),
                MoeTestData.ExpertWeights(seed + 2, experts, f, d),
                MoeTestData.ExpertWeights(seed + 3, experts, d, f),
                Bias(seed + 4, f), Bias(seed + 5, f), Bias(seed + 6, d),
                Data.Uniform(seed + 7, (long)t * d));
        }
    }

    /// <summary>The stacked readers of one problem in a stored type and the per-expert values they hold.</summary>
    private sealed record Readers(CpuMatrix W1, CpuMatrix W3, CpuMatrix W2, float[][] V1, float[][] V3, float[][] V2)
    {
        public static Readers Of(Problem p, DenseType type)
        {
            var (r1, v1) = Dense(type, MoeTestData.Stack(p.W1), p.Experts * p.F, p.D);
            var (r3, v3) = Dense(type, MoeTestData.Stack(p.W3), p.Experts * p.F, p.D);
            var (r2, v2) = Dense(type, MoeTestData.Stack(p.W2), p.Experts * p.D, p.F);
            return new Readers(r1, r3, r2, v1.Chunk(p.F * p.D).ToArray(), v3.Chunk(p.F * p.D).ToArray(), v2.Chunk(p.D * p.F).ToArray());
        }
    }

    /// <summary>residual + the oracle's MoE block on the readers' values.</summary>
    private static float[] Want(Problem p, Readers r, ExpertAct act)
    {
        var moe = act switch
        {
            ExpertAct.SiLU => RefMoe.MoeBlock(p.X, p.Routing, r.V1, r.V3, r.V2, p.T, p.D, p.F),
            ExpertAct.SiLUWithBiases => RefGroupedExperts.MoeBlock(p.X, p.Routing, r.V1, r.V3, r.V2,
                new RefExpertActivation(false, 1, 0, p.Bg, p.Bu, p.B2), p.D, p.F, RefRoundTo.None),
            ExpertAct.GptOss => RefExpertGlu.MoeBlock(p.X, p.Routing, r.V1, r.V3, r.V2, p.Bg, p.Bu, p.B2, p.T, p.D, p.F, Alpha, Limit),
            _ => throw new ArgumentOutOfRangeException(nameof(act), act, "unknown activation"),
        };
        return RefOps.Add(p.Residual, moe);
    }

    /// <summary>CpuExperts.Run with a NaN output, or in place on a copy of the residual.</summary>
    private static float[] Run(CpuThreads threads, CpuExpertScratch scratch, Problem p, Readers r, ExpertAct act, bool inPlace)
    {
        var output = inPlace ? (float[])p.Residual.Clone() : Nan((long)p.T * p.D);
        var residual = inPlace ? output : p.Residual;
        var bg = p.Bg is null ? null : MoeTestData.Stack(p.Bg);
        var bu = p.Bu is null ? null : MoeTestData.Stack(p.Bu);
        var b2 = p.B2 is null ? null : MoeTestData.Stack(p.B2);
        var ids = (int[])p.Routing.ExpertIds.Clone();
        // A dropped pair's weight is 0 from the router; NaN here, so that a kernel that read it (or its row) fails.
        var weights = p.Routing.Weights.Select((w, i) => ids[i] < 0 ? float.NaN : w).ToArray();
        fixed (float* px = p.X, pw = weights, po = output, pr = residual, pbg = bg, pbu = bu, pb2 = b2)
        fixed (int* pi = ids)
        {
            var glu = act switch
            {
                ExpertAct.SiLU => CpuGlu.SiLU,
                ExpertAct.SiLUWithBiases => new CpuGlu(false, 1f, 0f, pbg, pbu, pb2),
                ExpertAct.GptOss => new CpuGlu(true, Alpha, Limit, pbg, pbu, pb2),
                _ => throw new ArgumentOutOfRangeException(nameof(act), act, "unknown activation"),
            };
            CpuExperts.Run(threads, scratch, px, pi, pw, p.T, p.Slots, p.Experts, r.W1, r.W3, r.W2, glu, po, pr);
        }

        Assert.That(ids, Is.EqualTo(p.Routing.ExpertIds), "ids are read only");
        return output;
    }

    /// <summary>Runs with one worker and three (same scratch), checks both against the oracle's block, returns the first.</summary>
    private static float[] CheckBlock(Problem p, DenseType type, ExpertAct act, bool inPlace, string what)
    {
        var r = Readers.Of(p, type);
        var want = Want(p, r, act);
        var scratch = new CpuExpertScratch();
        var one = Run(One, scratch, p, r, act, inPlace);
        Check.Close(want, one, 1e-5, 1e-5 * want.Max(Math.Abs), what);
        Check.BitEqual(one, Run(Three, scratch, p, r, act, inPlace), what + ": 3 workers vs 1");
        return one;
    }

    // (type, T, K, E, routing, activation, in place); D = 40, F = 24.
    private static IEnumerable<TestCaseData> Cases() =>
    [
        new TestCaseData(DenseType.F32, 5, 2, 4, RoutingShape.Random, ExpertAct.SiLU, false),
        new TestCaseData(DenseType.F32, 1, 4, 6, RoutingShape.Random, ExpertAct.SiLU, false),
        new TestCaseData(DenseType.F32, 1, 1, 3, RoutingShape.Random, ExpertAct.SiLU, true),
        new TestCaseData(DenseType.F32, 7, 2, 6, RoutingShape.SkipExperts, ExpertAct.SiLU, true),
        new TestCaseData(DenseType.F32, 6, 2, 5, RoutingShape.AllToOne, ExpertAct.SiLU, false),
        new TestCaseData(DenseType.F32, 9, 3, 5, RoutingShape.Dropped, ExpertAct.SiLU, false),
        new TestCaseData(DenseType.BF16, 5, 2, 4, RoutingShape.Random, ExpertAct.SiLU, true),
        new TestCaseData(DenseType.BF16, 6, 1, 4, RoutingShape.Dropped, ExpertAct.SiLU, false),
        new TestCaseData(DenseType.F16, 3, 2, 4, RoutingShape.Random, ExpertAct.SiLU, false),
        new TestCaseData(DenseType.F32, 5, 2, 5, RoutingShape.Random, ExpertAct.SiLUWithBiases, false),
        new TestCaseData(DenseType.BF16, 4, 2, 6, RoutingShape.SkipExperts, ExpertAct.SiLUWithBiases, true),
        new TestCaseData(DenseType.F32, 3, 2, 5, RoutingShape.SkipExperts, ExpertAct.GptOss, false),
        new TestCaseData(DenseType.F32, 1, 4, 5, RoutingShape.Random, ExpertAct.GptOss, false),
        new TestCaseData(DenseType.BF16, 9, 4, 5, RoutingShape.Random, ExpertAct.GptOss, false),
        new TestCaseData(DenseType.F32, 5, 1, 5, RoutingShape.AllToOne, ExpertAct.GptOss, true),
        new TestCaseData(DenseType.F32, 6, 2, 5, RoutingShape.Dropped, ExpertAct.GptOss, false),
    ];

    [TestCaseSource(nameof(Cases))]
    public void BlockMatchesReference(DenseType type, int t, int k, int experts, RoutingShape shape, ExpertAct act, bool inPlace)
    {
        const int d = 40, f = 24;
        int seed = 100 + t * 31 + k * 7 + experts + (int)shape * 3 + (int)act;
        var routing = MoeTestData.Routing(seed, t, k, experts, shape);
        var p = Problem.Make(seed, routing, experts, d, f, act);
        if (act == ExpertAct.GptOss)
            ExpertGluTests.AssertClampsHit(p.X, routing, p.W1, p.W3, p.Bg!, p.Bu!, d, f, Limit);
        string what = $"{type} T={t} K={k} E={experts} {shape} {act} inPlace={inPlace}";
        var got = CheckBlock(p, type, act, inPlace, what);

        // A token whose every slot was dropped gets the residual, bit for bit; an expert without a token changes nothing.
        for (int i = 0; i < t; i++)
        {
            if (routing.ExpertIds.AsSpan(i * k, k).IndexOfAnyExcept(-1) < 0)
                Check.BitEqual(p.Residual.AsSpan(i * d, d), got.AsSpan(i * d, d), $"{what}: fully dropped token {i}");
        }

        if (shape == RoutingShape.Dropped)
            Assert.That(routing.ExpertIds.AsSpan(0, k).ToArray(), Is.All.EqualTo(-1), "the Dropped routing drops token 0 entirely");
    }

    /// <summary>
    /// 128 tokens, K = 2 over 4 experts, D = 160, F = 136: the gather, the up/gate and down tasks and the combine each
    /// exceed CpuThreads.InlineWork, so three workers really split every step; the bits equal one worker's.
    /// </summary>
    [Test]
    public void LargeBlockSplitOverWorkers([Values(DenseType.F32, DenseType.BF16)] DenseType type)
    {
        const int t = 128, k = 2, experts = 4, d = 160, f = 136;
        var routing = MoeTestData.Routing(200, t, k, experts, RoutingShape.Random);
        CheckBlock(Problem.Make(201, routing, experts, d, f, ExpertAct.SiLU), type, ExpertAct.SiLU, false, $"{type} T={t}");
    }

    /// <summary>
    /// Shared experts as stacked experts E..E+m-1 (slots K + m per token) routed by RefMoe.Route: Qwen2-MoE's gated
    /// shared expert (SoftmaxTopK, its slots at sigmoid(logit[E])) and DeepSeek-V3's ungated ones (weight 1), i.e. a
    /// dense MLP cut into m F-wide chunks.
    /// </summary>
    [TestCase(RouterKind.SoftmaxTopK, 5, 6, 2, 2)]
    [TestCase(RouterKind.Mixtral, 1, 8, 2, 3)]
    [TestCase(RouterKind.DeepSeekV3, 4, 8, 2, 2)]
    public void SharedExpertSlotsMatchReference(RouterKind kind, int t, int experts, int k, int shared)
    {
        const int d = 40, f = 24;
        var spec = (kind == RouterKind.DeepSeekV3 ? RouterSpec.DeepSeekV3(experts, k, 2, 1, true, 2.5) : new RouterSpec(kind, experts, k))
            .WithSharedSlots(shared);
        var logits = GatingTests.SeparatedLogits(300 + t + experts, t, spec.LogitsPerToken);
        var bias = kind == RouterKind.DeepSeekV3 ? Data.Uniform(301, experts, 0.1f) : null;
        var routing = RefMoe.Route(GatingTests.ToRef(spec), logits, t, ReadOnlySpan<float>.Empty, bias ?? ReadOnlySpan<float>.Empty);
        Assert.That(routing.TopK, Is.EqualTo(k + shared));
        var p = Problem.Make(302 + t, routing, experts + shared, d, f, ExpertAct.SiLU);
        CheckBlock(p, DenseType.F32, ExpertAct.SiLU, inPlace: true, $"{spec}");
    }

    /// <summary>One scratch reused by a large block, then a small one: the small block's bits are those of a fresh scratch.</summary>
    [Test]
    public void ScratchReusedAcrossShapes()
    {
        const int d = 40, f = 24;
        var big = Problem.Make(400, MoeTestData.Routing(400, 17, 3, 6, RoutingShape.Random), 6, d, f, ExpertAct.SiLU);
        var small = Problem.Make(401, MoeTestData.Routing(401, 2, 2, 6, RoutingShape.Random), 6, d, f, ExpertAct.SiLU);
        var rb = Readers.Of(big, DenseType.F32);
        var rs = Readers.Of(small, DenseType.F32);
        var fresh = Run(One, new CpuExpertScratch(), small, rs, ExpertAct.SiLU, false);
        var scratch = new CpuExpertScratch();
        Run(Three, scratch, big, rb, ExpertAct.SiLU, false);
        Check.BitEqual(fresh, Run(Three, scratch, small, rs, ExpertAct.SiLU, false), "small block after a big one");
        Check.Close(Want(small, rs, ExpertAct.SiLU), fresh, 1e-5, 1e-5, "small block");
    }

    /// <summary>
    /// GPTQ act-order experts (int4 codes stored in group order, each expert its own permutation, w3 sharing w1's as the
    /// loader arranges; down F32): the block gathers each token's input through its expert's permutation (step 2) before
    /// up and gate. Against RefMoe.MoeBlock on the oracle's dequantization (RefQuant.DequantGptq, input column order).
    /// </summary>
    [Test]
    public void ActOrderExpertsGatherThroughTheirPermutations()
    {
        const int t = 6, k = 2, experts = 4, d = 64, f = 16, g = 32;
        var rng = new Random(800);
        var routing = MoeTestData.Routing(800, t, k, experts, RoutingShape.Random);
        var q1 = new QuantizedMatrix[experts];
        var q3 = new QuantizedMatrix[experts];
        var v1 = new float[experts][];
        var v3 = new float[experts][];
        for (int e = 0; e < experts; e++)
        {
            var gIdx = Enumerable.Range(0, d).Select(c => c % (d / g)).ToArray();
            rng.Shuffle(gIdx);
            (q1[e], v1[e]) = Gptq(rng, gIdx, d, f, g);
            (q3[e], v3[e]) = Gptq(rng, gIdx, d, f, g);
            Assert.That(q3[e].InputPermutation, Is.EqualTo(q1[e].InputPermutation), "w3 shares w1's permutation");
        }

        var w1 = CpuQuantRows.Of(QuantizedMatrix.Stack(q1));
        var w3 = CpuQuantRows.Of(QuantizedMatrix.Stack(q3));
        var perm = w1.InputPermutation;
        Assert.That(perm, Is.Not.Null.And.Length.EqualTo(experts * d), "stacked [E, D] permutation");
        Assert.That(Enumerable.Range(1, experts - 1).Any(e => !perm!.AsSpan(e * d, d).SequenceEqual(perm.AsSpan(0, d))), "the experts' permutations differ");

        var p = Problem.Make(801, routing, experts, d, f, ExpertAct.SiLU);
        var (w2, v2) = Dense(DenseType.F32, MoeTestData.Stack(p.W2), experts * d, f);
        var r = new Readers(w1, w3, w2, v1, v3, v2.Chunk(d * f).ToArray());
        var want = Want(p, r, ExpertAct.SiLU);
        var scratch = new CpuExpertScratch();
        var one = Run(One, scratch, p, r, ExpertAct.SiLU, inPlace: false);
        Check.Close(want, one, 1e-5, 1e-5 * want.Max(Math.Abs), "act-order experts");
        Check.BitEqual(one, Run(Three, scratch, p, r, ExpertAct.SiLU, inPlace: false), "3 workers vs 1");
    }

    /// <summary>A GPTQ int4 matrix [outDim, inDim] with random codes, zeros and F16 scales at gIdx, and the oracle's dequantization.</summary>
    private static (QuantizedMatrix M, float[] Values) Gptq(Random rng, int[] gIdx, int inDim, int outDim, int g)
    {
        int groups = inDim / g;
        var qweight = new int[inDim / 8 * outDim];
        for (int i = 0; i < qweight.Length; i++)
            qweight[i] = rng.Next(int.MinValue, int.MaxValue);
        var qzeros = new int[groups * (outDim / 8)];
        for (int i = 0; i < qzeros.Length; i++)
            qzeros[i] = rng.Next(int.MinValue, int.MaxValue);
        var scales = new ushort[groups * outDim];
        for (int i = 0; i < scales.Length; i++)
            scales[i] = BitConverter.HalfToUInt16Bits((Half)((rng.NextDouble() + 0.1) * 0.02));
        return (CheckpointRepack.FromGptq(qweight, qzeros, scales, gIdx, inDim, outDim, g),
            RefQuant.DequantGptq(qweight, qzeros, scales, gIdx, inDim, outDim, g));
    }

    [Test]
    public void RefusesIdsPastTheExperts()
    {
        const int d = 8, f = 8;
        var routing = new RefRouting([0, 4], [0.5f, 0.5f], 1, 2, 0);
        var p = Problem.Make(500, new RefRouting([0, 1], [0.5f, 0.5f], 1, 2, 0), 4, d, f, ExpertAct.SiLU) with { Routing = routing };
        var r = Readers.Of(p, DenseType.F32);
        Assert.Throws<ArgumentOutOfRangeException>(() => Run(One, new CpuExpertScratch(), p, r, ExpertAct.SiLU, false));
    }

    [Test]
    public void RefusesWeightsThatDoNotStack()
    {
        const int d = 8, f = 8, experts = 3;
        var p = Problem.Make(600, MoeTestData.Routing(600, 2, 1, experts, RoutingShape.Random), experts, d, f, ExpertAct.SiLU);
        var r = Readers.Of(p, DenseType.F32);
        var shortDown = CpuMatrix.FromFloat32(Data.Uniform(601, (experts - 1) * d * f), (experts - 1) * d, f);
        Assert.Throws<ArgumentException>(() => Run(One, new CpuExpertScratch(), p, r with { W2 = shortDown }, ExpertAct.SiLU, false));
    }
}
