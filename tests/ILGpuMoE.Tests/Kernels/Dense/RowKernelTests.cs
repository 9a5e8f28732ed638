using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Dense;

/// <summary>Embedding, RMSNorm and softmax: the one-group-per-row kernels.</summary>
public class RowKernelTests
{
    private sealed class EmbeddingCase(int tokens, int vocab, int dim, int[] ids) : IWeightsTest
    {
        public void Run<TW>(TW w, float[] seen)
            where TW : struct, IWeights
        {
            var kernel = EmbeddingKernel.Create<TW>(TestDevice.Accelerator);
            using var idBuf = TestDevice.Upload(ids);
            using var x = TestDevice.PoisonedFloats((long)tokens * dim);
            var got = DenseTestWeights.Run(s => kernel.Launch(s, idBuf.View, w, x.View, tokens, vocab, dim), x);
            var validIds = ids.Select(id => id >= 0 && id < vocab ? id : 0).ToArray();
            var expected = RefOps.Embedding(seen, validIds, vocab, dim);
            for (int t = 0; t < tokens; t++)
            {
                var row = got.AsSpan(t * dim, dim);
                if (ids[t] >= 0 && ids[t] < vocab)
                    Check.BitEqual(expected.AsSpan(t * dim, dim), row, $"{typeof(TW).Name} row {t}");
                else
                    Assert.That(row.ToArray().All(float.IsNaN), $"row {t} of bad id {ids[t]} must be all NaN");
            }
        }
    }

    [TestCase(WeightType.F32, 1)]
    [TestCase(WeightType.F32, 17)]
    [TestCase(WeightType.F16, 3)]
    [TestCase(WeightType.BF16, 69)]
    public void EmbeddingGathersRows(WeightType type, int tokens)
    {
        const int vocab = 50, dim = 67;
        var ids = Data.Ints(900 + tokens, tokens, 0, vocab);
        DenseTestWeights.With(type, Data.Uniform(901 + tokens, vocab * dim), new EmbeddingCase(tokens, vocab, dim, ids));
    }

    [Test]
    public void EmbeddingFlagsOutOfRangeIdsWithNaNRows()
    {
        const int vocab = 50, dim = 40;
        int[] ids = [3, -1, 49, 50, int.MaxValue, int.MinValue, 0];
        DenseTestWeights.With(WeightType.BF16, Data.Uniform(910, vocab * dim), new EmbeddingCase(ids.Length, vocab, dim, ids));
    }

    private sealed class RmsNormCase(int tokens, int dim, bool inPlace, double xStd = 2.0) : IWeightsTest
    {
        public void Run<TW>(TW w, float[] seen)
            where TW : struct, IWeights
        {
            const float eps = 1e-5f;
            var kernel = RmsNormKernel.Create<TW>(TestDevice.Accelerator);
            var x = Data.Gaussian(920 + tokens + dim, (long)tokens * dim, xStd);
            using var xBuf = TestDevice.Upload(x);
            using var yBuf = TestDevice.PoisonedFloats((long)tokens * dim);
            var output = inPlace ? xBuf : yBuf;
            var got = DenseTestWeights.Run(s => kernel.Launch(s, xBuf.View, w, output.View, tokens, dim, eps), output);
            Check.Close(RefOps.RmsNorm(x, seen, tokens, dim, eps), got, 1e-5, 1e-6, $"{typeof(TW).Name} T={tokens} D={dim}");
        }
    }

    [TestCase(WeightType.F32, 1, 40)]
    [TestCase(WeightType.F32, 69, 67)]
    [TestCase(WeightType.F16, 3, 100)]
    [TestCase(WeightType.BF16, 17, 300)]
    public void RmsNormMatchesReference(WeightType type, int tokens, int dim) =>
        DenseTestWeights.With(type, Data.Uniform(930 + dim, dim, 1.5f), new RmsNormCase(tokens, dim, inPlace: false));

