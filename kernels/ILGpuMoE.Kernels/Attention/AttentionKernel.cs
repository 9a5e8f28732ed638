// Attention family: KV-cache append and causal grouped-query attention over an F32 KV cache.
//
// KV cache layout (per layer, allocated by the runtime): kCache, vCache are [Hkv, maxSeq, Dh] f32, row-major.
//   Why [Hkv, maxSeq, Dh] and not [maxSeq, Hkv, Dh]: every attention group reads the keys of ONE kv head, for
//   positions lo..hi. In this layout they are one contiguous run of (hi - lo) * Dh floats, so decode streams them
//   with fully coalesced, sequential reads (whole 128-byte lines, good DRAM page locality, easy prefetch), and a
//   prefill K/V tile is a single contiguous block. The other layout interleaves the Hkv heads, so one head's keys
//   are Dh-float pieces at a stride of Hkv * Dh. The price is paid by the append, which writes T rows of Dh floats
//   per head at stride maxSeq * Dh: T * Hkv * Dh floats per step, negligible next to the S * Hkv * Dh read.
//
// Versions:
//   KvAppendV1        k, v [T, Hkv, Dh] -> cache rows pos0..pos0+T-1. One thread per element, reads coalesced.
//   AttentionV1       simplest correct: one group per (token, head), one thread per output dim; every thread walks
//                     all visible keys with an online (running-max) softmax, recomputing the dot product itself.
//                     No shared memory, no barriers, O(S * Dh) work per thread (Dh-fold redundant).
//   AttentionV2Prefill flash-style: one group per (tile of BQ=16 queries, head); K/V tiles of BK=16 keys staged in
//                     shared memory (K padded to stride Dh+1 against bank conflicts), scores of the tile in shared
//                     memory, online softmax per query row, output accumulators in shared memory. Key tiles cover
//                     only the causal/window-visible range of the query tile. Shared memory is fixed (~33 KB,
//                     sized by BQ, BK and Dh <= 128), never by S.
//   AttentionV2Decode split-K for small T (decode, T = 1): one group per (token, kv head, key split); one warp per
//                     query head of that kv head (GQA: the G heads read the same K/V rows at the same time, so the
//                     row is fetched from DRAM once and served from L1/L2 to the other warps). Steps of 32 keys:
//                     QK with a lane per key (32 independent rows in flight, no per-key reduction), a warp max, the
//                     32 probabilities through shared memory, PV with lanes over Dh (each V row one coalesced
//                     512-byte read at Dh=128); online softmax in registers. Writes (m, l, acc) partials per split.
//   AttentionV2Combine deterministic second pass over the splits of one (token, head): fixed split order, no atomics.
//   AttentionV3Decode  T = 1 in one launch, position read from a device view, grid fixed by maxSeq (graph-capturable):
//                     16-byte K/V loads with lanes over Dh, the split combine done by the last group of each kv head
//                     (AttentionV3Decode.cs; launched by AttentionKernel.LaunchDecode).
//
// Indices: a layer's cache may pass 2^31 floats (e.g. Hkv 128 x 262,144 positions x Dh 128 = 2^32), so the kernels
// take one kv head's [maxSeq, Dh] rows as a view at a 64-bit start and index inside it with int (maxSeq * Dh < 2^31,
// checked by the launcher): no 64-bit math per key.
//
// Semantics (RefOps.GeneralAttention): query t sits at position pos0 + t; key j is visible iff j <= pos and
// (window <= 0 or pos - j < window); query head h reads kv head h / (H / Hkv); softmax scale 1/sqrt(Dh) unless the
// launcher is given one (DeepSeek-V3: qk_head_dim^-0.5 * YaRN's mscale^2); softmax in F32 with the running max
// subtracted. Only cache rows 0..pos0+T-1 are ever read (the tests poison the rest with NaN).
// Sinks (gpt-oss' self_attn.sinks, an optional F32 view [H]): head h's softmax row gets one extra logit sinks[h], in
// the max and in the denominator, with no value. Every version folds it in once, at the end of the row: with the row's
// running max m, sum l and unnormalised output acc, M = max(m, sink), f = exp(m - M), out = acc f / (l f + exp(sink - M))
// (SinkRescale). The split-K decode folds it into the combine only (V2Combine, V3Decode's last group), so it counts
// once whatever the splits. Without sinks (HasSinks 0) no instruction of the earlier path changes: the same bits.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Attention;

/// <summary>attention/kv-append's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("attention/kv-append")]
public enum KvAppendVersion
{
    /// <summary>One thread per (token, kv head, dim) element.</summary>
    V1 = 1,
}

/// <summary>Scalar launch arguments of the attention kernels (one struct keeps the kernel signatures short).</summary>
public struct AttentionParams
{
    /// <summary>T: query tokens in this launch, at positions Pos0..Pos0+T-1.</summary>
    public int Tokens;

    /// <summary>H: query heads.</summary>
    public int Heads;

    /// <summary>Hkv: key/value heads (H % Hkv == 0).</summary>
    public int KvHeads;

    /// <summary>Dh: head dim.</summary>
    public int HeadDim;

    /// <summary>Rows per head in the cache ([Hkv, MaxSeq, Dh]).</summary>
    public int MaxSeq;

    /// <summary>Position of the first query token.</summary>
    public int Pos0;

    /// <summary>Sliding window (keys with pos - j &lt; Window); &lt;= 0 means none.</summary>
    public int Window;

    /// <summary>Softmax scale (1/sqrt(Dh) by default).</summary>
    public float Scale;

    /// <summary>1: the sinks view [H] is read (one extra logit per head); 0: no sinks, the view is not read.</summary>
    public int HasSinks;

