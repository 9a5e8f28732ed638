// attention/paged-kv-append, attention/paged (every version), attention/paged-mla-append and attention/paged-mla on the
// CPU accelerator against the oracle (RefOps.PagedKvAppend / PagedAttention, RefMlaAttention.PagedAppend /
// PagedLatentAttention), on the step of PagedScenario: a shuffled block table with free blocks, three sequences of
// different lengths in one launch (a single token at position 0, a length not a multiple of BS, a chunk of new tokens
// over cached ones), NaN everywhere in the pool the table does not point at, the output NaN before the call. GQA
// (H 4, Hkv 2) and MHA, Dh 24 and 7, BS 4 and 16, a sliding window, sinks. The append must give the oracle's pool bit
// for bit (NaN slots included); then the attention runs on that pool. The paged kernels must also agree with the
// contiguous ones (AttentionKernel, MlaAttentionKernel) on the same keys: V1 bit for bit (the same arithmetic in the
// same order), V2Decode to fp32 rounding.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Attention.Mla;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Attention;

public class PagedAttentionTests
{
    private const double Rtol = 1e-5;
    private const double Atol = 2e-6;

    private static readonly Dictionary<PagedAttentionVersion, PagedAttentionKernel> Kernels = [];

    private static PagedAttentionKernel Kernel(PagedAttentionVersion version)
    {
        lock (Kernels)
        {
            if (!Kernels.TryGetValue(version, out var k))
                Kernels[version] = k = PagedAttentionKernel.Create(TestDevice.Accelerator, version);
            return k;
        }
    }

    private static readonly Lazy<PagedMlaKernel> Mla = new(() => PagedMlaKernel.Create(TestDevice.Accelerator));

    /// <summary>The step's inputs for GQA: q [T, H, Dh], the new k, v [T, Hkv, Dh], the pools before the append, sinks [H].</summary>
    internal sealed record GqaStep(PagedScenario S, int Heads, int KvHeads, int HeadDim, int Window, float Scale, float[] Q, float[] K, float[] V,
        float[] KPool, float[] VPool, float[] Sinks)
    {
        public static GqaStep Create(PagedScenario s, int heads, int kvHeads, int headDim, int window, float scale, int seed)
        {
            var sinks = Data.Gaussian(seed + 9, heads, 2);
            sinks[0] = 6f; // above every score: the sink is the row max
            return new GqaStep(s, heads, kvHeads, headDim, window, scale,
                Data.Gaussian(seed, (long)s.Tokens * heads * headDim),
                Data.Gaussian(seed + 1, (long)s.Tokens * kvHeads * headDim),
                Data.Uniform(seed + 2, (long)s.Tokens * kvHeads * headDim),
                s.GqaPool(kvHeads, headDim, seed + 10, uniform: false),
                s.GqaPool(kvHeads, headDim, seed + 20, uniform: true),
                sinks);
        }

        /// <summary>The oracle: the pools after the append, and the output.</summary>
        public (float[] K, float[] V, float[] O) Expected(bool sinks)
        {
            var k = (float[])KPool.Clone();
            var v = (float[])VPool.Clone();
            RefOps.PagedKvAppend(K, V, k, v, S.Slots, S.Tokens, KvHeads, HeadDim, S.BlockSize);
            var o = RefOps.PagedAttention(Q, k, v, S.Positions, S.SeqOfToken, S.BlockTables, S.Tokens, Heads, KvHeads, HeadDim, S.BlockSize, S.MaxBlocks,
                Window, sinks ? Sinks : ReadOnlySpan<float>.Empty, Scale);
            return (k, v, o);
        }
    }

