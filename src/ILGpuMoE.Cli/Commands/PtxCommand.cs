// ilgpumoe ptx --out DIR [--lint]: every kernel (every version, every weight type) compiled for sm_90 with no GPU
// present, one .ptx per kernel plus manifest.json and launch.tsv (name, declared block size, most dynamic shared
// bytes, for tools/ptxas-check.sh). --lint runs PtxLint and prints one line per kernel; exit 1 when a check fails.
using System.CommandLine;
using ILGpuMoE.Ptx;

namespace ILGpuMoE.Cli.Commands;

public static class PtxCommand
{
    public static Command Create(CliIo io)
    {
        var outDir = new Option<string>("--out") { Description = "Folder for the .ptx files and manifest.json", Required = true };
        var lint = new Option<bool>("--lint") { Description = "Lint the PTX (uniform branches, vector accesses, local memory); exit 1 on a failure" };
        var notes = new Option<string>("--local-memory") { Description = "The local-memory allow-list for --lint", DefaultValueFactory = _ => "perf/notes/local-memory.md" };
        var command = new Command("ptx", "Compile every kernel for sm_90 (PTX ISA 7.8) and write the PTX and a manifest") { outDir, lint, notes };
        command.SetAction(parse => Run(io, parse.GetValue(outDir)!, parse.GetValue(lint), parse.GetValue(notes)!));
        return command;
    }

    public static int Run(CliIo io, string outDir, bool lint = false, string localMemoryNotes = "perf/notes/local-memory.md")
    {
        if (lint && !File.Exists(localMemoryNotes))
        {
            io.Err.WriteLine($"ptx: local-memory allow-list {localMemoryNotes} not found");
            return CliErrors.BadInput;
        }

        var kernels = PtxExporter.Export(outDir, log: io.Out.WriteLine);
        int failed = kernels.Count(k => k.Error is not null);
        io.Out.WriteLine($"{kernels.Count - failed} kernels compiled, {failed} failed -> {Path.GetFullPath(outDir)}");
        if (failed > 0)
        {
            io.Err.WriteLine($"ptx: {failed} kernel(s) failed to compile (see manifest.json)");
            return 1;
        }

        if (!lint)
            return CliErrors.Ok;
        var results = PtxLint.Run(outDir, kernels, PtxLint.ReadLocalMemoryNotes(localMemoryNotes));
        foreach (var r in results)
            io.Out.WriteLine(r.ToString());
        int bad = results.Count(r => !r.Ok);
        io.Out.WriteLine($"ptx-lint: {results.Count} checked, {bad} failed");
        if (bad > 0)
        {
            io.Err.WriteLine($"ptx: lint failed for {bad} kernel(s)");
            return 1;
        }

        return CliErrors.Ok;
    }
}
