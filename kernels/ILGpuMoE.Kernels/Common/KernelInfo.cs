using System.Reflection;
using System.Text;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Kernels;

/// <summary>
/// Marks a kernel entry point (a static method) for the PTX gate and the benchmark suite.
/// Family is the folder-style name ("dense/rmsnorm", "moe/grouped-gemm"), Version is "v1", "v2", ...
/// Launch says how the launcher shapes the grid ("grid T, group 256", ...). A generic kernel method may only
/// have type parameters constrained to <see cref="IWeights"/>, <see cref="IQuantWeights"/>, <see cref="IRowUnits"/> or
/// <see cref="TensorCore.IMmaType"/>: the PTX gate instantiates it once per weight reader or mma type (<see cref="WeightReaders"/>).
/// Every family names its versions in a version enum marked [<see cref="KernelFamilyAttribute"/>] (one member while it
/// has one version); its kernels take the enum member (<c>[KernelInfo(GroupedGemmVersion.V2Tiled, ...)]</c>), so the family and version
/// strings of the PTX files, the manifest and the benchmark cases all come from that one member (<see cref="KernelId"/>).
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false, Inherited = false)]
public sealed class KernelInfoAttribute : Attribute
{
    /// <summary>A kernel of a versioned family: version is a member of an enum marked [KernelFamily].</summary>
    public KernelInfoAttribute(object version, string launch)
    {
        var id = version as Enum ?? throw new ArgumentException($"KernelInfo: {version} is not a version enum member");
        Family = KernelId.Family(id);
        Version = KernelId.Version(id);
        Launch = launch;
    }

    public string Family { get; }

    public string Version { get; }

    public string Launch { get; }

    /// <summary>One line: what this version changes over the previous one.</summary>
    public string Summary { get; init; } = "";

    /// <summary>
    /// Which launch of a version this entry is, where a version has several ("up-gate" and "down", "combine"): part of
    /// the PTX file name (moe-grouped-gemm-v2-tiled-down-bf16). Empty for a version's only entry.
    /// </summary>
    public string Entry { get; init; } = "";

    /// <summary>
    /// For a non-generic entry specialised to one weight type ("f16"): the reader tag its PTX file and manifest entry
    /// carry, as a generic kernel's instance would (dense-matmul-gemv-v2-f16).
    /// </summary>
    public string Reader { get; init; } = "";

    /// <summary>
    /// The PTX gate instantiates a kernel generic over <see cref="IWeights"/> with the quantized readers too
    /// (<see cref="WeightReaders.Quantized"/>), not only the float ones: set where a launcher runs it on packed weights.
    /// </summary>
    public bool QuantizedReaders { get; init; }

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

    /// <summary>
    /// The tensor-core instruction the kernel is built on, as SASS names it: "HMMA" (BF16/F16 mma.sync) or "IMMA"
    /// (int8); empty for SIMT kernels. Such a kernel is loaded with its inline-asm operands promoted to registers
    /// (kernels/ILGpuMoE.Kernels/TensorCore), and the SASS gate requires the instruction, no local memory and no spill.
    /// </summary>
    public string TensorCore { get; init; } = "";

    /// <summary>
    /// Whether the runtime launches this entry in a decode step (T = 1) on CUDA, and what it streams: the manifest
    /// marks such kernels <c>"decode": true</c>, and the SASS check holds the <see cref="DecodeUse.Weights"/> ones to
    /// 128-bit global loads (issue: decode at the bandwidth roofline).
    /// </summary>
    public DecodeUse Decode { get; init; }
}

/// <summary>How a kernel takes part in the T = 1 decode step on CUDA.</summary>
public enum DecodeUse
{
    /// <summary>Not launched by a CUDA decode step (prefill, CPU-accelerator or reference-only versions).</summary>
    None,

    /// <summary>Launched per decode step, moves activations, caches or routing (no weight matrix).</summary>
    Activations,

    /// <summary>Launched per decode step and streams a weight matrix: its global loads should be 128-bit.</summary>
    Weights,
}

/// <summary>Names the kernel family whose versions an enum lists ("moe/grouped-gemm").</summary>
[AttributeUsage(AttributeTargets.Enum, AllowMultiple = false, Inherited = false)]
public sealed class KernelFamilyAttribute(string family) : Attribute
{
    public string Family { get; } = family;
}

/// <summary>
/// A kernel's identity from its version enum member: the family from the enum's [KernelFamily], the version string
/// from the member's name in kebab case (V2Tiled -> "v2-tiled"). The benchmark case names, the PTX file names and
/// the manifest use these, so a version is named once, by its enum member.
/// </summary>
public static class KernelId
{
    public static string Family(Enum version)
    {
        ArgumentNullException.ThrowIfNull(version);
        return version.GetType().GetCustomAttribute<KernelFamilyAttribute>()?.Family
               ?? throw new ArgumentException($"{version.GetType().Name} has no [KernelFamily]");
    }

    public static string Version(Enum version)
    {
        ArgumentNullException.ThrowIfNull(version);
        string name = Enum.GetName(version.GetType(), version)
                      ?? throw new ArgumentException($"{version.GetType().Name} has no member {version}");
        var s = new StringBuilder(name.Length + 4);
        for (int i = 0; i < name.Length; i++)
        {
            if (i > 0 && char.IsAsciiLetterUpper(name[i]))
                s.Append('-');
            s.Append(char.ToLowerInvariant(name[i]));
        }

        return s.ToString();
    }
}

/// <summary>The weight readers the PTX gate instantiates a generic kernel with, each under its file-name tag.</summary>
public static class WeightReaders
{
    /// <summary>Dense readers (<see cref="IWeights"/>).</summary>
    public static readonly IReadOnlyList<(string Name, Type Type)> Float =
    [
        ("f32", typeof(F32Weights)),
        ("f16", typeof(F16Weights)),
        ("bf16", typeof(BF16Weights)),
    ];

    /// <summary>Packed readers (<see cref="IQuantWeights"/>, QuantLayout.cs).</summary>
    public static readonly IReadOnlyList<(string Name, Type Type)> Quantized =
    [
        ("q8", typeof(Q8Weights)),
        ("q4", typeof(Q4Weights)),
        ("fp8", typeof(Fp8Weights)),
        ("mxfp4", typeof(Mxfp4Weights)),
    ];

    /// <summary>
    /// 16-byte unit readers of the decode kernels (<see cref="IRowUnits"/>, Decode/RowUnits.cs). ScalarUnits, the
    /// element-load tail path for odd shapes, is left out: it has no 16-byte view for the kernels' WideViews.
    /// </summary>
    public static readonly IReadOnlyList<(string Name, Type Type)> Units =
    [
        ("f32", typeof(F32Units)),
        ("f16", typeof(F16Units)),
        ("bf16", typeof(BF16Units)),
        ("q8", typeof(Q8Units)),
        ("q4", typeof(Q4Units)),
        ("fp8", typeof(Fp8Units)),
        ("mxfp4", typeof(Mxfp4Units)),
    ];

    /// <summary>The 16-bit input types of the tensor-core kernels (<see cref="TensorCore.IMmaType"/>, TensorCore/Mma.cs).</summary>
    public static readonly IReadOnlyList<(string Name, Type Type)> Mma =
    [
        ("bf16", typeof(TensorCore.Bf16Mma)),
        ("f16", typeof(TensorCore.F16Mma)),
    ];
}