    private static (float[] K, float[] V, float[] O) RunGqa(PagedAttentionVersion version, GqaStep p, bool sinks)
    {
        var acc = TestDevice.Accelerator;
        var s = p.S;
        using var kc = TestDevice.Upload(p.KPool);
        using var vc = TestDevice.Upload(p.VPool);
        using var q = TestDevice.Upload(p.Q);
        using var k = TestDevice.Upload(p.K);
        using var v = TestDevice.Upload(p.V);
        using var sk = TestDevice.Upload(p.Sinks);
        using var slots = TestDevice.Upload(s.Slots);
        using var pos = TestDevice.Upload(s.Positions);
        using var seq = TestDevice.Upload(s.SeqOfToken);
        using var table = TestDevice.Upload(s.BlockTables);
        using var o = TestDevice.PoisonedFloats(p.Q.Length);
        var kernel = Kernel(version);
        kernel.Append(acc.DefaultStream, k.View, v.View, kc.View, vc.View, slots.View, s.Tokens, p.KvHeads, p.HeadDim, s.BlockSize);
        kernel.Launch(acc.DefaultStream, q.View, kc.View, vc.View, o.View, pos.View, seq.View, table.View, s.Tokens, p.Heads, p.KvHeads, p.HeadDim,
            s.BlockSize, s.MaxBlocks, p.Window, sinks ? sk.View : default, p.Scale);
        acc.Synchronize();
        return (kc.GetAsArray1D(), vc.GetAsArray1D(), o.GetAsArray1D());
    }

    // (H, Hkv, Dh, BS, window, scale (0: 1/sqrt(Dh)))
    private static readonly object[] GqaCases =
    [
        new object[] { 4, 2, 24, 4, 0, 0f },     // GQA 2:1, blocks of 4
        new object[] { 4, 2, 24, 16, 5, 0f },    // blocks of 16, window 5 (the chunk's tokens see partial windows)
        new object[] { 4, 2, 24, 4, 6, 0.3f },   // window across block edges, a given scale
        new object[] { 3, 3, 7, 4, 0, 0f },      // MHA, Dh 7
        new object[] { 4, 1, 40, 16, 0, 0.1f },  // MQA, Dh 40: V2Decode's second lane slice partly used
    ];

    private static IEnumerable<TestCaseData> GqaVersionCases() =>
        from version in Enum.GetValues<PagedAttentionVersion>()
        from c in GqaCases.Cast<object[]>()
        select new TestCaseData([version, .. c]);

    [TestCaseSource(nameof(GqaVersionCases))]
    public void MatchesReference(PagedAttentionVersion version, int heads, int kvHeads, int headDim, int blockSize, int window, float scale)
    {
        var s = PagedScenario.Create(blockSize, 300 + blockSize + headDim);
        var p = GqaStep.Create(s, heads, kvHeads, headDim, window, scale > 0 ? scale : (float)(1.0 / Math.Sqrt(headDim)), 8100 + heads * 7 + headDim + window);
        foreach (bool sinks in new[] { false, true })
        {
            var want = p.Expected(sinks);
            var got = RunGqa(version, p, sinks);
            string what = $"{version} H={heads} Hkv={kvHeads} Dh={headDim} BS={blockSize} window={window} sinks={sinks}";
            Check.BitEqual(want.K, got.K, what + " kCache");
            Check.BitEqual(want.V, got.V, what + " vCache");
            Check.Close(want.O, got.O, Rtol, Atol, what);
        }
    }

