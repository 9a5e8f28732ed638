// attention V3Decode: decode (T = 1) attention in ONE launch whose arguments never change from token to token, so a
// CUDA graph captured once can replay it: the query position is read from a device view (pos = positions[0]) and
// the grid depends only on (Hkv, maxSeq, keys per split), never on pos.
//
// Grid Hkv * splits, splits = ceil(maxSeq / kps) (kps = keys per split, 64 by default), groups of 128 threads
// (4 warps). Group (kv head, split) takes the split's visible keys [lo, hi) and ALL the query heads of its kv head
// (GQA: the H/Hkv heads share each K/V row, which is read once per group), in passes of 4 heads:
//   QK  lanes over head_dim: a sub-warp of P lanes (P = the power of two >= max(4, Dh/4)) holds one key row, one
//       16-byte K load per lane (LDG.128: Dh = 128 is one 512-byte warp load per key), 4 FMAs per head, then a
//       reduce-scatter shuffle of the 4 heads' partial dots (log2(P) + 1 shuffles for 4 heads instead of 4 log2(P)),
//       8 keys in flight per sub-warp (8 independent loads before any use). Scores go to shared memory.
//   softmax  warp per head: the split's max m and sum l of exp(s - m), probabilities back in shared memory.
//   PV  lanes over head_dim again, 16-byte V loads, 8 keys in flight per sub-warp, 4 heads x 4 dims accumulated per
//       lane; the sub-warps' accumulators are summed through shared memory in fixed slot order.
//   The split writes its (m, l, acc[Dh]) partial per head. A split with no visible key (past pos, or before the
//   window) writes nothing.
// Split combine in the same launch: every group fences its partial writes (MemoryFence.DeviceLevel = membar.gl),
// then thread 0 increments its kv head's counter (a small device buffer the launcher owns); the group that sees
// splits - 1 (the last to finish) fences again, combines the partials of the visible splits in FIXED split order
// (a lane per split for the max and the sum; a thread per (head, 4 dims) for the output, 8 splits' 16-byte loads in
// flight), and resets the counter to 0 for the next launch. The combine reads only partials, in an order that does not depend on which group finishes last, so
// the output is the same bit for bit whatever the schedule.
//
// Positions: the runtime checks positions on the host before uploading them (0 <= pos < maxSeq). The launcher cannot
// see device data, so the kernel only makes sure a bad pos never reads or writes out of bounds: pos >= maxSeq is
// read as maxSeq - 1, pos < 0 has no visible key and the output is NaN (0/0), never a stale value.
//
// Semantics as RefOps.GeneralAttention with one query at pos: key j visible iff j <= pos and (window <= 0 or pos - j <
// window); the launcher's softmax scale (1/sqrt(Dh) by default); the softmax of each split subtracts that split's max
// (the combine rescales exactly). Sinks (gpt-oss, HasSinks): the combining group starts each head's max at sinks[h]
// and adds exp(sinks[h] - M) to its sum once, so the sink counts once whatever the number of splits; with no visible
// split (pos < 0) it is left out and the output stays NaN.
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Attention;

/// <summary>16 bytes of a K or V row (4 floats): read with one ld.global.v4 (the view must be 16-byte aligned).</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct KvQuad
{
    public float X;
    public float Y;
    public float Z;
    public float W;
}

/// <summary>Scalar launch arguments of <see cref="AttentionDecodeKernels.AttentionV3Decode"/> (all fixed per model and cache).</summary>
public struct AttentionDecodeParams
{
    /// <summary>H: query heads.</summary>
    public int Heads;

    /// <summary>Hkv: key/value heads (H % Hkv == 0).</summary>
    public int KvHeads;

    /// <summary>Dh: head dim, a multiple of 4, at most 128.</summary>
    public int HeadDim;

    /// <summary>Rows per head in the cache ([Hkv, MaxSeq, Dh]).</summary>
    public int MaxSeq;

    /// <summary>Sliding window (keys with pos - j &lt; Window); &lt;= 0 means none.</summary>
    public int Window;

    /// <summary>Softmax scale (1/sqrt(Dh) by default).</summary>
    public float Scale;

    /// <summary>1: the sinks view [H] is read (one extra logit per head, no value); 0: none.</summary>
    public int HasSinks;

    /// <summary>ceil(MaxSeq / KeysPerSplit): splits per kv head (the grid is KvHeads * Splits).</summary>
    public int Splits;

