// The MoE data path after gating, one pipeline for every kind of expert weights:
//   permute (MoePermuteKernel) -> experts step (IMoeExperts) -> combine (MoeCombineKernel).
// The experts step is the seam where the grouped expert kernels plug in: FloatExperts<TW> (F32/F16/BF16 experts,
// grouped GEMM V1-V3, below) and PackedExperts<TQ> (quantized experts, V2/V4 and the act-order gather,
// Quant/QuantGroupedGemm.cs); a tensor-core form would be one more implementation. The step names the version it runs
// (GroupedGemm.Choose unless the caller asks for one) and the permutation is made with the tile height that version
// asks for (GroupedGemm.TileRows), from the workspace's permutations keyed by tile height.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe;

/// <summary>Device scratch of the MoE block for up to MaxTokens tokens: a permutation per tile height, h and y in sorted order.</summary>
public sealed class MoeWorkspace : IDisposable
{
    private readonly SortedDictionary<int, MoePermutation> permutations = [];

    /// <param name="permutedInput">Also allocate <see cref="PermutedInput"/> (quantized GPTQ act-order experts).</param>
    public MoeWorkspace(Accelerator accelerator, int maxTokens, int topK, int experts, int dim, int hidden, bool permutedInput = false)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        if (maxTokens < 1 || topK < 1 || experts < 1 || dim < 1 || hidden < 1)
            throw new ArgumentException($"MoeWorkspace: maxTokens ({maxTokens}), topK ({topK}), experts ({experts}), dim ({dim}) and hidden ({hidden}) must be >= 1");
        if (topK > experts)
            throw new ArgumentException($"MoeWorkspace: topK ({topK}) exceeds experts ({experts})");
        long pairs = (long)maxTokens * topK;
        if (pairs > int.MaxValue / 2)
            throw new ArgumentException($"MoeWorkspace: maxTokens*topK = {pairs} is too large");
        MaxTokens = maxTokens;
        TopK = topK;
        Experts = experts;
        Dim = dim;
        Hidden = hidden;
        // Every tile height a grouped GEMM version asks for, made up front (no allocation in the forward pass).
        foreach (int rows in GroupedGemm.AllTileRows)
            permutations.Add(rows, new MoePermutation(accelerator, (int)pairs, experts, rows));
        H = accelerator.Allocate1D<float>(pairs * hidden);
        Y = accelerator.Allocate1D<float>(pairs * dim);
        if (permutedInput)
            PermutedInput = accelerator.Allocate1D<float>(pairs * dim);
    }

    public int MaxTokens { get; }

    public int TopK { get; }

    public int Experts { get; }

    public int Dim { get; }

    public int Hidden { get; }

    /// <summary>The permutation whose tile schedule has tiles of tileRows rows (<see cref="GroupedGemm.TileRows"/>).</summary>
    public MoePermutation Permutation(int tileRows) =>
        permutations.TryGetValue(tileRows, out var p)
            ? p
            : throw new ArgumentException($"MoeWorkspace: no permutation with {tileRows}-row tiles (has {string.Join(", ", permutations.Keys)})");

    /// <summary>Every permutation, by tile height.</summary>
    public IReadOnlyCollection<MoePermutation> Permutations => permutations.Values;

    /// <summary>[MaxTokens*K, F] SiLU(gate)*up rows in sorted order.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> H { get; }

    /// <summary>[MaxTokens*K, D] expert outputs in sorted order.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> Y { get; }

    /// <summary>[MaxTokens*K, D] each pair's input row in its expert's column order (act-order experts); null unless asked for.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense>? PermutedInput { get; }

    /// <summary>The permutation the last <see cref="MoeBlock.Launch{TExperts}"/> wrote (for inspection).</summary>
    public MoePermutation? Last { get; internal set; }

    public void Dispose()
    {
        foreach (var p in permutations.Values)
            p.Dispose();
        H.Dispose();
        Y.Dispose();
        PermutedInput?.Dispose();
    }
}

/// <summary>
/// The experts step of the MoE block: y [P, D] = expert(row) for the permutation's P sorted rows, into the workspace's
/// Y (through its H). x [T, D]; expertIds [T, K].
/// </summary>
public interface IMoeExperts
{
    /// <summary>What the step's errors start with ("MoeBlock", "QuantMoeBlock").</summary>
    string Name { get; }

    /// <summary>The version to run: requested (refused with an ArgumentException if the step has no such kernels), else GroupedGemm.Choose.</summary>
    GroupedGemmVersion Resolve(GroupedGemmVersion? requested, int tokens, int topK, int experts);

