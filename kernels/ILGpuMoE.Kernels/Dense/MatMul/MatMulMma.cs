// MatMul V3-MMA: y [T, N] (+)= x [T, K] W^T on tensor cores (mma.sync m16n8k16, F32 accumulation) for BF16 and F16
// weights W [N, K] (Hugging Face [out, in]); x and y F32 as everywhere in the runtime. Prefill q/k/v/o and lm_head.
// Glossary: T tokens (rows of x and y), N outputs (rows of W), K the reduction (In).
//
// What it does (kernels/ILGpuMoE.Kernels/TensorCore/Mma.cs has the primitives and their fragment layouts):
//   - Tile: a group of 128 threads = 4 warps (2 x 2) owns a 64 x 64 block of y (BM = 64 tokens, BN = 64 outputs);
//     each warp a 32 x 32 quarter = 2 (m16) x 4 (n8) mma tiles, 8 Acc4 = 32 F32 accumulators per lane. K in steps of
//     BK = 32 (two k16 mma steps per k-tile).
//   - W (the 16-bit weights) comes with cp.async, 16 bytes (8 values) per copy, 2 copies per thread per k-tile, into a
//     3-stage ring: while k-tile kt is multiplied, tiles kt+1 and kt+2 are in flight. W rows outside N and the columns
//     past K of the last k-tile use the zero-fill form (nothing read). Hence K % 8 == 0 and W 16-byte aligned: a copy
//     never straddles a row end (the launcher refuses anything else; the runtime keeps the SIMT versions for those).
//   - x (F32) goes through registers: 16 plain loads per thread for k-tile kt+1 are issued before kt's mmas, rounded
//     to W's 16-bit type (IMmaType.Pack, round to nearest even), packed in pairs and stored after them into the other
//     of two x buffers. So the mma sees x rounded to BF16/F16 exactly as the oracle's RefRounding helper models it;
//     products are exact, sums F32.
//   - Shared rows are padded from 16 to 20 words (80 bytes): ldmatrix's 8 rows of 16 bytes then fall on 8 distinct
//     bank quads (row r at quad 5r mod 8), and the two row sets each warp store / each 8-lane cp.async phase writes
//     are picked 4 rows apart so they too are conflict-free (MatMulMmaLayout; tests/.../Dense/MatMulMmaTests.cs checks
//     every access pattern). Fragments: ldmatrix.x4 for each m16 A tile and for each pair of n8 B tiles: 4 ldmatrix
//     per 8 mma.
//   - One Group.Barrier per k-tile: at the top of kt it publishes W tile kt (after cp.async.wait_group 1) and x tile kt,
//     and proves every warp is done with kt-1, whose W stage and x buffer are refilled right after it.
//   - Tiles are rastered in groups of 16 token tiles (all N tiles of 16 M tiles before the next 16): at lm_head shapes
//     a wave of resident groups then reads a ~16 MB x band and a ~17 MB W band that stay in the H200's 50 MB L2,
//     instead of streaming all of x once per wave (perf/notes/tensor-cores-dense.md has the arithmetic).
//   - A warp skips the ldmatrix and mma of its m16 / n8 tiles that lie wholly past T / N (warp-uniform flags): a
//     ragged edge tile or a small T costs no tensor-core work on padding (and the CPU emulation stays affordable).
//   - Epilogue: each lane writes (or adds to) its accumulators straight from registers, masked to T x N.
// Dynamic shared memory: 2 x buffers + 3 W stages of 64 rows x 20 words = 25,600 bytes (< 48 KB: no opt-in needed).
//
// Why this tile (the issue's suggestion, kept): 64 x 64 with 4 warps keeps 32 accumulators per lane (86 registers
// after the asm-operand pass: 5 groups per SM) and the CPU emulation cheap (every mma is 32 shuffles there). Its
// weakness is traffic: per k-tile a group loads 64 x 32 F32 of x and 64 x 32 of W, 12 KB for 262K FLOP (0.047 B/FLOP), so the H200's
// 989 TFLOP/s would need ~46 TB/s from L2; a 128 x 128 tile (8 warps, 64 x 32 each) halves that but needs 50 KB of
// shared memory with 3 stages (over the 48 KB ILGPU can request) or 2 stages at 40 KB. That is the next version to
// register once the H200 measures this one (perf/notes/tensor-cores-dense.md).
//
// On the CPU accelerator every primitive runs its fragment-exact emulation, so the tests exercise this very tiling,
// pipeline indexing, zero fill and masking. On CUDA the inline PTX's operands go through .local until the tensor-core
// loader's pass promotes them (kernels/ILGpuMoE.Kernels/TensorCore).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGpuMoE.Kernels.TensorCore;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>
/// The shared-memory layout and the thread-to-data maps of MatMul V3-MMA, public so the bank-conflict tests check the
/// very functions the kernel indexes with. All offsets are in 32-bit words (two 16-bit values each).
/// </summary>
public static class MatMulMmaLayout
{
    /// <summary>Tokens (rows of x) per tile.</summary>
    public const int BM = 64;

