// Grouped expert GEMM on tensor cores (moe/grouped-gemm V5Mma): the same two passes as GroupedGemm.cs, with BF16 or F16
// experts, mma.sync m16n8k16 and F32 accumulation (kernels/ILGpuMoE.Kernels/TensorCore/Mma.cs: primitives and their
// fragment-exact CPU emulation, so this file's tiling, pipeline and bounds run for real in the CPU tests).
//
//   up-gate: h[r, f] = act(x[tok(r)] . w1[e, f], x[tok(r)] . w3[e, f])   (ExpertGlu's activation and gate/up biases)
//   down:    y[r, d] = h[r] . w2[e, d] (+ ExpertGlu's down bias)
// r: a sorted row (permutation), tok(r) = sorted[r] / K, e its expert. w1, w3 [E, F, D], w2 [E, D, F] (HF [out, in] per
// expert, stacked); x [T, D], h [P, F], y [P, D] in F32. The combine (routing weights) stays MoeCombineKernel's.
//
// Tile (one group of 128 threads = 4 warps, 2 x 2), over the permutation's schedule of 64-row tiles:
//   M = 64 sorted rows (warp rows wm*32..+32: two m16 tiles);
//   N = 64 weight rows: down, 64 outputs (warp columns wn*32..+32); up-gate, 32 f columns of w1 (B rows 0..31) and the
//       same 32 of w3 (rows 32..63), warp wn taking f wn*16..+16 of both: its gate and up accumulators of one f sit in
//       the same registers of the same lane, so SiLU(gate)*up needs no exchange. (64 f of each would give 128 B rows:
//       46 KB of shared for 3 stages and 64 accumulators per lane, for the same FLOPs per shared byte as down's 64 x 64;
//       32 + 32 keeps one tile shape, one main loop and 30 KB for both passes.)
//   K step 32 (two k16 mma steps), 3 stages. Per warp and k16: 2 ldmatrix.x4 of A, 2 of B, 8 mma (32 F32 accumulators);
//   a warp skips the m16 tiles that lie wholly past the tile's rows (ragged tiles: an expert's last, small experts).
// Shared memory (dynamic, 32-bit words; SharedWords): per stage A [64 rows][20 words] then B [64][20]: 16 words of data
// (32 16-bit values) + 4 of pad, so the 8 rows of one ldmatrix phase land on 8 distinct 4-bank groups (row r starts at
// bank 20 r mod 32; RowWord and the bank test); then a 64-entry row table (the A row of each tile row, -1 past the tile).
// Weights: cp.async 16 bytes (8 values) at a time into the stage two k-steps ahead, zero-filled past F/D rows and past
// the input dim (D, F multiples of 8, so a 16-byte chunk is all in or all out). Activations: F32 rows gathered through
// the row table (x through the sorted pairs, h directly), loaded into registers one k-step ahead (two lanes per pair
// of values, a warp on two rows of 32 consecutive floats), rounded to the 16-bit type (IMmaType.Pack, RNE) and stored
// after the mma of the current step; zero past the tile's rows and the input dim. One barrier per k-step.
// Empty schedule slots (expert -1) leave before any barrier; ragged rows and outputs are masked in the epilogue.
// Refused at launch (ArgumentException naming the tensor): D or F not a multiple of 8, a weight view not 16-byte aligned.
// Index arithmetic is 64-bit wherever it scales with E*F*D, P*F or T*D.
//
// Launcher: GroupedGemmMmaKernel<TM> (TM = Bf16Mma or F16Mma); the MoE block's step: TensorCoreExperts<TM> (MoeBlock).
using System.Diagnostics;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.TensorCore;

namespace ILGpuMoE.Kernels.Moe;

public static class GroupedGemmMmaKernels
{
    /// <summary>Threads per group: 4 warps, 2 (rows) x 2 (columns).</summary>
    public const int GroupSize = 128;

    /// <summary>Sorted rows per tile (the permutation's tile height).</summary>
    public const int TileM = 64;

    /// <summary>Weight rows per tile: down outputs, or up-gate's 32 f columns of w1 and of w3.</summary>
    public const int TileN = 64;

    /// <summary>f columns per up-gate group (of each of w1 and w3).</summary>
    public const int UpGateColumns = TileN / 2;