    /// <summary>Keys per split, at most <see cref="AttentionDecodeKernels.MaxKeysPerSplit"/>.</summary>
    public int KeysPerSplit;

    /// <summary>P: lanes per key row, the power of two >= max(4, Dh/4) (so 32 / P keys per warp step).</summary>
    public int LanesPerKey;
}

public static class AttentionDecodeKernels
{
    /// <summary>Threads per group: 4 warps.</summary>
    public const int Threads = 128;

    /// <summary>
    /// Default keys per split. Measured on the H200 at H 32, Hkv 8, Dh 128, maxSeq 4096 (perf/notes/attention.md):
    /// 64 and 128 tie at S = 4096 (25 us), 64 is faster at S = 512 (13 us against 17 us: twice the working groups).
    /// </summary>
    public const int DefaultKeysPerSplit = 64;

    /// <summary>Largest keys per split: the shared score array is sized by it.</summary>
    public const int MaxKeysPerSplit = 256;

    /// <summary>Query heads per pass (their q slices live in registers, 4 floats per head per lane).</summary>
    public const int HeadsPerPass = 4;

    // Per group: scores/probabilities [4 heads, kps] 4 KB; PV accumulators [4 heads, sub-warps, Dh] <= 8 KB
    // (sub-warps * Dh <= sub-warps * 4P = 4 * 128).
    private const int ScoreFloats = HeadsPerPass * MaxKeysPerSplit;
    private const int AccFloats = HeadsPerPass * 4 * Threads;

