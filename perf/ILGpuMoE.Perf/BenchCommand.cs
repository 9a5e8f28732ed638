// ilgpumoe bench: the kernel suite (and, where they exist, the end-to-end and peer parts) at a named preset.
//   ilgpumoe-bench [bench] --preset tiny|mixtral-8x7b|qwen-moe-a2.7b|deepseek-v3-moe|gpt-oss-20b|... --out DIR
//       [--device auto|cuda|cpu|cpu-emulator] [--tokens 1,8,64] [--family attention,dense,gating,moe,quant] [--check-only] [--no-peer]
//       [--no-e2e] [--e2e-only] [--budget SECONDS] [--case-timeout-s SECONDS] [--cache DIR] [--decode-first]
//   ilgpumoe-bench host [BenchmarkDotNet arguments]     host-side paths (safetensors open/map, ...)
// Writes DIR/bench.json (every figure) and DIR/bench.md (summary) after every case (atomically: temp file + rename),
// DIR/roofline.png at the end; prints the table.
// Exit codes as the CLI: 0 ok, 1 a case failed (wrong, error, CUDA fault) or the end-to-end part failed or something
// unexpected, 2 bad arguments, 3 a case ran past --case-timeout-s or SIGTERM arrived (the report is written first).
// ILGPUMOE_INJECT_FAULT=<family>/<version> makes that case fail as a CUDA fault would (Suite/Faults.cs).
using System.Globalization;
using System.Reflection;
using ILGpuMoE.Kernels;
using ILGpuMoE.Model;
using ILGpuMoE.Runtime;
using ILGpuMoE.Perf.Report;
using ILGpuMoE.Perf.Suite;
using Spectre.Console;

namespace ILGpuMoE.Perf;

/// <summary>Bad command-line input: one line on stderr, exit code 2.</summary>
public sealed class BenchUsageException(string message) : Exception(message);

