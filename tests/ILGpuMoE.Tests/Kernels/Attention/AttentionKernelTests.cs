using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Attention;

/// <summary>
/// Attention kernels against RefOps.Attention on the CPU accelerator. The cache is built the way the runtime builds
/// it: rows of earlier positions already there, the current tokens appended by KvCacheAppendKernel, and every row
/// past pos0+T-1 left NaN, so a kernel that reads an invalid key fails.
/// </summary>
public class AttentionKernelTests
{
    private const double Rtol = 1e-5;
    private const double Atol = 2e-6;

    private static readonly Dictionary<AttentionVersion, AttentionKernel> Kernels = new();
    private static KvCacheAppendKernel? append;

    private static AttentionKernel Kernel(AttentionVersion version)
    {
        lock (Kernels)
        {
            if (!Kernels.TryGetValue(version, out var k))
                Kernels[version] = k = AttentionKernel.Create(TestDevice.Accelerator, version);
            return k;
        }
    }

    private static KvCacheAppendKernel Append()
    {
        lock (Kernels)
            return append ??= KvCacheAppendKernel.Create(TestDevice.Accelerator);
    }

    /// <summary>Keys/values of positions 0..S-1 in the reference layout [S, Hkv, Dh] and queries [T, H, Dh].</summary>
    private sealed record Problem(int Tokens, int Heads, int KvHeads, int HeadDim, int Pos0, int Window, float[] Q, float[] K, float[] V)
    {
        public int Keys => Pos0 + Tokens;

        public int MaxSeq => Keys + 5; // an unused, NaN-poisoned tail

        public static Problem Random(int seed, int tokens, int heads, int kvHeads, int headDim, int pos0, int window)
        {
            int s = pos0 + tokens;
            // Scores of order 1: q . k / sqrt(Dh) with unit-variance entries.
            return new Problem(tokens, heads, kvHeads, headDim, pos0, window,
                Data.Gaussian(seed, (long)tokens * heads * headDim),
                Data.Gaussian(seed + 1, (long)s * kvHeads * headDim),
                Data.Uniform(seed + 2, (long)s * kvHeads * headDim));
        }

        public float[] Expected()
        {
            var pos = Enumerable.Range(Pos0, Tokens).ToArray();
            return RefOps.Attention(Q, K, V, pos, Tokens, Keys, Heads, KvHeads, HeadDim, Window);
        }
    }

    /// <summary>[Hkv, maxSeq, Dh] host image of rows 0..rows-1 of kv ([S, Hkv, Dh]); the rest NaN.</summary>
    internal static float[] CacheImage(float[] kv, int rows, int kvHeads, int headDim, int maxSeq)
    {
        var c = new float[KvCacheLayout.Elements(kvHeads, maxSeq, headDim)];
        Array.Fill(c, float.NaN);
        for (int j = 0; j < rows; j++)
            for (int h = 0; h < kvHeads; h++)
                Array.Copy(kv, ((long)j * kvHeads + h) * headDim, c, KvCacheLayout.Index(h, j, 0, maxSeq, headDim), headDim);
        return c;
    }

    /// <summary>Device caches holding rows 0..pos0-1, then the append kernel adds rows pos0..pos0+T-1.</summary>
    private static (MemoryBuffer1D<float, Stride1D.Dense> K, MemoryBuffer1D<float, Stride1D.Dense> V) BuildCache(Problem p)
    {
        var acc = TestDevice.Accelerator;
        var kc = TestDevice.Upload(CacheImage(p.K, p.Pos0, p.KvHeads, p.HeadDim, p.MaxSeq));
        var vc = TestDevice.Upload(CacheImage(p.V, p.Pos0, p.KvHeads, p.HeadDim, p.MaxSeq));
        long cur = (long)p.Pos0 * p.KvHeads * p.HeadDim, n = (long)p.Tokens * p.KvHeads * p.HeadDim;
        using var k = TestDevice.Upload(p.K.AsSpan((int)cur, (int)n).ToArray());
        using var v = TestDevice.Upload(p.V.AsSpan((int)cur, (int)n).ToArray());
        Append().Launch(acc.DefaultStream, k.View, v.View, kc.View, vc.View, p.Tokens, p.KvHeads, p.HeadDim, p.MaxSeq, p.Pos0);
        acc.Synchronize();
        return (kc, vc);
    }