    /// <summary>Lanes per key for a head dim (Dh a multiple of 4, at most 128): the power of two >= max(4, Dh/4).</summary>
    public static int LanesPerKey(int headDim)
    {
        int p = 4;
        while (p < headDim / 4)
            p *= 2;
        return p;
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(AttentionVersion.V3Decode, "grid Hkv*ceil(maxSeq/kps), group 128 (kps = 64 keys per split)",
        Decode = DecodeUse.Activations, BlockSize = Threads, WideViews = ["kCache:16", "vCache:16", "partO:16"],
        Summary = "one launch, pos from the device: 16-byte K/V loads over Dh, shuffle dot, 8 keys in flight, last group combines splits")]
    public static void AttentionV3Decode(
        ArrayView<float> q,          // [H, Dh]
        ArrayView<KvQuad> kCache,    // [Hkv, maxSeq, Dh / 4]
        ArrayView<KvQuad> vCache,    // [Hkv, maxSeq, Dh / 4]
        ArrayView<float> output,     // [H, Dh]
        ArrayView<int> positions,    // [1]: pos
        ArrayView<KvQuad> partO,     // [H, splits, Dh / 4] unnormalised partial outputs
        ArrayView<float> partML,     // [H, splits, 2] split max, split sum
        ArrayView<int> counters,     // [Hkv] finished groups per kv head, 0 between launches
        ArrayView<float> sinks,      // [H] when p.HasSinks != 0
        AttentionDecodeParams p)
    {
        var ss = SharedMemory.Allocate<float>(ScoreFloats);   // [4, kps] scores, then probabilities
        var os = SharedMemory.Allocate<float>(AccFloats);     // [4, sub-warps, Dh] PV partial accumulators
        var ml = SharedMemory.Allocate<float>(2 * HeadsPerPass);
        var last = SharedMemory.Allocate<int>(1);

        int tid = Group.IdxX;
        int lane = Warp.LaneIdx;
        int warp = Warp.WarpIdx;
        int split = Grid.IdxX % p.Splits;
        int kvh = Grid.IdxX / p.Splits;
        int dh = p.HeadDim;
        int quads = dh / 4;
        int group = p.Heads / p.KvHeads;
        int lanes = p.LanesPerKey;
        int slots = Threads / lanes;             // sub-warps in the group (one key each per step)
        int sub = lane & (lanes - 1);            // this lane's quad of the row
        int slot = tid / lanes;
        bool hasQuad = sub < quads;

        // Clamp: pos past the cache reads as the last row (the host refuses it; never read out of bounds).
        int pos = IntrinsicMath.Min(positions[0], p.MaxSeq - 1);
        int first = p.Window > 0 ? IntrinsicMath.Max(0, pos - p.Window + 1) : 0;
        int s0 = split * p.KeysPerSplit;
        int lo = IntrinsicMath.Max(first, s0);
        int n = IntrinsicMath.Min(pos + 1, s0 + p.KeysPerSplit) - lo; // visible keys of this split (<= 0: none)

        // This kv head's rows: the 64-bit start once, int offsets inside (the launcher checks maxSeq * Dh < 2^31).
        long headStart = (long)kvh * p.MaxSeq * quads;
        var kHead = kCache.SubView(headStart, (long)p.MaxSeq * quads);
        var vHead = vCache.SubView(headStart, (long)p.MaxSeq * quads);

        for (int c0 = 0; n > 0 && c0 < group; c0 += HeadsPerPass)
        {
            int hc = IntrinsicMath.Min(HeadsPerPass, group - c0);
            int h0 = kvh * group + c0;
            var q0 = LoadQ(q, h0, 0, hc, dh, sub, hasQuad);
            var q1 = LoadQ(q, h0, 1, hc, dh, sub, hasQuad);
            var q2 = LoadQ(q, h0, 2, hc, dh, sub, hasQuad);
            var q3 = LoadQ(q, h0, 3, hc, dh, sub, hasQuad);

            // QK: sub-warp `slot` takes keys lo + i, i = i0 + u * slots + slot, u = 0..7: 8 loads issued, then used.
            for (int i0 = 0; i0 < n; i0 += 8 * slots)
            {
                int i = i0 + slot;
                var k0 = LoadRow(kHead, lo, i, n, quads, sub, hasQuad);
                var k1 = LoadRow(kHead, lo, i + slots, n, quads, sub, hasQuad);
                var k2 = LoadRow(kHead, lo, i + 2 * slots, n, quads, sub, hasQuad);
                var k3 = LoadRow(kHead, lo, i + 3 * slots, n, quads, sub, hasQuad);
                var k4 = LoadRow(kHead, lo, i + 4 * slots, n, quads, sub, hasQuad);
                var k5 = LoadRow(kHead, lo, i + 5 * slots, n, quads, sub, hasQuad);
                var k6 = LoadRow(kHead, lo, i + 6 * slots, n, quads, sub, hasQuad);
                var k7 = LoadRow(kHead, lo, i + 7 * slots, n, quads, sub, hasQuad);
                Score(ss, k0, q0, q1, q2, q3, i, n, hc, lanes, sub, p.Scale);
                Score(ss, k1, q0, q1, q2, q3, i + slots, n, hc, lanes, sub, p.Scale);
                Score(ss, k2, q0, q1, q2, q3, i + 2 * slots, n, hc, lanes, sub, p.Scale);
                Score(ss, k3, q0, q1, q2, q3, i + 3 * slots, n, hc, lanes, sub, p.Scale);
                Score(ss, k4, q0, q1, q2, q3, i + 4 * slots, n, hc, lanes, sub, p.Scale);
                Score(ss, k5, q0, q1, q2, q3, i + 5 * slots, n, hc, lanes, sub, p.Scale);
                Score(ss, k6, q0, q1, q2, q3, i + 6 * slots, n, hc, lanes, sub, p.Scale);
                Score(ss, k7, q0, q1, q2, q3, i + 7 * slots, n, hc, lanes, sub, p.Scale);
            }

            Group.Barrier();

            // Softmax of the split: warp w owns head w of the pass (4 warps, 4 heads). Warp-level max and sum are
            // fixed shuffle trees: the same bits on every lane and every run.
            if (warp < hc)
            {
                int row = warp * MaxKeysPerSplit;
                float m = float.NegativeInfinity;
                for (int i = lane; i < n; i += 32)
                    m = XMath.Max(m, ss[row + i]);
                for (int off = 16; off > 0; off >>= 1)
                    m = XMath.Max(m, Warp.ShuffleXor(m, off));
                float l = 0f;
                for (int i = lane; i < n; i += 32)
                {
                    float e = XMath.Exp(ss[row + i] - m);
                    ss[row + i] = e;
                    l += e;
                }

                for (int off = 16; off > 0; off >>= 1)
                    l += Warp.ShuffleXor(l, off);
                if (lane == 0)
                {
                    ml[warp] = m;
                    ml[HeadsPerPass + warp] = l;
                }
            }

            Group.Barrier();

            // PV: the same key assignment as QK; each lane accumulates its 4 dims for the 4 heads over its keys in
            // key order (8 V rows in flight per sub-warp).
            KvQuad a0 = default, a1 = default, a2 = default, a3 = default;
            for (int i0 = 0; i0 < n; i0 += 8 * slots)
            {
                int i = i0 + slot;
                var v0 = LoadRow(vHead, lo, i, n, quads, sub, hasQuad);
                var v1 = LoadRow(vHead, lo, i + slots, n, quads, sub, hasQuad);
                var v2 = LoadRow(vHead, lo, i + 2 * slots, n, quads, sub, hasQuad);
                var v3 = LoadRow(vHead, lo, i + 3 * slots, n, quads, sub, hasQuad);
                var v4 = LoadRow(vHead, lo, i + 4 * slots, n, quads, sub, hasQuad);
                var v5 = LoadRow(vHead, lo, i + 5 * slots, n, quads, sub, hasQuad);
                var v6 = LoadRow(vHead, lo, i + 6 * slots, n, quads, sub, hasQuad);
                var v7 = LoadRow(vHead, lo, i + 7 * slots, n, quads, sub, hasQuad);
                Accumulate(ss, v0, i, n, ref a0, ref a1, ref a2, ref a3);
                Accumulate(ss, v1, i + slots, n, ref a0, ref a1, ref a2, ref a3);
                Accumulate(ss, v2, i + 2 * slots, n, ref a0, ref a1, ref a2, ref a3);
                Accumulate(ss, v3, i + 3 * slots, n, ref a0, ref a1, ref a2, ref a3);
                Accumulate(ss, v4, i + 4 * slots, n, ref a0, ref a1, ref a2, ref a3);
                Accumulate(ss, v5, i + 5 * slots, n, ref a0, ref a1, ref a2, ref a3);
                Accumulate(ss, v6, i + 6 * slots, n, ref a0, ref a1, ref a2, ref a3);
                Accumulate(ss, v7, i + 7 * slots, n, ref a0, ref a1, ref a2, ref a3);
            }

            if (hasQuad)
            {
                int at = slot * dh + 4 * sub;
                int plane = slots * dh;
                StoreQuad(os, at, a0);
                StoreQuad(os, plane + at, a1);
                StoreQuad(os, 2 * plane + at, a2);
                StoreQuad(os, 3 * plane + at, a3);
            }

            Group.Barrier();

            // The split's partial per head: the sub-warps' accumulators summed in slot order, a quad per thread.
            for (int e = tid; e < hc * quads; e += Threads)
            {
                int hh = e / quads;
                int dq = e - hh * quads;
                int at = hh * slots * dh + 4 * dq;
                KvQuad acc = default;
                for (int s = 0; s < slots; s++)
                {
                    int o = at + s * dh;
                    acc.X += os[o];
                    acc.Y += os[o + 1];
                    acc.Z += os[o + 2];
                    acc.W += os[o + 3];
                }

                int idx = (h0 + hh) * p.Splits + split;
                partO[idx * quads + dq] = acc;
                if (dq == 0)
                {
                    partML[2 * idx] = ml[hh];
                    partML[2 * idx + 1] = ml[HeadsPerPass + hh];
                }
            }

            Group.Barrier(); // the next pass overwrites ss, os and ml
        }

        // Completion protocol: every thread's partial writes are made visible device-wide before the group counts
        // itself done; the group that completes the count combines.
        MemoryFence.DeviceLevel();
        Group.Barrier();
        if (tid == 0)
            last[0] = Atomic.Add(ref counters[kvh], 1) == p.Splits - 1 ? 1 : 0;
        Group.Barrier();
        if (last[0] == 0)
            return;
        MemoryFence.DeviceLevel(); // acquire: the other groups' partials, published before their increments

        // Visible splits [sLo, sHi]: exactly those whose n > 0 above (pos is clamped the same way). Passes of 4 heads:
        // a warp per head finds the max M and the sum l of the split sums (a lane per split), then a thread per
        // (head, quad of Dh) sums the splits' partials in split order, 8 splits' 16-byte loads in flight (the
        // partials come from L2; one at a time, this tail took most of the launch at 32 splits).
        int sLo = first / p.KeysPerSplit;
        int sHi = pos >= 0 ? pos / p.KeysPerSplit : sLo - 1;
        for (int c0 = 0; c0 < group; c0 += HeadsPerPass)
        {
            int hc = IntrinsicMath.Min(HeadsPerPass, group - c0);
            int h0 = kvh * group + c0;
            if (warp < hc)
            {
                int base0 = (h0 + warp) * p.Splits;
                bool sink = p.HasSinks != 0 && sHi >= sLo;
                float sinkLogit = sink ? sinks[h0 + warp] : float.NegativeInfinity;
                float mMax = sinkLogit;
                for (int s = sLo + lane; s <= sHi; s += 32)
                    mMax = XMath.Max(mMax, partML[2 * (base0 + s)]);
                for (int off = 16; off > 0; off >>= 1)
                    mMax = XMath.Max(mMax, Warp.ShuffleXor(mMax, off));
                float l = 0f;
                for (int s = sLo + lane; s <= sHi; s += 32)
                    l += partML[2 * (base0 + s) + 1] * XMath.Exp(partML[2 * (base0 + s)] - mMax);
                for (int off = 16; off > 0; off >>= 1)
                    l += Warp.ShuffleXor(l, off);
                if (sink)
                    l += XMath.Exp(sinkLogit - mMax); // once, after the split sums
                if (lane == 0)
                {
                    ml[warp] = mMax;
                    ml[HeadsPerPass + warp] = l;
                }
            }

            Group.Barrier();
            for (int e = tid; e < hc * quads; e += Threads)
            {
                int hh = e / quads;
                int dq = e - hh * quads;
                int base0 = (h0 + hh) * p.Splits;
                float mMax = ml[hh];
                KvQuad acc = default;
                for (int s = sLo; s <= sHi; s += 8)
                {
                    var o0 = LoadPartial(partO, base0, s, sHi, quads, dq);
                    var o1 = LoadPartial(partO, base0, s + 1, sHi, quads, dq);
                    var o2 = LoadPartial(partO, base0, s + 2, sHi, quads, dq);
                    var o3 = LoadPartial(partO, base0, s + 3, sHi, quads, dq);
                    var o4 = LoadPartial(partO, base0, s + 4, sHi, quads, dq);
                    var o5 = LoadPartial(partO, base0, s + 5, sHi, quads, dq);
                    var o6 = LoadPartial(partO, base0, s + 6, sHi, quads, dq);
                    var o7 = LoadPartial(partO, base0, s + 7, sHi, quads, dq);
                    AddPartial(ref acc, o0, partML, base0, s, sHi, mMax);
                    AddPartial(ref acc, o1, partML, base0, s + 1, sHi, mMax);
                    AddPartial(ref acc, o2, partML, base0, s + 2, sHi, mMax);
                    AddPartial(ref acc, o3, partML, base0, s + 3, sHi, mMax);
                    AddPartial(ref acc, o4, partML, base0, s + 4, sHi, mMax);
                    AddPartial(ref acc, o5, partML, base0, s + 5, sHi, mMax);
                    AddPartial(ref acc, o6, partML, base0, s + 6, sHi, mMax);
                    AddPartial(ref acc, o7, partML, base0, s + 7, sHi, mMax);
                }

                // No visible split (pos < 0): l = 0 and 0 / 0 = NaN, never a stale value.
                float l = ml[HeadsPerPass + hh];
                int at = (h0 + hh) * dh + 4 * dq;
                output[at] = acc.X / l;
                output[at + 1] = acc.Y / l;
                output[at + 2] = acc.Z / l;
                output[at + 3] = acc.W / l;
            }

            Group.Barrier(); // the next pass overwrites ml
        }

        if (tid == 0)
            counters[kvh] = 0; // every group of this kv head has counted itself: ready for the next launch
    }