    /// <summary>One sequence: the paged kernels on a shuffled pool against the contiguous AttentionKernel on [Hkv, maxSeq, Dh] with the same keys.</summary>
    [TestCase(PagedAttentionVersion.V1, AttentionVersion.V1, 0, false)]
    [TestCase(PagedAttentionVersion.V1, AttentionVersion.V1, 5, true)]
    [TestCase(PagedAttentionVersion.V2Decode, AttentionVersion.V2Decode, 0, true)]
    [TestCase(PagedAttentionVersion.V2Decode, AttentionVersion.V2Decode, 5, false)]
    public void AgreesWithContiguousAttention(PagedAttentionVersion paged, AttentionVersion contiguous, int window, bool sinks)
    {
        const int heads = 4, kvHeads = 2, headDim = 24, blockSize = 4, history = 9, fresh = 3, maxSeq = 16;
        var acc = TestDevice.Accelerator;
        var s = PagedScenario.Single(blockSize, history, fresh, 77);
        float scale = (float)(1.0 / Math.Sqrt(headDim));
        var p = GqaStep.Create(s, heads, kvHeads, headDim, window, scale, 4242);
        var (kPool, vPool, pagedOut) = RunGqa(paged, p, sinks);

        // The same keys, read back out of the paged pool, in the contiguous layout with a NaN tail.
        var kc = new float[(long)kvHeads * maxSeq * headDim];
        var vc = new float[kc.Length];
        Array.Fill(kc, float.NaN);
        Array.Fill(vc, float.NaN);
        for (int pos = 0; pos < history + fresh; pos++)
        {
            int slot = s.SlotOf(0, pos);
            for (int h = 0; h < kvHeads; h++)
            {
                long src = (((long)(slot / blockSize) * kvHeads + h) * blockSize + slot % blockSize) * headDim;
                Array.Copy(kPool, src, kc, ((long)h * maxSeq + pos) * headDim, headDim);
                Array.Copy(vPool, src, vc, ((long)h * maxSeq + pos) * headDim, headDim);
            }
        }

        using var kBuf = TestDevice.Upload(kc);
        using var vBuf = TestDevice.Upload(vc);
        using var q = TestDevice.Upload(p.Q);
        using var sk = TestDevice.Upload(p.Sinks);
        using var o = TestDevice.PoisonedFloats(p.Q.Length);
        using var kernel = AttentionKernel.Create(acc, contiguous);
        kernel.Launch(acc.DefaultStream, q.View, kBuf.View, vBuf.View, o.View, fresh, heads, kvHeads, headDim, maxSeq, history, window,
            sinks ? sk.View : default, scale);
        acc.Synchronize();
        var want = o.GetAsArray1D();
        if (paged == PagedAttentionVersion.V1)
            Check.BitEqual(want, pagedOut, $"paged V1 vs contiguous V1 window={window} sinks={sinks}");
        else
            Check.Close(want, pagedOut, Rtol, Atol, $"paged {paged} vs contiguous {contiguous} window={window} sinks={sinks}");
    }

    /// <summary>Metadata outside the table or the pool reads nothing out of bounds: that token's output is NaN, the others are right.</summary>
    [TestCase(PagedAttentionVersion.V1)]
    [TestCase(PagedAttentionVersion.V2Decode)]
    public void BadMetadataNeverReadsOutside(PagedAttentionVersion version)
    {
        const int heads = 2, kvHeads = 1, headDim = 8;
        var acc = TestDevice.Accelerator;
        var s = PagedScenario.Create(4, 91);
        var p = GqaStep.Create(s, heads, kvHeads, headDim, 0, 0.35f, 515);
        var want = p.Expected(sinks: false);
        var seqOfToken = (int[])s.SeqOfToken.Clone();
        var positions = (int[])s.Positions.Clone();
        seqOfToken[0] = 99;                          // no such table row
        positions[^1] = s.MaxBlocks * s.BlockSize;   // past the table row
        using var kc = TestDevice.Upload(want.K);
        using var vc = TestDevice.Upload(want.V);
        using var q = TestDevice.Upload(p.Q);
        using var pos = TestDevice.Upload(positions);
        using var seq = TestDevice.Upload(seqOfToken);
        using var table = TestDevice.Upload(s.BlockTables);
        using var o = TestDevice.PoisonedFloats(p.Q.Length);
        Kernel(version).Launch(acc.DefaultStream, q.View, kc.View, vc.View, o.View, pos.View, seq.View, table.View, s.Tokens, heads, kvHeads, headDim,
            s.BlockSize, s.MaxBlocks, 0, default, p.Scale);
        acc.Synchronize();
        var got = o.GetAsArray1D();
        int row = heads * headDim;
        Assert.That(got.AsSpan(0, row).ToArray(), Has.All.NaN, "token of an unknown sequence");
        Assert.That(got.AsSpan(got.Length - row).ToArray(), Has.All.NaN, "token past its table row");
        Check.Close(want.O.AsSpan(row, got.Length - 2 * row), got.AsSpan(row, got.Length - 2 * row), Rtol, Atol, "the other tokens");
    }

