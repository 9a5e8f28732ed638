// The kernel suite: ceilings, then every family's cases for every token count of the preset.
// Each case: Setup (random inputs, rotated sets) -> first launch (compile warm-up) -> Check against the reference -> timed runs -> Dispose.
// A case that fails its check is reported "wrong" and never timed; an exception is reported "error" and the suite goes on;
// a CUDA error is reported "fault" with its name and the suite goes on with a fresh accelerator (BenchRun).
using System.Diagnostics;
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

    /// <summary>Wall-clock budget in seconds: no new case starts after it (the GPU runner's steps have hard limits;
    /// the report is written after every case, so a stop keeps everything). Null: no budget.</summary>
    public double? BudgetSeconds { get; init; }

    /// <summary>Cases to run before all others, right after the copy ceiling (`bench --decode-first`:
    /// <see cref="DecodeCases.IsDecode"/>); each then keeps its place out of the regular sweep. Null: the plain order.</summary>
    public Func<IBenchCase, bool>? RunFirst { get; init; }
}

public static class SuiteRunner
{
    /// <summary>Every registered kernel family; a family joins by being listed here.</summary>
    public static IReadOnlyList<IBenchFamily> Families { get; } =
    [
        new TensorCoreFamily(), // first: its peak-mma ceiling is measured before the SIMT matmul ceiling and the sweep
        new TensorCoreDenseFamily(), // then the tensor-core GEMMs (issue 14): fast cases, before the slower SIMT ones
        new TensorCoreMoeFamily(),
        new DenseFamily(),
        new AttentionFamily(),
        new MlaFamily(),
        new GatingFamily(),
        new MoeFamily(),
        new QuantFamily(),
        new TensorCoreQuantFamily(),
        new DecodeFamily(),
    ];

    /// <summary>
    /// Runs the suite on <paramref name="run"/>'s device, recording every case in <paramref name="run"/> (which saves the
    /// report after each one). Returns how many cases the time budget left out.
    /// </summary>
    public static int Run(BenchRun run, SuiteOptions options)
    {
        var log = run.Log;
        var plan = options.CheckOnly ? TimingPlan.None : options.Plan ?? (run.Device.IsGpu ? TimingPlan.Gpu : TimingPlan.Cpu);
        var families = Families.Where(f => options.Families is null || options.Families.Contains(f.Name, StringComparer.OrdinalIgnoreCase)).ToList();
        int skipped = 0;
        bool OutOfTime() => options.BudgetSeconds is double budget && run.ElapsedSeconds > budget;
        var first = options.RunFirst;

        // The cases of one family at one token count that `take` accepts, each run (or, out of time, counted skipped).
        void RunCases(IBenchFamily family, int tokens, Func<IBenchCase, bool> take, bool reportErrors)
        {
            List<IBenchCase> cases;
            try
            {
                cases = family.Cases(options.Preset, tokens, run.Device).ToList();
            }
            catch (Exception e)
            {
                if (reportErrors)
                    run.Add(new CaseResult(family.Name, "?", "?", tokens, "", 0, 0, 0, false, CaseStatus.Error, null, null, OneLine(e)));
                return;
            }

            foreach (var c in cases)
            {
                if (!take(c))
                {
                    c.Dispose();
                    continue;
                }

                if (run.Stopped || OutOfTime())
                {
                    skipped++;
                    c.Dispose();
                    continue;
                }

                run.Add(RunCase(run, c, plan));
            }
        }

        if (!options.CheckOnly)
        {
            try
            {
                var (copy, copyBytes) = MeasureCopy(run.Device, plan);
                run.SetCopyCeiling(copy, copyBytes);
                log($"ceiling: device-to-device copy {copy:F1} GB/s ({copyBytes / 1e6:F0} MB per copy)");
            }
            catch (Exception e) when (CudaFaults.NameOf(e) is { } name)
            {
                log($"FAULT  ceiling copy: {CudaFaults.Describe(e)}");
                run.Notes.Add($"copy ceiling not measured: {name}");
                run.Renew($"the copy ceiling: {name}");
            }
        }

        // Decode first: the T = 1 cases of the marked kernels (the case-factory errors are reported by the sweep below).
        if (first is not null && (options.Tokens ?? options.Preset.Tokens).Contains(1))
        {
            int before = run.Cases.Count;
            foreach (var family in families)
                RunCases(family, 1, first, reportErrors: false);
            log($"decode first: {run.Cases.Count - before} case(s) of decode-marked kernels at T = 1 ran before the rest");
        }

        if (!options.CheckOnly)
        {
            foreach (var family in families)
            {
                if (run.Stopped || OutOfTime())
                    break;
                var c = family.CeilingCase(options.Preset, run.Device);
                if (c is null)
                    continue;
                var r = RunCase(run, c, plan);
                run.Add(r with { Status = r.Status == CaseStatus.Ok ? CaseStatus.Ceiling : r.Status });
            }
        }

        foreach (int tokens in options.Tokens ?? options.Preset.Tokens)
        {
            foreach (var family in families)
                RunCases(family, tokens, c => first is null || !first(c), reportErrors: true);
        }

        if (skipped > 0 && !run.Stopped)
        {
            log($"time budget of {options.BudgetSeconds} s reached: {skipped} cases not run");
            run.Notes.Add($"time budget of {options.BudgetSeconds} s reached: {skipped} cases were not run");
        }

        return skipped;
    }

