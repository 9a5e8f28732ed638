using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Dense;

public class MatMulTests
{
    private sealed class Case(MatMulVersion? version, int tokens, int outDim, int inDim, int seed, bool accumulate) : IWeightsTest
    {
        public void Run<TW>(TW w, float[] seen)
            where TW : struct, IWeights
        {
            var kernel = MatMulKernel.Create<TW>(TestDevice.Accelerator);
            var x = Data.Uniform(seed + 1, (long)tokens * inDim);
            var y0 = Data.Uniform(seed + 2, (long)tokens * outDim);
            using var xBuf = TestDevice.Upload(x);
            using var yBuf = accumulate ? TestDevice.Upload(y0) : TestDevice.PoisonedFloats((long)tokens * outDim);
            var got = DenseTestWeights.Run(s => Launch(kernel, s, xBuf.View, w, yBuf.View), yBuf);

            var expected = RefOps.MatMulT(x, seen, tokens, outDim, inDim);
            if (accumulate)
                expected = expected.Select((v, i) => (float)((double)v + y0[i])).ToArray();
            Check.Close(expected, got, 1e-5, DenseTestWeights.DotAtol(inDim), $"{version} {typeof(TW).Name} T={tokens} Out={outDim} In={inDim}");
        }

        private void Launch<TW>(MatMulKernel<TW> kernel, AcceleratorStream s, ILGPU.ArrayView<float> x, TW w, ILGPU.ArrayView<float> y)
            where TW : struct, IWeights
        {
            // null: the launcher's own choice (MatMulKernel<TW>.Choose).
            if (version is { } v)
                kernel.Launch(v, s, x, w, y, tokens, outDim, inDim, accumulate);
            else
                kernel.Launch(s, x, w, y, tokens, outDim, inDim, accumulate);
        }
    }

    private static void Run(MatMulVersion? version, WeightType type, int tokens, int outDim, int inDim, bool accumulate = false)
    {
        int seed = HashCode.Combine(version, type, tokens, outDim, inDim) & 0xFFFF;
        var w = Data.Uniform(seed, (long)outDim * inDim);
        DenseTestWeights.With(type, w, new Case(version, tokens, outDim, inDim, seed, accumulate));
    }

    [TestCase(MatMulVersion.V1, 3, 40, 67)]
    [TestCase(MatMulVersion.V1, 17, 67, 100)]
    [TestCase(MatMulVersion.V2, 3, 40, 67)]
    [TestCase(MatMulVersion.V2, 17, 100, 40)]
    [TestCase(MatMulVersion.V2, 69, 67, 100)]
    [TestCase(MatMulVersion.GemvV1, 1, 67, 100)]
    [TestCase(MatMulVersion.GemvV1, 1, 9, 1000)]
    [TestCase(MatMulVersion.GemvV1, 3, 40, 67)]
    public void MatchesReferenceF32(MatMulVersion version, int tokens, int outDim, int inDim) =>
        Run(version, WeightType.F32, tokens, outDim, inDim);

    // GEMV-V2 reads W as 16-byte words: In * sizeof(weight) must be a multiple of 16 (F32: In % 4, F16/BF16: In % 8).
    [TestCase(WeightType.F32, 1, 67, 100)]
    [TestCase(WeightType.F16, 1, 67, 104)]
    [TestCase(WeightType.BF16, 1, 40, 1000)]
    [TestCase(WeightType.BF16, 3, 9, 64)]
    public void WideGemvMatchesReference(WeightType type, int tokens, int outDim, int inDim) =>
        Run(MatMulVersion.GemvV2, type, tokens, outDim, inDim);

    [Test]
    public void WideGemvNeedsAlignedWholeWords()
    {
        var kernel = MatMulKernel.Create<BF16Weights>(TestDevice.Accelerator);
        using var raw = TestDevice.Upload(Data.Uniform(85, 8 * 65).Select(BF16.FromFloat).ToArray());
        Assert.That(MatMulKernel<BF16Weights>.TryGetWide(new BF16Weights(raw.View.SubView(0, 8 * 64)), 64, out _), Is.True);
        Assert.That(MatMulKernel<BF16Weights>.TryGetWide(new BF16Weights(raw.View.SubView(1, 8 * 64)), 64, out _), Is.False, "offset of 2 bytes");
        Assert.That(MatMulKernel<BF16Weights>.TryGetWide(new BF16Weights(raw.View.SubView(0, 5 * 100)), 100, out _), Is.False, "row of 200 bytes");
        using var x = TestDevice.Upload(Data.Uniform(86, 100));
        using var y = TestDevice.PoisonedFloats(5);
        var e = Assert.Throws<ArgumentException>(() =>
            kernel.Launch(MatMulVersion.GemvV2, TestDevice.Accelerator.DefaultStream, x.View, new BF16Weights(raw.View.SubView(0, 5 * 100)), y.View, 1, 5, 100))!;
        Assert.That(e.Message, Does.Contain("GEMV-V2 needs"));
    }