    /// <summary>Outputs (rows of W) per tile.</summary>
    public const int BN = 64;

    /// <summary>K per k-tile (16-bit values).</summary>
    public const int BK = 32;

    /// <summary>Threads per group: 4 warps, 2 (along T) x 2 (along N).</summary>
    public const int Threads = 128;

    /// <summary>cp.async stages of W.</summary>
    public const int Stages = 3;

    /// <summary>Buffers of x (register-staged: written after the mmas of the previous k-tile).</summary>
    public const int XBuffers = 2;

    /// <summary>Words of a shared row: BK / 2 = 16 words of data plus 4 of pad (80 bytes).</summary>
    public const int RowWords = BK / 2 + 4;

    /// <summary>Words of one tile buffer (BM == BN rows).</summary>
    public const int TileWords = BM * RowWords;

    /// <summary>First word of the W stages (the x buffers come first).</summary>
    public const int WBase = XBuffers * TileWords;

    /// <summary>Words of dynamic shared memory the kernel asks for.</summary>
    public const int SharedWordCount = WBase + Stages * TileWords;

    /// <summary>The same in bytes (25,600).</summary>
    public const int SharedBytes = 4 * SharedWordCount;

    /// <summary>Token tiles per raster group (see the file header).</summary>
    public const int RasterGroup = 16;

    /// <summary>x stores per thread per k-tile (pairs of values = words).</summary>
    public const int XSteps = BM * BK / 2 / Threads;

    /// <summary>cp.async copies per thread per k-tile (16 bytes each).</summary>
    public const int WCopies = BN * BK / 8 / Threads;

    /// <summary>
    /// The tile row of x that thread tid loads and stores at step i (0..7): warp w owns rows 16w..16w+15; lanes 0-15
    /// take a row and lanes 16-31 the row 4 below it, so a warp's 32 word stores hit 32 banks (20 x 4 = 80 = 16 mod 32).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int XRow(int tid, int i) => XRowBase(tid) + XRowStep(i);

    /// <summary>Thread tid's row at step 0: 16 per warp, 4 more for lanes 16-31.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int XRowBase(int tid) => ((tid >> 5) << 4) + (((tid >> 4) & 1) << 2);

    /// <summary>The rows steps i = 0..7 add to the base: 0, 1, 2, 3, 8, 9, 10, 11 (constants once unrolled).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int XRowStep(int i) => (i & 3) + ((i >> 2) << 3);

    /// <summary>The word (pair of K values) of its row that thread tid loads and stores: 16 lanes cover a row's 16 words.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int XWord(int tid) => tid & 15;