    // |x| ~ 1e-3: mean(x^2) ~ 1e-6 is a tenth of eps = 1e-5, so a kernel that dropped eps (or used it outside the
    // square root) would be off by a factor of ~3.
    [TestCase(WeightType.F32)]
    [TestCase(WeightType.BF16)]
    public void RmsNormWithSmallInputsNeedsEps(WeightType type) =>
        DenseTestWeights.With(type, Data.Uniform(935, 67, 1.5f), new RmsNormCase(3, 67, inPlace: false, xStd: 1e-3));

    [Test]
    public void RmsNormSmallInputsByHand()
    {
        // x = [5e-3, -5e-3, 1e-3, -3e-3]: sum x^2 = (25 + 25 + 1 + 9) e-6 = 6e-5, mean 1.5e-5; + eps 1e-5 = 2.5e-5,
        // sqrt = 5e-3, 1 / that = 200. w = [1, 2, 0.5, -1] -> y = 200 x w = [1, -2, 0.1, 0.6].
        // Without eps: 1 / sqrt(1.5e-5) = 258.2, y = [1.29, -2.58, 0.129, 0.775]: far outside the tolerance.
        float[] x = [5e-3f, -5e-3f, 1e-3f, -3e-3f], w = [1f, 2f, 0.5f, -1f], want = [1f, -2f, 0.1f, 0.6f];
        Check.Close(want, RefOps.RmsNorm(x, w, 1, 4, 1e-5f), 1e-5, 1e-7, "reference");
        var kernel = RmsNormKernel.Create<F32Weights>(TestDevice.Accelerator);
        using var xBuf = TestDevice.Upload(x);
        using var wBuf = TestDevice.Upload(w);
        using var y = TestDevice.PoisonedFloats(4);
        float[] Launch(float eps) => DenseTestWeights.Run(s => kernel.Launch(s, xBuf.View, new F32Weights(wBuf.View), y.View, 1, 4, eps), y);
        Check.Close(want, Launch(1e-5f), 1e-5, 1e-7, "kernel");
        // The case can tell: the same launch with eps = 0 is 29% off.
        Assert.That(Launch(0f)[0], Is.EqualTo(1.2910f).Within(1e-3), "eps = 0 gives 1 / sqrt(1.5e-5) * 5e-3");
    }

    // MLA's latent: the first R = 24 values of rows R + Dr = 32 wide, normalised in place; the rope parts (NaN-free
    // sentinels) stay as they were, and a second launch into a separate strided output leaves its gaps NaN.
    [Test]
    public void RmsNormStridedRows()
    {
        const int t = 5, r = 24, stride = 32, outStride = 27;
        var x = Data.Uniform(941, (long)t * stride, 1.5f);
        var w = Data.Uniform(942, r, 1f);
        var rows = Enumerable.Range(0, t).SelectMany(i => x.Skip(i * stride).Take(r)).ToArray();
        var want = RefOps.RmsNorm(rows, w, t, r, 1e-6f);
        var kernel = RmsNormKernel.Create<F32Weights>(TestDevice.Accelerator);
        using var wBuf = TestDevice.Upload(w);
        using var inPlace = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats((long)(t - 1) * outStride + r);
        var s = TestDevice.Accelerator.DefaultStream;
        kernel.Launch(s, inPlace.View, stride, new F32Weights(wBuf.View), y.View, outStride, t, r, 1e-6f);
        kernel.Launch(s, inPlace.View, stride, new F32Weights(wBuf.View), inPlace.View, stride, t, r, 1e-6f);
        s.Synchronize();
        var got = inPlace.GetAsArray1D();
        var sep = y.GetAsArray1D();
        for (int i = 0; i < t; i++)
        {
            Check.Close(want.AsSpan(i * r, r).ToArray(), got.AsSpan(i * stride, r).ToArray(), 1e-5, 1e-6, $"in place, row {i}");
            Assert.That(got.AsSpan(i * stride + r, stride - r).ToArray(), Is.EqualTo(x.AsSpan(i * stride + r, stride - r).ToArray()), $"rope part of row {i}");
            Check.Close(want.AsSpan(i * r, r).ToArray(), sep.AsSpan(i * outStride, r).ToArray(), 1e-5, 1e-6, $"strided output, row {i}");
            if (i < t - 1)
                Assert.That(sep.AsSpan(i * outStride + r, outStride - r).ToArray().All(float.IsNaN), $"gap after row {i} untouched");
        }

        Assert.Throws<ArgumentException>(() => kernel.Launch(s, inPlace.View, r - 1, new F32Weights(wBuf.View), y.View, outStride, t, r, 1e-6f), "stride < D");
    }

