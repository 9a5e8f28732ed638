using ILGPU.Runtime;
using ILGPU;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Decode;

namespace ILGpuMoE.Tests.Kernels.Moe;

/// <summary>
/// gpt-oss's expert activation and biases (ExpertGlu) in every expert kernel the runtime runs: the float grouped GEMM
/// V1-V3 here, decode/experts V1 over float, int4 and MXFP4 readers here, the packed V2/V4 in Quant/Mxfp4Tests.cs.
/// Inputs are scaled so that g passes the limit above and u both limits (checked), against RefExpertGlu.
/// </summary>
public class ExpertGluTests
{
    private const float Alpha = 1.702f, Limit = 7f;
    private const int E = 5, D = 40, F = 56;

    /// <summary>Fails unless the routed pairs' g and u (with biases) cross the clamps: g &gt; limit, u &gt; limit, u &lt; -limit, and |g| &lt; limit somewhere.</summary>
    internal static void AssertClampsHit(float[] x, RefRouting routing, float[][] w1, float[][] w3, float[][] bg, float[][] bu, int dim, int hidden, double limit)
    {
        int gHigh = 0, uHigh = 0, uLow = 0, inside = 0;
        for (int p = 0; p < routing.ExpertIds.Length; p++)
        {
            int e = routing.ExpertIds[p];
            if (e < 0)
                continue;
            var xt = x.AsSpan(p / routing.TopK * dim, dim);
            for (int f = 0; f < hidden; f++)
            {
                double g = RefOps.Dot(xt, w1[e].AsSpan(f * dim, dim)) + bg[e][f];
                double u = RefOps.Dot(xt, w3[e].AsSpan(f * dim, dim)) + bu[e][f];
                gHigh += g > limit ? 1 : 0;
                uHigh += u > limit ? 1 : 0;
                uLow += u < -limit ? 1 : 0;
                inside += Math.Abs(g) < limit ? 1 : 0;
            }
        }

        Assert.That(new[] { gHigh, uHigh, uLow, inside }, Has.All.GreaterThan(0), "the data must hit g > limit, u > limit, u < -limit and |g| < limit");
    }

    private static IEnumerable<TestCaseData> FloatCases() =>
    [
        new TestCaseData(GroupedGemmVersion.V1Simple, WeightType.F32, 3, 2, RoutingShape.SkipExperts),
        new TestCaseData(GroupedGemmVersion.V2Tiled, WeightType.BF16, 9, 4, RoutingShape.Random),
        new TestCaseData(GroupedGemmVersion.V2Tiled, WeightType.F32, 5, 1, RoutingShape.AllToOne),
        new TestCaseData(GroupedGemmVersion.V3Gemv, WeightType.F32, 3, 4, RoutingShape.Dropped),
        new TestCaseData(GroupedGemmVersion.V3Gemv, WeightType.BF16, 4, 1, RoutingShape.SkipExperts),
    ];

