// Launcher for moe/gating (see GatingKernels.cs for the versions). Loads the kernels once; Launch validates shapes and
// runs the gating kernel, then, for Switch, the capacity kernel, on the caller's stream.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe.Gating;

public enum GatingVersion
{
    /// <summary>One thread per token.</summary>
    V1,

    /// <summary>One warp per token (default).</summary>
    V2,
}

public sealed class GatingKernel : IDisposable
{
    private readonly Action<AcceleratorStream, KernelConfig, RouterSpec, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, ArrayView<int>, ArrayView<float>, int> _gating;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, ArrayView<float>, int, int, int,
        ArrayView<int>> _capacity;

    // Stand-ins for the optional inputs a mode does not read and for an absent dropped counter: every kernel
    // parameter gets a real (1-element) view on every backend.
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _dummyFloats;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _dummyInt;

    private GatingKernel(Accelerator accelerator, GatingVersion version, int warpsPerGroup)
    {
        Accelerator = accelerator;
        Version = version;
        WarpsPerGroup = warpsPerGroup;
        _gating = version == GatingVersion.V1
            ? accelerator.LoadKernel<RouterSpec, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                ArrayView<int>, ArrayView<float>, int>(GatingKernels.GatingV1)
            : accelerator.LoadKernel<RouterSpec, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                ArrayView<int>, ArrayView<float>, int>(GatingKernels.GatingV2);
        _capacity = accelerator.LoadKernel<ArrayView<int>, ArrayView<float>, int, int, int, ArrayView<int>>(
            GatingKernels.SwitchCapacityV1);
        _dummyFloats = accelerator.Allocate1D<float>(1);
        _dummyInt = accelerator.Allocate1D<int>(1);
    }

    public Accelerator Accelerator { get; }

    public GatingVersion Version { get; }

    /// <summary>V2: tokens (warps) per thread group, at most; fewer when T is smaller.</summary>
    public int WarpsPerGroup { get; }