    /// <summary>16-bit input values per k-step.</summary>
    public const int TileK = 32;

    public const int Stages = 3;

    /// <summary>Words per shared row: 16 words of data (TileK values) + 4 of pad.</summary>
    public const int Ld = 20;

    /// <summary>Words per stage: A [TileM][Ld] then B [TileN][Ld].</summary>
    public const int StageWords = (TileM + TileN) * Ld;

    private const int RowTable = Stages * StageWords;

    /// <summary>Dynamic shared words of a launch: the stages, then the row table.</summary>
    public const int SharedWordCount = RowTable + TileM;

    public const int SharedBytes = SharedWordCount * 4;

    /// <summary>The shared word of 16-bit column 8*chunk of tile row row (in a stage's A or B part): the ldmatrix row addresses.</summary>
    public static int RowWord(int row, int chunk) => row * Ld + chunk * 4;

    /// <summary>A warp's 2 x 4 accumulator tiles: [m16 tile i][n8 tile j].</summary>
    private struct WarpAcc
    {
        public Acc4 A00, A01, A02, A03, A10, A11, A12, A13;
    }

    /// <summary>One thread's 8 pairs of activations for the next stage (pair j: row 8 j + tid / 16).</summary>
    private struct APairs
    {
        public float L0, H0, L1, H1, L2, H2, L3, H3, L4, H4, L5, H5, L6, H6, L7, H7;
    }

    // ---------------------------------------------------------------- the kernels

    [KernelInfo(GroupedGemmVersion.V5Mma, "grid (tiles, ceil(F/32)), group 128 = 4 warps, 30976 B dynamic shared", Entry = "up-gate",
        TensorCore = "HMMA", BlockSize = GroupSize, MaxDynamicSharedBytes = SharedBytes,
        Summary = "up/gate on mma.sync m16n8k16: 64 rows x (32 f of w1 + 32 of w3), 3-stage cp.async weights, activation fused")]
    public static void UpGateV5<TM>(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, GlobalWords w1,
        GlobalWords w3, ArrayView<float> h, int topK, int dim, int hidden, int tileRows, ExpertGlu glu)
        where TM : struct, IMmaType
    {
        var tile = GroupedGemmKernels.GroupTile.Read(tiles, offsets, tileRows);
        if (tile.Expert < 0)
            return; // unused schedule slot: the whole group leaves before any barrier
        int e = tile.Expert, rowStart = tile.RowStart, rows = tile.Rows;
        var s = SharedWords.Dynamic();
        int tid = Group.IdxX;
        if (tid < TileM)
            s.View[RowTable + tid] = (uint)(tid < rows ? sorted[rowStart + tid] / topK : -1);
        Group.Barrier();

        int f0 = Grid.IdxY * UpGateColumns;
        long wRow = (long)e * hidden + f0;
        int valid = hidden - f0;
        var acc = MainLoop<TM>(s, x, dim, rows, w1, w3, wRow, wRow, valid, valid, UpGateColumns, UpGateColumns / 2);

        // Gate tile j (f wn*16 + 8 j) pairs with up tile j + 2 (the same f of w3).
        int lane = tid & 31, warp = tid >> 5;
        int r0 = (warp >> 1) * 32 + (lane >> 2);
        int f = f0 + (warp & 1) * 16 + 2 * (lane & 3);
        long bias = (long)e * hidden;
        StoreUpGate(h, glu, acc.A00, acc.A02, rowStart, rows, r0, f, hidden, bias);
        StoreUpGate(h, glu, acc.A01, acc.A03, rowStart, rows, r0, f + 8, hidden, bias);
        StoreUpGate(h, glu, acc.A10, acc.A12, rowStart, rows, r0 + 16, f, hidden, bias);
        StoreUpGate(h, glu, acc.A11, acc.A13, rowStart, rows, r0 + 16, f + 8, hidden, bias);
    }