    [TestCaseSource(nameof(FloatCases))]
    public void FloatGroupedGemmMatchesReference(GroupedGemmVersion version, WeightType type, int tokens, int topK, RoutingShape shape)
    {
        var acc = TestDevice.Accelerator;
        var routing = MoeTestData.Routing(tokens * 3 + topK, tokens, topK, E, shape);
        var x = Data.Uniform(tokens + 31, (long)tokens * D, 10f);
        var w1 = MoeTestData.ExpertWeights(71, E, F, D);
        var w3 = MoeTestData.ExpertWeights(72, E, F, D);
        var w2 = MoeTestData.ExpertWeights(73, E, D, F);
        if (type == WeightType.BF16)
            (w1, w3, w2) = (MoeTestData.ToBf16Values(w1), MoeTestData.ToBf16Values(w3), MoeTestData.ToBf16Values(w2));
        var (bg, bu, b2) = Biases(E, F, D);
        AssertClampsHit(x, routing, w1, w3, bg, bu, D, F, Limit);
        var want = RefExpertGlu.MoeBlock(x, routing, w1, w3, w2, bg, bu, b2, tokens, D, F, Alpha, Limit);

        using var ws = new MoeWorkspace(acc, tokens, topK, E, D, F);
        MoeTestData.Poison(ws);
        using var xb = TestDevice.Upload(x);
        using var ids = TestDevice.Upload(routing.ExpertIds);
        using var wts = TestDevice.Upload(routing.Weights);
        using var bgb = TestDevice.Upload(MoeTestData.Stack(bg));
        using var bub = TestDevice.Upload(MoeTestData.Stack(bu));
        using var b2b = TestDevice.Upload(MoeTestData.Stack(b2));
        using var output = TestDevice.PoisonedFloats((long)tokens * D);
        var glu = ExpertGlu.GptOss(Alpha, Limit, bgb.View, bub.View, b2b.View);
        var s = acc.DefaultStream;
        if (type == WeightType.F32)
        {
            using var d1 = TestDevice.Upload(MoeTestData.Stack(w1));
            using var d3 = TestDevice.Upload(MoeTestData.Stack(w3));
            using var d2 = TestDevice.Upload(MoeTestData.Stack(w2));
            MoeTestData.BlockF32.Launch(s, ws, xb.View, ids.View, wts.View, tokens, new F32Weights(d1.View), new F32Weights(d3.View),
                new F32Weights(d2.View), output.View, version: version, glu: glu);
            acc.Synchronize();
        }
        else
        {
            using var d1 = TestDevice.Upload(MoeTestData.Bf16Bits(MoeTestData.Stack(w1)));
            using var d3 = TestDevice.Upload(MoeTestData.Bf16Bits(MoeTestData.Stack(w3)));
            using var d2 = TestDevice.Upload(MoeTestData.Bf16Bits(MoeTestData.Stack(w2)));
            MoeTestData.BlockBF16.Launch(s, ws, xb.View, ids.View, wts.View, tokens, new BF16Weights(d1.View), new BF16Weights(d3.View),
                new BF16Weights(d2.View), output.View, version: version, glu: glu);
            acc.Synchronize();
        }

        Check.Close(want, output.GetAsArray1D(), 1e-5, 1e-5 * want.Max(Math.Abs), $"{version} {type} T={tokens} K={topK}");
    }

    [Test]
    public void RefusesBadOptions()
    {
        var acc = TestDevice.Accelerator;
        Assert.Throws<ArgumentException>(() => ExpertGlu.GptOss(float.NaN, Limit, default, default, default));
        Assert.Throws<ArgumentException>(() => ExpertGlu.GptOss(Alpha, 0f, default, default, default));
        using var ws = new MoeWorkspace(acc, 1, 1, E, D, F);
        using var x = TestDevice.PoisonedFloats(D);
        using var ids = TestDevice.Upload(new[] { 0 });
        using var wts = TestDevice.Upload(new[] { 1f });
        using var w = TestDevice.PoisonedFloats((long)E * F * D);
        using var shortBias = TestDevice.PoisonedFloats((long)E * F - 1);
        using var bias = TestDevice.PoisonedFloats((long)E * F);
        using var output = TestDevice.PoisonedFloats(D);
        var fw = new F32Weights(w.View);
        void Run(ExpertGlu glu) => MoeTestData.BlockF32.Launch(acc.DefaultStream, ws, x.View, ids.View, wts.View, 1, fw, fw, fw, output.View, glu: glu);
        Assert.Throws<ArgumentException>(() => Run(ExpertGlu.GptOss(Alpha, Limit, shortBias.View, bias.View, default)), "gate bias short");
        Assert.Throws<ArgumentException>(() => Run(ExpertGlu.GptOss(Alpha, Limit, bias.View, default, default)), "gate without up");
        Assert.Throws<ArgumentException>(() => Run(ExpertGlu.GptOss(Alpha, Limit, default, default, shortBias.View.SubView(0, E * D - 1))), "down bias short");
    }

    // ---------------------------------------------------------------- decode/experts (T = 1)

