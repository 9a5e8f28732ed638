// The run's outputs: a console table (Spectre.Console), bench.json (every figure), bench.md (summary tables).
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using ILGpuMoE.Perf.Suite;
using Spectre.Console;

namespace ILGpuMoE.Perf.Report;

public static class Reports
{
    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        // NaN (an unmeasured figure) must survive the trip: JSON has no NaN, so it is written as the string "NaN".
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter() },
    };

    public static string ToJson(BenchReport report) => JsonSerializer.Serialize(report, JsonOptions);

    public static BenchReport FromJson(string json) =>
        JsonSerializer.Deserialize<BenchReport>(json, JsonOptions) ?? throw new InvalidDataException("bench.json is empty");

    /// <summary>
    /// Writes DIR/bench.json and DIR/bench.md, each through a temporary file renamed over the old one: a process killed
    /// at any moment leaves the previous complete report or the new one, never half a file.
    /// </summary>
    public static void WriteFiles(string dir, BenchReport report)
    {
        Directory.CreateDirectory(dir);
        WriteAtomically(Path.Combine(dir, "bench.json"), ToJson(report));
        WriteAtomically(Path.Combine(dir, "bench.md"), Markdown(report));
    }

    private static void WriteAtomically(string path, string text)
    {
        string temp = path + ".tmp";
        File.WriteAllText(temp, text);
        File.Move(temp, path, overwrite: true);
    }

    public static void Console(IAnsiConsole console, BenchReport r)
    {
        console.MarkupLine($"[bold]ilgpumoe bench[/] preset [bold]{Markup.Escape(r.Preset)}[/] on {Markup.Escape(r.Machine.Device)}");
        console.MarkupLine($"commit {Markup.Escape(r.Machine.Commit)} | {Markup.Escape(r.Machine.Host)} | {r.Machine.Cores} cores | {Markup.Escape(r.Machine.Runtime)}");
        if (r.Ceilings is { } c)
            console.MarkupLine($"ceilings: copy [bold]{c.CopyGBPerSecond:F1} GB/s[/], matmul [bold]{c.MatmulTFlopPerSecond:G4} TFLOP/s[/] ({Markup.Escape(c.MatmulSource)})" +
                (double.IsFinite(c.TensorCoreTFlopPerSecond) ? $", tensor cores [bold]{c.TensorCoreTFlopPerSecond:G4} TFLOP/s[/] ({Markup.Escape(c.TensorCoreSource)})" : ""));

        var table = new Table().Border(TableBorder.Simple);
        foreach (var h in new[] { "kernel", "ver", "type", "T", "shape", "GFLOP", "MB", "check", "prep s", "median ms", "GB/s", "TFLOP/s", "%bw", "%mm" })
            table.AddColumn(h);
        foreach (var x in r.Cases)
        {
            var t = x.Timing;
            string check = x.Failed ? $"[red]{x.Status.ToUpperInvariant()}[/]" : x.Check is { } k ? $"ok {k.MaxAbsError:0.0e0}" : "";
            table.AddRow(
                Markup.Escape(x.Family), Markup.Escape(x.Version), x.DType, x.Tokens.ToString(CultureInfo.InvariantCulture), Markup.Escape(x.Shape),
                F(x.Flops / 1e9, "F3"), F(x.MinBytes / 1e6, "F2"), check, F(x.Prep?.CompileSeconds ?? double.NaN, "F2"),
                t is null ? "" : F(t.MedianSeconds * 1e3, "F4"), t is null ? "" : F(t.GBPerSecond, "G4"), t is null ? "" : F(t.TFlopPerSecond, "G4"),
                t is null ? "" : F(t.PercentOfBandwidth, "F1"), t is null ? "" : F(t.PercentOfCompute, "F1"));
        }

        console.Write(table);
        foreach (var x in r.Cases.Where(x => x.Failed))
            console.MarkupLine($"[red]{x.Status.ToUpperInvariant()}[/] {Markup.Escape(FailureLine(x))}");

        if (r.EndToEnd.Count > 0)
        {
            var e2e = new Table().Border(TableBorder.Simple);
            foreach (var h in new[] { "engine", "scheme", "layers", "prompt", "prefill tok/s", "decode tok/s", "TTFT ms", "launches/token", "per layer", "warm-up s", "note" })
                e2e.AddColumn(h);
            foreach (var e in r.EndToEnd)
            {
                e2e.AddRow(Markup.Escape(e.Engine), e.Scheme, e.Layers.ToString(CultureInfo.InvariantCulture), e.PromptTokens.ToString(CultureInfo.InvariantCulture),
                    F(e.PrefillTokensPerSecond, "F1"), F(e.DecodeTokensPerSecond, "F1"), F(e.TimeToFirstTokenSeconds * 1e3, "F1"), F(e.LaunchesPerToken, "F0"), F(e.LaunchesPerLayer, "F1"), F(e.WarmupSeconds, "F2"), Markup.Escape(e.Note));
            }

            console.Write(e2e);
        }

        if (r.Peers.Count > 0)
        {
            var peers = new Table().Border(TableBorder.Simple);
            foreach (var h in new[] { "peer", "what", "shape", "ours", "theirs", "unit", "ours/theirs", "note" })
                peers.AddColumn(h);
            foreach (var p in r.Peers)
            {
                peers.AddRow(Markup.Escape(p.Peer), Markup.Escape(p.What), Markup.Escape(p.Shape), F(p.Ours, "G4"), F(p.Theirs, "G4"),
                    Markup.Escape(p.Unit), F(p.Ratio, "F3"), Markup.Escape(p.Note));
            }

            console.Write(peers);
        }

        foreach (var n in r.Notes)
            console.MarkupLine($"note: {Markup.Escape(n)}");
        if (r.EndToEndError is { } e2eError)
            console.MarkupLine($"[red]END TO END FAILED[/] {Markup.Escape(e2eError)}");
        console.MarkupLine(r.Wrong == 0
            ? $"[green]{r.Cases.Count} cases, every one matched the reference[/] ({r.WallSeconds:F1} s)"
            : $"[red]{r.Wrong} of {r.Cases.Count} cases WRONG or failed[/] ({r.WallSeconds:F1} s)");
    }

    public static string Markdown(BenchReport r)
    {
        var s = new StringBuilder();
        s.AppendLine(CultureInfo.InvariantCulture, $"# ilgpumoe bench: {r.Preset} on {r.Machine.Device}");
        s.AppendLine();
        s.AppendLine(CultureInfo.InvariantCulture, $"- started {r.StartedUtc:yyyy-MM-dd HH:mm} UTC, {r.WallSeconds:F1} s; commit `{r.Machine.Commit}`; {r.Machine.Host}, {r.Machine.Cores} cores, {r.Machine.Os}, {r.Machine.Runtime}");
        if (r.Ceilings is { } c)
        {
            string tensor = double.IsFinite(c.TensorCoreTFlopPerSecond)
                ? string.Create(CultureInfo.InvariantCulture, $"; tensor-core peak (mma.sync) **{c.TensorCoreTFlopPerSecond:G4} TFLOP/s** ({c.TensorCoreSource})")
                : "";
            s.AppendLine(CultureInfo.InvariantCulture, $"- ceilings measured in this run: device-to-device copy **{c.CopyGBPerSecond:F1} GB/s**; best matmul **{c.MatmulTFlopPerSecond:G4} TFLOP/s** ({c.MatmulSource}){tensor}");
        }

        s.AppendLine(CultureInfo.InvariantCulture, $"- {r.Cases.Count} cases, {r.Wrong} wrong or failed; median times; GB/s and TFLOP/s from minimum bytes and FLOPs computed from the shapes");
        string restarts = r.DeviceRestarts > 0 ? $"; {r.DeviceRestarts} fresh accelerator(s) after CUDA faults" : "";
        s.AppendLine(CultureInfo.InvariantCulture, $"- state: **{r.State}**{restarts}; prep s = kernel compile + device setup + first launch, outside the timed figure");
        s.AppendLine();
        s.AppendLine("| kernel | version | type | T | shape | GFLOP | min MB | check | prep s | median ms | GB/s | TFLOP/s | % copy bw | % best matmul |");
        s.AppendLine("|---|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|");
        foreach (var x in r.Cases)
        {
            var t = x.Timing;
            string check = x.Failed ? $"**{x.Status.ToUpperInvariant()}**" : x.Check is { } k ? $"ok ({k.MaxAbsError:0.0e0})" : "";
            s.AppendLine(CultureInfo.InvariantCulture,
                $"| {x.Family} | {x.Version} | {x.DType} | {x.Tokens} | {x.Shape} | {F(x.Flops / 1e9, "F3")} | {F(x.MinBytes / 1e6, "F2")} | {check} | {F(x.Prep?.CompileSeconds ?? double.NaN, "F2")} | {(t is null ? "" : F(t.MedianSeconds * 1e3, "F4"))} | {(t is null ? "" : F(t.GBPerSecond, "G4"))} | {(t is null ? "" : F(t.TFlopPerSecond, "G4"))} | {(t is null ? "" : F(t.PercentOfBandwidth, "F1"))} | {(t is null ? "" : F(t.PercentOfCompute, "F1"))} |");
        }

        foreach (var x in r.Cases.Where(x => x.Failed))
            s.AppendLine(CultureInfo.InvariantCulture, $"\n- **{x.Status}** {FailureLine(x)}");

        if (r.EndToEnd.Count > 0)
        {
            s.AppendLine();
            s.AppendLine("## End to end");
            s.AppendLine();
            s.AppendLine("| engine | scheme | layers | prompt | decoded | prefill tok/s | decode tok/s | TTFT ms | launches/token | per layer | warm-up s | load s | host prep s | note |");
            s.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
            foreach (var e in r.EndToEnd)
            {
                s.AppendLine(CultureInfo.InvariantCulture,
                    $"| {e.Engine} | {e.Scheme} | {e.Layers} | {e.PromptTokens} | {e.DecodeTokens} | {F(e.PrefillTokensPerSecond, "F1")} | {F(e.DecodeTokensPerSecond, "F1")} | {F(e.TimeToFirstTokenSeconds * 1e3, "F1")} | {F(e.LaunchesPerToken, "F0")} | {F(e.LaunchesPerLayer, "F1")} | {F(e.WarmupSeconds, "F2")} | {F(e.LoadSeconds, "F2")} | {F(e.HostPrepSeconds, "F2")} | {e.Note} |");
            }
        }

        if (r.Peers.Count > 0)
        {
            s.AppendLine();
            s.AppendLine("## Peers");
            s.AppendLine();
            s.AppendLine("| peer | what | shape | ours | theirs | unit | ours/theirs | note |");
            s.AppendLine("|---|---|---|---:|---:|---|---:|---|");
            foreach (var p in r.Peers)
                s.AppendLine(CultureInfo.InvariantCulture, $"| {p.Peer} | {p.What} | {p.Shape} | {F(p.Ours, "G4")} | {F(p.Theirs, "G4")} | {p.Unit} | {F(p.Ratio, "F3")} | {p.Note} |");
        }

        if (r.EndToEndError is { } e2eError)
            s.AppendLine(CultureInfo.InvariantCulture, $"\n- **end to end FAILED** {e2eError}");

        if (r.Notes.Count > 0)
        {
            s.AppendLine();
            foreach (var n in r.Notes)
                s.AppendLine(CultureInfo.InvariantCulture, $"- {n}");
        }

        return s.ToString();
    }

    /// <summary>"moe/gating v2 f32 T=5 [shape]: message", with the CUDA error name for a fault or a timeout.</summary>
    public static string FailureLine(CaseResult x) =>
        $"{x.Family} {x.Version} {x.DType} T={x.Tokens} {x.Shape}: " + (x.ErrorName is { } n && x.Error?.Contains(n, StringComparison.Ordinal) != true ? $"{n}: " : "") + (x.Check?.Message ?? x.Error);

    private static string F(double v, string format) => double.IsFinite(v) ? v.ToString(format, CultureInfo.InvariantCulture) : "-";
}
