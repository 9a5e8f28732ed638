// decode/router: the T = 1 router of a decode step and its gating in one launch:
//   logits [R] = xs [D] . Wg^T + b,   xs = rmsnorm(x) * g,   then ids [K (+ m)], weights [K (+ m)] = moe/gating(logits)
// (R = E, or E + 1 with Qwen2-MoE's shared-expert gate row stacked last; b gpt-oss's router bias, optional).
//
// Why (perf/NOTES.md, "Decode at the roofline"): the decode step spent two launches per layer here, decode/linear
// for the router (its E rows are one or a few 16-row blocks, so one group streamed the whole [E, D] matrix: Mixtral's
// 64 KB at what one group keeps in flight, ~12 us by the model) and moe/gating V2 (a launch for a few hundred
// instructions). This kernel splits D over groups so the matrix streams from many SMs at once, and routes in the
// epilogue of the group that finishes last: one launch, a few microseconds.
//
// Versions:
//   V1  group (chunk c, row block b): 8 warps x 2 rows of block b (16 rows, as decode/linear), lanes over the 16-byte
//       units of column chunk c (a multiple of 32 units, so its staged columns start on a 32-float boundary and
//       DecodeStaging's padded slots stay conflict-free from there); x normalised and staged whole by each group
//       (DecodePersistent.Prologue: one L2 trip, the norm's scale bit-identical to decode/linear's); per-warp totals
//       go to partials [chunks, R]. Each group then counts itself on a counter (fences as decode/experts V2's down);
//       the last one adds the chunks of every row in chunk order (the same bits whatever the order groups ran in),
//       adds the bias, writes logits, puts the counter back to 0 for the next launch (a CUDA graph replays it as it
//       is), and its warp 0 routes the token with moe/gating V2's per-warp code (GatingKernels.GateWarp): the same
//       selection order, weights and shared slots as the gating launch. Rows longer than one staged tile (D > 4096)
//       take one chunk (decode/linear's restaging path).
//
// Shapes: T = 1; D model dim; E experts, K experts per token, m shared-expert slots; R = router rows (E or E + 1).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe.Gating;

namespace ILGpuMoE.Kernels.Decode;

/// <summary>decode/router's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("decode/router")]
public enum DecodeRouterVersion
{
    /// <summary>Router GEMV split over D across groups, the last group combines in chunk order and routes (gating V2's warp code).</summary>
    V1 = 1,
}

/// <summary>decode/router V1's split of the router's columns and its scratch: Chunks column chunks of ChunkUnits units
/// (a multiple of 32) times Blocks 16-row blocks; Partials [Chunks, R] and Counter [1] (0 between launches).</summary>
public readonly struct RouterSplit(int chunks, int chunkUnits, int blocks, ArrayView<float> partials, ArrayView<int> counter)
{
    public readonly int Chunks = chunks;
    public readonly int ChunkUnits = chunkUnits;
    public readonly int Blocks = blocks;
    public readonly ArrayView<float> Partials = partials;
    public readonly ArrayView<int> Counter = counter;
}

public static class DecodeRouterKernels
{
    [KernelInfo(DecodeRouterVersion.V1, "grid chunks x ceil(R/16) (about SMs groups), group 256 (8 warps x 2 rows)",
        Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["w.Data:16"],
        Summary = "T = 1 router GEMV with the rmsnorm prologue split over D across groups; the last group adds the chunks in order, adds the bias and routes the token (gating V2's warp code)")]
    public static void RouterV1<TU>(TU w, ArrayView<float> x, NormWeights g, float eps, NormWeights bias, RouterSpec spec,
        ArrayView<float> scoreBias, ArrayView<float> logits, ArrayView<int> ids, ArrayView<float> weights, RouterSplit sp)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        var red = SharedMemory.Allocate<float>(DecodeStaging.RedSlots);
        var last = SharedMemory.Allocate<int>(1);
        int rows = w.Rows;
        int chunk = Grid.IdxX / sp.Blocks;
        int block = Grid.IdxX - chunk * sp.Blocks;
        float scale = DecodePersistent.Prologue(w, x, g, eps, xs, slots);
        int r0 = block * DecodeStaging.RowsPerGroup + Warp.WarpIdx * DecodeStaging.RowsPerWarp;
        bool live = r0 < rows;
        // An odd last row: the warp's second stream rereads it and drops the result.
        int r1 = live ? IntrinsicMath.Min(r0 + 1, rows - 1) : 0;
        var ra = w.Row(live ? r0 : 0);
        var rb = w.Row(r1);
        DotPair p;
        if (sp.Chunks == 1)
        {
            p = DecodePersistent.Dot(w, ra, w, rb, live, x, g, scale, xs);
        }
        else
        {
            // Units reads the tile from its first unit: chunk c's columns start at a multiple of 32 floats, where
            // Slot(c0 + j) = Slot(c0) + Slot(j), so the view from Slot(c0) is the chunk's own padded tile.
            int uBegin = chunk * sp.ChunkUnits;
            int uEnd = IntrinsicMath.Min(w.UnitsPerRow, uBegin + sp.ChunkUnits);
            var tile = xs.SubView(DecodeStaging.Slot(uBegin * w.UnitValues));
            p = DecodePersistent.Units(w, ra, w, rb, tile, uBegin, live ? uEnd : uBegin);
        }