    void Launch(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, MoeWorkspace workspace,
        ArrayView<float> x, ArrayView<int> expertIds, int tokens);
}

/// <summary>
/// The experts step over float experts (w1, w3 [E, F, D]; w2 [E, D, F]) with the grouped GEMM V1-V3; glu: the
/// activation and expert biases (ExpertGlu.cs; default SiLU, none).
/// </summary>
public readonly struct FloatExperts<TW>(GroupedGemmKernel<TW> kernel, TW w1, TW w3, TW w2, ExpertGlu glu = default) : IMoeExperts
    where TW : struct, IWeights
{
    public string Name => "MoeBlock";

    public GroupedGemmVersion Resolve(GroupedGemmVersion? requested, int tokens, int topK, int experts) =>
        GroupedGemm.Resolve(Name, requested, GroupedGemm.FloatVersions, tokens, topK, experts, packed: false);

    public void Launch(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, MoeWorkspace workspace,
        ArrayView<float> x, ArrayView<int> expertIds, int tokens)
    {
        int k = workspace.TopK, d = workspace.Dim, f = workspace.Hidden;
        kernel.LaunchUpGate(stream, version, permutation, x, tokens, k, d, f, w1, w3, workspace.H.View, glu);
        kernel.LaunchDown(stream, version, permutation, workspace.H.View, tokens, k, d, f, w2, workspace.Y.View, glu);
    }
}

/// <summary>The MoE block pipeline: permute -> experts step -> combine, for any <see cref="IMoeExperts"/>.</summary>
public sealed class MoeBlock
{
    private readonly MoePermuteKernel permute;
    private readonly MoeCombineKernel combine;

    private MoeBlock(Accelerator accelerator)
    {
        permute = MoePermuteKernel.Create(accelerator);
        combine = MoeCombineKernel.Create(accelerator);
    }

    public static MoeBlock Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>
    /// output [T, D] = (residual +) MoE(x). x [T, D]; expertIds [T, K] (-1 = dropped); weights [T, K].
    /// residual: empty for none, may alias output. version: null = the experts step's choice (GroupedGemm.Choose).
    /// </summary>
    public void Launch<TExperts>(AcceleratorStream stream, MoeWorkspace workspace, ArrayView<float> x, ArrayView<int> expertIds,
        ArrayView<float> weights, int tokens, TExperts experts, ArrayView<float> output, ArrayView<float> residual = default,
        GroupedGemmVersion? version = null)
        where TExperts : IMoeExperts
    {
        ArgumentNullException.ThrowIfNull(workspace);
        if (tokens < 1 || tokens > workspace.MaxTokens)
            throw new ArgumentException($"{experts.Name}: tokens ({tokens}) must be in 1..{workspace.MaxTokens} (the workspace's size)");
        int k = workspace.TopK;
        var v = experts.Resolve(version, tokens, k, workspace.Experts);
        var perm = workspace.Permutation(GroupedGemm.TileRows(v));
        permute.Launch(stream, expertIds, tokens, k, perm);
        experts.Launch(stream, v, perm, workspace, x, expertIds, tokens);
        combine.Launch(stream, perm, workspace.Y.View, weights, tokens, k, workspace.Dim, output, residual);
        workspace.Last = perm;
    }
}

/// <summary>The MoE block over float experts of one weight type: <see cref="MoeBlock"/> with <see cref="FloatExperts{TW}"/>.</summary>
public sealed class MoeBlockKernels<TW>
    where TW : struct, IWeights
{
    private readonly MoeBlock block;
    private readonly GroupedGemmKernel<TW> gemm;

    private MoeBlockKernels(Accelerator accelerator)
    {
        block = MoeBlock.Create(accelerator);
        gemm = GroupedGemmKernel<TW>.Create(accelerator);
    }

    public static MoeBlockKernels<TW> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>See <see cref="MoeBlock.Launch{TExperts}"/>; w1, w3 [E, F, D]; w2 [E, D, F]; glu: activation and expert biases (ExpertGlu.cs).</summary>
    public void Launch(AcceleratorStream stream, MoeWorkspace workspace, ArrayView<float> x, ArrayView<int> expertIds,
        ArrayView<float> weights, int tokens, TW w1, TW w3, TW w2, ArrayView<float> output,
        ArrayView<float> residual = default, GroupedGemmVersion? version = null, ExpertGlu glu = default) =>
        block.Launch(stream, workspace, x, expertIds, weights, tokens, new FloatExperts<TW>(gemm, w1, w3, w2, glu), output, residual, version);
}
