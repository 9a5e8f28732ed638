// Grouped expert GEMMs over quantized expert weights: one launch for all experts, both MoE passes.
//
// The MoE family's grouped GEMM (Moe/GroupedGemm/GroupedGemm.cs) is generic over a weight reader; Q8Weights,
// Q4Weights and Fp8Weights are readers (IWeights.Get dequantizes one element from the flat [E*N*K] index), so the
// quantized versions are that same kernel instantiated per scheme, not a copy. The entries below exist so every
// launched instantiation carries [KernelInfo] (the PTX gate instantiates generic kernels only with F32/F16/BF16).
//   V2  tiled (prefill): the generic loader calls Get for each element of the 32x32 weight tile, i.e. the tile is
//       dequantized into shared memory on the way in; 4- and 8-bit words are re-read by their 8 / 4 neighbours
//       from L1, so DRAM traffic is still one read per weight byte per tile.
//   V4  decode (QuantGroupedGemv.cs): not the generic V3, whose per-element Get costs a 64-bit division and a
//       scale load per weight, but the MoE V3 shape reading 16-byte units with one scale lookup per unit.
// The launcher runs V2 for GroupedGemmVersion.V2Tiled and V4 for GroupedGemmVersion.V3Gemv (the decode slot).
//   Act-order gather V1 (GPTQ desc_act experts): xs[p, j] = x[p / K, perm[e(p), j]], one row per (token, expert) pair,
//       so that up/gate reads each expert's input columns in its packed (group) order. The up/gate pass then runs on
//       xs as T*K "tokens" with K = 1: sorted[r] / 1 = p picks pair p's gathered row, no kernel change. w2's own
//       act-order permutation needs no gather: the loader folds it into the rows of w1 and w3 (ActOrder.cs in src),
//       so h already comes out in w2's packed column order.
// Stacked expert layout: w1, w3 [E*F, D] and w2 [E*D, F] packed per QuantLayout.cs (Q4 needs D % G == 0 for w1/w3
// and F % G == 0 for w2). Rows come from the MoE permutation's schedule (MoePermuteKernel): sorted pairs, offsets,
// tiles; an expert with no rows owns no tile and costs nothing.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Moe;

namespace ILGpuMoE.Kernels.Quant;

public static class QuantGroupedGemmKernels
{
    private const string V2UpLaunch = "grid (tiles, ceil(F/32)), group 256";
    private const string V2DownLaunch = "grid (tiles, ceil(D/32)), group 256";

