using ILGPU.Runtime;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Dense;

/// <summary>
/// The generalised RoPE (RopeSpec): the host YaRN table and factors against RefRope / RefYarn (double, ~1e-15), and
/// dense/rope V1 / V2HeadNorm / V3WarpNorm plus attention/rope-append against RefRope.Apply on the CPU accelerator:
/// YaRN like gpt-oss (factor 32, original 4096, beta 32 / 1, truncate false and true) and like DeepSeek-V3 (factor 40,
/// mscale 1, mscale_all_dim 1), interleaved pairs, partial rotary at an offset and MLA's q rope part with the shared
/// k_rope in one launch, positions up to a few thousand. Every dim outside the rotary range keeps its exact bits.
/// </summary>
public class RopeSpecTests
{
    // cos and sin carry YaRN's factor (gpt-oss: 1 + 0.1 ln 32 = 1.35), so the absolute error of the f32 rotation grows
    // with it: 1e-5 relative + 5e-7 absolute for |x| <= 1 (dense/rope's plain test allows 3e-7).
    private const double Rtol = 1e-5, Atol = 5e-7;

    private static readonly RopeVersion[] Versions = [RopeVersion.V1, RopeVersion.V2HeadNorm, RopeVersion.V3WarpNorm];

    /// <summary>gpt-oss' rope_scaling (config.json of gpt-oss-20b: factor 32, original 4096, beta 32 / 1, truncate false).</summary>
    private static readonly YarnScaling GptOss = new(32, 4096, 32, 1, Truncate: false);

    /// <summary>DeepSeek-V3's rope_scaling (factor 40, original 4096, beta 32 / 1, mscale 1, mscale_all_dim 1).</summary>
    private static readonly YarnScaling DeepSeek = new(40, 4096, 32, 1, Mscale: 1, MscaleAllDim: 1);

    private static RefYarn Ref(YarnScaling y) =>
        new(y.Factor, y.OriginalMaxPositions, y.BetaFast, y.BetaSlow, y.Truncate, y.AttentionFactor, y.Mscale, y.MscaleAllDim);

    private static RopeKernel? shared;

    private static RopeKernel Kernel()
    {
        lock (typeof(RopeSpecTests))
            return shared ??= RopeKernel.Create(TestDevice.Accelerator);
    }

    [Test]
    public void TablesMatchTheReference()
    {
        var cases = new (int Dim, double Theta, YarnScaling? Yarn)[]
        {
            (64, 150000, GptOss), (64, 150000, GptOss with { Truncate = true }), (64, 10000, DeepSeek), (64, 10000, DeepSeek with { Truncate = false }),
            (128, 1e6, null), (24, 10000, new YarnScaling(4, 2048, 8, 2)), (16, 500000, new YarnScaling(2, 64, 32, 1, AttentionFactor: 0.75)),
        };
        foreach (var (dim, theta, yarn) in cases)
        {
            var spec = new RopeSpec(dim, theta) { Yarn = yarn };
            var want = RefRope.InvFreq(dim, theta, yarn is null ? null : Ref(yarn));
            var got = spec.InverseFrequencies();
            Assert.That(got, Has.Length.EqualTo(want.Length));
            for (int i = 0; i < want.Length; i++)
                Assert.That(Math.Abs(got[i] - want[i]), Is.LessThanOrEqualTo(1e-15 * Math.Abs(want[i])), $"d={dim} theta={theta} {yarn} inv[{i}]: {got[i]:R} vs {want[i]:R}");
            double wantFactor = yarn is null ? 1.0 : Ref(yarn).CosSinFactor;
            Assert.That(spec.CosSinFactor, Is.EqualTo(wantFactor).Within(1e-15), $"{yarn} cos/sin factor");
            if (yarn is not null)
                Assert.That(yarn.SoftmaxScaleFactor, Is.EqualTo(Ref(yarn).SoftmaxScale).Within(1e-15), $"{yarn} softmax scale factor");
        }

        // Hand-worked: gpt-oss' factor is mscale(32) = 0.1 ln 32 + 1 = 1.3465735902799727; DeepSeek's mscale and mscale_all_dim
        // are equal, so cos and sin are not scaled and the softmax scale gains (0.1 ln 40 + 1)^2 = 1.368888...^2.
        Assert.That(GptOss.CosSinFactor, Is.EqualTo(1.3465735902799727).Within(1e-15));
        Assert.That(DeepSeek.CosSinFactor, Is.EqualTo(1.0));
        Assert.That(DeepSeek.SoftmaxScaleFactor, Is.EqualTo(Math.Pow(0.1 * Math.Log(40) + 1, 2)).Within(1e-15));
        // Without YaRN the table is exactly the one every earlier launch used.
        Assert.That(RopeSpec.Full(128, 1e6f).InverseFrequencies(), Is.EqualTo(RopeKernel.InverseFrequencies(128, 1e6f)));
    }

