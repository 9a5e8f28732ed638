// Grouped expert GEMMs over quantized (packed) expert weights: the moe/grouped-gemm family's versions for packed
// readers (Q8Weights, Q4Weights, Fp8Weights, Mxfp4Weights: IWeights.Get dequantizes one element from the flat [E*N*K]
// index), and
// the MoE block's experts step for packed experts.
//   V2  tiled (prefill): the generic V2 of Moe/GroupedGemm/GroupedGemm.cs with a packed reader; the loader calls Get
//       for each element of the 32x32 weight tile, i.e. the tile is dequantized into shared memory on the way in;
//       4- and 8-bit words are re-read by their 8 / 4 neighbours from L1, so DRAM traffic is still one read per
//       weight byte per tile.
//   V4  decode (below): the MoE V3 shape (one warp per expert weight row, up to 8 sorted rows per expert tile, one
//       launch for all experts over the permutation's tile schedule), but reading the packed rows as 16-byte units
//       like QuantGemv V1: one ld.v4 per lane per step, one scale lookup per unit, codes turned into floats in
//       registers and the scale applied once per unit. The generic V3 reads element by element through
//       IWeights.Get, which costs a 64-bit division and a scale load per weight.
//       up/gate: h[r, n] = silu(x_r . w1[e, n]) * (x_r . w3[e, n]); down: y[r, d] = h_r . w2[e, d]; or the ExpertGlu's
//       activation and biases (gpt-oss, Moe/GroupedGemm/ExpertGlu.cs) in the same epilogues. Both passes read
//       every weight byte of a touched expert once per tile of <= 8 rows; partial sums are reduced through shared
//       memory in lane order (deterministic; no shuffles, no atomics).
//   Act-order gather V1 (GPTQ desc_act experts): xs[p, j] = x[p / K, perm[e(p), j]], one row per (token, expert) pair,
//       so that up/gate reads each expert's input columns in its packed (group) order. The up/gate pass then runs on
//       xs as T*K "tokens" with K = 1: sorted[r] / 1 = p picks pair p's gathered row, no kernel change. w2's own
//       act-order permutation needs no gather: the loader folds it into the rows of w1 and w3 (ActOrder.cs in src),
//       so h already comes out in w2's packed column order.
// Stacked expert layout: w1, w3 [E*F, D] and w2 [E*D, F] packed per QuantLayout.cs (Q4 needs D % G == 0 for w1/w3
// and F % G == 0 for w2). Rows come from the MoE permutation's schedule (MoePermuteKernel): sorted pairs, offsets,
// tiles; an expert with no rows owns no tile and costs nothing.
using System.Diagnostics;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Moe;

namespace ILGpuMoE.Kernels.Quant;

/// <summary>quant/act-order-gather's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("quant/act-order-gather")]
public enum ActOrderGatherVersion
{
    /// <summary>Each pair's input row gathered in its expert's column order.</summary>
    V1 = 1,
}

public static class QuantGroupedGemmKernels
{
    /// <summary>V4 keeps V3's shape: outputs (warps) per group and rows per tile (GroupedGemm.TileRows).</summary>
    public const int Warps = GroupedGemmKernels.GemvWarps;
    public const int Rows = GroupedGemmKernels.GemvRows;
    private const int RedLd = 33;

