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

    private sealed class RmsNormCase(int tokens, int dim, bool inPlace) : IWeightsTest
    {
        public void Run<TW>(TW w, float[] seen)
            where TW : struct, IWeights
        {
            const float eps = 1e-5f;
            var kernel = RmsNormKernel.Create<TW>(TestDevice.Accelerator);
            var x = Data.Gaussian(920 + tokens + dim, (long)tokens * dim, 2.0);
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