    /// <summary>Decode split-K: number of key splits and keys per split.</summary>
    public int Splits;

    public int KeysPerSplit;
}

public static class AttentionKernels
{
    /// <summary>Largest head dim: V2 sizes its shared tiles by it; V2 decode keeps Dh / 32 accumulators per lane.</summary>
    public const int MaxHeadDim = 128;

    /// <summary>V2 prefill: queries per tile, keys per tile, threads per group (16 rows x 8 threads per row).</summary>
    public const int PrefillQueries = 16;

    public const int PrefillKeys = 16;

    public const int PrefillThreads = 128;

    /// <summary>V2 decode: at most this many warps (query heads of one kv head at a time) per group.</summary>
    public const int MaxDecodeWarps = 8;

    private const int ThreadsPerRow = PrefillThreads / PrefillQueries;

    private const int KStride = MaxHeadDim + 1;

    /// <summary>First visible key of a query at pos.</summary>
    private static int FirstKey(int pos, int window) => window > 0 ? IntrinsicMath.Max(0, pos - window + 1) : 0;

    /// <summary>
    /// Folds a sink logit into a finished softmax row of running max m and sum l: l becomes l f + exp(sink - M) with
    /// M = max(m, sink); returns f = exp(m - M), the factor of the row's unnormalised output.
    /// </summary>
    internal static float SinkRescale(float sink, float m, ref float l)
    {
        float mNew = XMath.Max(m, sink);
        float f = XMath.Exp(m - mNew);
        l = l * f + XMath.Exp(sink - mNew);
        return f;
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(KvAppendVersion.V1, "grid ceil(T*Hkv*Dh/256), group 256")]
    public static void KvAppendV1(
        ArrayView<float> k,       // [T, Hkv, Dh]
        ArrayView<float> v,       // [T, Hkv, Dh]
        ArrayView<float> kCache,  // [Hkv, maxSeq, Dh]
        ArrayView<float> vCache,  // [Hkv, maxSeq, Dh]
        int tokens, int kvHeads, int headDim, int maxSeq, int pos0)
    {
        int i = Grid.GlobalIndex.X;
        if (i >= tokens * kvHeads * headDim)
            return;
        int d = i % headDim;
        int row = i / headDim;
        int kvh = row % kvHeads;
        int t = row / kvHeads;
        long dst = KvCacheLayout.Index(kvh, pos0 + t, d, maxSeq, headDim);
        kCache[dst] = k[i];
        vCache[dst] = v[i];
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(AttentionVersion.V1, "grid T*H, group Dh")]
    public static void AttentionV1(
        ArrayView<float> q,       // [T, H, Dh]
        ArrayView<float> kCache,  // [Hkv, maxSeq, Dh]
        ArrayView<float> vCache,  // [Hkv, maxSeq, Dh]
        ArrayView<float> output,  // [T, H, Dh]
        ArrayView<float> sinks,   // [H] when p.HasSinks != 0
        AttentionParams p)
    {
        int g = Grid.IdxX;
        int h = g % p.Heads;
        int t = g / p.Heads;
        int d = Group.IdxX;
        int dh = p.HeadDim;
        int kvh = h / (p.Heads / p.KvHeads);
        int pos = p.Pos0 + t;
        int qBase = (t * p.Heads + h) * dh;
        // This kv head's rows [maxSeq, Dh]: the 64-bit start is added once; offsets inside stay int
        // (the launcher checks maxSeq * Dh < 2^31).
        var kHead = kCache.SubView(KvCacheLayout.Index(kvh, 0, 0, p.MaxSeq, dh), (long)p.MaxSeq * dh);
        var vHead = vCache.SubView(KvCacheLayout.Index(kvh, 0, 0, p.MaxSeq, dh), (long)p.MaxSeq * dh);

        float m = float.NegativeInfinity, l = 0f, acc = 0f;
        for (int j = FirstKey(pos, p.Window); j <= pos; j++)
        {
            int row = j * dh;
            float dot = 0f;
            for (int e = 0; e < dh; e++)
                dot += q[qBase + e] * kHead[row + e];
            float s = dot * p.Scale;
            float mNew = XMath.Max(m, s);
            float alpha = XMath.Exp(m - mNew); // m = -inf on the first key: exp(-inf) = 0, mNew is finite
            float pj = XMath.Exp(s - mNew);
            l = l * alpha + pj;
            acc = acc * alpha + pj * vHead[row + d];
            m = mNew;
        }

        if (p.HasSinks != 0)
            acc *= SinkRescale(sinks[h], m, ref l);
        output[qBase + d] = acc / l; // l >= 1: the key at pos itself is always visible
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(AttentionVersion.V2Prefill, "grid ceil(T/16)*H, group 128",
        Summary = "flash-style: 16x16 query/key tiles in shared memory, online softmax, only visible key tiles")]
    public static void AttentionV2Prefill(
        ArrayView<float> q,       // [T, H, Dh]
        ArrayView<float> kCache,  // [Hkv, maxSeq, Dh]
        ArrayView<float> vCache,  // [Hkv, maxSeq, Dh]
        ArrayView<float> output,  // [T, H, Dh]
        ArrayView<float> sinks,   // [H] when p.HasSinks != 0
        AttentionParams p)
    {
        var qs = SharedMemory.Allocate<float>(PrefillQueries * MaxHeadDim);   // [BQ, Dh]
        var ks = SharedMemory.Allocate<float>(PrefillKeys * KStride);         // [BK, Dh+1]
        var vs = SharedMemory.Allocate<float>(PrefillKeys * MaxHeadDim);      // [BK, Dh]
        var ss = SharedMemory.Allocate<float>(PrefillQueries * PrefillKeys);  // [BQ, BK] scaled scores, -inf = hidden
        var os = SharedMemory.Allocate<float>(PrefillQueries * MaxHeadDim);   // [BQ, Dh] unnormalised output

        int tid = Group.IdxX;
        int dh = p.HeadDim;
        int ksr = dh + 1; // odd row stride: the 16 keys of a score warp hit 16 different banks
        // Heads vary fastest across groups, so the H/Hkv groups sharing a kv head run together and share L2.
        int h = Grid.IdxX % p.Heads;
        int t0 = Grid.IdxX / p.Heads * PrefillQueries;
        int rows = IntrinsicMath.Min(PrefillQueries, p.Tokens - t0);
        int kvh = h / (p.Heads / p.KvHeads);
        // This kv head's rows [maxSeq, Dh]: the 64-bit start is added once; offsets inside stay int
        // (the launcher checks maxSeq * Dh < 2^31).
        var kHead = kCache.SubView(KvCacheLayout.Index(kvh, 0, 0, p.MaxSeq, dh), (long)p.MaxSeq * dh);
        var vHead = vCache.SubView(KvCacheLayout.Index(kvh, 0, 0, p.MaxSeq, dh), (long)p.MaxSeq * dh);

        // Thread (r, sub) owns output row r, dims sub, sub+8, ...; it keeps the row's running max and sum itself
        // (the 8 threads of a row compute the same values in the same order, so they agree bit for bit).
        int r = tid / ThreadsPerRow;
        int sub = tid % ThreadsPerRow;
        for (int d = sub; d < dh; d += ThreadsPerRow)
            os[r * dh + d] = 0f;
        for (int i = tid; i < PrefillQueries * dh; i += PrefillThreads)
        {
            int qr = i / dh;
            int qt = t0 + IntrinsicMath.Min(qr, rows - 1); // clamp: rows past T load a valid row, never used
            qs[i] = q[(qt * p.Heads + h) * dh + (i - qr * dh)];
        }

        int posFirst = p.Pos0 + t0;
        int kHi = posFirst + rows; // exclusive: the last query sees keys up to its own position
        float m = float.NegativeInfinity, l = 0f;
        for (int k0 = FirstKey(posFirst, p.Window); k0 < kHi; k0 += PrefillKeys)
        {
            Group.Barrier(); // previous tile fully consumed (and qs/os written on the first pass)
            int nk = IntrinsicMath.Min(PrefillKeys, kHi - k0);
            for (int i = tid; i < PrefillKeys * dh; i += PrefillThreads)
            {
                int j = i / dh;
                int d = i - j * dh;
                // Clamp to the last valid key: never read a row past pos0+T-1 (the unused cache tail).
                int src = (k0 + IntrinsicMath.Min(j, nk - 1)) * dh + d;
                ks[j * ksr + d] = kHead[src];
                vs[i] = vHead[src];
            }

            Group.Barrier();
            for (int i = tid; i < PrefillQueries * PrefillKeys; i += PrefillThreads)
            {
                int sr = i / PrefillKeys;
                int j = i - sr * PrefillKeys;
                int key = k0 + j;
                int pos = posFirst + sr;
                float s = float.NegativeInfinity;
                if (sr < rows && j < nk && key <= pos && (p.Window <= 0 || pos - key < p.Window))
                {
                    float dot = 0f;
                    for (int d = 0; d < dh; d++)
                        dot += qs[sr * dh + d] * ks[j * ksr + d];
                    s = dot * p.Scale;
                }

                ss[i] = s;
            }

            Group.Barrier();
            float tileMax = float.NegativeInfinity;
            for (int j = 0; j < PrefillKeys; j++)
                tileMax = XMath.Max(tileMax, ss[r * PrefillKeys + j]);
            if (tileMax == float.NegativeInfinity)
                continue; // nothing visible to this row in this tile (window start, or a row past T)
            float mNew = XMath.Max(m, tileMax);
            float alpha = XMath.Exp(m - mNew);
            l *= alpha;
            for (int d = sub; d < dh; d += ThreadsPerRow)
                os[r * dh + d] *= alpha;
            for (int j = 0; j < PrefillKeys; j++)
            {
                float s = ss[r * PrefillKeys + j];
                if (s == float.NegativeInfinity)
                    continue;
                float pj = XMath.Exp(s - mNew);
                l += pj;
                for (int d = sub; d < dh; d += ThreadsPerRow)
                    os[r * dh + d] += pj * vs[j * dh + d];
            }

            m = mNew;
        }

        if (r < rows)
        {
            int oBase = ((t0 + r) * p.Heads + h) * dh;
            if (p.HasSinks != 0)
            {
                float f = SinkRescale(sinks[h], m, ref l);
                for (int d = sub; d < dh; d += ThreadsPerRow)
                    output[oBase + d] = os[r * dh + d] * f / l;
            }
            else
            {
                for (int d = sub; d < dh; d += ThreadsPerRow)
                    output[oBase + d] = os[r * dh + d] / l;
            }
        }

    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(AttentionVersion.V2Decode, "grid T*Hkv*splits, group 32*min(H/Hkv, 8)",
        Summary = "split-K decode: warp per query head of a kv head, 32 keys per step (lane per key), partials per split")]
    public static void AttentionV2Decode(
        ArrayView<float> q,        // [T, H, Dh]
        ArrayView<float> kCache,   // [Hkv, maxSeq, Dh]
        ArrayView<float> vCache,   // [Hkv, maxSeq, Dh]
        ArrayView<float> partO,    // [T, H, splits, Dh] unnormalised partial outputs
        ArrayView<float> partML,   // [T, H, splits, 2] running max, running sum
        AttentionParams p)
    {
        var qs = SharedMemory.Allocate<float>(MaxDecodeWarps * MaxHeadDim); // [warp, Dh] this warp's query
        var ps = SharedMemory.Allocate<float>(MaxDecodeWarps * 32);         // [warp, 32] probabilities of a step

        int g = Grid.IdxX;
        int split = g % p.Splits;
        int rest = g / p.Splits;
        int kvh = rest % p.KvHeads;
        int t = rest / p.KvHeads;
        int dh = p.HeadDim;
        int group = p.Heads / p.KvHeads;
        int pos = p.Pos0 + t;
        int lo = IntrinsicMath.Max(FirstKey(pos, p.Window), split * p.KeysPerSplit);
        int hi = IntrinsicMath.Min(pos + 1, (split + 1) * p.KeysPerSplit);
        int lane = Warp.LaneIdx;
        int warp = Warp.WarpIdx;
        int warps = Group.DimX / Warp.WarpSize;
        // This kv head's rows [maxSeq, Dh]: the 64-bit start is added once; offsets inside stay int
        // (the launcher checks maxSeq * Dh < 2^31).
        var kHead = kCache.SubView(KvCacheLayout.Index(kvh, 0, 0, p.MaxSeq, dh), (long)p.MaxSeq * dh);
        var vHead = vCache.SubView(KvCacheLayout.Index(kvh, 0, 0, p.MaxSeq, dh), (long)p.MaxSeq * dh);
        int qw = warp * MaxHeadDim;
        int pw = warp * 32;
        // PV: lane owns dims lane, lane+32, lane+64, lane+96 (Dh <= 128), so each V row is one coalesced read.
        bool has0 = lane < dh, has1 = lane + 32 < dh, has2 = lane + 64 < dh, has3 = lane + 96 < dh;

        // Warps never meet at a group barrier, so each may loop over its heads independently.
        for (int hh = warp; hh < group; hh += warps)
        {
            int h = kvh * group + hh;
            int qBase = (t * p.Heads + h) * dh;
            for (int d = lane; d < dh; d += 32)
                qs[qw + d] = q[qBase + d];
            Warp.Barrier();

            float m = float.NegativeInfinity, l = 0f, a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f;
            for (int j0 = lo; j0 < hi; j0 += 32)
            {
                // QK: lane per key, 32 keys in flight per warp; each lane walks its own row (the G warps of the
                // group read the same rows, so DRAM serves each row once and L1 the rest).
                int j = j0 + lane;
                float s = float.NegativeInfinity;
                if (j < hi)
                {
                    int row = j * dh;
                    float dot = 0f;
                    // Unrolled by 4 by hand (ptxas does not unroll this loop): the 4 loads of a step share one
                    // address computation. Same single accumulator, same order: the same dot bit for bit.
                    // The K index is 64-bit so ptxas folds +1..+3 into the load's immediate offset (a 32-bit index
                    // is widened per element, since it might wrap).
                    int d = 0;
                    for (long kd = row; d + 4 <= dh; d += 4, kd += 4)
                    {
                        dot += qs[qw + d] * kHead[kd];
                        dot += qs[qw + d + 1] * kHead[kd + 1];
                        dot += qs[qw + d + 2] * kHead[kd + 2];
                        dot += qs[qw + d + 3] * kHead[kd + 3];
                    }

                    for (; d < dh; d++)
                        dot += qs[qw + d] * kHead[row + d];
                    s = dot * p.Scale;
                }

                // Max is exact in any order: every lane gets the same step max (lane 0 always has a key).
                float stepMax = s;
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 16));
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 8));
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 4));
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 2));
                stepMax = XMath.Max(stepMax, Warp.ShuffleXor(stepMax, 1));
                float mNew = XMath.Max(m, stepMax);
                float alpha = XMath.Exp(m - mNew); // 0 on the first step (m = -inf, mNew finite)
                ps[pw + lane] = j < hi ? XMath.Exp(s - mNew) : 0f;
                Warp.Barrier();

                // PV: every lane sums the step's probabilities in the same order (identical l on all lanes).
                l *= alpha;
                a0 *= alpha;
                a1 *= alpha;
                a2 *= alpha;
                a3 *= alpha;
                int n = IntrinsicMath.Min(32, hi - j0);
                for (int jj = 0; jj < n; jj++)
                {
                    float pj = ps[pw + jj];
                    int row = (j0 + jj) * dh + lane;
                    l += pj;
                    if (has0) a0 += pj * vHead[row];
                    if (has1) a1 += pj * vHead[row + 32];
                    if (has2) a2 += pj * vHead[row + 64];
                    if (has3) a3 += pj * vHead[row + 96];
                }

                m = mNew;
                Warp.Barrier(); // the next step overwrites ps
            }

            // An empty split (all its keys hidden) writes m = -inf, l = 0, acc = 0: the combine gives it weight 0.
            int idx = (t * p.Heads + h) * p.Splits + split;
            int oBase = idx * dh + lane;
            if (has0) partO[oBase] = a0;
            if (has1) partO[oBase + 32] = a1;
            if (has2) partO[oBase + 64] = a2;
            if (has3) partO[oBase + 96] = a3;
            if (lane == 0)
            {
                partML[2 * idx] = m;
                partML[2 * idx + 1] = l;
            }

            Warp.Barrier(); // the next head overwrites qs
        }
    }

    [KernelInfo(AttentionVersion.V2Decode, "grid T*H, group 32*ceil(Dh/32)", Entry = "combine",
        Summary = "deterministic merge of the split-K partials in split order")]
    public static void AttentionV2Combine(
        ArrayView<float> partO,   // [T, H, splits, Dh]
        ArrayView<float> partML,  // [T, H, splits, 2]
        ArrayView<float> output,  // [T, H, Dh]
        ArrayView<float> sinks,   // [H] when p.HasSinks != 0
        AttentionParams p)
    {
        int th = Grid.IdxX; // t * H + h
        int idx0 = th * p.Splits;
        // The sink is a logit of the whole row: it enters the max here and the sum once below, never per split.
        float sink = p.HasSinks != 0 ? sinks[th % p.Heads] : float.NegativeInfinity;
        float mMax = sink;
        for (int s = 0; s < p.Splits; s++)
            mMax = XMath.Max(mMax, partML[2 * (idx0 + s)]);
        for (int d = Group.IdxX; d < p.HeadDim; d += Group.DimX)
        {
            float l = 0f, acc = 0f;
            for (int s = 0; s < p.Splits; s++)
            {
                float ms = partML[2 * (idx0 + s)];
                if (ms == float.NegativeInfinity)
                    continue;
                float w = XMath.Exp(ms - mMax);
                l += partML[2 * (idx0 + s) + 1] * w;
                acc += partO[(idx0 + s) * p.HeadDim + d] * w;
            }

            if (p.HasSinks != 0)
                l += XMath.Exp(sink - mMax);
            output[th * p.HeadDim + d] = acc / l;
        }
    }
}

