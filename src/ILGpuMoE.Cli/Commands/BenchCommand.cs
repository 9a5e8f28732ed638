// ilgpumoe bench ...: forwards every argument to the benchmark executable (perf/ILGpuMoE.Perf, assembly ilgpumoe-bench)
// and returns its exit code. Why a forwarder: perf depends on the runtime and the reference (kernels <- src <- perf),
// so the CLI cannot reference it; and the benchmark's packages (ScottPlot, BenchmarkDotNet) stay out of the CLI.
// This is the only call between the two: perf never calls the CLI (perf/NOTES.md, "Why `ilgpumoe bench` forwards").
// Where the bench is looked for, in order:
//   1. $ILGPUMOE_BENCH: a path to the ilgpumoe-bench executable or its .dll;
//   2. next to ilgpumoe: ilgpumoe-bench (apphost) or ilgpumoe-bench.dll (a publish, the tests' bin folder);
//   3. a source checkout above ilgpumoe's folder or the current folder: `dotnet run --project perf/ILGpuMoE.Perf -c Release`.
// stdout/stderr are the child's own (inherited), so the table and the progress lines stream as they come.
// --out is checked here before the child starts (CliOutput); Ctrl-C / SIGTERM ends the child's process tree and exits 130
// (the bench's own folder is its to write: what a killed bench leaves there is perf's business).
using System.CommandLine;
using System.CommandLine.Parsing;
using System.Diagnostics;

namespace ILGpuMoE.Cli.Commands;

public static class BenchCommand
{
    public const string Variable = "ILGPUMOE_BENCH";
    public const string BenchName = "ilgpumoe-bench";
    public const string ProjectPath = "perf/ILGpuMoE.Perf/ILGpuMoE.Perf.csproj";

    public static Command Create(CliIo io)
    {
        var command = new Command("bench",
            "Kernel benchmarks (forwarded to ilgpumoe-bench): --preset tiny|smoke|mixtral-8x7b|qwen-moe-a2.7b|qwen3-30b-a3b|qwen3-235b-a22b|olmoe-1b-7b|gpt-oss-20b|gpt-oss-120b|deepseek-v3-moe --out DIR " +
            "[--device cpu|cpu-emulator|cuda] [--tokens 1,8] [--family dense,attention,gating,moe,quant] [--check-only] [--budget S] [--case-timeout-s S] " +
            "(see perf/NOTES.md); `bench serve --model DIR --out DIR [--concurrency 1,4,16,32]`: the continuous-batching engine under load")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        command.SetAction(parse => Run(io, Forwarded(parse)));
        return command;
    }

    /// <summary>Every token of the command line except the word `bench` itself (root options such as --device included).</summary>
    public static string[] Forwarded(ParseResult parse)
    {
        var tokens = parse.Tokens.ToList();
        int at = tokens.FindIndex(t => t.Type == TokenType.Command && t.Value == "bench");
        return tokens.Where((_, i) => i != at).Select(t => t.Value).ToArray();
    }

    public static int Run(CliIo io, string[] args)
    {
        if (OutValue(args) is { } outDir)
            CliOutput.CheckFolder("--out", outDir);
        var start = Locate() ?? throw new CliUsageException(
            $"bench: {BenchName} is neither next to ilgpumoe nor in a source checkout; build perf/ILGpuMoE.Perf, set {Variable}, " +
            $"or run `dotnet run --project {ProjectPath} -c Release -- {string.Join(' ', args)}`");
        foreach (var a in args)
            start.ArgumentList.Add(a);
        start.UseShellExecute = false;
        io.Err.WriteLine($"bench: {start.FileName} {string.Join(' ', start.ArgumentList)}");
        io.Err.Flush();
        using var child = Process.Start(start) ?? throw new CliUsageException($"bench: could not start {start.FileName}");
        using (io.Cancel.Register(() => child.Kill(entireProcessTree: true)))
            child.WaitForExit();
        io.Cancel.ThrowIfCancellationRequested();
        return child.ExitCode;
    }

    /// <summary>The value of --out / -o (or --out=DIR) among the forwarded arguments; the bench itself rejects a missing one.</summary>
    public static string? OutValue(string[] args)
    {
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] is "--out" or "-o")
                return i + 1 < args.Length ? args[i + 1] : null;
            if (args[i].StartsWith("--out=", StringComparison.Ordinal))
                return args[i]["--out=".Length..];
        }

        return null;
    }

    /// <summary>How to start the bench (arguments not yet added), or null when it cannot be found.</summary>
    public static ProcessStartInfo? Locate()
    {
        var env = Environment.GetEnvironmentVariable(Variable);
        if (!string.IsNullOrWhiteSpace(env))
        {
            if (!File.Exists(env))
                throw new CliUsageException($"{Variable}: {env}: no such file");
            return For(env);
        }

        var here = AppContext.BaseDirectory;
        foreach (var name in new[] { BenchName, BenchName + ".exe", BenchName + ".dll" })
        {
            var path = Path.Combine(here, name);
            if (File.Exists(path))
                return For(path);
        }

        foreach (var dir in new[] { here, Directory.GetCurrentDirectory() })
        {
            for (var d = new DirectoryInfo(dir); d is not null; d = d.Parent)
            {
                var project = Path.Combine(d.FullName, ProjectPath);
                if (File.Exists(project))
                {
                    var run = new ProcessStartInfo("dotnet");
                    foreach (var a in new[] { "run", "--project", project, "-c", "Release", "--" })
                        run.ArgumentList.Add(a);
                    return run;
                }
            }
        }

        return null;
    }

    private static ProcessStartInfo For(string path)
    {
        if (!path.EndsWith(".dll", StringComparison.OrdinalIgnoreCase))
            return new ProcessStartInfo(path);
        var run = new ProcessStartInfo("dotnet");
        run.ArgumentList.Add(path);
        return run;
    }
}
