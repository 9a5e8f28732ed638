// Grouped expert GEMM: one launch covers every expert and its own number of rows (sorted pairs).
//
// Pass 1 (up/gate): h[r, f] = silu(x[tok(r)] . w1[e, f]) * (x[tok(r)] . w3[e, f]), tok(r) = sorted[r] / K,
//   e = the expert owning sorted row r. w1, w3 [E, F, D] (HF [out, in] per expert, stacked); h [P, F], sorted order.
// Pass 2 (down): y[r, d] = h[r] . w2[e, d], w2 [E, D, F]; y [P, D], sorted order.
// Every version takes an ExpertGlu (ExpertGlu.cs): the activation (SiLU, or gpt-oss's clamped GLU) and optional gate/up
// biases in the up/gate epilogue, an optional down bias b2[e] in the down epilogue; default(ExpertGlu) is SiLU, no bias.
// Activations are never copied or padded: rows are read through the sorted pair indices, and tiles that run past
// an expert's rows are masked.
//
// Versions:
//   V1  one thread per output element, expert found by binary search in offsets; no tiles, no shared memory.
//   V2  shared-memory tiles of 32 rows x 32 outputs per group of 256 (each thread 4 rows of one output; pass 1 keeps
//       gate and up accumulators), K-loop over the input dim in steps of 32, bounds-checked for any shape. Groups
//       walk the tile schedule (grid x = tile, so concurrent groups share a weight block and hit L2).
//       Generic over the reader, so the quantized experts run it too (Q8/Q4/FP8/MXFP4 readers dequantize each element of
//       the weight tile on its way into shared memory).
//   V3  decode form (few rows per expert, tile schedule with M <= 8): one warp per weight row (output), lanes
//       stride the input dim (coalesced weight reads: the weights are the traffic), up to 8 rows per pass so each
//       weight row is read once per tile; partial sums reduced through shared memory in fixed order (one barrier,
//       no shuffles, deterministic).
//   V4  V3's shape for packed (quantized) experts only, reading 16-byte units with one scale lookup per unit
//       (kernels/ILGpuMoE.Kernels/Quant/QuantGroupedGemm.cs): V3's per-element Get would cost a 64-bit division and a
//       scale load per weight.
//   V5  tensor cores (GroupedGemmMma.cs): BF16/F16 experts, mma.sync m16n8k16 over 64-row x 64-output tiles of the
//       schedule, 3-stage cp.async weights, activations rounded to the weights' 16-bit type on their way into shared
//       memory, F32 accumulation. D and F multiples of 8, 16-byte aligned weights. Not chosen by Choose (yet).
//   V6  tensor cores for packed experts only: 64-row tiles, packed weights by cp.async, decoded to BF16 in registers
//       for mma.sync, scales folded in F32 (kernels/ILGpuMoE.Kernels/Quant/QuantGroupedGemmMma.cs).
// Launchers: GroupedGemmKernel<TW> below (V1-V3, float readers), QuantGroupedGemmKernel<TQ> (V2, V4, V6, packed
// readers) and GroupedGemmMmaKernel<TM> (V5). The MoE block (MoeBlock.cs) picks the version through GroupedGemm.Choose
// and permutes with the tile height GroupedGemm.TileRows(version) asks for.
// Index arithmetic is 64-bit wherever it scales with E*F*D, P*F or T*D.
using System.Diagnostics;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe;

/// <summary>The grouped GEMM's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("moe/grouped-gemm")]
public enum GroupedGemmVersion
{
    /// <summary>One thread per output element; ignores the tile schedule. Float experts only.</summary>
    V1Simple = 1,

    /// <summary>32x32 shared-memory tiles (prefill); float and packed experts.</summary>
    V2Tiled = 2,

    /// <summary>Decode form, one warp per weight row over up to 8 rows. Float experts only.</summary>
    V3Gemv = 3,

    /// <summary>V3's decode form over 16-byte units of packed rows. Quantized experts only.</summary>
    V4PackedGemv = 4,

    /// <summary>Tensor cores (mma.sync), 64x64 tiles (prefill). BF16 and F16 experts only.</summary>
    V5Mma = 5,

    /// <summary>Tensor cores (mma.sync BF16) over packed rows decoded in registers, 64-row tiles (prefill). Quantized experts only.</summary>
    V6PackedMma = 6,
}