    /// <summary>Lane `sub`'s 4 dims of query head h0 + j, or zeros for a head past the pass or a lane past Dh.</summary>
    private static KvQuad LoadQ(ArrayView<float> q, int h0, int j, int hc, int dh, int sub, bool hasQuad)
    {
        var r = default(KvQuad);
        if (j < hc && hasQuad)
        {
            int at = (h0 + j) * dh + 4 * sub;
            r.X = q[at];
            r.Y = q[at + 1];
            r.Z = q[at + 2];
            r.W = q[at + 3];
        }

        return r;
    }

    /// <summary>Quad `sub` of key row lo + i (one 16-byte load), zeros for i past the split's visible keys.</summary>
    private static KvQuad LoadRow(ArrayView<KvQuad> head, int lo, int i, int n, int quads, int sub, bool hasQuad) =>
        i < n && hasQuad ? head[(lo + i) * quads + sub] : default;

    /// <summary>
    /// Dots key row k with the 4 queries and reduces the 4 partial dots over the P lanes of the sub-warp by
    /// reduce-scatter: the first step halves the set (lanes with the top bit keep heads 2, 3, the others 0, 1), the
    /// second halves it again, the rest is a plain butterfly of one value. Lane sub then holds head
    /// 2 * (top bit) + (next bit); the lane with the lower bits zero stores it. All lanes shuffle (no divergence).
    /// </summary>
    private static void Score(ArrayView<float> ss, KvQuad k, KvQuad q0, KvQuad q1, KvQuad q2, KvQuad q3,
        int i, int n, int hc, int lanes, int sub, float scale)
    {
        float d0 = k.X * q0.X + k.Y * q0.Y + k.Z * q0.Z + k.W * q0.W;
        float d1 = k.X * q1.X + k.Y * q1.Y + k.Z * q1.Z + k.W * q1.W;
        float d2 = k.X * q2.X + k.Y * q2.Y + k.Z * q2.Z + k.W * q2.W;
        float d3 = k.X * q3.X + k.Y * q3.Y + k.Z * q3.Z + k.W * q3.W;

        int half = lanes >> 1;
        bool top = (sub & half) != 0;
        float keepA = top ? d2 : d0;
        float keepB = top ? d3 : d1;
        keepA += Warp.ShuffleXor(top ? d0 : d2, half);
        keepB += Warp.ShuffleXor(top ? d1 : d3, half);

        int quarter = lanes >> 2;
        bool next = (sub & quarter) != 0;
        float v = next ? keepB : keepA;
        v += Warp.ShuffleXor(next ? keepA : keepB, quarter);
        // The rest of the butterfly unrolled for P <= 32 (quarter <= 8): three shuffles every time, the ones below
        // quarter added. No loop, so ptxas can interleave the 8 keys' shuffle chains (a loop here cost a branch and
        // a dependent chain per key).
        float r4 = Warp.ShuffleXor(v, 4);
        v += quarter > 4 ? r4 : 0f;
        float r2 = Warp.ShuffleXor(v, 2);
        v += quarter > 2 ? r2 : 0f;
        float r1 = Warp.ShuffleXor(v, 1);
        v += quarter > 1 ? r1 : 0f;

        int head = (top ? 2 : 0) + (next ? 1 : 0);
        if (i < n && head < hc && (sub & (quarter - 1)) == 0)
            ss[head * MaxKeysPerSplit + i] = v * scale;
    }