public sealed record BenchArgs(ShapePreset Preset, string OutDir, DeviceChoice Device, int[]? Tokens, string[]? Families, bool CheckOnly, bool Peer, bool EndToEnd, bool EndToEndOnly = false, double? BudgetSeconds = null,
    double? CaseTimeoutSeconds = null, FaultInjection? Faults = null, string? Cache = null)
{
    /// <summary>--decode-first: the T = 1 cases of decode-marked kernels (Suite/DecodeCases.cs) run before the rest.</summary>
    public bool DecodeFirst { get; init; }

    /// <summary>--router switch|noisy-topk (with --capacity-factor / --noise-seed): the end-to-end model runs that router
    /// (RouterChoice, src/ILGpuMoE/Model/RouterConfig.cs); null: the model's own.</summary>
    public RouterChoice? Router { get; init; }

    public const string Usage =
        "usage: ilgpumoe bench --preset tiny|smoke|mixtral-8x7b|qwen-moe-a2.7b|deepseek-v3-moe|gpt-oss-20b|gpt-oss-120b|... --out DIR [--device auto|cuda|cpu|cpu-emulator] " +
        "[--tokens 1,8,64] [--family attention,dense,gating,moe,quant] [--check-only] [--no-peer] [--no-e2e] [--e2e-only] [--budget SECONDS] [--case-timeout-s SECONDS] [--cache DIR] [--decode-first] [--router switch|noisy-topk] [--capacity-factor C] [--noise-seed S]";

    public static BenchArgs Parse(IReadOnlyList<string> args)
    {
        string? preset = null, outDir = null, device = null, cache = null;
        int[]? tokens = null;
        string[]? families = null;
        bool checkOnly = false, peer = true, endToEnd = true, endToEndOnly = false, decodeFirst = false;
        double? budget = null, caseTimeout = null, capacityFactor = null;
        string? routerName = null;
        ulong? noiseSeed = null;
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            string Value() => i + 1 < args.Count ? args[++i] : throw new BenchUsageException($"{a} needs a value ({Usage})");
            switch (a)
            {
                case "--preset" or "-p":
                    preset = Value();
                    break;
                case "--out" or "-o":
                    outDir = Value();
                    break;
                case "--device" or "-d":
                    device = Value();
                    break;
                case "--tokens" or "-t":
                    tokens = ParseInts(a, Value());
                    break;
                case "--family" or "-f":
                    families = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                    break;
                case "--check-only":
                    checkOnly = true;
                    break;
                case "--no-peer":
                    peer = false;
                    break;
                case "--no-e2e":
                    endToEnd = false;
                    break;
                case "--e2e-only":
                    endToEndOnly = true;
                    break;
                case "--budget":
                    budget = Seconds(a, Value());
                    break;
                case "--case-timeout-s":
                    caseTimeout = Seconds(a, Value());
                    break;
                case "--cache":
                    cache = Value();
                    break;
                case "--decode-first":
                    decodeFirst = true;
                    break;
                case "--router":
                    routerName = Value();
                    break;
                case "--capacity-factor":
                    capacityFactor = double.TryParse(Value(), NumberStyles.Float, CultureInfo.InvariantCulture, out var cf)
                        ? cf : throw new BenchUsageException($"--capacity-factor needs a number ({Usage})");
                    break;
                case "--noise-seed":
                    noiseSeed = ulong.TryParse(Value(), NumberStyles.None, CultureInfo.InvariantCulture, out var ns)
                        ? ns : throw new BenchUsageException($"--noise-seed needs a non-negative integer ({Usage})");
                    break;
                default:
                    throw new BenchUsageException($"unknown argument '{a}' ({Usage})");
            }
        }

        if (preset is null)
            throw new BenchUsageException($"--preset is required ({Usage})");
        ShapePreset shape;
        try
        {
            shape = Presets.Get(preset);
        }
        catch (ArgumentException e)
        {
            throw new BenchUsageException($"--preset: {e.Message}");
        }

        DeviceChoice choice;
        try
        {
            // The tiny preset is meant for the CPU accelerator (the kernels emulated); the others for whatever `auto` finds.
            choice = device is null && shape.IsTiny ? DeviceChoice.CpuEmulator : Devices.Parse(device ?? ProcessEnvironment.DeviceText());
        }
        catch (ArgumentException e)
        {
            throw new BenchUsageException($"--device: {e.Message}");
        }

        if (families is not null)
        {
            var known = Suite.SuiteRunner.Families.Select(f => f.Name).ToHashSet(StringComparer.OrdinalIgnoreCase);
            foreach (var f in families.Where(f => !known.Contains(f)))
                throw new BenchUsageException($"--family: unknown family '{f}' (registered: {string.Join(", ", known)})");
        }

        FaultInjection faults;
        try
        {
            faults = FaultInjection.Parse(Environment.GetEnvironmentVariable(FaultInjection.Variable));
        }
        catch (ArgumentException e)
        {
            throw new BenchUsageException(e.Message);
        }

        return new BenchArgs(shape, outDir ?? Path.Combine("perf", "out", shape.Name), choice, tokens, families, checkOnly, peer, endToEnd || endToEndOnly, endToEndOnly, budget,
            caseTimeout, faults, cache) { DecodeFirst = decodeFirst, Router = ParseRouter(routerName, capacityFactor, noiseSeed) };
    }

    private static RouterChoice? ParseRouter(string? name, double? capacityFactor, ulong? noiseSeed)
    {
        try
        {
            return RouterChoice.Parse(name, capacityFactor, noiseSeed);
        }
        catch (ArgumentException e)
        {
            throw new BenchUsageException(e.Message);
        }
    }

    private static double Seconds(string option, string text) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0 && double.IsFinite(v)
            ? v
            : throw new BenchUsageException($"{option}: '{text}' is not a positive number of seconds");

    private static int[] ParseInts(string option, string text)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var values = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out values[i]) || values[i] < 1)
                throw new BenchUsageException($"{option}: '{parts[i]}' is not a positive integer");
        }

        return values.Length > 0 ? values : throw new BenchUsageException($"{option}: no values");
    }
}