        p = DecodeStaging.RowTotals(p, red);
        int lane = Warp.LaneIdx;
        if (live && lane < 2 && r0 + lane < rows)
            sp.Partials[(long)chunk * rows + r0 + lane] = lane == 0 ? p.A : p.B;

        // Publish this group's partials, then count it; the group that counts last combines and routes.
        MemoryFence.DeviceLevel();
        Group.Barrier();
        if (Group.IdxX == 0)
            last[0] = Atomic.Add(ref sp.Counter[0], 1) == Grid.DimX - 1 ? 1 : 0;
        Group.Barrier();
        if (last[0] == 0)
            return;
        MemoryFence.DeviceLevel(); // acquire: the other groups' partials, published before their increments
        for (int r = Group.IdxX; r < rows; r += Group.DimX)
        {
            float v = 0f;
            for (int c = 0; c < sp.Chunks; c++)
                v += sp.Partials[(long)c * rows + r];
            if (bias.Kind != NormWeights.KindNone)
                v += bias.Get(r);
            logits[r] = v;
        }

        if (Group.IdxX == 0)
            sp.Counter[0] = 0; // every group has counted itself: ready for the next launch
        Group.Barrier(); // the logits, written by the whole group, are read by warp 0
        // xs is free (every warp passed the barriers after its dot): warp 0's scores live there.
        int groups = spec.Kind == RouterKind.DeepSeekV3 ? spec.Groups : 0;
        if (Warp.WarpIdx == 0)
            GatingKernels.GateWarp(spec, logits, logits, scoreBias, ids, weights, 0, true, xs.SubView(0, spec.Experts + groups));
    }
}

/// <summary>Launcher for one reader type: <c>DecodeRouterKernel.Create&lt;BF16Units&gt;(accelerator)</c>.</summary>
public static class DecodeRouterKernel
{
    public static DecodeRouterKernel<TU> Create<TU>(Accelerator accelerator)
        where TU : struct, IRowUnits => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>Whether the launch routes a spec: the modes that need only the logits and a DeepSeek-V3 bias
    /// (Switch needs its capacity pass over all tokens, NoisyTopK a second projection for its noise).</summary>
    public static bool Routes(RouterSpec spec) => spec.Kind is RouterKind.Mixtral or RouterKind.SoftmaxTopK or RouterKind.DeepSeekV3;
}

