using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe;

public enum GroupedGemmVersion
{
    /// <summary>One thread per output element; ignores the tile schedule.</summary>
    V1Simple = 1,
    /// <summary>32x32 shared-memory tiles; needs a permutation with TileRows &lt;= 32.</summary>
    V2Tiled = 2,
    /// <summary>Decode form, one warp per weight row; needs a permutation with TileRows &lt;= 8.</summary>
    V3Gemv = 3,
}

/// <summary>
/// Launcher of the grouped expert GEMMs (GroupedGemm.cs) for one weight type. Weights are stacked per kind:
/// w1, w3 [E, F, D] and w2 [E, D, F] (HF [out, in] per expert). Rows are the permutation's sorted pairs.
/// </summary>
public sealed class GroupedGemmKernel<TW>
    where TW : struct, IWeights
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int> upGateV1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, TW, ArrayView<float>, int, int, int> downV1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int> upGateV2;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, ArrayView<float>, int, int, int> downV2;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int> upGateV3;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, ArrayView<float>, int, int, int> downV3;

    private GroupedGemmKernel(Accelerator a)
    {
        upGateV1 = a.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int>(GroupedGemmKernels.UpGateV1);
        downV1 = a.LoadKernel<ArrayView<float>, ArrayView<int>, TW, ArrayView<float>, int, int, int>(GroupedGemmKernels.DownV1);
        upGateV2 = a.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int>(GroupedGemmKernels.UpGateV2);
        downV2 = a.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, ArrayView<float>, int, int, int>(GroupedGemmKernels.DownV2);
        upGateV3 = a.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int>(GroupedGemmKernels.UpGateV3);
        downV3 = a.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, ArrayView<float>, int, int, int>(GroupedGemmKernels.DownV3);
    }

    public static GroupedGemmKernel<TW> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>The tile rows a version wants from the permutation (V1 accepts any).</summary>
    public static int TileRowsFor(GroupedGemmVersion version) => version switch
    {
        GroupedGemmVersion.V3Gemv => GroupedGemmKernels.GemvRows,
        _ => GroupedGemmKernels.TileM,
    };

    /// <summary>
    /// Pass 1: h [T*K, F] (sorted order; the first offsets[E] rows are written) = silu(x w1^T) * (x w3^T) per expert.
    /// x [T, D]; w1, w3 [E*F*D] elements.
    /// </summary>
    public void LaunchUpGate(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, ArrayView<float> x,
        int tokens, int topK, int dim, int hidden, TW w1, TW w3, ArrayView<float> h)
    {
        int pairs = Validate("LaunchUpGate", stream, version, permutation, tokens, topK, dim, hidden);
        Need("x", x.Length, (long)tokens * dim);
        Need("w1", w1.Length, (long)permutation.Experts * hidden * dim);
        Need("w3", w3.Length, (long)permutation.Experts * hidden * dim);
        Need("h", h.Length, (long)pairs * hidden);
        var p = permutation;
        switch (version)
        {
            case GroupedGemmVersion.V1Simple:
                upGateV1(stream, new KernelConfig(new Index2D(pairs, Blocks(hidden, GroupedGemmKernels.GroupSize)), new Index2D(GroupedGemmKernels.GroupSize, 1)),
                    x, p.SortedPairs.View, p.Offsets.View, w1, w3, h, p.Experts, topK, dim, hidden);
                break;
            case GroupedGemmVersion.V2Tiled:
                upGateV2(stream, Config(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), Blocks(hidden, GroupedGemmKernels.TileN)),
                    x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, w1, w3, h, topK, dim, hidden, p.TileRows);
                break;
            default:
                upGateV3(stream, Config(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), Blocks(hidden, GroupedGemmKernels.GemvWarps)),
                    x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, w1, w3, h, topK, dim, hidden, p.TileRows);
                break;
        }
    }

    /// <summary>Pass 2: y [T*K, D] (sorted order) = h w2^T per expert. h [T*K, F]; w2 [E*D*F] elements.</summary>
    public void LaunchDown(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, ArrayView<float> h,
        int tokens, int topK, int dim, int hidden, TW w2, ArrayView<float> y)
    {
        int pairs = Validate("LaunchDown", stream, version, permutation, tokens, topK, dim, hidden);
        Need("h", h.Length, (long)pairs * hidden);
        Need("w2", w2.Length, (long)permutation.Experts * dim * hidden);
        Need("y", y.Length, (long)pairs * dim);
        var p = permutation;
        switch (version)
        {
            case GroupedGemmVersion.V1Simple:
                downV1(stream, new KernelConfig(new Index2D(pairs, Blocks(dim, GroupedGemmKernels.GroupSize)), new Index2D(GroupedGemmKernels.GroupSize, 1)),
                    h, p.Offsets.View, w2, y, p.Experts, dim, hidden);
                break;
            case GroupedGemmVersion.V2Tiled:
                downV2(stream, Config(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), Blocks(dim, GroupedGemmKernels.TileN)),
                    h, p.Offsets.View, p.Tiles.View, w2, y, dim, hidden, p.TileRows);
                break;
            default:
                downV3(stream, Config(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), Blocks(dim, GroupedGemmKernels.GemvWarps)),
                    h, p.Offsets.View, p.Tiles.View, w2, y, dim, hidden, p.TileRows);
                break;
        }
    }

    private static int Blocks(int n, int block) => (n + block - 1) / block;

    private static KernelConfig Config(int tiles, int blocks) =>
        new(new Index2D(tiles, blocks), new Index2D(GroupedGemmKernels.GroupSize, 1));

    private static void Need(string what, long have, long need)
    {
        if (have < need)
            throw new ArgumentException($"GroupedGemm: {what} has {have} elements, needs {need}");
    }

    private static int Validate(string where, AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation,
        int tokens, int topK, int dim, int hidden)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(permutation);
        if (tokens < 1 || topK < 1 || dim < 1 || hidden < 1)
            throw new ArgumentException($"GroupedGemm.{where}: tokens ({tokens}), topK ({topK}), dim ({dim}) and hidden ({hidden}) must be >= 1");
        long pairs = (long)tokens * topK;
        if (pairs > permutation.MaxPairs)
            throw new ArgumentException($"GroupedGemm.{where}: tokens*topK = {pairs} exceeds the permutation's capacity {permutation.MaxPairs}");
        int maxRows = version switch
        {
            GroupedGemmVersion.V1Simple => int.MaxValue,
            GroupedGemmVersion.V2Tiled => GroupedGemmKernels.TileM,
            GroupedGemmVersion.V3Gemv => GroupedGemmKernels.GemvRows,
            _ => throw new ArgumentException($"GroupedGemm.{where}: unknown version {version}"),
        };
        if (permutation.TileRows > maxRows)
            throw new ArgumentException($"GroupedGemm.{where}: {version} needs tile rows <= {maxRows}, the permutation has {permutation.TileRows}");
        return (int)pairs;
    }
}
