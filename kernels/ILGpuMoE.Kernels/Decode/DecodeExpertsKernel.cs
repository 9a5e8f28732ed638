// decode/experts: the MoE block of a T = 1 decode step as two launches, no permutation (the K expert ids of the one
// token are read directly; id -1 is a dropped pair and is skipped):
//   up-gate  h [K, F]:  h[k, f] = silu(W1[e_k*F + f] . xs) * (W3[e_k*F + f] . xs),  xs = rmsnorm(x) * g,  e_k = ids[k]
//   down     out [D]:   out[d] = residual[d] + sum over k with e_k >= 0, in k order, of weight[k] * (W2[e_k*D + d] . h[k, :])
// = Mixtral's expert w2(silu(w1 x) * w3 x), weighted and summed over the token's experts (RefMoe.MoeBlock), plus the
// residual (the combine and the residual add are the down projection's epilogue).
// Both launches take an ExpertGlu (Moe/GroupedGemm/ExpertGlu.cs): gpt-oss's clamped GLU with gate/up biases in the
// up-gate epilogue, its down bias b2[e_k] added to pair k's product (weighted with it) in the down pass; the default
// is the SiLU above with no bias, the same code path as before the option.
//
// Versions:
//   V1  up-gate: grid K * ceil(F / 8), group 256; warp w of group (k, j) owns f = 8j + w and streams the gate row
//       (W1) and the up row (W3) of the same f as its two rows (R = 2), 16-byte units, xs staged once per group in
//       padded shared memory (DecodeStaging.cs). A group of a dropped pair writes its 8 h values as 0 (never read by
//       down, but defined) and returns before any barrier (the condition is uniform per group).
//       down: grid ceil(D / 16), group 256; warp w owns rows d, d + 1 and loops over the K pairs in k order: h[k, :]
//       is staged tile by tile (F = 14,336 is four tiles), each lane accumulates weight[k] * its partial dot products
//       in registers, the lanes' sums are added once at the end (fixed order), and lanes 0/1 write residual + sum:
//       deterministic, no atomics. residual may alias out (each element is read and written by the same lane).
//   V2  persistent groups (DecodePersistent.cs), 8 loads in flight per lane (packed: pipelined), per-warp totals.
//       up-gate: grid min(K * ceil(F / 8), SMs x resident), each group normalises and stages xs once and loops over
//       V1's (k, 8 f) blocks.
//       down: F split over groups. Slice s = (k, c) is column tile c (TileCols wide) of pair k; chunk r is ChunkRows
//       rows of d (a multiple of 32: with D a multiple of 32, as every family's is, no 128-byte line of partials is
//       shared by two chunks, so no combining group reads a line another chunk's combine cached). Group (r, s) stages h[k, tile c]
//       once and streams its rows' units of that tile into partials [K * C, D] (no weight yet), then fences and counts
//       itself on chunk r's counter; the group that counts last combines the chunk: out[d] = residual[d] + sum over k in
//       k order (dropped pairs skipped) of weight[k] * (sum over c in order of partials[k * C + c, d] + b2[e_k, d]), and
//       puts the counter back to 0 for the next launch (a CUDA graph replays the launch as it is). The combine's order
//       does not depend on which group is last: deterministic. Why split: V1's 16-row groups each walk the whole K * F
//       (2 x 14,336 for Mixtral: 256 groups of 917 KB on 132 SMs, a 1.55-wave tail); V2's chunks x slices fill the
//       device once with groups that stage x once. Scratch (partials, counters) is the launcher's (ReserveDown).
//   Ids outside [-1, E) would index outside the stacked weights: the kernels treat them like -1 (the gating kernels
//   never produce them; the reference rejects them).
//
// Shapes: T = 1; E experts, K pairs (top-k), D model dim, F expert hidden; W1, W3 [E*F, D]; W2 [E*D, F]; G and V unused.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;

namespace ILGpuMoE.Kernels.Decode;

/// <summary>decode/experts's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("decode/experts")]
public enum DecodeExpertsVersion
{
    /// <summary>Up-gate (norm prologue, gate and up rows per warp) and down (+ combine + residual), ids read directly.</summary>
    V1 = 1,

    /// <summary>Persistent up-gate (xs staged once per group); down split over F with a last-group combine.</summary>
    V2 = 2,
}