/// <summary>Which attention kernels a launcher uses; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("attention")]
public enum AttentionVersion
{
    /// <summary>Simplest correct kernel for every T.</summary>
    V1,

    /// <summary>Production choice: split-K decode for T &lt;= <see cref="AttentionKernel.DecodeMaxTokens"/>, flash prefill otherwise.</summary>
    V2,

    /// <summary>Always the flash-style prefill kernel (tests, benchmarks).</summary>
    V2Prefill,

    /// <summary>Always the split-K decode kernel plus combine, for any T (tests, benchmarks).</summary>
    V2Decode,

    /// <summary>T = 1 decode in one launch with the position read from the device (<see cref="AttentionKernel.LaunchDecode"/>).</summary>
    V3Decode,
}

/// <summary>The KV cache layout: per layer kCache and vCache are [Hkv, maxSeq, Dh] f32.</summary>
public static class KvCacheLayout
{
    /// <summary>Floats in one of kCache / vCache of one layer.</summary>
    public static long Elements(int kvHeads, int maxSeq, int headDim) => (long)kvHeads * maxSeq * headDim;

    /// <summary>Flat index of (kv head, position, dim), 64-bit: Hkv * maxSeq * Dh passes 2^31 at long contexts.</summary>
    public static long Index(int kvHead, int position, int dim, int maxSeq, int headDim) =>
        ((long)kvHead * maxSeq + position) * headDim + dim;
}

