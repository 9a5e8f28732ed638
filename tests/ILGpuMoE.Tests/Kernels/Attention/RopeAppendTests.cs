using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Attention;

/// <summary>
/// attention/rope-append against dense/rope + attention/kv-append (bit for bit: the same rotation code) and against
/// RefOps.Rope, on the CPU accelerator. The cache starts with random earlier rows and NaN elsewhere: rows the kernel
/// must not touch keep their exact bits.
/// </summary>
public class RopeAppendTests
{
    private const float Theta = 1_000_000f;

    private static RopeAppendKernel? shared;

    private static RopeAppendKernel Kernel()
    {
        lock (typeof(RopeAppendTests))
            return shared ??= RopeAppendKernel.Create(TestDevice.Accelerator);
    }

    /// <summary>A [Hkv, maxSeq, Dh] cache image: rows below `filled` random, the rest NaN.</summary>
    private static float[] Cache(int seed, int kvHeads, int maxSeq, int headDim, int filled)
    {
        var c = new float[(long)kvHeads * maxSeq * headDim];
        Array.Fill(c, float.NaN);
        var r = Data.Uniform(seed, c.Length);
        for (int h = 0; h < kvHeads; h++)
            Array.Copy(r, h * maxSeq * headDim, c, h * maxSeq * headDim, filled * headDim);
        return c;
    }

    private static (float[] Q, float[] KCache, float[] VCache) RunFused(float[] q, float[] k, float[] v, int[] positions, float[] kc, float[] vc,
        int heads, int kvHeads, int headDim, int maxSeq)
    {
        var acc = TestDevice.Accelerator;
        using var d = new Inputs(q, k, v, positions, kc, vc);
        Kernel().Launch(acc.DefaultStream, d.Q.View, d.K.View, d.V.View, d.Positions.View, d.KCache.View, d.VCache.View,
            positions.Length, heads, kvHeads, headDim, maxSeq, Theta);
        acc.Synchronize();
        Check.BitEqual(k, d.K.GetAsArray1D(), "k is only read");
        Check.BitEqual(v, d.V.GetAsArray1D(), "v is only read");
        return (d.Q.GetAsArray1D(), d.KCache.GetAsArray1D(), d.VCache.GetAsArray1D());
    }

    /// <summary>The launch's inputs on the device.</summary>
    private sealed class Inputs(float[] q, float[] k, float[] v, int[] positions, float[] kc, float[] vc) : IDisposable
    {
        public MemoryBuffer1D<float, Stride1D.Dense> Q { get; } = TestDevice.Upload(q);
        public MemoryBuffer1D<float, Stride1D.Dense> K { get; } = TestDevice.Upload(k);
        public MemoryBuffer1D<float, Stride1D.Dense> V { get; } = TestDevice.Upload(v);
        public MemoryBuffer1D<int, Stride1D.Dense> Positions { get; } = TestDevice.Upload(positions);
        public MemoryBuffer1D<float, Stride1D.Dense> KCache { get; } = TestDevice.Upload(kc);
        public MemoryBuffer1D<float, Stride1D.Dense> VCache { get; } = TestDevice.Upload(vc);

        public void Dispose()
        {
            Q.Dispose();
            K.Dispose();
            V.Dispose();
            Positions.Dispose();
            KCache.Dispose();
            VCache.Dispose();
        }
    }

