// The accelerator the suite runs on, the timing discipline and the random fill.
//
// Timing: on a GPU, one pair of ILGPU profiling markers (CUDA events) around each launch and one synchronize per batch:
// the host's launch overhead is not in the figure. On the CPU accelerator (whose markers are host timestamps anyway),
// a stopwatch around launch + synchronize. The figure reported is the median of the timed runs.
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGpuMoE.Kernels;

namespace ILGpuMoE.Perf.Suite;

/// <summary>How many warm-up and timed runs a case gets, and the time budget of its timed runs.</summary>
public sealed record TimingPlan(int Warmup, int MinReps, int MaxReps, double BudgetSeconds)
{
    public static TimingPlan Gpu { get; } = new(5, 20, 500, 0.5);

    // The check run has already compiled and run the kernel once: no warm-up on the emulating CPU accelerator.
    public static TimingPlan Cpu { get; } = new(0, 1, 5, 0.2);

    /// <summary>Check-only runs: nothing timed.</summary>
    public static TimingPlan None { get; } = new(0, 0, 0, 0);
}

public sealed class BenchDevice : IDisposable
{
    private BenchDevice(DeviceChoice choice, Context context, Accelerator accelerator)
    {
        Choice = choice;
        Context = context;
        Accelerator = accelerator;
        Stream = accelerator.DefaultStream;
        IsGpu = accelerator.AcceleratorType == AcceleratorType.Cuda;
        Fill = new DeviceFill(accelerator);
    }

    /// <summary>What was asked for: a fresh device after a CUDA fault is opened the same way.</summary>
    public DeviceChoice Choice { get; }

    public Context Context { get; }

    public Accelerator Accelerator { get; }

    public AcceleratorStream Stream { get; }

    /// <summary>CUDA: timed with profiling markers, large rotation. Otherwise (CPU accelerator, OpenCL): stopwatch.</summary>
    public bool IsGpu { get; }

    public DeviceFill Fill { get; }

    /// <summary>Last-level cache the rotation must beat: the GPU's L2, or 8 MiB for the CPU accelerator.</summary>
    public long CacheBytes => Accelerator is CudaAccelerator cuda && cuda.L2CacheSize > 0 ? cuda.L2CacheSize : 8L << 20;

    public string Description => Choice == DeviceChoice.Cpu
        ? $"CPU backend ({ILGpuMoE.Cpu.CpuThreads.DefaultCount} threads, {ILGpuMoE.Cpu.CpuFeatures.Describe()}) | host memory {Devices.HostMemory() / (1024.0 * 1024 * 1024):F1} GiB"
        : Devices.Describe(Accelerator.Device);

    /// <summary>Opens the chosen device with profiling enabled (markers are needed on the GPU).</summary>
    public static BenchDevice Open(DeviceChoice choice)
    {
        var context = Devices.CreateContext(profiling: true, cpuOnly: choice is DeviceChoice.Cpu or DeviceChoice.CpuEmulator);
        try
        {
            var device = Devices.Select(context, choice);
            return new BenchDevice(choice, context, device.CreateAccelerator(context));
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>Input sets to rotate: enough that their total is twice the cache (at most 8, at least 2 when allowed by memory).</summary>
    public int SetsFor(long setBytes)
    {
        if (setBytes <= 0)
            return 1;
        long want = (2 * CacheBytes + setBytes - 1) / setBytes;
        // Keep a quarter of the device free for outputs and scratch: a rotation is not worth running out of memory.
        long memoryCap = Math.Max(1, Accelerator.MemorySize / 4 / setBytes);
        return (int)Math.Clamp(Math.Min(want, memoryCap), 1, 8);
    }

    /// <summary>Warm-up then timed runs of <paramref name="run"/> (argument: the input set), rotating sets; seconds per run.</summary>
    public double[] Time(Action<AcceleratorStream, int> run, int sets, TimingPlan plan)
    {
        if (plan.MaxReps <= 0)
            return [];

        // The first warm-up run also estimates the cost: a run of a large shape that takes ~1 s on its own gets
        // fewer warm-ups and repetitions (never fewer than 3), so a whole preset stays within minutes.
        int warmup = plan.Warmup, minReps = plan.MinReps;
        if (warmup > 0)
        {
            var sw = Stopwatch.StartNew();
            run(Stream, 0);
            Stream.Synchronize();
            double estimate = sw.Elapsed.TotalSeconds;
            warmup = estimate > 0.05 ? 0 : warmup - 1;
            if (estimate * minReps > 4 * plan.BudgetSeconds)
                minReps = Math.Max(3, (int)(4 * plan.BudgetSeconds / estimate));
        }

        for (int w = 0; w < warmup; w++)
            run(Stream, (w + 1) % sets);
        Stream.Synchronize();

        var times = new List<double>();
        var total = Stopwatch.StartNew();
        int rep = 0;
        while (rep < minReps || (rep < plan.MaxReps && total.Elapsed.TotalSeconds < plan.BudgetSeconds))
        {
            if (IsGpu)
            {
                int batch = Math.Min(10, plan.MaxReps - rep);
                var marks = new (ProfilingMarker Start, ProfilingMarker End)[Math.Max(batch, 1)];
                for (int i = 0; i < marks.Length; i++)
                {
                    var start = Stream.AddProfilingMarker();
                    run(Stream, (rep + i) % sets);
                    marks[i] = (start, Stream.AddProfilingMarker());
                }

                Stream.Synchronize();
                foreach (var (start, end) in marks)
                {
                    times.Add(end.MeasureFrom(start).TotalSeconds);
                    start.Dispose();
                    end.Dispose();
                }

                rep += marks.Length;
            }
            else
            {
                var sw = Stopwatch.StartNew();
                run(Stream, rep % sets);
                Stream.Synchronize();
                times.Add(sw.Elapsed.TotalSeconds);
                rep++;
            }
        }

        return [.. times];
    }

    public void Dispose()
    {
        Fill.Dispose();
        Accelerator.Dispose();
        Context.Dispose();
    }

    /// <summary>
    /// Disposes without throwing: after a CUDA fault every driver call in that context may fail again (ILGPU throws from
    /// Dispose then), so each part is disposed on its own and a failure is logged, never thrown: the run goes on.
    /// </summary>
    public void DisposeLogged(Action<string> log)
    {
        foreach (var (what, dispose) in new (string, Action)[] { ("fill", Fill.Dispose), ("accelerator", Accelerator.Dispose), ("context", Context.Dispose) })
        {
            try
            {
                dispose();
            }
            catch (Exception e)
            {
                log($"note   disposing the {what}: {CudaFaults.Describe(e)} (ignored)");
            }
        }
    }
}

/// <summary>Median and friends of a list of run times.</summary>
public static class Stats
{
    public static double Median(IReadOnlyList<double> values)
    {
        if (values.Count == 0)
            return double.NaN;
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    }
}
