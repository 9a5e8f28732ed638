using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;

namespace ILGpuMoE.Tests.Common;

/// <summary>
/// One ILGPU context and CPU accelerator for the whole test run (context creation and kernel loads are the
/// slow part). Tests that launch kernels take <see cref="Accelerator"/> and must not dispose it.
/// </summary>
public static class TestDevice
{
    private static readonly Lazy<(Context Context, Accelerator Accelerator)> Shared = new(() =>
    {
        var context = Devices.CreateContext(cpuOnly: true);
        var accelerator = Devices.Select(context, DeviceChoice.Cpu).CreateAccelerator(context);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            accelerator.Dispose();
            context.Dispose();
        };
        return (context, accelerator);
    }, LazyThreadSafetyMode.ExecutionAndPublication);

    public static Context Context => Shared.Value.Context;

    public static Accelerator Accelerator => Shared.Value.Accelerator;

    /// <summary>A device buffer holding data.</summary>
    public static MemoryBuffer1D<T, Stride1D.Dense> Upload<T>(T[] data)
        where T : unmanaged
    {
        var buffer = Accelerator.Allocate1D<T>(data.Length);
        buffer.CopyFromCPU(data);
        return buffer;
    }

    /// <summary>A device buffer of n floats, every one NaN: whatever a kernel fails to write stays NaN and fails the test.</summary>
    public static MemoryBuffer1D<float, Stride1D.Dense> PoisonedFloats(long n)
    {
        var buffer = Accelerator.Allocate1D<float>(Math.Max(n, 1));
        var nan = new float[Math.Max(n, 1)];
        Array.Fill(nan, float.NaN);
        buffer.CopyFromCPU(nan);
        return buffer;
    }

    /// <summary>A device buffer of n ints, every one int.MinValue (an impossible id or offset).</summary>
    public static MemoryBuffer1D<int, Stride1D.Dense> PoisonedInts(long n)
    {
        var buffer = Accelerator.Allocate1D<int>(Math.Max(n, 1));
        var bad = new int[Math.Max(n, 1)];
        Array.Fill(bad, int.MinValue);
        buffer.CopyFromCPU(bad);
        return buffer;
    }
}
