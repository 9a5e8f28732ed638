// ilgpumoe devices: what ILGPU sees, and which device `auto` (and --device, when given) would pick.
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

        var table = new Table().AddColumn("#").AddColumn("device").AddColumn("auto");
        for (var i = 0; i < context.Devices.Length; i++)
        {
            var d = context.Devices[i];
            table.AddRow(i.ToString(), Markup.Escape(Devices.Describe(d)), ReferenceEquals(d, auto) ? "<-" : "");
        }

        io.Ansi.Write(table);
        io.Out.WriteLine($"auto picks: {Devices.Describe(auto)}");
        if (choice != DeviceChoice.Auto)
            io.Out.WriteLine($"--device {choice.ToString().ToLowerInvariant()} picks: {Devices.Describe(DeviceSession.Select(context, choice))}");
        return CliErrors.Ok;
    }
}
