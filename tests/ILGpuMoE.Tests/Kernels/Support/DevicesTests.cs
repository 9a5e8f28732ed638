using ILGpuMoE.Kernels;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Support;

/// <summary>Devices.Describe / AvailableMemory on the CPU accelerator, whose MemorySize is a 2^63-byte sentinel.</summary>
[TestFixture]
public class DevicesTests
{
    [Test]
    public void CpuAvailableMemoryIsTheHostsNotTheSentinel()
    {
        var acc = TestDevice.Accelerator;
        long available = Devices.AvailableMemory(acc);
        Assert.That(acc.MemorySize, Is.GreaterThan(1L << 50), "premise: the CPU accelerator reports a sentinel");
        Assert.That(available, Is.EqualTo(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes));
        Assert.That(available, Is.InRange(1L << 26, 1L << 50), "host memory between 64 MiB and 1 PiB");
        Assert.That(Devices.AvailableMemory(acc.Device), Is.EqualTo(available));
    }

    [Test]
    public void CpuDescribeShowsHostMemory()
    {
        string line = Devices.Describe(TestDevice.Accelerator.Device);
        double gib = Devices.HostMemory() / (1024.0 * 1024 * 1024);
        Assert.That(line, Does.Contain($"host memory {gib:F1} GiB"), line);
        Assert.That(line, Does.Not.Contain("8589934592"), line);
    }
}
