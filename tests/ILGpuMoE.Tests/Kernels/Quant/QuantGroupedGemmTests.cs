using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Quant;
using ILGpuMoE.Tests.Kernels.Moe;

namespace ILGpuMoE.Tests.Kernels.Quant;

/// <summary>Grouped expert GEMMs over quantized experts (both MoE passes, one launch each) against the reference.</summary>
public class QuantGroupedGemmTests
{
    private const int Experts = 4, TopK = 2;

    private static readonly Lazy<QuantGroupedGemmKernel<Q8Weights>> Q8 = new(() => QuantGroupedGemmKernel<Q8Weights>.Create(TestDevice.Accelerator));
    private static readonly Lazy<QuantGroupedGemmKernel<Q4Weights>> Q4 = new(() => QuantGroupedGemmKernel<Q4Weights>.Create(TestDevice.Accelerator));
    private static readonly Lazy<QuantGroupedGemmKernel<Fp8Weights>> Fp8 = new(() => QuantGroupedGemmKernel<Fp8Weights>.Create(TestDevice.Accelerator));

    private static (int D, int F) Dims(string scheme) => scheme switch
    {
        "q4-sym-g32" => (32, 64),
        "q4-zero-g64" => (64, 64),
        "q4-row" => (96, 64), // w1/w3 one group of 96 per row, w2 one of 64
        "q4-spread-g32" => (64, 96), // w1/w3 two groups per row, w2 three, scales 4x-64x apart
        _ => (40, 56), // not multiples of 16: the packed rows carry padding
    };

    private static IEnumerable<TestCaseData> Cases() =>
        QuantTestData.Schemes.SelectMany(s => new[]
        {
            new TestCaseData(s, GroupedGemmVersion.V4PackedGemv, 3),
            new TestCaseData(s, GroupedGemmVersion.V2Tiled, 17),
        }).Concat(
        [
            new TestCaseData("q4-zero-g64", GroupedGemmVersion.V4PackedGemv, 17), // full 8-row decode tiles plus a remainder
            new TestCaseData("fp8-block", GroupedGemmVersion.V4PackedGemv, 1),    // one token: two experts of one row each
        ]);

    /// <summary>Each expert quantized on its own, then stacked (per-expert scales, as a checkpoint stores them).</summary>
    private static (QuantizedMatrix Packed, float[][] Dequant) Experts_(string scheme, int seed, int outDim, int inDim)
    {
        var parts = Enumerable.Range(0, Experts)
            .Select(e => QuantTestData.Quantize(scheme, Data.Gaussian(seed + e, (long)outDim * inDim, 1 / Math.Sqrt(inDim)), outDim, inDim))
            .ToArray();
        var stacked = QuantizedMatrix.Stack(parts);
        var dq = QuantTestData.RefDequant(stacked);
        var perExpert = Enumerable.Range(0, Experts).Select(e => dq.AsSpan(e * outDim * inDim, outDim * inDim).ToArray()).ToArray();
        // Stacking must not change any expert's values.
        for (int e = 0; e < Experts; e++)
            Check.BitEqual(QuantTestData.RefDequant(parts[e]), perExpert[e], $"stacked expert {e}");
        return (stacked, perExpert);
    }