    /// <summary>
    /// The W tile row that thread tid copies at copy p (0..1): each 8-lane phase of a warp's cp.async covers 4 chunks of
    /// a row and 4 of the row 4 below it (quads 5r + c and 5r + 20 + c = 5r + 4 + c mod 8: all 8 distinct).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int WRow(int tid, int p) => (p << 5) + ((tid >> 5) << 3) + ((tid >> 3) & 3) + (((tid >> 2) & 1) << 2);

    /// <summary>The 16-byte chunk (8 values, 0..3) of its W row that thread tid copies.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int WChunk(int tid) => tid & 3;

    /// <summary>
    /// ldmatrix.x4 of an A (x) m16 tile whose first row is rowBase, k16 step ks: lane l points at row rowBase + (l &amp; 15),
    /// 16-bit column 8 (l &gt;&gt; 4) of the step (Mma.cs: that yields the A fragment). Word offset within the buffer.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int AFragWord(int lane, int rowBase, int ks) => (rowBase + (lane & 15)) * RowWords + (ks << 3) + ((lane >> 4) << 2);

    /// <summary>
    /// ldmatrix.x4 of two n8 B (W) tiles, rows rowBase..rowBase+15, k16 step ks: lanes 0-7 / 8-15 / 16-23 / 24-31 point at
    /// rows rowBase + 0..7 columns 0 / 8 and rows rowBase + 8..15 columns 0 / 8; Lo is the first n8 tile, Hi the second.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int BFragWord(int lane, int rowBase, int ks) =>
        (rowBase + ((lane >> 4) << 3) + (lane & 7)) * RowWords + (ks << 3) + (((lane >> 3) & 1) << 2);

    /// <summary>
    /// The token tile of group <paramref name="block"/>: groups run through bands of RasterGroup token tiles, each band
    /// token tile first, then N tile (consecutive groups share a W tile and a band's x stays in L2).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int TileM(int block, int tilesM, int tilesN)
    {
        int perBand = RasterGroup * tilesN;
        int band = block / perBand;
        int first = band * RasterGroup;
        return first + (block - band * perBand) % BandRows(first, tilesM);
    }

    /// <summary>The N tile of group <paramref name="block"/> (see <see cref="TileM"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int TileN(int block, int tilesM, int tilesN)
    {
        int perBand = RasterGroup * tilesN;
        int band = block / perBand;
        return (block - band * perBand) / BandRows(band * RasterGroup, tilesM);
    }

    /// <summary>Token tiles in the band starting at tile first: RasterGroup, fewer in the last band.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int BandRows(int first, int tilesM) => tilesM - first < RasterGroup ? tilesM - first : RasterGroup;

    /// <summary>Groups of one launch over T x N (int: the launcher checks the count fits).</summary>
    public static long Groups(int tokens, int outDim) => (long)((tokens + BM - 1) / BM) * ((outDim + BN - 1) / BN);
}

public static class MatMulMma
{
    /// <summary>A pair of F32 x values (adjacent K) on their way from global memory to a packed shared word.</summary>
    private struct Pair
    {
        public float Lo, Hi;
    }

    /// <summary>One thread's share of an x k-tile: XSteps (8) pairs, held in registers across the mmas.</summary>
    private struct XRegs
    {
        public Pair P0, P1, P2, P3, P4, P5, P6, P7;
    }

    /// <summary>A warp's 32 x 32 of y: 2 (m16) x 4 (n8) accumulator tiles, Cmn.</summary>
    private struct WarpAcc
    {
        public Acc4 C00, C01, C02, C03, C10, C11, C12, C13;
    }

    /// <summary>Which of a warp's tiles past the first (m16 tile 1, n8 tiles 1..3) hold any row of T / column of N.</summary>
    private struct Live
    {
        public bool M1, N1, N2, N3;
    }

