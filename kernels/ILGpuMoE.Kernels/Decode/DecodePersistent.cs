// Shared pieces of the V2 decode kernels (decode/linear V2, decode/experts V2): persistent groups, more loads in flight
// per lane, lane partials added per warp.
//
// Why (perf/NOTES.md, "Decode at the roofline"): on the H200 the V1 kernels ran 1.4-7x above their bandwidth bound, and
// the time fitted per group, not per byte: about 6.8 us per group before its 16 rows stream. V1's SASS says where it
// goes: the prologue's loops (the norm's sum of squares, then the staging of x and g) load one value per iteration,
// not unrolled, so a group waits for 32 dependent round trips to L2 (~0.2 us each) before its first weight load, with
// nothing in flight; a grid of 3584 such groups (Mixtral's up-gate) pays that in 5.4 waves. V2 keeps the readers
// (RowUnits.cs) and the padded staging layout (DecodeStaging.cs) and changes four things:
//   1. The grid is at most the groups the device holds at once (the launcher's resident groups: SMs x ILGPU's occupancy
//      estimate), and each group loops over row blocks b = group, group + grid, ...: the prologue is paid once per
//      group, not once per 16 rows. When x fits one staged tile (D <= DecodeStaging.TileCols, every family's q/k/v/o,
//      router and up-gate) it is staged once; a longer x restages per block (V1's tile loop), correct but slower.
//   2. The prologue loads each thread's 16 values of x (and g) at once (StageWide): one round trip instead of 32.
//   3. Readers of f32 / 16-bit units keep 4 units of each of the warp's two rows in flight per lane (8 x 16 bytes, 4 KB
//      per warp), twice V1's; the packed readers load the next step's 2 units per row before decoding the current 2
//      (software pipelining, PackedUnits: 8 x 16 bytes per lane at each step's start; unrolling the decode instead
//      costs q4 its occupancy).
//   4. The lanes' partials are added per warp in a small array of their own (DecodeStaging.RowTotals), so row blocks
//      follow each other with no group barrier and xs stays staged.
// The down projection's split of F over groups and its combine are in DecodeExpertsKernel.cs (DownV2).
//
// Shapes: T = 1; D model dim; F expert hidden dim; E experts, K experts per token; G quant group; V vocab.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Decode;

public static class DecodePersistent
{
    /// <summary>The grid of a persistent launch: one group per work block, at most <paramref name="maxGroups"/>.</summary>
    public static int Groups(long blocks, int maxGroups) => (int)Math.Max(1, Math.Min(blocks, Math.Max(1, maxGroups)));

    /// <summary>True when the padded row of w fits one staged tile: x is staged once per group.</summary>
    internal static bool OneTile<TU>(TU w)
        where TU : struct, IRowUnits => (long)w.UnitsPerRow * w.UnitValues <= DecodeStaging.TileCols;

    /// <summary>
    /// The group's prologue: for a row that fits one tile, x (normalised when g is not None) staged by
    /// <see cref="StageWide"/>, and 1 returned; for a longer row nothing is staged (<see cref="Dot"/> restages per
    /// block) and the norm's scale is returned. Every thread of the group calls it.
    /// </summary>
    internal static float Prologue<TU>(TU w, ArrayView<float> x, NormWeights g, float eps, ArrayView<float> xs, ArrayView<float> slots)
        where TU : struct, IRowUnits
    {
        if (OneTile(w))
        {
            StageWide(x, w.Cols, 0, w.UnitsPerRow * w.UnitValues, g, eps, xs, slots);
            return 1f;
        }

        return g.Kind != NormWeights.KindNone ? DecodeStaging.NormScale(x, w.Cols, eps, slots) : 1f;
    }

