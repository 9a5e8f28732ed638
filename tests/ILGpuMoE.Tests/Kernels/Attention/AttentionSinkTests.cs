using ILGPU.Runtime;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Attention;

/// <summary>
/// gpt-oss' attention sinks (one extra logit per head, no value) and a given softmax scale in every attention version
/// the runtime launches, against RefOps.GeneralAttention on the CPU accelerator: with and without a sliding window,
/// GQA, Dh 24 (not a multiple of 32), the split-K decode with many splits (the sink must count once, not per split),
/// V3Decode with sinks and a window. The cache holds rows 0..pos0+T-1 and NaN past them; the output starts NaN. The
/// sinks are seeded random with head 0's set far above every score (the sink takes the row max) and head 1's far below.
/// </summary>
public class AttentionSinkTests
{
    private const double Rtol = 1e-5;
    private const double Atol = 2e-6;

    private static readonly Dictionary<AttentionVersion, AttentionKernel> Kernels = new();

    private static AttentionKernel Kernel(AttentionVersion version)
    {
        lock (Kernels)
        {
            if (!Kernels.TryGetValue(version, out var k))
                Kernels[version] = k = AttentionKernel.Create(TestDevice.Accelerator, version);
            return k;
        }
    }

    private sealed record Problem(int Tokens, int Heads, int KvHeads, int HeadDim, int Pos0, int Window, float[] Q, float[] K, float[] V, float[] Sinks)
    {
        public int Keys => Pos0 + Tokens;

        public int MaxSeq => Keys + 3; // a NaN tail

        public static Problem Random(int seed, int tokens, int heads, int kvHeads, int headDim, int pos0, int window)
        {
            int s = pos0 + tokens;
            var sinks = Data.Gaussian(seed + 3, heads, 2);
            sinks[0] = 6f;    // above every score (~N(0, 1) at the default scale): the sink is the row max
            sinks[1] = -30f;  // negligible next to any key
            return new Problem(tokens, heads, kvHeads, headDim, pos0, window,
                Data.Gaussian(seed, (long)tokens * heads * headDim),
                Data.Gaussian(seed + 1, (long)s * kvHeads * headDim),
                Data.Uniform(seed + 2, (long)s * kvHeads * headDim),
                sinks);
        }

        public float[] Expected(bool sinks, float scale) =>
            RefOps.GeneralAttention(Q, K, V, Enumerable.Range(Pos0, Tokens).ToArray(), Tokens, Keys, Heads, KvHeads, HeadDim, HeadDim,
                scale, Window, sinks ? Sinks : ReadOnlySpan<float>.Empty);
    }

    private static float[] Run(AttentionVersion version, Problem p, bool sinks, float? scale, int? keysPerSplit)
    {
        var acc = TestDevice.Accelerator;
        using var kc = TestDevice.Upload(AttentionKernelTests.CacheImage(p.K, p.Keys, p.KvHeads, p.HeadDim, p.MaxSeq));
        using var vc = TestDevice.Upload(AttentionKernelTests.CacheImage(p.V, p.Keys, p.KvHeads, p.HeadDim, p.MaxSeq));
        using var q = TestDevice.Upload(p.Q);
        using var s = TestDevice.Upload(p.Sinks);
        using var pos = TestDevice.Upload(new[] { p.Pos0 });
        using var o = TestDevice.PoisonedFloats(p.Q.Length);
        var kernel = Kernel(version);
        var sinkView = sinks ? s.View : default;
        lock (kernel)
        {
            kernel.KeysPerSplitOverride = keysPerSplit;
            try
            {
                if (version == AttentionVersion.V3Decode)
                {
                    kernel.LaunchDecode(acc.DefaultStream, q.View, kc.View, vc.View, o.View, pos.View, p.Heads, p.KvHeads, p.HeadDim, p.MaxSeq,
                        p.Window, sinkView, scale);
                }
                else
                {
                    kernel.Launch(acc.DefaultStream, q.View, kc.View, vc.View, o.View, p.Tokens, p.Heads, p.KvHeads, p.HeadDim, p.MaxSeq, p.Pos0,
                        p.Window, sinkView, scale);
                }

                acc.Synchronize();
            }
            finally
            {
                kernel.KeysPerSplitOverride = null;
            }
        }

        return o.GetAsArray1D();
    }