    [KernelInfo("quant/grouped-gemm", "v2-q8", V2UpLaunch, Summary = "MoE up/gate, int8 experts: generic tiled grouped GEMM with the Q8 reader")]
    public static void UpGateV2Q8(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, Q8Weights w1, Q8Weights w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows) =>
        GroupedGemmKernels.UpGateV2(x, sorted, offsets, tiles, w1, w3, h, topK, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v2-q4", V2UpLaunch, Summary = "MoE up/gate, int4 experts: generic tiled grouped GEMM with the Q4 reader")]
    public static void UpGateV2Q4(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, Q4Weights w1, Q4Weights w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows) =>
        GroupedGemmKernels.UpGateV2(x, sorted, offsets, tiles, w1, w3, h, topK, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v2-fp8", V2UpLaunch, Summary = "MoE up/gate, fp8 experts: generic tiled grouped GEMM with the FP8 reader")]
    public static void UpGateV2Fp8(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, Fp8Weights w1, Fp8Weights w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows) =>
        GroupedGemmKernels.UpGateV2(x, sorted, offsets, tiles, w1, w3, h, topK, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v2-q8-down", V2DownLaunch, Summary = "MoE down, int8 experts: generic tiled grouped GEMM with the Q8 reader")]
    public static void DownV2Q8(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, Q8Weights w2, ArrayView<float> y, int dim, int hidden, int tileRows) =>
        GroupedGemmKernels.DownV2(h, offsets, tiles, w2, y, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v2-q4-down", V2DownLaunch, Summary = "MoE down, int4 experts: generic tiled grouped GEMM with the Q4 reader")]
    public static void DownV2Q4(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, Q4Weights w2, ArrayView<float> y, int dim, int hidden, int tileRows) =>
        GroupedGemmKernels.DownV2(h, offsets, tiles, w2, y, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v2-fp8-down", V2DownLaunch, Summary = "MoE down, fp8 experts: generic tiled grouped GEMM with the FP8 reader")]
    public static void DownV2Fp8(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, Fp8Weights w2, ArrayView<float> y, int dim, int hidden, int tileRows) =>
        GroupedGemmKernels.DownV2(h, offsets, tiles, w2, y, dim, hidden, tileRows);

    [KernelInfo("quant/act-order-gather", "v1", "grid (T*K, ceil(D/256)), group 256",
        Summary = "xs[p, j] = x[p / K, perm[e(p), j]]: per-expert input gather for GPTQ act-order experts")]
    public static void GatherExpertInputsV1(ArrayView<float> x, ArrayView<int> expertIds, ArrayView<int> perm, ArrayView<float> xs,
        int pairs, int topK, int dim, int experts)
    {
        // x [T, D]; expertIds [T*K]; perm [E, D]; xs [T*K, D]. Block (p, c) writes columns c*256.. of pair p's row:
        // consecutive threads write consecutive xs columns (coalesced) and read one token's row of x through perm
        // (scattered within a row that L1 holds); the 2-D grid keeps 64-bit divisions out of the index math.
        // A dropped pair (id -1, or an id the permutation counted as bad) gets a zero row that no pass reads.
        int p = Grid.IdxX;
        int j = Grid.IdxY * Group.DimX + Group.IdxX;
        if (p >= pairs || j >= dim)
            return;
        int e = expertIds[p];
        long i = (long)p * dim + j;
        xs[i] = e >= 0 && e < experts ? x[(long)(p / topK) * dim + perm[(long)e * dim + j]] : 0f;
    }
}

/// <summary>
/// Launcher of the quantized grouped expert GEMMs for one scheme (TQ is Q8Weights, Q4Weights or Fp8Weights).
/// Same contract as <see cref="GroupedGemmKernel{TW}"/>: h [T*K, F] and y [T*K, D] in the permutation's sorted order.
/// </summary>
public sealed class QuantGroupedGemmKernel<TQ>
    where TQ : struct, IQuantWeights
{
    private delegate void UpGate(AcceleratorStream s, KernelConfig c, ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets,
        ArrayView<int> tiles, TQ w1, TQ w3, ArrayView<float> h, int topK, int dim, int hidden, int tileRows);

    private delegate void Down(AcceleratorStream s, KernelConfig c, ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, TQ w2,
        ArrayView<float> y, int dim, int hidden, int tileRows);

    private readonly UpGate upGateV2, upGateV4;
    private readonly Down downV2, downV4;

    private QuantGroupedGemmKernel(Accelerator a)
    {
        (upGateV2, upGateV4, downV2, downV4) = Load(a);
    }

    public static QuantGroupedGemmKernel<TQ> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    private static (UpGate, UpGate, Down, Down) Load(Accelerator a)
    {
        // Each scheme's entries take their concrete reader type; the casts only re-type the delegates.
        if (typeof(TQ) == typeof(Q8Weights))
        {
            return ((UpGate)(object)Up<Q8Weights>(a, QuantGroupedGemmKernels.UpGateV2Q8), (UpGate)(object)Up<Q8Weights>(a, QuantGroupedGemvKernels.UpGateQ8),
                (Down)(object)Dn<Q8Weights>(a, QuantGroupedGemmKernels.DownV2Q8), (Down)(object)Dn<Q8Weights>(a, QuantGroupedGemvKernels.DownQ8));
        }

        if (typeof(TQ) == typeof(Q4Weights))
        {
            return ((UpGate)(object)Up<Q4Weights>(a, QuantGroupedGemmKernels.UpGateV2Q4), (UpGate)(object)Up<Q4Weights>(a, QuantGroupedGemvKernels.UpGateQ4),
                (Down)(object)Dn<Q4Weights>(a, QuantGroupedGemmKernels.DownV2Q4), (Down)(object)Dn<Q4Weights>(a, QuantGroupedGemvKernels.DownQ4));
        }

        if (typeof(TQ) == typeof(Fp8Weights))
        {
            return ((UpGate)(object)Up<Fp8Weights>(a, QuantGroupedGemmKernels.UpGateV2Fp8), (UpGate)(object)Up<Fp8Weights>(a, QuantGroupedGemvKernels.UpGateFp8),
                (Down)(object)Dn<Fp8Weights>(a, QuantGroupedGemmKernels.DownV2Fp8), (Down)(object)Dn<Fp8Weights>(a, QuantGroupedGemvKernels.DownFp8));
        }

        throw new ArgumentException($"QuantGroupedGemm: no kernels for weight type {typeof(TQ).Name}");
    }

    private static QuantGroupedGemmKernel<TX>.UpGate Up<TX>(Accelerator a,
        Action<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TX, TX, ArrayView<float>, int, int, int, int> entry)
        where TX : struct, IQuantWeights
    {
        var k = a.LoadKernel(entry);
        return (s, c, x, so, of, ti, w1, w3, h, topK, dim, hidden, tr) => k(s, c, x, so, of, ti, w1, w3, h, topK, dim, hidden, tr);
    }

    private static QuantGroupedGemmKernel<TX>.Down Dn<TX>(Accelerator a,
        Action<ArrayView<float>, ArrayView<int>, ArrayView<int>, TX, ArrayView<float>, int, int, int> entry)
        where TX : struct, IQuantWeights
    {
        var k = a.LoadKernel(entry);
        return (s, c, h, of, ti, w2, y, dim, hidden, tr) => k(s, c, h, of, ti, w2, y, dim, hidden, tr);
    }

    /// <summary>Pass 1: h [T*K, F] = silu(x w1^T) * (x w3^T) per expert; x [T, D]; w1, w3 packed [E*F, D].</summary>
    public void LaunchUpGate(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, ArrayView<float> x,
        int tokens, int topK, int dim, int hidden, TQ w1, TQ w3, ArrayView<float> h)
    {
        int pairs = Validate("LaunchUpGate", stream, version, permutation, tokens, topK, dim, hidden);
        Shape("w1", w1, permutation.Experts * (long)hidden, dim);
        Shape("w3", w3, permutation.Experts * (long)hidden, dim);
        if (version == GroupedGemmVersion.V3Gemv)
        {
            QuantLayout.CheckWide("QuantGroupedGemm.LaunchUpGate", "w1", w1);
            QuantLayout.CheckWide("QuantGroupedGemm.LaunchUpGate", "w3", w3);
        }

        Need("x", x.Length, (long)tokens * dim);
        Need("h", h.Length, (long)pairs * hidden);
        var p = permutation;
        var (kernel, blocks) = version == GroupedGemmVersion.V2Tiled ? (upGateV2, GroupedGemmKernels.TileN) : (upGateV4, QuantGroupedGemvKernels.Warps);
        kernel(stream, Config(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), (hidden + blocks - 1) / blocks),
            x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, w1, w3, h, topK, dim, hidden, p.TileRows);
    }

    /// <summary>Pass 2: y [T*K, D] = h w2^T per expert; h [T*K, F]; w2 packed [E*D, F].</summary>
    public void LaunchDown(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, ArrayView<float> h,
        int tokens, int topK, int dim, int hidden, TQ w2, ArrayView<float> y)
    {
        int pairs = Validate("LaunchDown", stream, version, permutation, tokens, topK, dim, hidden);
        Shape("w2", w2, permutation.Experts * (long)dim, hidden);
        if (version == GroupedGemmVersion.V3Gemv)
            QuantLayout.CheckWide("QuantGroupedGemm.LaunchDown", "w2", w2);
        Need("h", h.Length, (long)pairs * hidden);
        Need("y", y.Length, (long)pairs * dim);
        var p = permutation;
        var (kernel, blocks) = version == GroupedGemmVersion.V2Tiled ? (downV2, GroupedGemmKernels.TileN) : (downV4, QuantGroupedGemvKernels.Warps);
        kernel(stream, Config(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), (dim + blocks - 1) / blocks),
            h, p.Offsets.View, p.Tiles.View, w2, y, dim, hidden, p.TileRows);
    }

    private static KernelConfig Config(int tiles, int blocks) =>
        new(new Index2D(tiles, blocks), new Index2D(GroupedGemmKernels.GroupSize, 1));

    private static void Shape(string what, TQ w, long rows, int cols)
    {
        // One layout check per scheme (the generic TQ is one of the three readers; boxing here is host-side only).
        switch (w)
        {
            case Q8Weights q8: QuantLayout.Check("QuantGroupedGemm " + what, q8); break;
            case Q4Weights q4: QuantLayout.Check("QuantGroupedGemm " + what, q4); break;
            case Fp8Weights f8: QuantLayout.Check("QuantGroupedGemm " + what, f8); break;
        }

        if (w.Rows != rows || w.Cols != cols)
            throw new ArgumentException($"QuantGroupedGemm: {what} is packed as [{w.Rows}, {w.Cols}], expected [{rows}, {cols}] (experts stacked)");
        if (w.Words.Length < (long)w.Rows * w.RowWords)
            throw new ArgumentException($"QuantGroupedGemm: {what} words has {w.Words.Length} elements, needs {(long)w.Rows * w.RowWords}");
    }

    private static void Need(string what, long have, long need)
    {
        if (have < need)
            throw new ArgumentException($"QuantGroupedGemm: {what} has {have} elements, needs {need}");
    }

    private static int Validate(string where, AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation,
        int tokens, int topK, int dim, int hidden)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(permutation);
        if (tokens < 1 || topK < 1 || dim < 1 || hidden < 1)
            throw new ArgumentException($"QuantGroupedGemm.{where}: tokens ({tokens}), topK ({topK}), dim ({dim}) and hidden ({hidden}) must be >= 1");
        long pairs = (long)tokens * topK;
        if (pairs > permutation.MaxPairs)
            throw new ArgumentException($"QuantGroupedGemm.{where}: tokens*topK = {pairs} exceeds the permutation's capacity {permutation.MaxPairs}");
        int maxRows = version switch
        {
            GroupedGemmVersion.V2Tiled => GroupedGemmKernels.TileM,
            GroupedGemmVersion.V3Gemv => QuantGroupedGemvKernels.Rows,
            _ => throw new ArgumentException($"QuantGroupedGemm.{where}: version {version} is not available for quantized weights (V2Tiled or V3Gemv)"),
        };
        if (permutation.TileRows > maxRows)
            throw new ArgumentException($"QuantGroupedGemm.{where}: {version} needs tile rows <= {maxRows}, the permutation has {permutation.TileRows}");
        return (int)pairs;
    }
}

/// <summary>
/// The MoE data path after gating over quantized experts, as one call: permute -> grouped up/gate -> grouped down ->
/// combine. Same contract as <see cref="MoeBlockKernels{TW}"/> (and the same <see cref="MoeWorkspace"/>), with
/// w1, w3 packed [E*F, D] and w2 packed [E*D, F].
/// </summary>
public sealed class QuantMoeBlockKernels<TQ>
    where TQ : struct, IQuantWeights
{
    private readonly MoePermuteKernel permute;
    private readonly QuantGroupedGemmKernel<TQ> gemm;
    private readonly MoeCombineKernel combine;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int, int, int> gather;

    private QuantMoeBlockKernels(Accelerator accelerator)
    {
        permute = MoePermuteKernel.Create(accelerator);
        gemm = QuantGroupedGemmKernel<TQ>.Create(accelerator);
        combine = MoeCombineKernel.Create(accelerator);
        gather = accelerator.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int, int, int>(
            QuantGroupedGemmKernels.GatherExpertInputsV1);
    }

    public static QuantMoeBlockKernels<TQ> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>
    /// output [T, D] = (residual +) MoE(x). x [T, D]; expertIds [T, K] (-1 = dropped); weights [T, K].
    /// version: null = <see cref="MoeBlockKernels{TW}.ChooseVersion"/> (V3Gemv runs the quantized V4 decode kernels).
    /// inputPermutation: empty, or [E, D] for GPTQ act-order w1/w3 (expert e's packed column j is input column
    /// perm[e, j]; w1 and w3 of an expert share it); it needs a workspace made with permutedInput.
    /// </summary>
    public void Launch(AcceleratorStream stream, MoeWorkspace workspace, ArrayView<float> x, ArrayView<int> expertIds,
        ArrayView<float> weights, int tokens, TQ w1, TQ w3, TQ w2, ArrayView<float> output,
        ArrayView<float> residual = default, GroupedGemmVersion? version = null, ArrayView<int> inputPermutation = default)
    {
        var (v, perm) = MoeBlockKernels<F32Weights>.Plan("QuantMoeBlock", workspace, tokens, version);
        if (v == GroupedGemmVersion.V1Simple)
            throw new ArgumentException("QuantMoeBlock: V1Simple is not available for quantized experts (V2Tiled or V3Gemv)");
        int k = workspace.TopK, d = workspace.Dim, f = workspace.Hidden;
        permute.Launch(stream, expertIds, tokens, k, perm);
        if (inputPermutation.Length == 0)
        {
            gemm.LaunchUpGate(stream, v, perm, x, tokens, k, d, f, w1, w3, workspace.H.View);
        }
        else
        {
            // Act-order: gather each pair's input row in its expert's column order, then run up/gate over the T*K
            // gathered rows as tokens with K = 1 (sorted pair p reads row p).
            long pairs = (long)tokens * k;
            if (inputPermutation.Length < (long)workspace.Experts * d)
                throw new ArgumentException($"QuantMoeBlock: inputPermutation has {inputPermutation.Length} elements, needs E*D = {(long)workspace.Experts * d}");
            var xs = workspace.PermutedInput
                     ?? throw new ArgumentException("QuantMoeBlock: an input permutation needs a MoeWorkspace made with permutedInput: true");
            if (x.Length < (long)tokens * d || expertIds.Length < pairs)
                throw new ArgumentException($"QuantMoeBlock: x ({x.Length}) needs T*D = {(long)tokens * d}, expertIds ({expertIds.Length}) needs T*K = {pairs}");
            gather(stream, new KernelConfig(new Index2D((int)pairs, (d + 255) / 256), new Index2D(256, 1)), x, expertIds, inputPermutation, xs.View,
                (int)pairs, k, d, workspace.Experts);
            gemm.LaunchUpGate(stream, v, perm, xs.View, (int)pairs, 1, d, f, w1, w3, workspace.H.View);
        }

        gemm.LaunchDown(stream, v, perm, workspace.H.View, tokens, k, d, f, w2, workspace.Y.View);
        combine.Launch(stream, perm, workspace.Y.View, weights, tokens, k, d, output, residual);
        workspace.Last = perm;
    }
}
