// The device an application runs on: one ILGPU context and one accelerator, chosen as the CLI's --device does (auto:
// CUDA, then OpenCL, then the CPU backend on ILGPU's CPU accelerator; Kernels says which ops to load the model with). What an embedding program opens before MoeModel.Load or a launcher's
// Create; disposing it disposes the accelerator, then the context (a model or session used afterwards throws
// ObjectDisposedException naming what is gone).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;

namespace ILGpuMoE.Runtime;

public sealed class MoeDevice : IDisposable
{
    private MoeDevice(Context context, Device device, Accelerator accelerator, KernelPolicy kernels)
    {
        Context = context;
        Device = device;
        Accelerator = accelerator;
        Kernels = kernels;
    }

    /// <summary>
    /// The kernel policy that goes with the choice: KernelPolicy.Cpu (the CPU backend) for DeviceChoice.Cpu and for Auto
    /// on a machine without a GPU; Auto otherwise (the ILGPU kernels: CUDA, OpenCL, or DeviceChoice.CpuEmulator). Pass it
    /// as ModelLoadOptions.Kernels.
    /// </summary>
    public KernelPolicy Kernels { get; }

    public Context Context { get; }

    public Device Device { get; }

    public Accelerator Accelerator { get; }

    /// <summary>One line: backend, name, memory, warp, group and multiprocessor figures.</summary>
    public string Description => Devices.Describe(Device);

    /// <summary>
    /// Opens <paramref name="choice"/> (auto: the best backend present). Throws InvalidOperationException with a
    /// one-line message when the machine has no such device. profiling: ILGPU's profiling markers on streams.
    /// </summary>
    public static MoeDevice Open(DeviceChoice choice = DeviceChoice.Auto, bool profiling = false)
    {
        var context = Devices.CreateContext(profiling, cpuOnly: choice is DeviceChoice.Cpu or DeviceChoice.CpuEmulator);
        try
        {
            var device = Devices.Select(context, choice);
            bool backend = choice == DeviceChoice.Cpu || (choice == DeviceChoice.Auto && device.AcceleratorType == AcceleratorType.CPU);
            return new MoeDevice(context, device, device.CreateAccelerator(context), backend ? KernelPolicy.Cpu : KernelPolicy.Auto);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Accelerator.Dispose();
        Context.Dispose();
    }
}
