// Paged attention family: the KV-cache append and causal grouped-query attention of a continuous-batching step, where
// several sequences run in one launch (their T tokens concatenated) and each sequence's keys and values live in
// fixed-size blocks of one shared pool, found through a block table.
//
// Cache layout (per layer, allocated by the runtime): kCache, vCache are F32 [NumBlocks, Hkv, BS, Dh], row-major:
//   element (block, h, off, d) is at ((block * Hkv + h) * BS + off) * Dh + d.
//   Why a block keeps each kv head's rows together: attention reads the keys of ONE kv head, so inside a block they are
//   one contiguous run of BS * Dh floats, as one head's keys are one run in the contiguous cache [Hkv, maxSeq, Dh]
//   (AttentionKernel.cs says why that layout). Paging costs one block-table read per BS keys, nothing per float.
//   A "slot" is block * BS + off: the place of one token's row in every head of the pool.
//
// Per-step metadata (int device views, written by the runtime's scheduler):
//   slots[T]        where token t's new K/V row goes (the append).
//   positions[T]    token t's position in its own sequence.
//   seqOfToken[T]   token t's row in blockTables.
//   blockTables[S, maxBlocks]  physical block of logical block j of sequence s.
// Semantics (the oracle: RefOps.PagedAttention, which gathers each sequence's keys through the table and calls
// RefOps.GeneralAttention, so paging is the only difference to the contiguous kernels): token t at pos = positions[t]
// sees the keys of its own sequence at positions 0..pos (causal), within the sliding window if window > 0
// (pos - p < window); the key at position p sits in slot blockTables[seq * maxBlocks + p / BS] * BS + p % BS. Query head h
// reads kv head h / (H / Hkv); softmax scale as given; F32 online softmax with the running max subtracted; sinks (an
// optional F32 view [H]) folded in once at the end of the row (AttentionKernels.SinkRescale). The step's own tokens
// are appended before the attention runs, so a chunk of prefill tokens attends to its own earlier tokens.
//
// Versions:
//   PagedKvAppendV1     k, v [T, Hkv, Dh] -> the slots' rows. One thread per element; reads coalesced.
//   PagedAttentionV1    simplest correct: one group per (token, head), one thread per output dim; every thread walks
//                       the visible keys with an online softmax, recomputing the dot itself (Dh-fold redundant). The
//                       same arithmetic, in the same order, as AttentionV1: on the same keys the two agree bit for bit.
//   PagedAttentionV2Decode  one warp per (token, head), 4 warps per group, no group barrier: steps of 32 keys with a
//                       lane per key for QK (32 rows in flight), a warp max, the 32 probabilities through shared memory,
//                       PV with lanes over Dh (each V row one coalesced read); online softmax in registers. The same
//                       step as AttentionV2Decode without the key splits: a batch of decode tokens already gives T * H
//                       warps, and one warp per row keeps the launch to one kernel whatever the sequences' lengths.
//
// Bad device data never reads or writes out of bounds (the runtime checks the metadata on the host; the kernels cannot):
// the append skips a slot outside the pool; the attention treats a key whose block is outside the pool as hidden and a
// token whose sequence row is outside the table, or whose position is negative or past the table, as having no keys
// (its output is then 0 / 0 = NaN, or 0 with a sink: never a stale value).
// Indices: a pool may pass 2^31 floats, so cache offsets are 64-bit (one multiply per key, not per float).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Attention;

/// <summary>attention/paged-kv-append's versions.</summary>
[KernelFamily("attention/paged-kv-append")]
public enum PagedKvAppendVersion
{
    /// <summary>One thread per (token, kv head, dim) element.</summary>
    V1 = 1,
}

/// <summary>attention/paged's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("attention/paged")]
public enum PagedAttentionVersion
{
    /// <summary>One group per (token, head), one thread per output dim; simplest correct.</summary>
    V1 = 1,

    /// <summary>One warp per (token, head): lanes over keys for QK, over Dh for PV.</summary>
    V2Decode = 2,
}

/// <summary>Scalar launch arguments of the paged attention kernels.</summary>
public struct PagedAttentionParams
{
    /// <summary>T: tokens of the step (all sequences, concatenated).</summary>
    public int Tokens;