    [TestCase(MatMulVersion.V1, WeightType.F16)]
    [TestCase(MatMulVersion.V2, WeightType.F16)]
    [TestCase(MatMulVersion.V2, WeightType.BF16)]
    [TestCase(MatMulVersion.GemvV1, WeightType.F16)]
    [TestCase(MatMulVersion.GemvV1, WeightType.BF16)]
    public void MatchesReferenceHalfWeights(MatMulVersion version, WeightType type) =>
        Run(version, type, version == MatMulVersion.GemvV1 ? 1 : 17, 40, 67);

    // The launcher's own choice (GEMV-V2 at T = 1 with In = 64, GEMV-V1 with In = 67, V2 at T = 3).
    [TestCase(1, 67)]
    [TestCase(1, 64)]
    [TestCase(3, 67)]
    public void AccumulateAddsToOutput(int tokens, int inDim) =>
        Run(null, WeightType.BF16, tokens, 40, inDim, accumulate: true);

    [TestCase(1, 64, MatMulVersion.GemvV2)]
    [TestCase(1, 67, MatMulVersion.GemvV1)]
    [TestCase(3, 64, MatMulVersion.V2)]
    public void ChoosesGemvForOneTokenAndTilesOtherwise(int tokens, int inDim, MatMulVersion expected)
    {
        var kernel = MatMulKernel.Create<BF16Weights>(TestDevice.Accelerator);
        using var raw = TestDevice.Upload(new ushort[40 * inDim]);
        Assert.That(kernel.Choose(new BF16Weights(raw.View), tokens, inDim), Is.EqualTo(expected));
    }

    [Test]
    public void TwoLaunchesAreBitIdentical()
    {
        const int tokens = 3, outDim = 40, inDim = 72;
        var kernel = MatMulKernel.Create<F32Weights>(TestDevice.Accelerator);
        using var x = TestDevice.Upload(Data.Uniform(71, tokens * inDim));
        using var w = TestDevice.Upload(Data.Uniform(72, outDim * inDim));
        using var y = TestDevice.PoisonedFloats(tokens * outDim);
        var weights = new F32Weights(w.View);
        foreach (var launch in new Action<AcceleratorStream>[]
                 {
                     s => kernel.Launch(MatMulVersion.V2, s, x.View, weights, y.View, tokens, outDim, inDim),
                     s => kernel.Launch(MatMulVersion.GemvV1, s, x.View, weights, y.View, tokens, outDim, inDim),
                     s => kernel.Launch(MatMulVersion.GemvV2, s, x.View, weights, y.View, tokens, outDim, inDim),
                 })
        {
            var first = DenseTestWeights.Run(launch, y);
            var second = DenseTestWeights.Run(launch, y);
            Check.BitEqual(first, second);
        }
    }

    [Test]
    public void RejectsWrongShapes()
    {
        var kernel = MatMulKernel.Create<F32Weights>(TestDevice.Accelerator);
        var s = TestDevice.Accelerator.DefaultStream;
        using var x = TestDevice.Upload(Data.Uniform(81, 3 * 8));
        using var w = TestDevice.Upload(Data.Uniform(82, 5 * 8));
        using var y = TestDevice.PoisonedFloats(3 * 5);
        var weights = new F32Weights(w.View);
        var e = Assert.Throws<ArgumentException>(() => kernel.Launch(s, x.View, weights, y.View, 3, 5, 7))!;
        Assert.That(e.Message, Does.Contain("MatMul: x has 24 elements"));
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, x.View, weights, y.View, 3, 6, 8));
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, x.View, weights, y.View, 0, 5, 8));
    }
}