/// <summary>Appends the current tokens' k, v [T, Hkv, Dh] to a layer's cache at positions pos0..pos0+T-1.</summary>
public sealed class KvCacheAppendKernel
{
    private const int GroupSize = 256;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
        int, int, int, int, int> kernel;

    private KvCacheAppendKernel(Accelerator accelerator)
    {
        kernel = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>(
            AttentionKernels.KvAppendV1);
    }

    public static KvCacheAppendKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>kCache[kvh, pos0 + t, d] = k[t, kvh, d] (same for v). Requires pos0 + T &lt;= maxSeq.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache,
        int tokens, int kvHeads, int headDim, int maxSeq, int pos0)
    {
        AttentionKernel.CheckShape(tokens, kvHeads, kvHeads, headDim, maxSeq, pos0, "KvCacheAppendKernel");
        long n = (long)tokens * kvHeads * headDim;
        AttentionKernel.CheckLength(k, n, "k [T, Hkv, Dh]", "KvCacheAppendKernel");
        AttentionKernel.CheckLength(v, n, "v [T, Hkv, Dh]", "KvCacheAppendKernel");
        long cache = KvCacheLayout.Elements(kvHeads, maxSeq, headDim);
        AttentionKernel.CheckLength(kCache, cache, "kCache [Hkv, maxSeq, Dh]", "KvCacheAppendKernel");
        AttentionKernel.CheckLength(vCache, cache, "vCache [Hkv, maxSeq, Dh]", "KvCacheAppendKernel");
        int groups = (int)((n + GroupSize - 1) / GroupSize);
        kernel(stream, new KernelConfig(groups, GroupSize), k, v, kCache, vCache, tokens, kvHeads, headDim, maxSeq, pos0);
    }
}