    /// <summary>H: query heads.</summary>
    public int Heads;

    /// <summary>Hkv: key/value heads (H % Hkv == 0).</summary>
    public int KvHeads;

    /// <summary>Dh: head dim.</summary>
    public int HeadDim;

    /// <summary>BS: positions per block.</summary>
    public int BlockSize;

    /// <summary>Columns of blockTables [S, maxBlocks].</summary>
    public int MaxBlocks;

    /// <summary>S: rows of blockTables.</summary>
    public int Sequences;

    /// <summary>Blocks in the pool (kCache, vCache [NumBlocks, Hkv, BS, Dh]).</summary>
    public int NumBlocks;

    /// <summary>Sliding window (keys with pos - p &lt; Window); &lt;= 0 means none.</summary>
    public int Window;

    /// <summary>Softmax scale.</summary>
    public float Scale;

    /// <summary>1: the sinks view [H] is read; 0: no sinks, the view is not read.</summary>
    public int HasSinks;
}

public static class PagedAttentionKernels
{
    /// <summary>Largest head dim (V1's group is Dh threads; V2Decode keeps Dh / 32 accumulators per lane).</summary>
    public const int MaxHeadDim = AttentionKernels.MaxHeadDim;

    /// <summary>V2Decode: warps (one (token, head) row each) per group.</summary>
    public const int DecodeWarps = 4;

    /// <summary>V2Decode: threads per group.</summary>
    public const int DecodeThreads = DecodeWarps * 32;

    /// <summary>Flat index of (block, kv head, offset, dim) in kCache / vCache [NumBlocks, Hkv, BS, Dh].</summary>
    public static long Index(int block, int kvHead, int offset, int dim, int kvHeads, int blockSize, int headDim) =>
        (((long)block * kvHeads + kvHead) * blockSize + offset) * headDim + dim;

    /// <summary>
    /// The visible key range lo..hi (inclusive) of token t and the start of its table row; hi &lt; lo when the token's
    /// metadata is outside the table (no keys).
    /// </summary>
    private static void KeyRange(ArrayView<int> positions, ArrayView<int> seqOfToken, int t, PagedAttentionParams p, out int lo, out int hi, out int tableRow)
    {
        int pos = positions[t];
        int seq = seqOfToken[t];
        tableRow = seq * p.MaxBlocks;
        lo = p.Window > 0 ? IntrinsicMath.Max(0, pos - p.Window + 1) : 0;
        hi = pos;
        if (seq < 0 || seq >= p.Sequences || pos < 0 || pos >= p.MaxBlocks * p.BlockSize)
        {
            lo = 0;
            hi = -1;
            tableRow = 0;
        }
    }