    [KernelInfo(GroupedGemmVersion.V5Mma, "grid (tiles, ceil(D/64)), group 128 = 4 warps, 30976 B dynamic shared", Entry = "down",
        TensorCore = "HMMA", BlockSize = GroupSize, MaxDynamicSharedBytes = SharedBytes,
        Summary = "down on mma.sync m16n8k16: 64 rows x 64 outputs, 3-stage cp.async weights, h rounded to 16 bits on its way into shared")]
    public static void DownV5<TM>(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, GlobalWords w2, ArrayView<float> y,
        int dim, int hidden, int tileRows, ExpertGlu glu)
        where TM : struct, IMmaType
    {
        var tile = GroupedGemmKernels.GroupTile.Read(tiles, offsets, tileRows);
        if (tile.Expert < 0)
            return; // unused schedule slot: the whole group leaves before any barrier
        int e = tile.Expert, rowStart = tile.RowStart, rows = tile.Rows;
        var s = SharedWords.Dynamic();
        int tid = Group.IdxX;
        if (tid < TileM)
            s.View[RowTable + tid] = (uint)(tid < rows ? rowStart + tid : -1);
        Group.Barrier();

        int d0 = Grid.IdxY * TileN;
        long wRow = (long)e * dim + d0;
        int half = TileN / 2;
        var acc = MainLoop<TM>(s, h, hidden, rows, w2, w2, wRow, wRow + half, dim - d0, dim - d0 - half, TileN / 4, half);

        int lane = tid & 31, warp = tid >> 5;
        int r0 = (warp >> 1) * 32 + (lane >> 2);
        int d = d0 + (warp & 1) * 32 + 2 * (lane & 3);
        long bias = (long)e * dim;
        StoreDown(y, glu, acc.A00, rowStart, rows, r0, d, dim, bias);
        StoreDown(y, glu, acc.A01, rowStart, rows, r0, d + 8, dim, bias);
        StoreDown(y, glu, acc.A02, rowStart, rows, r0, d + 16, dim, bias);
        StoreDown(y, glu, acc.A03, rowStart, rows, r0, d + 24, dim, bias);
        StoreDown(y, glu, acc.A10, rowStart, rows, r0 + 16, d, dim, bias);
        StoreDown(y, glu, acc.A11, rowStart, rows, r0 + 16, d + 8, dim, bias);
        StoreDown(y, glu, acc.A12, rowStart, rows, r0 + 16, d + 16, dim, bias);
        StoreDown(y, glu, acc.A13, rowStart, rows, r0 + 16, d + 24, dim, bias);
    }

    // ---------------------------------------------------------------- the main loop

