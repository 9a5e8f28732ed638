namespace ILGpuMoE.Kernels;

/// <summary>
/// Marks a kernel entry point (a static method) for the PTX gate and the benchmark suite.
/// Family is the folder-style name ("dense/rmsnorm", "moe/grouped-gemm"), Version is "v1", "v2", ...
/// Launch says how the launcher shapes the grid ("grid T, group 256", ...). A generic kernel method may only
/// have type parameters constrained to <see cref="IWeights"/>: the PTX gate instantiates it once per weight type.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false, Inherited = false)]
public sealed class KernelInfoAttribute(string family, string version, string launch) : Attribute
{
    public string Family { get; } = family;

    public string Version { get; } = version;

    public string Launch { get; } = launch;

    /// <summary>One line: what this version changes over the previous one.</summary>
    public string Summary { get; init; } = "";
}
