using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Attention;

/// <summary>
/// AttentionV3Decode (one launch, pos read from the device, last group combines the splits) against RefOps.Attention
/// on the CPU accelerator. The cache holds rows 0..pos and NaN past pos, the output starts NaN. Most cases force small
/// splits (16 keys) so that a short cache already has many splits: pos at and around split boundaries, a window that
/// starts inside a split, splits past pos that only take part in the completion count.
/// </summary>
public class AttentionDecodeV3Tests
{
    private const double Rtol = 1e-5;
    private const double Atol = 2e-6;

    private static AttentionKernel? shared;

    private static AttentionKernel Kernel()
    {
        lock (typeof(AttentionDecodeV3Tests))
            return shared ??= AttentionKernel.Create(TestDevice.Accelerator, AttentionVersion.V3Decode);
    }

    /// <summary>q [H, Dh] and the keys/values of positions 0..maxSeq-1 in the reference layout [S, Hkv, Dh].</summary>
    private sealed record Problem(int Heads, int KvHeads, int HeadDim, int MaxSeq, float[] Q, float[] K, float[] V)
    {
        public static Problem Random(int seed, int heads, int kvHeads, int headDim, int maxSeq) =>
            new(heads, kvHeads, headDim, maxSeq,
                Data.Gaussian(seed, (long)heads * headDim),
                Data.Gaussian(seed + 1, (long)maxSeq * kvHeads * headDim),
                Data.Uniform(seed + 2, (long)maxSeq * kvHeads * headDim));

        public float[] Expected(int pos, int window)
        {
            int n = (pos + 1) * KvHeads * HeadDim; // the reference takes exactly the keys 0..pos
            return RefOps.Attention(Q, K.AsSpan(0, n), V.AsSpan(0, n), [pos], 1, pos + 1, Heads, KvHeads, HeadDim, window);
        }
    }

    /// <summary>One decode launch with rows 0..rows-1 in the cache (the rest NaN) and positions[0] = pos.</summary>
    private static float[] Run(AttentionKernel kernel, Problem p, int pos, int window, int? keysPerSplit, int rows = -1)
    {
        var acc = TestDevice.Accelerator;
        rows = rows < 0 ? pos + 1 : rows;
        using var kc = TestDevice.Upload(AttentionKernelTests.CacheImage(p.K, rows, p.KvHeads, p.HeadDim, p.MaxSeq));
        using var vc = TestDevice.Upload(AttentionKernelTests.CacheImage(p.V, rows, p.KvHeads, p.HeadDim, p.MaxSeq));
        using var q = TestDevice.Upload(p.Q);
        using var positions = TestDevice.Upload(new[] { pos });
        using var o = TestDevice.PoisonedFloats(p.Q.Length);
        lock (kernel)
        {
            kernel.KeysPerSplitOverride = keysPerSplit;
            try
            {
                kernel.LaunchDecode(acc.DefaultStream, q.View, kc.View, vc.View, o.View, positions.View, p.Heads, p.KvHeads, p.HeadDim, p.MaxSeq, window);
                acc.Synchronize();
            }
            finally
            {
                kernel.KeysPerSplitOverride = null;
            }
        }

        return o.GetAsArray1D();
    }

    // (H, Hkv, Dh, maxSeq, pos, window, keys per split; 0 = the default 128)
    private static readonly object[] Cases =
    [
        new object[] { 4, 1, 64, 40, 0, 0, 16 },     // pos 0: one key, GQA 4:1; splits 1, 2 have nothing visible
        new object[] { 4, 4, 128, 48, 21, 0, 16 },   // 1:1, pos in the middle of split 1
        new object[] { 8, 2, 36, 50, 31, 0, 16 },    // Dh 36 (9 quads on 16 lanes), pos = last key of split 1
        new object[] { 8, 2, 36, 50, 32, 0, 16 },    // pos = first key of split 2 (a split of one key)
        new object[] { 8, 2, 64, 37, 36, 0, 16 },    // pos = maxSeq - 1, the last split partial
        new object[] { 4, 1, 128, 45, 40, 19, 16 },  // window 19: the first visible key (22) inside split 1, split 0 hidden
        new object[] { 4, 2, 128, 60, 50, 3, 16 },   // window 3 inside one split
        new object[] { 6, 1, 16, 30, 29, 0, 8 },     // 6 heads per kv head: a pass of 4 and a pass of 2
        new object[] { 8, 1, 4, 20, 13, 0, 5 },      // Dh 4 (one quad, 4 lanes per key), 8 heads: two passes, odd split size
        new object[] { 4, 1, 128, 300, 255, 0, 0 },  // default 64 keys per split: pos = last key of split 3
        new object[] { 2, 1, 128, 200, 199, 0, 256 },// the largest split: 256 keys in flight 32 at a time
        new object[] { 4, 1, 16, 50, 47, 0, 3 },     // 16 visible splits of 3 keys: the combine's batches of 8
        new object[] { 4, 1, 8, 60, 55, 40, 3 },     // window 40: splits 5..18 visible (a partial last batch), 0..4 not
    ];