    /// <summary>
    /// Stages tile columns [c0, c0 + len) of x (len &lt;= TileCols; columns at or past cols as 0) at DecodeStaging.Slot,
    /// then a barrier. Every thread loads its 16 values of x (columns c0 + t + 256 j), and of g with a norm, with
    /// independent loads issued together: one round trip to L2, where V1's NormScale and Stage loops take 16 each, one
    /// after the other (V1's SASS: one LDG per iteration, not unrolled, 32 dependent trips before the first weight
    /// load). With a norm (only for c0 = 0 and a tile holding all cols), the scale is reduced from the registers in
    /// NormScale's order (per thread j = 0..15, then BlockReduce): the same bits. Every thread of the group calls it.
    /// </summary>
    internal static void StageWide(ArrayView<float> x, int cols, int c0, int len, NormWeights g, float eps, ArrayView<float> xs,
        ArrayView<float> slots)
    {
        int t = Group.IdxX;
        int i = c0 + t;
        var x0 = Four.Load(x, cols, i);
        var x1 = Four.Load(x, cols, i + 4 * DecodeStaging.GroupSize);
        var x2 = Four.Load(x, cols, i + 8 * DecodeStaging.GroupSize);
        var x3 = Four.Load(x, cols, i + 12 * DecodeStaging.GroupSize);
        if (g.Kind == NormWeights.KindNone)
        {
            Four.Put(xs, x0, t, len);
            Four.Put(xs, x1, t + 4 * DecodeStaging.GroupSize, len);
            Four.Put(xs, x2, t + 8 * DecodeStaging.GroupSize, len);
            Four.Put(xs, x3, t + 12 * DecodeStaging.GroupSize, len);
        }
        else
        {
            var g0 = Four.Load(g, cols, i);
            var g1 = Four.Load(g, cols, i + 4 * DecodeStaging.GroupSize);
            var g2 = Four.Load(g, cols, i + 8 * DecodeStaging.GroupSize);
            var g3 = Four.Load(g, cols, i + 12 * DecodeStaging.GroupSize);
            float sumSq = x3.SumSq(x2.SumSq(x1.SumSq(x0.SumSq(0f))));
            float scale = 1f / XMath.Sqrt(BlockReduce.Sum(sumSq, slots) / cols + eps);
            Four.Put(xs, x0.Norm(scale, g0), t, len);
            Four.Put(xs, x1.Norm(scale, g1), t + 4 * DecodeStaging.GroupSize, len);
            Four.Put(xs, x2.Norm(scale, g2), t + 8 * DecodeStaging.GroupSize, len);
            Four.Put(xs, x3.Norm(scale, g3), t + 12 * DecodeStaging.GroupSize, len);
        }

        Group.Barrier();
    }

    /// <summary>Four values of one thread, 256 columns apart (StageWide's registers).</summary>
    private readonly struct Four(float a, float b, float c, float d)
    {
        private const int S = DecodeStaging.GroupSize;

        public readonly float A = a;
        public readonly float B = b;
        public readonly float C = c;
        public readonly float D = d;

        public static Four Load(ArrayView<float> x, int n, int i) =>
            new(i < n ? x[i] : 0f, i + S < n ? x[i + S] : 0f, i + 2 * S < n ? x[i + 2 * S] : 0f, i + 3 * S < n ? x[i + 3 * S] : 0f);

        public static Four Load(NormWeights g, int n, int i) =>
            new(i < n ? g.Get(i) : 0f, i + S < n ? g.Get(i + S) : 0f, i + 2 * S < n ? g.Get(i + 2 * S) : 0f, i + 3 * S < n ? g.Get(i + 3 * S) : 0f);

        // NormScale's expression and order: sumSq += v * v, value by value.
        public float SumSq(float acc)
        {
            acc += A * A;
            acc += B * B;
            acc += C * C;
            return acc + D * D;
        }

        // DecodeStaging.Stage's expression: x * scale * g.
        public Four Norm(float scale, Four g) => new(A * scale * g.A, B * scale * g.B, C * scale * g.C, D * scale * g.D);

        // Tile positions p, p + 256, ... below len.
        public static void Put(ArrayView<float> xs, Four v, int p, int len)
        {
            if (p < len)
                xs[DecodeStaging.Slot(p)] = v.A;
            if (p + S < len)
                xs[DecodeStaging.Slot(p + S)] = v.B;
            if (p + 2 * S < len)
                xs[DecodeStaging.Slot(p + 2 * S)] = v.C;
            if (p + 3 * S < len)
                xs[DecodeStaging.Slot(p + 3 * S)] = v.D;
        }
    }

    /// <summary>
    /// This lane's partial dots of row ra of a and row rb of b with x. One tile: from the staged xs, no barrier (warps
    /// may call it any number of times, independently). Longer rows: x restaged tile by tile, which needs every thread
    /// of the group (the block loop's trip count is uniform per group, so it is).
    /// </summary>
    internal static DotPair Dot<TU>(TU a, RowRef ra, TU b, RowRef rb, bool live, ArrayView<float> x, NormWeights g, float scale,
        ArrayView<float> xs)
        where TU : struct, IRowUnits
    {
        int uv = a.UnitValues;
        if (OneTile(a))
            return Units(a, ra, b, rb, xs, 0, live ? a.UnitsPerRow : 0);
        int padded = a.UnitsPerRow * uv;
        float sa = 0f, sb = 0f;
        for (int c0 = 0; c0 < padded; c0 += DecodeStaging.TileCols)
        {
            int len = IntrinsicMath.Min(DecodeStaging.TileCols, padded - c0);
            DecodeStaging.Stage(x, a.Cols, c0, len, g, scale, xs);
            int uBegin = c0 / uv;
            var p = Units(a, ra, b, rb, xs, uBegin, live ? (c0 + len) / uv : uBegin);
            sa += p.A;
            sb += p.B;
            Group.Barrier(); // the next tile overwrites xs
        }

        return new DotPair(sa, sb);
    }