    [KernelInfo(GroupedGemmVersion.V4PackedGemv, "grid (tiles, ceil(F/8)), group 256 = 8 warps", Entry = "up-gate", WideViews = ["w1.Data:16", "w3.Data:16"],
        BlockSize = GroupedGemmKernels.GroupSize, Summary = "up/gate decode over packed experts: warp per row, 16-byte units, SiLU(gate)*up fused")]
    public static void UpGateV4<TQ>(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, TQ w1, TQ w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows, ExpertGlu glu)
        where TQ : struct, IQuantWeights
    {
        int e = tiles[2 * Grid.IdxX];
        if (e < 0)
            return; // unused schedule slot: the whole group leaves before the barrier
        int rowStart = tiles[2 * Grid.IdxX + 1];
        int rows = Math.Min(tileRows, offsets[e + 1] - rowStart);
        int warp = Group.IdxX >> 5, lane = Group.IdxX & 31;
        int n = Grid.IdxY * Warps + warp;
        long wRow = (long)e * hidden + n;
        int units = w1.RowWords >> 2;
        long wUnit = Index64.StackedRow(e, hidden, n, units); // first 16-byte unit of the row, added once
        int uEnd = n < hidden ? units : 0; // a warp past F still reaches the barrier
        int unitValues = 4 * w1.ValuesPerWord;

        // Token rows of x; missing rows repeat row 0 (their sums are discarded).
        long b0 = (long)(sorted[rowStart] / topK) * dim;
        long b1 = rows > 1 ? (long)(sorted[rowStart + 1] / topK) * dim : b0;
        long b2 = rows > 2 ? (long)(sorted[rowStart + 2] / topK) * dim : b0;
        long b3 = rows > 3 ? (long)(sorted[rowStart + 3] / topK) * dim : b0;
        long b4 = rows > 4 ? (long)(sorted[rowStart + 4] / topK) * dim : b0;
        long b5 = rows > 5 ? (long)(sorted[rowStart + 5] / topK) * dim : b0;
        long b6 = rows > 6 ? (long)(sorted[rowStart + 6] / topK) * dim : b0;
        long b7 = rows > 7 ? (long)(sorted[rowStart + 7] / topK) * dim : b0;

        var u1 = w1.Words.Cast<Packed16>();
        var u3 = w3.Words.Cast<Packed16>();
        float g0 = 0f, g1 = 0f, g2 = 0f, g3 = 0f, g4 = 0f, g5 = 0f, g6 = 0f, g7 = 0f;
        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f, a4 = 0f, a5 = 0f, a6 = 0f, a7 = 0f;
        for (int u = lane; u < uEnd; u += 32)
        {
            Packed16 p1 = u1[wUnit + u], p3 = u3[wUnit + u];
            UnitScale s1 = w1.ScaleOf(wRow, u), s3 = w3.ScaleOf(wRow, u);
            int k0 = u * unitValues;
            g0 += QuantGemvKernels.DotUnit(w1, p1, s1, x, b0, k0, dim);
            a0 += QuantGemvKernels.DotUnit(w3, p3, s3, x, b0, k0, dim);
            if (rows > 1)
            {
                g1 += QuantGemvKernels.DotUnit(w1, p1, s1, x, b1, k0, dim);
                a1 += QuantGemvKernels.DotUnit(w3, p3, s3, x, b1, k0, dim);
                if (rows > 2)
                {
                    g2 += QuantGemvKernels.DotUnit(w1, p1, s1, x, b2, k0, dim);
                    a2 += QuantGemvKernels.DotUnit(w3, p3, s3, x, b2, k0, dim);
                    if (rows > 3)
                    {
                        g3 += QuantGemvKernels.DotUnit(w1, p1, s1, x, b3, k0, dim);
                        a3 += QuantGemvKernels.DotUnit(w3, p3, s3, x, b3, k0, dim);
                        if (rows > 4)
                        {
                            g4 += QuantGemvKernels.DotUnit(w1, p1, s1, x, b4, k0, dim);
                            a4 += QuantGemvKernels.DotUnit(w3, p3, s3, x, b4, k0, dim);
                            if (rows > 5)
                            {
                                g5 += QuantGemvKernels.DotUnit(w1, p1, s1, x, b5, k0, dim);
                                a5 += QuantGemvKernels.DotUnit(w3, p3, s3, x, b5, k0, dim);
                                if (rows > 6)
                                {
                                    g6 += QuantGemvKernels.DotUnit(w1, p1, s1, x, b6, k0, dim);
                                    a6 += QuantGemvKernels.DotUnit(w3, p3, s3, x, b6, k0, dim);
                                    if (rows > 7)
                                    {
                                        g7 += QuantGemvKernels.DotUnit(w1, p1, s1, x, b7, k0, dim);
                                        a7 += QuantGemvKernels.DotUnit(w3, p3, s3, x, b7, k0, dim);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        // red[warp][j][lane]: j < 8 gate rows, 8..15 up rows; lane r then adds row r's 32 partials in lane order.
        var red = SharedMemory.Allocate<float>(Warps * 2 * Rows * RedLd);
        int s = warp * 2 * Rows * RedLd + lane;
        red[s + 0 * RedLd] = g0; red[s + 1 * RedLd] = g1; red[s + 2 * RedLd] = g2; red[s + 3 * RedLd] = g3;
        red[s + 4 * RedLd] = g4; red[s + 5 * RedLd] = g5; red[s + 6 * RedLd] = g6; red[s + 7 * RedLd] = g7;
        red[s + 8 * RedLd] = a0; red[s + 9 * RedLd] = a1; red[s + 10 * RedLd] = a2; red[s + 11 * RedLd] = a3;
        red[s + 12 * RedLd] = a4; red[s + 13 * RedLd] = a5; red[s + 14 * RedLd] = a6; red[s + 15 * RedLd] = a7;
        Group.Barrier();
        if (lane >= rows || n >= hidden)
            return;
        int gBase = warp * 2 * Rows * RedLd + lane * RedLd;
        int uBase = gBase + Rows * RedLd;
        float g = 0f, up = 0f;
        for (int j = 0; j < 32; j++)
        {
            g += red[gBase + j];
            up += red[uBase + j];
        }

        h[(long)(rowStart + lane) * hidden + n] = glu.UpGate(g, up, wRow);
    }

    [KernelInfo(GroupedGemmVersion.V4PackedGemv, "grid (tiles, ceil(D/8)), group 256 = 8 warps", Entry = "down", WideViews = ["w2.Data:16"],
        BlockSize = GroupedGemmKernels.GroupSize, Summary = "down decode over packed experts: warp per row, 16-byte units")]
    public static void DownV4<TQ>(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, TQ w2, ArrayView<float> y,
        int dim, int hidden, int tileRows, ExpertGlu glu)
        where TQ : struct, IQuantWeights
    {
        int e = tiles[2 * Grid.IdxX];
        if (e < 0)
            return;
        int rowStart = tiles[2 * Grid.IdxX + 1];
        int rows = Math.Min(tileRows, offsets[e + 1] - rowStart);
        int warp = Group.IdxX >> 5, lane = Group.IdxX & 31;
        int n = Grid.IdxY * Warps + warp;
        long wRow = (long)e * dim + n;
        int units = w2.RowWords >> 2;
        long wUnit = Index64.StackedRow(e, dim, n, units);
        int uEnd = n < dim ? units : 0;
        int unitValues = 4 * w2.ValuesPerWord;

        long b0 = (long)rowStart * hidden;
        long b1 = rows > 1 ? b0 + hidden : b0;
        long b2 = rows > 2 ? b0 + 2L * hidden : b0;
        long b3 = rows > 3 ? b0 + 3L * hidden : b0;
        long b4 = rows > 4 ? b0 + 4L * hidden : b0;
        long b5 = rows > 5 ? b0 + 5L * hidden : b0;
        long b6 = rows > 6 ? b0 + 6L * hidden : b0;
        long b7 = rows > 7 ? b0 + 7L * hidden : b0;

        var u2 = w2.Words.Cast<Packed16>();
        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f, a4 = 0f, a5 = 0f, a6 = 0f, a7 = 0f;
        for (int u = lane; u < uEnd; u += 32)
        {
            Packed16 p = u2[wUnit + u];
            UnitScale sc = w2.ScaleOf(wRow, u);
            int k0 = u * unitValues;
            a0 += QuantGemvKernels.DotUnit(w2, p, sc, h, b0, k0, hidden);
            if (rows > 1)
            {
                a1 += QuantGemvKernels.DotUnit(w2, p, sc, h, b1, k0, hidden);
                if (rows > 2)
                {
                    a2 += QuantGemvKernels.DotUnit(w2, p, sc, h, b2, k0, hidden);
                    if (rows > 3)
                    {
                        a3 += QuantGemvKernels.DotUnit(w2, p, sc, h, b3, k0, hidden);
                        if (rows > 4)
                        {
                            a4 += QuantGemvKernels.DotUnit(w2, p, sc, h, b4, k0, hidden);
                            if (rows > 5)
                            {
                                a5 += QuantGemvKernels.DotUnit(w2, p, sc, h, b5, k0, hidden);
                                if (rows > 6)
                                {
                                    a6 += QuantGemvKernels.DotUnit(w2, p, sc, h, b6, k0, hidden);
                                    if (rows > 7)
                                        a7 += QuantGemvKernels.DotUnit(w2, p, sc, h, b7, k0, hidden);
                                }
                            }
                        }
                    }
                }
            }
        }

        var red = SharedMemory.Allocate<float>(Warps * Rows * RedLd);
        int s = warp * Rows * RedLd + lane;
        red[s + 0 * RedLd] = a0; red[s + 1 * RedLd] = a1; red[s + 2 * RedLd] = a2; red[s + 3 * RedLd] = a3;
        red[s + 4 * RedLd] = a4; red[s + 5 * RedLd] = a5; red[s + 6 * RedLd] = a6; red[s + 7 * RedLd] = a7;
        Group.Barrier();
        if (lane >= rows || n >= dim)
            return;
        int rBase = warp * Rows * RedLd + lane * RedLd;
        float acc = 0f;
        for (int j = 0; j < 32; j++)
            acc += red[rBase + j];
        y[(long)(rowStart + lane) * dim + n] = glu.Down(acc, wRow);
    }

    [KernelInfo(ActOrderGatherVersion.V1, "grid (T*K, ceil(D/256)), group 256",
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
/// Launcher of the grouped expert GEMMs for packed experts of one scheme (TQ is Q8Weights, Q4Weights or Fp8Weights):
/// V2 (tiled), V4 (decode) and V6 (tensor cores, QuantGroupedGemmMma.cs). Same contract as <see cref="GroupedGemmKernel{TW}"/>: h [T*K, F] and y [T*K, D] in the
/// permutation's sorted order.
/// </summary>
public sealed class QuantGroupedGemmKernel<TQ>
    where TQ : struct, IQuantWeights
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TQ, TQ, ArrayView<float>, int, int, int, int, ExpertGlu> upGateV2, upGateV4;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, TQ, ArrayView<float>, int, int, int, ExpertGlu> downV2, downV4;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int, int, int> gather;
    private readonly Lazy<QuantGroupedGemmMmaKernel<TQ>> mma; // V6PackedMma (QuantGroupedGemmMma.cs), compiled on first use

    private QuantGroupedGemmKernel(Accelerator a)
    {
        upGateV2 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TQ, TQ, ArrayView<float>, int, int, int, int, ExpertGlu>(GroupedGemmKernels.UpGateV2);
        downV2 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, TQ, ArrayView<float>, int, int, int, ExpertGlu>(GroupedGemmKernels.DownV2);
        upGateV4 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TQ, TQ, ArrayView<float>, int, int, int, int, ExpertGlu>(QuantGroupedGemmKernels.UpGateV4);
        downV4 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, TQ, ArrayView<float>, int, int, int, ExpertGlu>(QuantGroupedGemmKernels.DownV4);
        gather = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int, int, int>(QuantGroupedGemmKernels.GatherExpertInputsV1);
        mma = new(() => new QuantGroupedGemmMmaKernel<TQ>(a));
    }

    public static QuantGroupedGemmKernel<TQ> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>
    /// Pass 1: h [T*K, F] = silu(x w1^T) * (x w3^T) per expert, or glu's activation with its gate/up biases
    /// (Moe/GroupedGemm/ExpertGlu.cs); x [T, D]; w1, w3 packed [E*F, D].
    /// </summary>
    public void LaunchUpGate(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, ArrayView<float> x,
        int tokens, int topK, int dim, int hidden, TQ w1, TQ w3, ArrayView<float> h, ExpertGlu glu = default)
    {
        const string Where = "QuantGroupedGemm.LaunchUpGate";
        int pairs = GroupedGemm.Validate(Where, stream, version, permutation, tokens, topK, dim, hidden, GroupedGemm.PackedVersions);
        Shape("w1", w1, permutation.Experts * (long)hidden, dim);
        Shape("w3", w3, permutation.Experts * (long)hidden, dim);
        GroupedGemm.Need(Where, "x", x.Length, (long)tokens * dim);
        GroupedGemm.Need(Where, "h", h.Length, (long)pairs * hidden);
        glu.Check(Where, permutation.Experts, hidden, dim);
        var p = permutation;
        switch (version)
        {
            case GroupedGemmVersion.V2Tiled:
                upGateV2(stream, GroupedGemm.TileConfig(p, pairs, hidden, GroupedGemmKernels.TileN),
                    x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, w1, w3, h, topK, dim, hidden, p.TileRows, glu);
                break;
            case GroupedGemmVersion.V4PackedGemv:
                QuantLayout.CheckWide(Where, "w1", w1);
                QuantLayout.CheckWide(Where, "w3", w3);
                upGateV4(stream, GroupedGemm.TileConfig(p, pairs, hidden, QuantGroupedGemmKernels.Warps),
                    x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, w1, w3, h, topK, dim, hidden, p.TileRows, glu);
                break;
            case GroupedGemmVersion.V6PackedMma:
                mma.Value.LaunchUpGate(stream, Where, p, pairs, x, topK, dim, hidden, w1, w3, h, glu);
                break;
            default:
                throw new UnreachableException($"{Where}: {version} passed Validate");
        }
    }

    /// <summary>Pass 2: y [T*K, D] = h w2^T per expert (+ glu's down bias b2[e]); h [T*K, F]; w2 packed [E*D, F].</summary>
    public void LaunchDown(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, ArrayView<float> h,
        int tokens, int topK, int dim, int hidden, TQ w2, ArrayView<float> y, ExpertGlu glu = default)
    {
        const string Where = "QuantGroupedGemm.LaunchDown";
        int pairs = GroupedGemm.Validate(Where, stream, version, permutation, tokens, topK, dim, hidden, GroupedGemm.PackedVersions);
        Shape("w2", w2, permutation.Experts * (long)dim, hidden);
        GroupedGemm.Need(Where, "h", h.Length, (long)pairs * hidden);
        GroupedGemm.Need(Where, "y", y.Length, (long)pairs * dim);
        glu.Check(Where, permutation.Experts, hidden, dim);
        var p = permutation;
        switch (version)
        {
            case GroupedGemmVersion.V2Tiled:
                downV2(stream, GroupedGemm.TileConfig(p, pairs, dim, GroupedGemmKernels.TileN), h, p.Offsets.View, p.Tiles.View, w2, y, dim, hidden, p.TileRows, glu);
                break;
            case GroupedGemmVersion.V4PackedGemv:
                QuantLayout.CheckWide(Where, "w2", w2);
                downV4(stream, GroupedGemm.TileConfig(p, pairs, dim, QuantGroupedGemmKernels.Warps), h, p.Offsets.View, p.Tiles.View, w2, y, dim, hidden, p.TileRows, glu);
                break;
            case GroupedGemmVersion.V6PackedMma:
                mma.Value.LaunchDown(stream, Where, p, pairs, h, dim, hidden, w2, y, glu);
                break;
            default:
                throw new UnreachableException($"{Where}: {version} passed Validate");
        }
    }

    /// <summary>
    /// Act-order gather: xs [P, D] = x [T, D] row p / K read through expert e(p)'s column permutation perm [E, D].
    /// The experts step (<see cref="PackedExperts{TQ}"/>) checks the sizes first.
    /// </summary>
    internal void LaunchGather(AcceleratorStream stream, ArrayView<float> x, ArrayView<int> expertIds, ArrayView<int> perm, ArrayView<float> xs,
        int pairs, int topK, int dim, int experts) =>
        gather(stream, new KernelConfig(new Index2D(pairs, (dim + 255) / 256), new Index2D(256, 1)), x, expertIds, perm, xs, pairs, topK, dim, experts);

    private static void Shape(string what, TQ w, long rows, int cols)
    {
        // One layout check per scheme (the generic TQ is one of the three readers; boxing here is host-side only).
        switch (w)
        {
            case Q8Weights q8: QuantLayout.Check("QuantGroupedGemm " + what, q8); break;
            case Q4Weights q4: QuantLayout.Check("QuantGroupedGemm " + what, q4); break;
            case Fp8Weights f8: QuantLayout.Check("QuantGroupedGemm " + what, f8); break;
            case Mxfp4Weights m4: QuantLayout.Check("QuantGroupedGemm " + what, m4); break;
            default: throw new UnreachableException($"QuantGroupedGemm: no layout check for reader {typeof(TQ).Name}");
        }

        if (w.Rows != rows || w.Cols != cols)
            throw new ArgumentException($"QuantGroupedGemm: {what} is packed as [{w.Rows}, {w.Cols}], expected [{rows}, {cols}] (experts stacked)");
        if (w.Words.Length < (long)w.Rows * w.RowWords)
            throw new ArgumentException($"QuantGroupedGemm: {what} words has {w.Words.Length} elements, needs {(long)w.Rows * w.RowWords}");
    }
}

/// <summary>
/// The experts step over packed experts (w1, w3 packed [E*F, D]; w2 packed [E*D, F]) with the grouped GEMM V2 / V4.
/// inputPermutation: empty, or [E, D] for GPTQ act-order w1/w3 (expert e's packed column j is input column
/// perm[e, j]; w1 and w3 of an expert share it): each pair's input row is gathered in its expert's column order first,
/// which needs a workspace made with permutedInput.
/// </summary>
public readonly struct PackedExperts<TQ>(QuantGroupedGemmKernel<TQ> kernel, TQ w1, TQ w3, TQ w2, ArrayView<int> inputPermutation = default,
    ExpertGlu glu = default) : IMoeExperts
    where TQ : struct, IQuantWeights
{
    public string Name => "QuantMoeBlock";

    public GroupedGemmVersion Resolve(GroupedGemmVersion? requested, int tokens, int topK, int experts) =>
        GroupedGemm.Resolve(Name, requested, GroupedGemm.PackedVersions, tokens, topK, experts, packed: true);

    public void Launch(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, MoeWorkspace workspace,
        ArrayView<float> x, ArrayView<int> expertIds, int tokens)
    {
        int k = workspace.TopK, d = workspace.Dim, f = workspace.Hidden;
        if (inputPermutation.Length == 0)
        {
            kernel.LaunchUpGate(stream, version, permutation, x, tokens, k, d, f, w1, w3, workspace.H.View, glu);
        }
        else
        {
            // Act-order: gather each pair's input row in its expert's column order, then run up/gate over the T*K
            // gathered rows as tokens with K = 1 (sorted pair p reads row p).
            long pairs = (long)tokens * k;
            if (inputPermutation.Length < (long)workspace.Experts * d)
                throw new ArgumentException($"{Name}: inputPermutation has {inputPermutation.Length} elements, needs E*D = {(long)workspace.Experts * d}");
            var xs = workspace.PermutedInput
                     ?? throw new ArgumentException($"{Name}: an input permutation needs a MoeWorkspace made with permutedInput: true");
            if (x.Length < (long)tokens * d || expertIds.Length < pairs)
                throw new ArgumentException($"{Name}: x ({x.Length}) needs T*D = {(long)tokens * d}, expertIds ({expertIds.Length}) needs T*K = {pairs}");
            kernel.LaunchGather(stream, x, expertIds, inputPermutation, xs.View, (int)pairs, k, d, workspace.Experts);
            kernel.LaunchUpGate(stream, version, permutation, xs.View, (int)pairs, 1, d, f, w1, w3, workspace.H.View, glu);
        }

        kernel.LaunchDown(stream, version, permutation, workspace.H.View, tokens, k, d, f, w2, workspace.Y.View, glu);
    }
}

/// <summary>The MoE block over packed experts of one scheme: <see cref="MoeBlock"/> with <see cref="PackedExperts{TQ}"/>.</summary>
public sealed class QuantMoeBlockKernels<TQ>
    where TQ : struct, IQuantWeights
{
    private readonly MoeBlock block;
    private readonly QuantGroupedGemmKernel<TQ> gemm;

    private QuantMoeBlockKernels(Accelerator accelerator)
    {
        block = MoeBlock.Create(accelerator);
        gemm = QuantGroupedGemmKernel<TQ>.Create(accelerator);
    }

    public static QuantMoeBlockKernels<TQ> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>See <see cref="MoeBlock.Launch{TExperts}"/> and <see cref="PackedExperts{TQ}"/>; glu: activation and expert biases (ExpertGlu.cs).</summary>
    public void Launch(AcceleratorStream stream, MoeWorkspace workspace, ArrayView<float> x, ArrayView<int> expertIds,
        ArrayView<float> weights, int tokens, TQ w1, TQ w3, TQ w2, ArrayView<float> output,
        ArrayView<float> residual = default, GroupedGemmVersion? version = null, ArrayView<int> inputPermutation = default,
        ExpertGlu glu = default) =>
        block.Launch(stream, workspace, x, expertIds, weights, tokens, new PackedExperts<TQ>(gemm, w1, w3, w2, inputPermutation, glu), output, residual, version);
}
