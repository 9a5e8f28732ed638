using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Tests.Common;

/// <summary>The test device has the shape kernels are written for (see Devices' comment).</summary>
public class SmokeTests
{
    [Test]
    public void CpuAcceleratorHasGpuShape()
    {
        var acc = TestDevice.Accelerator;
        Assert.That(acc.WarpSize, Is.EqualTo(32));
        Assert.That(acc.MaxNumThreadsPerGroup, Is.GreaterThanOrEqualTo(256));
    }

    [Test]
    public void KernelWritesEveryPoisonedElement()
    {
        var acc = TestDevice.Accelerator;
        var kernel = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>>((i, y) => y[i] = i * 0.5f + 1);
        using var y = TestDevice.PoisonedFloats(37);
        kernel(37, y.View);
        acc.Synchronize();
        var got = y.GetAsArray1D();
        Check.Close(Enumerable.Range(0, 37).Select(i => i * 0.5f + 1).ToArray(), got);
    }
}
