// decode/qkv-rope: the T = 1 q, k, v projections of a decode step with RoPE and the KV-cache append in their epilogue,
// one launch where the decode step ran two (decode/linear V2, then attention/rope-append V1):
//   q [H*Dh] = rope(clamp(xs . Wq^T + bq, -c, c), pos)                       written to q
//   kCache[h, pos, :] = rope(clamp(xs . Wk^T + bk, -c, c), pos)[h]           h < Hkv
//   vCache[h, pos, :] = clamp(xs . Wv^T + bv, -c, c)[h]
// with xs = rmsnorm(x) * g (or x), pos = positions[0] read from device memory (a CUDA graph replays the launch per
// token), b_m an optional bias per matrix and c the launch's clip (+inf for none): decode/linear's epilogue, then the
// rotation, the order of the two launches it replaces. The k and v projections themselves are never stored: after the
// append nothing in the decode step reads them (attention v3-decode reads q and the cache rows).
//
// Versions:
//   V1  decode/linear V2's persistent groups (DecodePersistent.cs: x normalised and staged once per group, 16-row
//       blocks, 8 loads in flight per lane, per-warp totals), with the rows of a warp chosen so that the warp holds
//       what its epilogue needs: warp slot s of a matrix (block * 8 + warp) is head s / (Dh/2), pair i = s mod (Dh/2),
//       rows (Lo(i), Hi(i)) of that head, rotate-half (i, i + d/2) at the spec's offset for i < d/2; slots past the
//       rotary pairs take two of the unrotated dims (partial rotary), as attention/rope-append V1 pairs them. Both totals
//       reach every lane (DecodeStaging.RowTotals), so lane 0 adds the biases, clips, rotates the pair with the
//       rope-append's expressions (RopeKernel.Angle on the same inv_freq table, RotatePair) and stores both values.
//       A row's dot is the same sequence of loads and adds whatever row it is paired with, so on one device q and the
//       cache rows are bit for bit decode/linear V2 followed by attention/rope-append V1 (the tests check it).
//       No per-head q/k norm (Qwen3), no norm over the whole projection (OLMoE), no interleaved pairs: the launcher
//       refuses them (Refusal) and the decode plan keeps the two launches there.
//
// Position outside [0, maxSeq): the runtime checks positions on the host; the kernel cannot report, so it writes q
// unrotated and leaves the cache alone (what the two launches it replaces do): never a write out of bounds.
//
// Shapes: T = 1; D model dim; H query heads, Hkv kv heads, Dh head dim (even); q rows H*Dh, k and v rows Hkv*Dh;
// caches [Hkv, maxSeq, Dh] (kernels/ILGpuMoE.Kernels/Attention/AttentionKernel.cs, KvCacheLayout).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Decode;

/// <summary>decode/qkv-rope's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("decode/qkv-rope")]
public enum DecodeQkvRopeVersion
{
    /// <summary>decode/linear V2's q, k, v with the rotation and the KV append in the epilogue, a warp per rotation pair.</summary>
    V1 = 1,
}

/// <summary>The rotation and the cache of a decode/qkv-rope launch (one kernel parameter).</summary>
public struct QkvRopeCache
{
    /// <summary>positions [1]: the token's position, read on the device.</summary>
    public ArrayView<int> Positions;

    /// <summary>inv_freq [d/2] of the launch's RopeSpec (the rope-append kernel's table).</summary>
    public ArrayView<double> InvFreq;

    /// <summary>kCache, vCache [Hkv, MaxSeq, Dh].</summary>
    public ArrayView<float> KCache;

    public ArrayView<float> VCache;

    /// <summary>Dh (even).</summary>
    public int HeadDim;

    public int MaxSeq;
}

public static class DecodeQkvRopeKernels
{
    // Which output a matrix's pairs go to (uniform per block).
    private const int ToQ = 0, ToK = 1, ToV = 2;

