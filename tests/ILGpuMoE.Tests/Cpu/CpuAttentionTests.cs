// cpu/rope, cpu/kv-append and cpu/attention against the oracle.
//   rope: RefOps.Rope (the full rotate-half rotation), RefRope.Apply with RefRope.InvFreq (rotary dim, offset,
//         interleaved pairs, YaRN with its cos/sin factor: gpt-oss' and DeepSeek-V3's rope_scaling) and
//         RefOps.HeadNormRope (Qwen3's per-head q/k norm). The kernel is handed RopeSpec.InverseFrequencies(), as the
//         runtime does; the oracle computes its own. Positions never start at 0. Unrotated dims keep their bits.
//   attention: the cache [Hkv, S, Dh] is filled with the history rows 0..pos0-1 by hand, the T new rows by
//         cpu/kv-append, and compared with RefOps.GeneralAttention on the [S, Hkv, Dh] keys: GQA (H = 6, Hkv = 2),
//         causal prefill at pos0 > 0, decode, a sliding window, gpt-oss' sinks, a given scale. Cache rows past the last
//         position are NaN, and so are the rows before the first window (no query sees them): reading one fails.
using ILGpuMoE.Cpu;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using static ILGpuMoE.Tests.Cpu.CpuTestData;

namespace ILGpuMoE.Tests.Cpu;

public unsafe class CpuAttentionTests
{
    private const double Rtol = 1e-5;

    /// <summary>gpt-oss' rope_scaling (factor 32, original 4096, beta 32 / 1, truncate false).</summary>
    private static readonly YarnScaling GptOss = new(32, 4096, 32, 1, Truncate: false);

    /// <summary>DeepSeek-V3's rope_scaling (factor 40, original 4096, beta 32 / 1, mscale 1, mscale_all_dim 1): cos/sin factor 1.</summary>
    private static readonly YarnScaling DeepSeek = new(40, 4096, 32, 1, Mscale: 1, MscaleAllDim: 1);

    /// <summary>A made-up YaRN whose cos/sin factor is not 1 (mscale 1 over mscale_all_dim 0.5), truncated.</summary>
    private static readonly YarnScaling Scaled = new(8, 2048, 32, 1, Mscale: 1, MscaleAllDim: 0.5);

    private static RefYarn? Ref(YarnScaling? y) =>
        y is null ? null : new(y.Factor, y.OriginalMaxPositions, y.BetaFast, y.BetaSlow, y.Truncate, y.AttentionFactor, y.Mscale, y.MscaleAllDim);

    // ---- cpu/rope ------------------------------------------------------------------------------------------------

    private static void Rope(float[] q, float[] k, int[] positions, int heads, int kvHeads, RopeSpec spec, int qStride, int kStride,
        float[]? qNorm = null, float[]? kNorm = null, float eps = 1e-6f, int qAt = 0, int kAt = 0)
    {
        var inv = spec.InverseFrequencies();
        fixed (float* pq = q, pk = k, pqn = qNorm, pkn = kNorm)
        fixed (int* pp = positions)
            CpuKernels.Rope(pq + qAt, pk + kAt, pp, positions.Length, heads, kvHeads, spec, inv, qStride, kStride, pqn, pkn, eps);
    }

    /// <summary>The oracle's rotation of a copy of x [T, heads, stride] at offset.</summary>
    private static float[] RopeWant(float[] x, int[] positions, int heads, int stride, int offset, RopeSpec spec)
    {
        var yarn = Ref(spec.Yarn);
        var want = (float[])x.Clone();
        RefRope.Apply(want, positions, positions.Length, heads, stride, offset, RefRope.InvFreq(spec.RotaryDim, spec.Theta, yarn),
            yarn?.CosSinFactor ?? 1.0, spec.Interleaved);
        return want;
    }

