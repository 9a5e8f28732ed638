// Grouped expert GEMM over packed (quantized) experts on the tensor cores: moe/grouped-gemm version V6PackedMma, the
// prefill form of QuantGroupedGemm.cs (V2 tiled, V4 decode) with mma.sync m16n8k16 (TensorCore/Mma.cs).
//
// Shapes: T tokens, K experts per token, P = T*K sorted pairs, E experts, D model dim, F expert hidden. Up-gate:
// h [P, F] = act(x w1^T, x w3^T) per expert (ExpertGlu's epilogue), x [T, D], w1, w3 packed [E*F, D]; down:
// y [P, D] = h w2^T (+ b2), w2 packed [E*D, F]. Rows are the permutation's sorted pairs, tiled by its schedule
// (tile height TileM = 64: GroupedGemm.TileRows(V6PackedMma)); an expert without rows owns no tile.
//
// One group of 128 threads (4 warps) computes a 64 x 64 tile C = A B^T: A = 64 activation rows (x through the sorted
// pairs, or h), B = 64 packed weight rows (down: 64 rows of w2 = 64 outputs; up-gate: 32 rows of w1 then the same 32
// rows of w3 = 32 outputs, so gate and up of an output meet in the epilogue). Warp w owns B rows 16w..16w+15 (two
// 8-wide n tiles) against all 64 A rows (four 16-row m tiles): every weight value is decoded exactly once per group,
// by the lane whose B fragment holds it (decode, not the mma, is the cost of a quantized tile), and each decoded
// fragment feeds 4 mmas. K steps of TileK = 32:
//   B  packed words global -> shared by cp.async, 16 bytes at a time (a packed row is whole 16-byte units), Stages = 3
//      deep; shared rows of 4 words (int4: 32 nibbles) or 12 (bytes: 8 words + 4 of padding) so the fragment reads
//      are free of bank conflicts (BWord; QuantGroupedGemmMmaTests checks every read of a warp).
//   A  F32 activations, gathered by row, loaded into registers one step ahead and rounded to BF16 (RNE, cvt.rn.bf16x2)
//      into a double-buffered shared tile of rows padded to 20 words (ldmatrix.x4 without conflicts).
//   Each lane reads from shared the packed words of its B fragments (R0: k = 2t, 2t+1; R1: k = 2t+8, 2t+9 of column g)
//   and decodes them in registers with the reader's Code: q - z (Q4), q (Q8), e4m3 (FP8), 2 e2m1 (MXFP4), each an
//   exact F32 whose low 16 bits are zero, so its BF16 is the top half (one shift or mask per value, no rounding).
// Scales stay out of the mma, applied in F32: the mma accumulates a partial sum over one scale block along K, which is
// folded into the total as total += partial * scale(column, block) every FoldSteps K steps and at the end:
//   Q8     one scale per row: folded once, at the end.
//   Q4     per group of G (a multiple of 32): every G / 32 steps. GPTQ act-order experts run too: the experts step
//          gathers each pair's input row in its expert's column order first (QuantGroupedGemm.cs), a plain GEMM here.
//   FP8    per block of BlockK (128 for DeepSeek-V3 / FP8 Mixtral): every BlockK / 32 steps; a BlockK that is no multiple
//          of 32 (and narrower than K) is refused, since a K step would straddle two scales.
//   MXFP4  per 32 values: every step.
// So the only rounding besides F32 accumulation is the activations' (x and h to BF16): the oracle on the dequantized
// weights with activations rounded the same way (src/ILGpuMoE.Reference/RefGroupedExperts.cs, RefRoundTo.Bf16) matches
// to ~1e-5.
// Every scheme uses the BF16 mma (Bf16Mma): all its weight codes are exact in BF16 (int8 needs 8 significant bits,
// int4 - zero 5, E4M3 4 bits and exponents 2^-9..2^8, 2 E2M1 <= 12) as they are in F16, but the activations must be
// rounded to one of the two and BF16 keeps F32's range: hidden states and h reach thousands in real models and F16
// overflows at 65504 (F16 would round them 8x finer, a choice to revisit per model if accuracy asks for it).
// int8 through IMMA would need int8 activations (a second quantization): not done.
//
// Per K step a group moves 64 x 32 packed values (1 KB int4, 2 KB int8/FP8) by cp.async and 64 x 32 activations,
// and runs 64 mmas (16 per warp); a lane decodes 16 values (2 per mma it issues). Shared memory: 64 row indices +
// 2 A buffers (2 x 64 x 20 words) + 3 B stages (3 x 64 x 4 or 12 words), the epilogue's 64 x 68 F32 tile reusing
// them: 17.7 KB (int4) or 19.7 KB (bytes) of dynamic shared memory, under 48 KB. One barrier per K step.
// Launcher: QuantGroupedGemmKernel<TQ> (QuantGroupedGemm.cs) dispatches GroupedGemmVersion.V6PackedMma here.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.TensorCore;

