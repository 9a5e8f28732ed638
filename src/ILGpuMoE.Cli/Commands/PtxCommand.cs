// ilgpumoe ptx --out DIR [--lint]: every kernel (every version, every weight type) compiled for sm_90 with no GPU
// present, one .ptx per kernel plus manifest.json and launch.tsv (name, declared block size, most dynamic shared
// bytes, for tools/ptxas-check.sh). --lint runs PtxLint and prints one line per kernel; exit 1 when a check fails.
// --sass compiles each kernel with ptxas for sm_90 and reads cuobjdump's SASS (SassReport): DIR/sass/<kernel>.sass,
// DIR/sass.json and a table; --check-decode (implies --sass) exits 1 when a decode weights kernel's hot loop loads
// less than half of its global bytes 128 bits wide. --sass also exits 1 when a tensor-core kernel ([KernelInfo]
// TensorCore) lacks its instruction (HMMA / IMMA) or uses local memory. Without ptxas or cuobjdump: one line, exit 2.
// --out is checked first (CliOutput); everything is written into a temporary folder next to it and moved in when the
// run completes (a failing check included), so an error or Ctrl-C (checked between kernels) leaves DIR as it was.
using System.CommandLine;
using System.Text.Json;
using ILGpuMoE.Ptx;

namespace ILGpuMoE.Cli.Commands;

public static class PtxCommand
{
    public static Command Create(CliIo io)
    {
        var outDir = new Option<string>("--out") { Description = "Folder for the .ptx files and manifest.json", Required = true };
        var lint = new Option<bool>("--lint") { Description = "Lint the PTX (uniform branches, vector accesses, local memory); exit 1 on a failure" };
        var notes = new Option<string>("--local-memory") { Description = "The local-memory allow-list for --lint", DefaultValueFactory = _ => "perf/notes/local-memory.md" };
        var sass = new Option<bool>("--sass") { Description = "Compile each kernel with ptxas for sm_90 and report its SASS (registers, occupancy, loads by width, hot loop) in DIR/sass.json" };
        var checkDecode = new Option<bool>("--check-decode") { Description = "With --sass: exit 1 when a decode weights kernel's hot loop loads under half its global bytes 128-bit" };
        var cudaBin = new Option<string?>("--cuda-bin") { Description = "Folder holding ptxas and cuobjdump (default: .cache/cuda/root of the repository, then PATH)" };
        var command = new Command("ptx", "Compile every kernel for sm_90 (PTX ISA 7.8) and write the PTX and a manifest") { outDir, lint, notes, sass, checkDecode, cudaBin };
        command.SetAction(parse => Run(io, parse.GetValue(outDir)!, parse.GetValue(lint), parse.GetValue(notes)!,
            parse.GetValue(sass) || parse.GetValue(checkDecode), parse.GetValue(checkDecode), parse.GetValue(cudaBin)));
        return command;
    }

    public static int Run(CliIo io, string outDir, bool lint = false, string localMemoryNotes = "perf/notes/local-memory.md",
        bool sass = false, bool checkDecode = false, string? cudaBin = null)
    {
        var target = CliOutput.CheckFolder("--out", outDir);
        if (lint && !File.Exists(localMemoryNotes))
        {
            io.Err.WriteLine($"ptx: local-memory allow-list {localMemoryNotes} not found");
            return CliErrors.BadInput;
        }

        // The tools are looked for before the minute-long export, so a missing one fails at once.
        SassTools? tools = null;
        if (sass)
        {
            if (cudaBin is not null && !Directory.Exists(cudaBin))
                throw new CliUsageException($"ptx --cuda-bin: folder {cudaBin} not found");
            tools = SassTools.Find(cudaBin);
            if (tools.Missing is { } missing)
                throw new CliUsageException($"ptx --sass: {missing} not found " +
                    (cudaBin is null ? "under .cache/cuda/root or on PATH (tools/ptxas-check.sh fetches them; or pass --cuda-bin DIR)" : $"in {cudaBin}"));
            if (tools.Unusable() is { } why)
                throw new CliUsageException($"ptx --sass: {why}");
        }

        using var pending = CliOutput.BeginFolder(target, merge: true);
        int Done(int code)
        {
            pending.Commit(io.Cancel);
            return code;
        }

        // The export logs once per kernel: a cancel thrown there stops it at the next kernel.
        var kernels = PtxExporter.Export(pending.Path, log: line =>
        {
            io.Cancel.ThrowIfCancellationRequested();
            io.Out.WriteLine(line);
        });
        int failed = kernels.Count(k => k.Error is not null);
        io.Out.WriteLine($"{kernels.Count - failed} kernels compiled, {failed} failed -> {Path.GetFullPath(outDir)}");
        if (failed > 0)
        {
            io.Err.WriteLine($"ptx: {failed} kernel(s) failed to compile (see manifest.json)");
            return Done(1);
        }

        if (lint)
        {
            var results = PtxLint.Run(pending.Path, kernels, PtxLint.ReadLocalMemoryNotes(localMemoryNotes));
            foreach (var r in results)
                io.Out.WriteLine(r.ToString());
            int bad = results.Count(r => !r.Ok);
            io.Out.WriteLine($"ptx-lint: {results.Count} checked, {bad} failed");
            if (bad > 0)
            {
                io.Err.WriteLine($"ptx: lint failed for {bad} kernel(s)");
                return Done(1);
            }
        }

        return Done(tools is null ? CliErrors.Ok : RunSass(io, pending.Path, kernels, tools, checkDecode, shownDir: outDir));
    }