    /// <summary>
    /// Lane l takes units uBegin + l, + 32, ... of the staged tile (tile column (u - uBegin) * uv). Readers of 16-bit and
    /// f32 units (UnitValues &lt;= 8: a unit is a few instructions) issue eight independent 16-byte loads per step (four
    /// units of each row) before the arithmetic that needs them, single units finishing the row. The packed readers (16
    /// or 32 values per unit, 75-200 instructions a unit) take <see cref="PackedUnits"/>. The branch on UnitValues is a
    /// constant of TU: each instance compiles one path.
    /// </summary>
    internal static DotPair Units<TU>(TU a, RowRef ra, TU b, RowRef rb, ArrayView<float> xs, int uBegin, int uEnd)
        where TU : struct, IRowUnits
    {
        int uv = a.UnitValues;
        if (uv > 8)
            return PackedUnits(a, ra, b, rb, xs, uBegin, uEnd);
        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f, b0 = 0f, b1 = 0f, b2 = 0f, b3 = 0f;
        int u = uBegin + Warp.LaneIdx;
        int k = Warp.LaneIdx * uv;
        int step = 32 * uv;
        for (; u + 96 < uEnd; u += 128)
        {
            a0 += a.DotUnit(ra, u, xs, k);
            b0 += b.DotUnit(rb, u, xs, k);
            a1 += a.DotUnit(ra, u + 32, xs, k + step);
            b1 += b.DotUnit(rb, u + 32, xs, k + step);
            a2 += a.DotUnit(ra, u + 64, xs, k + 2 * step);
            b2 += b.DotUnit(rb, u + 64, xs, k + 2 * step);
            a3 += a.DotUnit(ra, u + 96, xs, k + 3 * step);
            b3 += b.DotUnit(rb, u + 96, xs, k + 3 * step);
            k += 4 * step;
        }

        for (; u < uEnd; u += 32)
        {
            a0 += a.DotUnit(ra, u, xs, k);
            b0 += b.DotUnit(rb, u, xs, k);
            k += step;
        }

        return new DotPair((a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3));
    }

    /// <summary>
    /// Units' loop for the packed readers, software pipelined: two units of each row per step, and the next step's four
    /// raw units (words and scales, 20 registers: RowUnits.cs's Load) loaded before the current step's are decoded, so
    /// 8 loads of 16 bytes are in flight per lane at each step's start (4 before 2026-12-05; V2 has not yet run on a
    /// GPU). Unrolling the decode to 8 units per step instead took q4 to 232 registers (one group per SM, no more bytes
    /// in flight per SM); pipelined, ptxas gives q4 96. Prologue: the first step's units (or the lane's single unit).
    /// Loop: the loads of step j + 1, then the decode of step j. Epilogue: a last single unit, loaded by the loop's last
    /// step (or by the prologue). The loop's loads take no branch: a unit past the end reads unit uEnd - 1 instead (every
    /// such lane of the warp the same 16 bytes, one sector), never used; a branch around them costs a BSSY / BSYNC pair
    /// and the address arithmetic per unit. Each accumulator adds the units of the plain loop before it in the same order
    /// (a0 / b0: units u, u + 64, ..., then a last single unit; a1 / b1: u + 32, u + 96, ...), as V1's loop does too: the
    /// same bits (DecodeLinearTests.PackedRowsAtOddUnitCounts checks V2 against V1; the plain loop's a2 + a3 = 0 added
    /// to the result changed only a -0, which every caller adds to a +0 first).
    /// </summary>
    private static DotPair PackedUnits<TU>(TU a, RowRef ra, TU b, RowRef rb, ArrayView<float> xs, int uBegin, int uEnd)
        where TU : struct, IRowUnits
    {
        float a0 = 0f, a1 = 0f, b0 = 0f, b1 = 0f;
        int u = uBegin + Warp.LaneIdx;
        int k = Warp.LaneIdx * a.UnitValues;
        int step = 32 * a.UnitValues;
        RawUnit ca0 = default, cb0 = default, ca1 = default, cb1 = default;
        if (u < uEnd)
        {
            ca0 = a.Load(ra, u);
            cb0 = b.Load(rb, u);
        }

        if (u + 32 < uEnd)
        {
            ca1 = a.Load(ra, u + 32);
            cb1 = b.Load(rb, u + 32);
        }

        int last = uEnd - 1;
        for (; u + 32 < uEnd; u += 64)
        {
            int n0 = IntrinsicMath.Min(u + 64, last), n1 = IntrinsicMath.Min(u + 96, last);
            var na0 = a.Load(ra, n0);
            var nb0 = b.Load(rb, n0);
            var na1 = a.Load(ra, n1);
            var nb1 = b.Load(rb, n1);
            a0 += a.Dot(ra, ca0, xs, k);
            b0 += b.Dot(rb, cb0, xs, k);
            a1 += a.Dot(ra, ca1, xs, k + step);
            b1 += b.Dot(rb, cb1, xs, k + step);
            k += 2 * step;
            ca0 = na0;
            cb0 = nb0;
            ca1 = na1;
            cb1 = nb1;
        }

        if (u < uEnd)
        {
            a0 += a.Dot(ra, ca0, xs, k);
            b0 += b.Dot(rb, cb0, xs, k);
        }

        return new DotPair(a0 + a1, b0 + b1);
    }
}