    /// <summary>Positions: scattered up to ~5000, 0 and one past YaRN's original 4096.</summary>
    private static int[] Positions(int seed, int tokens)
    {
        var p = Data.Ints(seed, tokens, 0, 5000);
        p[0] = 4999;
        if (tokens > 1)
            p[1] = 0;
        return p;
    }

    private static float[] Expected(float[] x, int[] positions, int heads, int stride, int offset, RopeSpec spec)
    {
        var y = (float[])x.Clone();
        var inv = RefRope.InvFreq(spec.RotaryDim, spec.Theta, spec.Yarn is null ? null : Ref(spec.Yarn));
        RefRope.Apply(y, positions, positions.Length, heads, stride, offset, inv, spec.CosSinFactor, spec.Interleaved);
        return y;
    }

    private static (float[] Q, float[] K) RunDense(RopeVersion version, float[] q, float[] k, int[] positions, int heads, int kvHeads, RopeSpec spec,
        int qStride, int kStride, int qFrom = 0, int kFrom = 0)
    {
        using var qb = TestDevice.Upload(q);
        using var kb = TestDevice.Upload(k);
        using var pb = TestDevice.Upload(positions);
        var s = TestDevice.Accelerator.DefaultStream;
        Kernel().Launch(s, qb.View.SubView(qFrom, q.Length - qFrom), kb.View.SubView(kFrom, k.Length - kFrom), pb.View, positions.Length, heads, kvHeads,
            spec, qStride, kStride, version: version);
        s.Synchronize();
        return (qb.GetAsArray1D(), kb.GetAsArray1D());
    }

    // (Dh, rotary dim, offset, interleaved, yarn: 0 none, 1 gpt-oss, 2 gpt-oss truncated, 3 DeepSeek)
    [TestCase(64, 64, 0, false, 1)]   // gpt-oss: full Dh, rotate-half, YaRN truncate false
    [TestCase(64, 64, 0, false, 2)]   // the same with truncate true (llama.cpp's rounding)
    [TestCase(64, 64, 0, true, 3)]    // DeepSeek's interleaved pairs with YaRN over the whole vector
    [TestCase(40, 24, 10, true, 0)]   // partial rotary at an offset, interleaved, plain frequencies
    [TestCase(36, 16, 20, false, 3)]  // partial rotate-half on the last 16 dims, YaRN
    public void DenseMatchesReference(int headDim, int rotary, int offset, bool interleaved, int yarn)
    {
        var spec = new RopeSpec(rotary, yarn == 3 ? 10000 : 150000)
        {
            Offset = offset,
            Interleaved = interleaved,
            Yarn = yarn switch { 0 => null, 1 => GptOss, 2 => GptOss with { Truncate = true }, 3 => DeepSeek, _ => throw new ArgumentOutOfRangeException(nameof(yarn)) },
        };
        const int tokens = 3, heads = 3, kvHeads = 1;
        int seed = 500 + headDim + rotary + offset + yarn;
        var q = Data.Uniform(seed, (long)tokens * heads * headDim);
        var k = Data.Uniform(seed + 1, (long)tokens * kvHeads * headDim);
        var positions = Positions(seed + 2, tokens);
        var wantQ = Expected(q, positions, heads, headDim, offset, spec);
        var wantK = Expected(k, positions, kvHeads, headDim, offset, spec);
        foreach (var v in Versions)
        {
            var (gotQ, gotK) = RunDense(v, q, k, positions, heads, kvHeads, spec, headDim, headDim);
            CheckRotated(wantQ, gotQ, q, headDim, offset, rotary, $"{v} q");
            CheckRotated(wantK, gotK, k, headDim, offset, rotary, $"{v} k");
        }
    }

