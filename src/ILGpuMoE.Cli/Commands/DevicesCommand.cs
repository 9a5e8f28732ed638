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

        var table = new Table().AddColumn("#").AddColumn("device").AddColumn("auto");
        for (var i = 0; i < context.Devices.Length; i++)
        {
            var d = context.Devices[i];
            table.AddRow(i.ToString(), Markup.Escape(Devices.Describe(d)), ReferenceEquals(d, auto) ? "<-" : "");
        }

        io.Ansi.Write(table);
        io.Out.WriteLine(CudaDriver.Probe().Describe());
        io.Out.WriteLine($"auto picks: {Devices.Describe(auto)}");
        if (picked is not null)
            io.Out.WriteLine($"--device {choice.ToString().ToLowerInvariant()} picks: {Devices.Describe(picked)}");
        return CliErrors.Ok;
    }
}