    [TestCaseSource(nameof(Cases))]
    public void UpGateAndDownMatchReference(string scheme, GroupedGemmVersion version, int tokens)
    {
        var acc = TestDevice.Accelerator;
        var s = acc.DefaultStream;
        var (d, f) = Dims(scheme);
        var routing = MoeTestData.Routing(tokens * 13 + (int)version, tokens, TopK, Experts, RoutingShape.SkipExperts);
        var x = Data.Uniform(tokens + 5, (long)tokens * d);
        var (w1, w1q) = Experts_(scheme, 1000, f, d);
        var (w3, w3q) = Experts_(scheme, 2000, f, d);
        var (w2, w2q) = Experts_(scheme, 3000, d, f);

        int pairs = tokens * TopK;
        using var perm = new MoePermutation(acc, pairs, Experts, GroupedGemm.TileRows(version));
        using var ids = TestDevice.Upload(routing.ExpertIds);
        using var xb = TestDevice.Upload(x);
        using var d1 = w1.Upload(acc);
        using var d3 = w3.Upload(acc);
        using var d2 = w2.Upload(acc);
        using var h = TestDevice.PoisonedFloats((long)pairs * f);
        using var y = TestDevice.PoisonedFloats((long)pairs * d);
        MoeTestData.Permute.Launch(s, ids.View, tokens, TopK, perm);
        switch (w1.Scheme)
        {
            case QuantScheme.Q8:
                Q8.Value.LaunchUpGate(s, version, perm, xb.View, tokens, TopK, d, f, d1.View<Q8Weights>(), d3.View<Q8Weights>(), h.View);
                Q8.Value.LaunchDown(s, version, perm, h.View, tokens, TopK, d, f, d2.View<Q8Weights>(), y.View);
                break;
            case QuantScheme.Q4:
                Q4.Value.LaunchUpGate(s, version, perm, xb.View, tokens, TopK, d, f, d1.View<Q4Weights>(), d3.View<Q4Weights>(), h.View);
                Q4.Value.LaunchDown(s, version, perm, h.View, tokens, TopK, d, f, d2.View<Q4Weights>(), y.View);
                break;
            case QuantScheme.Fp8:
                Fp8.Value.LaunchUpGate(s, version, perm, xb.View, tokens, TopK, d, f, d1.View<Fp8Weights>(), d3.View<Fp8Weights>(), h.View);
                Fp8.Value.LaunchDown(s, version, perm, h.View, tokens, TopK, d, f, d2.View<Fp8Weights>(), y.View);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(scheme), w1.Scheme, "no grouped GEMM for this scheme");
        }

        acc.Synchronize();
        var sorted = perm.SortedPairs.GetAsArray1D();
        var counts = perm.Counts.GetAsArray1D();
        Assert.That(counts[Experts - 1], Is.EqualTo(0), "the routing leaves the last expert without tokens");

        // Expected order: pairs sorted by (expert, p), stable.
        var want = Enumerable.Range(0, pairs).OrderBy(p => routing.ExpertIds[p]).ThenBy(p => p).ToArray();
        Assert.That(sorted, Is.EqualTo(want));
        var hGot = h.GetAsArray1D();
        var yGot = y.GetAsArray1D();
        var hWant = new float[pairs * f];
        var yWant = new float[pairs * d];
        for (int r = 0; r < pairs; r++)
        {
            int p = sorted[r], e = routing.ExpertIds[p];
            var xt = x.AsSpan(p / TopK * d, d);
            var hr = RefOps.SwiGlu(RefOps.MatMulT(xt, w1q[e], 1, f, d), RefOps.MatMulT(xt, w3q[e], 1, f, d));
            hr.CopyTo(hWant, r * f);
            RefOps.MatMulT(hr, w2q[e], 1, d, f).CopyTo(yWant, r * d);
        }

