// cpu/mla-* (CpuMla: DeepSeek's absorbed multi-head latent attention) against RefMlaAttention: append (the cache rows
// [c | k_rope] at each token's position, nothing else), absorb-q (RefMlaAttention.AbsorbQ), the latent attention
// (LatentAttention), absorb-v (AbsorbV), and the four chained against both the absorbed oracle (RefMlaAttention.Attention)
// and Hugging Face's expanded form (RefOps.GeneralAttention on RefMlaAttention.Expand's keys and values).
// kv_b_proj is read as F32, BF16 or F16 (the oracle gets the reader's values). Shapes: a small odd one (R = 20, not a
// multiple of 8; Dn, Dr, Dv all different) and a wide one whose tasks exceed CpuThreads.InlineWork, so that three workers
// really split them; one and three workers give the same bits. Cache rows past the last position are NaN.
using ILGpuMoE.Cpu;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using static ILGpuMoE.Tests.Cpu.CpuTestData;

namespace ILGpuMoE.Tests.Cpu;

public unsafe class CpuMlaTests
{
    private const double Rtol = 1e-5, Atol = 2e-6;

    /// <summary>Small: H 3, R 20, Dr 6, Dn 10, Dv 7. Wide: H 8, R 64, Dr 8, Dn 16, Dv 16.</summary>
    private static MlaShape Shape(bool wide) => wide ? new MlaShape(8, 64, 8, 16, 16) : new MlaShape(3, 20, 6, 10, 7);

    private static CpuMlaShape Cpu(MlaShape s) => new(s.Rank, s.RopeDim, s.NopeDim, s.VDim);

    private static (DenseRows Reader, float[] Values) KvB(DenseType type, MlaShape s, int seed) =>
        Dense(type, Data.Uniform(seed, (long)s.KvBRows * s.Rank, 1f / MathF.Sqrt(s.Rank)), s.KvBRows, s.Rank);

    private static float Scale(MlaShape s) => 1f / MathF.Sqrt(s.QkDim);

    /// <summary>A cache [maxSeq, Row] with random rows 0..keys-1 and NaN after.</summary>
    private static float[] Cache(int seed, MlaShape s, int keys, int maxSeq)
    {
        var cache = Nan((long)maxSeq * s.Row);
        Data.Gaussian(seed, (long)keys * s.Row).CopyTo(cache, 0);
        return cache;
    }

    // ---- append --------------------------------------------------------------------------------------------------

    /// <summary>c rows R + 3 apart and k_rope rows Dr + 1 apart (their pads NaN: copying one would show), at contiguous
    /// and at scattered positions; every other row keeps its NaN.</summary>
    [TestCase(new[] { 4, 5, 6 })]
    [TestCase(new[] { 9, 2, 7, 0 })]
    [TestCase(new[] { 11 })]
    public void AppendWritesTheRowsAtThePositionsAndNothingElse(int[] positions)
    {
        var s = Shape(false);
        const int maxSeq = 12;
        int t = positions.Length, cStride = s.Rank + 3, kStride = s.RopeDim + 1;
        var c = Nan((long)t * cStride);
        var kr = Nan((long)t * kStride);
        var want = Nan((long)maxSeq * s.Row);
        for (int i = 0; i < t; i++)
        {
            Data.Uniform(10 + i, s.Rank).CopyTo(c, i * cStride);
            Data.Uniform(20 + i, s.RopeDim).CopyTo(kr, i * kStride);
            c.AsSpan(i * cStride, s.Rank).CopyTo(want.AsSpan(positions[i] * s.Row));
            kr.AsSpan(i * kStride, s.RopeDim).CopyTo(want.AsSpan(positions[i] * s.Row + s.Rank));
        }

        var cache = Nan((long)maxSeq * s.Row);
        fixed (float* pc = c, pk = kr, pcache = cache)
        fixed (int* pp = positions)
            CpuMla.Append(pc, cStride, pk, kStride, pp, pcache, t, Cpu(s), maxSeq);
        Check.BitEqual(want, cache);
    }