/// <summary>The grouped GEMM family's choices, shared by the runtime, the tests and the benchmarks.</summary>
public static class GroupedGemm
{
    /// <summary>The tile height a version asks of the permutation's schedule (V1 reads no tiles; it shares V3's).</summary>
    public static int TileRows(GroupedGemmVersion version) => version switch
    {
        GroupedGemmVersion.V1Simple => GroupedGemmKernels.GemvRows,
        GroupedGemmVersion.V2Tiled => GroupedGemmKernels.TileM,
        GroupedGemmVersion.V3Gemv => GroupedGemmKernels.GemvRows,
        GroupedGemmVersion.V4PackedGemv => GroupedGemmKernels.GemvRows,
        GroupedGemmVersion.V5Mma => GroupedGemmMmaKernels.TileM,
        GroupedGemmVersion.V6PackedMma => Quant.QuantGroupedGemmMmaKernels.TileM,
        _ => throw new ArgumentOutOfRangeException(nameof(version), version, "unknown grouped GEMM version"),
    };

    /// <summary>Every version's tile height, once each (the permutations a MoE workspace holds).</summary>
    public static IReadOnlyList<int> AllTileRows { get; } = Enum.GetValues<GroupedGemmVersion>().Select(TileRows).Distinct().Order().ToArray();

    /// <summary>Decode while there are at most ~4 rows per expert on average: then the GEMV forms, else the tiles.</summary>
    public static bool IsDecode(int tokens, int topK, int experts) => (long)tokens * topK <= 4L * experts;

    /// <summary>The version the MoE block runs when the caller names none: V2 for prefill; V3 (float) or V4 (packed) for decode.</summary>
    public static GroupedGemmVersion Choose(int tokens, int topK, int experts, bool packed) =>
        !IsDecode(tokens, topK, experts) ? GroupedGemmVersion.V2Tiled
        : packed ? GroupedGemmVersion.V4PackedGemv : GroupedGemmVersion.V3Gemv;

    /// <summary>The versions with kernels for float experts (GroupedGemmKernel).</summary>
    public static IReadOnlyList<GroupedGemmVersion> FloatVersions { get; } = [GroupedGemmVersion.V1Simple, GroupedGemmVersion.V2Tiled, GroupedGemmVersion.V3Gemv];

    /// <summary>The versions with kernels for packed (quantized) experts (QuantGroupedGemmKernel).</summary>
    public static IReadOnlyList<GroupedGemmVersion> PackedVersions { get; } = [GroupedGemmVersion.V2Tiled, GroupedGemmVersion.V4PackedGemv, GroupedGemmVersion.V6PackedMma];

    /// <summary>The versions with tensor-core kernels for 16-bit experts (GroupedGemmMmaKernel).</summary>
    public static IReadOnlyList<GroupedGemmVersion> MmaVersions { get; } = [GroupedGemmVersion.V5Mma];

    /// <summary>The version an experts step runs: requested if it is one of available, else an ArgumentException; null = Choose.</summary>
    public static GroupedGemmVersion Resolve(string where, GroupedGemmVersion? requested, IReadOnlyList<GroupedGemmVersion> available,
        int tokens, int topK, int experts, bool packed)
    {
        var v = requested ?? Choose(tokens, topK, experts, packed);
        if (!available.Contains(v))
            throw new ArgumentException($"{where}: {v} is not available for {(packed ? "quantized" : "float")} experts ({string.Join(" or ", available)})");
        return v;
    }