/// <summary>
/// decode/experts V2 down's split (DecodeExpertsKernel.cs): K pairs of C column tiles each (slices K * C), chunks of
/// ChunkRows rows of D; Partials [K * C, D] and Counters [chunks] are the launcher's scratch (counters 0 between launches).
/// </summary>
public readonly struct DownSplit(int topK, int dim, int tiles, int chunkRows, ArrayView<float> partials, ArrayView<int> counters)
{
    public readonly int TopK = topK;
    public readonly int Dim = dim;
    public readonly int Tiles = tiles;
    public readonly int ChunkRows = chunkRows;
    public readonly ArrayView<float> Partials = partials;
    public readonly ArrayView<int> Counters = counters;

    public int Slices => TopK * Tiles;
}

public static class DecodeExpertsKernels
{
    [KernelInfo(DecodeExpertsVersion.V1, "grid K*ceil(F/8), group 256 (8 warps: gate and up row of one f each)", Entry = "up-gate",
        Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["w1.Data:16", "w3.Data:16"],
        Summary = "T = 1 experts up-gate: rmsnorm prologue, h = silu(W1 xs) * (W3 xs) for the token's K experts, 16-byte units")]
    public static void UpGateV1<TU>(TU w1, TU w3, ArrayView<int> ids, ArrayView<float> x, NormWeights g, float eps,
        ArrayView<float> h, int hidden, int groupsPerPair, ExpertGlu glu)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        int k = Grid.IdxX / groupsPerPair;
        int f = (Grid.IdxX - k * groupsPerPair) * DecodeStaging.Warps + Warp.WarpIdx;
        int e = ids[k];
        long hi = (long)k * hidden + f;
        bool live = f < hidden;
        if (e < 0 || (long)(e + 1) * hidden > w1.Rows)
        {
            if (live && Warp.IsFirstLane)
                h[hi] = 0f;
            return;
        }

