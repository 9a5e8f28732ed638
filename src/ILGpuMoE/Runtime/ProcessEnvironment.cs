// The environment variables the runtime's entry points honour, read in this one place. The kernel library reads none:
// an entry point (the CLI's Main, the bench's Main) calls Apply once at start, before the first ILGPU context, and
// reads the device default here when its --device is absent.
//   ILGPUMOE_DEVICE   the default device: auto|cuda|opencl|cpu (Devices.Parse)
//   ILGPUMOE_LIBCUDA  a CUDA driver library to try before libcuda.so / libcuda.so.1 (CudaDriver.PreferLibrary)
using ILGpuMoE.Kernels;

namespace ILGpuMoE.Runtime;

public static class ProcessEnvironment
{
    public const string DeviceVariable = "ILGPUMOE_DEVICE";

    public const string LibCudaVariable = "ILGPUMOE_LIBCUDA";

    /// <summary>Hands ILGPUMOE_LIBCUDA (when set) to the kernel library's driver loader.</summary>
    public static void Apply()
    {
        var libcuda = Environment.GetEnvironmentVariable(LibCudaVariable);
        if (!string.IsNullOrWhiteSpace(libcuda))
            CudaDriver.PreferLibrary(libcuda, LibCudaVariable);
    }

    /// <summary>ILGPUMOE_DEVICE, or Auto when it is unset; ArgumentException (naming the value) when it is not a device.</summary>
    public static DeviceChoice Device() => Devices.Parse(Environment.GetEnvironmentVariable(DeviceVariable));

    /// <summary>ILGPUMOE_DEVICE's raw text (null when unset), for entry points that parse it with their own default.</summary>
    public static string? DeviceText() => Environment.GetEnvironmentVariable(DeviceVariable);
}
