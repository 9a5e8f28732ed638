using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Dense;

public class MatMulTests
{
    public enum Version
    {
        V1,
        V2,
        Gemv,
        GemvV2,
        Auto,
    }

    private sealed class Case(Version version, int tokens, int outDim, int inDim, int seed, bool accumulate) : IWeightsTest
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
            switch (version)
            {
                case Version.V1: kernel.LaunchV1(s, x, w, y, tokens, outDim, inDim, accumulate); break;
                case Version.V2: kernel.LaunchV2(s, x, w, y, tokens, outDim, inDim, accumulate); break;
                case Version.Gemv: kernel.LaunchGemvV1(s, x, w, y, tokens, outDim, inDim, accumulate); break;
                case Version.GemvV2: kernel.LaunchGemvV2(s, x, w, y, tokens, outDim, inDim, accumulate); break;
                default: kernel.Launch(s, x, w, y, tokens, outDim, inDim, accumulate); break;
            }
        }
    }

    private static void Run(Version version, WeightType type, int tokens, int outDim, int inDim, bool accumulate = false)
    {
        int seed = HashCode.Combine(version, type, tokens, outDim, inDim) & 0xFFFF;
        var w = Data.Uniform(seed, (long)outDim * inDim);
        DenseTestWeights.With(type, w, new Case(version, tokens, outDim, inDim, seed, accumulate));
    }

    [TestCase(Version.V1, 3, 40, 67)]
    [TestCase(Version.V1, 17, 67, 100)]
    [TestCase(Version.V2, 3, 40, 67)]
    [TestCase(Version.V2, 17, 100, 40)]
    [TestCase(Version.V2, 69, 67, 100)]
    [TestCase(Version.Gemv, 1, 67, 100)]
    [TestCase(Version.Gemv, 1, 9, 1000)]
    [TestCase(Version.Gemv, 3, 40, 67)]
    public void MatchesReferenceF32(Version version, int tokens, int outDim, int inDim) =>
        Run(version, WeightType.F32, tokens, outDim, inDim);

    // GEMV-V2 reads W as 16-byte words: In * sizeof(weight) must be a multiple of 16 (F32: In % 4, F16/BF16: In % 8).
    [TestCase(WeightType.F32, 1, 67, 100)]
    [TestCase(WeightType.F16, 1, 67, 104)]
    [TestCase(WeightType.BF16, 1, 40, 1000)]
    [TestCase(WeightType.BF16, 3, 9, 64)]
    public void WideGemvMatchesReference(WeightType type, int tokens, int outDim, int inDim) =>
        Run(Version.GemvV2, type, tokens, outDim, inDim);

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
            kernel.LaunchGemvV2(TestDevice.Accelerator.DefaultStream, x.View, new BF16Weights(raw.View.SubView(0, 5 * 100)), y.View, 1, 5, 100))!;
        Assert.That(e.Message, Does.Contain("GEMV-V2 needs"));
    }

    [TestCase(Version.V1, WeightType.F16)]
    [TestCase(Version.V2, WeightType.F16)]
    [TestCase(Version.V2, WeightType.BF16)]
    [TestCase(Version.Gemv, WeightType.F16)]
    [TestCase(Version.Gemv, WeightType.BF16)]
    public void MatchesReferenceHalfWeights(Version version, WeightType type) =>
        Run(version, type, version == Version.Gemv ? 1 : 17, 40, 67);

    [TestCase(Version.Auto, 1, 67)]
    [TestCase(Version.Auto, 1, 64)]
    [TestCase(Version.Auto, 3, 67)]
    public void AccumulateAddsToOutput(Version version, int tokens, int inDim) =>
        Run(version, WeightType.BF16, tokens, 40, inDim, accumulate: true);

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
                     s => kernel.LaunchV2(s, x.View, weights, y.View, tokens, outDim, inDim),
                     s => kernel.LaunchGemvV1(s, x.View, weights, y.View, tokens, outDim, inDim),
                     s => kernel.LaunchGemvV2(s, x.View, weights, y.View, tokens, outDim, inDim),
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
