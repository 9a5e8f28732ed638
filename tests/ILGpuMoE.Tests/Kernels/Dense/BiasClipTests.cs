using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Dense;

/// <summary>dense/bias-clip V1 against RefOps.BiasClip: biases in every dtype, clips that bite, NaN kept, bad input.</summary>
public class BiasClipTests
{
    /// <summary>
    /// y [T, N] is the head of a NaN-poisoned buffer 5 floats longer: the kernel must rewrite all T*N values and leave the
    /// tail alone. clip 0 here means none (+inf); otherwise about a third of the outputs exceed it.
    /// </summary>
    [TestCase(3, 37, WeightType.F32, 0.8f)]
    [TestCase(17, 40, WeightType.F16, 0f)]
    [TestCase(1, 67, WeightType.BF16, 1.2f)]
    [TestCase(2, 300, WeightType.BF16, 0.5f)]
    public void MatchesReference(int tokens, int cols, WeightType type, float clip) =>
        DenseTestWeights.With(type, Data.Uniform(60 + cols, cols, 0.7f),
            new Body(tokens, cols, clip == 0f ? float.PositiveInfinity : clip, $"T={tokens} N={cols} {type} clip {clip}"));

    private sealed class Body(int tokens, int cols, float clip, string what) : IWeightsTest
    {
        public void Run<TW>(TW w, float[] seen)
            where TW : struct, IWeights
        {
            var y = Data.Gaussian(70 + tokens * cols, (long)tokens * cols);
            var want = RefOps.BiasClip(y, seen, tokens, cols, clip);
            if (float.IsFinite(clip))
                Assert.That(want.Count(v => MathF.Abs(v) == clip), Is.GreaterThan(tokens * cols / 10), $"{what}: the clip bites");
            var got = RunKernel<TW>(y, tokens, cols, w, clip);
            Check.Close(want, got.AsSpan(0, y.Length), 1e-6, 1e-7, what);
            Assert.That(got.Skip(y.Length).All(float.IsNaN), $"{what}: past y untouched");
        }
    }

    private static float[] RunKernel<TW>(float[] y, int tokens, int cols, TW? bias, float clip)
        where TW : struct, IWeights
    {
        using var buffer = TestDevice.PoisonedFloats(y.Length + 5);
        buffer.View.SubView(0, y.Length).CopyFromCPU(y);
        var kernel = BiasClipKernel.Create<TW>(TestDevice.Accelerator);
        return DenseTestWeights.Run(s => kernel.Launch(s, buffer.View.SubView(0, y.Length), tokens, cols, bias, clip), buffer);
    }

    [Test]
    public void ClipAloneWithoutBias()
    {
        // y = [-3, -0.5, 0, 0.5, 3, 1.25], clip 1.25 -> [-1.25, -0.5, 0, 0.5, 1.25, 1.25] (by hand).
        var got = RunKernel<F32Weights>([-3f, -0.5f, 0f, 0.5f, 3f, 1.25f], 2, 3, null, 1.25f);
        Assert.That(got[..6], Is.EqualTo(new[] { -1.25f, -0.5f, 0f, 0.5f, 1.25f, 1.25f }));
    }

    [Test]
    public void NaNStaysNaNAndInfinitiesClip()
    {
        // A NaN in y is kept (torch.clamp propagates it; a min/max clamp would turn it into +-clip); +-inf clip to +-c.
        var got = RunKernel<F32Weights>([float.NaN, float.PositiveInfinity, float.NegativeInfinity, 0.25f], 1, 4, null, 2f);
        Assert.That(float.IsNaN(got[0]), $"NaN kept, got {got[0]}");
        Assert.That(got[1..4], Is.EqualTo(new[] { 2f, -2f, 0.25f }));
        var reference = RefOps.BiasClip([float.NaN, 1f], [], 1, 2, 2f);
        Assert.That(float.IsNaN(reference[0]), "the reference keeps NaN too");
    }

    [Test]
    public void NothingToDoLaunchesNothing()
    {
        var y = Data.Gaussian(80, 12);
        Check.BitEqual(y, RunKernel<BF16Weights>(y, 3, 4, null, float.PositiveInfinity).AsSpan(0, 12), "no bias, no clip");
    }

    [Test]
    public void RejectsBadInput()
    {
        var s = TestDevice.Accelerator.DefaultStream;
        using var y = TestDevice.PoisonedFloats(12);
        using var b = TestDevice.Upload(new float[4]);
        var k = BiasClipKernel.Create<F32Weights>(TestDevice.Accelerator);
        var bias = new F32Weights(b.View);
        Assert.Throws<ArgumentException>(() => k.Launch(s, y.View, 3, 5, bias), "y not [T, N]");
        Assert.Throws<ArgumentException>(() => k.Launch(s, y.View, 4, 3, bias), "bias not [N]");
        Assert.Throws<ArgumentException>(() => k.Launch(s, y.View, 0, 12, null, 1f), "T = 0");
        foreach (float clip in new[] { 0f, -1f, float.NaN })
        {
            var e = Assert.Throws<ArgumentException>(() => k.Launch(s, y.View, 3, 4, bias, clip))!;
            Assert.That(e.Message, Does.Contain("clip must be > 0"));
        }
    }
}