    // (version, T, H, Hkv, Dh, pos0, window, keys per split (0: automatic), scale (0: default 1/sqrt(Dh)))
    private static readonly object[] Cases =
    [
        new object[] { AttentionVersion.V1, 3, 4, 2, 24, 5, 0, 0, 0f },
        new object[] { AttentionVersion.V1, 3, 4, 2, 24, 9, 4, 0, 0.35f },          // window 4, DeepSeek-like larger scale
        new object[] { AttentionVersion.V2Prefill, 17, 4, 2, 24, 3, 0, 0, 0f },     // two query tiles, GQA 2:1
        new object[] { AttentionVersion.V2Prefill, 17, 4, 1, 24, 3, 6, 0, 0.1f },  // window 6: key tiles hidden for late rows
        new object[] { AttentionVersion.V2Decode, 1, 4, 2, 24, 20, 0, 4, 0f },      // 6 splits of 4 keys
        new object[] { AttentionVersion.V2Decode, 2, 4, 2, 24, 20, 5, 3, 0.3f },    // window 5 over 8 splits: most splits empty
        new object[] { AttentionVersion.V2Decode, 1, 8, 1, 64, 30, 0, 1, 0f },      // one key per split: 31 splits, one sink
        new object[] { AttentionVersion.V3Decode, 1, 4, 2, 24, 30, 0, 8, 0f },      // 5 splits, 4 visible
        new object[] { AttentionVersion.V3Decode, 1, 8, 2, 64, 37, 7, 4, 0.2f },    // window 7 across two splits, 11 splits
        new object[] { AttentionVersion.V3Decode, 1, 4, 1, 24, 0, 0, 4, 0f },       // pos 0: one key
    ];

    [TestCaseSource(nameof(Cases))]
    public void MatchesReference(AttentionVersion version, int t, int h, int hkv, int dh, int pos0, int window, int kps, float scale)
    {
        var p = Problem.Random(7000 + t * 13 + dh + pos0 * 3 + window, t, h, hkv, dh, pos0, window);
        float? given = scale > 0 ? scale : null;
        float used = given ?? (float)(1.0 / Math.Sqrt(dh));
        foreach (bool sinks in new[] { true, false })
        {
            var got = Run(version, p, sinks, given, kps > 0 ? kps : null);
            Check.Close(p.Expected(sinks, used), got, Rtol, Atol, $"{version} sinks={sinks} T={t} H={h} Hkv={hkv} Dh={dh} pos0={pos0} window={window} kps={kps} scale={used}");
        }
    }

    [Test]
    public void MinusInfinitySinksGiveTheNoSinkBits([Values(AttentionVersion.V1, AttentionVersion.V2Prefill, AttentionVersion.V2Decode, AttentionVersion.V3Decode)]
        AttentionVersion version)
    {
        // exp(-inf - M) = 0 and M = max(m, -inf) = m: the fold must be exact, so the sink path with -inf sinks reproduces
        // the no-sink path bit for bit (the path every earlier model runs).
        int t = version is AttentionVersion.V2Prefill or AttentionVersion.V1 ? 3 : 1;
        var p = Problem.Random(91, t, 4, 2, 24, 12, 0);
        var none = p with { Sinks = Enumerable.Repeat(float.NegativeInfinity, 4).ToArray() };
        Check.BitEqual(Run(version, p, false, null, 4), Run(version, none, true, null, 4), $"{version}");
    }

    [Test]
    public void SinksChangeTheOutput()
    {
        // Guards the test itself: with head 0's sink far above its scores, its output must shrink towards 0.
        var p = Problem.Random(71, 1, 4, 2, 24, 10, 0);
        var with = Run(AttentionVersion.V1, p, true, null, null);
        var without = Run(AttentionVersion.V1, p, false, null, null);
        double ratio = Enumerable.Range(0, 24).Sum(d => Math.Abs(with[d])) / Enumerable.Range(0, 24).Sum(d => Math.Abs(without[d]));
        Assert.That(ratio, Is.LessThan(0.1), "head 0 with a dominant sink");
    }

    [Test]
    public void BadSinksOrScaleThrowArgumentException()
    {
        var acc = TestDevice.Accelerator;
        var s = acc.DefaultStream;
        using var q = acc.Allocate1D<float>(4 * 16);
        using var kc = acc.Allocate1D<float>(2 * 8 * 16);
        using var sinks = TestDevice.Upload(Data.Gaussian(5, 5));
        using var pos = TestDevice.Upload(new[] { 0 });
        var v2 = Kernel(AttentionVersion.V2Decode);
        var v3 = Kernel(AttentionVersion.V3Decode);
        var e = Assert.Throws<ArgumentException>(() => v2.Launch(s, q.View, kc.View, kc.View, q.View, 1, 4, 2, 16, 8, 0, 0, sinks.View))!;
        Assert.That(e.Message, Does.Contain("sinks [H] has 5 floats, needs 4"));
        Assert.Throws<ArgumentException>(() => v3.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View, 4, 2, 16, 8, 0, sinks.View.SubView(0, 3)));
        var sc = Assert.Throws<ArgumentException>(() => v2.Launch(s, q.View, kc.View, kc.View, q.View, 1, 4, 2, 16, 8, 0, scale: 0f))!;
        Assert.That(sc.Message, Does.Contain("scale must be finite and > 0"));
        Assert.Throws<ArgumentException>(() => v3.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View, 4, 2, 16, 8, scale: float.NaN));
        Assert.Throws<ArgumentException>(() => v3.LaunchDecode(s, q.View, kc.View, kc.View, q.View, pos.View, 4, 2, 16, 8, scale: float.PositiveInfinity));
    }
}