    /// <summary>
    /// The launchers' shared checks: stream and permutation given, positive sizes, pairs within the permutation's
    /// capacity, the version one of <paramref name="available"/> and the permutation's tiles no taller than it reads.
    /// Returns P = tokens * topK.
    /// </summary>
    internal static int Validate(string where, AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation,
        int tokens, int topK, int dim, int hidden, IReadOnlyList<GroupedGemmVersion> available)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(permutation);
        if (tokens < 1 || topK < 1 || dim < 1 || hidden < 1)
            throw new ArgumentException($"{where}: tokens ({tokens}), topK ({topK}), dim ({dim}) and hidden ({hidden}) must be >= 1");
        long pairs = (long)tokens * topK;
        if (pairs > permutation.MaxPairs)
            throw new ArgumentException($"{where}: tokens*topK = {pairs} exceeds the permutation's capacity {permutation.MaxPairs}");
        if (!available.Contains(version))
            throw new ArgumentException($"{where}: version {version} is not available here ({string.Join(" or ", available)})");
        int maxRows = version == GroupedGemmVersion.V1Simple ? int.MaxValue : TileRows(version);
        if (permutation.TileRows > maxRows)
            throw new ArgumentException($"{where}: {version} needs tile rows <= {maxRows}, the permutation has {permutation.TileRows}");
        return (int)pairs;
    }

    /// <summary>Grid (tiles of the schedule, ceil(n / outputsPerGroup)) of groups of 256.</summary>
    internal static KernelConfig TileConfig(MoePermutation p, int pairs, int n, int outputsPerGroup) =>
        new(new Index2D(MoePermuteKernel.MaxTiles(pairs, p.Experts, p.TileRows), (n + outputsPerGroup - 1) / outputsPerGroup),
            new Index2D(GroupedGemmKernels.GroupSize, 1));

    internal static void Need(string where, string what, long have, long need)
    {
        if (have < need)
            throw new ArgumentException($"{where}: {what} has {have} elements, needs {need}");
    }
}

public static class GroupedGemmKernels
{
    public const int GroupSize = 256;

    /// <summary>V2 tile: rows, outputs, input-dim step; shared rows padded to 33 floats (no bank conflicts).</summary>
    public const int TileM = 32;
    public const int TileN = 32;
    public const int TileK = 32;
    private const int Ld = TileK + 1;

    /// <summary>V3: rows per tile (accumulators per lane) and outputs (warps) per group.</summary>
    public const int GemvRows = 8;
    public const int GemvWarps = 8;
    private const int RedLd = 33;

    /// <summary>Largest e with offsets[e] &lt;= r: the expert owning sorted row r (empty experts are skipped).</summary>
    private static int FindExpert(ArrayView<int> offsets, int experts, int r)
    {
        int lo = 0, hi = experts - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (offsets[mid] <= r)
                lo = mid;
            else
                hi = mid - 1;
        }