    /// <summary>Start of kv head kvh's row of the key at position key (through the table), or -1 if its block is outside the pool.</summary>
    private static long RowOf(ArrayView<int> blockTables, int tableRow, int key, int kvh, PagedAttentionParams p)
    {
        int lb = key / p.BlockSize;
        int block = blockTables[tableRow + lb];
        if (block < 0 || block >= p.NumBlocks)
            return -1;
        return Index(block, kvh, key - lb * p.BlockSize, 0, p.KvHeads, p.BlockSize, p.HeadDim);
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(PagedKvAppendVersion.V1, "grid ceil(T*Hkv*Dh/256), group 256", Decode = DecodeUse.Activations, BlockSize = Devices.MaxGroupSize,
        Summary = "k, v rows to their slots through the pool layout: thread per element")]
    public static void PagedKvAppendV1(
        ArrayView<float> k,        // [T, Hkv, Dh]
        ArrayView<float> v,        // [T, Hkv, Dh]
        ArrayView<float> kCache,   // [NumBlocks, Hkv, BS, Dh]
        ArrayView<float> vCache,   // [NumBlocks, Hkv, BS, Dh]
        ArrayView<int> slots,      // [T]
        PagedAttentionParams p)
    {
        int i = Grid.GlobalIndex.X;
        if (i >= p.Tokens * p.KvHeads * p.HeadDim)
            return;
        int d = i % p.HeadDim;
        int row = i / p.HeadDim;
        int kvh = row % p.KvHeads;
        int t = row / p.KvHeads;
        int slot = slots[t];
        if (slot < 0 || slot >= p.NumBlocks * p.BlockSize)
            return; // refused on the host; never write outside the pool
        int block = slot / p.BlockSize;
        long dst = Index(block, kvh, slot - block * p.BlockSize, d, p.KvHeads, p.BlockSize, p.HeadDim);
        kCache[dst] = k[i];
        vCache[dst] = v[i];
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(PagedAttentionVersion.V1, "grid T*H, group Dh", BlockSize = MaxHeadDim,
        Summary = "group per (token, head), thread per output dim, online softmax over the keys found through the block table")]
    public static void PagedAttentionV1(
        ArrayView<float> q,            // [T, H, Dh]
        ArrayView<float> kCache,       // [NumBlocks, Hkv, BS, Dh]
        ArrayView<float> vCache,       // [NumBlocks, Hkv, BS, Dh]
        ArrayView<float> output,       // [T, H, Dh]
        ArrayView<int> positions,      // [T]
        ArrayView<int> seqOfToken,     // [T]
        ArrayView<int> blockTables,    // [S, maxBlocks]
        ArrayView<float> sinks,        // [H] when p.HasSinks != 0
        PagedAttentionParams p)
    {
        int g = Grid.IdxX;
        int h = g % p.Heads;
        int t = g / p.Heads;
        int d = Group.IdxX;
        int dh = p.HeadDim;
        int kvh = h / (p.Heads / p.KvHeads);
        int qBase = (t * p.Heads + h) * dh;
        KeyRange(positions, seqOfToken, t, p, out int lo, out int hi, out int tableRow);

        float m = float.NegativeInfinity, l = 0f, acc = 0f;
        for (int j = lo; j <= hi; j++)
        {
            long row = RowOf(blockTables, tableRow, j, kvh, p);
            if (row < 0)
                continue;
            float dot = 0f;
            for (int e = 0; e < dh; e++)
                dot += q[qBase + e] * kCache[row + e];
            float s = dot * p.Scale;
            float mNew = XMath.Max(m, s);
            float alpha = XMath.Exp(m - mNew); // m = -inf on the first key: exp(-inf) = 0, mNew is finite
            float pj = XMath.Exp(s - mNew);
            l = l * alpha + pj;
            acc = acc * alpha + pj * vCache[row + d];
            m = mNew;
        }

        if (p.HasSinks != 0)
            acc *= AttentionKernels.SinkRescale(sinks[h], m, ref l);
        output[qBase + d] = acc / l;
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(PagedAttentionVersion.V2Decode, "grid ceil(T*H/4), group 128 (warp per (token, head))", Decode = DecodeUse.Activations,
        BlockSize = DecodeThreads,
        Summary = "warp per (token, head): 32 keys per step with a lane per key, PV with lanes over Dh, no key splits")]
    public static void PagedAttentionV2Decode(
        ArrayView<float> q,            // [T, H, Dh]
        ArrayView<float> kCache,       // [NumBlocks, Hkv, BS, Dh]
        ArrayView<float> vCache,       // [NumBlocks, Hkv, BS, Dh]
        ArrayView<float> output,       // [T, H, Dh]
        ArrayView<int> positions,      // [T]
        ArrayView<int> seqOfToken,     // [T]
        ArrayView<int> blockTables,    // [S, maxBlocks]
        ArrayView<float> sinks,        // [H] when p.HasSinks != 0
        PagedAttentionParams p)
    {
        var qs = SharedMemory.Allocate<float>(DecodeWarps * MaxHeadDim); // [warp, Dh] this warp's query
        var ps = SharedMemory.Allocate<float>(DecodeWarps * 32);         // [warp, 32] probabilities of a step

        int lane = Warp.LaneIdx;
        int warp = Warp.WarpIdx;
        int th = Grid.IdxX * DecodeWarps + warp; // t * H + h
        // Warps never meet at a group barrier, so a warp past the last row simply does nothing.
        if (th < p.Tokens * p.Heads)
        {
            int dh = p.HeadDim;
            int h = th % p.Heads;
            int t = th / p.Heads;
            int kvh = h / (p.Heads / p.KvHeads);
            int qw = warp * MaxHeadDim;
            int pw = warp * 32;
            int qBase = th * dh;
            for (int d = lane; d < dh; d += 32)
                qs[qw + d] = q[qBase + d];
            Warp.Barrier();
            KeyRange(positions, seqOfToken, t, p, out int lo, out int hi, out int tableRow);
            // PV: lane owns dims lane, lane+32, lane+64, lane+96 (Dh <= 128), so each V row is one coalesced read.
            bool has0 = lane < dh, has1 = lane + 32 < dh, has2 = lane + 64 < dh, has3 = lane + 96 < dh;

            float m = float.NegativeInfinity, l = 0f, a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f;
            for (int j0 = lo; j0 <= hi; j0 += 32)
            {
                // QK: lane per key, 32 rows in flight per warp.
                int j = j0 + lane;
                float s = float.NegativeInfinity;
                long row = j <= hi ? RowOf(blockTables, tableRow, j, kvh, p) : -1;
                if (row >= 0)
                {
                    float dot = 0f;
                    for (int d = 0; d < dh; d++)
                        dot += qs[qw + d] * kCache[row + d];
                    s = dot * p.Scale;
                }

                // Max is exact in any order: every lane gets the same step max.
                float stepMax = s;
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 16));
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 8));
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 4));
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 2));
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 1));
                float mNew = XMath.Max(m, stepMax);
                // A step whose keys are all hidden (blocks outside the pool) leaves the row as it was.
                bool any = mNew != float.NegativeInfinity;
                float alpha = any ? XMath.Exp(m - mNew) : 1f;
                ps[pw + lane] = row >= 0 ? XMath.Exp(s - mNew) : 0f;
                Warp.Barrier();

                // PV: every lane sums the step's probabilities in the same order (identical l on all lanes).
                l *= alpha;
                a0 *= alpha;
                a1 *= alpha;
                a2 *= alpha;
                a3 *= alpha;
                int n = IntrinsicMath.Min(32, hi - j0 + 1);
                for (int jj = 0; jj < n; jj++)
                {
                    float pj = ps[pw + jj];
                    if (pj == 0f)
                        continue; // hidden key (or an underflowed weight, which adds nothing either)
                    long vr = RowOf(blockTables, tableRow, j0 + jj, kvh, p) + lane;
                    l += pj;
                    if (has0) a0 += pj * vCache[vr];
                    if (has1) a1 += pj * vCache[vr + 32];
                    if (has2) a2 += pj * vCache[vr + 64];
                    if (has3) a3 += pj * vCache[vr + 96];
                }

                m = mNew;
                Warp.Barrier(); // the next step overwrites ps
            }

            if (p.HasSinks != 0)
            {
                float f = AttentionKernels.SinkRescale(sinks[h], m, ref l);
                a0 *= f;
                a1 *= f;
                a2 *= f;
                a3 *= f;
            }

            int o = qBase + lane;
            if (has0) output[o] = a0 / l;
            if (has1) output[o + 32] = a1 / l;
            if (has2) output[o + 64] = a2 / l;
            if (has3) output[o + 96] = a3 / l;
        }
    }
}