    /// <summary>
    /// acc = A B^T over the input dim for this warp's 32 x 32 corner. A: F32 rows of <paramref name="a"/> (row stride kDim)
    /// at the row table's indices (the first <paramref name="rows"/> valid). B rows 0..31: <paramref name="wLo"/> rows loRow.. (loValid of them in range), rows
    /// 32..63: <paramref name="wHi"/> rows hiRow.. (hiValid). The warp's n8 tiles j: B rows (j / 2) pairStride + wn
    /// warpStride + 8 (j % 2).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static WarpAcc MainLoop<TM>(SharedWords s, ArrayView<float> a, int kDim, int rows, GlobalWords wLo, GlobalWords wHi, long loRow,
        long hiRow, int loValid, int hiValid, int pairStride, int warpStride)
        where TM : struct, IMmaType
    {
        int tid = Group.IdxX, lane = tid & 31, warp = tid >> 5;
        int wm = warp >> 1, wn = warp & 1;
        int kTiles = (kDim + TileK - 1) / TileK;

        // Weights: this thread copies 16-byte chunk (tid & 3) of B row tid / 4 (from wLo) and of row 32 + tid / 4 (wHi).
        int bRow = tid >> 2, bChunk = tid & 3;
        long rowWords = kDim / 2;
        bool loOk = bRow < loValid, hiOk = bRow < hiValid;
        long loSrc = loOk ? (loRow + bRow) * rowWords + bChunk * 4 : 0;
        long hiSrc = hiOk ? (hiRow + bRow) * rowWords + bChunk * 4 : 0;
        int bDst = TileM * Ld + RowWord(bRow, bChunk);

        // ldmatrix lane addresses (words within a stage, k16 step 0): A rows lane & 15 at 16-bit column 8 (lane >> 4);
        // B rows 8 (lane >> 4) + (lane & 7) at column 8 ((lane >> 3) & 1) of each 16-row pair.
        int aLane = RowWord(wm * 32 + (lane & 15), lane >> 4);
        int bLane = TileM * Ld + RowWord(wn * warpStride + ((lane >> 4) << 3) + (lane & 7), (lane >> 3) & 1);
        int bPair = pairStride * Ld;

        // A warp's m16 tiles past the tile's rows hold zeros only: it skips their ldmatrix and mma (the condition is the
        // same on every lane of the warp, so the warp-collective instructions stay whole). Ragged tiles (an expert's
        // last, or small experts') then cost what their rows need; the epilogue masks the rows anyway.
        bool top = wm * 32 < rows, bottom = wm * 32 + 16 < rows;

        var acc = default(WarpAcc);
        for (int st = 0; st < Stages - 1; st++)
        {
            if (st < kTiles)
            {
                IssueWeights(s, st * StageWords + bDst, wLo, wHi, loSrc, hiSrc, loOk, hiOk, st, bChunk, kDim);
                StoreActivations<TM>(s, st * StageWords, LoadActivations(s, a, kDim, st));
            }

            CpAsync.Commit();
        }

        for (int kt = 0; kt < kTiles; kt++)
        {
            CpAsync.Wait(Stages - 2); // this thread's copies of step kt have landed ...
            Group.Barrier();           // ... and everyone's, and every warp is done with the stage refilled below

            int next = kt + Stages - 1;
            bool more = next < kTiles;
            int nextStage = (next % Stages) * StageWords;
            if (more)
                IssueWeights(s, nextStage + bDst, wLo, wHi, loSrc, hiSrc, loOk, hiOk, next, bChunk, kDim);
            CpAsync.Commit(); // empty near the end: keeps one group per step for the wait count
            var pre = default(APairs);
            if (more)
                pre = LoadActivations(s, a, kDim, next);

            int stage = (kt % Stages) * StageWords;
            for (int kk = 0; kk < 2 && top; kk++)
            {
                int step = stage + kk * 8;
                var a0 = Ldmatrix.X4(s, step + aLane);
                var b0 = Ldmatrix.X4(s, step + bLane);
                var b1 = Ldmatrix.X4(s, step + bLane + bPair);
                acc.A00 = default(TM).Mma(acc.A00, a0, b0.Lo);
                acc.A01 = default(TM).Mma(acc.A01, a0, b0.Hi);
                acc.A02 = default(TM).Mma(acc.A02, a0, b1.Lo);
                acc.A03 = default(TM).Mma(acc.A03, a0, b1.Hi);
                if (bottom)
                {
                    var a1 = Ldmatrix.X4(s, step + aLane + 16 * Ld);
                    acc.A10 = default(TM).Mma(acc.A10, a1, b0.Lo);
                    acc.A11 = default(TM).Mma(acc.A11, a1, b0.Hi);
                    acc.A12 = default(TM).Mma(acc.A12, a1, b1.Lo);
                    acc.A13 = default(TM).Mma(acc.A13, a1, b1.Hi);
                }
            }

            if (more)
                StoreActivations<TM>(s, nextStage, pre);
        }

        return acc;
    }

    /// <summary>cp.async of this thread's two weight chunks of k-step kt (zero-filled past the rows or the input dim).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void IssueWeights(SharedWords s, int dst, GlobalWords wLo, GlobalWords wHi, long loSrc, long hiSrc, bool loOk, bool hiOk,
        int kt, int bChunk, int kDim)
    {
        bool kOk = kt * TileK + bChunk * 8 < kDim;
        long k = kt * (TileK / 2);
        CpAsync.Copy16(s, dst, wLo, loSrc + k, loOk && kOk);
        CpAsync.Copy16(s, dst + UpGateColumns * Ld, wHi, hiSrc + k, hiOk && kOk);
    }

    /// <summary>This thread's 8 value pairs of k-step kt: pair j = row 8 j + tid / 16, values 2 (tid &amp; 15), +1; zero past the input dim or the tile.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static APairs LoadActivations(SharedWords s, ArrayView<float> a, int kDim, int kt)
    {
        int tid = Group.IdxX;
        int k = kt * TileK + 2 * (tid & 15);
        int r = tid >> 4;
        var p = default(APairs);
        (p.L0, p.H0) = Pair(s, a, kDim, r, k);
        (p.L1, p.H1) = Pair(s, a, kDim, r + 8, k);
        (p.L2, p.H2) = Pair(s, a, kDim, r + 16, k);
        (p.L3, p.H3) = Pair(s, a, kDim, r + 24, k);
        (p.L4, p.H4) = Pair(s, a, kDim, r + 32, k);
        (p.L5, p.H5) = Pair(s, a, kDim, r + 40, k);
        (p.L6, p.H6) = Pair(s, a, kDim, r + 48, k);
        (p.L7, p.H7) = Pair(s, a, kDim, r + 56, k);
        return p;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (float, float) Pair(SharedWords s, ArrayView<float> a, int kDim, int row, int k)
    {
        int src = (int)s.View[RowTable + row];
        bool ok = src >= 0 && k < kDim;
        // Loads go through a clamped index so no speculated load can leave the buffer (kDim is even: k + 1 < kDim too).
        long i = ok ? (long)src * kDim + k : 0;
        float lo = a[i], hi = a[i + 1];
        return ok ? (lo, hi) : (0f, 0f);
    }

    /// <summary>The pairs of <see cref="LoadActivations"/>, rounded to 16 bits, into a stage's A rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreActivations<TM>(SharedWords s, int stage, APairs p)
        where TM : struct, IMmaType
    {
        int tid = Group.IdxX;
        int w = stage + (tid >> 4) * Ld + (tid & 15);
        var tm = default(TM);
        s.View[w] = tm.Pack(p.L0, p.H0);
        s.View[w + 8 * Ld] = tm.Pack(p.L1, p.H1);
        s.View[w + 16 * Ld] = tm.Pack(p.L2, p.H2);
        s.View[w + 24 * Ld] = tm.Pack(p.L3, p.H3);
        s.View[w + 32 * Ld] = tm.Pack(p.L4, p.H4);
        s.View[w + 40 * Ld] = tm.Pack(p.L5, p.H5);
        s.View[w + 48 * Ld] = tm.Pack(p.L6, p.H6);
        s.View[w + 56 * Ld] = tm.Pack(p.L7, p.H7);
    }

    // ---------------------------------------------------------------- epilogues

    /// <summary>h at tile rows r, r + 8 and columns f, f + 1 from a lane's gate and up accumulators (f &lt; F implies f + 1 &lt; F: F % 8 == 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreUpGate(ArrayView<float> h, ExpertGlu glu, Acc4 g, Acc4 u, int rowStart, int rows, int r, int f, int hidden, long bias)
    {
        if (f >= hidden)
            return;
        if (r < rows)
        {
            long o = (long)(rowStart + r) * hidden + f;
            h[o] = glu.UpGate(g.C0, u.C0, bias + f);
            h[o + 1] = glu.UpGate(g.C1, u.C1, bias + f + 1);
        }

        if (r + 8 < rows)
        {
            long o = (long)(rowStart + r + 8) * hidden + f;
            h[o] = glu.UpGate(g.C2, u.C2, bias + f);
            h[o + 1] = glu.UpGate(g.C3, u.C3, bias + f + 1);
        }
    }

    /// <summary>y at tile rows r, r + 8 and columns d, d + 1 (+ the down bias).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreDown(ArrayView<float> y, ExpertGlu glu, Acc4 c, int rowStart, int rows, int r, int d, int dim, long bias)
    {
        if (d >= dim)
            return;
        if (r < rows)
        {
            long o = (long)(rowStart + r) * dim + d;
            y[o] = glu.Down(c.C0, bias + d);
            y[o + 1] = glu.Down(c.C1, bias + d + 1);
        }

        if (r + 8 < rows)
        {
            long o = (long)(rowStart + r + 8) * dim + d;
            y[o] = glu.Down(c.C2, bias + d);
            y[o + 1] = glu.Down(c.C3, bias + d + 1);
        }
    }
}