    [TestCase(3, 4, 2, 40, 5)]      // GQA 2:1, Dh not a multiple of 32, after 5 cached rows
    [TestCase(1, 8, 2, 128, 37)]    // decode, Mixtral's Dh
    [TestCase(2, 4, 4, 64, 0)]      // 1:1 from an empty cache
    public void SameBitsAsRopeThenKvAppend(int tokens, int heads, int kvHeads, int headDim, int pos0)
    {
        int maxSeq = pos0 + tokens + 3;
        int seed = 300 + tokens + headDim + pos0;
        var q = Data.Uniform(seed, (long)tokens * heads * headDim);
        var k = Data.Uniform(seed + 1, (long)tokens * kvHeads * headDim);
        var v = Data.Uniform(seed + 2, (long)tokens * kvHeads * headDim);
        var kc = Cache(seed + 3, kvHeads, maxSeq, headDim, pos0);
        var vc = Cache(seed + 4, kvHeads, maxSeq, headDim, pos0);
        var positions = Enumerable.Range(pos0, tokens).ToArray();

        var fused = RunFused(q, k, v, positions, kc, vc, heads, kvHeads, headDim, maxSeq);

        var acc = TestDevice.Accelerator;
        using var d = new Inputs(q, k, v, positions, kc, vc);
        using var rope = RopeKernel.Create(acc);
        rope.Launch(acc.DefaultStream, d.Q.View, d.K.View, d.Positions.View, tokens, heads, kvHeads, headDim, Theta);
        KvCacheAppendKernel.Create(acc).Launch(acc.DefaultStream, d.K.View, d.V.View, d.KCache.View, d.VCache.View, tokens, kvHeads, headDim, maxSeq, pos0);
        acc.Synchronize();

        Check.BitEqual(d.Q.GetAsArray1D(), fused.Q, "q");
        Check.BitEqual(d.KCache.GetAsArray1D(), fused.KCache, "kCache");
        Check.BitEqual(d.VCache.GetAsArray1D(), fused.VCache, "vCache");
    }

    [Test]
    public void MatchesReferenceAtScatteredPositions()
    {
        const int heads = 4, kvHeads = 2, headDim = 36, maxSeq = 3000;
        int[] positions = [17, 2, 2999, 1000];
        int tokens = positions.Length;
        var q = Data.Uniform(51, (long)tokens * heads * headDim);
        var k = Data.Uniform(52, (long)tokens * kvHeads * headDim);
        var v = Data.Uniform(53, (long)tokens * kvHeads * headDim);
        var kc = Cache(54, kvHeads, maxSeq, headDim, 0);
        var vc = Cache(55, kvHeads, maxSeq, headDim, 0);
        var (gotQ, gotK, gotV) = RunFused(q, k, v, positions, kc, vc, heads, kvHeads, headDim, maxSeq);

        // Tolerances as dense/rope's own test (ElementwiseTests): 1e-5 relative, 3e-7 absolute.
        Check.Close(RefOps.Rope(q, positions, tokens, heads, headDim, Theta), gotQ, 1e-5, 3e-7, "q");
        var wantK = RefOps.Rope(k, positions, tokens, kvHeads, headDim, Theta);
        var expectK = (float[])kc.Clone();
        var expectV = (float[])vc.Clone();
        for (int t = 0; t < tokens; t++)
        {
            for (int h = 0; h < kvHeads; h++)
            {
                int src = (t * kvHeads + h) * headDim;
                int dst = (int)KvCacheLayout.Index(h, positions[t], 0, maxSeq, headDim);
                Check.Close(wantK.AsSpan(src, headDim), gotK.AsSpan(dst, headDim), 1e-5, 3e-7, $"kCache row {positions[t]} head {h}");
                Array.Copy(gotK, dst, expectK, dst, headDim); // checked above; every other row must keep its NaN bits
                Array.Copy(v, src, expectV, dst, headDim);
            }
        }

        Check.BitEqual(expectK, gotK, "kCache rows not appended");
        Check.BitEqual(expectV, gotV, "vCache");
    }

