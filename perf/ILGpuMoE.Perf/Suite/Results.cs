// What a run produces: every figure the reports (console, JSON, markdown, roofline) are made from.
namespace ILGpuMoE.Perf.Suite;

public sealed record CheckInfo(bool Passed, double MaxAbsError, double MaxRelError, long Compared, string Scope, string? Message);

public sealed record TimingInfo(double MedianSeconds, double MinSeconds, double MaxSeconds, int Reps, int RotatedSets,
    double GBPerSecond, double TFlopPerSecond, double PercentOfBandwidth, double PercentOfCompute);

/// <summary>Status: "ok" (checked and timed), "checked" (check-only run), "wrong" (failed the check: not timed), "error".</summary>
public sealed record CaseResult(string Family, string Version, string DType, int Tokens, string Shape, double Flops, double MinBytes,
    double ArithmeticIntensity, bool IsMatmul, string Status, CheckInfo? Check, TimingInfo? Timing, string? Error);

public sealed record Ceilings(double CopyGBPerSecond, double MatmulTFlopPerSecond, string MatmulSource, double CopyBytes);

public sealed record MachineInfo(string Host, string Os, int Cores, string Runtime, string Commit, string Device, string DeviceKind);

/// <summary>One figure on both sides: Ratio = Ours / Theirs of that figure (tokens/s: > 1 means we are faster).</summary>
public sealed record PeerResult(string Peer, string What, string Shape, double Ours, double Theirs, string Unit, double Ratio, string Note);

public sealed record EndToEndResult(string Engine, string Scheme, int Layers, int PromptTokens, int DecodeTokens,
    double PrefillTokensPerSecond, double DecodeTokensPerSecond, double TimeToFirstTokenSeconds, string Note);

public sealed record BenchReport(string Tool, string Preset, ShapePreset? Shapes, DateTimeOffset StartedUtc, double WallSeconds, MachineInfo Machine,
    Ceilings? Ceilings, IReadOnlyList<CaseResult> Cases, IReadOnlyList<EndToEndResult> EndToEnd, IReadOnlyList<PeerResult> Peers,
    IReadOnlyList<string> Notes)
{
    public int Wrong => Cases.Count(c => c.Status is "wrong" or "error");
}