    [KernelInfo(MatMulVersion.V3Mma, "grid ceil(T/64)*ceil(Out/64) (rastered in groups of 16 token tiles), group 128 (4 warps, 2 x 2), 25600 B dynamic shared",
        TensorCore = "HMMA", BlockSize = MatMulMmaLayout.Threads, MaxDynamicSharedBytes = MatMulMmaLayout.SharedBytes,
        Summary = "mma.sync m16n8k16 tiles of 64 x 64, W by cp.async (3 stages), x rounded to W's 16-bit type via registers, F32 accumulation")]
    public static void MatMulV3Mma<TM>(ArrayView<float> x, GlobalWords w, ArrayView<float> y, int tokens, int outDim, int inDim, int accumulate)
        where TM : struct, IMmaType
    {
        const int bm = MatMulMmaLayout.BM, bn = MatMulMmaLayout.BN, bk = MatMulMmaLayout.BK;
        const int tile = MatMulMmaLayout.TileWords;
        var s = SharedWords.Dynamic();
        var mma = default(TM);
        int tid = Group.IdxX;
        int lane = tid & 31, warp = tid >> 5;

        int tilesM = (tokens + bm - 1) / bm, tilesN = (outDim + bn - 1) / bn;
        int m0 = MatMulMmaLayout.TileM(Grid.IdxX, tilesM, tilesN) * bm;
        int n0 = MatMulMmaLayout.TileN(Grid.IdxX, tilesM, tilesN) * bn;
        int kTiles = (inDim + bk - 1) / bk;

        // W tiles 0 and 1 in flight (a group per tile, empty past K: the wait counts stay uniform).
        for (int st = 0; st < MatMulMmaLayout.Stages - 1; st++)
        {
            if (st < kTiles)
                IssueW(s, w, st, st * bk, tid, n0, outDim, inDim);
            CpAsync.Commit();
        }

        // This thread's x: rows m0 + XRowBase + XRowStep(i), column pair XWord. The row base and how many of its 12 rows
        // lie inside T are fixed for the launch; per k-tile only k moves.
        int xRow0 = m0 + MatMulMmaLayout.XRowBase(tid);
        int xCol = MatMulMmaLayout.XWord(tid) << 1;
        long xAt = (long)xRow0 * inDim + xCol;
        int rowsLeft = tokens - xRow0;
        StoreX(mma, s, 0, tid, LoadX(x, xAt, rowsLeft, inDim, xCol < inDim));

        // This lane's ldmatrix rows within a buffer: warp (wm, wn) = (warp >> 1, warp & 1) owns rows 32 wm.. of x and
        // 32 wn.. of W.
        int aWord = MatMulMmaLayout.AFragWord(lane, (warp >> 1) << 5, 0);
        int bWord = MatMulMmaLayout.BFragWord(lane, (warp & 1) << 5, 0);
        // Which of the warp's m16 and n8 tiles hold any row of T / column of N (warp-uniform): the others are all zero
        // padding, and their ldmatrix and mma are skipped (a ragged last tile, or T and N below one tile).
        int wRow0 = m0 + ((warp >> 1) << 5), wCol0 = n0 + ((warp & 1) << 5);
        bool mt0 = wRow0 < tokens, mt1 = wRow0 + 16 < tokens;
        bool nt0 = wCol0 < outDim, nt1 = wCol0 + 8 < outDim, nt2 = wCol0 + 16 < outDim, nt3 = wCol0 + 24 < outDim;
        bool busy = mt0 && nt0;
        var live = new Live { M1 = mt1, N1 = nt1, N2 = nt2, N3 = nt3 };
        WarpAcc acc = default;
        for (int kt = 0; kt < kTiles; kt++)
        {
            CpAsync.Wait(MatMulMmaLayout.Stages - 2);
            Group.Barrier();
            int next = kt + MatMulMmaLayout.Stages - 1;
            if (next < kTiles)
                IssueW(s, w, next % MatMulMmaLayout.Stages, next * bk, tid, n0, outDim, inDim);
            CpAsync.Commit();

            bool more = kt + 1 < kTiles;
            XRegs xr = default;
            if (more)
                xr = LoadX(x, xAt + (kt + 1) * bk, rowsLeft, inDim, (kt + 1) * bk + xCol < inDim);

            // The two k16 steps of the k-tile (8 words apart), written out: ptxas sees straight-line mma code.
            if (busy)
            {
                int xb = (kt & 1) * tile + aWord;
                int wb = MatMulMmaLayout.WBase + kt % MatMulMmaLayout.Stages * tile + bWord;
                acc = Step(mma, acc, s, xb, wb, live);
                acc = Step(mma, acc, s, xb + 8, wb + 8, live);
            }

            // The other x buffer was last read at kt-1, which every warp finished before this k-tile's barrier.
            if (more)
                StoreX(mma, s, (kt + 1) & 1, tid, xr);
        }

        // Lane (g, t) holds D[g][2t..2t+1] and D[g+8][2t..2t+1] of each m16 x n8 tile (the skipped ones are masked).
        int row = wRow0 + (lane >> 2);
        int col = wCol0 + ((lane & 3) << 1);
        Store(y, acc.C00, row, col, tokens, outDim, accumulate);
        Store(y, acc.C01, row, col + 8, tokens, outDim, accumulate);
        Store(y, acc.C02, row, col + 16, tokens, outDim, accumulate);
        Store(y, acc.C03, row, col + 24, tokens, outDim, accumulate);
        Store(y, acc.C10, row + 16, col, tokens, outDim, accumulate);
        Store(y, acc.C11, row + 16, col + 8, tokens, outDim, accumulate);
        Store(y, acc.C12, row + 16, col + 16, tokens, outDim, accumulate);
        Store(y, acc.C13, row + 16, col + 24, tokens, outDim, accumulate);
    }

