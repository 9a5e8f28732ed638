// attention/mla-*: DeepSeek-V3's Multi-head Latent Attention over a compressed cache with absorbed weights
// (the oracle and the formulas: src/ILGpuMoE.Reference/RefMlaAttention.cs). Shapes: T tokens, H heads, R = kv_lora_rank,
// Dr = qk_rope_head_dim, Dn = qk_nope_head_dim, Dv = v_head_dim, Row = R + Dr (576 in V3).
//
// Cache per layer: [maxSeq, R + Dr] f32, row j = [c_j | k_rope_j] (latent after kv_a_layernorm, then the roped shared
// key part): 576 floats = 2,304 bytes per token per layer in V3, against 2 * 128 * 128 floats for an expanded cache.
// Every head reads every row (MLA is MQA over the latent), so a row loaded once can serve several heads.
// kv_b_proj [H * (Dn + Dv), R] ([out, in]) is read in place: per head h, rows h*(Dn+Dv) .. +Dn are W_UK[h] [Dn, R],
// the next Dv rows W_UV[h] [Dv, R].
//
// Families and versions (each a [KernelFamily] enum below):
//   attention/mla-append V1   thread per (token, float of the row): c [T, R] and k_rope [T, Dr] (row strides given, so
//                             both can be slices of kv_a_proj_with_mqa's [T, R + Dr] output) to cache rows positions[t].
//   attention/mla-absorb-q V1 thread per (token, head, r of R + Dr): q_abs[t, h] = [W_UK[h]^T q_nope | q_rope]
//                             (r < R: a dot over Dn down column r of W_UK[h], consecutive threads read consecutive r of
//                             a W_UK row: coalesced; r >= R: copy of q's rope part). The attention then dots q_abs with
//                             whole cache rows.
//   attention/mla-absorb-q V2Wide  the same with kv_b_proj read as 16-byte words, a thread per word column (decode;
//                             MlaAbsorbWide.cs).
//   attention/mla V1          thread per (token, head, latent dim): every thread walks all visible rows with an online
//                             softmax, recomputing the score itself (Row-fold redundant). Simplest correct; tests.
//   attention/mla V2Split     lanes over the row with 16-byte loads (lane l holds quads l, l+32, ..., l+128 of a row:
//                             Row <= 640 floats), 4 heads per group whose q_abs slices stay in registers, so each row
//                             load feeds 4 heads; a warp per key stream (warp w of 4 takes keys lo+w, lo+w+4, ...) with
//                             its own online softmax per head, then a reduce-scatter of the 4 heads' partial dots (5
//                             shuffles) and 4 broadcasts. Grid T * ceil(H/4) * splits (head tiles fastest, so the
//                             groups sharing a split read the same rows together from L2); the 4 warps merge through
//                             shared memory in warp order. Splits == 1 writes o_lat; else (m, l, acc[R]) partials and
//                             entry "combine" (grid T*H) merges the visible splits in split order: deterministic.
//                             Positions come from a device view and the grid from maxSeq, so a decode step replays
//                             in a CUDA graph.
//   attention/mla-absorb-v V1 warp per (token, head, output dim d): lanes over R read row Dn + d of head h's block of
//                             kv_b_proj (coalesced), 5-shuffle reduction: out[t, h, d] = W_UV[h][d] . o_lat[t, h].
//   attention/mla-absorb-v V2Wide  the same with 16-byte weight words per lane (decode; MlaAbsorbWide.cs).
//
// Positions: query t sits at positions[t] (device data the runtime checks on the host: 0 <= pos < maxSeq) and sees
// cache rows 0..pos (causal; DeepSeek-V3 has no window). A bad pos never reads or writes out of bounds: the append
// skips it, the attention clamps pos >= maxSeq to maxSeq - 1 and gives NaN for pos < 0 (no visible key: 0 / 0).
// Rows past pos are never read (the tests poison them with NaN).
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Algorithms;