namespace ILGpuMoE.Kernels.Quant;

/// <summary>The integer arguments of one V6PackedMma launch (one struct: LoadCounted / LoadTensorCore take at most 14 parameters).</summary>
public readonly struct MmaPassShape(int topK, int inDim, int outDim, int tileRows, int foldSteps)
{
    /// <summary>K of the up-gate pass (x row = sorted pair / K); 1 for down (h rows are the sorted rows).</summary>
    public readonly int TopK = topK;

    /// <summary>The reduction dim: D (up-gate) or F (down).</summary>
    public readonly int InDim = inDim;

    /// <summary>Outputs per row: F (up-gate) or D (down).</summary>
    public readonly int OutDim = outDim;

    public readonly int TileRows = tileRows;

    /// <summary>K steps per scale block (see the file header); int.MaxValue: one block over the whole row.</summary>
    public readonly int FoldSteps = foldSteps;
}

public static class QuantGroupedGemmMmaKernels
{
    /// <summary>Rows per tile (the schedule's tile height), weight rows per group, K step, cp.async stages, threads.</summary>
    public const int TileM = 64;
    public const int TileN = 64;
    public const int TileK = 32;
    public const int Stages = 3;
    public const int Threads = 128;

    /// <summary>Words per shared A row: 16 words of BF16 pairs + 4 of padding (ldmatrix phases hit 8 distinct 4-bank groups).</summary>
    public const int ALd = 20;

    /// <summary>Floats per row of the epilogue's C tile.</summary>
    public const int CLd = TileN + 4;

    private const int RowsOff = 0;
    private const int AOff = RowsOff + TileM;
    private const int BOff = AOff + 2 * TileM * ALd;

    /// <summary>Words per shared B row: the 4 words of 32 nibbles, or 8 words of 32 bytes padded to 12.</summary>
    public static int BLd(int valuesPerWord) => valuesPerWord == 8 ? 4 : 12;

    /// <summary>Dynamic shared memory of a launch, in 32-bit words.</summary>
    public static int SharedWordCount(int valuesPerWord) => Math.Max(BOff + Stages * TileN * BLd(valuesPerWord), AOff + TileM * CLd);

    /// <summary>Most dynamic shared bytes (the byte schemes).</summary>
    public const int MaxSharedBytes = 4 * (BOff + Stages * TileN * 12);

    /// <summary>
    /// The shared word a lane reads for B fragment register r (0: k = 2t, 2t+1; 1: k = 2t+8, 2t+9) of k16 half kk of
    /// B row `row` in a stage starting at `stage`; the pair's values are at bits <see cref="BShift"/> of it.
    /// </summary>
    public static int BWord(int stage, int valuesPerWord, int row, int kk, int r, int t) =>
        stage + row * BLd(valuesPerWord) + ((16 * kk + 8 * r + 2 * t) >> (valuesPerWord == 8 ? 3 : 2));

    /// <summary>Bit offset of value k = 2t (and 2t+8, the same) in its word: 8t (nibbles) or 16 (t &amp; 1) (bytes).</summary>
    public static int BShift(int valuesPerWord, int t) => valuesPerWord == 8 ? 8 * t : 16 * (t & 1);

    /// <summary>The shared word lane supplies to ldmatrix.x4 for the A fragment of m tile i, k16 half kk (buffer at a).</summary>
    public static int AFragWord(int a, int i, int kk, int lane) => a + (16 * i + (lane & 15)) * ALd + 8 * kk + 4 * (lane >> 4);

    /// <summary>The A row and pair (k = 2 pair, 2 pair + 1) that thread (warp, lane) loads at slot j (0..7) of a step.</summary>
    public static int ARow(int warp, int lane, int j) => 16 * warp + 2 * j + (lane >> 4);