    /// <summary>
    /// One case: Setup, (timed runs only) the first launch of exactly what the timed runs launch, the check, the timed
    /// runs. Never throws: a CUDA fault is status "fault" with its CUDA_ERROR_* name (the caller then renews the device),
    /// any other exception "error". The case's buffers are freed whatever happened; a failure to free them after a fault
    /// is logged (a faulted context refuses most calls).
    /// </summary>
    public static CaseResult RunCase(BenchRun run, IBenchCase c, TimingPlan plan)
    {
        var log = run.Log;
        var device = run.Device;
        var result = new CaseResult(c.Family, c.Version, c.DType, c.Tokens, c.Shape, c.Flops, c.MinBytes,
            c.MinBytes > 0 ? c.Flops / c.MinBytes : 0, c.IsMatmul, CaseStatus.Error, null, null, null);
        string label = $"{c.Family} {c.Version} {c.DType} T={c.Tokens} {c.Shape}";
        double setup = double.NaN, first = double.NaN, checkTime = double.NaN;
        using var watch = run.Watch(result);
        try
        {
            var sw = Stopwatch.StartNew();
            int sets = plan.MaxReps > 0 ? device.SetsFor(c.SetBytes) : 1;
            c.Setup(device, sets);
            device.Stream.Synchronize();
            setup = sw.Elapsed.TotalSeconds;
            run.Faults.Strike(result.Key);
            if (plan.MaxReps > 0)
            {
                // The compile warm-up: whatever the launcher compiles on first use is compiled here, never in a timed run.
                sw.Restart();
                c.Run(device.Stream, 0);
                device.Stream.Synchronize();
                first = sw.Elapsed.TotalSeconds;
            }

            sw.Restart();
            var check = c.Check(device);
            checkTime = sw.Elapsed.TotalSeconds;
            var info = new CheckInfo(check.Passed, check.MaxAbsError, check.MaxRelError, check.Compared, check.Scope, check.Message);
            result = result with { Shape = c.Shape, Check = info };
            if (!check.Passed)
            {
                log($"WRONG  {label}: {check.Message}");
                result = result with { Status = CaseStatus.Wrong };
            }
            else if (plan.MaxReps <= 0)
            {
                log($"ok     {label}: max abs {check.MaxAbsError:G3} ({check.Scope})");
                result = result with { Status = CaseStatus.Checked };
            }
            else
            {
                var times = device.Time(c.Run, sets, plan);
                double median = Stats.Median(times);
                var timing = new TimingInfo(median, times.Min(), times.Max(), times.Length, sets,
                    c.MinBytes / median / 1e9, c.Flops / median / 1e12, double.NaN, double.NaN);
                log($"ok     {label}: {median * 1e3:F3} ms, {timing.GBPerSecond:G4} GB/s, {timing.TFlopPerSecond:G4} TFLOP/s (compile+setup {setup + first:F2} s)");
                result = result with { Status = CaseStatus.Ok, Timing = timing };
            }
        }
        catch (Exception e)
        {
            result = Failed(result, e, label, log);
        }
        finally
        {
            try
            {
                c.Dispose();
            }
            catch (Exception e)
            {
                log($"note   freeing {label}: {CudaFaults.Describe(e)} (ignored)");
                if (result.Status != CaseStatus.Fault && CudaFaults.NameOf(e) is { } name)
                    result = result with { Status = CaseStatus.Fault, ErrorName = name, Error = $"while freeing its buffers: {CudaFaults.Describe(e)}" };
            }
        }

        return result with { Prep = new PrepInfo(setup, first, checkTime) };
    }

    private static CaseResult Failed(CaseResult result, Exception e, string label, Action<string> log)
    {
        if (CudaFaults.NameOf(e) is { } name)
        {
            log($"FAULT  {label}: {CudaFaults.Describe(e)}");
            return result with { Status = CaseStatus.Fault, ErrorName = name, Error = CudaFaults.Describe(e) };
        }

        log($"ERROR  {label}: {OneLine(e)}");
        return result with { Status = CaseStatus.Error, Error = OneLine(e) };
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
