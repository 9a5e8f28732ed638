// What a run produces: every figure the reports (console, JSON, markdown, roofline) are made from.
namespace ILGpuMoE.Perf.Suite;

public sealed record CheckInfo(bool Passed, double MaxAbsError, double MaxRelError, long Compared, string Scope, string? Message);

public sealed record TimingInfo(double MedianSeconds, double MinSeconds, double MaxSeconds, int Reps, int RotatedSets,
    double GBPerSecond, double TFlopPerSecond, double PercentOfBandwidth, double PercentOfCompute)
{
    /// <summary>% of the tensor-core ceiling measured in the same run (the peak-mma case); NaN when none was measured.</summary>
    public double PercentOfTensorCore { get; init; } = double.NaN;
}

/// <summary>
/// Where a case's time went before its timed runs, in seconds, kept apart from the timed figure. Setup: kernel objects
/// created (ILGPU compiles and loads a kernel when it is created), buffers allocated and filled on the device, plus
/// what little the case prepares on the host. FirstRun: the first launch of exactly what the timed runs launch, at the
/// same shapes, synchronized: any kernel compiled lazily is compiled here, so no compile is ever timed. Check: the
/// downloads and the reference on the host.
/// </summary>
public sealed record PrepInfo(double SetupSeconds, double FirstRunSeconds, double CheckSeconds)
{
    /// <summary>Setup + first run: the compile-and-prepare cost the timed figure leaves out.</summary>
    public double CompileSeconds => SetupSeconds + FirstRunSeconds;
}

/// <summary>Status of a case (<see cref="CaseStatus"/>).</summary>
public sealed record CaseResult(string Family, string Version, string DType, int Tokens, string Shape, double Flops, double MinBytes,
    double ArithmeticIntensity, bool IsMatmul, string Status, CheckInfo? Check, TimingInfo? Timing, string? Error,
    string? ErrorName = null, PrepInfo? Prep = null)
{
    /// <summary>How ILGPUMOE_INJECT_FAULT and the logs name the case: family/version, as in bench.json.</summary>
    public string Key => $"{Family}/{Version}";

    public bool Failed => CaseStatus.IsFailure(Status);
}

/// <summary>The statuses a case can end in.</summary>
public static class CaseStatus
{
    /// <summary>Checked and timed.</summary>
    public const string Ok = "ok";

    /// <summary>A ceiling case, checked and timed.</summary>
    public const string Ceiling = "ceiling";

    /// <summary>Check-only run: matched the reference, nothing timed.</summary>
    public const string Checked = "checked";

    /// <summary>Failed its check: not timed.</summary>
    public const string Wrong = "wrong";

    /// <summary>An exception that is not a CUDA error (a bad argument, a bug): the device is still usable.</summary>
    public const string Error = "error";

    /// <summary>A CUDA error (ErrorName = CUDA_ERROR_...): the context is lost; the run goes on with a fresh accelerator.</summary>
    public const string Fault = "fault";

    /// <summary>Ran past --case-timeout-s (ErrorName CASE_TIMEOUT) or the process was told to stop (SIGTERM):
    /// the report is written with this case last and the process exits with code 3.</summary>
    public const string Timeout = "timeout";

    public static bool IsFailure(string status) => status is Wrong or Error or Fault or Timeout;
}

public sealed record Ceilings(double CopyGBPerSecond, double MatmulTFlopPerSecond, string MatmulSource, double CopyBytes)
{
    /// <summary>The best peak-mma TFLOP/s of the run (perf/ILGpuMoE.Perf/Cases/TensorCoreCases.cs); NaN when none was timed.</summary>
    public double TensorCoreTFlopPerSecond { get; init; } = double.NaN;

    /// <summary>The case that set it ("tensor-core/peak v1-mma bf16 ...").</summary>
    public string TensorCoreSource { get; init; } = "";
}

public sealed record MachineInfo(string Host, string Os, int Cores, string Runtime, string Commit, string Device, string DeviceKind);

/// <summary>One figure on both sides: Ratio = Ours / Theirs of that figure (tokens/s: > 1 means we are faster).</summary>
public sealed record PeerResult(string Peer, string What, string Shape, double Ours, double Theirs, string Unit, double Ratio, string Note);

/// <summary>
/// Kept apart from the figures: WarmupSeconds, the untimed pass at the full prompt length and one decode step (compiles
/// every kernel and launch shape the timed passes use); LoadSeconds, the model onto the device; HostPrepSeconds, writing
/// the random model and quantizing it (0 when an earlier run left it in the cache).
/// </summary>
public sealed record EndToEndResult(string Engine, string Scheme, int Layers, int PromptTokens, int DecodeTokens,
    double PrefillTokensPerSecond, double DecodeTokensPerSecond, double TimeToFirstTokenSeconds, string Note, double WarmupSeconds = double.NaN)
{
    public double LoadSeconds { get; init; } = double.NaN;

    public double HostPrepSeconds { get; init; } = double.NaN;

    /// <summary>Kernel launches per decode step (mean over the timed steps; a graph replay counts its nodes); NaN for peers.</summary>
    public double LaunchesPerToken { get; init; } = double.NaN;

    /// <summary>Of those, per decoder layer (the embedding and the logits head excluded).</summary>
    public double LaunchesPerLayer { get; init; } = double.NaN;
}

/// <summary>
/// State: "running" while cases remain (the report is rewritten after every case), "complete", "stopped" (the budget,
/// or too many CUDA faults in a row: Notes say which) or "timeout" (a case ran past --case-timeout-s, or SIGTERM).
/// DeviceRestarts: fresh accelerators opened after CUDA faults. EndToEndError: the end-to-end part failed (its name
/// and message).
/// </summary>
public sealed record BenchReport(string Tool, string Preset, ShapePreset? Shapes, DateTimeOffset StartedUtc, double WallSeconds, MachineInfo Machine,
    Ceilings? Ceilings, IReadOnlyList<CaseResult> Cases, IReadOnlyList<EndToEndResult> EndToEnd, IReadOnlyList<PeerResult> Peers,
    IReadOnlyList<string> Notes, string State = "complete", int DeviceRestarts = 0, string? EndToEndError = null)
{
    /// <summary>Cases that failed: wrong, error, fault or timeout.</summary>
    public int Wrong => Cases.Count(c => c.Failed);

    /// <summary>Anything failed: a case, or the end-to-end part.</summary>
    public bool Failed => Wrong > 0 || EndToEndError is not null;
}