    [KernelInfo(GroupedGemmVersion.V6PackedMma, "grid (tiles, ceil(F/32)), group 128 = 4 warps, dynamic shared", Entry = "up-gate",
        BlockSize = Threads, MaxDynamicSharedBytes = MaxSharedBytes, TensorCore = "HMMA",
        Summary = "up/gate on the tensor cores: packed w1/w3 rows by cp.async, decoded to BF16 in registers, mma.sync, scales folded in F32, act fused")]
    public static void UpGateV6<TQ>(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, TQ w1, TQ w3,
        GlobalWords g1, GlobalWords g3, ArrayView<float> h, MmaPassShape shape, ExpertGlu glu)
        where TQ : struct, IQuantWeights
    {
        int e = tiles[2 * Grid.IdxX];
        if (e < 0)
            return; // unused schedule slot: the whole group leaves before any barrier
        int rowStart = tiles[2 * Grid.IdxX + 1];
        int rows = Math.Min(shape.TileRows, offsets[e + 1] - rowStart);
        int hidden = shape.OutDim;
        int n0 = Grid.IdxY * (TileN / 2);
        var s = SharedWords.Dynamic();
        int tid = Group.IdxX;
        if (tid < TileM)
            s.View[RowsOff + tid] = (uint)(tid < rows ? sorted[rowStart + tid] / shape.TopK : -1);
        MainLoop(s, x, shape.InDim, rows, w1, w3, g1, g3, TileN / 2, (long)e * hidden + n0, hidden - n0, shape.FoldSteps);

        for (int i = tid; i < TileM * (TileN / 2); i += Threads)
        {
            int r = i >> 5, c = i & 31;
            if (r < rows && n0 + c < hidden)
            {
                float gate = Interop.IntAsFloat(s.View[AOff + r * CLd + c]);
                float up = Interop.IntAsFloat(s.View[AOff + r * CLd + c + TileN / 2]);
                h[(long)(rowStart + r) * hidden + n0 + c] = glu.UpGate(gate, up, (long)e * hidden + n0 + c);
            }
        }
    }

    [KernelInfo(GroupedGemmVersion.V6PackedMma, "grid (tiles, ceil(D/64)), group 128 = 4 warps, dynamic shared", Entry = "down",
        BlockSize = Threads, MaxDynamicSharedBytes = MaxSharedBytes, TensorCore = "HMMA",
        Summary = "down on the tensor cores: packed w2 rows by cp.async, decoded to BF16 in registers, mma.sync, scales folded in F32")]
    public static void DownV6<TQ>(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, TQ w2, GlobalWords g2, ArrayView<float> y,
        MmaPassShape shape, ExpertGlu glu)
        where TQ : struct, IQuantWeights
    {
        int e = tiles[2 * Grid.IdxX];
        if (e < 0)
            return;
        int rowStart = tiles[2 * Grid.IdxX + 1];
        int rows = Math.Min(shape.TileRows, offsets[e + 1] - rowStart);
        int dim = shape.OutDim;
        int n0 = Grid.IdxY * TileN;
        var s = SharedWords.Dynamic();
        int tid = Group.IdxX;
        if (tid < TileM)
            s.View[RowsOff + tid] = (uint)(tid < rows ? rowStart + tid : -1);
        MainLoop(s, h, shape.InDim, rows, w2, w2, g2, g2, TileN, (long)e * dim + n0, dim - n0, shape.FoldSteps);

        for (int i = tid; i < TileM * TileN; i += Threads)
        {
            int r = i >> 6, c = i & 63;
            if (r < rows && n0 + c < dim)
                y[(long)(rowStart + r) * dim + n0 + c] = glu.Down(Interop.IntAsFloat(s.View[AOff + r * CLd + c]), (long)e * dim + n0 + c);
        }
    }

