// The MoE data path after gating as one call: permute -> grouped up/gate GEMM -> grouped down GEMM -> combine.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe;

/// <summary>Device scratch of the MoE block for up to MaxTokens tokens: the permutations and h, y in sorted order.</summary>
public sealed class MoeWorkspace : IDisposable
{
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
        Gemv = new MoePermutation(accelerator, (int)pairs, experts, GroupedGemmKernel<F32Weights>.TileRowsFor(GroupedGemmVersion.V3Gemv));
        Tiled = new MoePermutation(accelerator, (int)pairs, experts, GroupedGemmKernel<F32Weights>.TileRowsFor(GroupedGemmVersion.V2Tiled));
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

    /// <summary>Permutation with 8-row tiles (V1 and V3 GEMMs).</summary>
    public MoePermutation Gemv { get; }

    /// <summary>Permutation with 32-row tiles (V2 GEMMs).</summary>
    public MoePermutation Tiled { get; }

    /// <summary>[MaxTokens*K, F] SiLU(gate)*up rows in sorted order.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> H { get; }

    /// <summary>[MaxTokens*K, D] expert outputs in sorted order.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> Y { get; }

    /// <summary>[MaxTokens*K, D] each pair's input row in its expert's column order (act-order experts); null unless asked for.</summary>
    public MemoryBuffer1D<float, Stride1D.Dense>? PermutedInput { get; }

    /// <summary>The permutation the last <see cref="MoeBlockKernels{TW}.Launch"/> wrote (for inspection).</summary>
    public MoePermutation? Last { get; internal set; }

    public void Dispose()
    {
        Gemv.Dispose();
        Tiled.Dispose();
        H.Dispose();
        Y.Dispose();
        PermutedInput?.Dispose();
    }
}

/// <summary>Facade over MoePermuteKernel, GroupedGemmKernel and MoeCombineKernel for one weight type.</summary>
public sealed class MoeBlockKernels<TW>
    where TW : struct, IWeights
{
    private readonly MoePermuteKernel permute;
    private readonly GroupedGemmKernel<TW> gemm;
    private readonly MoeCombineKernel combine;

    private MoeBlockKernels(Accelerator accelerator)
    {
        permute = MoePermuteKernel.Create(accelerator);
        gemm = GroupedGemmKernel<TW>.Create(accelerator);
        combine = MoeCombineKernel.Create(accelerator);
    }

    public static MoeBlockKernels<TW> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>V3 (decode form) while there are at most ~4 rows per expert on average, else V2 (tiled).</summary>
    public static GroupedGemmVersion ChooseVersion(int tokens, int topK, int experts) =>
        (long)tokens * topK <= 4L * experts ? GroupedGemmVersion.V3Gemv : GroupedGemmVersion.V2Tiled;

    /// <summary>
    /// The checks and choices every MoE block facade (float or quantized experts) makes before launching: tokens fit the
    /// workspace, the version (null = ChooseVersion), and the permutation whose tile rows that version needs.
    /// </summary>
    internal static (GroupedGemmVersion Version, MoePermutation Permutation) Plan(string where, MoeWorkspace workspace, int tokens,
        GroupedGemmVersion? version)
    {
        ArgumentNullException.ThrowIfNull(workspace);
        if (tokens < 1 || tokens > workspace.MaxTokens)
            throw new ArgumentException($"{where}: tokens ({tokens}) must be in 1..{workspace.MaxTokens} (the workspace's size)");
        var v = version ?? ChooseVersion(tokens, workspace.TopK, workspace.Experts);
        return (v, v == GroupedGemmVersion.V2Tiled ? workspace.Tiled : workspace.Gemv);
    }

    /// <summary>
    /// output [T, D] = (residual +) MoE(x). x [T, D]; expertIds [T, K] (-1 = dropped); weights [T, K];
    /// w1, w3 [E, F, D]; w2 [E, D, F]. residual: empty for none, may alias output. version: null = ChooseVersion.
    /// </summary>
    public void Launch(AcceleratorStream stream, MoeWorkspace workspace, ArrayView<float> x, ArrayView<int> expertIds,
        ArrayView<float> weights, int tokens, TW w1, TW w3, TW w2, ArrayView<float> output,
        ArrayView<float> residual = default, GroupedGemmVersion? version = null)
    {
        var (v, perm) = Plan("MoeBlock", workspace, tokens, version);
        int k = workspace.TopK, d = workspace.Dim, f = workspace.Hidden;
        permute.Launch(stream, expertIds, tokens, k, perm);
        gemm.LaunchUpGate(stream, v, perm, x, tokens, k, d, f, w1, w3, workspace.H.View);
        gemm.LaunchDown(stream, v, perm, workspace.H.View, tokens, k, d, f, w2, workspace.Y.View);
        combine.Launch(stream, perm, workspace.Y.View, weights, tokens, k, d, output, residual);
        workspace.Last = perm;
    }
}