    [KernelInfo(DecodeQkvRopeVersion.V1, "grid min(blocks, SMs x resident groups), group 256 (8 warps x 1 rotation pair), blocks of 16 rows over q, k, v",
        Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["t.W0.Data:16", "t.W1.Data:16", "t.W2.Data:16"],
        Summary = "T = 1 q, k, v GEMV (decode/linear V2's persistent groups) with bias/clip, RoPE and the KV-cache append in the epilogue: a warp per rotation pair")]
    public static void QkvRopeV1<TU>(DecodeTargets<TU> t, ArrayView<float> x, NormWeights g, float eps, float clip, QkvRopeCache c, RopeGeometry rope,
        int blocks)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        var red = SharedMemory.Allocate<float>(DecodeStaging.RedSlots);
        float scale = DecodePersistent.Prologue(t.W0, x, g, eps, xs, slots);
        int pos = c.Positions[0];
        for (int b = Grid.IdxX; b < blocks; b += Grid.DimX)
        {
            // The block's matrix and its block index there (uniform per group).
            int to = b < t.Groups0 ? ToQ : b < t.Groups0 + t.Groups1 ? ToK : ToV;
            int block = to == ToQ ? b : to == ToK ? b - t.Groups0 : b - t.Groups0 - t.Groups1;
            var pair = new RopePair(block, to == ToQ ? t.W0.Rows : to == ToK ? t.W1.Rows : t.W2.Rows, c.HeadDim, rope);
            // Each arm reads one matrix, so each weight load has one origin; the epilogue below is one copy for the three
            // (its bias and table loads, once, stay fewer bytes than the weight loop's, which the SASS gate takes as the hot loop).
            DotPair p;
            if (to == ToQ)
                p = Dot(t.W0, pair, x, g, scale, xs);
            else if (to == ToK)
                p = Dot(t.W1, pair, x, g, scale, xs);
            else
                p = Dot(t.W2, pair, x, g, scale, xs);
            p = DecodeStaging.RowTotals(p, red);
            Store(to == ToQ ? t.Bias0 : to == ToK ? t.Bias1 : t.Bias2, to, pair, p, clip, t.Y0, c, rope, pos);
        }
    }

    /// <summary>
    /// The warp's slot of a 16-row block of a matrix of heads x Dh rows: slot s = block * 8 + warp is head s / (Dh/2),
    /// pair i = s mod (Dh/2), head-relative rows (Lo, Hi): the rotary pair i for i &lt; d/2, else two of the unrotated dims
    /// 2j, 2j + 1 (j = i - d/2) of [0, offset) ++ [offset + d, Dh), attention/rope-append V1's pairing. Live: the slot
    /// is inside the matrix (else head 0, pair 0: rows that exist, never stored).
    /// </summary>
    private readonly struct RopePair
    {
        public readonly bool Live;
        public readonly int Head;
        public readonly int I;
        public readonly int Lo;
        public readonly int Hi;
        public readonly int R0;

        public RopePair(int block, int rows, int headDim, RopeGeometry rope)
        {
            int half = headDim / 2;
            int s = block * DecodeStaging.Warps + Warp.WarpIdx;
            Live = s < rows / 2;
            Head = Live ? s / half : 0;
            I = Live ? s - Head * half : 0;
            if (I < rope.Half)
            {
                Lo = rope.Lo(I);
                Hi = rope.Hi(I);
            }
            else
            {
                int e = 2 * (I - rope.Half);
                Lo = e < rope.Offset ? e : e + 2 * rope.Half;
                Hi = e + 1 < rope.Offset ? e + 1 : e + 1 + 2 * rope.Half;
            }

            R0 = Head * headDim;
        }
    }

    // The pair's two rows dotted with x (every warp calls it: the dot restages x for rows longer than a tile, with group
    // barriers); this lane's partials.
    private static DotPair Dot<TU>(TU w, RopePair pr, ArrayView<float> x, NormWeights g, float scale, ArrayView<float> xs)
        where TU : struct, IRowUnits => DecodePersistent.Dot(w, w.Row(pr.R0 + pr.Lo), w, w.Row(pr.R0 + pr.Hi), pr.Live, x, g, scale, xs);

    // Lane 0 of a live warp: decode/linear's epilogue (DecodeLinearKernels.Store: bias, then clip) on both rows, the
    // rotation of pair i at pos for q and k (attention/rope-append V1's expressions), then q or the cache row.
    private static void Store(NormWeights bias, int to, RopePair pr, DotPair p, float clip, ArrayView<float> q, QkvRopeCache c, RopeGeometry rope,
        int pos)
    {
        if (!pr.Live || Warp.LaneIdx != 0)
            return;
        float a = p.A, b = p.B;
        if (bias.Kind != NormWeights.KindNone)
        {
            a += bias.Get(pr.R0 + pr.Lo);
            b += bias.Get(pr.R0 + pr.Hi);
        }

        a = BiasClipKernel.Clip(a, clip);
        b = BiasClipKernel.Clip(b, clip);
        bool inCache = pos >= 0 && pos < c.MaxSeq;
        if (to != ToV && inCache && pr.I < rope.Half)
        {
            RopeKernel.Angle(pos, c.InvFreq, pr.I, rope.Factor, out float sin, out float cos);
            RopeKernel.RotatePair(a, b, cos, sin, out float rLo, out float rHi);
            a = rLo;
            b = rHi;
        }

        if (to == ToQ)
        {
            q[pr.R0 + pr.Lo] = a;
            q[pr.R0 + pr.Hi] = b;
            return;
        }

        if (!inCache)
            return; // refused on the host; never write out of bounds
        long dst = KvCacheLayout.Index(pr.Head, pos, 0, c.MaxSeq, c.HeadDim);
        var cache = to == ToK ? c.KCache : c.VCache;
        cache[dst + pr.Lo] = a;
        cache[dst + pr.Hi] = b;
    }
}