    /// <summary>
    /// The per-head q/k RMSNorm (Qwen3-MoE): V2HeadNorm and V3WarpNorm against RefOps.HeadNormRope for q and the appended
    /// k rows, v copied, every other cache row keeping its NaN bits; GQA 3:1 with Dh = 16 and a token whose position is
    /// past the cache (skipped: its q stays as it was). Then the same launch against dense/rope's same version followed
    /// by kv-append, bit for bit (one NormRotate).
    /// </summary>
    [TestCase(RopeAppendVersion.V2HeadNorm)]
    [TestCase(RopeAppendVersion.V3WarpNorm)]
    public void HeadNormMatchesReference(RopeAppendVersion version)
    {
        const int heads = 3, kvHeads = 1, headDim = 16, maxSeq = 40;
        int[] positions = [5, 39, 40, 0];
        int tokens = positions.Length;
        var q = Data.Gaussian(81, (long)tokens * heads * headDim, 3);
        var k = Data.Gaussian(82, (long)tokens * kvHeads * headDim, 3);
        var v = Data.Uniform(83, (long)tokens * kvHeads * headDim);
        var qw = Data.Uniform(84, headDim, 0.5f).Select(x => 1f + x).ToArray();
        var kw = Data.Uniform(85, headDim, 0.5f).Select(x => 1f + x).ToArray();
        var kc = Cache(86, kvHeads, maxSeq, headDim, 0);
        var vc = Cache(87, kvHeads, maxSeq, headDim, 0);

        var acc = TestDevice.Accelerator;
        using var d = new Inputs(q, k, v, positions, kc, vc);
        using var qwb = TestDevice.Upload(qw);
        using var kwb = TestDevice.Upload(kw);
        Kernel().Launch(acc.DefaultStream, d.Q.View, d.K.View, d.V.View, d.Positions.View, d.KCache.View, d.VCache.View,
            tokens, heads, kvHeads, headDim, maxSeq, Theta, qwb.View, kwb.View, 1e-6f, version);
        acc.Synchronize();
        var (gotQ, gotK, gotV) = (d.Q.GetAsArray1D(), d.KCache.GetAsArray1D(), d.VCache.GetAsArray1D());
        Check.BitEqual(k, d.K.GetAsArray1D(), "k is only read");

        var wantQ = RefOps.HeadNormRope(q, qw, positions.Select(p => Math.Min(p, maxSeq - 1)).ToArray(), tokens, heads, headDim, 1e-6f, Theta);
        var wantK = RefOps.HeadNormRope(k, kw, positions.Select(p => Math.Min(p, maxSeq - 1)).ToArray(), tokens, kvHeads, headDim, 1e-6f, Theta);
        var expectK = (float[])kc.Clone();
        var expectV = (float[])vc.Clone();
        for (int t = 0; t < tokens; t++)
        {
            int qRow = t * heads * headDim;
            if (positions[t] >= maxSeq)
            {
                Check.BitEqual(q.AsSpan(qRow, heads * headDim), gotQ.AsSpan(qRow, heads * headDim), $"{version} skipped token {t}'s q");
                continue;
            }

            Check.Close(wantQ.AsSpan(qRow, heads * headDim), gotQ.AsSpan(qRow, heads * headDim), 1e-5, 2e-6, $"{version} q of token {t}");
            int src = t * headDim, dst = (int)KvCacheLayout.Index(0, positions[t], 0, maxSeq, headDim);
            Check.Close(wantK.AsSpan(src, headDim), gotK.AsSpan(dst, headDim), 1e-5, 2e-6, $"{version} kCache row {positions[t]}");
            Array.Copy(gotK, dst, expectK, dst, headDim);
            Array.Copy(v, src, expectV, dst, headDim);
        }

        Check.BitEqual(expectK, gotK, $"{version} kCache rows not appended");
        Check.BitEqual(expectV, gotV, $"{version} vCache");

        // dense/rope's same version, then kv-append, on the tokens inside the cache: the same bits.
        int[] inside = [0, 1, 3];
        var q2 = inside.SelectMany(t => q.Skip(t * heads * headDim).Take(heads * headDim)).ToArray();
        var k2 = inside.SelectMany(t => k.Skip(t * headDim).Take(headDim)).ToArray();
        using var qb = TestDevice.Upload(q2);
        using var kb = TestDevice.Upload(k2);
        using var pb = TestDevice.Upload(inside.Select(t => positions[t]).ToArray());
        using var rope = RopeKernel.Create(acc);
        rope.Launch(acc.DefaultStream, qb.View, kb.View, pb.View, inside.Length, heads, kvHeads, headDim, Theta, qwb.View, kwb.View, 1e-6f,
            version == RopeAppendVersion.V2HeadNorm ? RopeVersion.V2HeadNorm : RopeVersion.V3WarpNorm);
        acc.Synchronize();
        var denseQ = qb.GetAsArray1D();
        var denseK = kb.GetAsArray1D();
        for (int i = 0; i < inside.Length; i++)
        {
            int t = inside[i];
            Check.BitEqual(denseQ.AsSpan(i * heads * headDim, heads * headDim), gotQ.AsSpan(t * heads * headDim, heads * headDim), $"{version} q vs dense/rope, token {t}");
            int dst = (int)KvCacheLayout.Index(0, positions[t], 0, maxSeq, headDim);
            Check.BitEqual(denseK.AsSpan(i * headDim, headDim), gotK.AsSpan(dst, headDim), $"{version} k vs dense/rope, token {t}");
        }
    }