        Check.Close(hWant, hGot, 1e-5, 1e-5, $"{scheme} {version} h");
        Check.Close(yWant, yGot, 1e-5, 1e-5, $"{scheme} {version} y");
    }

    [TestCase("q4-zero-g64", 3)]
    [TestCase("fp8-block", 17)]
    public void MoeBlockMatchesReferenceMoeBlock(string scheme, int tokens)
    {
        var acc = TestDevice.Accelerator;
        var (d, f) = Dims(scheme);
        var routing = MoeTestData.Routing(tokens * 7 + 1, tokens, TopK, Experts, RoutingShape.SkipExperts);
        var x = Data.Uniform(tokens + 9, (long)tokens * d);
        var (w1, w1q) = Experts_(scheme, 4000, f, d);
        var (w3, w3q) = Experts_(scheme, 5000, f, d);
        var (w2, w2q) = Experts_(scheme, 6000, d, f);
        var want = RefMoe.MoeBlock(x, routing, w1q, w3q, w2q, tokens, d, f);
        using var ws = new MoeWorkspace(acc, tokens, TopK, Experts, d, f);
        using var xb = TestDevice.Upload(x);
        using var ids = TestDevice.Upload(routing.ExpertIds);
        using var wts = TestDevice.Upload(routing.Weights);
        using var d1 = w1.Upload(acc);
        using var d3 = w3.Upload(acc);
        using var d2 = w2.Upload(acc);
        using var output = TestDevice.PoisonedFloats((long)tokens * d);
        if (w1.Scheme == QuantScheme.Q4)
            QuantMoeBlockKernels<Q4Weights>.Create(acc).Launch(acc.DefaultStream, ws, xb.View, ids.View, wts.View, tokens, d1.View<Q4Weights>(), d3.View<Q4Weights>(), d2.View<Q4Weights>(), output.View);
        else
            QuantMoeBlockKernels<Fp8Weights>.Create(acc).Launch(acc.DefaultStream, ws, xb.View, ids.View, wts.View, tokens, d1.View<Fp8Weights>(), d3.View<Fp8Weights>(), d2.View<Fp8Weights>(), output.View);
        acc.Synchronize();
        Check.Close(want, output.GetAsArray1D(), 1e-5, 1e-5, $"{scheme} MoE block T={tokens}");
    }

    // GPTQ act-order experts: expert e's packed column j is input column perm[e, j] of w1 and w3 (shared). The block
    // gathers each pair's input row in that order; the reference runs on the dequantized weights put back in input order.
    [TestCase(1, RoutingShape.Random)]       // one token: decode form (V3/V4)
    [TestCase(3, RoutingShape.SkipExperts)]  // an expert with no token
    [TestCase(5, RoutingShape.Dropped)]      // dropped pairs: zero gathered rows that no pass reads
    [TestCase(17, RoutingShape.AllToOne)]    // tiled V2, every token to the same experts
    public void ActOrderExpertsMatchReferenceOnUnpermutedWeights(int tokens, RoutingShape shape)
    {
        const int d = 96, f = 64; // three int4 groups of 32 along D; 96 is no multiple of the 64-wide tiles
        var acc = TestDevice.Accelerator;
        var routing = MoeTestData.Routing(tokens * 31 + (int)shape, tokens, TopK, Experts, shape);
        var x = Data.Uniform(tokens + 40, (long)tokens * d);
        var (w1, w1p) = Experts_("q4-sym-g32", 7000, f, d);
        var (w3, w3p) = Experts_("q4-sym-g32", 8000, f, d);
        var (w2, w2q) = Experts_("q4-sym-g32", 9000, d, f);
        // Expert 0 keeps input order (identity), the others get their own random order.
        var perms = Enumerable.Range(0, Experts)
            .Select(e => e == 0 ? Enumerable.Range(0, d).ToArray() : Shuffled(d, e * 977 + 3))
            .ToArray();
        for (int e = 1; e < Experts; e++)
            Assert.That(perms[e], Is.Not.EqualTo(perms[0]), "the test permutations must not be the identity");

        float[] InputOrder(float[] packed, int[] perm)
        {
            var w = new float[packed.Length];
            for (int n = 0; n < f; n++)
            {
                for (int j = 0; j < d; j++)
                    w[n * d + perm[j]] = packed[n * d + j];
            }

            return w;
        }

        var w1q = Enumerable.Range(0, Experts).Select(e => InputOrder(w1p[e], perms[e])).ToArray();
        var w3q = Enumerable.Range(0, Experts).Select(e => InputOrder(w3p[e], perms[e])).ToArray();
        var want = RefMoe.MoeBlock(x, routing, w1q, w3q, w2q, tokens, d, f);

        using var ws = new MoeWorkspace(acc, tokens, TopK, Experts, d, f, permutedInput: true);
        using var xb = TestDevice.Upload(x);
        using var ids = TestDevice.Upload(routing.ExpertIds);
        using var wts = TestDevice.Upload(routing.Weights);
        using var pb = TestDevice.Upload(perms.SelectMany(p => p).ToArray());
        using var d1 = w1.Upload(acc);
        using var d3 = w3.Upload(acc);
        using var d2 = w2.Upload(acc);
        using var output = TestDevice.PoisonedFloats((long)tokens * d);
        var block = QuantMoeBlockKernels<Q4Weights>.Create(acc);
        block.Launch(acc.DefaultStream, ws, xb.View, ids.View, wts.View, tokens, d1.View<Q4Weights>(), d3.View<Q4Weights>(), d2.View<Q4Weights>(), output.View, inputPermutation: pb.View);
        acc.Synchronize();
        Check.Close(want, output.GetAsArray1D(), 1e-5, 1e-5, $"act-order MoE block T={tokens} {shape}");

        // The same weights read in packed order without the gather are a different function: the permutation matters.
        using var plain = TestDevice.PoisonedFloats((long)tokens * d);
        block.Launch(acc.DefaultStream, ws, xb.View, ids.View, wts.View, tokens, d1.View<Q4Weights>(), d3.View<Q4Weights>(), d2.View<Q4Weights>(), plain.View);
        acc.Synchronize();
        Assert.That(plain.GetAsArray1D().Zip(want).Max(p => Math.Abs(p.First - p.Second)), Is.GreaterThan(1e-3), "without the gather the output differs");

        // A permutation needs a workspace with room for the gathered rows, and E*D entries.
        using var small = new MoeWorkspace(acc, tokens, TopK, Experts, d, f);
        Assert.That(() => block.Launch(acc.DefaultStream, small, xb.View, ids.View, wts.View, tokens, d1.View<Q4Weights>(), d3.View<Q4Weights>(), d2.View<Q4Weights>(), output.View, inputPermutation: pb.View),
            Throws.ArgumentException.With.Message.Contains("permutedInput"));
        Assert.That(() => block.Launch(acc.DefaultStream, ws, xb.View, ids.View, wts.View, tokens, d1.View<Q4Weights>(), d3.View<Q4Weights>(), d2.View<Q4Weights>(), output.View,
            inputPermutation: pb.View.SubView(0, d)), Throws.ArgumentException.With.Message.Contains("E*D"));
    }

    private static int[] Shuffled(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).OrderBy(_ => rng.Next()).ToArray();
    }

    [Test]
    public void RefusesWrongStackedShapes()
    {
        var acc = TestDevice.Accelerator;
        var (w, _) = Experts_("q8", 5, 56, 40);
        using var dw = w.Upload(acc);
        using var perm = new MoePermutation(acc, 4, Experts, GroupedGemmKernels.GemvRows);
        using var buf = TestDevice.PoisonedFloats(4096);
        var e = Assert.Throws<ArgumentException>(() =>
            Q8.Value.LaunchDown(acc.DefaultStream, GroupedGemmVersion.V4PackedGemv, perm, buf.View, 2, TopK, 40, 56, dw.View<Q8Weights>(), buf.View))!;
        Assert.That(e.Message, Does.Contain("w2"));
        Assert.Throws<ArgumentException>(() =>
            Q8.Value.LaunchUpGate(acc.DefaultStream, GroupedGemmVersion.V1Simple, perm, buf.View, 2, TopK, 40, 56, dw.View<Q8Weights>(), dw.View<Q8Weights>(), buf.View));
        // V3 is the float decode form: the packed experts' decode version is V4, asked for by its own name.
        e = Assert.Throws<ArgumentException>(() =>
            Q8.Value.LaunchUpGate(acc.DefaultStream, GroupedGemmVersion.V3Gemv, perm, buf.View, 2, TopK, 40, 56, dw.View<Q8Weights>(), dw.View<Q8Weights>(), buf.View))!;
        Assert.That(e.Message, Does.Contain("V3Gemv is not available"));
        Assert.Throws<ArgumentException>(() =>
            Q8.Value.LaunchUpGate(acc.DefaultStream, GroupedGemmVersion.V2Tiled, perm, buf.View, 3, TopK, 40, 56, dw.View<Q8Weights>(), dw.View<Q8Weights>(), buf.View));
    }
}