/// <summary>
/// Launcher of the tensor-core grouped expert GEMM (V5Mma) for one 16-bit weight type: TM = Bf16Mma (BF16 experts) or
/// F16Mma (F16 experts). Weights are the raw 16-bit values (BF16Weights.Data, or F16Weights.Data.Cast&lt;ushort&gt;()),
/// stacked per kind: w1, w3 [E, F, D], w2 [E, D, F]; each view 16-byte aligned, D and F multiples of 8.
/// </summary>
public sealed class GroupedGemmMmaKernel<TM>
    where TM : struct, IMmaType
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, GlobalWords, GlobalWords, ArrayView<float>, int, int, int, int, ExpertGlu> upGate;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, GlobalWords, ArrayView<float>, int, int, int, ExpertGlu> down;

    private GroupedGemmMmaKernel(Accelerator a)
    {
        upGate = a.LoadTensorCore<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, GlobalWords, GlobalWords, ArrayView<float>, int, int, int, int, ExpertGlu>(
            GroupedGemmMmaKernels.UpGateV5<TM>, GroupedGemmMmaKernels.SharedWordCount * 4);
        down = a.LoadTensorCore<ArrayView<float>, ArrayView<int>, ArrayView<int>, GlobalWords, ArrayView<float>, int, int, int, ExpertGlu>(
            GroupedGemmMmaKernels.DownV5<TM>, GroupedGemmMmaKernels.SharedWordCount * 4);
    }

    public static GroupedGemmMmaKernel<TM> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>
    /// Pass 1: h [T*K, F] (sorted order; the first offsets[E] rows are written) = act(x w1^T, x w3^T) per expert with
    /// glu's activation and gate/up biases, x rounded to the weights' 16-bit type. x [T, D]; w1, w3 [E*F*D] values.
    /// </summary>
    public void LaunchUpGate(AcceleratorStream stream, MoePermutation permutation, ArrayView<float> x, int tokens, int topK, int dim, int hidden,
        ArrayView<ushort> w1, ArrayView<ushort> w3, ArrayView<float> h, ExpertGlu glu = default)
    {
        const string Where = "GroupedGemm.LaunchUpGate (V5Mma)";
        int pairs = GroupedGemm.Validate(Where, stream, GroupedGemmVersion.V5Mma, permutation, tokens, topK, dim, hidden, GroupedGemm.MmaVersions);
        CheckShape(Where, dim, hidden);
        GroupedGemm.Need(Where, "x", x.Length, (long)tokens * dim);
        GroupedGemm.Need(Where, "w1", w1.Length, (long)permutation.Experts * hidden * dim);
        GroupedGemm.Need(Where, "w3", w3.Length, (long)permutation.Experts * hidden * dim);
        GroupedGemm.Need(Where, "h", h.Length, (long)pairs * hidden);
        glu.Check(Where, permutation.Experts, hidden, dim);
        var g1 = Words(Where, "w1", w1);
        var g3 = Words(Where, "w3", w3);
        var p = permutation;
        upGate(stream, Config(p, pairs, hidden, GroupedGemmMmaKernels.UpGateColumns), x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, g1, g3, h,
            topK, dim, hidden, p.TileRows, glu);
    }

    /// <summary>Pass 2: y [T*K, D] (sorted order) = h w2^T per expert (+ glu's down bias), h rounded to the 16-bit type. h [T*K, F]; w2 [E*D*F] values.</summary>
    public void LaunchDown(AcceleratorStream stream, MoePermutation permutation, ArrayView<float> h, int tokens, int topK, int dim, int hidden,
        ArrayView<ushort> w2, ArrayView<float> y, ExpertGlu glu = default)
    {
        const string Where = "GroupedGemm.LaunchDown (V5Mma)";
        int pairs = GroupedGemm.Validate(Where, stream, GroupedGemmVersion.V5Mma, permutation, tokens, topK, dim, hidden, GroupedGemm.MmaVersions);
        CheckShape(Where, dim, hidden);
        GroupedGemm.Need(Where, "h", h.Length, (long)pairs * hidden);
        GroupedGemm.Need(Where, "w2", w2.Length, (long)permutation.Experts * dim * hidden);
        GroupedGemm.Need(Where, "y", y.Length, (long)pairs * dim);
        glu.Check(Where, permutation.Experts, hidden, dim);
        var g2 = Words(Where, "w2", w2);
        var p = permutation;
        down(stream, Config(p, pairs, dim, GroupedGemmMmaKernels.TileN), h, p.Offsets.View, p.Tiles.View, g2, y, dim, hidden, p.TileRows, glu);
    }

    /// <summary>Whether V5Mma takes these shapes: D and F multiples of 8 (16-byte weight chunks that are all in or all out).</summary>
    public static bool Supports(int dim, int hidden) => dim > 0 && hidden > 0 && dim % 8 == 0 && hidden % 8 == 0;

    private static void CheckShape(string where, int dim, int hidden)
    {
        if (!Supports(dim, hidden))
            throw new ArgumentException($"{where}: dim ({dim}) and hidden ({hidden}) must be multiples of 8 for the tensor-core kernels");
    }

    /// <summary>The 16-bit view as 32-bit words with its device address; refused unless 16-byte aligned (cp.async).</summary>
    private static GlobalWords Words(string where, string name, ArrayView<ushort> w)
    {
        if (!Aligned(w) || w.Length % 2 != 0)
            throw new ArgumentException($"{where}: {name} must start on a 16-byte boundary for cp.async (address 0x{(w.Length > 0 ? (ulong)w.LoadEffectiveAddressAsPtr() : 0):x})");
        return GlobalWords.Of(w.Cast<uint>());
    }

    /// <summary>Whether a 16-bit weight view starts on a 16-byte boundary (cp.async), checked on the 16-bit view itself:
    /// its cast to uint words would drop a leading half word and look aligned. The runtime asks before it picks V5Mma.</summary>
    public static bool Aligned(ArrayView<ushort> w) => w.Length > 0 && (ulong)w.LoadEffectiveAddressAsPtr() % 16 == 0;

    private static KernelConfig Config(MoePermutation p, int pairs, int n, int outputsPerGroup) =>
        new(new Index2D(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), (n + outputsPerGroup - 1) / outputsPerGroup),
            new Index2D(GroupedGemmMmaKernels.GroupSize, 1), SharedMemoryConfig.RequestDynamic<uint>(GroupedGemmMmaKernels.SharedWordCount));
}