    /// <summary>Rotated dims close to the reference, the rest bit for bit the input.</summary>
    private static void CheckRotated(float[] want, float[] got, float[] input, int stride, int offset, int rotary, string what)
    {
        Check.Close(want, got, Rtol, Atol, what);
        for (int i = 0; i < input.Length; i++)
        {
            int d = i % stride;
            if (d < offset || d >= offset + rotary)
                Assert.That(BitConverter.SingleToInt32Bits(got[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(input[i])), $"{what}: unrotated element {i}");
        }
    }

    /// <summary>
    /// DeepSeek-V3's MLA shapes in one launch: q [T, H, Dn + Dr] rotated on its last Dr dims through a view from Dn with
    /// stride Dn + Dr, and k_rope, the last Dr of each token's kv_a_proj_with_mqa row [T, r + Dr], through a view from r
    /// with stride r + Dr (heads 1); interleaved pairs, YaRN with mscale. The nope dims and the latent keep their bits.
    /// </summary>
    [Test]
    public void MlaRopePartsInOneLaunch()
    {
        const int tokens = 4, heads = 3, nope = 12, rope = 8, rank = 20;
        var spec = new RopeSpec(rope, 10000) { Interleaved = true, Yarn = DeepSeek };
        var q = Data.Uniform(611, (long)tokens * heads * (nope + rope));
        var kv = Data.Uniform(612, (long)tokens * (rank + rope));
        var positions = Positions(613, tokens);
        var wantQ = Expected(q, positions, heads, nope + rope, nope, spec);
        var wantKv = Expected(kv, positions, 1, rank + rope, rank, spec);
        foreach (var v in Versions)
        {
            var (gotQ, gotKv) = RunDense(v, q, kv, positions, heads, 1, spec, nope + rope, rank + rope, nope, rank);
            CheckRotated(wantQ, gotQ, q, nope + rope, nope, rope, $"{v} q");
            CheckRotated(wantKv, gotKv, kv, rank + rope, rank, rope, $"{v} k_rope");
        }
    }

    [Test]
    public void RopeAppendWithASpecMatchesReference()
    {
        // gpt-oss-like YaRN (truncate false) over a partial interleaved rotary at an offset, so every path of the
        // append runs: rotated pairs, k's unrotated dims copied, v copied; each version without a norm.
        const int tokens = 3, heads = 4, kvHeads = 2, headDim = 20, maxSeq = 5000;
        var spec = new RopeSpec(12, 150000) { Offset = 6, Interleaved = true, Yarn = GptOss };
        var q = Data.Uniform(621, (long)tokens * heads * headDim);
        var k = Data.Uniform(622, (long)tokens * kvHeads * headDim);
        var v = Data.Uniform(623, (long)tokens * kvHeads * headDim);
        var positions = Positions(624, tokens);
        var wantQ = Expected(q, positions, heads, headDim, spec.Offset, spec);
        var wantK = Expected(k, positions, kvHeads, headDim, spec.Offset, spec);
        var acc = TestDevice.Accelerator;
        using var append = RopeAppendKernel.Create(acc);
        foreach (var version in new[] { RopeAppendVersion.V1, RopeAppendVersion.V2HeadNorm, RopeAppendVersion.V3WarpNorm })
        {
            using var qb = TestDevice.Upload(q);
            using var kb = TestDevice.Upload(k);
            using var vb = TestDevice.Upload(v);
            using var pb = TestDevice.Upload(positions);
            using var kc = TestDevice.PoisonedFloats((long)kvHeads * maxSeq * headDim);
            using var vc = TestDevice.PoisonedFloats((long)kvHeads * maxSeq * headDim);
            append.Launch(acc.DefaultStream, qb.View, kb.View, vb.View, pb.View, kc.View, vc.View, tokens, heads, kvHeads, headDim, maxSeq, spec,
                version: version);
            acc.Synchronize();
            var gotQ = qb.GetAsArray1D();
            CheckRotated(wantQ, gotQ, q, headDim, spec.Offset, spec.RotaryDim, $"{version} q");
            var kCache = kc.GetAsArray1D();
            var vCache = vc.GetAsArray1D();
            for (int t = 0; t < tokens; t++)
            {
                for (int h = 0; h < kvHeads; h++)
                {
                    int src = (t * kvHeads + h) * headDim;
                    int dst = (int)KvCacheLayout.Index(h, positions[t], 0, maxSeq, headDim);
                    var gotK = kCache.AsSpan(dst, headDim).ToArray();
                    CheckRotated(wantK.AsSpan(src, headDim).ToArray(), gotK, k.AsSpan(src, headDim).ToArray(), headDim, spec.Offset, spec.RotaryDim,
                        $"{version} kCache row {positions[t]} head {h}");
                    Check.BitEqual(v.AsSpan(src, headDim), vCache.AsSpan(dst, headDim), $"{version} vCache row {positions[t]} head {h}");
                }
            }
        }
    }

    [Test]
    public void DefaultSpecGivesTheEarlierBits()
    {
        // The float-theta overload and the explicit full spec launch the same kernels with the same table: and the
        // YaRN-free full spec must rotate exactly as before (factor 1 is an exact no-op), so compare against the plain
        // reference too.
        const int tokens = 3, heads = 2, kvHeads = 1, headDim = 16;
        var q = Data.Uniform(631, (long)tokens * heads * headDim);
        var k = Data.Uniform(632, (long)tokens * kvHeads * headDim);
        int[] positions = [0, 7, 4000];
        using var qb = TestDevice.Upload(q);
        using var kb = TestDevice.Upload(k);
        using var pb = TestDevice.Upload(positions);
        var s = TestDevice.Accelerator.DefaultStream;
        Kernel().Launch(s, qb.View, kb.View, pb.View, tokens, heads, kvHeads, headDim, 1e6f);
        s.Synchronize();
        var (gotQ, gotK) = RunDense(RopeVersion.V1, q, k, positions, heads, kvHeads, RopeSpec.Full(headDim, 1e6f), headDim, headDim);
        Check.BitEqual(qb.GetAsArray1D(), gotQ, "q");
        Check.BitEqual(kb.GetAsArray1D(), gotK, "k");
        Check.Close(RefOps.Rope(q, positions, tokens, heads, headDim, 1e6f), gotQ, 1e-5, 3e-7, "q vs RefOps.Rope");
    }

    [Test]
    public void BadSpecsThrowArgumentException()
    {
        var s = TestDevice.Accelerator.DefaultStream;
        using var q = TestDevice.Upload(Data.Uniform(641, 2 * 16));
        using var k = TestDevice.Upload(Data.Uniform(642, 16));
        using var p = TestDevice.Upload(new[] { 3 });
        using var w = TestDevice.Upload(Data.Uniform(643, 16));
        var kernel = Kernel();
        void Launch(RopeSpec spec, int stride = 16, bool norm = false) =>
            kernel.Launch(s, q.View, k.View, p.View, 1, 2, 1, spec, stride, stride, norm ? w.View : default, default);
        Assert.That(Assert.Throws<ArgumentException>(() => Launch(new RopeSpec(10, 1e4) { Offset = 8 }))!.Message, Does.Contain("do not fit a head vector of 16"));
        Assert.That(Assert.Throws<ArgumentException>(() => Launch(new RopeSpec(7, 1e4)))!.Message, Does.Contain("even"));
        Assert.That(Assert.Throws<ArgumentException>(() => Launch(new RopeSpec(16, 1e4) { Yarn = new YarnScaling(0, 4096) }))!.Message, Does.Contain("factor"));
        Assert.That(Assert.Throws<ArgumentException>(() => Launch(new RopeSpec(16, 1e4) { Yarn = new YarnScaling(4, 4096, BetaSlow: -1) }))!.Message, Does.Contain("beta"));
        Assert.That(Assert.Throws<ArgumentException>(() => Launch(new RopeSpec(8, 1e4), norm: true))!.Message, Does.Contain("full rotate-half"));
        Assert.That(Assert.Throws<ArgumentException>(() => Launch(new RopeSpec(16, 1e4) { Interleaved = true }, norm: true))!.Message, Does.Contain("full rotate-half"));
        Assert.That(Assert.Throws<ArgumentException>(() => Launch(RopeSpec.Full(16, 1e4f), stride: 17))!.Message, Does.Contain("has 32 floats, needs 33"));
        // q of 2 heads' floats for 1 head: a view longer than rows * stride is the wrong tensor.
        var longer = Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, k.View, p.View, 1, 1, 1, RopeSpec.Full(16, 1e4f), 16, 16))!;
        Assert.That(longer.Message, Does.Contain("q [T, H, Dh] has 32 floats, needs 16"));
        // A partial spec at an offset accepts any length from the last rotated dim to the end of the last head.
        Assert.DoesNotThrow(() => kernel.Launch(s, q.View.SubView(0, 30), k.View, p.View, 1, 2, 1, new RopeSpec(8, 1e4) { Offset = 6 }, 16, 16));
        s.Synchronize();
        Assert.That(Assert.Throws<ArgumentException>(() => Launch(new RopeSpec(16, 0.5)))!.Message, Does.Contain("theta"));
    }
}