/// <summary>
/// Causal grouped-query attention of T queries (positions pos0..pos0+T-1) over a layer's KV cache, whose rows
/// 0..pos0+T-1 must already hold the keys/values (append the current tokens first). T = 1 is decode; T &gt; 1 with
/// pos0 &gt; 0 is chunked prefill. Owns a small split-K scratch buffer (grown on demand, reused by every launch): use
/// one instance per stream, and dispose it.
/// </summary>
public sealed class AttentionKernel : IDisposable
{
    /// <summary>V2 uses the split-K decode kernel up to this many tokens, the tiled prefill kernel above.</summary>
    public const int DecodeMaxTokens = 2;

    // Split-K sizing: aim for this many decode groups (a few per SM on a 132-SM H200) and at least this many keys
    // per split (a split must amortise its partial write and the combine). Depends only on (T, Hkv, S), never on
    // the device, so results are the same on every device and bit-identical run to run.
    private const int DecodeTargetGroups = 1024;
    private const int MinKeysPerSplit = 32;

    private readonly Accelerator accelerator;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>? v1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>? prefill;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>? decode;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>? combine;

    private MemoryBuffer1D<float, Stride1D.Dense>? partO;
    private MemoryBuffer1D<float, Stride1D.Dense>? partML;

    // V3Decode: its own kernel (loaded by the V3Decode launcher, else at the first LaunchDecode) and its own scratch,
    // which V2's launches never reallocate (a captured graph keeps these addresses).
    private Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<KvQuad>, ArrayView<KvQuad>, ArrayView<float>, ArrayView<int>,
        ArrayView<KvQuad>, ArrayView<float>, ArrayView<int>, ArrayView<float>, AttentionDecodeParams>? decodeV3;
    private MemoryBuffer1D<float, Stride1D.Dense>? decodeO;
    private MemoryBuffer1D<float, Stride1D.Dense>? decodeML;
    private MemoryBuffer1D<int, Stride1D.Dense>? decodeCounters;