    /// <summary>
    /// C [64, 64] = A B^T into shared (word AOff, rows of CLd floats), then a barrier. A: rows a[src * kDim + k] with src
    /// from the shared row indices (-1 = a zero row: every row at or past `rows`), k &lt; kDim. B row j (&lt; 64) is row rowBase + j of wLo for
    /// j &lt; split, else row rowBase + j - split of wHi; rows at or past nLimit (in either half) read as zeros.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MainLoop<TQ>(SharedWords s, ArrayView<float> a, int kDim, int rows, TQ wLo, TQ wHi, GlobalWords gLo, GlobalWords gHi,
        int split, long rowBase, int nLimit, int foldSteps)
        where TQ : struct, IQuantWeights
    {
        int tid = Group.IdxX, warp = tid >> 5, lane = tid & 31, t = lane & 3, g = lane >> 2;
        int vpw = wLo.ValuesPerWord;
        int bLd = BLd(vpw);
        int unitsPerStep = vpw == 8 ? 1 : 2; // 16-byte units of a row per K step (32 nibbles or 32 bytes)
        int unitsPerRow = wLo.RowWords >> 2;
        int steps = (kDim + TileK - 1) / TileK;

        // This thread's cp.async: one 16-byte unit of B row cRow per step (nibbles: threads 0..63 only).
        int cRow = unitsPerStep == 1 ? tid : tid >> 1;
        int cUnit = unitsPerStep == 1 ? 0 : tid & 1;
        bool cHi = cRow >= split;
        int cLocal = cHi ? cRow - split : cRow;
        bool cRowOk = cRow < TileN && cLocal < nLimit;
        long cSrc = cRowOk ? (rowBase + cLocal) * wLo.RowWords + 4 * cUnit : 0;
        var cFrom = cHi ? gHi : gLo;
        int cDst = BOff + cRow * bLd + 4 * cUnit;

        // This warp's 16 B rows lie in one matrix (split is 32 or 64): its reader, and the rows whose scales it needs,
        // clamped into the matrix (a row past nLimit was zero-filled; its outputs are never stored).
        var w = 16 * warp >= split ? wHi : wLo;
        int local = 16 * warp >= split ? 16 * warp - split : 16 * warp;
        long dRow0 = rowBase + Clamp(local + g, nLimit), dRow1 = rowBase + Clamp(local + 8 + g, nLimit);
        long sRow0 = rowBase + Clamp(local + 2 * t, nLimit), sRow1 = rowBase + Clamp(local + 2 * t + 1, nLimit);
        long sRow2 = rowBase + Clamp(local + 8 + 2 * t, nLimit), sRow3 = rowBase + Clamp(local + 9 + 2 * t, nLimit);
        int shift = BShift(vpw, t);
        // Warp-uniform skips: m tiles wholly past the tile's rows (zero A rows) and a warp whose 16 B rows are all past
        // nLimit (zero B rows) would only add zeros. Few rows per expert (decode-like prefill) then costs 1/4 of the mmas.
        bool warpLive = local < nLimit;
        int mTiles = (rows + 15) >> 4;
        // A rows 16 warp..16 warp + 15 are this warp's to load (ARow) and m tile `warp`'s: past the rows, neither happens.
        bool aLive = warp < mTiles;

        Group.Barrier(); // the row indices
        var ar = default(ARegs);
        if (aLive)
        {
            ar = LoadA(s, a, kDim, 0, warp, lane);
            StoreA(s, AOff, ar, warp, lane);
        }

        IssueB(s, cFrom, cSrc, cDst, 0, cRowOk, unitsPerStep, cUnit, unitsPerRow, cRow < TileN);
        CpAsync.Commit();
        IssueB(s, cFrom, cSrc, cDst + TileN * bLd, 1, cRowOk && steps > 1, unitsPerStep, cUnit, unitsPerRow, cRow < TileN);
        CpAsync.Commit();

        var total = default(WarpAcc);
        var part = default(WarpAcc);
        int sinceFold = 0;
        // The scale block's decode biases (zero points) of this lane's two B rows and the scales of its four
        // accumulator columns: looked up once per block (a reader's lookup may divide, e.g. Q4's k / G).
        UnitScale u0 = default, u1 = default;
        float f0 = 0f, f1 = 0f, f2 = 0f, f3 = 0f;
        int stage = 0; // st % Stages, kept as a counter: no division in the loop
        for (int st = 0; st < steps; st++)
        {
            CpAsync.Wait(1); // step st's B group has landed (st + 1's may still fly)
            Group.Barrier();  // ... for every thread; A(st) stored; every warp is done with step st - 1's buffers
            int nextStage = stage == 0 ? 2 : stage - 1; // (st + 2) % 3
            IssueB(s, cFrom, cSrc, cDst + nextStage * TileN * bLd, st + 2, cRowOk && st + 2 < steps, unitsPerStep, cUnit, unitsPerRow, cRow < TileN);
            CpAsync.Commit(); // empty groups keep the count: wait(1) above always means "step st is in"
            bool more = st + 1 < steps;
            if (more && aLive)
                ar = LoadA(s, a, kDim, (st + 1) * TileK, warp, lane); // in flight during the mmas

            int aBuf = AOff + (st & 1) * TileM * ALd;
            int bStage = BOff + stage * TileN * bLd;
            int unit = st * unitsPerStep; // the step's first 16-byte unit: its scale block
            if (sinceFold == 0)
            {
                u0 = w.ScaleOf(dRow0, unit);
                u1 = w.ScaleOf(dRow1, unit);
                f0 = w.ScaleOf(sRow0, unit).Scale;
                f1 = w.ScaleOf(sRow1, unit).Scale;
                f2 = w.ScaleOf(sRow2, unit).Scale;
                f3 = w.ScaleOf(sRow3, unit).Scale;
            }

            if (warpLive)
            {
                // The two k16 halves of the step, written out (ILGPU does not unroll loops).
                part = WarpAcc.Mma(part, s, aBuf, 0, lane, mTiles, DecodeB(s, w, bStage, vpw, 16 * warp + g, 0, t, shift, u0),
                    DecodeB(s, w, bStage, vpw, 16 * warp + 8 + g, 0, t, shift, u1));
                part = WarpAcc.Mma(part, s, aBuf, 1, lane, mTiles, DecodeB(s, w, bStage, vpw, 16 * warp + g, 1, t, shift, u0),
                    DecodeB(s, w, bStage, vpw, 16 * warp + 8 + g, 1, t, shift, u1));
            }

            sinceFold++;
            if (sinceFold == foldSteps || !more)
            {
                // The scale block ends here.
                total = WarpAcc.Fold(total, part, f0, f1, f2, f3);
                part = default;
                sinceFold = 0;
            }

            if (more && aLive)
                StoreA(s, AOff + ((st + 1) & 1) * TileM * ALd, ar, warp, lane);
            stage = stage == Stages - 1 ? 0 : stage + 1;
        }

        CpAsync.Wait(0);
        Group.Barrier(); // every warp is done reading A and B: C reuses their words
        WarpAcc.Store(s, total, AOff, 16 * warp, g, t);
        Group.Barrier();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Clamp(int local, int nLimit) => local < nLimit ? local : 0;

    /// <summary>One 16-byte unit of this thread's B row for step st into its stage slot (zeros past the row or the matrix).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void IssueB(SharedWords s, GlobalWords from, long src, int dst, int st, bool rowOk, int unitsPerStep, int cUnit, int unitsPerRow,
        bool active)
    {
        if (!active)
            return;
        int u = st * unitsPerStep + cUnit;
        bool ok = rowOk && u < unitsPerRow;
        CpAsync.Copy16(s, dst, from, src + 4L * st * unitsPerStep, ok);
    }

    /// <summary>
    /// B fragment of this lane for k16 half kk of B row `row`: R0 = values k = 2t, 2t+1, R1 = k = 2t+8, 2t+9, each the
    /// reader's exact code as BF16 (the top half of its F32, whose low half is zero).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Frag2 DecodeB<TQ>(SharedWords s, TQ w, int stage, int vpw, int row, int kk, int t, int shift, UnitScale u)
        where TQ : struct, IQuantWeights
    {
        uint lo = s.View[BWord(stage, vpw, row, kk, 0, t)] >> shift;
        uint hi = s.View[BWord(stage, vpw, row, kk, 1, t)] >> shift;
        return new Frag2(Pair(w, lo, u), Pair(w, hi, u));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Pair<TQ>(TQ w, uint word, UnitScale u)
        where TQ : struct, IQuantWeights =>
        (Interop.FloatAsInt(w.Code(word, 0, u)) >> 16) | (Interop.FloatAsInt(w.Code(word, 1, u)) & 0xFFFF0000u);

    /// <summary>This thread's 16 activations of a step: pairs (k, k+1), k = k0 + 2 (lane &amp; 15), of rows ARow(warp, lane, 0..7).</summary>
    private struct ARegs
    {
        public float V0, V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14, V15;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float LoadOne(ArrayView<float> a, int src, int kDim, int k)
    {
        // Rows past the tile's (src -1) and columns past K load nothing; the index is clamped as well, so a load the
        // compiler might hoist out of the branch stays inside the buffer.
        bool ok = src >= 0 && k < kDim;
        return ok ? a[ok ? (long)src * kDim + k : 0] : 0f;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ARegs LoadA(SharedWords s, ArrayView<float> a, int kDim, int k0, int warp, int lane)
    {
        int k = k0 + 2 * (lane & 15);
        int r0 = (int)s.View[RowsOff + ARow(warp, lane, 0)], r1 = (int)s.View[RowsOff + ARow(warp, lane, 1)];
        int r2 = (int)s.View[RowsOff + ARow(warp, lane, 2)], r3 = (int)s.View[RowsOff + ARow(warp, lane, 3)];
        int r4 = (int)s.View[RowsOff + ARow(warp, lane, 4)], r5 = (int)s.View[RowsOff + ARow(warp, lane, 5)];
        int r6 = (int)s.View[RowsOff + ARow(warp, lane, 6)], r7 = (int)s.View[RowsOff + ARow(warp, lane, 7)];
        return new ARegs
        {
            V0 = LoadOne(a, r0, kDim, k), V1 = LoadOne(a, r0, kDim, k + 1),
            V2 = LoadOne(a, r1, kDim, k), V3 = LoadOne(a, r1, kDim, k + 1),
            V4 = LoadOne(a, r2, kDim, k), V5 = LoadOne(a, r2, kDim, k + 1),
            V6 = LoadOne(a, r3, kDim, k), V7 = LoadOne(a, r3, kDim, k + 1),
            V8 = LoadOne(a, r4, kDim, k), V9 = LoadOne(a, r4, kDim, k + 1),
            V10 = LoadOne(a, r5, kDim, k), V11 = LoadOne(a, r5, kDim, k + 1),
            V12 = LoadOne(a, r6, kDim, k), V13 = LoadOne(a, r6, kDim, k + 1),
            V14 = LoadOne(a, r7, kDim, k), V15 = LoadOne(a, r7, kDim, k + 1),
        };
    }

    /// <summary>Rounds the step's activations to BF16 pairs into the A buffer at word buf (rows of ALd words).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreA(SharedWords s, int buf, ARegs v, int warp, int lane)
    {
        int c = buf + (lane & 15);
        s.View[c + ARow(warp, lane, 0) * ALd] = Half16.PackBf16(v.V0, v.V1);
        s.View[c + ARow(warp, lane, 1) * ALd] = Half16.PackBf16(v.V2, v.V3);
        s.View[c + ARow(warp, lane, 2) * ALd] = Half16.PackBf16(v.V4, v.V5);
        s.View[c + ARow(warp, lane, 3) * ALd] = Half16.PackBf16(v.V6, v.V7);
        s.View[c + ARow(warp, lane, 4) * ALd] = Half16.PackBf16(v.V8, v.V9);
        s.View[c + ARow(warp, lane, 5) * ALd] = Half16.PackBf16(v.V10, v.V11);
        s.View[c + ARow(warp, lane, 6) * ALd] = Half16.PackBf16(v.V12, v.V13);
        s.View[c + ARow(warp, lane, 7) * ALd] = Half16.PackBf16(v.V14, v.V15);
    }

    /// <summary>A warp's accumulators: four 16-row m tiles (M0..M3) x two 8-wide n tiles (N0, N1).</summary>
    private struct WarpAcc
    {
        public Acc4 M0N0, M0N1, M1N0, M1N1, M2N0, M2N1, M3N0, M3N1;

        /// <summary>c + A B for the first mTiles m tiles (A fragments by ldmatrix from the buffer at aBuf), B = (b0 | b1).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static WarpAcc Mma(WarpAcc c, SharedWords s, int aBuf, int kk, int lane, int mTiles, Frag2 b0, Frag2 b1)
        {
            var m = default(Bf16Mma);
            var a0 = Ldmatrix.X4(s, AFragWord(aBuf, 0, kk, lane));
            c.M0N0 = m.Mma(c.M0N0, a0, b0);
            c.M0N1 = m.Mma(c.M0N1, a0, b1);
            if (mTiles > 1)
            {
                var a1 = Ldmatrix.X4(s, AFragWord(aBuf, 1, kk, lane));
                c.M1N0 = m.Mma(c.M1N0, a1, b0);
                c.M1N1 = m.Mma(c.M1N1, a1, b1);
            }

            if (mTiles > 2)
            {
                var a2 = Ldmatrix.X4(s, AFragWord(aBuf, 2, kk, lane));
                c.M2N0 = m.Mma(c.M2N0, a2, b0);
                c.M2N1 = m.Mma(c.M2N1, a2, b1);
            }

            if (mTiles > 3)
            {
                var a3 = Ldmatrix.X4(s, AFragWord(aBuf, 3, kk, lane));
                c.M3N0 = m.Mma(c.M3N0, a3, b0);
                c.M3N1 = m.Mma(c.M3N1, a3, b1);
            }

            return c;
        }

        /// <summary>total + part * scale of each accumulator's column: s0, s1 for n tile 0's columns 2t, 2t+1; s2, s3 for n tile 1's.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static WarpAcc Fold(WarpAcc total, WarpAcc part, float s0, float s1, float s2, float s3) => new()
        {
            M0N0 = Fold(total.M0N0, part.M0N0, s0, s1), M0N1 = Fold(total.M0N1, part.M0N1, s2, s3),
            M1N0 = Fold(total.M1N0, part.M1N0, s0, s1), M1N1 = Fold(total.M1N1, part.M1N1, s2, s3),
            M2N0 = Fold(total.M2N0, part.M2N0, s0, s1), M2N1 = Fold(total.M2N1, part.M2N1, s2, s3),
            M3N0 = Fold(total.M3N0, part.M3N0, s0, s1), M3N1 = Fold(total.M3N1, part.M3N1, s2, s3),
        };

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Acc4 Fold(Acc4 t, Acc4 p, float sEven, float sOdd) => new()
        {
            C0 = t.C0 + p.C0 * sEven,
            C1 = t.C1 + p.C1 * sOdd,
            C2 = t.C2 + p.C2 * sEven,
            C3 = t.C3 + p.C3 * sOdd,
        };

        /// <summary>Writes the warp's 64 x 16 block (columns col0..col0+15) of C to shared floats at word c0, rows of CLd.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Store(SharedWords s, WarpAcc v, int c0, int col0, int g, int t)
        {
            int b = c0 + g * CLd + col0 + 2 * t;
            Put(s, b, v.M0N0);
            Put(s, b + 8, v.M0N1);
            Put(s, b + 16 * CLd, v.M1N0);
            Put(s, b + 16 * CLd + 8, v.M1N1);
            Put(s, b + 32 * CLd, v.M2N0);
            Put(s, b + 32 * CLd + 8, v.M2N1);
            Put(s, b + 48 * CLd, v.M3N0);
            Put(s, b + 48 * CLd + 8, v.M3N1);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void Put(SharedWords s, int w, Acc4 c)
        {
            s.View[w] = Interop.FloatAsInt(c.C0);
            s.View[w + 1] = Interop.FloatAsInt(c.C1);
            s.View[w + 8 * CLd] = Interop.FloatAsInt(c.C2);
            s.View[w + 8 * CLd + 1] = Interop.FloatAsInt(c.C3);
        }
    }
}

/// <summary>Two F32 rounded to BF16 (RNE) and packed, low first: one cvt.rn.bf16x2.f32 on CUDA, Half16.PackBf16 elsewhere.</summary>
/// <summary>What the runtime asks before it picks V6PackedMma (it keeps V2 where this says no).</summary>
public static class QuantGroupedGemmMma
{
    /// <summary>Whether V6PackedMma takes a packed expert tensor of this reader with reduction dim inDim (its scales fold).</summary>
    public static bool Supports<TQ>(TQ w, int inDim)
        where TQ : struct, IQuantWeights => QuantGroupedGemmMmaKernel<TQ>.TryFoldSteps(w, inDim, out _);
}


/// <summary>
/// Launches of V6PackedMma for one packed scheme; QuantGroupedGemmKernel&lt;TQ&gt; validates the arguments first and
/// dispatches here (the seam's version list, GroupedGemm.PackedVersions).
/// </summary>
internal sealed class QuantGroupedGemmMmaKernel<TQ>
    where TQ : struct, IQuantWeights
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TQ, TQ, GlobalWords, GlobalWords, ArrayView<float>, MmaPassShape, ExpertGlu> upGate;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, TQ, GlobalWords, ArrayView<float>, MmaPassShape, ExpertGlu> down;

    public QuantGroupedGemmMmaKernel(Accelerator a)
    {
        upGate = a.LoadTensorCore<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TQ, TQ, GlobalWords, GlobalWords, ArrayView<float>, MmaPassShape, ExpertGlu>(
            QuantGroupedGemmMmaKernels.UpGateV6, QuantGroupedGemmMmaKernels.MaxSharedBytes);
        down = a.LoadTensorCore<ArrayView<float>, ArrayView<int>, ArrayView<int>, TQ, GlobalWords, ArrayView<float>, MmaPassShape, ExpertGlu>(
            QuantGroupedGemmMmaKernels.DownV6, QuantGroupedGemmMmaKernels.MaxSharedBytes);
    }

    /// <summary>After QuantGroupedGemmKernel's checks: up-gate over the permutation's tiles (see the file header).</summary>
    public void LaunchUpGate(AcceleratorStream stream, string where, MoePermutation p, int pairs, ArrayView<float> x, int topK, int dim, int hidden,
        TQ w1, TQ w3, ArrayView<float> h, ExpertGlu glu)
    {
        var shape = new MmaPassShape(topK, dim, hidden, p.TileRows, FoldSteps(where, w1, dim));
        var g1 = Words(where, "w1", w1);
        var g3 = Words(where, "w3", w3);
        upGate(stream, Config(p, pairs, hidden, QuantGroupedGemmMmaKernels.TileN / 2, w1.ValuesPerWord),
            x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, w1, w3, g1, g3, h, shape, glu);
    }

    /// <summary>After QuantGroupedGemmKernel's checks: down over the permutation's tiles.</summary>
    public void LaunchDown(AcceleratorStream stream, string where, MoePermutation p, int pairs, ArrayView<float> h, int dim, int hidden,
        TQ w2, ArrayView<float> y, ExpertGlu glu)
    {
        var shape = new MmaPassShape(1, hidden, dim, p.TileRows, FoldSteps(where, w2, hidden));
        var g2 = Words(where, "w2", w2);
        down(stream, Config(p, pairs, dim, QuantGroupedGemmMmaKernels.TileN, w2.ValuesPerWord), h, p.Offsets.View, p.Tiles.View, w2, g2, y, shape, glu);
    }

    /// <summary>
    /// K steps (of TileK) per scale block of the reader (the file header); int.MaxValue for one block per row. Throws
    /// ArgumentException for FP8 blocks narrower than the row whose width is no multiple of TileK.
    /// </summary>
    public static int FoldSteps(string where, TQ w, int inDim) =>
        TryFoldSteps(w, inDim, out int steps) ? steps
        : w is Fp8Weights f8
            ? throw new ArgumentException($"{where}: {GroupedGemmVersion.V6PackedMma} needs FP8 scale blocks whose width ({f8.BlockK}) is a multiple of {QuantGroupedGemmMmaKernels.TileK} or covers K = {inDim}")
            : throw new ArgumentException($"{where}: {GroupedGemmVersion.V6PackedMma} has no scale folding for reader {typeof(TQ).Name}");

    /// <summary>FoldSteps without the exception: false where V6PackedMma cannot fold this reader's scales.</summary>
    public static bool TryFoldSteps(TQ w, int inDim, out int steps)
    {
        const int Step = QuantGroupedGemmMmaKernels.TileK;
        steps = w switch
        {
            Q8Weights => int.MaxValue,
            Q4Weights q4 => q4.GroupSize / Step, // QuantLayout.Check: a multiple of 32
            Fp8Weights f8 when f8.BlockK >= inDim => int.MaxValue,
            Fp8Weights f8 when f8.BlockK % Step == 0 => f8.BlockK / Step,
            Mxfp4Weights => 1,
            _ => 0,
        };
        return steps > 0;
    }

    private static GlobalWords Words(string where, string tensor, TQ w)
    {
        QuantLayout.CheckWide(where, tensor, w); // cp.async reads 16-byte units: aligned start, rows of whole units
        return GlobalWords.Of(w.Words);
    }

    private static KernelConfig Config(MoePermutation p, int pairs, int outputs, int outputsPerGroup, int valuesPerWord) =>
        new(new Index2D(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), (outputs + outputsPerGroup - 1) / outputsPerGroup),
            new Index2D(QuantGroupedGemmMmaKernels.Threads, 1),
            SharedMemoryConfig.RequestDynamic<uint>(QuantGroupedGemmMmaKernels.SharedWordCount(valuesPerWord)));
}