    [Test]
    public void V1RefusesANorm()
    {
        var acc = TestDevice.Accelerator;
        using var x = acc.Allocate1D<float>(4 * 16);
        using var kc = acc.Allocate1D<float>(2 * 8 * 16);
        using var pos = TestDevice.Upload(new[] { 0 });
        using var w = TestDevice.Upload(Data.Uniform(88, 16));
        var e = Assert.Throws<ArgumentException>(() => Kernel().Launch(acc.DefaultStream, x.View, x.View, x.View, pos.View, kc.View, kc.View,
            1, 4, 2, 16, 8, Theta, w.View, default, 1e-6f, RopeAppendVersion.V1))!;
        Assert.That(e.Message, Does.Contain("V1 has no per-head norm"));
        Assert.Throws<ArgumentException>(() => Kernel().Launch(acc.DefaultStream, x.View, x.View, x.View, pos.View, kc.View, kc.View,
            1, 4, 2, 16, 8, Theta, default, w.View.SubView(0, 8)), "kNorm [8]");
    }

    [Test]
    public void PositionsOutsideTheCacheAreSkipped()
    {
        const int heads = 2, kvHeads = 1, headDim = 8, maxSeq = 6;
        int[] positions = [-1, 6, 3];
        var q = Data.Uniform(61, 3L * heads * headDim);
        var k = Data.Uniform(62, 3L * kvHeads * headDim);
        var v = Data.Uniform(63, 3L * kvHeads * headDim);
        var kc = Cache(64, kvHeads, maxSeq, headDim, 0);
        var (gotQ, gotK, gotV) = RunFused(q, k, v, positions, kc, kc, heads, kvHeads, headDim, maxSeq);
        // Tokens 0 and 1 are untouched; token 2 lands in row 3 only.
        Check.BitEqual(q.AsSpan(0, 2 * heads * headDim), gotQ.AsSpan(0, 2 * heads * headDim), "skipped tokens' q");
        for (int row = 0; row < maxSeq; row++)
        {
            bool written = row == 3;
            Assert.That(gotK.AsSpan(row * headDim, headDim).ToArray().All(float.IsNaN), Is.EqualTo(!written), $"kCache row {row}");
            Assert.That(gotV.AsSpan(row * headDim, headDim).ToArray().All(float.IsNaN), Is.EqualTo(!written), $"vCache row {row}");
        }
    }

    [Test]
    public void BadArgumentsThrowArgumentException()
    {
        var acc = TestDevice.Accelerator;
        var s = acc.DefaultStream;
        using var x = acc.Allocate1D<float>(4 * 16);
        using var kc = acc.Allocate1D<float>(2 * 8 * 16);
        using var pos = TestDevice.Upload(new[] { 0 });
        var kernel = Kernel();
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, x.View, x.View, x.View, pos.View, kc.View, kc.View, 1, 4, 2, 15, 8, Theta)); // odd Dh
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, x.View, x.View, x.View, pos.View, kc.View, kc.View, 1, 4, 2, 16, 8, 0.5f)); // theta
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, x.View, x.View, x.View, pos.View, kc.View, kc.View, 2, 4, 2, 16, 8, Theta)); // q short, 1 position
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, x.View, x.View, x.View, pos.View, kc.View, kc.View, 1, 4, 3, 16, 8, Theta)); // H % Hkv
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, x.View, x.View, x.View, pos.View, kc.View, kc.View, 1, 4, 2, 16, 9, Theta)); // cache short
    }
}