    [Test]
    public void RmsNormInPlace() =>
        DenseTestWeights.With(WeightType.BF16, Data.Uniform(940, 67, 1.5f), new RmsNormCase(3, 67, inPlace: true));

    [TestCase(1, 40, 1f)]
    [TestCase(17, 67, 30f)]
    [TestCase(3, 1000, 100f)]
    public void SoftmaxMatchesReference(int rows, int cols, float scale)
    {
        // Large scales exercise the max subtraction: exp(100) would overflow without it... in f32 exp(89) does.
        var x = Data.Uniform(950 + cols, (long)rows * cols, scale);
        var kernel = SoftmaxKernel.Create(TestDevice.Accelerator);
        using var xBuf = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats((long)rows * cols);
        var got = DenseTestWeights.Run(s => kernel.Launch(s, xBuf.View, y.View, rows, cols), y);
        Check.Close(RefOps.Softmax(x, rows, cols), got, 1e-5, 1e-7, $"softmax {rows}x{cols}");
    }

    [Test]
    public void RowKernelsAreDeterministic()
    {
        const int rows = 3, cols = 300;
        var x = Data.Gaussian(960, rows * cols);
        using var xBuf = TestDevice.Upload(x);
        using var wBuf = TestDevice.Upload(Data.Uniform(961, cols));
        using var y = TestDevice.PoisonedFloats(rows * cols);
        var softmax = SoftmaxKernel.Create(TestDevice.Accelerator);
        var rms = RmsNormKernel.Create<F32Weights>(TestDevice.Accelerator);
        var w = new F32Weights(wBuf.View);
        Check.BitEqual(DenseTestWeights.Run(s => softmax.Launch(s, xBuf.View, y.View, rows, cols), y),
            DenseTestWeights.Run(s => softmax.Launch(s, xBuf.View, y.View, rows, cols), y), "softmax");
        Check.BitEqual(DenseTestWeights.Run(s => rms.Launch(s, xBuf.View, w, y.View, rows, cols, 1e-6f), y),
            DenseTestWeights.Run(s => rms.Launch(s, xBuf.View, w, y.View, rows, cols, 1e-6f), y), "rmsnorm");
    }

    [Test]
    public void RowKernelsRejectWrongShapes()
    {
        var s = TestDevice.Accelerator.DefaultStream;
        using var x = TestDevice.Upload(Data.Uniform(970, 12));
        using var ids = TestDevice.Upload(new[] { 1, 2 });
        var w = new F32Weights(x.View);
        var e = Assert.Throws<ArgumentException>(() => RmsNormKernel.Create<F32Weights>(TestDevice.Accelerator).Launch(s, x.View, w, x.View, 3, 4, 1e-5f))!;
        Assert.That(e.Message, Does.Contain("RmsNorm: weight has 12 elements"));
        Assert.Throws<ArgumentException>(() => SoftmaxKernel.Create(TestDevice.Accelerator).Launch(s, x.View, x.View, 5, 2));
        Assert.Throws<ArgumentException>(() => EmbeddingKernel.Create<F32Weights>(TestDevice.Accelerator).Launch(s, ids.View, w, x.View, 2, 3, 4));
    }
}