    private static float[] Run(AttentionVersion version, Problem p, int? keysPerSplit = null)
    {
        var acc = TestDevice.Accelerator;
        var (kc, vc) = BuildCache(p);
        using (kc)
        using (vc)
        {
            using var q = TestDevice.Upload(p.Q);
            using var o = TestDevice.PoisonedFloats(p.Q.Length);
            var kernel = Kernel(version);
            lock (kernel)
            {
                kernel.KeysPerSplitOverride = keysPerSplit;
                kernel.Launch(acc.DefaultStream, q.View, kc.View, vc.View, o.View, p.Tokens, p.Heads, p.KvHeads, p.HeadDim, p.MaxSeq, p.Pos0, p.Window);
                acc.Synchronize();
                kernel.KeysPerSplitOverride = null;
            }

            return o.GetAsArray1D();
        }
    }

    [Test]
    public void AppendWritesExactlyTheNewRows()
    {
        var p = Problem.Random(11, tokens: 3, heads: 4, kvHeads: 2, headDim: 40, pos0: 4, window: 0);
        var (kc, vc) = BuildCache(p);
        using (kc)
        using (vc)
        {
            // Rows 0..6 hold k/v (the first 4 uploaded, the last 3 appended), rows 7.. stay NaN.
            var expectK = CacheImage(p.K, p.Keys, p.KvHeads, p.HeadDim, p.MaxSeq);
            var expectV = CacheImage(p.V, p.Keys, p.KvHeads, p.HeadDim, p.MaxSeq);
            var gotK = kc.GetAsArray1D();
            var gotV = vc.GetAsArray1D();
            for (int i = 0; i < expectK.Length; i++)
            {
                Assert.That(BitConverter.SingleToInt32Bits(gotK[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expectK[i])), $"kCache[{i}]");
                Assert.That(BitConverter.SingleToInt32Bits(gotV[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expectV[i])), $"vCache[{i}]");
            }
        }
    }

    // (T, H, Hkv, Dh, pos0, window, keysPerSplit for V2Decode; 0 = automatic)
    private static readonly object[] Shapes =
    [
        new object[] { 1, 4, 4, 16, 0, 0, 0 },    // first token: one key
        new object[] { 3, 4, 2, 40, 0, 0, 2 },    // GQA 2:1, odd T, splits of 2 keys
        new object[] { 17, 8, 1, 72, 0, 0, 5 },   // MQA, T spans two query tiles, Dh not a multiple of 32
        new object[] { 17, 4, 2, 40, 0, 5, 3 },   // sliding window smaller than T
        new object[] { 3, 8, 1, 16, 6, 0, 0 },    // continues a cache of 6 rows
        new object[] { 1, 4, 2, 128, 37, 0, 0 },  // decode, Dh = 128, three key tiles
        new object[] { 3, 4, 2, 128, 20, 7, 4 },  // Dh = 128 with a window
    ];

    // The split-K decode kernel is meant for T <= 2 and emulates a warp shuffle per key on the CPU (slow), so its
    // cases keep T <= 3 and few keys.
    private static readonly object[] DecodeShapes =
    [
        new object[] { 1, 4, 4, 16, 0, 0, 0 },    // first token: one key
        new object[] { 3, 4, 2, 40, 0, 0, 2 },    // GQA 2:1, splits of 2 keys
        new object[] { 1, 8, 1, 72, 12, 0, 5 },   // MQA: 8 warps share the kv head, Dh not a multiple of 32
        new object[] { 3, 4, 2, 40, 10, 5, 3 },   // window: splits whose keys are all hidden
        new object[] { 3, 8, 1, 16, 6, 0, 0 },    // continues a cache of 6 rows, automatic split
        new object[] { 1, 4, 2, 128, 37, 0, 0 },  // Dh = 128
        new object[] { 3, 4, 2, 128, 20, 7, 4 },  // Dh = 128 with a window
    ];