    /// <summary>
    /// One k16 step of a warp: ldmatrix.x4 of its two m16 x tiles (xb: this lane's row word) and its two n8 pairs of W
    /// (wb), then up to 8 mma; the tiles past T / N (live) are skipped, loads and mmas alike.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static WarpAcc Step<TM>(TM mma, WarpAcc c, SharedWords s, int xb, int wb, Live live)
        where TM : struct, IMmaType
    {
        const int row16 = 16 * MatMulMmaLayout.RowWords;
        var a0 = Ldmatrix.X4(s, xb);
        var b0 = Ldmatrix.X4(s, wb);
        Frag4 a1 = default, b1 = default;
        if (live.M1)
            a1 = Ldmatrix.X4(s, xb + row16);
        if (live.N2)
            b1 = Ldmatrix.X4(s, wb + row16);
        c.C00 = mma.Mma(c.C00, a0, b0.Lo);
        if (live.N1)
            c.C01 = mma.Mma(c.C01, a0, b0.Hi);
        if (live.N2)
            c.C02 = mma.Mma(c.C02, a0, b1.Lo);
        if (live.N3)
            c.C03 = mma.Mma(c.C03, a0, b1.Hi);
        if (live.M1)
        {
            c.C10 = mma.Mma(c.C10, a1, b0.Lo);
            if (live.N1)
                c.C11 = mma.Mma(c.C11, a1, b0.Hi);
            if (live.N2)
                c.C12 = mma.Mma(c.C12, a1, b1.Lo);
            if (live.N3)
                c.C13 = mma.Mma(c.C13, a1, b1.Hi);
        }

        return c;
    }

