// The global --device option and the one place that turns it into an accelerator.
// Default: the ILGPUMOE_DEVICE environment variable, else auto (CUDA, then OpenCL, then the CPU accelerator).
using System.CommandLine;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Runtime;

namespace ILGpuMoE.Cli;

public static class DeviceOption
{
    /// <summary>--device auto|cuda|opencl|cpu|cpu-emulator, recursive so every subcommand accepts it.</summary>
    public static Option<DeviceChoice> Create() => new("--device", "-d")
    {
        Description = $"Device: auto|cuda|opencl|cpu|cpu-emulator (default: ${ProcessEnvironment.DeviceVariable}, else auto). " +
                      "cpu: the CPU backend (SIMD host code); cpu-emulator: ILGPU's CPU accelerator running the GPU kernels (tests)",
        HelpName = "auto|cuda|opencl|cpu|cpu-emulator",
        Recursive = true,
        CustomParser = result =>
        {
            var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : null;
            try
            {
                return Devices.Parse(text);
            }
            catch (ArgumentException e)
            {
                result.AddError($"--device: {e.Message}");
                return DeviceChoice.Auto;
            }
        },
        DefaultValueFactory = _ => FromEnvironment(),
    };

    /// <summary>
    /// The one check of --device (or $ILGPUMOE_DEVICE) that Program runs before every command, including those that
    /// use no device (inspect, quantize, ptx, bench's forwarder): a device the machine cannot serve is exit 2 with the
    /// same line everywhere (DeviceSession.Select's), before any work. auto falls back to the CPU accelerator and cpu is
    /// always there, so neither needs a context.
    /// </summary>
    public static void Validate(DeviceChoice choice)
    {
        switch (choice)
        {
            case DeviceChoice.Auto or DeviceChoice.Cpu or DeviceChoice.CpuEmulator:
                return;
            case DeviceChoice.Cuda or DeviceChoice.OpenCL:
                using (var context = Devices.CreateContext())
                    DeviceSession.Select(context, choice);
                return;
            default:
                throw new System.Diagnostics.UnreachableException($"--device {choice}");
        }
    }

    /// <summary>The environment's default; a bad value is a usage error naming the variable.</summary>
    public static DeviceChoice FromEnvironment()
    {
        try
        {
            return ProcessEnvironment.Device();
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException($"{ProcessEnvironment.DeviceVariable}: {e.Message}");
        }
    }
}

/// <summary>
/// A context and an accelerator for one command run: the library's MoeDevice (src/ILGpuMoE/Runtime/MoeDevice.cs), with
/// a device the machine cannot serve as a usage error (exit 2) and `auto`'s pick reported on stderr.
/// </summary>
public sealed class DeviceSession : IDisposable
{
    private readonly MoeDevice _device;

    private DeviceSession(MoeDevice device) => _device = device;

    public Context Context => _device.Context;

    public Device Device => _device.Device;

    public Accelerator Accelerator => _device.Accelerator;

    public string Description => _device.Description;

    /// <summary>Opens the device; announce: print auto's pick on stderr (LoadedModel prints its own line instead).</summary>
    public static DeviceSession Open(DeviceChoice choice, TextWriter err, bool profiling = false, bool announce = true)
    {
        MoeDevice device;
        try
        {
            device = MoeDevice.Open(choice, profiling);
        }
        catch (InvalidOperationException e)
        {
            throw Usage(choice, e);
        }

        if (choice == DeviceChoice.Auto && announce)
            err.WriteLine($"device (auto): {device.Description}");
        return new DeviceSession(device);
    }

    /// <summary>Devices.Select with its "not there" failure turned into a usage error (exit 2).</summary>
    public static Device Select(Context context, DeviceChoice choice)
    {
        try
        {
            return Devices.Select(context, choice);
        }
        catch (InvalidOperationException e)
        {
            throw Usage(choice, e);
        }
    }

    private static CliUsageException Usage(DeviceChoice choice, InvalidOperationException e) =>
        new($"--device {choice.ToString().ToLowerInvariant()}: {e.Message}");

    public void Dispose() => _device.Dispose();
}