    [TestCaseSource(nameof(Shapes))]
    public void V1MatchesReference(int t, int h, int hkv, int dh, int pos0, int window, int kps) =>
        CheckVersion(AttentionVersion.V1, t, h, hkv, dh, pos0, window, null);

    [TestCaseSource(nameof(Shapes))]
    public void V2PrefillMatchesReference(int t, int h, int hkv, int dh, int pos0, int window, int kps) =>
        CheckVersion(AttentionVersion.V2Prefill, t, h, hkv, dh, pos0, window, null);

    [TestCaseSource(nameof(DecodeShapes))]
    public void V2DecodeMatchesReference(int t, int h, int hkv, int dh, int pos0, int window, int kps) =>
        CheckVersion(AttentionVersion.V2Decode, t, h, hkv, dh, pos0, window, kps > 0 ? kps : null);

    private static void CheckVersion(AttentionVersion version, int t, int h, int hkv, int dh, int pos0, int window, int? kps)
    {
        var p = Problem.Random(1000 + t * 31 + dh + pos0 * 7 + window, t, h, hkv, dh, pos0, window);
        Check.Close(p.Expected(), Run(version, p, kps), Rtol, Atol, $"{version} T={t} H={h} Hkv={hkv} Dh={dh} pos0={pos0} window={window}");
    }

    [Test]
    public void LongCacheManyTilesAndSplits([Values(AttentionVersion.V1, AttentionVersion.V2Prefill, AttentionVersion.V2Decode)] AttentionVersion version)
    {
        // 300 cached keys: 19 key tiles for the prefill kernel, 10 automatic splits of 32 keys for the decode kernel.
        var p = Problem.Random(300, tokens: version == AttentionVersion.V2Decode ? 1 : 3, heads: 4, kvHeads: 2, headDim: 16, pos0: 300, window: 0);
        Check.Close(p.Expected(), Run(version, p), Rtol, Atol, $"{version} S={p.Keys}");
    }

    [Test]
    public void DecodeAtSeveralPositions([Values(AttentionVersion.V1, AttentionVersion.V2)] AttentionVersion version)
    {
        // One 24-token history; decode the token at each position against the cache of the ones before it.
        var full = Problem.Random(77, tokens: 24, heads: 4, kvHeads: 2, headDim: 40, pos0: 0, window: 0);
        foreach (int pos in new[] { 0, 1, 16, 23 })
        {
            var p = Slice(full, pos, 1, window: 0);
            Check.Close(p.Expected(), Run(version, p), Rtol, Atol, $"{version} decode at {pos}");
        }
    }

    [Test]
    public void ChunkedPrefillEqualsOnePrefill([Values(AttentionVersion.V1, AttentionVersion.V2)] AttentionVersion version)
    {
        var whole = Problem.Random(90, tokens: 9, heads: 4, kvHeads: 2, headDim: 40, pos0: 0, window: 0);
        var one = Run(version, whole);
        var first = Run(version, Slice(whole, 0, 5, 0));
        var second = Run(version, Slice(whole, 5, 4, 0));
        var chunked = first.Concat(second).ToArray();
        Check.Close(whole.Expected(), one, Rtol, Atol, "one prefill of 9");
        // V1 computes every query independently of its launch, so chunking cannot change a bit; V2's tiles move.
        if (version == AttentionVersion.V1)
            Check.BitEqual(one, chunked, "chunked 5+4 vs 9");
        else
            Check.Close(one, chunked, Rtol, Atol, "chunked 5+4 vs 9");
    }

