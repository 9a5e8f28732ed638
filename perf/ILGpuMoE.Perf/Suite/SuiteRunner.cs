// The kernel suite: ceilings, then every family's cases for every token count of the preset.
// Each case: Setup (random inputs, rotated sets) -> Check against the reference -> warm up -> timed runs -> Dispose.
// A case that fails its check is reported "wrong" and never timed; an exception is reported "error" and the suite goes on.
using ILGPU.Runtime;
using ILGpuMoE.Perf.Cases;

namespace ILGpuMoE.Perf.Suite;

public sealed class SuiteOptions
{
    public required ShapePreset Preset { get; init; }

    /// <summary>Token counts to run; null = the preset's sweep.</summary>
    public int[]? Tokens { get; init; }

    /// <summary>Family names to run (attention, dense, gating, moe); null = all.</summary>
    public string[]? Families { get; init; }

    /// <summary>Only the reference checks, nothing timed (the test and the GPU smoke step).</summary>
    public bool CheckOnly { get; init; }

    public TimingPlan? Plan { get; init; }

    /// <summary>Wall-clock budget in seconds: no new case starts after it (the GPU runner's steps have hard limits,
    /// and a run killed by `timeout` would leave no report). Null: no budget.</summary>
    public double? BudgetSeconds { get; init; }
}

public static class SuiteRunner
{
    /// <summary>Every registered kernel family; a family joins by being listed here.</summary>
    public static IReadOnlyList<IBenchFamily> Families { get; } =
    [
        new DenseFamily(),
        new AttentionFamily(),
        new GatingFamily(),
        new MoeFamily(),
        new QuantFamily(),
    ];

    /// <summary>Cases the last Run left out because of the time budget.</summary>
    public static int Skipped { get; private set; }

    public static (IReadOnlyList<CaseResult> Cases, Ceilings? Ceilings) Run(BenchDevice device, SuiteOptions options, Action<string> log)
    {
        var plan = options.CheckOnly ? TimingPlan.None : options.Plan ?? (device.IsGpu ? TimingPlan.Gpu : TimingPlan.Cpu);
        var families = Families.Where(f => options.Families is null || options.Families.Contains(f.Name, StringComparer.OrdinalIgnoreCase)).ToList();
        var results = new List<CaseResult>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int skipped = 0;

        double copy = double.NaN, copyBytes = 0;
        double ceilingFlops = 0;
        string ceilingSource = "";
        if (!options.CheckOnly)
        {
            (copy, copyBytes) = MeasureCopy(device, plan);
            log($"ceiling: device-to-device copy {copy:F1} GB/s ({copyBytes / 1e6:F0} MB per copy)");
            foreach (var family in families)
            {
                var c = family.CeilingCase(options.Preset, device);
                if (c is null)
                    continue;
                var r = RunCase(device, c, plan, log);
                results.Add(r with { Status = r.Status == "ok" ? "ceiling" : r.Status });
                if (r.Timing is { } t && t.TFlopPerSecond > ceilingFlops)
                    (ceilingFlops, ceilingSource) = (t.TFlopPerSecond, $"{r.Family} {r.Version} {r.DType} {r.Shape}");
            }
        }

        foreach (int tokens in options.Tokens ?? options.Preset.Tokens)
        {
            foreach (var family in families)
            {
                IEnumerable<IBenchCase> cases;
                try
                {
                    cases = family.Cases(options.Preset, tokens, device).ToList();
                }
                catch (Exception e)
                {
                    results.Add(new CaseResult(family.Name, "?", "?", tokens, "", 0, 0, 0, false, "error", null, null, OneLine(e)));
                    continue;
                }

                foreach (var c in cases)
                {
                    if (options.BudgetSeconds is double budget && clock.Elapsed.TotalSeconds > budget)
                    {
                        skipped++;
                        c.Dispose();
                        continue;
                    }

                    results.Add(RunCase(device, c, plan, log));
                }
            }
        }

        if (skipped > 0)
            log($"time budget of {options.BudgetSeconds} s reached: {skipped} cases not run");
        Skipped = skipped;

        Ceilings? ceilings = null;
        if (!options.CheckOnly)
        {
            // The compute ceiling is the best matmul throughput reached in this run: the ceiling case or any matmul case.
            foreach (var r in results.Where(r => r.IsMatmul && r.Timing is not null))
            {
                if (r.Timing!.TFlopPerSecond > ceilingFlops)
                    (ceilingFlops, ceilingSource) = (r.Timing.TFlopPerSecond, $"{r.Family} {r.Version} {r.DType} {r.Shape}");
            }

            ceilings = new Ceilings(copy, ceilingFlops, ceilingSource, copyBytes);
            for (int i = 0; i < results.Count; i++)
            {
                if (results[i].Timing is { } t)
                {
                    results[i] = results[i] with
                    {
                        Timing = t with
                        {
                            PercentOfBandwidth = 100 * t.GBPerSecond / copy,
                            PercentOfCompute = ceilingFlops > 0 ? 100 * t.TFlopPerSecond / ceilingFlops : double.NaN,
                        },
                    };
                }
            }
        }

        return (results, ceilings);
    }