    private AttentionKernel(Accelerator accelerator, AttentionVersion version)
    {
        this.accelerator = accelerator;
        Version = version;
        if (version == AttentionVersion.V1)
        {
            v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(
                AttentionKernels.AttentionV1);
        }

        if (version is AttentionVersion.V2 or AttentionVersion.V2Prefill)
        {
            prefill = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(
                AttentionKernels.AttentionV2Prefill);
        }

        if (version is AttentionVersion.V2 or AttentionVersion.V2Decode)
        {
            decode = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(
                AttentionKernels.AttentionV2Decode);
            combine = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(
                AttentionKernels.AttentionV2Combine);
        }

        if (version == AttentionVersion.V3Decode)
            LoadDecodeV3();
    }

    public AttentionVersion Version { get; }

    /// <summary>
    /// Tests/benchmarks: force the decode split size (keys per split); null = automatic (V2), or
    /// <see cref="AttentionDecodeKernels.DefaultKeysPerSplit"/> (V3Decode, at most <see cref="AttentionDecodeKernels.MaxKeysPerSplit"/>).
    /// </summary>
    public int? KeysPerSplitOverride { get; set; }

    public static AttentionKernel Create(Accelerator accelerator, AttentionVersion version = AttentionVersion.V2) => new(accelerator, version);

    /// <summary>Split-K plan of the decode kernel for T queries, Hkv kv heads and S = pos0 + T keys.</summary>
    public static (int Splits, int KeysPerSplit) DecodeSplits(int tokens, int kvHeads, int keys, int? keysPerSplit = null)
    {
        int kps;
        if (keysPerSplit is int forced)
        {
            kps = Math.Max(1, forced);
        }
        else
        {
            int want = Math.Max(1, DecodeTargetGroups / Math.Max(1, tokens * kvHeads));
            kps = Math.Max(MinKeysPerSplit, (keys + want - 1) / want);
            kps = (kps + MinKeysPerSplit - 1) / MinKeysPerSplit * MinKeysPerSplit;
        }

        return ((keys + kps - 1) / kps, kps);
    }

