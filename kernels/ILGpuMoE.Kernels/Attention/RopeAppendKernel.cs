// attention/rope-append: RoPE fused with the KV-cache append, one launch instead of dense/rope + attention/kv-append.
//
// For T tokens at positions read from a device view positions [T] (a CUDA graph captured once replays it per token:
// no launch argument depends on the position): q [T, H, Dh] is rotated in place; k [T, Hkv, Dh] is rotated on the
// way into the cache and v copied, both to rows positions[t] of kCache, vCache [Hkv, maxSeq, Dh] (the layout of
// kernels/ILGpuMoE.Kernels/Attention/AttentionKernel.cs). k and v themselves are only read.
// The rotation is dense/rope's (RopeKernel: the same inv_freq table, f64 angle, SinCos and RotatePair), so q and the
// cache rows are bit for bit what RopeV1 followed by KvAppendV1 give on the same device.
//
// Versions:
//   V1  one thread per (token, head of the H q heads and Hkv kv heads, pair i): 2 loads and 2 stores for a q head,
//       4 loads and 4 stores (k rotated, v copied) for a kv head; consecutive threads take consecutive i (coalesced).
//       At T = 1 every thread has one pair to move, so the launch is one memory round trip deep (H 32, Hkv 8,
//       Dh 128: 2,560 threads) instead of RopeV1's loop over all heads.
//
// Positions outside [0, maxSeq): the runtime checks positions on the host before uploading them; the launcher cannot
// see device data, so the kernel skips such a token entirely (neither q nor the cache is touched): never a write out
// of bounds.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Attention;

/// <summary>attention/rope-append's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("attention/rope-append")]
public enum RopeAppendVersion
{
    /// <summary>One thread per (token, q or kv head, rotated pair).</summary>
    V1 = 1,
}

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

/// <summary>
/// RoPE on q and k plus the KV append in one launch. Owns the inv_freq tables (one per (Dh, theta), uploaded at the
/// first launch or by <see cref="Prepare"/>): dispose it.
/// </summary>
public sealed class RopeAppendKernel : IDisposable
{
    private const string Name = "RopeAppendKernel";
    private const int GroupSize = 256;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>,
        ArrayView<float>, ArrayView<float>, RopeAppendParams> _v1;
    private readonly RopeTables _tables;

    private RopeAppendKernel(Accelerator accelerator)
    {
        _tables = new RopeTables(accelerator);
        _v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>,
            ArrayView<float>, ArrayView<float>, RopeAppendParams>(RopeAppendV1);
    }

    public static RopeAppendKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>Uploads the inv_freq table of (Dh, theta) now (before a graph capture: launches then never allocate).</summary>
    public void Prepare(int headDim, float theta)
    {
        RopeKernel.CheckRotation(Name, headDim, theta);
        _tables.Get(headDim, theta);
    }

    /// <summary>
    /// Token t at position positions[t] (device data; the caller checks 0 &lt;= positions[t] &lt; maxSeq on the host, the
    /// kernel skips a token outside): q[t] [H, Dh] rotated in place (rotate-half, as dense/rope), rotated k[t] and v[t]
    /// [Hkv, Dh] written to rows positions[t] of kCache, vCache [Hkv, maxSeq, Dh]. k and v are not modified.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> positions,
        ArrayView<float> kCache, ArrayView<float> vCache, int tokens, int heads, int kvHeads, int headDim, int maxSeq, float theta)
    {
        DenseShapes.Stream(Name, stream);
        AttentionKernel.CheckShape(tokens, heads, kvHeads, headDim, maxSeq, 0, Name);
        RopeKernel.CheckRotation(Name, headDim, theta);
        AttentionKernel.CheckLength(q, (long)tokens * heads * headDim, "q [T, H, Dh]", Name);
        long kv = (long)tokens * kvHeads * headDim;
        AttentionKernel.CheckLength(k, kv, "k [T, Hkv, Dh]", Name);
        AttentionKernel.CheckLength(v, kv, "v [T, Hkv, Dh]", Name);
        if (positions.Length < tokens)
            throw new ArgumentException($"{Name}: positions [T] has {positions.Length} ints, needs {tokens}");
        long cache = KvCacheLayout.Elements(kvHeads, maxSeq, headDim);
        AttentionKernel.CheckLength(kCache, cache, "kCache [Hkv, maxSeq, Dh]", Name);
        AttentionKernel.CheckLength(vCache, cache, "vCache [Hkv, maxSeq, Dh]", Name);
        var p = new RopeAppendParams { Tokens = tokens, Heads = heads, KvHeads = kvHeads, HeadDim = headDim, MaxSeq = maxSeq };
        long threads = (long)tokens * (heads + kvHeads) * (headDim / 2);
        _v1(stream, new KernelConfig((int)((threads + GroupSize - 1) / GroupSize), GroupSize), q, k, v, positions, _tables.Get(headDim, theta).View,
            kCache, vCache, p);
    }

    public void Dispose() => _tables.Dispose();

    [KernelInfo(RopeAppendVersion.V1, "grid ceil(T*(H+Hkv)*Dh/2 / 256), group 256", Decode = DecodeUse.Activations, BlockSize = GroupSize,
        Summary = "RoPE + KV append in one launch, positions from the device: thread per (token, head, pair)")]
    public static void RopeAppendV1(
        ArrayView<float> q,          // [T, H, Dh], rotated in place
        ArrayView<float> k,          // [T, Hkv, Dh]
        ArrayView<float> v,          // [T, Hkv, Dh]
        ArrayView<int> positions,    // [T]
        ArrayView<double> invFreq,   // [Dh/2]
        ArrayView<float> kCache,     // [Hkv, maxSeq, Dh]
        ArrayView<float> vCache,     // [Hkv, maxSeq, Dh]
        RopeAppendParams p)
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

        RopeKernel.SinCos(pos * invFreq[i], out float sin, out float cos);
        if (hh < p.Heads)
        {
            RopeKernel.Rotate(q, ((long)t * p.Heads + hh) * p.HeadDim + i, half, cos, sin);
            return;
        }

        int kvh = hh - p.Heads;
        long src = ((long)t * p.KvHeads + kvh) * p.HeadDim + i;
        long dst = KvCacheLayout.Index(kvh, pos, i, p.MaxSeq, p.HeadDim);
        RopeKernel.RotatePair(k[src], k[src + half], cos, sin, out float kLo, out float kHi);
        kCache[dst] = kLo;
        kCache[dst + half] = kHi;
        vCache[dst] = v[src];
        vCache[dst + half] = v[src + half];
    }
}