    /// <summary>Close to the oracle; the dims outside [offset, offset + rotary) of each head bit for bit the input.</summary>
    private static void CheckRotated(float[] want, float[] got, float[] input, int stride, int offset, int rotary, string what)
    {
        Check.Close(want, got, Rtol, 5e-7, what);
        for (int i = 0; i < input.Length; i++)
        {
            int d = i % stride;
            if (d < offset || d >= offset + rotary)
                Assert.That(BitConverter.SingleToInt32Bits(got[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(input[i])), $"{what}: unrotated element {i}");
        }
    }

    /// <summary>Every earlier family's rope (RopeSpec.Full) against RefOps.Rope, a prefill from position 7 and a decode step at 1234; Dh = 10 has an odd half.</summary>
    [TestCase(16, new[] { 7, 8, 9, 10 })]
    [TestCase(10, new[] { 7, 8, 9 })]
    [TestCase(64, new[] { 1234 })]
    public void FullRotateHalfMatchesReference(int headDim, int[] positions)
    {
        const int heads = 3, kvHeads = 1;
        const float theta = 1e6f;
        int t = positions.Length;
        var q = Data.Uniform(500 + headDim, (long)t * heads * headDim);
        var k = Data.Uniform(501 + headDim, (long)t * kvHeads * headDim);
        var gotQ = (float[])q.Clone();
        var gotK = (float[])k.Clone();
        Rope(gotQ, gotK, positions, heads, kvHeads, RopeSpec.Full(headDim, theta), headDim, headDim);
        Check.Close(RefOps.Rope(q, positions, t, heads, headDim, theta), gotQ, Rtol, 5e-7, "q");
        Check.Close(RefOps.Rope(k, positions, t, kvHeads, headDim, theta), gotK, Rtol, 5e-7, "k");
    }

    /// <summary>
    /// Rotary dim, offset, pair layout and YaRN (0 none, 1 gpt-oss, 2 DeepSeek-V3, 3 a cos/sin factor != 1); k's head
    /// vectors are longer than q's (kPad) so the two strides differ. Positions from 4090 cross YaRN's original 4096.
    /// </summary>
    [TestCase(64, 64, 0, false, 1, 0)]   // gpt-oss: full Dh, rotate-half, YaRN (truncate false)
    [TestCase(64, 64, 0, true, 2, 6)]    // interleaved pairs, DeepSeek's YaRN over the whole vector
    [TestCase(24, 16, 8, true, 2, 3)]    // DeepSeek's q: [nope 8 | rope 16], rotated at offset Dn, interleaved
    [TestCase(40, 24, 10, true, 0, 2)]   // partial rotary at an offset, interleaved, plain frequencies
    [TestCase(36, 16, 20, false, 3, 4)]  // partial rotate-half on the last 16 dims, YaRN with a factor
    public void SpecMatchesReference(int headDim, int rotary, int offset, bool interleaved, int yarn, int kPad)
    {
        var spec = new RopeSpec(rotary, yarn == 2 ? 10000 : 150000)
        {
            Offset = offset,
            Interleaved = interleaved,
            Yarn = yarn switch { 0 => null, 1 => GptOss, 2 => DeepSeek, 3 => Scaled, _ => throw new ArgumentOutOfRangeException(nameof(yarn)) },
        };
        const int heads = 3, kvHeads = 2;
        int[] positions = [4090, 4091, 4092, 4093, 4094, 4095, 4096, 4097, 9000];
        int t = positions.Length, kStride = headDim + kPad, seed = 600 + headDim + rotary + offset + yarn;
        var q = Data.Uniform(seed, (long)t * heads * headDim);
        var k = Data.Uniform(seed + 1, (long)t * kvHeads * kStride);
        var gotQ = (float[])q.Clone();
        var gotK = (float[])k.Clone();
        Rope(gotQ, gotK, positions, heads, kvHeads, spec, headDim, kStride);
        CheckRotated(RopeWant(q, positions, heads, headDim, offset, spec), gotQ, q, headDim, offset, rotary, "q");
        CheckRotated(RopeWant(k, positions, kvHeads, kStride, offset, spec), gotK, k, kStride, offset, rotary, "k");
    }

    /// <summary>
    /// DeepSeek-V3's MLA rope as the runtime calls it: q [T, H, Dn + Dr] through a pointer at Dn with stride Dn + Dr
    /// (offset 0) and k_rope, the last Dr floats of each kv_a_proj_with_mqa row [T, R + Dr], through a pointer at R
    /// with stride R + Dr (one head); interleaved, YaRN. The nope dims and the latent keep their bits.
    /// </summary>
    [Test]
    public void MlaRopePartsThroughStridedPointers()
    {
        const int heads = 3, nope = 10, rope = 8, rank = 20;
        int[] positions = [5, 6, 7, 8];
        int t = positions.Length;
        var spec = new RopeSpec(rope, 10000) { Interleaved = true, Yarn = DeepSeek };
        var q = Data.Uniform(700, (long)t * heads * (nope + rope));
        var kva = Data.Uniform(701, (long)t * (rank + rope));
        var gotQ = (float[])q.Clone();
        var gotK = (float[])kva.Clone();
        Rope(gotQ, gotK, positions, heads, 1, spec, nope + rope, rank + rope, qAt: nope, kAt: rank);
        CheckRotated(RopeWant(q, positions, heads, nope + rope, nope, spec), gotQ, q, nope + rope, nope, rope, "q");
        CheckRotated(RopeWant(kva, positions, 1, rank + rope, rank, spec), gotK, kva, rank + rope, rank, rope, "k_rope");
    }

    /// <summary>Qwen3's q_norm / k_norm (each head RMS-normalised over Dh, then the full rope) against RefOps.HeadNormRope; either norm may be absent.</summary>
    [TestCase(5, 3, 1, 16, true, true)]
    [TestCase(2, 4, 2, 128, true, true)]
    [TestCase(3, 5, 1, 80, true, false)]
    [TestCase(1, 3, 3, 16, false, true)]
    public void HeadNormMatchesReference(int t, int heads, int kvHeads, int headDim, bool normQ, bool normK)
    {
        const float theta = 1e6f, eps = 1e-6f;
        var positions = Enumerable.Range(3, t).ToArray();
        int seed = 800 + t * 31 + headDim;
        var q = Data.Uniform(seed, (long)t * heads * headDim, 4f);
        var k = Data.Uniform(seed + 1, (long)t * kvHeads * headDim, 4f);
        var qw = normQ ? Data.Uniform(seed + 2, headDim, 0.5f).Select(v => v + 1f).ToArray() : null;
        var kw = normK ? Data.Uniform(seed + 3, headDim, 0.5f).Select(v => v + 1f).ToArray() : null;
        var wantQ = qw is null ? RefOps.Rope(q, positions, t, heads, headDim, theta) : RefOps.HeadNormRope(q, qw, positions, t, heads, headDim, eps, theta);
        var wantK = kw is null ? RefOps.Rope(k, positions, t, kvHeads, headDim, theta) : RefOps.HeadNormRope(k, kw, positions, t, kvHeads, headDim, eps, theta);
        var gotQ = (float[])q.Clone();
        var gotK = (float[])k.Clone();
        Rope(gotQ, gotK, positions, heads, kvHeads, RopeSpec.Full(headDim, theta), headDim, headDim, qw, kw, eps);
        Check.Close(wantQ, gotQ, Rtol, 2e-6, "q");
        Check.Close(wantK, gotK, Rtol, 2e-6, "k");
    }

    [Test]
    public void RopeRefusesFrequenciesOfAnotherDim()
    {
        var q = Data.Uniform(900, 16);
        var k = Data.Uniform(901, 16);
        int[] positions = [3];
        var inv = RopeSpec.Full(8, 1e4f).InverseFrequencies();
        Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* pq = q, pk = k)
            fixed (int* pp = positions)
                CpuKernels.Rope(pq, pk, pp, 1, 1, 1, RopeSpec.Full(16, 1e4f), inv, 16, 16, null, null, 1e-6f);
        });
    }

    // ---- cpu/kv-append + cpu/attention ---------------------------------------------------------------------------

    /// <summary>(T, H, Hkv, Dh, pos0, window, sinks, scale: 0 for 1/sqrt(Dh)).</summary>
    private static IEnumerable<TestCaseData> AttentionCases() =>
    [
        new TestCaseData(4, 6, 2, 20, 5, 0, false, 0f).SetName("GQA prefill at pos0 5"),
        new TestCaseData(5, 6, 2, 16, 0, 0, false, 0f).SetName("GQA prefill at pos0 0"),
        new TestCaseData(1, 6, 2, 20, 9, 0, false, 0f).SetName("GQA decode at 9"),
        new TestCaseData(6, 6, 2, 20, 7, 3, false, 0f).SetName("sliding window 3"),
        new TestCaseData(1, 6, 2, 12, 11, 4, false, 0f).SetName("decode in a sliding window 4"),
        new TestCaseData(5, 6, 2, 12, 1, 4, false, 0f).SetName("window 4 wider than the first positions"),
        new TestCaseData(3, 6, 2, 20, 4, 0, true, 0.37f).SetName("gpt-oss sinks with scale 0.37"),
        new TestCaseData(4, 6, 6, 9, 10, 4, true, 0f).SetName("MHA, Dh 9, window 4 and sinks"),
        new TestCaseData(6, 6, 2, 20, 40, 0, false, 0f).SetName("long prefill split over workers"),
        new TestCaseData(6, 4, 1, 33, 30, 8, true, 0.2f).SetName("MQA, Dh 33, window 8, sinks, scale 0.2, split over workers"),
    ];

    [TestCaseSource(nameof(AttentionCases))]
    public void AppendAndAttentionMatchReference(int t, int heads, int kvHeads, int headDim, int pos0, int window, bool withSinks, float scale)
    {
        int keys = pos0 + t, maxSeq = keys + 3, seed = 1000 + t * 97 + pos0 * 13 + headDim + window;
        if (scale == 0)
            scale = 1f / MathF.Sqrt(headDim);

        // Keys and values of every position in the oracle's [S, Hkv, Dh] layout; the T new ones are rows pos0.. of it.
        var kAll = Data.Gaussian(seed, (long)keys * kvHeads * headDim);
        var vAll = Data.Uniform(seed + 1, (long)keys * kvHeads * headDim);
        var q = Data.Gaussian(seed + 2, (long)t * heads * headDim);
        float[]? sinks = null;
        if (withSinks)
        {
            sinks = Data.Gaussian(seed + 3, heads, 2);
            sinks[0] = 6f;   // above every score: the sink is the row max
            sinks[1] = -30f; // negligible
        }

        // The history rows 0..pos0-1 by hand, except those before the first query's window: they stay NaN.
        int firstRead = window > 0 ? Math.Max(0, pos0 - window + 1) : 0;
        var kCache = Nan((long)kvHeads * maxSeq * headDim);
        var vCache = Nan((long)kvHeads * maxSeq * headDim);
        var wantK = Nan(kCache.Length);
        var wantV = Nan(vCache.Length);
        for (int j = 0; j < keys; j++)
        {
            for (int h = 0; h < kvHeads; h++)
            {
                long src = ((long)j * kvHeads + h) * headDim, dst = ((long)h * maxSeq + j) * headDim;
                if (j < pos0 && j >= firstRead)
                {
                    kAll.AsSpan((int)src, headDim).CopyTo(kCache.AsSpan((int)dst));
                    vAll.AsSpan((int)src, headDim).CopyTo(vCache.AsSpan((int)dst));
                }

                if (j >= firstRead)
                {
                    kAll.AsSpan((int)src, headDim).CopyTo(wantK.AsSpan((int)dst));
                    vAll.AsSpan((int)src, headDim).CopyTo(wantV.AsSpan((int)dst));
                }
            }
        }

        var kNew = kAll[(pos0 * kvHeads * headDim)..];
        var vNew = vAll[(pos0 * kvHeads * headDim)..];
        fixed (float* pk = kNew, pv = vNew, pkc = kCache, pvc = vCache)
            CpuKernels.AppendKv(pk, pv, pkc, pvc, t, kvHeads, headDim, maxSeq, pos0);
        Check.BitEqual(wantK, kCache, "k cache after append (new rows written, nothing else)");
        Check.BitEqual(wantV, vCache, "v cache after append");

        var want = RefOps.GeneralAttention(q, kAll, vAll, Enumerable.Range(pos0, t).ToArray(), t, keys, heads, kvHeads, headDim, headDim,
            scale, window, sinks ?? ReadOnlySpan<float>.Empty);

        float[] Run(CpuThreads threads)
        {
            var o = Nan((long)t * heads * headDim);
            fixed (float* pq = q, pkc = kCache, pvc = vCache, po = o, ps = sinks)
                CpuKernels.Attention(threads, pq, pkc, pvc, po, t, heads, kvHeads, headDim, maxSeq, pos0, window, ps, scale);
            return o;
        }

        var one = Run(One);
        Check.Close(want, one, Rtol, 2e-6, "attention");
        Check.BitEqual(one, Run(Three), "3 workers vs 1");
    }

    /// <summary>The sinks matter: with them the output differs from the same attention without (head 0's sink is the row max).</summary>
    [Test]
    public void SinksChangeTheOutput()
    {
        const int t = 2, heads = 2, headDim = 8, pos0 = 3, maxSeq = 5;
        var k = Data.Gaussian(1100, (long)maxSeq * headDim);
        var v = Data.Uniform(1101, (long)maxSeq * headDim);
        var q = Data.Gaussian(1102, (long)t * heads * headDim);
        float[] sinks = [6f, 0.5f];
        var with = Nan(t * heads * headDim);
        var without = Nan(t * heads * headDim);
        fixed (float* pq = q, pk = k, pv = v, pw = with, pn = without, ps = sinks)
        {
            CpuKernels.Attention(One, pq, pk, pv, pw, t, heads, 1, headDim, maxSeq, pos0, 0, ps, 0.35f);
            CpuKernels.Attention(One, pq, pk, pv, pn, t, heads, 1, headDim, maxSeq, pos0, 0, null, 0.35f);
        }

        for (int h = 0; h < heads; h++)
        {
            var a = with.AsSpan(h * headDim, headDim).ToArray();
            var b = without.AsSpan(h * headDim, headDim).ToArray();
            Assert.That(a, Is.Not.EqualTo(b), $"head {h}");
        }
    }

    /// <summary>gpt-oss' sinks at -inf take no mass: the output has the bits of the same call without sinks.</summary>
    [Test]
    public void MinusInfinitySinksGiveTheNoSinkBits()
    {
        const int t = 3, heads = 4, kvHeads = 2, headDim = 12, pos0 = 2, maxSeq = 6;
        var k = Data.Gaussian(1150, (long)kvHeads * maxSeq * headDim);
        var v = Data.Uniform(1151, (long)kvHeads * maxSeq * headDim);
        var q = Data.Gaussian(1152, (long)t * heads * headDim);
        var sinks = Enumerable.Repeat(float.NegativeInfinity, heads).ToArray();
        var with = Nan(t * heads * headDim);
        var without = Nan(t * heads * headDim);
        fixed (float* pq = q, pk = k, pv = v, pw = with, pn = without, ps = sinks)
        {
            CpuKernels.Attention(One, pq, pk, pv, pw, t, heads, kvHeads, headDim, maxSeq, pos0, 3, ps, 0.3f);
            CpuKernels.Attention(One, pq, pk, pv, pn, t, heads, kvHeads, headDim, maxSeq, pos0, 3, null, 0.3f);
        }

        Check.Close(RefOps.GeneralAttention(q, Interleave(k, kvHeads, maxSeq, headDim), Interleave(v, kvHeads, maxSeq, headDim),
            Enumerable.Range(pos0, t).ToArray(), t, maxSeq, heads, kvHeads, headDim, headDim, 0.3f, 3, ReadOnlySpan<float>.Empty), without, Rtol, 2e-6, "no sinks");
        Check.BitEqual(without, with, "-inf sinks vs none");
    }

    /// <summary>A cache image [Hkv, S, Dh] as the oracle's [S, Hkv, Dh].</summary>
    private static float[] Interleave(float[] cache, int kvHeads, int s, int headDim)
    {
        var o = new float[cache.Length];
        for (int h = 0; h < kvHeads; h++)
        {
            for (int j = 0; j < s; j++)
                cache.AsSpan((h * s + j) * headDim, headDim).CopyTo(o.AsSpan((j * kvHeads + h) * headDim));
        }

        return o;
    }

    [Test]
    public void AppendRefusesPositionsOutsideTheCache()
    {
        var k = Data.Uniform(1200, 2 * 4);
        var cache = Nan(5 * 4);
        foreach (var (t, pos0) in new[] { (2, 4), (1, 5), (1, -1) })
        {
            Assert.Throws<ArgumentOutOfRangeException>(() =>
            {
                fixed (float* pk = k, pc = cache)
                    CpuKernels.AppendKv(pk, pk, pc, pc, t, 1, 4, 5, pos0);
            }, $"T={t} pos0={pos0}");
        }

        StillPoisoned(cache, "cache after refused appends");
    }

    /// <summary>Queries past the cache (pos0 + T &gt; maxSeq) or before it would read other heads' rows or past the buffer: refused.</summary>
    [Test]
    public void AttentionRefusesPositionsOutsideTheCache([Values] bool threeWorkers)
    {
        const int heads = 4, kvHeads = 2, headDim = 16, maxSeq = 40;
        var q = Data.Gaussian(1400, 8L * heads * headDim);
        var cache = Data.Gaussian(1401, (long)kvHeads * maxSeq * headDim);
        foreach (var (t, pos0) in new[] { (8, 33), (1, 40), (1, -1) })
        {
            var o = Nan((long)t * heads * headDim);
            Assert.That(() =>
            {
                fixed (float* pq = q, pc = cache, po = o)
                    CpuKernels.Attention(threeWorkers ? Three : One, pq, pc, pc, po, t, heads, kvHeads, headDim, maxSeq, pos0, 0, null, 0.25f);
            }, Throws.InstanceOf<ArgumentOutOfRangeException>(), $"T={t} pos0={pos0}");
            StillPoisoned(o, $"output of the refused T={t} pos0={pos0}");
        }
    }

    [Test]
    public void AttentionRefusesHeadsNotAMultipleOfKvHeads()
    {
        var a = Data.Uniform(1300, 64);
        Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* p = a)
                CpuKernels.Attention(One, p, p, p, p, 1, 3, 2, 4, 4, 0, 0, null, 0.5f);
        });
    }
}
