// ilgpumoe: the command line. This file only assembles the commands (one file each under Commands/) and applies
// the error policy (CliErrors) around parsing and running them.
using System.CommandLine;
using ILGpuMoE.Cli.Commands;
using ILGpuMoE.Kernels;
using ILGpuMoE.Runtime;

namespace ILGpuMoE.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        ProcessEnvironment.Apply();
        using var signals = new CliSignals();
        return Run(args, CliIo.Standard(signals.Token));
    }

    /// <summary>The whole CLI, in-process: tests call this with StringWriters.</summary>
    public static int Run(string[] args, TextWriter output, TextWriter error) => Run(args, new CliIo(output, error));

    public static int Run(string[] args, CliIo io) => CliErrors.Run(() =>
    {
        var root = BuildRoot(io);
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
            throw new CliUsageException($"{string.Join(" ", parse.Errors.Select(e => e.Message).Distinct())} (see ilgpumoe --help)");
        // --device is checked once here for every command (help, and the root alone, need none).
        if (parse.Action is not System.CommandLine.Help.HelpAction && parse.CommandResult.Command != root)
            DeviceOption.Validate(parse.GetValue(root.Options.OfType<Option<DeviceChoice>>().Single()));
        int code = parse.Invoke(new InvocationConfiguration
        {
            Output = io.Out,
            Error = io.Err,
            // Exceptions reach CliErrors, which owns the exit codes and the one-line messages.
            EnableDefaultExceptionHandler = false,
        });
        // A signal during a command that had no step left to check it (inspect, devices) still ends as a cancel.
        io.Cancel.ThrowIfCancellationRequested();
        return code;
    }, io.Err);

    public static RootCommand BuildRoot(CliIo io)
    {
        var device = DeviceOption.Create();
        var threads = ThreadsOption.Create();
        var root = new RootCommand("ILGpuMoE: Mixture-of-Experts inference on hand-written ILGPU kernels") { device, threads };
        root.Add(DevicesCommand.Create(io, device));
        root.Add(InspectCommand.Create(io));
        root.Add(LogitsCommand.Create(io, device, threads));
        root.Add(GenerateCommand.Create(io, device, threads));
        root.Add(ServeCommand.Create(io, device, threads));
        root.Add(QuantizeCommand.Create(io));
        root.Add(PtxCommand.Create(io));
        root.Add(BenchCommand.Create(io));
        return root;
    }
}