    [Test]
    public void BitIdenticalTwice([Values(AttentionVersion.V2Prefill, AttentionVersion.V2Decode)] AttentionVersion version)
    {
        int tokens = version == AttentionVersion.V2Decode ? 1 : 17;
        var p = Problem.Random(5, tokens, heads: 4, kvHeads: 1, headDim: 40, pos0: tokens == 1 ? 19 : 3, window: 0);
        Check.BitEqual(Run(version, p, 4), Run(version, p, 4), $"{version} twice");
    }

    [Test]
    public void AutomaticDecodeSplitsCoverAllKeys()
    {
        foreach (var (t, hkv, s) in new[] { (1, 8, 1), (1, 8, 1000), (1, 8, 32768), (2, 1, 5), (17, 2, 4000) })
        {
            var (splits, kps) = AttentionKernel.DecodeSplits(t, hkv, s);
            Assert.That((long)splits * kps, Is.GreaterThanOrEqualTo(s), $"T={t} Hkv={hkv} S={s}");
            Assert.That((long)(splits - 1) * kps, Is.LessThan(s), $"T={t} Hkv={hkv} S={s}: an empty trailing split");
        }
    }

    [Test]
    public void BadShapesThrowArgumentException()
    {
        var acc = TestDevice.Accelerator;
        using var q = acc.Allocate1D<float>(4 * 16);
        using var kc = acc.Allocate1D<float>(2 * 8 * 16);
        using var o = acc.Allocate1D<float>(4 * 16);
        var kernel = Kernel(AttentionVersion.V2);
        var s = acc.DefaultStream;
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, kc.View, kc.View, o.View, 1, 4, 3, 16, 8, 0));   // H % Hkv
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, kc.View, kc.View, o.View, 1, 4, 2, 16, 8, 8));   // past maxSeq
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, kc.View, kc.View, o.View, 2, 4, 2, 16, 8, 0));   // q too short
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, kc.View, kc.View, o.View, 1, 4, 2, 16, 9, 0));   // cache too short
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, kc.View, kc.View, o.View, 1, 1, 1, 256, 1, 0));  // Dh > 128
        Assert.Throws<ArgumentException>(() => Append().Launch(s, q.View, q.View, kc.View, kc.View, 1, 2, 16, 8, -1));  // negative pos0
        // Hkv 2 x maxSeq 100,000,000 x Dh 16 = 3.2e9 floats: the cache size is no longer refused as too large for 32-bit
        // offsets; the (tiny) view fails the length check, which states the exact 64-bit need.
        var big = Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, kc.View, kc.View, o.View, 1, 4, 2, 16, 100_000_000, 0));
        Assert.That(big!.Message, Does.Contain("kCache [Hkv, maxSeq, Dh] has 256 floats, needs 3200000000"));
        // One head of 20,000,000 x 128 floats passes 2^31: the kernels index inside a head with int, so it is refused.
        var head = Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, kc.View, kc.View, o.View, 1, 1, 1, 128, 20_000_000, 0));
        Assert.That(head!.Message, Does.Contain("kCache head [maxSeq, Dh] has 2560000000 elements"));
    }

    /// <summary>Tokens pos0..pos0+T-1 of a longer problem (keys 0..pos0+T-1 of it).</summary>
    private static Problem Slice(Problem full, int pos0, int tokens, int window)
    {
        int s = pos0 + tokens;
        int rowQ = full.Heads * full.HeadDim, rowK = full.KvHeads * full.HeadDim;
        return new Problem(tokens, full.Heads, full.KvHeads, full.HeadDim, pos0, window,
            full.Q.AsSpan(pos0 * rowQ, tokens * rowQ).ToArray(),
            full.K.AsSpan(0, s * rowK).ToArray(),
            full.V.AsSpan(0, s * rowK).ToArray());
    }
}
