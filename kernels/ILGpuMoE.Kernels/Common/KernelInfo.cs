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

    /// <summary>
    /// The views the kernel reads or writes with vector accesses (ld/st .v2/.v4), each as "param[.field]:bytes"
    /// ("w.Data:16"). The launcher checks, before every launch of this kernel, that each such view starts on a
    /// multiple of bytes and that the row strides the kernel assumes are multiples of bytes (<see cref="WideAccess"/>),
    /// throwing an ArgumentException that names the tensor. The PTX lint (src/ILGpuMoE/Ptx/PtxLint.cs) fails when
    /// the PTX holds a vector access that no entry here covers, or an entry that no vector access uses.
    /// </summary>
    public string[] WideViews { get; init; } = [];

    /// <summary>
    /// Threads per group in the launcher's largest configuration (the PTX gate checks registers x BlockSize against
    /// the register file for sm_80 and sm_90). 0: not declared, and the gate checks at <see cref="Devices.MaxGroupSize"/>,
    /// the bound every launcher keeps (the CPU accelerator that runs the kernel tests has groups of at most that size).
    /// </summary>
    public int BlockSize { get; init; }

    /// <summary>Most bytes of dynamic shared memory the launcher requests (0 for kernels that use none).</summary>
    public int MaxDynamicSharedBytes { get; init; }
}