    [TestCaseSource(nameof(Cases))]
    public void MatchesReference(int h, int hkv, int dh, int maxSeq, int pos, int window, int kps)
    {
        var p = Problem.Random(4000 + dh + maxSeq * 3 + pos * 7 + window, h, hkv, dh, maxSeq);
        var got = Run(Kernel(), p, pos, window, kps > 0 ? kps : null);
        Check.Close(p.Expected(pos, window), got, Rtol, Atol, $"V3Decode H={h} Hkv={hkv} Dh={dh} maxSeq={maxSeq} pos={pos} window={window} kps={kps}");
    }

    [Test]
    public void SeveralLaunchesInARowResetTheCounters()
    {
        // One launcher, one growing history: a counter left non-zero would leave the next launch without a combining
        // group, and its output NaN.
        var p = Problem.Random(91, heads: 4, kvHeads: 2, headDim: 32, maxSeq: 40);
        foreach (int pos in new[] { 0, 17, 39, 3 })
            Check.Close(p.Expected(pos, 0), Run(Kernel(), p, pos, 0, 8), Rtol, Atol, $"launch at pos {pos}");
    }

    [Test]
    public void BitIdenticalTwice()
    {
        var p = Problem.Random(17, heads: 4, kvHeads: 1, headDim: 64, maxSeq: 40);
        Check.BitEqual(Run(Kernel(), p, 36, 0, 16), Run(Kernel(), p, 36, 0, 16), "V3Decode twice");
    }

    [Test]
    public void PositionsOutsideTheCacheNeverReadPastIt()
    {
        // The runtime refuses such positions on the host; the kernel clamps pos >= maxSeq to the last row (every row
        // valid here, so a read past the cache would be an out-of-bounds access) and gives NaN for pos < 0.
        var p = Problem.Random(23, heads: 4, kvHeads: 2, headDim: 16, maxSeq: 24);
        Check.Close(p.Expected(23, 0), Run(Kernel(), p, 24 + 5, 0, 8, rows: 24), Rtol, Atol, "pos past the cache");
        Assert.That(Run(Kernel(), p, -1, 0, 8, rows: 24).All(float.IsNaN), Is.True, "pos < 0 has no visible key: NaN");
    }

    [Test]
    public void BadArgumentsThrowArgumentException()
    {
        var acc = TestDevice.Accelerator;
        var s = acc.DefaultStream;
        using var q = acc.Allocate1D<float>(4 * 128);
        using var kc = acc.Allocate1D<float>(2 * 8 * 128 + 4);
        using var pos = TestDevice.Upload(new[] { 0 });
        var kernel = Kernel();
        var odd = Assert.Throws<ArgumentException>(() => kernel.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View, 4, 2, 30, 8))!;
        Assert.That(odd.Message, Does.Contain("headDim must be a multiple of 4"));
        Assert.Throws<ArgumentException>(() => kernel.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View, 1, 1, 132, 8));   // Dh > 128
        Assert.Throws<ArgumentException>(() => kernel.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View, 4, 3, 16, 8));    // H % Hkv
        Assert.Throws<ArgumentException>(() => kernel.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View, 4, 2, 128, 9));   // cache too short
        Assert.Throws<ArgumentException>(() => kernel.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View.SubView(0, 0), 4, 2, 16, 8)); // no position
        var misaligned = Assert.Throws<ArgumentException>(() =>
            kernel.LaunchDecode(s, q.View, kc.View.SubView(1, kc.Length - 1), kc.View, q.View, pos.View, 4, 2, 128, 8))!;
        Assert.That(misaligned.Message, Does.Contain("kCache"));
        var host = Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, kc.View, kc.View, q.View, 1, 4, 2, 16, 8, 0))!;
        Assert.That(host.Message, Does.Contain("LaunchDecode"));
        lock (kernel)
        {
            kernel.KeysPerSplitOverride = AttentionDecodeKernels.MaxKeysPerSplit + 1;
            try
            {
                Assert.Throws<ArgumentException>(() => kernel.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View, 4, 2, 16, 8));
            }
            finally
            {
                kernel.KeysPerSplitOverride = null;
            }
        }
    }

    [Test]
    public void ScratchIsSizedByMaxSeq()
    {
        // Mixtral: H 32, Dh 128, maxSeq 4096 -> 64 splits of 64 keys: 32 * 64 * 130 floats + 8 counters.
        Assert.That(AttentionKernel.DecodeScratchBytes(32, 8, 128, 4096), Is.EqualTo(4L * 32 * 64 * 130 + 4 * 8));
        Assert.That(AttentionKernel.DecodeScratchBytes(32, 8, 128, 4096, keysPerSplit: 128), Is.EqualTo(4L * 32 * 32 * 130 + 4 * 8));
        Assert.That(AttentionDecodeKernels.LanesPerKey(128), Is.EqualTo(32));
        Assert.That(AttentionDecodeKernels.LanesPerKey(36), Is.EqualTo(16));
        Assert.That(AttentionDecodeKernels.LanesPerKey(4), Is.EqualTo(4));
    }
}
