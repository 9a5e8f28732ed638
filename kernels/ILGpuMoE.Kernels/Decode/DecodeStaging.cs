// Shared pieces of the T = 1 decode kernels (decode/linear, decode/experts): x staged in shared memory, the optional
// RMSNorm prologue, and the warp loop that dots two weight rows with the staged x, 16 bytes of each row per step.
// Used by every version so far: decode/linear V1 and decode/experts V1 (DecodeLinearKernel.cs, DecodeExpertsKernel.cs).
//
// Shapes: T = 1 token; D model dim; F expert hidden dim; E experts, K experts per token; G quant group; V vocab.
// A kernel here is one pass over its weight rows: every weight byte is read once, x (<= 16 KB) comes from L2.
//
// Layout of xs (the staged input tile): value k of the tile sits at Slot(k) = k + (k >> 5), one padding float after
// every 32 values. Why: in the warp loop lane l reads value v of unit u0 + l, i.e. tile column (u0 + l) * U + v for a
// unit of U values (U = 4 f32, 8 f16/bf16, 16 int8/fp8, 32 int4: units 16 to 128 bytes of x apart). Without padding
// lane l reads word l * U + v + const, in bank (l * U + v) mod 32: lanes l and l + 32 / U share a bank, a U-way
// conflict (32-way for int4: every lane in one bank). With one pad after each 32 values, write l = j + (32 / U) * c
// (j < 32 / U lanes share a 32-value chunk c < U): the slot is j * U + 33 * c + v + const, the bank j * U + c + v +
// const mod 32, and j * U + c takes each value 0..31 exactly once: 32 lanes, 32 banks, for U = 4, 8, 16 and 32 alike
// (DecodeStagingTests checks it). Units start on multiples of U and U divides 32, so a unit never straddles a pad:
// its values are U consecutive slots from Slot(first value).
//
// Tile: at most TileCols = 4096 input columns (16 KB + 512 B of pad) so a block stays under 20 KB of shared memory and
// several blocks fit per SM; a longer input (the down projection's F = 14,336) loops over tiles with a barrier between.
// Slots past the row's columns up to the last unit's end are zero (a weight tail times uninitialised shared memory
// could be NaN * 0).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Decode;

/// <summary>Two per-row results of the warp loop (rows a and b of a warp).</summary>
public readonly struct DotPair(float a, float b)
{
    public readonly float A = a;
    public readonly float B = b;
}

/// <summary>
/// The RMSNorm weight g [D] of a norm prologue in F32, F16 or BF16 (Kind picks the view; the others are empty), or none;
/// decode/linear also takes a target's optional bias in this form (DecodeTarget.Bias).
/// One non-generic struct instead of a second type parameter: the branch on Kind is uniform and runs only while
/// staging (D values per block), and the PTX gate compiles one instance per weight reader instead of three.
/// </summary>
public readonly struct NormWeights : IWeights
{
    public const int KindNone = 0;
    public const int KindF32 = 1;
    public const int KindF16 = 2;
    public const int KindBF16 = 3;

    public readonly ArrayView<float> F32;
    public readonly ArrayView<ILGPU.Half> F16;
    public readonly ArrayView<ushort> BF16;
    public readonly int Kind;

    private NormWeights(ArrayView<float> f32, ArrayView<ILGPU.Half> f16, ArrayView<ushort> bf16, int kind)
    {
        F32 = f32;
        F16 = f16;
        BF16 = bf16;
        Kind = kind;
    }

    /// <summary>No norm: the kernel stages x as it is.</summary>
    public static NormWeights None => default;

    public static NormWeights Of(F32Weights g) => new(g.Data, default, default, KindF32);

    public static NormWeights Of(F16Weights g) => new(default, g.Data, default, KindF16);

    public static NormWeights Of(BF16Weights g) => new(default, default, g.Data, KindBF16);

    public bool IsNone => Kind == KindNone;

    public long Length => Kind == KindF32 ? F32.Length : Kind == KindF16 ? F16.Length : Kind == KindBF16 ? BF16.Length : 0;

    public float Get(long index) =>
        Kind == KindF32 ? F32[index]
        : Kind == KindF16 ? (float)F16[index]
        : Interop.IntAsFloat((uint)BF16[index] << 16);
}