public static class BenchCommand
{
    /// <summary>Runs the suite; returns the exit code. Everything goes to <paramref name="console"/> and <paramref name="err"/>.</summary>
    public static int Run(IReadOnlyList<string> args, IAnsiConsole console, TextWriter err)
    {
        if (args.Any(a => a is "--help" or "-h" or "-?"))
        {
            console.WriteLine(BenchArgs.Usage);
            console.WriteLine("presets: " + string.Join(", ", Presets.All.Select(p => p.Name)) + "; details: perf/NOTES.md");
            return 0;
        }

        BenchArgs options;
        try
        {
            options = BenchArgs.Parse(args);
        }
        catch (BenchUsageException e)
        {
            err.WriteLine($"error: {e.Message}");
            return 2;
        }

        BenchReport report;
        try
        {
            // bench.json and bench.md are rewritten after every case: a run that dies keeps what it measured.
            report = Execute(options, line => err.WriteLine(line), partial => Reports.WriteFiles(options.OutDir, partial), handleSigterm: true);
        }
        catch (BenchUsageException e)
        {
            err.WriteLine($"error: {e.Message}");
            return 2;
        }

        Reports.WriteFiles(options.OutDir, report);
        try
        {
            RooflinePlot.Save(report, Path.Combine(options.OutDir, "roofline.png"));
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or IOException)
        {
            err.WriteLine($"warning: roofline.png not written: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
        }

        Reports.Console(console, report);
        console.MarkupLine($"wrote {Markup.Escape(Path.Combine(options.OutDir, "bench.json"))}, bench.md, roofline.png");
        return report.Failed ? 1 : 0;
    }

    /// <summary>
    /// The whole run as a report. <paramref name="save"/> (when given) receives the report as it stands after every
    /// case and at the end; the test calls this without it (no files) or with its own.
    /// </summary>
    public static BenchReport Execute(BenchArgs options, Action<string> log, Action<BenchReport>? save = null, bool handleSigterm = false)
    {
        BenchDevice device;
        try
        {
            device = BenchDevice.Open(options.Device);
        }
        catch (InvalidOperationException e)
        {
            // Devices.Select: the asked-for device is not there (no CUDA device visible: libcuda missing, no GPU).
            throw new BenchUsageException($"--device {options.Device.ToString().ToLowerInvariant()}: {e.Message}");
        }

        var faults = options.Faults ?? FaultInjection.None;
        using var run = new BenchRun(device, options.Preset, log, save, options.CaseTimeoutSeconds, faults, handleSigterm: handleSigterm);
        log($"device: {device.Description}");
        if (!faults.IsEmpty)
            log($"note   {FaultInjection.Variable} is set: the cases it names fail as a CUDA fault would");
        bool backend = options.Device == DeviceChoice.Cpu;
        if (backend)
            run.Notes.Add("--device cpu: the CPU backend runs no ILGPU kernel, so only the end-to-end part runs (the kernel cases: --device cpu-emulator).");
        else if (!device.IsGpu)
            run.Notes.Add("CPU accelerator: ILGPU emulates GPU threads on the host; its times say nothing about a GPU, only that the suite runs.");
        run.Save();
        if (!options.EndToEndOnly && !backend)
        {
            SuiteRunner.Run(run, new SuiteOptions
            {
                Preset = options.Preset,
                Tokens = options.Tokens,
                Families = options.Families,
                CheckOnly = options.CheckOnly,
                BudgetSeconds = options.BudgetSeconds,
                RunFirst = options.DecodeFirst ? DecodeCases.IsDecode : null,
            });
        }

        if (!options.CheckOnly && options.EndToEnd && !run.Stopped)
        {
            if (options.BudgetSeconds is double budget && run.ElapsedSeconds > budget)
                run.Notes.Add($"end to end not run: the time budget of {budget} s was spent on the kernels");
            else
                RunEndToEnd(run, options);
        }

        foreach (var unused in faults.Unused)
            run.Notes.Add($"{FaultInjection.Variable}: '{unused}' matched no case of this run");
        if (run.State == "running")
            run.State = "complete";
        run.Save();
        return run.Snapshot();
    }

    private static void RunEndToEnd(BenchRun run, BenchArgs options)
    {
        // Each of our schemes is watched like a case (its device run, not the host-side model prep): a hang is a timeout
        // with the report written; a fault is recorded, not thrown.
        IDisposable Watch(string scheme) =>
            run.Watch(new CaseResult("end-to-end", "ours", scheme, 0, options.Preset.Name, 0, 0, 0, false, CaseStatus.Error, null, null, null));
        try
        {
            // Our rows are saved as they come (a later scheme that hangs keeps the earlier ones); llama.cpp's at the end.
            var (rows, peerRows, e2eNotes) = EndToEnd.EndToEndRun.Run(run.Device, options.Preset, options.Peer, run.Log, options.Cache, options.Router,
                onRow: row =>
                {
                    run.EndToEnd.Add(row);
                    run.Save();
                },
                outOfTime: () => options.BudgetSeconds is double budget && run.ElapsedSeconds > budget,
                watch: Watch);
            run.EndToEnd.InsertRange(0, rows.Where(r => !run.EndToEnd.Contains(r)));
            run.Peers.AddRange(peerRows);
            run.Notes.AddRange(e2eNotes);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // The kernel figures above stand on their own: an end-to-end failure is reported (and fails the exit code).
            run.Log($"{(CudaFaults.NameOf(e) is null ? "ERROR " : "FAULT ")} end to end: {CudaFaults.Describe(e)}");
            run.EndToEndError = CudaFaults.Describe(e);
        }
    }

    /// <summary>ILGPUMOE_COMMIT, else the commit the SDK stamped into the informational version, else "unknown".</summary>
    public static string Commit()
    {
        var env = Environment.GetEnvironmentVariable("ILGPUMOE_COMMIT");
        if (!string.IsNullOrWhiteSpace(env))
            return env.Trim();
        var info = typeof(BenchCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        int plus = info?.IndexOf('+', StringComparison.Ordinal) ?? -1;
        return plus >= 0 ? info![(plus + 1)..] : "unknown";
    }
}