namespace ILGpuMoE.Kernels.Attention.Mla;

/// <summary>attention/mla-append's versions.</summary>
[KernelFamily("attention/mla-append")]
public enum MlaAppendVersion
{
    /// <summary>One thread per (token, float of the cache row).</summary>
    V1 = 1,
}

/// <summary>attention/mla-absorb-q's versions.</summary>
[KernelFamily("attention/mla-absorb-q")]
public enum MlaAbsorbQVersion
{
    /// <summary>One thread per (token, head, float of q_abs).</summary>
    V1 = 1,

    /// <summary>Thread per (token, head, 16-byte unit of R): kv_b_proj read as 16-byte words (MlaAbsorbWide.cs).</summary>
    V2Wide = 2,
}

/// <summary>attention/mla-absorb-v's versions.</summary>
[KernelFamily("attention/mla-absorb-v")]
public enum MlaAbsorbVVersion
{
    /// <summary>One warp per (token, head, output dim).</summary>
    V1 = 1,

    /// <summary>Warp per output with 16-byte weight loads (MlaAbsorbWide.cs).</summary>
    V2Wide = 2,
}

/// <summary>attention/mla's (latent attention) versions.</summary>
[KernelFamily("attention/mla")]
public enum MlaAttentionVersion
{
    /// <summary>One thread per (token, head, latent dim); simplest correct.</summary>
    V1 = 1,

    /// <summary>Lanes over the row with 16-byte loads, 4 heads per row load, key splits plus a combine.</summary>
    V2Split = 2,
}

/// <summary>Scalar launch arguments of the MLA kernels (fixed per model and cache, so a graph can replay them).</summary>
public struct MlaParams
{
    /// <summary>T: query tokens (rows of positions).</summary>
    public int Tokens;

    /// <summary>H: heads.</summary>
    public int Heads;

    /// <summary>R: kv_lora_rank (latent width).</summary>
    public int Rank;

    /// <summary>Dr: qk_rope_head_dim.</summary>
    public int RopeDim;

    /// <summary>Dn: qk_nope_head_dim.</summary>
    public int NopeDim;

    /// <summary>Dv: v_head_dim.</summary>
    public int VDim;

    /// <summary>Rows of the cache [maxSeq, R + Dr].</summary>
    public int MaxSeq;

    /// <summary>Softmax scale: qk_head_dim^-0.5 times YaRN's mscale^2 (the caller's).</summary>
    public float Scale;

    /// <summary>V2Split: key splits per (token, head) and keys per split.</summary>
    public int Splits;

    public int KeysPerSplit;

    /// <summary>Append: floats between consecutive tokens' c rows and k_rope rows.</summary>
    public int LatentStride;

    public int RopeStride;
}

/// <summary>A lane's five 16-byte quads of a row of up to 640 floats (quads lane, lane + 32, ..., lane + 128).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct LaneQuads
{
    public MlaQuad A;
    public MlaQuad B;
    public MlaQuad C;
    public MlaQuad D;
    public MlaQuad E;
}

/// <summary>16 bytes of a cache or q_abs row (4 floats): one ld.global.v4 (the view must be 16-byte aligned).</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct MlaQuad
{
    public float X;
    public float Y;
    public float Z;
    public float W;
}

public static class MlaKernels
{
    /// <summary>V2Split: threads per group (4 warps) and heads per group (their q_abs slices live in registers).</summary>
    public const int Threads = 128;

    public const int HeadsPerGroup = 4;

    /// <summary>V2Split: quads per lane (a row of at most 5 * 32 * 4 = 640 floats: V3's 576 fits).</summary>
    public const int QuadsPerLane = 5;

    public const int MaxRow = QuadsPerLane * 32 * 4;