public static class DecodeStaging
{
    /// <summary>Warps per group; each owns <see cref="RowsPerWarp"/> output rows.</summary>
    public const int Warps = 8;

    public const int GroupSize = Warps * 32;

    /// <summary>Two rows per warp: two independent 16-byte load streams per lane, and x read from shared memory once
    /// per unit for both.</summary>
    public const int RowsPerWarp = 2;

    public const int RowsPerGroup = Warps * RowsPerWarp;

    /// <summary>Input columns per staged tile.</summary>
    public const int TileCols = 4096;

    /// <summary>Shared floats of one staged tile (with the pads).</summary>
    public const int TileSlots = TileCols + TileCols / 32;

    /// <summary>Launcher check of a decode kernel's input x [D] and its norm prologue (weights [D], finite eps &gt;= 0).</summary>
    public static void CheckInput(string where, ArrayView<float> x, NormWeights norm, float eps, int dim)
    {
        if (x.Length < dim)
            throw new ArgumentException($"{where}: x has {x.Length} elements, needs D = {dim}", nameof(x));
        if (norm.IsNone)
            return;
        if (norm.Length < dim)
            throw new ArgumentException($"{where}: norm weights have {norm.Length} elements, need D = {dim}", nameof(norm));
        if (!(eps >= 0f) || float.IsInfinity(eps))
            throw new ArgumentException($"{where}: eps must be finite and >= 0, got {eps}", nameof(eps));
    }

    /// <summary>
    /// Throws ArgumentException unless views a and b (of floats) share no byte: a kernel here reads its input in every
    /// group while other groups already write their outputs, so an output over its input would be a race.
    /// </summary>
    public static void RequireDisjoint(string where, string nameA, ArrayView<float> a, string nameB, ArrayView<float> b)
    {
        if (a.Length == 0 || b.Length == 0)
            return;
        long a0 = a.LoadEffectiveAddressAsPtr().ToInt64(), b0 = b.LoadEffectiveAddressAsPtr().ToInt64();
        if (a0 < b0 + b.LengthInBytes && b0 < a0 + a.LengthInBytes)
            throw new ArgumentException($"{where}: {nameA} and {nameB} overlap; the kernel reads {nameA} while it writes {nameB}");
    }

    /// <summary>Shared-memory slot of tile column k (one pad after every 32 values).</summary>
    public static int Slot(int k) => k + (k >> 5);

    /// <summary>The n staged values of the unit whose first tile column is k0 (n divides 32, k0 a multiple of n: the
    /// values are n consecutive slots). A view from the unit's first slot lets each value load use an immediate offset.</summary>
    public static ArrayView<float> UnitSlots(ArrayView<float> xs, int k0, int n) => xs.SubView(Slot(k0), n);

    /// <summary>
    /// 1 / sqrt(mean(x[0..n)^2) + eps) with RmsNormKernel V1's summation order (threads stride n, then BlockReduce):
    /// bit-identical to it at group size 256 (n &gt;= 256), within rounding otherwise. Every thread of the group calls it.
    /// </summary>
    internal static float NormScale(ArrayView<float> x, int n, float eps, ArrayView<float> slots)
    {
        float sumSq = 0f;
        for (int d = Group.IdxX; d < n; d += Group.DimX)
        {
            float v = x[d];
            sumSq += v * v;
        }

        float total = BlockReduce.Sum(sumSq, slots);
        return 1f / XMath.Sqrt(total / n + eps);
    }

    /// <summary>
    /// xs[Slot(i)] = x[c0 + i] (times scale * g[c0 + i] with a norm, RmsNormKernel's expression) for i in [0, len),
    /// zero where c0 + i &gt;= cols; then a barrier. Every thread of the group calls it.
    /// </summary>
    internal static void Stage(ArrayView<float> x, int cols, int c0, int len, NormWeights g, float scale, ArrayView<float> xs)
    {
        for (int i = Group.IdxX; i < len; i += Group.DimX)
        {
            int k = c0 + i;
            float v = 0f;
            if (k < cols)
            {
                v = x[k];
                if (g.Kind != NormWeights.KindNone)
                    v = v * scale * g.Get(k);
            }

            xs[Slot(i)] = v;
        }

        Group.Barrier();
    }

