// ilgpumoe ptx --out DIR: every kernel (every version, every weight type) compiled for sm_90 with no GPU present,
// one .ptx per kernel plus manifest.json. tools/ptxas-check.sh runs ptxas on the result.
using System.CommandLine;
using ILGpuMoE.Ptx;

namespace ILGpuMoE.Cli.Commands;

public static class PtxCommand
{
    public static Command Create(CliIo io)
    {
        var outDir = new Option<string>("--out") { Description = "Folder for the .ptx files and manifest.json", Required = true };
        var command = new Command("ptx", "Compile every kernel for sm_90 (PTX ISA 7.8) and write the PTX and a manifest") { outDir };
        command.SetAction(parse => Run(io, parse.GetValue(outDir)!));
        return command;
    }

    public static int Run(CliIo io, string outDir)
    {
        var kernels = PtxExporter.Export(outDir, log: io.Out.WriteLine);
        int failed = kernels.Count(k => k.Error is not null);
        io.Out.WriteLine($"{kernels.Count - failed} kernels compiled, {failed} failed -> {Path.GetFullPath(outDir)}");
        if (failed > 0)
        {
            io.Err.WriteLine($"ptx: {failed} kernel(s) failed to compile (see manifest.json)");
            return 1;
        }

        return CliErrors.Ok;
    }
}