    [Test]
    public void AppendRefusesPositionsOutsideTheCache([Values(12, -1)] int position)
    {
        var s = Shape(false);
        var c = Data.Uniform(30, s.Row);
        var cache = Nan(12L * s.Row);
        int[] positions = [position];
        Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            fixed (float* pc = c, pcache = cache)
            fixed (int* pp = positions)
                CpuMla.Append(pc, s.Row, pc + s.Rank, s.Row, pp, pcache, 1, Cpu(s), 12);
        });
        StillPoisoned(cache, "cache after a refused append");
    }

    // ---- absorb-q, absorb-v --------------------------------------------------------------------------------------

    [Test]
    public void AbsorbQMatchesReference([Values] DenseType type, [Values] bool wide)
    {
        var s = Shape(wide);
        const int t = 5;
        var (kvB, values) = KvB(type, s, 40);
        var q = Data.Gaussian(41, (long)t * s.Heads * s.QkDim);
        var want = RefMlaAttention.AbsorbQ(q, values, t, s);

        float[] Run(CpuThreads threads)
        {
            var qAbs = Nan((long)t * s.Heads * s.Row);
            fixed (float* pq = q, po = qAbs)
                CpuMla.AbsorbQ(threads, pq, kvB, po, t, s.Heads, Cpu(s));
            return qAbs;
        }

        var one = Run(One);
        Check.Close(want, one, Rtol, Atol, $"{type} {s}");
        Check.BitEqual(one, Run(Three), "3 workers vs 1");
    }

    [Test]
    public void AbsorbVMatchesReference([Values] DenseType type, [Values] bool wide)
    {
        var s = Shape(wide);
        const int t = 5;
        var (kvB, values) = KvB(type, s, 50);
        var oLat = Data.Gaussian(51, (long)t * s.Heads * s.Rank);
        var want = RefMlaAttention.AbsorbV(oLat, values, t, s);

        float[] Run(CpuThreads threads)
        {
            var y = Nan((long)t * s.Heads * s.VDim);
            fixed (float* po = oLat, py = y)
                CpuMla.AbsorbV(threads, po, kvB, py, t, s.Heads, Cpu(s));
            return y;
        }

        var one = Run(One);
        Check.Close(want, one, Rtol, Atol, $"{type} {s}");
        Check.BitEqual(one, Run(Three), "3 workers vs 1");
    }

    [Test]
    public void AbsorbRefusesAKvBOfAnotherShape()
    {
        var s = Shape(false);
        var kvB = CpuMatrix.FromFloat32(Data.Uniform(60, (long)(s.KvBRows - 1) * s.Rank), s.KvBRows - 1, s.Rank);
        var a = Nan(1024);
        Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* p = a)
                CpuMla.AbsorbQ(One, p, kvB, p + 512, 1, s.Heads, Cpu(s));
        }, "absorb-q");
        Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* p = a)
                CpuMla.AbsorbV(One, p, kvB, p + 512, 1, s.Heads, Cpu(s));
        }, "absorb-v");
    }

    // ---- latent attention ----------------------------------------------------------------------------------------

    /// <summary>Queries at contiguous positions (prefill from pos0, decode) and at scattered ones; the cache is NaN past
    /// the last position any query sees (and 3 rows more).</summary>
    [TestCase(false, new[] { 0, 1, 2, 3 })]
    [TestCase(false, new[] { 6, 7, 8 })]
    [TestCase(false, new[] { 13 })]
    [TestCase(false, new[] { 9, 2, 5 })]
    [TestCase(true, new[] { 4, 5, 6, 7, 8 })]
    public void LatentAttentionMatchesReference(bool wide, int[] positions)
    {
        var s = Shape(wide);
        int t = positions.Length, keys = positions.Max() + 1, maxSeq = keys + 3, seed = 70 + keys + t;
        var cache = Cache(seed, s, keys, maxSeq);
        var qAbs = Data.Gaussian(seed + 1, (long)t * s.Heads * s.Row);
        float scale = Scale(s);
        var want = RefMlaAttention.LatentAttention(qAbs, cache.AsSpan(0, keys * s.Row), positions, t, keys, s, scale);

        float[] Run(CpuThreads threads)
        {
            var oLat = Nan((long)t * s.Heads * s.Rank);
            fixed (float* pq = qAbs, pc = cache, po = oLat)
            fixed (int* pp = positions)
                CpuMla.Attention(threads, pq, pc, pp, po, t, s.Heads, Cpu(s), maxSeq, scale);
            return oLat;
        }

        var one = Run(One);
        Check.Close(want, one, Rtol, Atol, $"{s} positions {string.Join(",", positions)}");
        Check.BitEqual(one, Run(Three), "3 workers vs 1");
    }

    /// <summary>A position outside the cache is refused with the same exception whatever the worker count (the wide
    /// shape's tasks run in a Parallel.For with three workers), before any output is written.</summary>
    [Test]
    public void LatentAttentionRefusesPositionsOutsideTheCache([Values] bool wide, [Values] bool threeWorkers)
    {
        var s = Shape(wide);
        const int maxSeq = 12;
        var cache = Cache(80, s, maxSeq, maxSeq);
        int[] positions = [7, 8, 9, maxSeq, 10];
        int t = positions.Length;
        var qAbs = Data.Gaussian(81, (long)t * s.Heads * s.Row);
        var oLat = Nan((long)t * s.Heads * s.Rank);
        Assert.That(() =>
        {
            fixed (float* pq = qAbs, pc = cache, po = oLat)
            fixed (int* pp = positions)
                CpuMla.Attention(threeWorkers ? Three : One, pq, pc, pp, po, t, s.Heads, Cpu(s), maxSeq, Scale(s));
        }, Throws.InstanceOf<ArgumentOutOfRangeException>());
        StillPoisoned(oLat, "output of the refused call");
    }

    // ---- the chain -----------------------------------------------------------------------------------------------

    /// <summary>
    /// A prefill of T tokens at pos0 after pos0 history rows: append the new rows, absorb q, attend over the latent
    /// cache, absorb v; against the absorbed oracle end to end, and against the expanded per-head attention.
    /// </summary>
    [TestCase(DenseType.F32, false, 3, 4)]
    [TestCase(DenseType.F32, false, 1, 11)]
    [TestCase(DenseType.BF16, false, 4, 0)]
    [TestCase(DenseType.F16, true, 5, 4)]
    public void ChainMatchesAbsorbedAndExpandedReference(DenseType type, bool wide, int t, int pos0)
    {
        var s = Shape(wide);
        int keys = pos0 + t, maxSeq = keys + 2, seed = 90 + t * 7 + pos0;
        var (kvB, values) = KvB(type, s, seed);
        var rows = Data.Gaussian(seed + 1, (long)keys * s.Row);
        var q = Data.Gaussian(seed + 2, (long)t * s.Heads * s.QkDim);
        var positions = Enumerable.Range(pos0, t).ToArray();
        float scale = Scale(s);
        var want = RefMlaAttention.Attention(q, rows, values, positions, t, keys, s, scale);
        var (kx, vx) = RefMlaAttention.Expand(rows, values, keys, s);
        var expanded = RefOps.GeneralAttention(q, kx, vx, positions, t, keys, s.Heads, s.Heads, s.QkDim, s.VDim, scale, 0, ReadOnlySpan<float>.Empty);

        float[] Run(CpuThreads threads)
        {
            // History rows by hand, the new ones by cpu/mla-append from a kv_a row [c | k_rope] per token.
            var cache = Nan((long)maxSeq * s.Row);
            rows.AsSpan(0, pos0 * s.Row).CopyTo(cache);
            var kva = rows[(pos0 * s.Row)..];
            var qAbs = Nan((long)t * s.Heads * s.Row);
            var oLat = Nan((long)t * s.Heads * s.Rank);
            var y = Nan((long)t * s.Heads * s.VDim);
            fixed (float* pkva = kva, pcache = cache, pq = q, pqa = qAbs, pol = oLat, py = y)
            fixed (int* pp = positions)
            {
                CpuMla.Append(pkva, s.Row, pkva + s.Rank, s.Row, pp, pcache, t, Cpu(s), maxSeq);
                CpuMla.AbsorbQ(threads, pq, kvB, pqa, t, s.Heads, Cpu(s));
                CpuMla.Attention(threads, pqa, pcache, pp, pol, t, s.Heads, Cpu(s), maxSeq, scale);
                CpuMla.AbsorbV(threads, pol, kvB, py, t, s.Heads, Cpu(s));
            }

            return y;
        }

        var one = Run(One);
        Check.Close(want, one, 1e-5, 1e-5, $"{type} {s} T={t} pos0={pos0}: absorbed oracle");
        Check.Close(expanded, one, 1e-5, 1e-5, $"{type} {s} T={t} pos0={pos0}: expanded attention");
        Check.BitEqual(one, Run(Three), "3 workers vs 1");
    }
}