    public static CaseResult RunCase(BenchDevice device, IBenchCase c, TimingPlan plan, Action<string> log)
    {
        var result = new CaseResult(c.Family, c.Version, c.DType, c.Tokens, c.Shape, c.Flops, c.MinBytes,
            c.MinBytes > 0 ? c.Flops / c.MinBytes : 0, c.IsMatmul, "error", null, null, null);
        string label = $"{c.Family} {c.Version} {c.DType} T={c.Tokens} {c.Shape}";
        try
        {
            int sets = plan.MaxReps > 0 ? device.SetsFor(c.SetBytes) : 1;
            c.Setup(device, sets);
            device.Stream.Synchronize();
            var check = c.Check(device);
            var info = new CheckInfo(check.Passed, check.MaxAbsError, check.MaxRelError, check.Compared, check.Scope, check.Message);
            result = result with { Check = info };
            if (!check.Passed)
            {
                log($"WRONG  {label}: {check.Message}");
                return result with { Status = "wrong" };
            }

            if (plan.MaxReps <= 0)
            {
                log($"ok     {label}: max abs {check.MaxAbsError:G3} ({check.Scope})");
                return result with { Status = "checked" };
            }

            var times = device.Time(c.Run, sets, plan);
            double median = Stats.Median(times);
            var timing = new TimingInfo(median, times.Min(), times.Max(), times.Length, sets,
                c.MinBytes / median / 1e9, c.Flops / median / 1e12, double.NaN, double.NaN);
            log($"ok     {label}: {median * 1e3:F3} ms, {timing.GBPerSecond:G4} GB/s, {timing.TFlopPerSecond:G4} TFLOP/s");
            return result with { Status = "ok", Timing = timing };
        }
        catch (Exception e)
        {
            log($"ERROR  {label}: {OneLine(e)}");
            return result with { Status = "error", Error = OneLine(e) };
        }
        finally
        {
            c.Dispose();
        }
    }

    /// <summary>Device-to-device copy bandwidth (bytes read + bytes written per second), median of the timed copies.</summary>
    public static (double GBPerSecond, double Bytes) MeasureCopy(BenchDevice device, TimingPlan plan)
    {
        long floats = device.IsGpu ? Math.Min(256L << 20, device.Accelerator.MemorySize / 16 / 4) : 4L << 20;
        using var a = device.Fill.Floats(device.Stream, floats);
        using var b = device.Fill.Floats(device.Stream, floats);
        var times = device.Time((stream, set) =>
        {
            if (set % 2 == 0)
                a.View.CopyTo(stream, b.View);
            else
                b.View.CopyTo(stream, a.View);
        }, 2, plan with { MinReps = Math.Max(plan.MinReps, 5) });
        double bytes = 2.0 * floats * sizeof(float);
        return (bytes / Stats.Median(times) / 1e9, bytes);
    }

    public static string OneLine(Exception e) => $"{e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}";
}