        int cols = w1.Cols;
        float scale = g.Kind != NormWeights.KindNone ? DecodeStaging.NormScale(x, cols, eps, slots) : 1f;
        long row = (long)e * hidden + (live ? f : 0);
        var p = DecodeStaging.RowTotals(DecodeStaging.DotRows(w1, w1.Row(row), w3, w3.Row(row), live, x, cols, g, scale, xs), xs);
        if (live && Warp.IsFirstLane)
            h[hi] = glu.UpGate(p.A, p.B, row);
    }

    [KernelInfo(DecodeExpertsVersion.V1, "grid ceil(D/16), group 256 (8 warps x 2 rows of d)", Entry = "down",
        Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["w2.Data:16"],
        Summary = "T = 1 experts down: out = residual + sum_k weight_k * W2[e_k] h_k in k order, h staged by tiles, 16-byte units")]
    public static void DownV1<TU>(TU w2, ArrayView<int> ids, ArrayView<float> weights, ArrayView<float> h,
        ArrayView<float> residual, ArrayView<float> output, int topK, int dim, ExpertGlu glu)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        int hidden = w2.Cols;
        int r0 = Grid.IdxX * DecodeStaging.RowsPerGroup + Warp.WarpIdx * DecodeStaging.RowsPerWarp;
        bool live = r0 < dim;
        int r1 = live ? IntrinsicMath.Min(r0 + 1, dim - 1) : 0;
        float s0 = 0f, s1 = 0f;
        for (int k = 0; k < topK; k++)
        {
            int e = ids[k];
            // Uniform per group (every thread reads the same id): dropped pairs skip their barriers together.
            if (e < 0 || (long)(e + 1) * dim > w2.Rows)
                continue;
            long b = (long)e * dim;
            var p = DecodeStaging.DotRows(w2, w2.Row(b + (live ? r0 : 0)), w2, w2.Row(b + r1), live,
                h.SubView((long)k * hidden, hidden), hidden, NormWeights.None, 1f, xs);
            float wk = weights[k];
            s0 += wk * p.A;
            s1 += wk * p.B;
            // The down bias joins lane 0's partial, weighted like the pair's product (uniform branch: one flag per launch).
            if (glu.HasDownBias != 0 && live && Warp.LaneIdx == 0)
            {
                s0 += wk * glu.DownBias[b + r0];
                s1 += wk * glu.DownBias[b + r1];
            }
        }

        // The pairs' weighted lane partials, added across lanes once (the sum is linear in them).
        var t = DecodeStaging.RowTotals(new DotPair(s0, s1), xs);
        int lane = Warp.LaneIdx;
        if (live && lane < 2 && r0 + lane < dim)
        {
            int r = r0 + lane;
            output[r] = residual[r] + (lane == 0 ? t.A : t.B);
        }
    }
    [KernelInfo(DecodeExpertsVersion.V2, "grid min(K*ceil(F/8), SMs x resident groups), group 256 (8 warps: gate and up row of one f each)",
        Entry = "up-gate", Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["w1.Data:16", "w3.Data:16"],
        Summary = "T = 1 experts up-gate in persistent groups: rmsnorm and staging once per group, 8 loads in flight per lane (packed: pipelined), per-warp totals")]
    public static void UpGateV2<TU>(TU w1, TU w3, ArrayView<int> ids, ArrayView<float> x, NormWeights g, float eps,
        ArrayView<float> h, int hidden, int blocksPerPair, int topK, ExpertGlu glu)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        var red = SharedMemory.Allocate<float>(DecodeStaging.RedSlots);
        float scale = DecodePersistent.Prologue(w1, x, g, eps, xs, slots);
        int blocks = topK * blocksPerPair;
        for (int b = Grid.IdxX; b < blocks; b += Grid.DimX)
        {
            int k = b / blocksPerPair;
            int f = (b - k * blocksPerPair) * DecodeStaging.Warps + Warp.WarpIdx;
            int e = ids[k];
            long hi = (long)k * hidden + f;
            bool live = f < hidden;
            // Uniform per block (every thread reads the same id): a dropped pair's block skips any restaging together.
            if (e < 0 || (long)(e + 1) * hidden > w1.Rows)
            {
                if (live && Warp.IsFirstLane)
                    h[hi] = 0f;
                continue;
            }

            long row = (long)e * hidden + (live ? f : 0);
            var p = DecodeStaging.RowTotals(DecodePersistent.Dot(w1, w1.Row(row), w3, w3.Row(row), live, x, g, scale, xs), red);
            if (live && Warp.IsFirstLane)
                h[hi] = glu.UpGate(p.A, p.B, row);
        }
    }

    [KernelInfo(DecodeExpertsVersion.V2, "grid chunks x K*C slices (about SMs x resident groups), group 256 (8 warps x 2 rows of d per step)",
        Entry = "down", Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["w2.Data:16"],
        Summary = "T = 1 experts down split over F: each group stages one h tile once and streams its chunk's rows into partials; the last group of a chunk combines in k order")]
    public static void DownV2<TU>(TU w2, ArrayView<int> ids, ArrayView<float> weights, ArrayView<float> h,
        ArrayView<float> residual, ArrayView<float> output, DownSplit sp, ExpertGlu glu)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        var red = SharedMemory.Allocate<float>(DecodeStaging.RedSlots);
        var last = SharedMemory.Allocate<int>(1);
        int slices = sp.Slices, dim = sp.Dim;
        int chunk = Grid.IdxX / slices;
        int slice = Grid.IdxX - chunk * slices;
        int k = slice / sp.Tiles;
        int c0 = (slice - k * sp.Tiles) * DecodeStaging.TileCols;
        int rBegin = chunk * sp.ChunkRows;
        int rEnd = IntrinsicMath.Min(dim, rBegin + sp.ChunkRows);
        int hidden = w2.Cols, uv = w2.UnitValues;
        int e = ids[k];
        // Uniform per group: a dropped pair's slices write nothing (the combine skips them) but still count themselves.
        if (e >= 0 && (long)(e + 1) * dim <= w2.Rows)
        {
            int len = IntrinsicMath.Min(DecodeStaging.TileCols, w2.UnitsPerRow * uv - c0);
            DecodePersistent.StageWide(h.SubView((long)k * hidden, hidden), hidden, c0, len, NormWeights.None, 0f, xs, red);
            int uBegin = c0 / uv, uEnd = (c0 + len) / uv;
            long b = (long)e * dim;
            long part = (long)slice * dim;
            // Warps walk their row pairs independently (per-warp totals): no group barrier in this loop.
            for (int r0 = rBegin + Warp.WarpIdx * DecodeStaging.RowsPerWarp; r0 < rEnd; r0 += DecodeStaging.RowsPerGroup)
            {
                int r1 = IntrinsicMath.Min(r0 + 1, rEnd - 1);
                var p = DecodeStaging.RowTotals(DecodePersistent.Units(w2, w2.Row(b + r0), w2, w2.Row(b + r1), xs, uBegin, uEnd), red);
                int lane = Warp.LaneIdx;
                if (lane < 2 && r0 + lane < rEnd)
                    sp.Partials[part + r0 + lane] = lane == 0 ? p.A : p.B;
            }
        }

        // Publish this group's partials, then count it; the group that completes the chunk combines it.
        MemoryFence.DeviceLevel();
        Group.Barrier();
        if (Group.IdxX == 0)
            last[0] = Atomic.Add(ref sp.Counters[chunk], 1) == slices - 1 ? 1 : 0;
        Group.Barrier();
        if (last[0] == 0)
            return;
        MemoryFence.DeviceLevel(); // acquire: the other groups' partials, published before their increments
        for (int r = rBegin + Group.IdxX; r < rEnd; r += Group.DimX)
        {
            float acc = 0f;
            for (int kk = 0; kk < sp.TopK; kk++)
            {
                int ek = ids[kk];
                if (ek < 0 || (long)(ek + 1) * dim > w2.Rows)
                    continue;
                float dot = 0f;
                long p0 = (long)kk * sp.Tiles * dim + r;
                for (int c = 0; c < sp.Tiles; c++)
                    dot += sp.Partials[p0 + (long)c * dim];
                if (glu.HasDownBias != 0)
                    dot += glu.DownBias[(long)ek * dim + r];
                acc += weights[kk] * dot;
            }

            output[r] = residual[r] + acc;
        }

        if (Group.IdxX == 0)
            sp.Counters[chunk] = 0; // every slice of this chunk has counted itself: ready for the next launch
    }
}