/// <summary>
/// The experts step of the MoE block on tensor cores (V5Mma) for 16-bit experts: TM = Bf16Mma with BF16 weights or F16Mma
/// with F16 weights, as raw 16-bit views (use <see cref="TensorCoreExperts.Bf16"/> / <see cref="TensorCoreExperts.F16"/>).
/// It runs V5Mma only (a request for any other version is refused): the caller picks this step where the tensor-core
/// kernels apply (<see cref="GroupedGemmMmaKernel{TM}.Supports"/>, 16-byte aligned weights) and FloatExperts elsewhere.
/// </summary>
public readonly struct TensorCoreExperts<TM>(GroupedGemmMmaKernel<TM> kernel, ArrayView<ushort> w1, ArrayView<ushort> w3, ArrayView<ushort> w2,
    ExpertGlu glu = default) : IMoeExperts
    where TM : struct, IMmaType
{
    public string Name => "MoeBlock";

    public GroupedGemmVersion Resolve(GroupedGemmVersion? requested, int tokens, int topK, int experts) =>
        GroupedGemm.Resolve(Name, requested ?? GroupedGemmVersion.V5Mma, GroupedGemm.MmaVersions, tokens, topK, experts, packed: false);

    public void Launch(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, MoeWorkspace workspace,
        ArrayView<float> x, ArrayView<int> expertIds, int tokens)
    {
        if (version != GroupedGemmVersion.V5Mma)
            throw new UnreachableException($"{Name}: {version} passed Resolve");
        int k = workspace.TopK, d = workspace.Dim, f = workspace.Hidden;
        kernel.LaunchUpGate(stream, permutation, x, tokens, k, d, f, w1, w3, workspace.H.View, glu);
        kernel.LaunchDown(stream, permutation, workspace.H.View, tokens, k, d, f, w2, workspace.Y.View, glu);
    }
}

/// <summary>Builds <see cref="TensorCoreExperts{TM}"/> from the runtime's weight readers.</summary>
public static class TensorCoreExperts
{
    public static TensorCoreExperts<Bf16Mma> Bf16(GroupedGemmMmaKernel<Bf16Mma> kernel, BF16Weights w1, BF16Weights w3, BF16Weights w2, ExpertGlu glu = default) =>
        new(kernel, w1.Data, w3.Data, w2.Data, glu);

    public static TensorCoreExperts<F16Mma> F16(GroupedGemmMmaKernel<F16Mma> kernel, F16Weights w1, F16Weights w3, F16Weights w2, ExpertGlu glu = default) =>
        new(kernel, w1.Data.Cast<ushort>(), w3.Data.Cast<ushort>(), w2.Data.Cast<ushort>(), glu);
}