/// <summary>
/// decode/router V1 for reader TU (RowUnits.cs). It uses scratch this launcher owns (<see cref="Reserve"/>), so one
/// instance serves one stream at a time.
/// </summary>
public sealed class DecodeRouterKernel<TU> : IDisposable
    where TU : struct, IRowUnits
{
    private const string Name = "decode/router";

    private readonly Accelerator _accelerator;
    private Action<AcceleratorStream, KernelConfig, TU, ArrayView<float>, NormWeights, float, NormWeights, RouterSpec, ArrayView<float>,
        ArrayView<float>, ArrayView<int>, ArrayView<float>, RouterSplit>? _v1;
    private MemoryBuffer1D<float, Stride1D.Dense>? _partials;
    private MemoryBuffer1D<int, Stride1D.Dense>? _counter;

    internal DecodeRouterKernel(Accelerator accelerator) => _accelerator = accelerator;

    /// <summary>
    /// logits [R] = rmsnorm(x) * norm . W^T (+ bias [R]), then the token's ids / weights [K + m] as moe/gating routes
    /// logits under spec (R = spec.LogitsPerToken = W.Rows). x [D], norm [D] (None: x as it is), scoreBias [E] for
    /// DeepSeekV3 (default otherwise). logits must not overlap x. maxGroups steers the split (0: one group per
    /// multiprocessor). The scratch grows at the first launch of a larger shape: call <see cref="Reserve"/> first when
    /// a CUDA graph will capture the launch. Throws ArgumentException (one line) on a bad shape, spec or view.
    /// </summary>
    public void Launch(AcceleratorStream stream, TU w, ArrayView<float> x, NormWeights norm, float eps, NormWeights bias, RouterSpec spec,
        ArrayView<float> logits, ArrayView<int> ids, ArrayView<float> weights, ArrayView<float> scoreBias = default,
        DecodeRouterVersion version = DecodeRouterVersion.V1, int maxGroups = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (version != DecodeRouterVersion.V1)
            throw new ArgumentException($"{Name}: unknown version {version}", nameof(version));
        if (!DecodeRouterKernel.Routes(spec))
            throw new ArgumentException($"{Name}: the {spec.Kind} router is not routed here (Mixtral, SoftmaxTopK and DeepSeekV3 are)", nameof(spec));
        GatingKernel.Validate(spec, 1, logits, ids, weights, default, scoreBias);
        if (maxGroups < 0)
            throw new ArgumentException($"{Name}: maxGroups must be >= 0 (0: one group per multiprocessor), got {maxGroups}", nameof(maxGroups));
        int rows = w.Rows, cols = w.Cols;
        if (rows != spec.LogitsPerToken || cols < 1)
            throw new ArgumentException($"{Name}: the router matrix is [{rows}, {cols}], the spec needs {spec.LogitsPerToken} rows", nameof(w));
        if (!bias.IsNone && bias.Length < rows)
            throw new ArgumentException($"{Name}: bias has {bias.Length} elements, needs R = {rows}", nameof(bias));
        DecodeStaging.CheckInput(Name, x, norm, eps, cols);
        DecodeStaging.RequireDisjoint(Name, "x", x.SubView(0, cols), "logits", logits.SubView(0, rows));
        var (chunks, chunkUnits, blocks) = Split(w, maxGroups);
        EnsureScratch(stream, (long)chunks * rows);
        var sp = new RouterSplit(chunks, chunkUnits, blocks, _partials!.View, _counter!.View);
        // The kernel takes a real view for the unused DeepSeek bias: logits stands in (never read then).
        var sb = spec.Kind == RouterKind.DeepSeekV3 ? scoreBias : logits;
        _v1 ??= _accelerator.LoadCounted<TU, ArrayView<float>, NormWeights, float, NormWeights, RouterSpec, ArrayView<float>, ArrayView<float>,
            ArrayView<int>, ArrayView<float>, RouterSplit>(DecodeRouterKernels.RouterV1);
        _v1(stream, new KernelConfig(chunks * blocks, DecodeStaging.GroupSize), w, x, norm, eps, bias, spec, sb, logits, ids, weights, sp);
    }

    /// <summary>The split: column chunks (each a multiple of 32 units; one when a row is longer than a staged tile),
    /// units per chunk and 16-row blocks, for about maxGroups groups (0: one per multiprocessor).</summary>
    public (int Chunks, int ChunkUnits, int Blocks) Split(TU w, int maxGroups = 0)
    {
        int blocks = (w.Rows + DecodeStaging.RowsPerGroup - 1) / DecodeStaging.RowsPerGroup;
        int units = w.UnitsPerRow;
        if ((long)units * w.UnitValues > DecodeStaging.TileCols)
            return (1, units, blocks);
        int target = maxGroups > 0 ? maxGroups : _accelerator.NumMultiprocessors;
        int most = (units + 31) / 32;
        int want = Math.Clamp(target / blocks, 1, most);
        int chunkUnits = ((units + want - 1) / want + 31) / 32 * 32;
        return ((units + chunkUnits - 1) / chunkUnits, chunkUnits, blocks);
    }

    /// <summary>Allocates the scratch for router w's split now (maxGroups as for the launch; a captured graph must
    /// not allocate).</summary>
    public void Reserve(AcceleratorStream stream, TU w, int maxGroups = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (w.Rows < 1 || w.Cols < 1)
            throw new ArgumentException($"{Name}: the router matrix is [{w.Rows}, {w.Cols}]", nameof(w));
        EnsureScratch(stream, (long)Split(w, maxGroups).Chunks * w.Rows);
    }

    public void Dispose()
    {
        _partials?.Dispose();
        _counter?.Dispose();
        _partials = null;
        _counter = null;
    }

    private void EnsureScratch(AcceleratorStream stream, long partials)
    {
        if (_partials != null && _partials.Length >= partials)
            return;
        // Earlier launches on this stream may still use the old buffers.
        stream.Synchronize();
        long p = Math.Max(partials, _partials?.Length ?? 0);
        Dispose();
        _partials = _accelerator.Allocate1D<float>(p);
        _counter = _accelerator.Allocate1D<int>(1);
        // The counter starts at 0; every launch's last group puts it back to 0.
        _counter.View.MemSetToZero(stream);
    }
}
