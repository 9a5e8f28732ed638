// The contract between a kernel family and the suite. A family (IBenchFamily) turns a preset and a token count
// into cases; the runner takes each case through Setup -> Check -> (warm up, timed runs) -> Dispose, one at a time,
// so only one case's buffers live on the device at once.
using ILGPU.Runtime;

namespace ILGpuMoE.Perf.Suite;

/// <summary>One kernel, one version, one shape.</summary>
public interface IBenchCase : IDisposable
{
    /// <summary>Kernel family as in [KernelInfo] ("dense/matmul", "attention", "moe/grouped-gemm").</summary>
    string Family { get; }

    /// <summary>Version label ("v1", "v2", "gemv-v2").</summary>
    string Version { get; }

    /// <summary>Weight / activation type label ("f32", "bf16").</summary>
    string DType { get; }

    /// <summary>Tokens per step of this case (the sweep value).</summary>
    int Tokens { get; }

    /// <summary>Human-readable shape ("[64, 4096] x [14336, 4096]^T").</summary>
    string Shape { get; }

    /// <summary>Floating-point operations of one run (a multiply-add counts 2), from the shapes.</summary>
    double Flops { get; }

    /// <summary>Minimum bytes one run must move: every input read once, every output written once.</summary>
    double MinBytes { get; }

    /// <summary>True when this case is a matmul-like kernel whose throughput may set the compute ceiling.</summary>
    bool IsMatmul { get; }

    /// <summary>Bytes of one rotated input set (inputs that a run reads), used to pick how many sets to rotate.</summary>
    long SetBytes { get; }

    /// <summary>Allocates and fills (random, never zeros) <paramref name="sets"/> input sets and the outputs.</summary>
    void Setup(BenchDevice device, int sets);

    /// <summary>Runs the kernel once on set 0 and compares with the reference (all outputs, or sampled tokens at large shapes).</summary>
    CheckResult Check(BenchDevice device);

    /// <summary>Launches the kernel once on input set <paramref name="set"/>; no synchronization.</summary>
    void Run(AcceleratorStream stream, int set);
}

/// <summary>A kernel family's case factory.</summary>
public interface IBenchFamily
{
    /// <summary>Short family name for --filter ("attention", "dense", "gating", "moe").</summary>
    string Name { get; }

    /// <summary>The cases of this family at the preset's shapes for one token count (may be empty).</summary>
    IEnumerable<IBenchCase> Cases(ShapePreset preset, int tokens, BenchDevice device);

    /// <summary>A large matmul-like case that sets the compute ceiling on this device, or null if the family has none.</summary>
    IBenchCase? CeilingCase(ShapePreset preset, BenchDevice device) => null;
}

/// <summary>Outcome of the reference comparison.</summary>
public sealed record CheckResult(bool Passed, double MaxAbsError, double MaxRelError, long Compared, string Scope, string? Message = null)
{
    public static CheckResult Fail(string message) => new(false, double.NaN, double.NaN, 0, "", message);
}
