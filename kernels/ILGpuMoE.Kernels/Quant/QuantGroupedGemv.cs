// Grouped expert GEMV for decode over quantized experts: the MoE family's V3 shape (one warp per expert weight row,
// up to 8 sorted rows per expert tile, one launch for all experts over the permutation's tile schedule), but reading
// the packed rows as 16-byte units like QuantGemv V1: one ld.v4 per lane per step, one scale lookup per unit, codes
// turned into floats in registers and the scale applied once per unit. The generic V3 (QuantGroupedGemm.cs) reads
// element by element through IWeights.Get, which costs a 64-bit division and a scale load per weight; this is the
// version the decode path should use.
//   V4  up/gate: h[r, n] = silu(x_r . w1[e, n]) * (x_r . w3[e, n]); down: y[r, d] = h_r . w2[e, d].
//       Both passes read every weight byte of a touched expert once per tile of <= 8 rows; partial sums are reduced
//       through shared memory in lane order (deterministic; no shuffles, no atomics).
using ILGPU;
using ILGPU.Algorithms;

namespace ILGpuMoE.Kernels.Quant;

public static class QuantGroupedGemvKernels
{
    public const int Warps = 8;
    public const int Rows = 8;
    private const int RedLd = 33;
    private const string UpLaunch = "grid (tiles, ceil(F/8)), group 256 = 8 warps";
    private const string DownLaunch = "grid (tiles, ceil(D/8)), group 256 = 8 warps";

    [KernelInfo("quant/grouped-gemm", "v4-q8", UpLaunch, WideViews = ["w1.Data:16", "w3.Data:16"], BlockSize = Moe.GroupedGemmKernels.GroupSize, Summary = "MoE up/gate decode, int8 experts: warp per row, 16-byte units, SiLU(gate)*up fused")]
    public static void UpGateQ8(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, Q8Weights w1, Q8Weights w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows) => UpGate(x, sorted, offsets, tiles, w1, w3, h, topK, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v4-q4", UpLaunch, WideViews = ["w1.Data:16", "w3.Data:16"], BlockSize = Moe.GroupedGemmKernels.GroupSize, Summary = "MoE up/gate decode, int4 experts: warp per row, 16-byte units, SiLU(gate)*up fused")]
    public static void UpGateQ4(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, Q4Weights w1, Q4Weights w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows) => UpGate(x, sorted, offsets, tiles, w1, w3, h, topK, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v4-fp8", UpLaunch, WideViews = ["w1.Data:16", "w3.Data:16"], BlockSize = Moe.GroupedGemmKernels.GroupSize, Summary = "MoE up/gate decode, fp8 experts: warp per row, 16-byte units, SiLU(gate)*up fused")]
    public static void UpGateFp8(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, Fp8Weights w1, Fp8Weights w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows) => UpGate(x, sorted, offsets, tiles, w1, w3, h, topK, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v4-q8-down", DownLaunch, WideViews = ["w2.Data:16"], BlockSize = Moe.GroupedGemmKernels.GroupSize, Summary = "MoE down decode, int8 experts: warp per row, 16-byte units")]
    public static void DownQ8(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, Q8Weights w2, ArrayView<float> y, int dim, int hidden, int tileRows) =>
        Down(h, offsets, tiles, w2, y, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v4-q4-down", DownLaunch, WideViews = ["w2.Data:16"], BlockSize = Moe.GroupedGemmKernels.GroupSize, Summary = "MoE down decode, int4 experts: warp per row, 16-byte units")]
    public static void DownQ4(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, Q4Weights w2, ArrayView<float> y, int dim, int hidden, int tileRows) =>
        Down(h, offsets, tiles, w2, y, dim, hidden, tileRows);

    [KernelInfo("quant/grouped-gemm", "v4-fp8-down", DownLaunch, WideViews = ["w2.Data:16"], BlockSize = Moe.GroupedGemmKernels.GroupSize, Summary = "MoE down decode, fp8 experts: warp per row, 16-byte units")]
    public static void DownFp8(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, Fp8Weights w2, ArrayView<float> y, int dim, int hidden, int tileRows) =>
        Down(h, offsets, tiles, w2, y, dim, hidden, tileRows);

    private static float Silu(float g) => g / (1f + XMath.Exp(-g));

    private static void UpGate<TQ>(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, TQ w1, TQ w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows)
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

        h[(long)(rowStart + lane) * hidden + n] = Silu(g) * up;
    }

    private static void Down<TQ>(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, TQ w2, ArrayView<float> y,
        int dim, int hidden, int tileRows)
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
        y[(long)(rowStart + lane) * dim + n] = acc;
    }
}
