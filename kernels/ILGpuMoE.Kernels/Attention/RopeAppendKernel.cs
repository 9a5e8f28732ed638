// attention/rope-append: RoPE fused with the KV-cache append, one launch instead of dense/rope + attention/kv-append.
//
// For T tokens at positions read from a device view positions [T] (a CUDA graph captured once replays it per token:
// no launch argument depends on the position): q [T, H, Dh] is rotated in place; k [T, Hkv, Dh] is rotated on the
// way into the cache and v copied, both to rows positions[t] of kCache, vCache [Hkv, maxSeq, Dh] (the layout of
// kernels/ILGpuMoE.Kernels/Attention/AttentionKernel.cs). k and v themselves are only read.
// The rotation is dense/rope's (RopeKernel: the same inv_freq table, f64 angle, SinCos and RotatePair), so q and the
// cache rows are bit for bit what RopeV1 followed by KvAppendV1 give on the same device. The rotation is any RopeSpec
// (Dense/Rope/RopeSpec.cs) inside the head of Dh: gpt-oss' YaRN with its cos/sin factor, partial or interleaved
// rotary; k's dims outside the rotary range are copied to the cache unrotated. RopeSpec.Full(Dh, theta) (the float
// theta overload) gives the earlier bits.
//
// Versions:
//   V1  one thread per (token, head of the H q heads and Hkv kv heads, slot i < Dh/2): 2 loads and 2 stores for a q
//       head, 4 loads and 4 stores (k rotated, v copied) for a kv head; consecutive threads take consecutive i
//       (coalesced). With a partial rotary (d < Dh), slots i >= d/2 copy two of k's unrotated dims (q's stay in place);
//       v's dims i and i + Dh/2 are copied by slot i either way.
//       At T = 1 every thread has one pair to move, so the launch is one memory round trip deep (H 32, Hkv 8,
//       Dh 128: 2,560 threads) instead of RopeV1's loop over all heads. No per-head norm.
//   V2HeadNorm  one thread per (token, head): the optional per-head RMSNorm before the rotation (Qwen3-MoE's q_norm /
//       k_norm, weights [Dh] F32 shared by all heads; dense/rope's NormRotate: the same bits as RopeHeadNormV2), then
//       q in place or k into the cache, and v's row copied. A q head is normalised in place, so it belongs to one
//       thread: no barriers or shuffles (the CPU accelerator's choice).
//   V3WarpNorm  one warp per (token, head): lanes take pairs l, l + 32, ... and the head's sum of squares is a 5-shuffle
//       butterfly (dense/rope's RopeWarpNormV3 per row). The GPU decode step's choice when a norm is asked: H + Hkv
//       warps (Qwen3-30B-A3B: 32 + 4) with Dh/64 pairs per lane instead of V2's Dh/2 serial pairs per thread.
//
// Positions outside [0, maxSeq): the runtime checks positions on the host before uploading them; the launcher cannot
// see device data, so the kernel skips such a token entirely (neither q nor the cache is touched): never a write out
// of bounds.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Attention;

/// <summary>Scalar launch arguments of <see cref="RopeAppendKernel.RopeAppendV1"/>.</summary>
public struct RopeAppendParams
{
    /// <summary>T: tokens.</summary>
    public int Tokens;

    /// <summary>H: query heads.</summary>
    public int Heads;

    /// <summary>Hkv: key/value heads.</summary>
    public int KvHeads;

    /// <summary>Dh: head dim (even).</summary>
    public int HeadDim;

    /// <summary>Rows per head in the cache ([Hkv, MaxSeq, Dh]).</summary>
    public int MaxSeq;
}

/// <summary>attention/rope-append's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("attention/rope-append")]
public enum RopeAppendVersion
{
    /// <summary>One thread per (token, q or kv head, rotated pair).</summary>
    V1 = 1,

    /// <summary>One thread per (token, head), with the optional per-head RMSNorm (q_norm / k_norm) before the rotation.</summary>
    V2HeadNorm = 2,

    /// <summary>One warp per (token, head): the per-head norm's sum of squares by a shuffle butterfly.</summary>
    V3WarpNorm = 3,
}

/// <summary>
/// RoPE on q and k plus the KV append in one launch. Owns the inv_freq tables (one per (Dh, theta), uploaded at the
/// first launch or by <see cref="Prepare"/>): dispose it.
/// </summary>
public sealed class RopeAppendKernel : IDisposable
{
    private const string Name = "RopeAppendKernel";
    private const int GroupSize = 256;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>,
        ArrayView<float>, ArrayView<float>, RopeAppendParams, RopeGeometry> _v1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>,
        ArrayView<float>, ArrayView<float>, RopeAppendParams, RopeGeometry, QkNorm> _v2, _v3;
    private readonly RopeTables _tables;
    private readonly bool _gpu;
    private readonly int _warpSize;

