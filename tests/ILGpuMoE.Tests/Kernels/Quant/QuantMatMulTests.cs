using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Quant;

namespace ILGpuMoE.Tests.Kernels.Quant;

/// <summary>Quantized GEMV (decode) and tiled GEMM (prefill) against RefOps.MatMulT on the reference-dequantized W.</summary>
public class QuantMatMulTests
{
    private const int OutDim = 45; // not a multiple of 8 warps or 32-wide tiles

    private static float[] Expected(string scheme, float[] x, int tokens, int seed, out ILGpuMoE.Quant.QuantizedMatrix m)
    {
        int k = QuantTestData.InDim(scheme);
        var w = Data.Gaussian(seed, (long)OutDim * k, 0.3);
        m = QuantTestData.Quantize(scheme, w, OutDim, k);
        return RefOps.MatMulT(x, QuantTestData.RefDequant(m), tokens, OutDim, k);
    }

    private static IEnumerable<TestCaseData> GemvCases() =>
        QuantTestData.Schemes.SelectMany(s => new[] { (1, 1), (3, 3), (8, 2) }.Select(c => new TestCaseData(s, c.Item1, c.Item2)));

    [TestCaseSource(nameof(GemvCases))]
    public void Gemv(string scheme, int tokens, int splits)
    {
        var acc = TestDevice.Accelerator;
        int k = QuantTestData.InDim(scheme);
        var x = Data.Uniform(tokens * 31 + splits, (long)tokens * k);
        var want = Expected(scheme, x, tokens, 100 + scheme.Length, out var m);
        using var d = m.Upload(acc);
        using var xb = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats((long)tokens * OutDim);
        using var scratch = TestDevice.PoisonedFloats(QuantGemvKernel.ScratchLength(tokens, OutDim, splits));
        var s = acc.DefaultStream;
        QuantTestData.Run(d,
            w => QuantTestData.Gemv.Launch(s, xb.View, w, y.View, tokens, splits, scratch.View),
            w => QuantTestData.Gemv.Launch(s, xb.View, w, y.View, tokens, splits, scratch.View),
            w => QuantTestData.Gemv.Launch(s, xb.View, w, y.View, tokens, splits, scratch.View));
        acc.Synchronize();
        Check.Close(want, y.GetAsArray1D(), 1e-5, 1e-5, $"{scheme} GEMV T={tokens} splits={splits}");
    }

    [Test]
    public void Gemm([ValueSource(typeof(QuantTestData), nameof(QuantTestData.Schemes))] string scheme, [Values(3, 40)] int tokens)
    {
        var acc = TestDevice.Accelerator;
        int k = QuantTestData.InDim(scheme);
        var x = Data.Uniform(tokens * 7 + 1, (long)tokens * k);
        var want = Expected(scheme, x, tokens, 200 + scheme.Length, out var m);
        using var d = m.Upload(acc);
        using var xb = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats((long)tokens * OutDim);
        var s = acc.DefaultStream;
        QuantTestData.Run(d,
            w => QuantTestData.Gemm.Launch(s, xb.View, w, y.View, tokens),
            w => QuantTestData.Gemm.Launch(s, xb.View, w, y.View, tokens),
            w => QuantTestData.Gemm.Launch(s, xb.View, w, y.View, tokens));
        acc.Synchronize();
        Check.Close(want, y.GetAsArray1D(), 1e-5, 1e-5, $"{scheme} GEMM T={tokens}");
    }

    [Test]
    public void SpreadSchemeGivesEveryGroupOfARowADifferentScale()
    {
        // The q4-spread-g32 cases above can only catch a wrong group index if the groups' scales are far apart: check it.
        const string scheme = "q4-spread-g32";
        int k = QuantTestData.InDim(scheme), groups = k / 32;
        Expected(scheme, new float[k], 1, 100 + scheme.Length, out var m);
        for (int n = 0; n < OutDim; n++)
        {
            var scales = Enumerable.Range(0, groups).Select(g => (double)RefQuant.HalfToFloat(((ILGpuMoE.Quant.Q4Matrix)m).Scales[n * groups + g])).ToArray();
            for (int a = 0; a < groups; a++)
            {
                for (int b = a + 1; b < groups; b++)
                    Assert.That(Math.Max(scales[a], scales[b]) / Math.Min(scales[a], scales[b]), Is.GreaterThan(2), $"row {n} groups {a}, {b}");
            }
        }
    }