    /// <summary>
    /// output[t, h, :] = softmax over visible keys j of (q[t, h] . k[j, h / (H/Hkv)]) * scale, times v. q, output
    /// [T, H, Dh]; kCache, vCache [Hkv, maxSeq, Dh] with rows 0..pos0+T-1 valid; key j is visible to query t iff
    /// j &lt;= pos0 + t and (window &lt;= 0 or pos0 + t - j &lt; window). Dh &lt;= 128. sinks [H] (optional, F32; default
    /// or empty: none): one extra logit per head in the softmax, no value (gpt-oss). scale: null = 1/sqrt(Dh), else
    /// finite and &gt; 0.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> output,
        int tokens, int heads, int kvHeads, int headDim, int maxSeq, int pos0, int window = 0, ArrayView<float> sinks = default, float? scale = null)
    {
        const string who = "AttentionKernel";
        if (Version == AttentionVersion.V3Decode)
            throw new ArgumentException($"{who}: V3Decode reads the position from a device view: call LaunchDecode");
        CheckShape(tokens, heads, kvHeads, headDim, maxSeq, pos0, who);
        long n = (long)tokens * heads * headDim;
        CheckLength(q, n, "q [T, H, Dh]", who);
        CheckLength(output, n, "output [T, H, Dh]", who);
        long cache = KvCacheLayout.Elements(kvHeads, maxSeq, headDim);
        CheckLength(kCache, cache, "kCache [Hkv, maxSeq, Dh]", who);
        CheckLength(vCache, cache, "vCache [Hkv, maxSeq, Dh]", who);

        var p = new AttentionParams
        {
            Tokens = tokens,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            MaxSeq = maxSeq,
            Pos0 = pos0,
            Window = window,
            Scale = SoftmaxScale(scale, headDim, who),
            HasSinks = CheckSinks(sinks, heads, who),
        };

        bool useDecode = Version == AttentionVersion.V2Decode || (Version == AttentionVersion.V2 && tokens <= DecodeMaxTokens);
        if (Version == AttentionVersion.V1)
        {
            v1!(stream, new KernelConfig(tokens * heads, headDim), q, kCache, vCache, output, sinks, p);
        }
        else if (!useDecode)
        {
            int qTiles = (tokens + AttentionKernels.PrefillQueries - 1) / AttentionKernels.PrefillQueries;
            prefill!(stream, new KernelConfig(qTiles * heads, AttentionKernels.PrefillThreads), q, kCache, vCache, output, sinks, p);
        }
        else
        {
            (p.Splits, p.KeysPerSplit) = DecodeSplits(tokens, kvHeads, pos0 + tokens, KeysPerSplitOverride);
            long parts = (long)tokens * heads * p.Splits;
            if (parts * (headDim + 2) > int.MaxValue)
                throw new ArgumentException($"{who}: {parts} split-K partials of Dh {headDim} exceed 32-bit indexing (use the prefill kernel)");
            EnsureScratch(stream, parts * headDim, parts * 2);
            int group = heads / kvHeads;
            int warps = Math.Min(group, AttentionKernels.MaxDecodeWarps);
            decode!(stream, new KernelConfig(tokens * kvHeads * p.Splits, 32 * warps), q, kCache, vCache,
                partO!.View.SubView(0, parts * headDim), partML!.View.SubView(0, parts * 2), p);
            combine!(stream, new KernelConfig(tokens * heads, 32 * ((headDim + 31) / 32)),
                partO.View.SubView(0, parts * headDim), partML.View.SubView(0, parts * 2), output, sinks, p);
        }
    }

    /// <summary>
    /// Decode (T = 1) attention in one launch (<see cref="AttentionVersion.V3Decode"/>, any launcher version): output
    /// [H, Dh] for the query q [H, Dh] at pos = positions[0], read on the device, over kCache, vCache [Hkv, maxSeq, Dh]
    /// rows 0..pos (append the token first); key j visible iff j &lt;= pos and (window &lt;= 0 or pos - j &lt; window).
    /// No argument depends on pos, so a CUDA graph can capture it once and replay it per token. The caller checks
    /// 0 &lt;= pos &lt; maxSeq on the host before uploading (the kernel clamps pos &gt;= maxSeq to maxSeq - 1 and gives NaN
    /// for pos &lt; 0). Dh must be a multiple of 4 and at most 128; kCache, vCache 16-byte aligned. The scratch
    /// (<see cref="DecodeScratchBytes"/>) is allocated at the first launch or by <see cref="ReserveDecode"/> and only
    /// grows: reserve the largest shape before capturing a graph. sinks [H] and scale as <see cref="Launch"/> (the sink
    /// is folded in once, by the combining group).
    /// </summary>
    public void LaunchDecode(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> output,
        ArrayView<int> positions, int heads, int kvHeads, int headDim, int maxSeq, int window = 0, ArrayView<float> sinks = default, float? scale = null)
    {
        const string who = "AttentionKernel.LaunchDecode";
        var p = DecodeParams(heads, kvHeads, headDim, maxSeq, window, who);
        p.Scale = SoftmaxScale(scale, headDim, who);
        p.HasSinks = CheckSinks(sinks, heads, who);
        long n = (long)heads * headDim;
        CheckLength(q, n, "q [H, Dh]", who);
        CheckLength(output, n, "output [H, Dh]", who);
        long cache = KvCacheLayout.Elements(kvHeads, maxSeq, headDim);
        CheckLength(kCache, cache, "kCache [Hkv, maxSeq, Dh]", who);
        CheckLength(vCache, cache, "vCache [Hkv, maxSeq, Dh]", who);
        if (positions.Length < 1)
            throw new ArgumentException($"{who}: positions [1] is empty");
        WideAccess.RequireAligned(who, "kCache", kCache, 16);
        WideAccess.RequireAligned(who, "vCache", vCache, 16);
        WideAccess.RequireMultiple(who, "kCache", "row stride (Dh * 4)", 4L * headDim, 16);
        EnsureDecodeScratch(stream, p);
        LoadDecodeV3();
        long parts = (long)heads * p.Splits;
        decodeV3!(stream, new KernelConfig(kvHeads * p.Splits, AttentionDecodeKernels.Threads), q,
            kCache.SubView(0, cache).Cast<KvQuad>(), vCache.SubView(0, cache).Cast<KvQuad>(), output, positions.SubView(0, 1),
            decodeO!.View.AsContiguous().SubView(0, parts * headDim).Cast<KvQuad>(), decodeML!.View.SubView(0, parts * 2), decodeCounters!.View.SubView(0, kvHeads),
            sinks, p);
    }

    /// <summary>Allocates LaunchDecode's scratch for this shape now (before a graph capture: launches then never allocate).</summary>
    public void ReserveDecode(AcceleratorStream stream, int heads, int kvHeads, int headDim, int maxSeq) =>
        EnsureDecodeScratch(stream, DecodeParams(heads, kvHeads, headDim, maxSeq, 0, "AttentionKernel.ReserveDecode"));

    /// <summary>
    /// LaunchDecode's scratch: partials 4 * H * splits * (Dh + 2) bytes (splits = ceil(maxSeq / keysPerSplit), by
    /// default 64 keys per split: H 32, Dh 128, maxSeq 4096 gives 1.03 MiB) plus one int counter per kv head.
    /// </summary>
    public static long DecodeScratchBytes(int heads, int kvHeads, int headDim, int maxSeq, int keysPerSplit = AttentionDecodeKernels.DefaultKeysPerSplit)
    {
        long splits = ((long)maxSeq + keysPerSplit - 1) / keysPerSplit;
        return 4L * heads * splits * (headDim + 2) + 4L * kvHeads;
    }

    public void Dispose()
    {
        partO?.Dispose();
        partML?.Dispose();
        partO = partML = null;
        decodeO?.Dispose();
        decodeML?.Dispose();
        decodeCounters?.Dispose();
        decodeO = decodeML = null;
        decodeCounters = null;
    }

    private void LoadDecodeV3()
    {
        decodeV3 ??= accelerator.LoadCounted<ArrayView<float>, ArrayView<KvQuad>, ArrayView<KvQuad>, ArrayView<float>, ArrayView<int>,
            ArrayView<KvQuad>, ArrayView<float>, ArrayView<int>, ArrayView<float>, AttentionDecodeParams>(AttentionDecodeKernels.AttentionV3Decode);
    }

    /// <summary>The softmax scale: 1/sqrt(Dh) when none is given (the value every earlier launch used), else it, finite and &gt; 0.</summary>
    private static float SoftmaxScale(float? scale, int headDim, string who)
    {
        if (scale is not float s)
            return (float)(1.0 / Math.Sqrt(headDim));
        if (!(s > 0f) || float.IsInfinity(s))
            throw new ArgumentException($"{who}: scale must be finite and > 0, got {s}", nameof(scale));
        return s;
    }

    /// <summary>1 when a sinks view is given (it must hold exactly H floats), 0 for default or empty.</summary>
    private static int CheckSinks(ArrayView<float> sinks, int heads, string who)
    {
        if (!sinks.IsValid || sinks.Length == 0)
            return 0;
        if (sinks.Length != heads)
            throw new ArgumentException($"{who}: sinks [H] has {sinks.Length} floats, needs {heads}", nameof(sinks));
        return 1;
    }

    private AttentionDecodeParams DecodeParams(int heads, int kvHeads, int headDim, int maxSeq, int window, string who)
    {
        CheckShape(1, heads, kvHeads, headDim, maxSeq, 0, who);
        if (headDim % 4 != 0)
            throw new ArgumentException($"{who}: headDim must be a multiple of 4 (16-byte K/V loads) and at most {AttentionKernels.MaxHeadDim}, got {headDim}");
        int kps = KeysPerSplitOverride ?? AttentionDecodeKernels.DefaultKeysPerSplit;
        if (kps < 1 || kps > AttentionDecodeKernels.MaxKeysPerSplit)
            throw new ArgumentException($"{who}: keys per split must be in 1..{AttentionDecodeKernels.MaxKeysPerSplit}, got {kps}");
        int splits = (maxSeq + kps - 1) / kps;
        Index64.CheckInt(who, "decode partials [H, splits, Dh + 2]", (long)heads * splits * (headDim + 2));
        return new AttentionDecodeParams
        {
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            MaxSeq = maxSeq,
            Window = window,
            Scale = (float)(1.0 / Math.Sqrt(headDim)),
            Splits = splits,
            KeysPerSplit = kps,
            LanesPerKey = AttentionDecodeKernels.LanesPerKey(headDim),
        };
    }

    private void EnsureDecodeScratch(AcceleratorStream stream, AttentionDecodeParams p)
    {
        long parts = (long)p.Heads * p.Splits;
        if (decodeO != null && decodeO.Length >= parts * p.HeadDim && decodeML!.Length >= parts * 2 && decodeCounters!.Length >= p.KvHeads)
            return;
        // Earlier launches on this stream may still use the old buffers.
        stream.Synchronize();
        long oFloats = Math.Max(parts * p.HeadDim, decodeO?.Length ?? 0);
        long mlFloats = Math.Max(parts * 2, decodeML?.Length ?? 0);
        long counters = Math.Max(p.KvHeads, decodeCounters?.Length ?? 0);
        decodeO?.Dispose();
        decodeML?.Dispose();
        decodeCounters?.Dispose();
        decodeO = accelerator.Allocate1D<float>(oFloats);
        decodeML = accelerator.Allocate1D<float>(mlFloats);
        decodeCounters = accelerator.Allocate1D<int>(counters);
        // The completion counters start at 0; every launch's last group puts them back to 0.
        decodeCounters.View.MemSetToZero(stream);
    }

    private void EnsureScratch(AcceleratorStream stream, long oFloats, long mlFloats)
    {
        if (partO != null && partO.Length >= oFloats && partML != null && partML.Length >= mlFloats)
            return;
        // Earlier launches on this stream may still read the old buffers.
        stream.Synchronize();
        partO?.Dispose();
        partML?.Dispose();
        partO = accelerator.Allocate1D<float>(Math.Max(oFloats, 1));
        partML = accelerator.Allocate1D<float>(Math.Max(mlFloats, 2));
    }

    internal static void CheckShape(int tokens, int heads, int kvHeads, int headDim, int maxSeq, int pos0, string who)
    {
        if (tokens < 1)
            throw new ArgumentException($"{who}: tokens must be >= 1 (got {tokens})");
        if (kvHeads < 1 || heads < 1 || heads % kvHeads != 0)
            throw new ArgumentException($"{who}: heads ({heads}) must be a positive multiple of kvHeads ({kvHeads})");
        if (headDim < 1 || headDim > AttentionKernels.MaxHeadDim)
            throw new ArgumentException($"{who}: headDim must be in 1..{AttentionKernels.MaxHeadDim} (got {headDim})");
        if (pos0 < 0 || maxSeq < 1 || (long)pos0 + tokens > maxSeq)
            throw new ArgumentException($"{who}: positions {pos0}..{(long)pos0 + tokens - 1} do not fit a cache of maxSeq {maxSeq}");
        // The cache may pass 2^31 floats: each head's start is a 64-bit offset (KvCacheLayout.Index), rows inside a
        // head and q / output / the append's k, v ([T, H or Hkv, Dh]) use int offsets, checked here.
        Index64.CheckInt(who, "kCache head [maxSeq, Dh]", (long)maxSeq * headDim);
        Index64.CheckInt(who, "q/k [T, heads, Dh]", (long)tokens * heads * headDim);
    }

    internal static void CheckLength(ArrayView<float> view, long needed, string what, string who)
    {
        if (view.Length < needed)
            throw new ArgumentException($"{who}: {what} has {view.Length} floats, needs {needed}");
    }
}
