// The state of one bench run, and what keeps it safe: the report is saved after every case (the caller writes
// bench.json and bench.md atomically), a CUDA fault swaps in a fresh accelerator, and a watchdog ends a case that runs
// past --case-timeout-s.
//
// Why a timeout ends the process: a kernel that never finishes cannot be interrupted from the host (ILGPU has no way
// to cancel a launch, and the synchronize that waits for it blocks in the driver), and the context it runs in is
// useless afterwards. So the watchdog thread records the case as "timeout" (CASE_TIMEOUT, with its parameters), saves
// the report with everything measured so far, and exits with code 3; the GPU runner's next step starts a new process.
// SIGTERM (the runner's `timeout` giving up on a step) takes the same path with the case in flight named SIGTERM.
using System.Diagnostics;
using System.Runtime.InteropServices;
using ILGpuMoE.Perf.Cases;

namespace ILGpuMoE.Perf.Suite;

public sealed class BenchRun : IDisposable
{
    /// <summary>Exit code after a case timeout or SIGTERM (the report is written).</summary>
    public const int TimeoutExitCode = 3;

    /// <summary>CUDA faults in a row after which the run stops (a driver that faults on everything).</summary>
    public const int MaxFaultsInARow = 3;

    private readonly object gate = new();
    private readonly List<CaseResult> cases = [];
    private readonly Stopwatch wall = Stopwatch.StartNew();
    private readonly DateTimeOffset started = DateTimeOffset.UtcNow;
    private readonly ShapePreset preset;
    private readonly Action<BenchReport>? save;
    private readonly Action<int> exit;
    private readonly double? caseTimeoutSeconds;
    private readonly PosixSignalRegistration? sigterm;
    private CaseResult? inFlight;
    private bool ended;
    private int faultsInARow;
    private double copyGBPerSecond = double.NaN, copyBytes;