/// <summary>Launcher for one reader type: <c>DecodeQkvRopeKernel.Create&lt;BF16Units&gt;(accelerator)</c>; dispose it.</summary>
public static class DecodeQkvRopeKernel
{
    public static DecodeQkvRopeKernel<TU> Create<TU>(Accelerator accelerator)
        where TU : struct, IRowUnits => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>
    /// Why decode/qkv-rope cannot rotate with <paramref name="spec"/> over heads of <paramref name="headDim"/> (interleaved
    /// pairs, an odd head dim), or null when it can. The decode plan asks before choosing it; the per-head and
    /// whole-projection q/k norms, which the kernel has no parameter for, are the plan's to keep out.
    /// </summary>
    public static string? Refusal(RopeSpec spec, int headDim)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (headDim < 2 || headDim % 2 != 0)
            return $"headDim must be even and >= 2, got {headDim}";
        if (spec.Interleaved)
            return "interleaved rotary pairs are not supported (rotate-half only)";
        return null;
    }
}

/// <summary>
/// decode/qkv-rope V1 for reader TU (RowUnits.cs): q rotated into q, k rotated and v appended to the cache rows at
/// positions[0], one launch. Owns its inv_freq tables (one per RopeSpec, uploaded at the first launch or by
/// <see cref="Prepare"/>): dispose it.
/// </summary>
public sealed class DecodeQkvRopeKernel<TU> : IDisposable
    where TU : struct, IRowUnits
{
    private const string Name = "DecodeQkvRope";

    private readonly Accelerator _accelerator;
    private readonly RopeTables _tables;
    private Action<AcceleratorStream, KernelConfig, DecodeTargets<TU>, ArrayView<float>, NormWeights, float, float, QkvRopeCache, RopeGeometry, int>? _v1;
    private int _v1Resident;

    internal DecodeQkvRopeKernel(Accelerator accelerator)
    {
        _accelerator = accelerator;
        _tables = new RopeTables(accelerator);
    }

    /// <summary>V1's grid limit on this device: multiprocessors x the groups of V1 one holds at once (loads V1).</summary>
    public int PersistentGroups
    {
        get
        {
            Load();
            return _accelerator.NumMultiprocessors * _v1Resident;
        }
    }

    /// <summary>Uploads the inv_freq table of a spec and loads the kernel now (before a graph capture: launches then
    /// never allocate or compile).</summary>
    public void Prepare(RopeSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        spec.Check(Name, int.MaxValue);
        _tables.Get(spec);
        Load();
    }

    /// <summary>
    /// xs = rmsnorm(x) * norm with eps (x itself when norm is <see cref="NormWeights.None"/>); q.Y [H*Dh] =
    /// rope(clamp(xs . q.W^T + q.Bias, -clip, clip)) at position positions[0]; rows positions[0] of kCache and vCache
    /// [Hkv, maxSeq, Dh] = rope(clamp(xs . wk^T + biasK)) and clamp(xs . wv^T + biasV), head by head. x [D], D = Cols of
    /// the three matrices; q.W [H*Dh, D], wk and wv [Hkv*Dh, D]; biases [rows] or None; clip &gt; 0, +inf for none;
    /// spec: the rotation (RopeSpec.cs; rotate-half, full or partial, YaRN). The caller checks 0 &lt;= positions[0] &lt;
    /// maxSeq on the host (outside, q is written unrotated and the cache is not touched). maxGroups caps the grid (0:
    /// <see cref="PersistentGroups"/>). Throws ArgumentException (one line) on a bad shape, spec, eps, clip or maxGroups.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, NormWeights norm, float eps, DecodeTarget<TU> q, TU wk, NormWeights biasK,
        TU wv, NormWeights biasV, ArrayView<int> positions, ArrayView<float> kCache, ArrayView<float> vCache, int heads, int kvHeads, int headDim,
        int maxSeq, RopeSpec spec, float clip = float.PositiveInfinity, int maxGroups = 0)
    {
        ArgumentNullException.ThrowIfNull(spec);
        DenseShapes.Stream(Name, stream);
        BiasClipKernel.CheckClip(Name, clip);
        if (maxGroups < 0)
            throw new ArgumentException($"{Name}: maxGroups must be >= 0 (0: the device's resident groups), got {maxGroups}", nameof(maxGroups));
        if (DecodeQkvRopeKernel.Refusal(spec, headDim) is { } why)
            throw new ArgumentException($"{Name}: {why}", nameof(spec));
        AttentionKernel.CheckShape(1, heads, kvHeads, headDim, maxSeq, 0, Name);
        spec.Check(Name, headDim);
        int cols = q.W.Cols;
        Check(q.W, q.Bias, "q", (long)heads * headDim, cols);
        Check(wk, biasK, "k", (long)kvHeads * headDim, cols);
        Check(wv, biasV, "v", (long)kvHeads * headDim, cols);
        AttentionKernel.CheckLength(q.Y, q.W.Rows, "q [H*Dh]", Name);
        if (positions.Length < 1)
            throw new ArgumentException($"{Name}: positions has no element (needs the token's position at [0])", nameof(positions));
        long cache = KvCacheLayout.Elements(kvHeads, maxSeq, headDim);
        AttentionKernel.CheckLength(kCache, cache, "kCache [Hkv, maxSeq, Dh]", Name);
        AttentionKernel.CheckLength(vCache, cache, "vCache [Hkv, maxSeq, Dh]", Name);
        DecodeStaging.CheckInput(Name, x, norm, eps, cols);
        var xv = x.SubView(0, cols);
        DecodeStaging.RequireDisjoint(Name, "x", xv, "q", q.Y.SubView(0, q.W.Rows));
        DecodeStaging.RequireDisjoint(Name, "x", xv, "kCache", kCache.SubView(0, cache));
        DecodeStaging.RequireDisjoint(Name, "x", xv, "vCache", vCache.SubView(0, cache));

        int g0 = Groups(q.W), g1 = Groups(wk), g2 = Groups(wv);
        // k's and v's targets carry q's view: the kernel writes their rows to the cache, never to a target view.
        var targets = new DecodeTargets<TU>(q, new DecodeTarget<TU>(wk, q.Y, biasK), new DecodeTarget<TU>(wv, q.Y, biasV), g0, g1);
        var c = new QkvRopeCache
        {
            Positions = positions, InvFreq = _tables.Get(spec).View, KCache = kCache, VCache = vCache, HeadDim = headDim, MaxSeq = maxSeq,
        };
        Load();
        int blocks = g0 + g1 + g2;
        int grid = DecodePersistent.Groups(blocks, maxGroups > 0 ? maxGroups : PersistentGroups);
        _v1!(stream, new KernelConfig(grid, DecodeStaging.GroupSize), targets, x, norm, eps, clip, c, spec.Geometry(headDim, headDim), blocks);
    }

    public void Dispose() => _tables.Dispose();

    private void Load() =>
        _v1 ??= _accelerator.LoadCounted<DecodeTargets<TU>, ArrayView<float>, NormWeights, float, float, QkvRopeCache, RopeGeometry, int>(
            DecodeQkvRopeKernels.QkvRopeV1, DecodeStaging.GroupSize, out _v1Resident);

    // 16-row blocks of a matrix (8 pairs, one per warp), the last one part-way where the pairs end.
    private static int Groups(TU w) => (w.Rows + DecodeStaging.RowsPerGroup - 1) / DecodeStaging.RowsPerGroup;

    private static void Check(TU w, NormWeights bias, string m, long rows, int cols)
    {
        if (w.Rows != rows || w.Cols != cols || cols < 1)
            throw new ArgumentException($"{Name}: {m} weights have shape [{w.Rows}, {w.Cols}], need [{rows}, {cols}] (heads x Dh rows, D = q's columns)");
        if (!bias.IsNone && bias.Length < rows)
            throw new ArgumentException($"{Name}: {m} bias has {bias.Length} elements, needs {rows}");
    }
}