/// <summary>
/// Launchers of the paged KV append and attention: load once, validate, launch. The version is fixed at Create
/// (V1 loads only V1). Stateless past the loaded kernels (no scratch): one instance may serve several streams.
/// </summary>
public sealed class PagedAttentionKernel
{
    private const int AppendGroup = Devices.MaxGroupSize;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>,
        PagedAttentionParams> append;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>,
        ArrayView<int>, ArrayView<int>, ArrayView<float>, PagedAttentionParams> attention;

    private PagedAttentionKernel(Accelerator accelerator, PagedAttentionVersion version)
    {
        Version = version;
        append = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, PagedAttentionParams>(
            PagedAttentionKernels.PagedKvAppendV1);
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>,
            PagedAttentionParams> kernel = version switch
        {
            PagedAttentionVersion.V1 => PagedAttentionKernels.PagedAttentionV1,
            PagedAttentionVersion.V2Decode => PagedAttentionKernels.PagedAttentionV2Decode,
            _ => throw new ArgumentException($"PagedAttentionKernel: unknown version {version}", nameof(version)),
        };
        attention = accelerator.LoadCounted(kernel);
    }

    public PagedAttentionVersion Version { get; }

    public static PagedAttentionKernel Create(Accelerator accelerator, PagedAttentionVersion version = PagedAttentionVersion.V2Decode) =>
        new(accelerator, version);

