using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Moe;

/// <summary>permute -> grouped GEMM (up/gate, down) -> combine against RefMoe.MoeBlock.</summary>
public class MoeBlockTests
{
    // 1e-5 relative as the brief asks; the absolute floor covers outputs that cancel to near zero (outputs are O(0.1-1),
    // float sums of ~100 terms carry ~1e-7 relative error per term).
    private const double Rtol = 1e-5, Atol = 1e-5;

    public enum WeightKind
    {
        F32,
        F16,
        BF16,
    }

    private sealed record Problem(int Tokens, int Dim, int Hidden, int Experts, RefRouting Routing, float[] X,
        float[][] W1, float[][] W3, float[][] W2, float[]? Residual);

    private static Problem Make(int seed, int tokens, int dim, int hidden, int experts, int topK, RoutingShape shape, WeightKind kind, bool residual = false)
    {
        var routing = MoeTestData.Routing(seed, tokens, topK, experts, shape);
        var w1 = MoeTestData.ExpertWeights(seed + 1, experts, hidden, dim);
        var w3 = MoeTestData.ExpertWeights(seed + 2, experts, hidden, dim);
        var w2 = MoeTestData.ExpertWeights(seed + 3, experts, dim, hidden);
        if (kind == WeightKind.F16)
            (w1, w3, w2) = (MoeTestData.ToHalfValues(w1), MoeTestData.ToHalfValues(w3), MoeTestData.ToHalfValues(w2));
        else if (kind == WeightKind.BF16)
            (w1, w3, w2) = (MoeTestData.ToBf16Values(w1), MoeTestData.ToBf16Values(w3), MoeTestData.ToBf16Values(w2));
        var x = Data.Uniform(seed + 4, (long)tokens * dim);
        return new Problem(tokens, dim, hidden, experts, routing, x, w1, w3, w2, residual ? Data.Uniform(seed + 5, (long)tokens * dim) : null);
    }

    private static float[] Expected(Problem p)
    {
        var moe = RefMoe.MoeBlock(p.X, p.Routing, p.W1, p.W3, p.W2, p.Tokens, p.Dim, p.Hidden);
        if (p.Residual is { } r)
            moe = moe.Select((v, i) => (float)((double)r[i] + v)).ToArray();
        return moe;
    }

    /// <summary>Runs the facade with NaN-poisoned workspace and output; returns the output.</summary>
    private static float[] Run(Problem p, WeightKind kind, GroupedGemmVersion? version, int maxTokens = 0)
    {
        var acc = TestDevice.Accelerator;
        int topK = p.Routing.TopK;
        using var ws = new MoeWorkspace(acc, Math.Max(p.Tokens, maxTokens), topK, p.Experts, p.Dim, p.Hidden);
        MoeTestData.Poison(ws);
        using var x = TestDevice.Upload(p.X);
        using var ids = TestDevice.Upload(p.Routing.ExpertIds);
        using var weights = TestDevice.Upload(p.Routing.Weights);
        using var output = TestDevice.PoisonedFloats((long)p.Tokens * p.Dim);
        using var residual = p.Residual is null ? null : TestDevice.Upload(p.Residual);
        var res = residual?.View ?? default;
        float[] s1 = MoeTestData.Stack(p.W1), s3 = MoeTestData.Stack(p.W3), s2 = MoeTestData.Stack(p.W2);
        var run = new Launch(acc.DefaultStream, ws, x.View, ids.View, weights.View, p.Tokens, output.View, res, version);
        switch (kind)
        {
            case WeightKind.F32:
                run.With(MoeTestData.BlockF32, s1, s3, s2, a => a, v => new F32Weights(v));
                break;
            case WeightKind.F16:
                run.With(MoeTestData.BlockF16, s1, s3, s2, MoeTestData.HalfBits, v => new F16Weights(v));
                break;
            case WeightKind.BF16:
                run.With(MoeTestData.BlockBF16, s1, s3, s2, MoeTestData.Bf16Bits, v => new BF16Weights(v));
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(kind), kind, null);
        }