    /// <summary>
    /// Loads the gating kernels (V2 unless asked) for the accelerator. Dispose frees two 1-element buffers.
    /// warpsPerGroup (V2; 0 = automatic): 8 on a GPU, so that the per-SM limit on resident groups does not cap
    /// occupancy; 1 on the CPU accelerator, whose emulated shuffles synchronise every OS thread of the group and
    /// cost ~3x more with 8 warps per group than with 1 (measured: T=69, E=8, K=2 takes 6.6 s vs 2.2 s).
    /// </summary>
    public static GatingKernel Create(Accelerator accelerator, GatingVersion version = GatingVersion.V2, int warpsPerGroup = 0)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        if (version == GatingVersion.V2 && accelerator.WarpSize < 2)
            throw new ArgumentException($"gating V2 needs a warp of at least 2 lanes; accelerator '{accelerator.Name}' has {accelerator.WarpSize}", nameof(version));
        int maxWarps = Math.Max(1, Devices.MaxGroupSize / Math.Max(1, accelerator.WarpSize));
        if (warpsPerGroup < 0 || warpsPerGroup > maxWarps)
            throw new ArgumentException($"gating: warpsPerGroup must be in [0, {maxWarps}] (0 = automatic), got {warpsPerGroup}", nameof(warpsPerGroup));
        if (warpsPerGroup == 0)
            warpsPerGroup = accelerator.AcceleratorType == AcceleratorType.CPU ? 1 : Math.Min(GatingKernels.V2WarpsPerGroup, maxWarps);
        return new GatingKernel(accelerator, version, warpsPerGroup);
    }

    /// <summary>
    /// Routes T tokens. logits [T, E] f32 -> ids [T, K] (expert id, -1 = dropped by Switch capacity) and weights [T, K]
    /// f32, in selection order. noiseLogits [T, E] is required for NoisyTopK, bias [E] for DeepSeekV3; pass default
    /// otherwise. droppedCount [1], when given, receives the number of tokens Switch dropped (0 for other modes).
    /// Views may be longer than needed; only the leading elements are read or written.
    /// </summary>
    public void Launch(AcceleratorStream stream, RouterSpec spec, ArrayView<float> logits, ArrayView<int> ids,
        ArrayView<float> weights, int tokens, ArrayView<float> noiseLogits = default, ArrayView<float> bias = default,
        ArrayView<int> droppedCount = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Validate(spec, tokens, logits, ids, weights, noiseLogits, bias, droppedCount);

        bool hasDropped = Present(droppedCount);
        if (tokens == 0)
        {
            if (hasDropped)
                droppedCount.SubView(0, 1).MemSetToZero(stream);
            return;
        }

        var noise = spec.Kind == RouterKind.NoisyTopK ? noiseLogits : (ArrayView<float>)_dummyFloats.View;
        var biasView = spec.Kind == RouterKind.DeepSeekV3 ? bias : (ArrayView<float>)_dummyFloats.View;
        _gating(stream, Config(spec, tokens), spec, logits, noise, biasView, ids, weights, tokens);

        if (spec.Kind == RouterKind.Switch)
        {
            _capacity(stream, new KernelConfig(1, GatingKernels.CapacityGroupSize), ids, weights, tokens, spec.Experts,
                spec.SwitchCapacity(tokens), hasDropped ? droppedCount : (ArrayView<int>)_dummyInt.View);
        }
        else if (hasDropped)
        {
            droppedCount.SubView(0, 1).MemSetToZero(stream);
        }
    }

    private KernelConfig Config(RouterSpec spec, int tokens)
    {
        if (Version == GatingVersion.V1)
            return new KernelConfig((tokens + GatingKernels.V1GroupSize - 1) / GatingKernels.V1GroupSize, GatingKernels.V1GroupSize);

        int warpSize = Accelerator.WarpSize;
        int warps = Math.Min(WarpsPerGroup, tokens);
        int groups = spec.Kind == RouterKind.DeepSeekV3 ? spec.Groups : 0;
        int floats = warps * (spec.Experts + groups);
        // The PTX gate checks shared memory at the declared maximum; a request above it would go unchecked.
        if (floats * sizeof(float) > GatingKernels.V2MaxDynamicSharedBytes)
            throw new ArgumentException($"gating {spec}: {floats * sizeof(float)} B of dynamic shared memory exceeds the declared {GatingKernels.V2MaxDynamicSharedBytes} B");
        return new KernelConfig((tokens + warps - 1) / warps, warps * warpSize, SharedMemoryConfig.RequestDynamic<float>(floats));
    }

    private static bool Present<T>(ArrayView<T> view)
        where T : unmanaged => view.IsValid && view.Length > 0;

    /// <summary>Checks the spec and the view lengths; throws ArgumentException naming the offending value.</summary>
    public static void Validate(RouterSpec spec, int tokens, ArrayView<float> logits, ArrayView<int> ids,
        ArrayView<float> weights, ArrayView<float> noiseLogits = default, ArrayView<float> bias = default,
        ArrayView<int> droppedCount = default)
    {
        ValidateSpec(spec);
        if (tokens < 0)
            throw new ArgumentException($"gating: tokens must be >= 0, got {tokens}", nameof(tokens));
        long e = spec.Experts, k = spec.TopK;
        RequireLength(logits, tokens * e, "logits [T, E]", nameof(logits));
        RequireLength(ids, tokens * k, "ids [T, K]", nameof(ids));
        RequireLength(weights, tokens * k, "weights [T, K]", nameof(weights));
        if (spec.Kind == RouterKind.NoisyTopK)
            RequireLength(noiseLogits, tokens * e, "noiseLogits [T, E] (NoisyTopK)", nameof(noiseLogits));
        if (spec.Kind == RouterKind.DeepSeekV3)
            RequireLength(bias, e, "bias [E] (DeepSeekV3)", nameof(bias));
        if (droppedCount.IsValid && droppedCount.Length == 0)
            throw new ArgumentException("gating: droppedCount must hold at least 1 int when given", nameof(droppedCount));
    }

    /// <summary>Checks a spec alone (E, K and the mode's parameters).</summary>
    public static void ValidateSpec(RouterSpec spec)
    {
        if (!Enum.IsDefined(spec.Kind))
            throw new ArgumentException($"gating: unknown router kind {(int)spec.Kind}", nameof(spec));
        if (spec.Experts < 1 || spec.Experts > GatingKernels.MaxExperts)
            throw new ArgumentException($"gating {spec}: experts must be in [1, {GatingKernels.MaxExperts}], got {spec.Experts}", nameof(spec));
        if (spec.TopK < 1 || spec.TopK > spec.Experts)
            throw new ArgumentException($"gating {spec}: topK must be in [1, E={spec.Experts}], got {spec.TopK}", nameof(spec));
        switch (spec.Kind)
        {
            case RouterKind.Switch:
                if (spec.TopK != 1)
                    throw new ArgumentException($"gating {spec}: Switch routes top-1, got topK {spec.TopK}", nameof(spec));
                if (!double.IsFinite(spec.CapacityFactor) || spec.CapacityFactor <= 0)
                    throw new ArgumentException($"gating {spec}: capacity factor must be finite and > 0, got {spec.CapacityFactor}", nameof(spec));
                break;
            case RouterKind.DeepSeekV3:
                if (spec.Groups < 1 || spec.Experts % spec.Groups != 0)
                    throw new ArgumentException($"gating {spec}: groups must divide E={spec.Experts}, got {spec.Groups}", nameof(spec));
                if (spec.TopKGroups < 1 || spec.TopKGroups > spec.Groups)
                    throw new ArgumentException($"gating {spec}: topKGroups must be in [1, groups={spec.Groups}], got {spec.TopKGroups}", nameof(spec));
                if (spec.TopK > spec.TopKGroups * (spec.Experts / spec.Groups))
                    throw new ArgumentException($"gating {spec}: topK {spec.TopK} exceeds the {spec.TopKGroups * (spec.Experts / spec.Groups)} experts of the kept groups", nameof(spec));
                if (!double.IsFinite(spec.ScalingFactor))
                    throw new ArgumentException($"gating {spec}: scaling factor must be finite, got {spec.ScalingFactor}", nameof(spec));
                break;
        }
    }

    private static void RequireLength<T>(ArrayView<T> view, long needed, string what, string name)
        where T : unmanaged
    {
        long have = view.IsValid ? view.Length : 0;
        if (have < needed)
            throw new ArgumentException($"gating: {what} needs {needed} elements, the view has {have}", name);
    }

    public void Dispose()
    {
        _dummyFloats.Dispose();
        _dummyInt.Dispose();
    }
}