    /// <summary>
    /// Dots row ra of a and row rb of b (same reader type; a and b may be the same matrix) with the staged input,
    /// tile by tile: every thread of the group calls it (it stages and waits at barriers); warps whose rows are past the
    /// end pass live = false and do no loads. Returns this lane's partial sums (linear in the rows: a caller may weight
    /// and add them across calls before <see cref="RowTotals"/>). Input: x [cols], normalised with g/scale unless g is
    /// None. Ends with a barrier, so xs is free for the next call or for RowTotals.
    /// </summary>
    internal static DotPair DotRows<TU>(TU a, RowRef ra, TU b, RowRef rb, bool live, ArrayView<float> x, int cols,
        NormWeights g, float scale, ArrayView<float> xs)
        where TU : struct, IRowUnits
    {
        int uv = a.UnitValues;
        int padded = a.UnitsPerRow * uv;
        float sa = 0f, sb = 0f;
        for (int c0 = 0; c0 < padded; c0 += TileCols)
        {
            int len = IntrinsicMath.Min(TileCols, padded - c0);
            Stage(x, cols, c0, len, g, scale, xs);
            int uBegin = c0 / uv;
            int uEnd = live ? (c0 + len) / uv : uBegin;
            var p = Units(a, ra, b, rb, xs, uBegin, uEnd, uv);
            sa += p.A;
            sb += p.B;
            Group.Barrier(); // the next tile (or the caller's next call) overwrites xs
        }

        return new DotPair(sa, sb);
    }

    /// <summary>
    /// The warp's two row totals from its lanes' partials, in every lane, in lane order (deterministic): the partials go to
    /// the warp's own region of red (V1: xs, free after DotRows' last barrier; V2: a small array of its own, RedSlots),
    /// a warp barrier, then each lane adds the 32 of each row in lane order (same-address reads: a broadcast, no
    /// conflict), and a warp barrier before the region may be written again. Only the warp's lanes take part, so warps
    /// may call it at different times (V2's warps walk their row blocks independently). Why not a shuffle butterfly:
    /// one barrier instead of ten shuffle rounds, and on the CPU accelerator that runs the tests every warp collective
    /// is emulated at the cost of a barrier.
    /// </summary>
    internal static DotPair RowTotals(DotPair lane, ArrayView<float> red)
    {
        int b = Warp.WarpIdx * 2 * RedStride;
        red[b + Warp.LaneIdx] = lane.A;
        red[b + RedStride + Warp.LaneIdx] = lane.B;
        Warp.Barrier();
        float ta = 0f, tb = 0f;
        for (int j = 0; j < 32; j++)
        {
            ta += red[b + j];
            tb += red[b + RedStride + j];
        }

        Warp.Barrier();
        return new DotPair(ta, tb);
    }

    /// <summary>Shared floats of the per-warp RowTotals regions (two rows of 32 partials per warp, padded to 33).</summary>
    public const int RedSlots = Warps * 2 * RedStride;

    private const int RedStride = 33;

    // Lane l takes units uBegin + l, + 32, ... of the tile; each step issues four independent 16-byte loads (two units
    // of each row) before the arithmetic that needs them. Tile column of unit u: (u - uBegin) * uv.
    private static DotPair Units<TU>(TU a, RowRef ra, TU b, RowRef rb, ArrayView<float> xs, int uBegin, int uEnd, int uv)
        where TU : struct, IRowUnits
    {
        float a0 = 0f, a1 = 0f, b0 = 0f, b1 = 0f;
        int u = uBegin + Warp.LaneIdx;
        int k = Warp.LaneIdx * uv;
        for (; u + 32 < uEnd; u += 64)
        {
            int k1 = k + 32 * uv;
            a0 += a.DotUnit(ra, u, xs, k);
            b0 += b.DotUnit(rb, u, xs, k);
            a1 += a.DotUnit(ra, u + 32, xs, k1);
            b1 += b.DotUnit(rb, u + 32, xs, k1);
            k += 64 * uv;
        }

        if (u < uEnd)
        {
            a0 += a.DotUnit(ra, u, xs, k);
            b0 += b.DotUnit(rb, u, xs, k);
        }

        return new DotPair(a0 + a1, b0 + b1);
    }
}