/// <summary>Launcher for one reader type: <c>DecodeExpertsKernel.Create&lt;BF16Units&gt;(accelerator)</c>.</summary>
public static class DecodeExpertsKernel
{
    public static DecodeExpertsKernel<TU> Create<TU>(Accelerator accelerator)
        where TU : struct, IRowUnits => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));
}

/// <summary>
/// decode/experts V1 and V2 for reader TU (RowUnits.cs): the T = 1 MoE block in two launches, up-gate then down. V2's
/// down uses scratch this launcher owns (<see cref="ReserveDown"/>), so one instance serves one stream at a time.
/// </summary>
public sealed class DecodeExpertsKernel<TU> : IDisposable
    where TU : struct, IRowUnits
{
    private const string Name = "DecodeExperts";

    private readonly Accelerator _accelerator;
    private Action<AcceleratorStream, KernelConfig, TU, TU, ArrayView<int>, ArrayView<float>, NormWeights, float, ArrayView<float>, int, int, ExpertGlu>? _upGate;
    private Action<AcceleratorStream, KernelConfig, TU, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ExpertGlu>? _down;
    private Action<AcceleratorStream, KernelConfig, TU, TU, ArrayView<int>, ArrayView<float>, NormWeights, float, ArrayView<float>, int, int, int, ExpertGlu>? _upGateV2;
    private Action<AcceleratorStream, KernelConfig, TU, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, DownSplit, ExpertGlu>? _downV2;
    private int _upGateResident, _downResident;
    private MemoryBuffer1D<float, Stride1D.Dense>? _partials;
    private MemoryBuffer1D<int, Stride1D.Dense>? _counters;

    internal DecodeExpertsKernel(Accelerator accelerator) => _accelerator = accelerator;

    /// <summary>
    /// h [K, F] = silu(W1[e_k] xs) * (W3[e_k] xs), xs = rmsnorm(x) * norm (eps) or x when norm is None; w1, w3 [E*F, D]
    /// stacked, ids [K] (-1 = dropped: its row of h is written as 0). h must not overlap x. glu: the activation and gate/up
    /// biases (Moe/GroupedGemm/ExpertGlu.cs; default SiLU, none). version V2 (the default) or V1; maxGroups caps V2's
    /// grid (0: the device's multiprocessors x resident groups).
    /// </summary>
    public void LaunchUpGate(AcceleratorStream stream, ArrayView<float> x, NormWeights norm, float eps, TU w1, TU w3,
        ArrayView<int> ids, int topK, int hidden, ArrayView<float> h, ExpertGlu glu = default,
        DecodeExpertsVersion version = DecodeExpertsVersion.V2, int maxGroups = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (topK < 1 || hidden < 1)
            throw new ArgumentException($"{Name}: topK ({topK}) and hidden F ({hidden}) must be >= 1");
        CheckMaxGroups(maxGroups);
        if (w1.Rows != w3.Rows || w1.Cols != w3.Cols)
            throw new ArgumentException($"{Name}: w1 [{w1.Rows}, {w1.Cols}] and w3 [{w3.Rows}, {w3.Cols}] differ", nameof(w3));
        if (w1.Rows % hidden != 0)
            throw new ArgumentException($"{Name}: w1 has {w1.Rows} rows, not whole experts of F = {hidden}", nameof(w1));
        int dim = w1.Cols;
        DecodeStaging.CheckInput(Name, x, norm, eps, dim);
        glu.Check(Name, w1.Rows / hidden, hidden, dim);

        if (ids.Length < topK)
            throw new ArgumentException($"{Name}: ids has {ids.Length} elements, needs K = {topK}", nameof(ids));
        if (h.Length < (long)topK * hidden)
            throw new ArgumentException($"{Name}: h has {h.Length} elements, needs K*F = {(long)topK * hidden}", nameof(h));
        DecodeStaging.RequireDisjoint(Name, "x", x.SubView(0, dim), "h", h.SubView(0, (long)topK * hidden));
        int perPair = (hidden + DecodeStaging.Warps - 1) / DecodeStaging.Warps;
        if ((long)topK * perPair > int.MaxValue)
            throw new ArgumentException($"{Name}: K = {topK} x F = {hidden} is too large for one launch");
        switch (version)
        {
            case DecodeExpertsVersion.V1:
                _upGate ??= _accelerator.LoadCounted<TU, TU, ArrayView<int>, ArrayView<float>, NormWeights, float, ArrayView<float>, int, int, ExpertGlu>(DecodeExpertsKernels.UpGateV1);
                _upGate(stream, new KernelConfig(topK * perPair, DecodeStaging.GroupSize), w1, w3, ids, x, norm, eps, h, hidden, perPair, glu);
                break;
            case DecodeExpertsVersion.V2:
                _upGateV2 ??= _accelerator.LoadCounted<TU, TU, ArrayView<int>, ArrayView<float>, NormWeights, float, ArrayView<float>, int, int, int, ExpertGlu>(
                    DecodeExpertsKernels.UpGateV2, DecodeStaging.GroupSize, out _upGateResident);
                int grid = DecodePersistent.Groups((long)topK * perPair, maxGroups > 0 ? maxGroups : _accelerator.NumMultiprocessors * _upGateResident);
                _upGateV2(stream, new KernelConfig(grid, DecodeStaging.GroupSize), w1, w3, ids, x, norm, eps, h, hidden, perPair, topK, glu);
                break;
            default:
                throw new ArgumentException($"{Name}: unknown version {version}", nameof(version));
        }
    }

    /// <summary>
    /// output [D] = residual [D] + sum over k (e_k = ids[k] &gt;= 0, in k order) of weights[k] * W2[e_k] h[k, :];
    /// w2 [E*D, F] stacked, h [K, F], weights [K]. residual may be the same view as output; h must not overlap it.
    /// glu's down bias b2 [E, D] (if any) is added to each pair's product before its weight. version V2 (the default)
    /// or V1; maxGroups steers V2's split (0: the device's multiprocessors x resident groups). V2's scratch grows at the
    /// first launch of a larger shape: call <see cref="ReserveDown"/> first when a CUDA graph will capture the launch.
    /// </summary>
    public void LaunchDown(AcceleratorStream stream, ArrayView<float> h, TU w2, ArrayView<int> ids, ArrayView<float> weights,
        int topK, int dim, ArrayView<float> residual, ArrayView<float> output, ExpertGlu glu = default,
        DecodeExpertsVersion version = DecodeExpertsVersion.V2, int maxGroups = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (topK < 1 || dim < 1)
            throw new ArgumentException($"{Name}: topK ({topK}) and D ({dim}) must be >= 1");
        CheckMaxGroups(maxGroups);
        if (w2.Rows % dim != 0)
            throw new ArgumentException($"{Name}: w2 has {w2.Rows} rows, not whole experts of D = {dim}", nameof(w2));
        int hidden = w2.Cols;
        glu.Check(Name, w2.Rows / dim, hidden, dim);
        if (h.Length < (long)topK * hidden)
            throw new ArgumentException($"{Name}: h has {h.Length} elements, needs K*F = {(long)topK * hidden}", nameof(h));
        if (ids.Length < topK || weights.Length < topK)
            throw new ArgumentException($"{Name}: ids ({ids.Length}) and weights ({weights.Length}) need K = {topK} elements");
        if (residual.Length < dim || output.Length < dim)
            throw new ArgumentException($"{Name}: residual ({residual.Length}) and output ({output.Length}) need D = {dim} elements");
        DecodeStaging.RequireDisjoint(Name, "h", h.SubView(0, (long)topK * hidden), "output", output.SubView(0, dim));
        switch (version)
        {
            case DecodeExpertsVersion.V1:
                _down ??= _accelerator.LoadCounted<TU, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ExpertGlu>(DecodeExpertsKernels.DownV1);
                int groups = (dim + DecodeStaging.RowsPerGroup - 1) / DecodeStaging.RowsPerGroup;
                _down(stream, new KernelConfig(groups, DecodeStaging.GroupSize), w2, ids, weights, h, residual, output, topK, dim, glu);
                break;
            case DecodeExpertsVersion.V2:
                var (tiles, chunkRows, chunks) = Split(topK, w2, dim, maxGroups);
                EnsureScratch(stream, (long)topK * tiles * dim, DownCounters(dim));
                var sp = new DownSplit(topK, dim, tiles, chunkRows, _partials!.View, _counters!.View);
                _downV2!(stream, new KernelConfig(chunks * topK * tiles, DecodeStaging.GroupSize), w2, ids, weights, h, residual, output, sp, glu);
                break;
            default:
                throw new ArgumentException($"{Name}: unknown version {version}", nameof(version));
        }
    }

    /// <summary>Allocates V2 down's scratch for K pairs, F hidden and D rows now (a captured graph must not allocate).</summary>
    public void ReserveDown(AcceleratorStream stream, int topK, int hidden, int dim)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (topK < 1 || hidden < 1 || dim < 1)
            throw new ArgumentException($"{Name}: ReserveDown needs K ({topK}), F ({hidden}) and D ({dim}) >= 1");
        long tiles = ((long)hidden + DecodeStaging.TileCols - 1) / DecodeStaging.TileCols + 1; // any unit width's padding
        EnsureScratch(stream, topK * tiles * dim, DownCounters(dim));
    }

    /// <summary>V2 down's split: column tiles per pair, rows per chunk (a multiple of 32) and chunks, for about
    /// maxGroups (or the device's resident groups) groups in all.</summary>
    public (int Tiles, int ChunkRows, int Chunks) Split(int topK, TU w2, int dim, int maxGroups = 0)
    {
        _downV2 ??= _accelerator.LoadCounted<TU, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, DownSplit, ExpertGlu>(
            DecodeExpertsKernels.DownV2, DecodeStaging.GroupSize, out _downResident);
        int target = maxGroups > 0 ? maxGroups : _accelerator.NumMultiprocessors * _downResident;
        int tiles = (int)(((long)w2.UnitsPerRow * w2.UnitValues + DecodeStaging.TileCols - 1) / DecodeStaging.TileCols);
        long slices = (long)topK * tiles;
        int maxChunks = (dim + 31) / 32;
        int want = (int)Math.Clamp(target / slices, 1, maxChunks);
        int chunkRows = ((dim + want - 1) / want + 31) / 32 * 32;
        int chunks = (dim + chunkRows - 1) / chunkRows;
        if (slices * chunks > int.MaxValue)
            throw new ArgumentException($"{Name}: K = {topK} x {tiles} tiles x {chunks} chunks is too large for one launch");
        return (tiles, chunkRows, chunks);
    }

    public void Dispose()
    {
        _partials?.Dispose();
        _counters?.Dispose();
        _partials = null;
        _counters = null;
    }

    // One counter per possible chunk (chunks of at least 32 rows).
    private static long DownCounters(int dim) => (dim + 31) / 32;

    private static void CheckMaxGroups(int maxGroups)
    {
        if (maxGroups < 0)
            throw new ArgumentException($"{Name}: maxGroups must be >= 0 (0: the device's resident groups), got {maxGroups}", nameof(maxGroups));
    }

    private void EnsureScratch(AcceleratorStream stream, long partials, long counters)
    {
        if (_partials != null && _partials.Length >= partials && _counters!.Length >= counters)
            return;
        // Earlier launches on this stream may still use the old buffers.
        stream.Synchronize();
        long p = Math.Max(partials, _partials?.Length ?? 0), c = Math.Max(counters, _counters?.Length ?? 0);
        Dispose();
        _partials = _accelerator.Allocate1D<float>(p);
        _counters = _accelerator.Allocate1D<int>(c);
        // The completion counters start at 0; every launch's combining groups put them back to 0.
        _counters.View.MemSetToZero(stream);
    }
}