    /// <summary>Floats of one of kCache / vCache for a pool of numBlocks blocks.</summary>
    public static long CacheElements(int numBlocks, int kvHeads, int blockSize, int headDim) => (long)numBlocks * kvHeads * blockSize * headDim;

    /// <summary>
    /// Pool row of token t: kCache, vCache [NumBlocks, Hkv, BS, Dh] at slot slots[t] = block * BS + off get k[t, h, :],
    /// v[t, h, :] for every kv head h. k, v [T, Hkv, Dh]. The pool's block count is kCache.Length / (Hkv * BS * Dh). The
    /// caller checks 0 &lt;= slots[t] &lt; NumBlocks * BS on the host (the kernel skips a slot outside).
    /// </summary>
    public void Append(AcceleratorStream stream, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache,
        ArrayView<int> slots, int tokens, int kvHeads, int headDim, int blockSize)
    {
        const string who = "PagedAttentionKernel.Append";
        var p = Shape(who, stream, kCache, vCache, tokens, kvHeads, kvHeads, headDim, blockSize);
        long n = (long)tokens * kvHeads * headDim;
        Index64.CheckInt(who, "k [T, Hkv, Dh]", n);
        AttentionKernel.CheckLength(k, n, "k [T, Hkv, Dh]", who);
        AttentionKernel.CheckLength(v, n, "v [T, Hkv, Dh]", who);
        if (slots.Length < tokens)
            throw new ArgumentException($"{who}: slots [T] has {slots.Length} ints, needs {tokens}");
        append(stream, new KernelConfig((int)((n + AppendGroup - 1) / AppendGroup), AppendGroup), k, v, kCache, vCache, slots, p);
    }