    /// <param name="save">Called with the whole report after every case (and at the end, and on a timeout).</param>
    /// <param name="exit">How a timeout ends the process (Environment.Exit; a test may pass its own).</param>
    public BenchRun(BenchDevice device, ShapePreset preset, Action<string> log, Action<BenchReport>? save = null,
        double? caseTimeoutSeconds = null, FaultInjection? faults = null, Action<int>? exit = null, bool handleSigterm = false)
    {
        Device = device;
        this.preset = preset;
        Log = log;
        this.save = save;
        this.caseTimeoutSeconds = caseTimeoutSeconds;
        this.exit = exit ?? Environment.Exit;
        Faults = faults ?? FaultInjection.None;
        if (handleSigterm)
        {
            sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context =>
            {
                context.Cancel = true;
                Abort(CudaFaults.Terminated, "the process received SIGTERM (the runner's time limit for this step)", null);
            });
        }
    }

    /// <summary>The device cases run on now: a new one after each CUDA fault.</summary>
    public BenchDevice Device { get; private set; }

    public Action<string> Log { get; }

    public FaultInjection Faults { get; }

    public int DeviceRestarts { get; private set; }

    /// <summary>"running", "complete", "stopped" or "timeout" (see BenchReport).</summary>
    public string State { get; set; } = "running";

    /// <summary>True once the run must not start another case (too many faults in a row, no fresh device).</summary>
    public bool Stopped { get; private set; }

    public List<EndToEndResult> EndToEnd { get; } = [];

    public List<PeerResult> Peers { get; } = [];

    public List<string> Notes { get; } = [];

    public string? EndToEndError { get; set; }

    public double ElapsedSeconds => wall.Elapsed.TotalSeconds;

    public IReadOnlyList<CaseResult> Cases
    {
        get
        {
            lock (gate)
                return [.. cases];
        }
    }

    /// <summary>The copy ceiling, measured first; the matmul ceiling is the best matmul case so far.</summary>
    public void SetCopyCeiling(double gbPerSecond, double bytes)
    {
        copyGBPerSecond = gbPerSecond;
        copyBytes = bytes;
    }

    /// <summary>Records a finished case and saves the report. A CUDA fault opens a fresh accelerator first.</summary>
    public void Add(CaseResult result)
    {
        lock (gate)
        {
            if (ended)
                return;
            cases.Add(result);
        }

        if (result.Status == CaseStatus.Fault)
        {
            faultsInARow++;
            if (faultsInARow >= MaxFaultsInARow)
                Stop($"{faultsInARow} CUDA faults in a row (last: {result.Key} {result.ErrorName}): the remaining cases were not run");
            else
                Renew($"{result.Key} {result.DType} T={result.Tokens}: {result.ErrorName}");
        }
        else
        {
            faultsInARow = 0;
        }

        Save();
    }

    /// <summary>Throws the faulted accelerator away (errors logged) and opens a fresh one on the same device.</summary>
    public void Renew(string why)
    {
        Device.DisposeLogged(Log);
        try
        {
            Device = BenchDevice.Open(Device.Choice);
            DeviceRestarts++;
            Log($"note   fresh accelerator after the CUDA fault in {why}");
        }
        catch (Exception e)
        {
            Stop($"no fresh accelerator after the CUDA fault in {why}: {CudaFaults.Describe(e)}");
        }
    }

    /// <summary>No further case starts; what was measured stays.</summary>
    public void Stop(string why)
    {
        Stopped = true;
        State = "stopped";
        Notes.Add($"stopped: {why}");
        Log($"STOP   {why}");
    }

    /// <summary>Marks <paramref name="pending"/> (the case's parameters, status not yet known) as in flight and arms the
    /// watchdog for it; dispose when the case has ended.</summary>
    public IDisposable Watch(CaseResult pending)
    {
        lock (gate)
            inFlight = pending;
        Timer? timer = null;
        if (caseTimeoutSeconds is double limit)
        {
            timer = new Timer(_ => Abort(CudaFaults.CaseTimeout, $"{pending.Key} {pending.DType} T={pending.Tokens} ran past --case-timeout-s {limit:G}", pending),
                null, TimeSpan.FromSeconds(limit), Timeout.InfiniteTimeSpan);
        }

        return new Watcher(this, timer);
    }

    /// <param name="expected">The case the watchdog was armed for: nothing happens if that case has ended meanwhile.</param>
    private void Abort(string errorName, string why, CaseResult? expected)
    {
        lock (gate)
        {
            if (ended || (expected is not null && !ReferenceEquals(inFlight, expected)))
                return;
            ended = true;
            if (inFlight is { } c)
                cases.Add(c with { Status = CaseStatus.Timeout, ErrorName = errorName, Error = why });
            State = "timeout";
            Notes.Add($"stopped: {why}; the process exits with code {TimeoutExitCode} (a running kernel cannot be interrupted)");
            Log($"TIMEOUT {why}");
            try
            {
                save?.Invoke(SnapshotLocked());
            }
            catch (Exception e)
            {
                // The main thread may be mid-update; the report saved after the last case is still on disk.
                Log($"note   the report could not be saved at the timeout: {CudaFaults.Describe(e)}");
            }
        }

        exit(TimeoutExitCode);
    }

    /// <summary>Saves the report as it stands (no-op once a timeout has ended the run).</summary>
    public void Save()
    {
        if (save is null)
            return;
        lock (gate)
        {
            if (!ended)
                save(SnapshotLocked());
        }
    }

    public BenchReport Snapshot()
    {
        lock (gate)
            return SnapshotLocked();
    }

    private BenchReport SnapshotLocked()
    {
        var (withCeilings, ceilings) = ApplyCeilings(cases, copyGBPerSecond, copyBytes);
        return new BenchReport("ilgpumoe bench", preset.Name, preset, started, wall.Elapsed.TotalSeconds, Machine(Device), ceilings,
            withCeilings, [.. EndToEnd], [.. Peers], [.. Notes], State, DeviceRestarts, EndToEndError);
    }

    /// <summary>
    /// Percent of the ceilings for every timed case: the copy bandwidth measured first, the best matmul throughput
    /// reached so far in this run (a ceiling case or any matmul-like case), and the best peak-mma throughput (the
    /// tensor-core ceiling, NaN until one is timed). Null ceilings when no copy was measured.
    /// </summary>
    public static (IReadOnlyList<CaseResult> Cases, Ceilings? Ceilings) ApplyCeilings(IReadOnlyList<CaseResult> results, double copy, double copyBytes)
    {
        if (!double.IsFinite(copy))
            return ([.. results], null);
        double best = 0;
        string source = "";
        foreach (var r in results.Where(r => r.IsMatmul && r.Timing is not null))
        {
            if (r.Timing!.TFlopPerSecond > best)
                (best, source) = (r.Timing.TFlopPerSecond, $"{r.Family} {r.Version} {r.DType} {r.Shape}");
        }

        // The tensor-core ceiling: the best timed peak-mma case (TensorCoreCases.cs), kept apart from the SIMT matmul one.
        double tensorCore = double.NaN;
        string tensorSource = "";
        foreach (var r in results.Where(r => r.Family == TensorCoreFamily.PeakFamily && r.Timing is not null))
        {
            if (!(r.Timing!.TFlopPerSecond <= tensorCore))
                (tensorCore, tensorSource) = (r.Timing.TFlopPerSecond, $"{r.Family} {r.Version} {r.DType} {r.Shape}");
        }

        var updated = results.Select(r => r.Timing is { } t
            ? r with
            {
                Timing = t with
                {
                    PercentOfBandwidth = 100 * t.GBPerSecond / copy,
                    PercentOfCompute = best > 0 ? 100 * t.TFlopPerSecond / best : double.NaN,
                    PercentOfTensorCore = tensorCore > 0 ? 100 * t.TFlopPerSecond / tensorCore : double.NaN,
                },
            }
            : r).ToList();
        return (updated, new Ceilings(copy, best, source, copyBytes) { TensorCoreTFlopPerSecond = tensorCore, TensorCoreSource = tensorSource });
    }

    public static MachineInfo Machine(BenchDevice device) => new(
        Environment.MachineName,
        RuntimeInformation.OSDescription,
        Environment.ProcessorCount,
        RuntimeInformation.FrameworkDescription,
        BenchCommand.Commit(),
        device.Description,
        device.Accelerator.AcceleratorType.ToString());

    public void Dispose()
    {
        sigterm?.Dispose();
        Device.DisposeLogged(Log); // the last device may have faulted in the end-to-end part: log, never throw here
    }

    private sealed class Watcher(BenchRun run, Timer? timer) : IDisposable
    {
        public void Dispose()
        {
            timer?.Dispose();
            lock (run.gate)
                run.inFlight = null;
        }
    }
}