    private const int Warps = Threads / 32;

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(MlaAppendVersion.V1, "grid ceil(T*(R+Dr)/256), group 256", Decode = DecodeUse.Activations, BlockSize = Devices.MaxGroupSize,
        Summary = "c and k_rope rows to cache rows positions[t] (device view): thread per float")]
    public static void MlaAppendV1(
        ArrayView<float> latent,     // [T, LatentStride], first R floats of each row used
        ArrayView<float> kRope,      // [T, RopeStride], first Dr floats used
        ArrayView<int> positions,    // [T]
        ArrayView<float> cache,      // [maxSeq, R + Dr]
        MlaParams p)
    {
        int row = p.Rank + p.RopeDim;
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)p.Tokens * row)
            return;
        int t = (int)(index / row);
        int e = (int)(index - (long)t * row);
        int pos = positions[t];
        if (pos < 0 || pos >= p.MaxSeq)
            return; // refused on the host; never write out of bounds
        cache[(long)pos * row + e] = e < p.Rank ? latent[(long)t * p.LatentStride + e] : kRope[(long)t * p.RopeStride + e - p.Rank];
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(MlaAbsorbQVersion.V1, "grid ceil(T*H*(R+Dr)/256), group 256", BlockSize = Devices.MaxGroupSize,
        Summary = "q_abs = [W_UK^T q_nope | q_rope]: thread per output, dot down a column of W_UK (coalesced across r)")]
    public static void MlaAbsorbQV1<TW>(
        ArrayView<float> q,          // [T, H, Dn + Dr]
        TW kvB,                      // [H * (Dn + Dv), R]
        ArrayView<float> qAbs,       // [T, H, R + Dr]
        MlaParams p)
        where TW : struct, IWeights
    {
        int row = p.Rank + p.RopeDim;
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)p.Tokens * p.Heads * row)
            return;
        long th = index / row;       // t * H + h
        int r = (int)(index - th * row);
        int h = (int)(th % p.Heads);
        long qBase = th * (p.NopeDim + p.RopeDim);
        float result;
        if (r < p.Rank)
        {
            long w = (long)h * (p.NopeDim + p.VDim) * p.Rank + r; // W_UK[h][0, r]
            float acc = 0f;
            for (int i = 0; i < p.NopeDim; i++)
            {
                acc += kvB.Get(w) * q[qBase + i];
                w += p.Rank;
            }

            result = acc;
        }
        else
        {
            result = q[qBase + p.NopeDim + r - p.Rank];
        }

        qAbs[index] = result;
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(MlaAbsorbVVersion.V1, "grid ceil(T*H*Dv/8), group 256 (8 warps, one output each)", BlockSize = Devices.MaxGroupSize,
        Summary = "out = W_UV o_lat: warp per output, lanes over R (coalesced row of kv_b_proj), shuffle butterfly")]
    public static void MlaAbsorbVV1<TW>(
        ArrayView<float> oLat,       // [T, H, R]
        TW kvB,                      // [H * (Dn + Dv), R]
        ArrayView<float> output,     // [T, H, Dv]
        MlaParams p)
        where TW : struct, IWeights
    {
        if (!AbsorbVRow(p, out long index, out long th, out long wRow))
            return; // a whole warp: the shuffles below see every lane
        long w = wRow * p.Rank;
        long o = th * p.Rank;
        float acc = 0f;
        for (int r = Warp.LaneIdx; r < p.Rank; r += Warp.WarpSize)
            acc += kvB.Get(w + r) * oLat[o + r];
        WarpSumStore(acc, output, index);
    }

    /// <summary>
    /// absorb-v's warp-per-output row: this warp's output index (t * H + h) * Dv + d, its (t * H + h) and the row of
    /// kv_b_proj it dots (W_UV[h] row d = h * (Dn + Dv) + Dn + d). False past the outputs (a whole warp).
    /// </summary>
    internal static bool AbsorbVRow(MlaParams p, out long index, out long th, out long wRow)
    {
        index = (long)Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;
        th = index / p.VDim;
        int d = (int)(index - th * p.VDim);
        int h = (int)(th % p.Heads);
        wRow = (long)h * (p.NopeDim + p.VDim) + p.NopeDim + d;
        return index < (long)p.Tokens * p.Heads * p.VDim;
    }

    /// <summary>The warp's sum of acc (butterfly), stored by lane 0 at output[index].</summary>
    internal static void WarpSumStore(float acc, ArrayView<float> output, long index)
    {
        for (int off = Warp.WarpSize / 2; off > 0; off >>= 1)
            acc += Warp.ShuffleXor(acc, off);
        if (Warp.LaneIdx == 0)
            output[index] = acc;
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(MlaAttentionVersion.V1, "grid ceil(T*H*R/256), group 256", BlockSize = Devices.MaxGroupSize,
        Summary = "thread per (token, head, latent dim), online softmax over rows 0..pos, score recomputed per thread")]
    public static void MlaAttentionV1(
        ArrayView<float> qAbs,       // [T, H, R + Dr]
        ArrayView<float> cache,      // [maxSeq, R + Dr]
        ArrayView<int> positions,    // [T]
        ArrayView<float> oLat,       // [T, H, R]
        MlaParams p)
    {
        int row = p.Rank + p.RopeDim;
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)p.Tokens * p.Heads * p.Rank)
            return;
        long th = index / p.Rank;
        int d = (int)(index - th * p.Rank);
        int t = (int)(th / p.Heads);
        int pos = IntrinsicMath.Min(positions[t], p.MaxSeq - 1);
        long qBase = th * row;
        float m = float.NegativeInfinity, l = 0f, acc = 0f;
        for (int j = 0; j <= pos; j++)
        {
            long c = (long)j * row;
            float dot = 0f;
            for (int e = 0; e < row; e++)
                dot += qAbs[qBase + e] * cache[c + e];
            float s = dot * p.Scale;
            float mNew = XMath.Max(m, s);
            float alpha = XMath.Exp(m - mNew); // m = -inf on the first row: exp(-inf) = 0
            float pj = XMath.Exp(s - mNew);
            l = l * alpha + pj;
            acc = acc * alpha + pj * cache[c + d];
            m = mNew;
        }

        oLat[index] = acc / l; // pos < 0: no visible row, 0 / 0 = NaN, never a stale value
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(MlaAttentionVersion.V2Split, "grid T*ceil(H/4)*splits, group 128", Decode = DecodeUse.Activations, BlockSize = Threads,
        WideViews = ["qAbs:16", "cache:16"],
        Summary = "lanes over the row with 16-byte loads, 4 heads per row load, warp per key stream, key splits")]
    public static void MlaAttentionV2Split(
        ArrayView<MlaQuad> qAbs,     // [T, H, (R + Dr) / 4]
        ArrayView<MlaQuad> cache,    // [maxSeq, (R + Dr) / 4]
        ArrayView<int> positions,    // [T]
        ArrayView<float> oLat,       // [T, H, R]: written when Splits == 1
        ArrayView<float> partO,      // [T, H, Splits, R]: unnormalised partials when Splits > 1
        ArrayView<float> partML,     // [T, H, Splits, 2]: (max, sum) per partial
        MlaParams p)
    {
        var ml = SharedMemory.Allocate<float>(2 * Warps * HeadsPerGroup);   // [warp, head, (m, l)]
        var os = SharedMemory.Allocate<float>(HeadsPerGroup * MaxRow);      // [head, R] merged accumulators

        int tid = Group.IdxX;
        int lane = Warp.LaneIdx;
        int warp = Warp.WarpIdx;
        int tiles = (p.Heads + HeadsPerGroup - 1) / HeadsPerGroup;
        int tile = Grid.IdxX % tiles;
        int rest = Grid.IdxX / tiles;
        int split = rest % p.Splits;
        int t = rest / p.Splits;
        int quads = (p.Rank + p.RopeDim) >> 2;
        int h0 = tile * HeadsPerGroup;
        int hc = IntrinsicMath.Min(HeadsPerGroup, p.Heads - h0);

        // Clamp: pos past the cache reads as the last row (the host refuses it; never read out of bounds).
        int pos = IntrinsicMath.Min(positions[t], p.MaxSeq - 1);
        int lo = split * p.KeysPerSplit;
        int hi = IntrinsicMath.Min(pos + 1, lo + p.KeysPerSplit); // visible keys [lo, hi)
        if (hi <= lo && p.Splits > 1)
            return; // the combine reads only splits with a visible key (uniform over the group: before any barrier)

        long qRow = ((long)t * p.Heads + h0) * quads;
        var q0 = LoadLane(qAbs, qRow, quads, lane, 0 < hc);
        var q1 = LoadLane(qAbs, qRow + quads, quads, lane, 1 < hc);
        var q2 = LoadLane(qAbs, qRow + 2 * quads, quads, lane, 2 < hc);
        var q3 = LoadLane(qAbs, qRow + 3 * quads, quads, lane, 3 < hc);

        LaneQuads a0 = default, a1 = default, a2 = default, a3 = default;
        float m0 = float.NegativeInfinity, m1 = float.NegativeInfinity, m2 = float.NegativeInfinity, m3 = float.NegativeInfinity;
        float l0 = 0f, l1 = 0f, l2 = 0f, l3 = 0f;
        bool top = (lane & 16) != 0, next = (lane & 8) != 0;
        for (int j = lo + warp; j < hi; j += Warps)
        {
            var c = LoadLane(cache, (long)j * quads, quads, lane, true);
            float d0 = Dot(q0, c), d1 = Dot(q1, c), d2 = Dot(q2, c), d3 = Dot(q3, c);

            // Reduce-scatter of the 4 partial dots over the 32 lanes: the lanes with bit 4 keep heads 2, 3, the others
            // 0, 1; then bit 3 picks one; three butterfly steps finish it. Lane l then holds head l >> 3's full dot.
            float keepA = (top ? d2 : d0) + Warp.ShuffleXor(top ? d0 : d2, 16);
            float keepB = (top ? d3 : d1) + Warp.ShuffleXor(top ? d1 : d3, 16);
            float v = (next ? keepB : keepA) + Warp.ShuffleXor(next ? keepA : keepB, 8);
            v += Warp.ShuffleXor(v, 4);
            v += Warp.ShuffleXor(v, 2);
            v += Warp.ShuffleXor(v, 1);
            v *= p.Scale;
            Update(ref m0, ref l0, ref a0, Warp.Shuffle(v, 0), c);
            Update(ref m1, ref l1, ref a1, Warp.Shuffle(v, 8), c);
            Update(ref m2, ref l2, ref a2, Warp.Shuffle(v, 16), c);
            Update(ref m3, ref l3, ref a3, Warp.Shuffle(v, 24), c);
        }

        // Merge the 4 warps' softmax states: the group max M per head, each warp's weight exp(m_w - M), the sums in
        // warp order (warp w adds its weighted accumulators after warp w - 1: a barrier per warp, fixed order).
        if (lane == 0)
        {
            int b = 2 * warp * HeadsPerGroup;
            ml[b] = m0;
            ml[b + 1] = l0;
            ml[b + 2] = m1;
            ml[b + 3] = l1;
            ml[b + 4] = m2;
            ml[b + 5] = l2;
            ml[b + 6] = m3;
            ml[b + 7] = l3;
        }

        Group.Barrier();
        float f0 = WarpWeight(ml, 0, m0), f1 = WarpWeight(ml, 1, m1), f2 = WarpWeight(ml, 2, m2), f3 = WarpWeight(ml, 3, m3);
        int latentQuads = p.Rank >> 2;
        for (int w = 0; w < Warps; w++)
        {
            if (warp == w)
            {
                bool first = w == 0;
                MergeLane(os, 0, a0, f0, lane, latentQuads, first);
                MergeLane(os, 1, a1, f1, lane, latentQuads, first);
                MergeLane(os, 2, a2, f2, lane, latentQuads, first);
                MergeLane(os, 3, a3, f3, lane, latentQuads, first);
            }

            Group.Barrier();
        }

        for (int e = tid; e < hc * p.Rank; e += Threads)
        {
            int hh = e / p.Rank;
            int r = e - hh * p.Rank;
            float mMax = GroupMax(ml, hh);
            float l = 0f;
            for (int w = 0; w < Warps; w++)
                l += ml[2 * (w * HeadsPerGroup + hh) + 1] * XMath.Exp(ml[2 * (w * HeadsPerGroup + hh)] - Floor(mMax)); // a warp without rows: 0 * 0

            long th = (long)t * p.Heads + h0 + hh;
            float acc = os[hh * MaxRow + r];
            if (p.Splits == 1)
            {
                oLat[th * p.Rank + r] = acc / l; // no visible row (pos < 0): 0 / 0 = NaN
            }
            else
            {
                long part = th * p.Splits + split;
                partO[part * p.Rank + r] = acc;
                if (r == 0)
                {
                    partML[2 * part] = mMax;
                    partML[2 * part + 1] = l;
                }
            }
        }
    }

    [KernelInfo(MlaAttentionVersion.V2Split, "grid T*H, group 128", Entry = "combine", Decode = DecodeUse.Activations, BlockSize = Threads,
        Summary = "merges the visible splits' partials in split order: deterministic")]
    public static void MlaAttentionV2Combine(
        ArrayView<int> positions,    // [T]
        ArrayView<float> partO,      // [T, H, Splits, R]
        ArrayView<float> partML,     // [T, H, Splits, 2]
        ArrayView<float> oLat,       // [T, H, R]
        MlaParams p)
    {
        long th = Grid.IdxX;
        int t = (int)(th / p.Heads);
        int pos = IntrinsicMath.Min(positions[t], p.MaxSeq - 1);
        int sHi = pos >= 0 ? pos / p.KeysPerSplit : -1; // splits 0..sHi have a visible key
        long b = th * p.Splits;
        float mMax = float.NegativeInfinity;
        for (int s = 0; s <= sHi; s++)
            mMax = XMath.Max(mMax, partML[2 * (b + s)]);
        float l = 0f;
        for (int s = 0; s <= sHi; s++)
            l += partML[2 * (b + s) + 1] * XMath.Exp(partML[2 * (b + s)] - mMax);
        for (int r = Group.IdxX; r < p.Rank; r += Group.DimX)
        {
            float acc = 0f;
            for (int s = 0; s <= sHi; s++)
                acc += XMath.Exp(partML[2 * (b + s)] - mMax) * partO[(b + s) * p.Rank + r];
            oLat[th * p.Rank + r] = acc / l; // pos < 0: 0 / 0 = NaN
        }
    }

    /// <summary>Quads lane, lane + 32, ... of the row starting at quad `start` (zeros past `quads` or when !use).</summary>
    private static LaneQuads LoadLane(ArrayView<MlaQuad> view, long start, int quads, int lane, bool use)
    {
        var r = default(LaneQuads);
        if (!use)
            return r;
        r.A = lane < quads ? view[start + lane] : default;
        r.B = lane + 32 < quads ? view[start + lane + 32] : default;
        r.C = lane + 64 < quads ? view[start + lane + 64] : default;
        r.D = lane + 96 < quads ? view[start + lane + 96] : default;
        r.E = lane + 128 < quads ? view[start + lane + 128] : default;
        return r;
    }

    private static float Dot(MlaQuad a, MlaQuad b) => a.X * b.X + a.Y * b.Y + a.Z * b.Z + a.W * b.W;

    private static float Dot(LaneQuads a, LaneQuads b) => Dot(a.A, b.A) + Dot(a.B, b.B) + Dot(a.C, b.C) + Dot(a.D, b.D) + Dot(a.E, b.E);

    /// <summary>
    /// Online softmax step of one head for one row: the rescale only when the max grows (s is the same on every lane,
    /// so the branch is uniform), then l += p and acc += p * row.
    /// </summary>
    private static void Update(ref float m, ref float l, ref LaneQuads a, float s, LaneQuads c)
    {
        if (s > m)
        {
            float alpha = XMath.Exp(m - s); // m = -inf on the first row: 0
            l *= alpha;
            Scale(ref a.A, alpha);
            Scale(ref a.B, alpha);
            Scale(ref a.C, alpha);
            Scale(ref a.D, alpha);
            Scale(ref a.E, alpha);
            m = s;
        }

        float pj = XMath.Exp(s - m);
        l += pj;
        Fma(ref a.A, pj, c.A);
        Fma(ref a.B, pj, c.B);
        Fma(ref a.C, pj, c.C);
        Fma(ref a.D, pj, c.D);
        Fma(ref a.E, pj, c.E);
    }

    private static void Scale(ref MlaQuad a, float f)
    {
        a.X *= f;
        a.Y *= f;
        a.Z *= f;
        a.W *= f;
    }

    private static void Fma(ref MlaQuad a, float w, MlaQuad v)
    {
        a.X += w * v.X;
        a.Y += w * v.Y;
        a.Z += w * v.Z;
        a.W += w * v.W;
    }

    private static float GroupMax(ArrayView<float> ml, int head)
    {
        float m = float.NegativeInfinity;
        for (int w = 0; w < Warps; w++)
            m = XMath.Max(m, ml[2 * (w * HeadsPerGroup + head)]);
        return m;
    }

    /// <summary>
    /// exp(m_w - M) for this warp's max m_w of a head: 0 for a warp that saw no row (m_w = -inf), also when no warp saw
    /// one (M = -inf: Floor keeps exp(-inf - M) from becoming exp(NaN)). No branch: m_w comes through shuffles, which
    /// the PTX lint counts as lane-dependent, so a test on it would be a divergent bra.uni to the lint.
    /// </summary>
    private static float WarpWeight(ArrayView<float> ml, int head, float mine) => XMath.Exp(mine - Floor(GroupMax(ml, head)));

    /// <summary>max(m, -float.MaxValue): a finite stand-in for a max over no rows.</summary>
    private static float Floor(float m) => XMath.Max(m, float.MinValue);

    /// <summary>os[head, latent quads of this lane] = (first ? 0 : os) + f * acc; rope quads are dropped.</summary>
    private static void MergeLane(ArrayView<float> os, int head, LaneQuads a, float f, int lane, int latentQuads, bool first)
    {
        MergeQuad(os, head, a.A, f, lane, latentQuads, first);
        MergeQuad(os, head, a.B, f, lane + 32, latentQuads, first);
        MergeQuad(os, head, a.C, f, lane + 64, latentQuads, first);
        MergeQuad(os, head, a.D, f, lane + 96, latentQuads, first);
        MergeQuad(os, head, a.E, f, lane + 128, latentQuads, first);
    }

    private static void MergeQuad(ArrayView<float> os, int head, MlaQuad a, float f, int quad, int latentQuads, bool first)
    {
        if (quad >= latentQuads)
            return;
        int at = head * MaxRow + 4 * quad;
        os[at] = (first ? 0f : os[at]) + f * a.X;
        os[at + 1] = (first ? 0f : os[at + 1]) + f * a.Y;
        os[at + 2] = (first ? 0f : os[at + 2]) + f * a.Z;
        os[at + 3] = (first ? 0f : os[at + 3]) + f * a.W;
    }
}