    [Test]
    public void LauncherRefusesBadShapes()
    {
        var acc = TestDevice.Accelerator;
        var st = acc.DefaultStream;
        var kernel = Kernel(PagedAttentionVersion.V1);
        using var f = TestDevice.PoisonedFloats(4096);
        using var i = TestDevice.Upload(new int[64]);
        var x = f.View;
        var n = i.View;
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x, x, n, n, n, 2, 4, 2, 129, 4, 4, 0, default, 0.1f), "Dh > 128");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x, x, n, n, n, 2, 3, 2, 8, 4, 4, 0, default, 0.1f), "H % Hkv");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x, x, n, n, n, 2, 4, 2, 8, 0, 4, 0, default, 0.1f), "BS 0");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x, x, n, n, n, 2, 4, 2, 8, 4, 0, 0, default, 0.1f), "maxBlocks 0");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x, x, n, n, n, 2, 4, 2, 8, 4, 4, 0, default, 0f), "scale 0");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x, x, n, n, n, 2, 4, 2, 8, 4, 4, 0, x.SubView(0, 3), 0.1f), "sinks [3] for H 4");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x.SubView(0, 10), x, x, n, n, n, 2, 4, 2, 8, 4, 4, 0, default, 0.1f), "pool < one block");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x.SubView(0, 100), x, n, n, n, 2, 4, 2, 8, 4, 4, 0, default, 0.1f), "vCache short");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x, x, n.SubView(0, 1), n, n, 2, 4, 2, 8, 4, 4, 0, default, 0.1f), "positions < T");
        Assert.Throws<ArgumentException>(() => kernel.Launch(st, x, x, x, x, n, n, n.SubView(0, 3), 2, 4, 2, 8, 4, 4, 0, default, 0.1f), "table < one row");
        Assert.Throws<ArgumentException>(() => kernel.Append(st, x, x, x, x, n.SubView(0, 1), 2, 2, 8, 4), "slots < T");
        Assert.Throws<ArgumentException>(() => kernel.Append(st, x.SubView(0, 7), x, x, x, n, 2, 2, 8, 4), "k short");
    }

    // ---- MLA --------------------------------------------------------------------------------------------------------

    /// <summary>The MLA step: c [T, R] and k_rope [T, Dr] as slices of one [T, R + Dr] buffer (strides R + Dr), q_abs [T, H, R + Dr].</summary>
    internal sealed record MlaStep(PagedScenario S, MlaShape Shape, float Scale, float[] Kv, float[] QAbs, float[] Pool)
    {
        public static MlaStep Create(PagedScenario s, int heads, int rank, int ropeDim, int seed)
        {
            var shape = new MlaShape(heads, rank, ropeDim, 1, 1);
            return new MlaStep(s, shape, 0.25f, Data.Gaussian(seed, (long)s.Tokens * shape.Row), Data.Gaussian(seed + 1, (long)s.Tokens * heads * shape.Row),
                s.MlaPool(shape.Row, seed + 10));
        }

        public (float[] Pool, float[] O) Expected()
        {
            var pool = (float[])Pool.Clone();
            RefMlaAttention.PagedAppend(Kv, Shape.Row, Kv.AsSpan(Shape.Rank), Shape.Row, S.Slots, pool, S.Tokens, Shape.Rank, Shape.RopeDim);
            var o = RefMlaAttention.PagedLatentAttention(QAbs, pool, S.Positions, S.SeqOfToken, S.BlockTables, S.Tokens, Shape, S.BlockSize, S.MaxBlocks, Scale);
            return (pool, o);
        }
    }

    private static (float[] Pool, float[] O) RunMla(MlaStep p)
    {
        var acc = TestDevice.Accelerator;
        var s = p.S;
        var m = p.Shape;
        using var cache = TestDevice.Upload(p.Pool);
        using var kv = TestDevice.Upload(p.Kv);
        using var q = TestDevice.Upload(p.QAbs);
        using var slots = TestDevice.Upload(s.Slots);
        using var pos = TestDevice.Upload(s.Positions);
        using var seq = TestDevice.Upload(s.SeqOfToken);
        using var table = TestDevice.Upload(s.BlockTables);
        using var o = TestDevice.PoisonedFloats((long)s.Tokens * m.Heads * m.Rank);
        Mla.Value.Append(acc.DefaultStream, kv.View, m.Row, kv.View.SubView(m.Rank, kv.Length - m.Rank), m.Row, slots.View, cache.View, s.Tokens, m.Rank, m.RopeDim);
        Mla.Value.Attention(acc.DefaultStream, q.View, cache.View, pos.View, seq.View, table.View, o.View, s.Tokens, m.Heads, m.Rank, m.RopeDim,
            s.BlockSize, s.MaxBlocks, p.Scale);
        acc.Synchronize();
        return (cache.GetAsArray1D(), o.GetAsArray1D());
    }

    [TestCase(3, 8, 4, 4)]
    [TestCase(2, 12, 0, 16)] // no rope part
    [TestCase(4, 9, 3, 4)]   // odd R and Dr
    public void MlaMatchesReference(int heads, int rank, int ropeDim, int blockSize)
    {
        var s = PagedScenario.Create(blockSize, 600 + rank + blockSize);
        var p = MlaStep.Create(s, heads, rank, ropeDim, 9100 + heads + rank * 3 + ropeDim);
        var want = p.Expected();
        var got = RunMla(p);
        string what = $"paged MLA H={heads} R={rank} Dr={ropeDim} BS={blockSize}";
        Check.BitEqual(want.Pool, got.Pool, what + " pool");
        Check.Close(want.O, got.O, Rtol, Atol, what);
    }

    /// <summary>One sequence: the paged latent attention against MlaAttentionKernel V1 on [maxSeq, R + Dr] with the same rows, bit for bit.</summary>
    [Test]
    public void MlaAgreesWithContiguousMla()
    {
        const int heads = 3, rank = 8, ropeDim = 4, blockSize = 4, history = 6, fresh = 3, maxSeq = 12;
        var acc = TestDevice.Accelerator;
        var s = PagedScenario.Single(blockSize, history, fresh, 13);
        var p = MlaStep.Create(s, heads, rank, ropeDim, 1313);
        var (pool, pagedOut) = RunMla(p);
        int row = rank + ropeDim;
        var c = new float[maxSeq * row];
        Array.Fill(c, float.NaN);
        for (int pos = 0; pos < history + fresh; pos++)
            Array.Copy(pool, (long)s.SlotOf(0, pos) * row, c, (long)pos * row, row);
        using var cache = TestDevice.Upload(c);
        using var q = TestDevice.Upload(p.QAbs);
        using var positions = TestDevice.Upload(s.Positions);
        using var o = TestDevice.PoisonedFloats(pagedOut.Length);
        using var kernel = MlaAttentionKernel.Create(acc);
        kernel.Attention(acc.DefaultStream, q.View, cache.View, positions.View, o.View, fresh, heads, rank, ropeDim, maxSeq, p.Scale, MlaAttentionVersion.V1);
        acc.Synchronize();
        Check.BitEqual(o.GetAsArray1D(), pagedOut, "paged MLA V1 vs contiguous MLA V1");
    }

    [Test]
    public void MlaLauncherRefusesBadShapes()
    {
        var acc = TestDevice.Accelerator;
        var st = acc.DefaultStream;
        using var f = TestDevice.PoisonedFloats(1024);
        using var i = TestDevice.Upload(new int[64]);
        var x = f.View;
        var n = i.View;
        Assert.Throws<ArgumentException>(() => Mla.Value.Attention(st, x, x, n, n, n, x, 2, 2, 8, 4, 0, 4, 0.1f), "BS 0");
        Assert.Throws<ArgumentException>(() => Mla.Value.Attention(st, x, x, n, n, n, x, 2, 2, 8, 4, 4, 0, 0.1f), "maxBlocks 0");
        Assert.Throws<ArgumentException>(() => Mla.Value.Attention(st, x, x, n, n, n, x, 2, 2, 8, 4, 4, 4, float.NaN), "scale NaN");
        Assert.Throws<ArgumentException>(() => Mla.Value.Attention(st, x, x.SubView(0, 40), n, n, n, x, 2, 2, 8, 4, 4, 4, 0.1f), "pool < one block");
        Assert.Throws<ArgumentException>(() => Mla.Value.Attention(st, x.SubView(0, 10), x, n, n, n, x, 2, 2, 8, 4, 4, 4, 0.1f), "qAbs short");
        Assert.Throws<ArgumentException>(() => Mla.Value.Append(st, x, 7, x, 4, n, x, 2, 8, 4), "latent stride < R");
        Assert.Throws<ArgumentException>(() => Mla.Value.Append(st, x, 12, x, 12, n.SubView(0, 1), x, 2, 8, 4), "slots < T");
    }
}