    /// <summary>This thread's two (WCopies) 16-byte copies of W tile k0 into a stage; rows past N and chunks past K zero-filled.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void IssueW(SharedWords s, GlobalWords w, int stage, int k0, int tid, int n0, int outDim, int inDim)
    {
        int chunk = MatMulMmaLayout.WChunk(tid);
        int k = k0 + (chunk << 3);
        int dst = MatMulMmaLayout.WBase + stage * MatMulMmaLayout.TileWords + (chunk << 2);
        CopyW(s, w, dst, MatMulMmaLayout.WRow(tid, 0), k, n0, outDim, inDim);
        CopyW(s, w, dst, MatMulMmaLayout.WRow(tid, 1), k, n0, outDim, inDim);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyW(SharedWords s, GlobalWords w, int dst, int r, int k, int n0, int outDim, int inDim)
    {
        int n = n0 + r;
        CpAsync.Copy16(s, dst + r * MatMulMmaLayout.RowWords, w, (long)n * (inDim >> 1) + (k >> 1), n < outDim && k < inDim);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static XRegs LoadX(ArrayView<float> x, long at, int rowsLeft, int inDim, bool kIn) => new()
    {
        P0 = LoadPair(x, at, 0, rowsLeft, inDim, kIn),
        P1 = LoadPair(x, at, 1, rowsLeft, inDim, kIn),
        P2 = LoadPair(x, at, 2, rowsLeft, inDim, kIn),
        P3 = LoadPair(x, at, 3, rowsLeft, inDim, kIn),
        P4 = LoadPair(x, at, 4, rowsLeft, inDim, kIn),
        P5 = LoadPair(x, at, 5, rowsLeft, inDim, kIn),
        P6 = LoadPair(x, at, 6, rowsLeft, inDim, kIn),
        P7 = LoadPair(x, at, 7, rowsLeft, inDim, kIn),
    };

    /// <summary>x[row + XRowStep(i), k..k+1] from at = the step-0 row's (row, k), zeros past T or K (K even: a pair is
    /// wholly in or out).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Pair LoadPair(ArrayView<float> x, long at, int i, int rowsLeft, int inDim, bool kIn)
    {
        int step = MatMulMmaLayout.XRowStep(i);
        var p = default(Pair);
        if (kIn && step < rowsLeft)
        {
            long a = at + (long)step * inDim;
            p.Lo = x[a];
            p.Hi = x[a + 1];
        }

        return p;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreX<TM>(TM mma, SharedWords s, int buffer, int tid, XRegs r)
        where TM : struct, IMmaType
    {
        int b = buffer * MatMulMmaLayout.TileWords + MatMulMmaLayout.XWord(tid);
        s.View[b + MatMulMmaLayout.XRow(tid, 0) * MatMulMmaLayout.RowWords] = mma.Pack(r.P0.Lo, r.P0.Hi);
        s.View[b + MatMulMmaLayout.XRow(tid, 1) * MatMulMmaLayout.RowWords] = mma.Pack(r.P1.Lo, r.P1.Hi);
        s.View[b + MatMulMmaLayout.XRow(tid, 2) * MatMulMmaLayout.RowWords] = mma.Pack(r.P2.Lo, r.P2.Hi);
        s.View[b + MatMulMmaLayout.XRow(tid, 3) * MatMulMmaLayout.RowWords] = mma.Pack(r.P3.Lo, r.P3.Hi);
        s.View[b + MatMulMmaLayout.XRow(tid, 4) * MatMulMmaLayout.RowWords] = mma.Pack(r.P4.Lo, r.P4.Hi);
        s.View[b + MatMulMmaLayout.XRow(tid, 5) * MatMulMmaLayout.RowWords] = mma.Pack(r.P5.Lo, r.P5.Hi);
        s.View[b + MatMulMmaLayout.XRow(tid, 6) * MatMulMmaLayout.RowWords] = mma.Pack(r.P6.Lo, r.P6.Hi);
        s.View[b + MatMulMmaLayout.XRow(tid, 7) * MatMulMmaLayout.RowWords] = mma.Pack(r.P7.Lo, r.P7.Hi);
    }

    /// <summary>One m16 x n8 tile's four values of this lane: (row, col..col+1) and (row + 8, col..col+1), masked.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ArrayView<float> y, Acc4 c, int row, int col, int tokens, int outDim, int accumulate)
    {
        StoreRow(y, c.C0, c.C1, row, col, tokens, outDim, accumulate);
        StoreRow(y, c.C2, c.C3, row + 8, col, tokens, outDim, accumulate);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow(ArrayView<float> y, float v0, float v1, int row, int col, int tokens, int outDim, int accumulate)
    {
        if (row >= tokens || col >= outDim)
            return;
        long i = (long)row * outDim + col;
        y[i] = accumulate != 0 ? y[i] + v0 : v0;
        if (col + 1 < outDim)
            y[i + 1] = accumulate != 0 ? y[i + 1] + v1 : v1;
    }

    /// <summary>The launch shape: one group per 64 x 64 tile of y, with the dynamic shared memory of the layout.</summary>
    internal static KernelConfig Config(int tokens, int outDim) =>
        new(new Index1D((int)MatMulMmaLayout.Groups(tokens, outDim)), new Index1D(MatMulMmaLayout.Threads),
            SharedMemoryConfig.RequestDynamic<uint>(MatMulMmaLayout.SharedWordCount));

    /// <summary>The kernel instance for a weight reader: BF16 and F16 only (null for any other).</summary>
    internal static Action<ArrayView<float>, GlobalWords, ArrayView<float>, int, int, int, int>? For<TW>()
        where TW : struct, IWeights =>
        typeof(TW) == typeof(BF16Weights) ? MatMulV3Mma<Bf16Mma>
        : typeof(TW) == typeof(F16Weights) ? MatMulV3Mma<F16Mma>
        : null;

    /// <summary>
    /// W [N, K] as 32-bit words with its device address when V3-MMA can read it, else null and why: BF16 or F16
    /// weights, K a multiple of 8 (a W row is whole 16-byte copies) and W 16-byte aligned.
    /// </summary>
    public static GlobalWords? TryWords<TW>(TW w, int inDim, out string why)
        where TW : struct, IWeights
    {
        if (typeof(TW) != typeof(BF16Weights) && typeof(TW) != typeof(F16Weights))
        {
            why = $"needs BF16 or F16 weights, not {typeof(TW).Name}";
            return null;
        }

        // Checked before the cast: with In % 8 == 0 the view holds whole words.
        if (inDim % 8 != 0)
        {
            why = $"needs In to be a multiple of 8 (a W row of whole 16-byte copies), got In={inDim}";
            return null;
        }

        // The alignment of the 16-bit view itself: ILGPU's Cast<uint> of a view that starts on an odd 16-bit index drops
        // the half word (its index becomes offset * 2 / 4), so the cast view's address would look aligned.
        var halves = typeof(TW) == typeof(BF16Weights)
            ? Unsafe.As<TW, BF16Weights>(ref w).Data
            : Unsafe.As<TW, F16Weights>(ref w).Data.Cast<ushort>();
        long address = halves.LoadEffectiveAddressAsPtr().ToInt64();
        if (address % 16 != 0)
        {
            why = $"needs W to start on a 16-byte boundary (it starts at byte {address % 16} mod 16)";
            return null;
        }

        why = "";
        return GlobalWords.Of(halves.Cast<uint>());
    }

    /// <summary>
    /// Whether the accelerator runs mma.sync BF16/F16: CUDA sm_80 and up, or the CPU accelerator's emulation, which
    /// needs the GPU's shape (warp 32, groups of 128: Devices.CreateCpuDevice; ILGPU's default CPU device has warp 4).
    /// </summary>
    public static bool Supported(Accelerator accelerator) => accelerator switch
    {
        CudaAccelerator cuda => cuda.Architecture is { } arch && arch >= CudaArchitecture.SM_80,
        CPUAccelerator cpu => cpu.WarpSize == 32 && cpu.MaxNumThreadsPerGroup >= MatMulMmaLayout.Threads,
        _ => false,
    };
}