    /// <summary>Split s's partial quad dq of a head whose splits start at base0 (zeros past sHi).</summary>
    private static KvQuad LoadPartial(ArrayView<KvQuad> partO, int base0, int s, int sHi, int quads, int dq) =>
        s <= sHi ? partO[(base0 + s) * quads + dq] : default;

    /// <summary>acc += exp(m_s - M) * partial (split s past sHi adds nothing).</summary>
    private static void AddPartial(ref KvQuad acc, KvQuad o, ArrayView<float> partML, int base0, int s, int sHi, float mMax)
    {
        if (s <= sHi)
            Fma(ref acc, XMath.Exp(partML[2 * (base0 + s)] - mMax), o);
    }

    /// <summary>acc_h += p[h, i] * v for the 4 heads of the pass (p = 0 past the visible keys or past the pass).</summary>
    private static void Accumulate(ArrayView<float> ss, KvQuad v, int i, int n, ref KvQuad a0, ref KvQuad a1, ref KvQuad a2, ref KvQuad a3)
    {
        if (i >= n)
            return;
        Fma(ref a0, ss[i], v);
        Fma(ref a1, ss[MaxKeysPerSplit + i], v);
        Fma(ref a2, ss[2 * MaxKeysPerSplit + i], v);
        Fma(ref a3, ss[3 * MaxKeysPerSplit + i], v);
    }

    private static void Fma(ref KvQuad a, float w, KvQuad v)
    {
        a.X += w * v.X;
        a.Y += w * v.Y;
        a.Z += w * v.Z;
        a.W += w * v.W;
    }

    private static void StoreQuad(ArrayView<float> s, int at, KvQuad a)
    {
        s[at] = a.X;
        s[at + 1] = a.Y;
        s[at + 2] = a.Z;
        s[at + 3] = a.W;
    }
}