    [TestCase("q4-zero-g64", true)]
    [TestCase("fp8-block", false)]
    public void AccumulateAddsToY(string scheme, bool gemv)
    {
        var acc = TestDevice.Accelerator;
        const int tokens = 3;
        int k = QuantTestData.InDim(scheme);
        var x = Data.Uniform(9, (long)tokens * k);
        var want = Expected(scheme, x, tokens, 300, out var m);
        var y0 = Data.Uniform(10, (long)tokens * OutDim);
        using var d = m.Upload(acc);
        using var xb = TestDevice.Upload(x);
        using var y = TestDevice.Upload(y0);
        using var scratch = TestDevice.PoisonedFloats(QuantGemvKernel.ScratchLength(tokens, OutDim, 2));
        var s = acc.DefaultStream;
        QuantTestData.Run(d,
            w => throw new InvalidOperationException(),
            w =>
            {
                if (gemv)
                    QuantTestData.Gemv.Launch(s, xb.View, w, y.View, tokens, 2, scratch.View, accumulate: true);
                else
                    QuantTestData.Gemm.Launch(s, xb.View, w, y.View, tokens, accumulate: true);
            },
            w => QuantTestData.Gemm.Launch(s, xb.View, w, y.View, tokens, accumulate: true));
        acc.Synchronize();
        Check.Close(want.Select((v, i) => v + y0[i]).ToArray(), y.GetAsArray1D(), 1e-5, 1e-5, $"{scheme} accumulate");
    }

    [Test]
    public void SplitKIsBitIdenticalRunToRun()
    {
        var acc = TestDevice.Accelerator;
        const string scheme = "q4-sym-g32";
        int k = QuantTestData.InDim(scheme);
        var x = Data.Uniform(12, 2L * k);
        Expected(scheme, x, 2, 400, out var m);
        using var d = m.Upload(acc);
        using var xb = TestDevice.Upload(x);
        using var scratch = TestDevice.PoisonedFloats(QuantGemvKernel.ScratchLength(2, OutDim, 3));
        float[] Run()
        {
            using var y = TestDevice.PoisonedFloats(2L * OutDim);
            QuantTestData.Gemv.Launch(acc.DefaultStream, xb.View, d.View<Q4Weights>(), y.View, 2, 3, scratch.View);
            acc.Synchronize();
            return y.GetAsArray1D();
        }

        Check.BitEqual(Run(), Run(), "two runs");
    }

    [Test]
    public void LaunchersRefuseBadShapes()
    {
        var acc = TestDevice.Accelerator;
        var m = QuantTestData.Quantize("q8", Data.Uniform(3, 45L * 72), 45, 72);
        using var d = m.Upload(acc);
        using var x = TestDevice.PoisonedFloats(9 * 72);
        using var y = TestDevice.PoisonedFloats(9 * 45);
        var s = acc.DefaultStream;
        var e = Assert.Throws<ArgumentException>(() => QuantTestData.Gemv.Launch(s, x.View, d.View<Q8Weights>(), y.View, 9))!;
        Assert.That(e.Message, Does.Contain("tokens"));
        Assert.Throws<ArgumentException>(() => QuantTestData.Gemv.Launch(s, x.View.SubView(0, 71), d.View<Q8Weights>(), y.View, 1));
        Assert.Throws<ArgumentException>(() => QuantTestData.Gemv.Launch(s, x.View, d.View<Q8Weights>(), y.View, 2, splits: 2)); // no scratch
        Assert.Throws<ArgumentException>(() => QuantTestData.Gemm.Launch(s, x.View, d.View<Q8Weights>(), y.View.SubView(0, 44), 1));
        Assert.Throws<InvalidOperationException>(() => _ = d.View<Q4Weights>());

        // Hand-built device structs that break the layout are refused before launch.
        var m4 = QuantTestData.Quantize("q4-sym-g32", Data.Uniform(4, 45L * 96), 45, 96);
        using var d4 = m4.Upload(acc);
        var bad = new Q4Weights(d4.View<Q4Weights>().Words, d4.View<Q4Weights>().Scales, default, 45, 96, 48);
        var e4 = Assert.Throws<ArgumentException>(() => QuantTestData.Gemm.Launch(s, x.View, bad, y.View, 1))!;
        Assert.That(e4.Message, Does.Contain("group size 48"));
        var short4 = new Q4Weights(d4.View<Q4Weights>().Words, d4.View<Q4Weights>().Scales.SubView(0, 10), default, 45, 96, 32);
        Assert.Throws<ArgumentException>(() => QuantTestData.Gemv.Launch(s, x.View, short4, y.View, 1));
    }
}