    /// <summary>K = 1 and K = 4 (two pairs to one expert) over E = 5, without a norm prologue.</summary>
    [TestCase("f32", 1)]
    [TestCase("bf16", 4)]
    [TestCase("q4-sym-g32", 4)]
    [TestCase("mxfp4", 1)]
    [TestCase("mxfp4", 4)]
    public void DecodeExpertsMatchReference(string kind, int topK)
    {
        int n = DecodeTestUnits.Cols(kind);
        int[] idsK = topK == 1 ? [3] : [4, 1, 1, 0];
        float[] weights = topK == 1 ? [1f] : [0.4f, 0.3f, 0.2f, 0.1f];
        var w1 = new TestMatrix(Data.Gaussian(81, (long)E * n * n, 1 / Math.Sqrt(n)), E * n, n, E);
        var w3 = new TestMatrix(Data.Gaussian(82, (long)E * n * n, 1 / Math.Sqrt(n)), E * n, n, E);
        var w2 = new TestMatrix(Data.Gaussian(83, (long)E * n * n, 1 / Math.Sqrt(n)), E * n, n, E);
        DecodeTestUnits.With(kind, [w1, w3, w2], new DecodeBody(idsK, weights, n, kind));
    }

    private sealed class DecodeBody(int[] ids, float[] weights, int n, string what) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            int k = ids.Length;
            var x = Data.Uniform(91, n, 10f);
            var residual = Data.Uniform(92, n);
            var (bg, bu, b2) = Biases(E, n, n);
            var q1 = Split(seen[0]);
            var q3 = Split(seen[1]);
            var q2 = Split(seen[2]);
            var routing = new RefRouting(ids, weights, 1, k, 0);
            AssertClampsHit(x, routing, q1, q3, bg, bu, n, n, Limit);

            using var xb = TestDevice.Upload(x);
            using var idb = TestDevice.Upload(ids);
            using var wb = TestDevice.Upload(weights);
            using var h = TestDevice.PoisonedFloats((long)k * n);
            using var res = TestDevice.Upload(residual);
            using var output = TestDevice.PoisonedFloats(n);
            using var bgb = TestDevice.Upload(MoeTestData.Stack(bg));
            using var bub = TestDevice.Upload(MoeTestData.Stack(bu));
            using var b2b = TestDevice.Upload(MoeTestData.Stack(b2));
            var glu = ExpertGlu.GptOss(Alpha, Limit, bgb.View, bub.View, b2b.View);
            var kernel = DecodeTestUnits.Cached(() => DecodeExpertsKernel.Create<TU>(TestDevice.Accelerator));
            var s = TestDevice.Accelerator.DefaultStream;
            kernel.LaunchUpGate(s, xb.View, NormWeights.None, 0f, w[0], w[1], idb.View, k, n, h.View, glu);
            kernel.LaunchDown(s, h.View, w[2], idb.View, wb.View, k, n, res.View, output.View, glu);
            s.Synchronize();

            var wantH = ids.SelectMany(e => RefExpertGlu.UpGate(x, q1[e], q3[e], bg[e], bu[e], n, n, Alpha, Limit)).ToArray();
            Check.Close(wantH, h.GetAsArray1D(), 1e-5, 1e-5 * wantH.Max(Math.Abs), what + " h");
            var moe = RefExpertGlu.MoeBlock(x, routing, q1, q3, q2, bg, bu, b2, 1, n, n, Alpha, Limit);
            var want = moe.Select((v, i) => v + residual[i]).ToArray();
            Check.Close(want, output.GetAsArray1D(), 1e-5, 1e-5 * want.Max(Math.Abs), what + " out");
        }
    }

    private static float[][] Split(float[] stacked) => Enumerable.Range(0, E).Select(i => stacked.AsSpan(i * (stacked.Length / E), stacked.Length / E).ToArray()).ToArray();

    /// <summary>Gate and up biases in +-2 (they move g and u across the limits too), down bias in +-2.</summary>
    private static (float[][] Gate, float[][] Up, float[][] Down) Biases(int experts, int hidden, int dim) =>
        (Enumerable.Range(0, experts).Select(e => Data.Uniform(500 + e, hidden, 2f)).ToArray(),
         Enumerable.Range(0, experts).Select(e => Data.Uniform(600 + e, hidden, 2f)).ToArray(),
         Enumerable.Range(0, experts).Select(e => Data.Uniform(700 + e, dim, 2f)).ToArray());
}