        acc.Synchronize();
        return output.GetAsArray1D();
    }

    /// <summary>One facade launch; With uploads the stacked weights in the element type of TW.</summary>
    private sealed record Launch(AcceleratorStream Stream, MoeWorkspace Ws, ArrayView<float> X, ArrayView<int> Ids, ArrayView<float> Weights,
        int Tokens, ArrayView<float> Output, ArrayView<float> Residual, GroupedGemmVersion? Version)
    {
        public void With<TW, TE>(MoeBlockKernels<TW> kernels, float[] w1, float[] w3, float[] w2, Func<float[], TE[]> convert,
            Func<ArrayView<TE>, TW> wrap)
            where TW : struct, IWeights
            where TE : unmanaged
        {
            using var b1 = TestDevice.Upload(convert(w1));
            using var b3 = TestDevice.Upload(convert(w3));
            using var b2 = TestDevice.Upload(convert(w2));
            kernels.Launch(Stream, Ws, X, Ids, Weights, Tokens, wrap(b1.View), wrap(b3.View), wrap(b2.View), Output, Residual, Version);
            Stream.Synchronize();
        }
    }

    private static readonly GroupedGemmVersion[] AllVersions = [GroupedGemmVersion.V1Simple, GroupedGemmVersion.V2Tiled, GroupedGemmVersion.V3Gemv];

    // T in {1, 3, 17, 69}; D, F not multiples of any tile; E in {4, 8, 16}; K in {1, 2, E}; every version.
    private static readonly (int T, int D, int F, int E, int K)[] Shapes =
    [
        (1, 40, 72, 8, 2),
        (3, 67, 100, 4, 4),
        (17, 40, 72, 16, 2),
        (17, 67, 100, 8, 1),
        (69, 40, 72, 4, 2),
        (69, 67, 100, 8, 1),
    ];

    private static IEnumerable<TestCaseData> ShapeCases() =>
        from s in Shapes from v in AllVersions select new TestCaseData(s.T, s.D, s.F, s.E, s.K, v);

    [TestCaseSource(nameof(ShapeCases))]
    public void MatchesReference(int tokens, int dim, int hidden, int experts, int topK, GroupedGemmVersion version)
    {
        var p = Make(100 + tokens * 3 + experts, tokens, dim, hidden, experts, topK, RoutingShape.Random, WeightKind.F32);
        Check.Close(Expected(p), Run(p, WeightKind.F32, version), Rtol, Atol, $"T={tokens} D={dim} F={hidden} E={experts} K={topK} {version}");
    }

    // One token; every token to one expert set; experts with no token; dropped pairs (and a fully dropped token).
    private static readonly (RoutingShape Shape, int T, int K)[] Edges =
    [
        (RoutingShape.AllToOne, 69, 1),
        (RoutingShape.AllToOne, 17, 2),
        (RoutingShape.SkipExperts, 17, 2),
        (RoutingShape.Dropped, 69, 2),
        (RoutingShape.Dropped, 3, 1),
        (RoutingShape.Random, 1, 1),
    ];

    private static IEnumerable<TestCaseData> EdgeCaseData() =>
        from c in Edges from v in AllVersions select new TestCaseData(c.Shape, c.T, c.K, v);

    [TestCaseSource(nameof(EdgeCaseData))]
    public void EdgeCases(RoutingShape shape, int tokens, int topK, GroupedGemmVersion version)
    {
        var p = Make(300 + (int)shape * 11 + tokens, tokens, 40, 72, 8, topK, shape, WeightKind.F32);
        var got = Run(p, WeightKind.F32, version);
        Check.Close(Expected(p), got, Rtol, Atol, $"{shape} T={tokens} K={topK} {version}");
        if (shape == RoutingShape.Dropped)
            Assert.That(got[..40].All(v => v == 0f), "a token with every pair dropped gets 0");
    }

    [TestCase(WeightKind.F16, GroupedGemmVersion.V2Tiled)]
    [TestCase(WeightKind.F16, GroupedGemmVersion.V3Gemv)]
    [TestCase(WeightKind.F16, GroupedGemmVersion.V1Simple)]
    [TestCase(WeightKind.BF16, GroupedGemmVersion.V2Tiled)]
    [TestCase(WeightKind.BF16, GroupedGemmVersion.V3Gemv)]
    [TestCase(WeightKind.BF16, GroupedGemmVersion.V1Simple)]
    public void HalfWeightsMatchReferenceOnWidenedValues(WeightKind kind, GroupedGemmVersion version)
    {
        var p = Make(500 + (int)kind, 17, 67, 100, 4, 2, RoutingShape.Random, kind);
        Check.Close(Expected(p), Run(p, kind, version), Rtol, Atol, $"{kind} {version}");
    }

    [TestCase(GroupedGemmVersion.V2Tiled)]
    [TestCase(GroupedGemmVersion.V3Gemv)]
    public void FusedResidual(GroupedGemmVersion version)
    {
        var p = Make(600, 17, 40, 72, 8, 2, RoutingShape.Dropped, WeightKind.F32, residual: true);
        Check.Close(Expected(p), Run(p, WeightKind.F32, version), Rtol, Atol, $"residual {version}");
    }

    [Test]
    public void FewerTokensThanWorkspace()
    {
        var p = Make(650, 3, 40, 72, 8, 2, RoutingShape.Random, WeightKind.F32);
        Check.Close(Expected(p), Run(p, WeightKind.F32, null, maxTokens: 69), Rtol, Atol, "T=3 in a T=69 workspace");
    }

    [TestCase(GroupedGemmVersion.V1Simple)]
    [TestCase(GroupedGemmVersion.V2Tiled)]
    [TestCase(GroupedGemmVersion.V3Gemv)]
    public void BitIdenticalTwice(GroupedGemmVersion version)
    {
        var p = Make(700, 17, 40, 72, 8, 2, RoutingShape.Dropped, WeightKind.BF16);
        var a = Run(p, WeightKind.BF16, version);
        var b = Run(p, WeightKind.BF16, version);
        Check.BitEqual(a, b, $"two runs of {version}");
        Check.Close(Expected(p), a, Rtol, Atol, $"determinism case {version}");
    }

    [Test]
    public void VersionsAgreeClosely()
    {
        var p = Make(800, 17, 67, 100, 4, 2, RoutingShape.Random, WeightKind.F32);
        var v1 = Run(p, WeightKind.F32, GroupedGemmVersion.V1Simple);
        Check.Close(v1, Run(p, WeightKind.F32, GroupedGemmVersion.V2Tiled), Rtol, Atol, "V2 vs V1");
        Check.Close(v1, Run(p, WeightKind.F32, GroupedGemmVersion.V3Gemv), Rtol, Atol, "V3 vs V1");
    }

    [Test]
    public void ChoosesGemvForDecodeAndTilesForPrefill()
    {
        Assert.That(GroupedGemm.Choose(1, 2, 8, packed: false), Is.EqualTo(GroupedGemmVersion.V3Gemv));
        Assert.That(GroupedGemm.Choose(512, 2, 8, packed: false), Is.EqualTo(GroupedGemmVersion.V2Tiled));
        Assert.That(GroupedGemm.Choose(1, 2, 8, packed: true), Is.EqualTo(GroupedGemmVersion.V4PackedGemv));
        Assert.That(GroupedGemm.Choose(512, 2, 8, packed: true), Is.EqualTo(GroupedGemmVersion.V2Tiled));
    }

    [TestCase(GroupedGemmVersion.V1Simple, 8)]
    [TestCase(GroupedGemmVersion.V2Tiled, 32)]
    [TestCase(GroupedGemmVersion.V3Gemv, 8)]
    public void PermutesWithTheTileHeightTheVersionAsksFor(GroupedGemmVersion version, int tileRows)
    {
        // The tile heights are the kernels' constants (GroupedGemmKernels.GemvRows = 8, TileM = 32), written out here.
        var p = Make(900, 3, 40, 72, 4, 2, RoutingShape.Random, WeightKind.F32);
        var acc = TestDevice.Accelerator;
        using var ws = new MoeWorkspace(acc, p.Tokens, 2, p.Experts, p.Dim, p.Hidden);
        using var x = TestDevice.Upload(p.X);
        using var ids = TestDevice.Upload(p.Routing.ExpertIds);
        using var weights = TestDevice.Upload(p.Routing.Weights);
        using var w13 = TestDevice.Upload(MoeTestData.Stack(p.W1));
        using var w2 = TestDevice.Upload(MoeTestData.Stack(p.W2));
        using var output = TestDevice.PoisonedFloats((long)p.Tokens * p.Dim);
        MoeTestData.BlockF32.Launch(acc.DefaultStream, ws, x.View, ids.View, weights.View, p.Tokens, new F32Weights(w13.View),
            new F32Weights(w13.View), new F32Weights(w2.View), output.View, version: version);
        acc.Synchronize();
        Assert.That(GroupedGemm.TileRows(version), Is.EqualTo(tileRows));
        Assert.That(ws.Last!.TileRows, Is.EqualTo(tileRows));
        Assert.That(ws.Permutations.Select(q => q.TileRows), Is.EquivalentTo(new[] { 8, 32, 64 }));
    }

    [Test]
    public void FloatExpertsRefuseThePackedDecodeVersion()
    {
        var acc = TestDevice.Accelerator;
        using var ws = new MoeWorkspace(acc, 1, 2, 4, 40, 72);
        using var x = TestDevice.Upload(new float[40]);
        using var ids = TestDevice.Upload(new[] { 0, 1 });
        using var wts = TestDevice.Upload(new[] { 0.5f, 0.5f });
        using var w = TestDevice.Upload(new float[4 * 72 * 40]);
        using var output = TestDevice.PoisonedFloats(40);
        var good = new F32Weights(w.View);
        var e = Assert.Throws<ArgumentException>(() => MoeTestData.BlockF32.Launch(acc.DefaultStream, ws, x.View, ids.View, wts.View, 1, good, good, good,
            output.View, version: GroupedGemmVersion.V4PackedGemv))!;
        Assert.That(e.Message, Does.Contain("V4PackedGemv"));
    }

    [Test]
    public void RejectsBadShapes()
    {
        var acc = TestDevice.Accelerator;
        using var ws = new MoeWorkspace(acc, 4, 2, 4, 40, 72);
        using var x = TestDevice.Upload(new float[4 * 40]);
        using var ids = TestDevice.Upload(new int[8]);
        using var wts = TestDevice.Upload(new float[8]);
        using var w13 = TestDevice.Upload(new float[4 * 72 * 40]);
        using var w2 = TestDevice.Upload(new float[4 * 40 * 72 - 1]);
        using var output = TestDevice.PoisonedFloats(4 * 40);
        var k = MoeTestData.BlockF32;
        var good = new F32Weights(w13.View);
        Assert.Throws<ArgumentException>(() => k.Launch(acc.DefaultStream, ws, x.View, ids.View, wts.View, 5, good, good, good, output.View));
        Assert.Throws<ArgumentException>(() => k.Launch(acc.DefaultStream, ws, x.View, ids.View, wts.View, 4, good, good, new F32Weights(w2.View), output.View));
        Assert.Throws<ArgumentException>(() => k.Launch(acc.DefaultStream, ws, x.View, ids.View, wts.View, 4, good, good, good, output.View.SubView(0, 10)));
        Assert.Throws<ArgumentException>(() => _ = new MoeWorkspace(acc, 4, 5, 4, 40, 72));
        Assert.Throws<ArgumentException>(() => GroupedGemmKernel<F32Weights>.Create(acc).LaunchDown(acc.DefaultStream, GroupedGemmVersion.V3Gemv,
            ws.Permutation(GroupedGemm.TileRows(GroupedGemmVersion.V2Tiled)), ws.H.View, 4, 2, 40, 72, good, ws.Y.View));
    }
}