    private RopeAppendKernel(Accelerator accelerator)
    {
        _tables = new RopeTables(accelerator);
        _gpu = accelerator.AcceleratorType != AcceleratorType.CPU;
        _warpSize = accelerator.WarpSize;
        _v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>,
            ArrayView<float>, ArrayView<float>, RopeAppendParams, RopeGeometry>(RopeAppendV1);
        _v2 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>,
            ArrayView<float>, ArrayView<float>, RopeAppendParams, RopeGeometry, QkNorm>(RopeAppendHeadNormV2);
        _v3 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>,
            ArrayView<float>, ArrayView<float>, RopeAppendParams, RopeGeometry, QkNorm>(RopeAppendWarpNormV3);
    }

    public static RopeAppendKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>Uploads the inv_freq table of (Dh, theta) now (before a graph capture: launches then never allocate).</summary>
    public void Prepare(int headDim, float theta)
    {
        RopeKernel.CheckRotation(Name, headDim, theta);
        _tables.Get(RopeSpec.Full(headDim, theta));
    }

    /// <summary>Uploads the inv_freq table of a spec now (before a graph capture).</summary>
    public void Prepare(RopeSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        spec.Check(Name, int.MaxValue);
        _tables.Get(spec);
    }

    /// <summary>
    /// Token t at position positions[t] (device data; the caller checks 0 &lt;= positions[t] &lt; maxSeq on the host, the
    /// kernel skips a token outside): q[t] [H, Dh] rotated in place (rotate-half, as dense/rope), rotated k[t] and v[t]
    /// [Hkv, Dh] written to rows positions[t] of kCache, vCache [Hkv, maxSeq, Dh]. k and v are not modified.
    /// qNorm / kNorm [Dh] (optional, F32): each q (k) head is first RMS-normalised over Dh with eps = normEps and times
    /// that weight (Qwen3-MoE's q_norm / k_norm). version: null picks V1 without a norm, else V3WarpNorm on a GPU and
    /// V2HeadNorm on the CPU accelerator; V1 refuses a norm. Same as the <see cref="RopeSpec"/> overload with
    /// RopeSpec.Full(headDim, theta).
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> positions,
        ArrayView<float> kCache, ArrayView<float> vCache, int tokens, int heads, int kvHeads, int headDim, int maxSeq, float theta,
        ArrayView<float> qNorm = default, ArrayView<float> kNorm = default, float normEps = 1e-6f, RopeAppendVersion? version = null)
    {
        RopeKernel.CheckRotation(Name, headDim, theta);
        Launch(stream, q, k, v, positions, kCache, vCache, tokens, heads, kvHeads, headDim, maxSeq, RopeSpec.Full(headDim, theta),
            qNorm, kNorm, normEps, version);
    }

    /// <summary>
    /// As the other overload, with the rotation <paramref name="spec"/> (RopeSpec.cs: rotary dim d at an offset inside
    /// Dh, rotate-half or interleaved pairs, YaRN frequencies and cos/sin factor; gpt-oss: d = Dh, YaRN): q's dims
    /// outside [offset, offset + d) stay as they are, k's are copied to the cache unrotated. qNorm / kNorm need the full
    /// rotate-half spec (d = Dh, offset 0). The first launch of a spec uploads its table (or <see cref="Prepare(RopeSpec)"/>).
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> positions,
        ArrayView<float> kCache, ArrayView<float> vCache, int tokens, int heads, int kvHeads, int headDim, int maxSeq, RopeSpec spec,
        ArrayView<float> qNorm = default, ArrayView<float> kNorm = default, float normEps = 1e-6f, RopeAppendVersion? version = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        DenseShapes.Stream(Name, stream);
        AttentionKernel.CheckShape(tokens, heads, kvHeads, headDim, maxSeq, 0, Name);
        spec.Check(Name, headDim);
        AttentionKernel.CheckLength(q, (long)tokens * heads * headDim, "q [T, H, Dh]", Name);
        long kv = (long)tokens * kvHeads * headDim;
        AttentionKernel.CheckLength(k, kv, "k [T, Hkv, Dh]", Name);
        AttentionKernel.CheckLength(v, kv, "v [T, Hkv, Dh]", Name);
        if (positions.Length < tokens)
            throw new ArgumentException($"{Name}: positions [T] has {positions.Length} ints, needs {tokens}");
        long cache = KvCacheLayout.Elements(kvHeads, maxSeq, headDim);
        AttentionKernel.CheckLength(kCache, cache, "kCache [Hkv, maxSeq, Dh]", Name);
        AttentionKernel.CheckLength(vCache, cache, "vCache [Hkv, maxSeq, Dh]", Name);
        var norm = QkNorm.Check(Name, qNorm, kNorm, normEps, headDim);
        if (norm.Any && !spec.IsFullRotateHalf(headDim))
            throw new ArgumentException($"{Name}: the per-head norm needs the full rotate-half rotary (d = Dh, offset 0)", nameof(spec));
        if (headDim % 2 != 0)
            throw new ArgumentException($"{Name}: headDim must be even, got {headDim}", nameof(headDim));
        var p = new RopeAppendParams { Tokens = tokens, Heads = heads, KvHeads = kvHeads, HeadDim = headDim, MaxSeq = maxSeq };
        var g = spec.Geometry(headDim, headDim);
        var inv = _tables.Get(spec).View;
        long rows = (long)tokens * (heads + kvHeads);
        var chosen = version ?? (!norm.Any ? RopeAppendVersion.V1 : _gpu ? RopeAppendVersion.V3WarpNorm : RopeAppendVersion.V2HeadNorm);
        switch (chosen)
        {
            case RopeAppendVersion.V1:
                if (norm.Any)
                    throw new ArgumentException($"{Name}: version V1 has no per-head norm; use V2HeadNorm or V3WarpNorm", nameof(version));
                long threads = rows * (headDim / 2);
                _v1(stream, new KernelConfig((int)((threads + GroupSize - 1) / GroupSize), GroupSize), q, k, v, positions, inv, kCache, vCache, p, g);
                break;
            case RopeAppendVersion.V2HeadNorm:
                _v2(stream, new KernelConfig((int)((rows + GroupSize - 1) / GroupSize), GroupSize), q, k, v, positions, inv, kCache, vCache, p, g, norm);
                break;
            case RopeAppendVersion.V3WarpNorm:
                _v3(stream, RopeKernel.WarpRows(rows, _warpSize), q, k, v, positions, inv, kCache, vCache, p, g, norm);
                break;
            default:
                throw new ArgumentException($"{Name}: unknown version {chosen}", nameof(version));
        }
    }

    public void Dispose() => _tables.Dispose();

    [KernelInfo(RopeAppendVersion.V1, "grid ceil(T*(H+Hkv)*Dh/2 / 256), group 256", Decode = DecodeUse.Activations, BlockSize = GroupSize,
        Summary = "RoPE + KV append in one launch, positions from the device: thread per (token, head, pair)")]
    public static void RopeAppendV1(
        ArrayView<float> q,          // [T, H, Dh], rotated in place
        ArrayView<float> k,          // [T, Hkv, Dh]
        ArrayView<float> v,          // [T, Hkv, Dh]
        ArrayView<int> positions,    // [T]
        ArrayView<double> invFreq,   // [d/2]
        ArrayView<float> kCache,     // [Hkv, maxSeq, Dh]
        ArrayView<float> vCache,     // [Hkv, maxSeq, Dh]
        RopeAppendParams p,
        RopeGeometry g)
    {
        int half = p.HeadDim / 2;
        int rows = p.Heads + p.KvHeads;
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)p.Tokens * rows * half)
            return;
        long row = index / half;
        int i = (int)(index - row * half);
        int t = (int)(row / rows);
        int hh = (int)(row - (long)t * rows);
        int pos = positions[t];
        if (pos < 0 || pos >= p.MaxSeq)
            return; // refused on the host; never write out of bounds

        bool rotates = i < g.Half;
        float sin = 0f, cos = 0f;
        if (rotates)
            RopeKernel.Angle(pos, invFreq, i, g.Factor, out sin, out cos);
        if (hh < p.Heads)
        {
            if (rotates)
                RopeKernel.RotateAt(q, ((long)t * p.Heads + hh) * p.HeadDim, g.Lo(i), g.Hi(i), cos, sin);
            return;
        }

        int kvh = hh - p.Heads;
        long src = ((long)t * p.KvHeads + kvh) * p.HeadDim;
        long dst = KvCacheLayout.Index(kvh, pos, 0, p.MaxSeq, p.HeadDim);
        if (rotates)
        {
            int lo = g.Lo(i), hi = g.Hi(i);
            RopeKernel.RotatePair(k[src + lo], k[src + hi], cos, sin, out float kLo, out float kHi);
            kCache[dst + lo] = kLo;
            kCache[dst + hi] = kHi;
        }
        else
        {
            // Slot i past the rotary pairs: the unrotated dims 2j, 2j + 1 (j = i - d/2) of [0, offset) ++ [offset + d, Dh).
            int e = 2 * (i - g.Half);
            int e0 = e < g.Offset ? e : e + 2 * g.Half;
            int e1 = e + 1 < g.Offset ? e + 1 : e + 1 + 2 * g.Half;
            kCache[dst + e0] = k[src + e0];
            kCache[dst + e1] = k[src + e1];
        }

        vCache[dst + i] = v[src + i];
        vCache[dst + i + half] = v[src + i + half];
    }

    /// <summary>V2HeadNorm: thread per (token, head), q heads then kv heads per token (see the header).</summary>
    [KernelInfo(RopeAppendVersion.V2HeadNorm, "grid ceil(T*(H+Hkv) / 256), group 256", BlockSize = GroupSize,
        Summary = "RoPE + KV append with the optional per-head RMSNorm (q_norm / k_norm): thread per (token, head), no barriers")]
    public static void RopeAppendHeadNormV2(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> positions,
        ArrayView<double> invFreq, ArrayView<float> kCache, ArrayView<float> vCache, RopeAppendParams p, RopeGeometry g, QkNorm norm)
    {
        long row = Grid.GlobalLinearIndex;
        if (row < (long)p.Tokens * (p.Heads + p.KvHeads))
            AppendRow(q, k, v, positions, invFreq, kCache, vCache, p, g, norm, row, 0, 1, false);
    }

    /// <summary>V3WarpNorm: warp per (token, head) (a warp is all in or all out: rows are whole warps).</summary>
    [KernelInfo(RopeAppendVersion.V3WarpNorm, "grid ceil(T*(H+Hkv) / 8), group 256 (8 warps, one head each)", Decode = DecodeUse.Activations,
        BlockSize = GroupSize,
        Summary = "RoPE + KV append with the optional per-head RMSNorm: warp per (token, head), 5-shuffle sum of squares, lanes take pairs l, l+32, ...")]
    public static void RopeAppendWarpNormV3(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> positions,
        ArrayView<double> invFreq, ArrayView<float> kCache, ArrayView<float> vCache, RopeAppendParams p, RopeGeometry g, QkNorm norm)
    {
        long row = (long)Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;
        if (row < (long)p.Tokens * (p.Heads + p.KvHeads))
            AppendRow(q, k, v, positions, invFreq, kCache, vCache, p, g, norm, row, Warp.LaneIdx, Warp.WarpSize, true);
    }

    // Row (token t, head hh of the H q heads then Hkv kv heads): q normalised and rotated in place, or k normalised and
    // rotated into the cache row (its unrotated dims copied) and v's row copied; over pairs start, start + stride, ...
    // (warp: every lane calls).
    private static void AppendRow(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> positions,
        ArrayView<double> invFreq, ArrayView<float> kCache, ArrayView<float> vCache, RopeAppendParams p, RopeGeometry g, QkNorm norm, long row,
        int start, int stride, bool warp)
    {
        int rows = p.Heads + p.KvHeads;
        int t = (int)(row / rows);
        int hh = (int)(row - (long)t * rows);
        int pos = positions[t];
        if (pos < 0 || pos >= p.MaxSeq)
            return; // refused on the host; never write out of bounds (uniform over a warp's row)

        if (hh < p.Heads)
        {
            long b = ((long)t * p.Heads + hh) * p.HeadDim;
            float scale = norm.NormQ != 0 ? RopeKernel.HeadScale(q, b, p.HeadDim, start, stride, warp, norm.Eps) : 1f;
            RopeKernel.NormRotate(q, b, q, b, g, pos, invFreq, start, stride, norm.NormQ, norm.Q, scale);
            return;
        }

        int kvh = hh - p.Heads;
        long src = ((long)t * p.KvHeads + kvh) * p.HeadDim;
        long dst = KvCacheLayout.Index(kvh, pos, 0, p.MaxSeq, p.HeadDim);
        float kScale = norm.NormK != 0 ? RopeKernel.HeadScale(k, src, p.HeadDim, start, stride, warp, norm.Eps) : 1f;
        RopeKernel.NormRotate(k, src, kCache, dst, g, pos, invFreq, start, stride, norm.NormK, norm.K, kScale);
        // k's unrotated dims (none for a full rotary: both loops empty).
        for (int d = start; d < g.Offset; d += stride)
            kCache[dst + d] = k[src + d];
        for (int d = g.Offset + 2 * g.Half + start; d < p.HeadDim; d += stride)
            kCache[dst + d] = k[src + d];
        for (int d = start; d < p.HeadDim; d += stride)
            vCache[dst + d] = v[src + d];
    }
}