        return lo;
    }

    /// <summary>The (expert, first sorted row, rows) of this group's tile (grid x); Expert -1 for an unused slot.</summary>
    internal readonly struct GroupTile(int expert, int rowStart, int rows)
    {
        public readonly int Expert = expert;
        public readonly int RowStart = rowStart;
        public readonly int Rows = rows;

        public static GroupTile Read(ArrayView<int> tiles, ArrayView<int> offsets, int tileRows)
        {
            int e = tiles[2 * Grid.IdxX];
            if (e < 0)
                return new GroupTile(-1, 0, 0);
            int rowStart = tiles[2 * Grid.IdxX + 1];
            return new GroupTile(e, rowStart, Math.Min(tileRows, offsets[e + 1] - rowStart));
        }
    }

    // ---------------------------------------------------------------- V1

    [KernelInfo(GroupedGemmVersion.V1Simple, "grid (P, ceil(F/256)), group 256", Entry = "up-gate", Summary = "up/gate: one thread per h element, rows through sorted pairs, SiLU(gate)*up fused")]
    public static void UpGateV1<TW>(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, TW w1, TW w3, ArrayView<float> h,
        int experts, int topK, int dim, int hidden, ExpertGlu glu)
        where TW : struct, IWeights
    {
        int r = Grid.IdxX;
        int f = Grid.IdxY * Group.DimX + Group.IdxX;
        if (r >= offsets[experts] || f >= hidden)
            return;
        int e = FindExpert(offsets, experts, r);
        long xb = (long)(sorted[r] / topK) * dim;
        long wb = Index64.StackedRow(e, hidden, f, dim);
        float g = 0f, u = 0f;
        for (int k = 0; k < dim; k++)
        {
            float xv = x[xb + k];
            g += xv * w1.Get(wb + k);
            u += xv * w3.Get(wb + k);
        }

        h[Index64.At(r, hidden, f)] = glu.UpGate(g, u, (long)e * hidden + f);
    }

    [KernelInfo(GroupedGemmVersion.V1Simple, "grid (P, ceil(D/256)), group 256", Entry = "down", Summary = "down: one thread per y element")]
    public static void DownV1<TW>(ArrayView<float> h, ArrayView<int> offsets, TW w2, ArrayView<float> y, int experts, int dim, int hidden, ExpertGlu glu)
        where TW : struct, IWeights
    {
        int r = Grid.IdxX;
        int d = Grid.IdxY * Group.DimX + Group.IdxX;
        if (r >= offsets[experts] || d >= dim)
            return;
        int e = FindExpert(offsets, experts, r);
        long hb = (long)r * hidden;
        long wb = Index64.StackedRow(e, dim, d, hidden);
        float acc = 0f;
        for (int f = 0; f < hidden; f++)
            acc += h[hb + f] * w2.Get(wb + f);
        y[Index64.At(r, dim, d)] = glu.Down(acc, (long)e * dim + d);
    }

    // ---------------------------------------------------------------- V2

    [KernelInfo(GroupedGemmVersion.V2Tiled, "grid (tiles, ceil(F/32)), group 256", QuantizedReaders = true, Entry = "up-gate", Summary = "up/gate: 32x32 shared-memory tiles over the tile schedule, 4 rows x (gate, up) per thread")]
    public static void UpGateV2<TW>(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, TW w1, TW w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows, ExpertGlu glu)
        where TW : struct, IWeights
    {
        var tile = GroupTile.Read(tiles, offsets, tileRows);
        if (tile.Expert < 0)
            return; // unused schedule slot: the whole group leaves before any barrier
        int e = tile.Expert, rowStart = tile.RowStart, rows = tile.Rows;
        int n0 = Grid.IdxY * TileN;
        int tid = Group.IdxX;
        int tx = tid & 31, ty = tid >> 5;

        var xs = SharedMemory.Allocate<float>(TileM * Ld);
        var s1 = SharedMemory.Allocate<float>(TileN * Ld);
        var s3 = SharedMemory.Allocate<float>(TileN * Ld);
        var rowBase = SharedMemory.Allocate<long>(TileM);
        if (tid < TileM)
            rowBase[tid] = tid < rows ? (long)(sorted[rowStart + tid] / topK) * dim : -1;
        Group.Barrier();

        long wExpert = Index64.StackedRow(e, hidden, 0, dim);
        float g0 = 0f, g1 = 0f, g2 = 0f, g3 = 0f, u0 = 0f, u1 = 0f, u2 = 0f, u3 = 0f;
        for (int k0 = 0; k0 < dim; k0 += TileK)
        {
            for (int i = tid; i < TileM * TileK; i += GroupSize)
            {
                int rr = i >> 5, kk = i & 31, k = k0 + kk;
                long b = rowBase[rr];
                // Loads go through a clamped index so no speculated load can leave the buffer.
                bool okX = b >= 0 && k < dim;
                float xv = x[okX ? b + k : 0];
                xs[rr * Ld + kk] = okX ? xv : 0f;
                int n = n0 + rr;
                bool okW = n < hidden && k < dim;
                long wi = okW ? wExpert + (long)n * dim + k : 0;
                float a1 = w1.Get(wi), a3 = w3.Get(wi);
                s1[rr * Ld + kk] = okW ? a1 : 0f;
                s3[rr * Ld + kk] = okW ? a3 : 0f;
            }

            Group.Barrier();
            for (int kk = 0; kk < TileK; kk++)
            {
                float b1 = s1[tx * Ld + kk], b3 = s3[tx * Ld + kk];
                float x0 = xs[ty * Ld + kk], x1 = xs[(ty + 8) * Ld + kk], x2 = xs[(ty + 16) * Ld + kk], x3 = xs[(ty + 24) * Ld + kk];
                g0 += x0 * b1; u0 += x0 * b3;
                g1 += x1 * b1; u1 += x1 * b3;
                g2 += x2 * b1; u2 += x2 * b3;
                g3 += x3 * b1; u3 += x3 * b3;
            }

            Group.Barrier();
        }

        int nOut = n0 + tx;
        if (nOut >= hidden)
            return;
        long hb = (long)rowStart * hidden + nOut;
        long bi = (long)e * hidden + nOut;
        if (ty < rows)
            h[hb + (long)ty * hidden] = glu.UpGate(g0, u0, bi);
        if (ty + 8 < rows)
            h[hb + (long)(ty + 8) * hidden] = glu.UpGate(g1, u1, bi);
        if (ty + 16 < rows)
            h[hb + (long)(ty + 16) * hidden] = glu.UpGate(g2, u2, bi);
        if (ty + 24 < rows)
            h[hb + (long)(ty + 24) * hidden] = glu.UpGate(g3, u3, bi);
    }

    [KernelInfo(GroupedGemmVersion.V2Tiled, "grid (tiles, ceil(D/32)), group 256", QuantizedReaders = true, Entry = "down", Summary = "down: 32x32 shared-memory tiles over the tile schedule, 4 rows per thread")]
    public static void DownV2<TW>(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, TW w2, ArrayView<float> y,
        int dim, int hidden, int tileRows, ExpertGlu glu)
        where TW : struct, IWeights
    {
        var tile = GroupTile.Read(tiles, offsets, tileRows);
        if (tile.Expert < 0)
            return; // unused schedule slot: the whole group leaves before any barrier
        int e = tile.Expert, rowStart = tile.RowStart, rows = tile.Rows;
        int n0 = Grid.IdxY * TileN;
        int tid = Group.IdxX;
        int tx = tid & 31, ty = tid >> 5;

        var hs = SharedMemory.Allocate<float>(TileM * Ld);
        var s2 = SharedMemory.Allocate<float>(TileN * Ld);
        long wExpert = Index64.StackedRow(e, dim, 0, hidden);
        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f;
        for (int k0 = 0; k0 < hidden; k0 += TileK)
        {
            for (int i = tid; i < TileM * TileK; i += GroupSize)
            {
                int rr = i >> 5, kk = i & 31, k = k0 + kk;
                bool okH = rr < rows && k < hidden;
                float hv = h[okH ? (long)(rowStart + rr) * hidden + k : 0];
                hs[rr * Ld + kk] = okH ? hv : 0f;
                int n = n0 + rr;
                bool okW = n < dim && k < hidden;
                float wv = w2.Get(okW ? wExpert + (long)n * hidden + k : 0);
                s2[rr * Ld + kk] = okW ? wv : 0f;
            }

            Group.Barrier();
            for (int kk = 0; kk < TileK; kk++)
            {
                float b = s2[tx * Ld + kk];
                a0 += hs[ty * Ld + kk] * b;
                a1 += hs[(ty + 8) * Ld + kk] * b;
                a2 += hs[(ty + 16) * Ld + kk] * b;
                a3 += hs[(ty + 24) * Ld + kk] * b;
            }

            Group.Barrier();
        }

        int nOut = n0 + tx;
        if (nOut >= dim)
            return;
        long yb = (long)rowStart * dim + nOut;
        long bi = (long)e * dim + nOut;
        if (ty < rows)
            y[yb + (long)ty * dim] = glu.Down(a0, bi);
        if (ty + 8 < rows)
            y[yb + (long)(ty + 8) * dim] = glu.Down(a1, bi);
        if (ty + 16 < rows)
            y[yb + (long)(ty + 16) * dim] = glu.Down(a2, bi);
        if (ty + 24 < rows)
            y[yb + (long)(ty + 24) * dim] = glu.Down(a3, bi);
    }

    // ---------------------------------------------------------------- V3

    [KernelInfo(GroupedGemmVersion.V3Gemv, "grid (tiles, ceil(F/8)), group 256 = 8 warps", Entry = "up-gate", Summary = "up/gate decode form: one warp per (w1, w3) row over up to 8 rows, shared-memory reduction")]
    public static void UpGateV3<TW>(ArrayView<float> x, ArrayView<int> sorted, ArrayView<int> offsets, ArrayView<int> tiles, TW w1, TW w3,
        ArrayView<float> h, int topK, int dim, int hidden, int tileRows, ExpertGlu glu)
        where TW : struct, IWeights
    {
        var tile = GroupTile.Read(tiles, offsets, tileRows);
        if (tile.Expert < 0)
            return; // unused schedule slot: the whole group leaves before any barrier
        int e = tile.Expert, rowStart = tile.RowStart, rows = tile.Rows;
        int warp = Group.IdxX >> 5, lane = Group.IdxX & 31;
        int n = Grid.IdxY * GemvWarps + warp;

        // Row bases; missing rows repeat row 0 (cached, results discarded) so the inner loop has no branches.
        long b0 = (long)(sorted[rowStart] / topK) * dim;
        long b1 = rows > 1 ? (long)(sorted[rowStart + 1] / topK) * dim : b0;
        long b2 = rows > 2 ? (long)(sorted[rowStart + 2] / topK) * dim : b0;
        long b3 = rows > 3 ? (long)(sorted[rowStart + 3] / topK) * dim : b0;
        long b4 = rows > 4 ? (long)(sorted[rowStart + 4] / topK) * dim : b0;
        long b5 = rows > 5 ? (long)(sorted[rowStart + 5] / topK) * dim : b0;
        long b6 = rows > 6 ? (long)(sorted[rowStart + 6] / topK) * dim : b0;
        long b7 = rows > 7 ? (long)(sorted[rowStart + 7] / topK) * dim : b0;

        float g0 = 0f, g1 = 0f, g2 = 0f, g3 = 0f, g4 = 0f, g5 = 0f, g6 = 0f, g7 = 0f;
        float u0 = 0f, u1 = 0f, u2 = 0f, u3 = 0f, u4 = 0f, u5 = 0f, u6 = 0f, u7 = 0f;
        int kEnd = n < hidden ? dim : 0; // a warp past F still reaches the barrier
        long wb = Index64.StackedRow(e, hidden, n, dim);
        if (rows == 1)
        {
            // Decode: one row per expert; skip the seven idle accumulator pairs. The 64-bit indices step with k
            // instead of being rebuilt from it per load: half the SASS per iteration (perf/notes/ptx-review.md).
            long xk = b0 + lane, wk = wb + lane;
            for (int k = lane; k < kEnd; k += 32, xk += 32, wk += 32)
            {
                float xv = x[xk];
                g0 += xv * w1.Get(wk);
                u0 += xv * w3.Get(wk);
            }
        }
        else
        {
            for (int k = lane; k < kEnd; k += 32)
            {
                float a = w1.Get(wb + k), c = w3.Get(wb + k);
                float x0 = x[b0 + k], x1 = x[b1 + k], x2 = x[b2 + k], x3 = x[b3 + k];
                float x4 = x[b4 + k], x5 = x[b5 + k], x6 = x[b6 + k], x7 = x[b7 + k];
                g0 += x0 * a; u0 += x0 * c; g1 += x1 * a; u1 += x1 * c;
                g2 += x2 * a; u2 += x2 * c; g3 += x3 * a; u3 += x3 * c;
                g4 += x4 * a; u4 += x4 * c; g5 += x5 * a; u5 += x5 * c;
                g6 += x6 * a; u6 += x6 * c; g7 += x7 * a; u7 += x7 * c;
            }
        }

        // red[warp][j][lane], j < 8 gate rows, 8..15 up rows.
        var red = SharedMemory.Allocate<float>(GemvWarps * 2 * GemvRows * RedLd);
        int s = warp * 2 * GemvRows * RedLd + lane;
        red[s + 0 * RedLd] = g0; red[s + 1 * RedLd] = g1; red[s + 2 * RedLd] = g2; red[s + 3 * RedLd] = g3;
        red[s + 4 * RedLd] = g4; red[s + 5 * RedLd] = g5; red[s + 6 * RedLd] = g6; red[s + 7 * RedLd] = g7;
        red[s + 8 * RedLd] = u0; red[s + 9 * RedLd] = u1; red[s + 10 * RedLd] = u2; red[s + 11 * RedLd] = u3;
        red[s + 12 * RedLd] = u4; red[s + 13 * RedLd] = u5; red[s + 14 * RedLd] = u6; red[s + 15 * RedLd] = u7;
        Group.Barrier();
        if (lane >= rows || n >= hidden)
            return;
        int gBase = warp * 2 * GemvRows * RedLd + lane * RedLd;
        int uBase = gBase + GemvRows * RedLd;
        float g = 0f, u = 0f;
        for (int j = 0; j < 32; j++)
        {
            g += red[gBase + j];
            u += red[uBase + j];
        }

        h[(long)(rowStart + lane) * hidden + n] = glu.UpGate(g, u, (long)e * hidden + n);
    }

    [KernelInfo(GroupedGemmVersion.V3Gemv, "grid (tiles, ceil(D/8)), group 256 = 8 warps", Entry = "down", Summary = "down decode form: one warp per w2 row over up to 8 rows, shared-memory reduction")]
    public static void DownV3<TW>(ArrayView<float> h, ArrayView<int> offsets, ArrayView<int> tiles, TW w2, ArrayView<float> y,
        int dim, int hidden, int tileRows, ExpertGlu glu)
        where TW : struct, IWeights
    {
        var tile = GroupTile.Read(tiles, offsets, tileRows);
        if (tile.Expert < 0)
            return; // unused schedule slot: the whole group leaves before any barrier
        int e = tile.Expert, rowStart = tile.RowStart, rows = tile.Rows;
        int warp = Group.IdxX >> 5, lane = Group.IdxX & 31;
        int n = Grid.IdxY * GemvWarps + warp;

        long b0 = (long)rowStart * hidden;
        long b1 = rows > 1 ? b0 + hidden : b0;
        long b2 = rows > 2 ? b0 + 2L * hidden : b0;
        long b3 = rows > 3 ? b0 + 3L * hidden : b0;
        long b4 = rows > 4 ? b0 + 4L * hidden : b0;
        long b5 = rows > 5 ? b0 + 5L * hidden : b0;
        long b6 = rows > 6 ? b0 + 6L * hidden : b0;
        long b7 = rows > 7 ? b0 + 7L * hidden : b0;

        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f, a4 = 0f, a5 = 0f, a6 = 0f, a7 = 0f;
        int kEnd = n < dim ? hidden : 0;
        long wb = Index64.StackedRow(e, dim, n, hidden);
        if (rows == 1)
        {
            // 64-bit indices step with k, as in UpGateV3's decode loop.
            long hk = b0 + lane, wk = wb + lane;
            for (int k = lane; k < kEnd; k += 32, hk += 32, wk += 32)
                a0 += h[hk] * w2.Get(wk);
        }
        else
        {
            for (int k = lane; k < kEnd; k += 32)
            {
                float w = w2.Get(wb + k);
                a0 += h[b0 + k] * w; a1 += h[b1 + k] * w; a2 += h[b2 + k] * w; a3 += h[b3 + k] * w;
                a4 += h[b4 + k] * w; a5 += h[b5 + k] * w; a6 += h[b6 + k] * w; a7 += h[b7 + k] * w;
            }
        }

        var red = SharedMemory.Allocate<float>(GemvWarps * GemvRows * RedLd);
        int s = warp * GemvRows * RedLd + lane;
        red[s + 0 * RedLd] = a0; red[s + 1 * RedLd] = a1; red[s + 2 * RedLd] = a2; red[s + 3 * RedLd] = a3;
        red[s + 4 * RedLd] = a4; red[s + 5 * RedLd] = a5; red[s + 6 * RedLd] = a6; red[s + 7 * RedLd] = a7;
        Group.Barrier();
        if (lane >= rows || n >= dim)
            return;
        int rBase = warp * GemvRows * RedLd + lane * RedLd;
        float acc = 0f;
        for (int j = 0; j < 32; j++)
            acc += red[rBase + j];
        y[(long)(rowStart + lane) * dim + n] = glu.Down(acc, (long)e * dim + n);
    }
}

