// Device choice for every entry point (CLI, tests, perf, tools).
//
// One ILGPU Context knows CUDA, OpenCL and our CPU accelerator; `auto` picks CUDA, then OpenCL, then
// the CPU accelerator. The default for --device (ILGPUMOE_DEVICE) is the entry points' business: this library reads
// no environment (src/ILGpuMoE/Runtime/ProcessEnvironment.cs does).
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace ILGpuMoE.Kernels;

public enum DeviceChoice
{
    Auto,
    Cuda,
    OpenCL,

    /// <summary>The runtime's CPU backend (src/ILGpuMoE/Cpu: host SIMD code); its buffers live on ILGPU's CPU accelerator,
    /// so for ILGPU it selects that device.</summary>
    Cpu,

    /// <summary>ILGPU's CPU accelerator running the GPU kernels (emulated threads): how kernels are tested without a GPU.</summary>
    CpuEmulator,
}

public static class Devices
{
    // The CPU accelerator's shape: warp 32, 8 warps per group, 1 multiprocessor.
    // Why: kernels here are written for the GPU: one warp of 32 lanes per row in the GEMV and
    // reduction kernels (lane masks, shuffles over 32 lanes), groups of up to 256 threads for tiles.
    // ILGPU's default CPU device has warp 4 and groups of at most 16, so those launch configurations
    // would not run at all. Warp 32 makes warp-collective code slower to emulate (perf/notes/toolchain-facts.md:
    // a radix sort of 100K keys, 0.7 s at warp 4, 17 s at warp 32), which is why kernels avoid warp collectives in
    // hot loops where a shared memory reduction does as well. One multiprocessor: CI has 2 cores, and each emulated group
    // already runs 256 OS threads; more multiprocessors only add contention.
    public const int CpuWarpSize = 32;
    public const int CpuWarpsPerGroup = 8;
    public const int CpuMultiprocessors = 1;

    /// <summary>The largest group any kernel of ours launches (fits the CPU shape and every GPU).</summary>
    public const int MaxGroupSize = CpuWarpSize * CpuWarpsPerGroup;

    public static CPUDevice CreateCpuDevice() => new(CpuWarpSize, CpuWarpsPerGroup, CpuMultiprocessors);

    /// <summary>Parses auto|cuda|opencl|cpu|cpu-emulator (case-insensitive); throws ArgumentException otherwise.</summary>
    public static DeviceChoice Parse(string? text) => (text ?? "auto").Trim().ToLowerInvariant() switch
    {
        "" or "auto" => DeviceChoice.Auto,
        "cuda" or "gpu" => DeviceChoice.Cuda,
        "opencl" or "cl" => DeviceChoice.OpenCL,
        "cpu" => DeviceChoice.Cpu,
        "cpu-emulator" or "emulator" => DeviceChoice.CpuEmulator,
        _ => throw new ArgumentException($"unknown device '{text}' (expected auto, cuda, opencl, cpu or cpu-emulator)"),
    };

    /// <summary>A context that can see every backend we use, with ILGPU.Algorithms enabled. Installs the driver
    /// library resolver first (CudaDriver): ILGPU binds the CUDA driver once per process, at the first such context.</summary>
    public static Context CreateContext(bool profiling = false, bool cpuOnly = false)
    {
        CudaDriver.InstallResolver();
        return Context.Create(b =>
        {
            b.CPU(CreateCpuDevice());
            if (!cpuOnly)
            {
                b.Cuda();
                b.OpenCL();
            }

            b.EnableAlgorithms();
            b.Optimize(OptimizationLevel.O2);
            if (profiling)
                b.Profiling();
        });
    }

    /// <summary>Picks a device for the choice; throws InvalidOperationException with a one-line reason if absent (for
    /// CUDA: the driver probe's line, which names the library file and cuInit's answer).</summary>
    public static Device Select(Context context, DeviceChoice choice)
    {
        Device? Find(AcceleratorType type) => context.Devices.FirstOrDefault(d => d.AcceleratorType == type);
        return choice switch
        {
            DeviceChoice.Cuda => Find(AcceleratorType.Cuda)
                                ?? throw new InvalidOperationException($"no CUDA device is visible to ILGPU ({CudaDriver.Probe().Describe()})"),
            DeviceChoice.OpenCL => Find(AcceleratorType.OpenCL) ?? throw new InvalidOperationException("no usable OpenCL device is visible to ILGPU"),
            DeviceChoice.Cpu or DeviceChoice.CpuEmulator => Find(AcceleratorType.CPU) ?? throw new InvalidOperationException("ILGPU's CPU accelerator is missing"),
            DeviceChoice.Auto => Find(AcceleratorType.Cuda) ?? Find(AcceleratorType.OpenCL) ?? Find(AcceleratorType.CPU)
                 ?? throw new InvalidOperationException("ILGPU sees no device"),
            _ => throw new UnreachableException($"device choice {(int)choice}"),
        };
    }

    /// <summary>Whether the device runs the tensor-core kernels natively: mma.sync m16n8k16 with BF16 inputs needs
    /// sm_80 or later (kernels/ILGpuMoE.Kernels/TensorCore). Elsewhere they run only emulated (the CPU accelerator).</summary>
    public static bool HasMma(Accelerator accelerator) =>
        accelerator is CudaAccelerator { Architecture: { } arch } && arch >= CudaArchitecture.SM_80;

    /// <summary>One line describing a device: kind, name, memory, warp and group limits. The CPU accelerator reports a
    /// sentinel MemorySize (2^63 bytes), so for it the line shows the host memory the runtime may use instead.</summary>
    public static string Describe(Device d) =>
        $"{d.AcceleratorType,-6} {d.Name} | {MemoryLabel(d)} {AvailableMemory(d) / (1024.0 * 1024 * 1024):F1} GiB | warp {d.WarpSize} | max group {d.MaxNumThreadsPerGroup} | SMs {d.NumMultiprocessors}";

    /// <summary>Bytes the runtime's memory plan may allocate on this accelerator: the device memory for a GPU, the
    /// host's available memory for the CPU accelerator (its buffers are host memory; its MemorySize is a sentinel).</summary>
    public static long AvailableMemory(Accelerator accelerator) => AvailableMemory(accelerator.Device);

    /// <inheritdoc cref="AvailableMemory(Accelerator)"/>
    public static long AvailableMemory(Device device) =>
        device.AcceleratorType == AcceleratorType.CPU ? HostMemory() : device.MemorySize;

    /// <summary>The memory the GC may use on this host (honours container limits): the CPU accelerator's budget.</summary>
    public static long HostMemory() => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    private static string MemoryLabel(Device d) => d.AcceleratorType == AcceleratorType.CPU ? "host memory" : "memory";
}
