// ilgpumoe devices: what ILGPU sees, which device `auto` (and --device, when given) would pick, and always one CUDA
// line: the driver library file loaded (or every name tried and why each failed) and cuInit's answer by name, because
// "no CUDA row in the table" alone does not say whether the driver is missing, unloadable or sees no GPU.
using System.CommandLine;
using ILGpuMoE.Kernels;
using Spectre.Console;

namespace ILGpuMoE.Cli.Commands;

public static class DevicesCommand
{
    public static Command Create(CliIo io, Option<DeviceChoice> device)
    {
        var command = new Command("devices", "List the devices ILGPU sees and the one --device auto picks");
        command.SetAction(parse => Run(io, parse.GetValue(device)));
        return command;
    }

    public static int Run(CliIo io, DeviceChoice choice)
    {
        using var context = Devices.CreateContext();
        var auto = DeviceSession.Select(context, DeviceChoice.Auto);
        // An unusable --device fails before anything is printed: exit 2 with one line (it names the CUDA reason).
        var picked = choice == DeviceChoice.Auto ? null : DeviceSession.Select(context, choice);

        // The CPU accelerator appears twice: as the CPU backend (--device cpu: host SIMD code, what auto runs on a machine
        // without a GPU) and as the emulator of the GPU kernels (--device cpu-emulator).
        string backend = LoadedModel.CpuBackendLine($"cpu ({ILGpuMoE.Cpu.CpuThreads.DefaultCount} threads by default)");
        bool autoCpu = auto.AcceleratorType == ILGPU.Runtime.AcceleratorType.CPU;
        var table = new Table().AddColumn("--device").AddColumn("device").AddColumn("auto");
        foreach (var d in context.Devices)
        {
            bool cpu = d.AcceleratorType == ILGPU.Runtime.AcceleratorType.CPU;
            if (cpu)
                table.AddRow("cpu", Markup.Escape(backend), autoCpu ? "<-" : "");
            string name = d.AcceleratorType switch
            {
                ILGPU.Runtime.AcceleratorType.CPU => "cpu-emulator",
                ILGPU.Runtime.AcceleratorType.Cuda => "cuda",
                ILGPU.Runtime.AcceleratorType.OpenCL => "opencl",
                _ => "",
            };
            table.AddRow(name, Markup.Escape(Devices.Describe(d)), ReferenceEquals(d, auto) && !cpu ? "<-" : "");
        }

        io.Ansi.Write(table);
        io.Out.WriteLine(CudaDriver.Probe().Describe());
        io.Out.WriteLine($"auto picks: {(autoCpu ? backend : Devices.Describe(auto))}");
        if (picked is not null)
            io.Out.WriteLine($"--device {Name(choice)} picks: {(choice == DeviceChoice.Cpu ? backend : Devices.Describe(picked))}");
        return CliErrors.Ok;
    }

    private static string Name(DeviceChoice c) => c switch
    {
        DeviceChoice.Auto => "auto",
        DeviceChoice.Cuda => "cuda",
        DeviceChoice.OpenCL => "opencl",
        DeviceChoice.Cpu => "cpu",
        DeviceChoice.CpuEmulator => "cpu-emulator",
        _ => throw new ArgumentException($"--device: unknown choice {c}"),
    };
}