/// <summary>
/// Launcher of the grouped expert GEMMs V1-V3 for one float weight type. Weights are stacked per kind:
/// w1, w3 [E, F, D] and w2 [E, D, F] (HF [out, in] per expert). Rows are the permutation's sorted pairs.
/// </summary>
public sealed class GroupedGemmKernel<TW>
    where TW : struct, IWeights
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int, ExpertGlu> upGateV1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, TW, ArrayView<float>, int, int, int, ExpertGlu> downV1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int, ExpertGlu> upGateV2;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, ArrayView<float>, int, int, int, ExpertGlu> downV2;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int, ExpertGlu> upGateV3;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, ArrayView<float>, int, int, int, ExpertGlu> downV3;

    private GroupedGemmKernel(Accelerator a)
    {
        upGateV1 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int, ExpertGlu>(GroupedGemmKernels.UpGateV1);
        downV1 = a.LoadCounted<ArrayView<float>, ArrayView<int>, TW, ArrayView<float>, int, int, int, ExpertGlu>(GroupedGemmKernels.DownV1);
        upGateV2 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int, ExpertGlu>(GroupedGemmKernels.UpGateV2);
        downV2 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, ArrayView<float>, int, int, int, ExpertGlu>(GroupedGemmKernels.DownV2);
        upGateV3 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, TW, TW, ArrayView<float>, int, int, int, int, ExpertGlu>(GroupedGemmKernels.UpGateV3);
        downV3 = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<int>, TW, ArrayView<float>, int, int, int, ExpertGlu>(GroupedGemmKernels.DownV3);
    }

    public static GroupedGemmKernel<TW> Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>
    /// Pass 1: h [T*K, F] (sorted order; the first offsets[E] rows are written) = silu(x w1^T) * (x w3^T) per expert,
    /// or glu's activation with its gate/up biases (ExpertGlu.cs). x [T, D]; w1, w3 [E*F*D] elements.
    /// </summary>
    public void LaunchUpGate(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, ArrayView<float> x,
        int tokens, int topK, int dim, int hidden, TW w1, TW w3, ArrayView<float> h, ExpertGlu glu = default)
    {
        const string Where = "GroupedGemm.LaunchUpGate";
        int pairs = GroupedGemm.Validate(Where, stream, version, permutation, tokens, topK, dim, hidden, GroupedGemm.FloatVersions);
        GroupedGemm.Need(Where, "x", x.Length, (long)tokens * dim);
        GroupedGemm.Need(Where, "w1", w1.Length, (long)permutation.Experts * hidden * dim);
        GroupedGemm.Need(Where, "w3", w3.Length, (long)permutation.Experts * hidden * dim);
        GroupedGemm.Need(Where, "h", h.Length, (long)pairs * hidden);
        glu.Check(Where, permutation.Experts, hidden, dim);
        var p = permutation;
        switch (version)
        {
            case GroupedGemmVersion.V1Simple:
                upGateV1(stream, new KernelConfig(new Index2D(pairs, Blocks(hidden, GroupedGemmKernels.GroupSize)), new Index2D(GroupedGemmKernels.GroupSize, 1)),
                    x, p.SortedPairs.View, p.Offsets.View, w1, w3, h, p.Experts, topK, dim, hidden, glu);
                break;
            case GroupedGemmVersion.V2Tiled:
                upGateV2(stream, GroupedGemm.TileConfig(p, pairs, hidden, GroupedGemmKernels.TileN),
                    x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, w1, w3, h, topK, dim, hidden, p.TileRows, glu);
                break;
            case GroupedGemmVersion.V3Gemv:
                upGateV3(stream, GroupedGemm.TileConfig(p, pairs, hidden, GroupedGemmKernels.GemvWarps),
                    x, p.SortedPairs.View, p.Offsets.View, p.Tiles.View, w1, w3, h, topK, dim, hidden, p.TileRows, glu);
                break;
            default:
                throw new UnreachableException($"{Where}: {version} passed Validate");
        }
    }

    /// <summary>Pass 2: y [T*K, D] (sorted order) = h w2^T per expert (+ glu's down bias b2[e]). h [T*K, F]; w2 [E*D*F] elements.</summary>
    public void LaunchDown(AcceleratorStream stream, GroupedGemmVersion version, MoePermutation permutation, ArrayView<float> h,
        int tokens, int topK, int dim, int hidden, TW w2, ArrayView<float> y, ExpertGlu glu = default)
    {
        const string Where = "GroupedGemm.LaunchDown";
        int pairs = GroupedGemm.Validate(Where, stream, version, permutation, tokens, topK, dim, hidden, GroupedGemm.FloatVersions);
        GroupedGemm.Need(Where, "h", h.Length, (long)pairs * hidden);
        GroupedGemm.Need(Where, "w2", w2.Length, (long)permutation.Experts * dim * hidden);
        GroupedGemm.Need(Where, "y", y.Length, (long)pairs * dim);
        glu.Check(Where, permutation.Experts, hidden, dim);
        var p = permutation;
        switch (version)
        {
            case GroupedGemmVersion.V1Simple:
                downV1(stream, new KernelConfig(new Index2D(pairs, Blocks(dim, GroupedGemmKernels.GroupSize)), new Index2D(GroupedGemmKernels.GroupSize, 1)),
                    h, p.Offsets.View, w2, y, p.Experts, dim, hidden, glu);
                break;
            case GroupedGemmVersion.V2Tiled:
                downV2(stream, GroupedGemm.TileConfig(p, pairs, dim, GroupedGemmKernels.TileN), h, p.Offsets.View, p.Tiles.View, w2, y, dim, hidden, p.TileRows, glu);
                break;
            case GroupedGemmVersion.V3Gemv:
                downV3(stream, GroupedGemm.TileConfig(p, pairs, dim, GroupedGemmKernels.GemvWarps), h, p.Offsets.View, p.Tiles.View, w2, y, dim, hidden, p.TileRows, glu);
                break;
            default:
                throw new UnreachableException($"{Where}: {version} passed Validate");
        }
    }

    private static int Blocks(int n, int block) => (n + block - 1) / block;
}
