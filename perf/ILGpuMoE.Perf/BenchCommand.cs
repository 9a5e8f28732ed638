// ilgpumoe bench: the kernel suite (and, where they exist, the end-to-end and peer parts) at a named preset.
//   ilgpumoe-bench [bench] --preset tiny|mixtral-8x7b|qwen-moe-a2.7b|deepseek-v3-moe --out DIR
//       [--device auto|cuda|cpu] [--tokens 1,8,64] [--family attention,dense,gating,moe,quant] [--check-only] [--no-peer]
//       [--no-e2e] [--e2e-only] [--budget SECONDS]
//   ilgpumoe-bench host [BenchmarkDotNet arguments]     host-side paths (safetensors open/map, ...)
// Writes DIR/bench.json (every figure), DIR/bench.md (summary) and DIR/roofline.png; prints the table.
// Exit codes as the CLI: 0 ok, 1 a kernel failed its check or something unexpected, 2 bad arguments.
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using ILGpuMoE.Kernels;
using ILGpuMoE.Perf.Report;
using ILGpuMoE.Perf.Suite;
using Spectre.Console;

namespace ILGpuMoE.Perf;

/// <summary>Bad command-line input: one line on stderr, exit code 2.</summary>
public sealed class BenchUsageException(string message) : Exception(message);

public sealed record BenchArgs(ShapePreset Preset, string OutDir, DeviceChoice Device, int[]? Tokens, string[]? Families, bool CheckOnly, bool Peer, bool EndToEnd, bool EndToEndOnly = false, double? BudgetSeconds = null)
{
    public const string Usage =
        "usage: ilgpumoe bench --preset tiny|smoke|mixtral-8x7b|qwen-moe-a2.7b|deepseek-v3-moe --out DIR [--device auto|cuda|cpu] " +
        "[--tokens 1,8,64] [--family attention,dense,gating,moe,quant] [--check-only] [--no-peer] [--no-e2e] [--e2e-only] [--budget SECONDS]";

    public static BenchArgs Parse(IReadOnlyList<string> args)
    {
        string? preset = null, outDir = null, device = null;
        int[]? tokens = null;
        string[]? families = null;
        bool checkOnly = false, peer = true, endToEnd = true, endToEndOnly = false;
        double? budget = null;
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
                    var text = Value();
                    budget = double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var b) && b > 0
                        ? b
                        : throw new BenchUsageException($"--budget: '{text}' is not a positive number of seconds");
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
            // The tiny preset is meant for the CPU accelerator; the others for whatever `auto` finds.
            choice = device is null && shape.IsTiny ? DeviceChoice.Cpu : Devices.Parse(device ?? Environment.GetEnvironmentVariable(Devices.EnvironmentVariable));
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

        return new BenchArgs(shape, outDir ?? Path.Combine("perf", "out", shape.Name), choice, tokens, families, checkOnly, peer, endToEnd || endToEndOnly, endToEndOnly, budget);
    }

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
            report = Execute(options, line => err.WriteLine(line));
        }
        catch (BenchUsageException e)
        {
            err.WriteLine($"error: {e.Message}");
            return 2;
        }

        Directory.CreateDirectory(options.OutDir);
        File.WriteAllText(Path.Combine(options.OutDir, "bench.json"), Reports.ToJson(report));
        File.WriteAllText(Path.Combine(options.OutDir, "bench.md"), Reports.Markdown(report));
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
        return report.Wrong == 0 ? 0 : 1;
    }

    /// <summary>The whole run as a report (no files written): the test calls this with --check-only.</summary>
    public static BenchReport Execute(BenchArgs options, Action<string> log)
    {
        var started = DateTimeOffset.UtcNow;
        var wall = Stopwatch.StartNew();
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

        using var owned = device;
        log($"device: {device.Description}");
        var (cases, ceilings) = options.EndToEndOnly ? ([], null) : SuiteRunner.Run(device, new SuiteOptions
        {
            Preset = options.Preset,
            Tokens = options.Tokens,
            Families = options.Families,
            CheckOnly = options.CheckOnly,
            BudgetSeconds = options.BudgetSeconds,
        }, log);

        var notes = new List<string>();
        if (!options.EndToEndOnly && SuiteRunner.Skipped > 0)
            notes.Add($"time budget of {options.BudgetSeconds} s reached: {SuiteRunner.Skipped} cases were not run");
        if (!device.IsGpu)
            notes.Add("CPU accelerator: ILGPU emulates GPU threads on the host; its times say nothing about a GPU, only that the suite runs.");
        var e2e = new List<EndToEndResult>();
        var peers = new List<PeerResult>();
        if (!options.CheckOnly && options.EndToEnd)
        {
            try
            {
                var (rows, peerRows, e2eNotes) = EndToEnd.EndToEndRun.Run(device, options.Preset, options.Peer, log);
                e2e.AddRange(rows);
                peers.AddRange(peerRows);
                notes.AddRange(e2eNotes);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // The kernel figures above stand on their own: an end-to-end failure is reported, not fatal.
                log($"ERROR  end to end: {SuiteRunner.OneLine(e)}");
                notes.Add($"end to end FAILED: {SuiteRunner.OneLine(e)}");
            }
        }

        return new BenchReport("ilgpumoe bench", options.Preset.Name, options.Preset, started, wall.Elapsed.TotalSeconds, Machine(device), ceilings,
            cases, e2e, peers, notes);
    }

    public static MachineInfo Machine(BenchDevice device) => new(
        Environment.MachineName,
        System.Runtime.InteropServices.RuntimeInformation.OSDescription,
        Environment.ProcessorCount,
        System.Runtime.InteropServices.RuntimeInformation.FrameworkDescription,
        Commit(),
        device.Description,
        device.Accelerator.AcceleratorType.ToString());

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