    /// <summary>
    /// o [T, H, Dh] = per (token, head) softmax(q . keys * scale) values over the keys of the token's sequence at
    /// positions 0..positions[t] (window: pos - p &lt; window when &gt; 0), read through blockTables [S, maxBlocks] row
    /// seqOfToken[t] from kCache, vCache [NumBlocks, Hkv, BS, Dh] (the file header). q, o [T, H, Dh]; Dh &lt;= 128;
    /// sinks [H] (F32) or empty; scale finite and &gt; 0. Append the step's tokens first. The caller checks the
    /// metadata on the host (positions[t] &lt; maxBlocks * BS, table entries inside the pool).
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> output,
        ArrayView<int> positions, ArrayView<int> seqOfToken, ArrayView<int> blockTables, int tokens, int heads, int kvHeads, int headDim,
        int blockSize, int maxBlocks, int window, ArrayView<float> sinks, float scale)
    {
        const string who = "PagedAttentionKernel.Launch";
        var p = Shape(who, stream, kCache, vCache, tokens, heads, kvHeads, headDim, blockSize);
        long n = (long)tokens * heads * headDim;
        Index64.CheckInt(who, "q [T, H, Dh]", n);
        AttentionKernel.CheckLength(q, n, "q [T, H, Dh]", who);
        AttentionKernel.CheckLength(output, n, "output [T, H, Dh]", who);
        var meta = PagedMetadata.Check(who, positions, seqOfToken, blockTables, tokens, blockSize, maxBlocks);
        p.MaxBlocks = maxBlocks;
        p.Sequences = meta;
        p.Window = window;
        if (!float.IsFinite(scale) || scale <= 0f)
            throw new ArgumentException($"{who}: scale must be finite and > 0, got {scale}", nameof(scale));
        p.Scale = scale;
        if (sinks.IsValid && sinks.Length != 0)
        {
            if (sinks.Length != heads)
                throw new ArgumentException($"{who}: sinks [H] has {sinks.Length} floats, needs {heads}", nameof(sinks));
            p.HasSinks = 1;
        }

        // The kernels never read an absent sinks view; it must still be a valid argument.
        var sinkArg = p.HasSinks != 0 ? sinks : q;
        switch (Version)
        {
            case PagedAttentionVersion.V1:
                Index64.CheckInt(who, "groups T * H", (long)tokens * heads);
                attention(stream, new KernelConfig(tokens * heads, headDim), q, kCache, vCache, output, positions, seqOfToken, blockTables, sinkArg, p);
                break;
            case PagedAttentionVersion.V2Decode:
            {
                long groups = ((long)tokens * heads + PagedAttentionKernels.DecodeWarps - 1) / PagedAttentionKernels.DecodeWarps;
                attention(stream, new KernelConfig((int)groups, PagedAttentionKernels.DecodeThreads), q, kCache, vCache, output, positions, seqOfToken,
                    blockTables, sinkArg, p);
                break;
            }

            default:
                throw new ArgumentException($"{who}: unknown version {Version}");
        }
    }

    private static PagedAttentionParams Shape(string who, AcceleratorStream stream, ArrayView<float> kCache, ArrayView<float> vCache, int tokens,
        int heads, int kvHeads, int headDim, int blockSize)
    {
        if (stream is null)
            throw new ArgumentNullException(nameof(stream), $"{who}: stream is null");
        if (tokens < 1)
            throw new ArgumentException($"{who}: tokens must be >= 1 (got {tokens})");
        if (kvHeads < 1 || heads < 1 || heads % kvHeads != 0)
            throw new ArgumentException($"{who}: heads ({heads}) must be a positive multiple of kvHeads ({kvHeads})");
        if (headDim < 1 || headDim > PagedAttentionKernels.MaxHeadDim)
            throw new ArgumentException($"{who}: headDim must be in 1..{PagedAttentionKernels.MaxHeadDim} (got {headDim})");
        if (blockSize < 1)
            throw new ArgumentException($"{who}: blockSize must be >= 1 (got {blockSize})");
        long perBlock = (long)kvHeads * blockSize * headDim;
        long blocks = kCache.Length / perBlock;
        if (blocks < 1)
            throw new ArgumentException($"{who}: kCache [NumBlocks, Hkv, BS, Dh] has {kCache.Length} floats, less than one block of {perBlock}");
        if (blocks * blockSize > int.MaxValue)
            throw new ArgumentException($"{who}: a pool of {blocks} blocks of {blockSize} has more slots than 32-bit slot ids allow");
        AttentionKernel.CheckLength(vCache, blocks * perBlock, "vCache [NumBlocks, Hkv, BS, Dh] (as many blocks as kCache)", who);
        return new PagedAttentionParams { Tokens = tokens, Heads = heads, KvHeads = kvHeads, HeadDim = headDim, BlockSize = blockSize, NumBlocks = (int)blocks };
    }
}

/// <summary>The paged launchers' checks of the step metadata views (their lengths; the values are device data).</summary>
public static class PagedMetadata
{
    /// <summary>Checks positions, seqOfToken [T] and blockTables [S, maxBlocks]; returns S = blockTables.Length / maxBlocks.</summary>
    public static int Check(string who, ArrayView<int> positions, ArrayView<int> seqOfToken, ArrayView<int> blockTables, int tokens, int blockSize,
        int maxBlocks)
    {
        if (maxBlocks < 1)
            throw new ArgumentException($"{who}: maxBlocks must be >= 1 (got {maxBlocks})");
        if ((long)maxBlocks * blockSize > int.MaxValue)
            throw new ArgumentException($"{who}: maxBlocks {maxBlocks} x blockSize {blockSize} positions pass 32-bit positions");
        if (positions.Length < tokens)
            throw new ArgumentException($"{who}: positions [T] has {positions.Length} ints, needs {tokens}");
        if (seqOfToken.Length < tokens)
            throw new ArgumentException($"{who}: seqOfToken [T] has {seqOfToken.Length} ints, needs {tokens}");
        long sequences = blockTables.Length / maxBlocks;
        if (sequences < 1)
            throw new ArgumentException($"{who}: blockTables [S, maxBlocks] has {blockTables.Length} ints, less than one row of {maxBlocks}");
        return (int)Math.Min(sequences, int.MaxValue);
    }
}