    /// <summary>
    /// The SASS report of exported kernels (and the decode gate): writes DIR/sass/ and DIR/sass.json, prints the table;
    /// 0 when every kernel compiled (and, with <paramref name="checkDecode"/>, passed), else 1.
    /// </summary>
    public static int RunSass(CliIo io, string outDir, IReadOnlyList<PtxKernel> kernels, SassTools tools, bool checkDecode, string? shownDir = null)
    {
        var results = tools.Run(outDir, kernels);
        var reports = results.Where(r => r.Report is not null).Select(r => r.Report!).ToList();
        File.WriteAllText(Path.Combine(outDir, "sass.json"), JsonSerializer.Serialize(new
        {
            arch = "sm_90",
            ptxas = tools.Ptxas,
            kernels = reports.Select(r => r.ToJson()),
            errors = results.Where(r => r.Error is not null).Select(r => new { name = r.Kernel.Name, error = r.Error }),
        }, PtxExporter.ManifestJson));

        io.Out.WriteLine(SassKernelReport.Header);
        foreach (var r in reports)
            io.Out.WriteLine(r.ToRow());
        var errors = results.Where(r => r.Error is not null).ToList();
        foreach (var (kernel, _, error) in errors)
            io.Out.WriteLine($"{kernel.Name,-44} FAIL {error}");
        int decode = reports.Count(r => r.Decode != Kernels.DecodeUse.None);
        io.Out.WriteLine($"sass: {reports.Count} kernels ({decode} decode), {errors.Count} failed -> {Path.GetFullPath(Path.Combine(shownDir ?? outDir, "sass"))}");
        if (errors.Count > 0)
        {
            io.Err.WriteLine($"ptx --sass: {errors.Count} kernel(s) failed in ptxas or cuobjdump (see sass.json)");
            return 1;
        }

        // The tensor-core gate is part of every SASS report: its instruction, no local memory.
        var tensorCore = reports.Where(r => r.TensorCore.Length > 0).ToList();
        if (!Gate(io, tensorCore, r => r.TensorCoreFailure(), "tensor-core",
                n => $"tensor-core: {tensorCore.Count} kernel(s), {n} without their instruction or with local memory",
                n => $"ptx --sass: {n} tensor-core kernel(s) fail the SASS gate"))
            return 1;

        if (!checkDecode)
            return CliErrors.Ok;
        int weights = reports.Count(r => r.Decode == Kernels.DecodeUse.Weights);
        if (!Gate(io, reports, r => r.DecodeFailure(), "decode-check",
                n => $"decode-check: {weights} decode weights kernel(s), {n} load under half their hot-loop bytes 128-bit",
                n => $"ptx --check-decode: {n} decode weights kernel(s) fail the 128-bit load check"))
            return 1;

        return CliErrors.Ok;
    }

    /// <summary>
    /// One SASS gate over <paramref name="reports"/>: a "TAG FAIL why" line per failing kernel and the summary line on
    /// stdout; on a failure also one stderr line naming them all. True when every kernel passes.
    /// </summary>
    private static bool Gate(CliIo io, IReadOnlyList<SassKernelReport> reports, Func<SassKernelReport, string?> failure, string tag,
        Func<int, string> summary, Func<int, string> error)
    {
        var failed = reports.Select(r => (r.Name, Why: failure(r))).Where(f => f.Why is not null).ToList();
        foreach (var f in failed)
            io.Out.WriteLine($"{tag} FAIL {f.Why}");
        io.Out.WriteLine(summary(failed.Count));
        if (failed.Count == 0)
            return true;
        io.Err.WriteLine($"{error(failed.Count)}: {string.Join(", ", failed.Select(f => f.Name))}");
        return false;
    }
}
