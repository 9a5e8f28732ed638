// cpu/paged-kv-append, cpu/paged-attention, cpu/paged-mla-append and cpu/paged-mla (CpuPaged.cs) against the oracle
// (RefOps.PagedKvAppend / PagedAttention, RefMlaAttention.PagedAppend / PagedLatentAttention) on the step of
// PagedScenario (tests/ILGpuMoE.Tests/Kernels/Attention/PagedScenario.cs): a shuffled block table with free blocks,
// three sequences of different lengths in one call, NaN wherever the table does not point, the output NaN before the
// call. GQA (H 4, Hkv 2), MHA and MQA, Dh 24, 7 and 40, BS 4 and 16, a sliding window, sinks; one and three workers,
// which must give the same bits. The paged attention must also equal cpu/attention (CpuKernels.Attention) on the
// same keys in the contiguous layout, bit for bit (the same per-task arithmetic). Bad metadata throws before any work.
using ILGpuMoE.Cpu;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Attention;
using static ILGpuMoE.Tests.Cpu.CpuTestData;

namespace ILGpuMoE.Tests.Cpu;

public unsafe class PagedAttentionCpuTests
{
    private const double Rtol = 1e-5;
    private const double Atol = 2e-6;

    private static (float[] K, float[] V, float[] O) Run(CpuThreads threads, PagedAttentionTests.GqaStep p, bool sinks)
    {
        var s = p.S;
        var k = (float[])p.KPool.Clone();
        var v = (float[])p.VPool.Clone();
        var o = Nan(p.Q.Length);
        fixed (float* pk = p.K, pv = p.V, kc = k, vc = v, q = p.Q, po = o, sk = p.Sinks)
        fixed (int* slots = s.Slots, pos = s.Positions, seq = s.SeqOfToken, table = s.BlockTables)
        {
            CpuPaged.AppendKv(pk, pv, kc, vc, slots, s.Tokens, p.KvHeads, p.HeadDim, s.BlockSize, s.NumBlocks);
            CpuPaged.Attention(threads, q, kc, vc, po, pos, seq, table, s.Tokens, p.Heads, p.KvHeads, p.HeadDim, s.BlockSize, s.MaxBlocks,
                PagedScenario.Sequences, s.NumBlocks, p.Window, sinks ? sk : null, p.Scale);
        }

        return (k, v, o);
    }

    [TestCase(4, 2, 24, 4, 0, 0f)]
    [TestCase(4, 2, 24, 16, 5, 0f)]
    [TestCase(4, 2, 24, 4, 6, 0.3f)]
    [TestCase(3, 3, 7, 4, 0, 0f)]
    [TestCase(4, 1, 40, 16, 0, 0.1f)]
    public void MatchesReference(int heads, int kvHeads, int headDim, int blockSize, int window, float scale)
    {
        var s = PagedScenario.Create(blockSize, 700 + blockSize + headDim);
        var p = PagedAttentionTests.GqaStep.Create(s, heads, kvHeads, headDim, window, scale > 0 ? scale : (float)(1.0 / Math.Sqrt(headDim)),
            5100 + heads * 7 + headDim + window);
        foreach (bool sinks in new[] { false, true })
        {
            var want = p.Expected(sinks);
            var one = Run(One, p, sinks);
            var three = Run(Three, p, sinks);
            string what = $"cpu/paged H={heads} Hkv={kvHeads} Dh={headDim} BS={blockSize} window={window} sinks={sinks}";
            Check.BitEqual(want.K, one.K, what + " kCache");
            Check.BitEqual(want.V, one.V, what + " vCache");
            Check.Close(want.O, one.O, Rtol, Atol, what);
            Check.BitEqual(one.O, three.O, what + ": 1 vs 3 workers");
        }
    }

    /// <summary>One sequence: the paged attention against cpu/attention on the same keys in [Hkv, maxSeq, Dh], bit for bit.</summary>
    [TestCase(0, false)]
    [TestCase(5, true)]
    public void AgreesWithContiguousAttention(int window, bool sinks)
    {
        const int heads = 4, kvHeads = 2, headDim = 24, blockSize = 4, history = 9, fresh = 3, maxSeq = 16;
        var s = PagedScenario.Single(blockSize, history, fresh, 78);
        var p = PagedAttentionTests.GqaStep.Create(s, heads, kvHeads, headDim, window, (float)(1.0 / Math.Sqrt(headDim)), 4343);
        var (kPool, vPool, paged) = Run(Three, p, sinks);
        var kc = Nan((long)kvHeads * maxSeq * headDim);
        var vc = Nan(kc.Length);
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

        var want = Nan(p.Q.Length);
        fixed (float* q = p.Q, k = kc, v = vc, o = want, sk = p.Sinks)
            CpuKernels.Attention(Three, q, k, v, o, fresh, heads, kvHeads, headDim, maxSeq, history, window, sinks ? sk : null, p.Scale);
        Check.BitEqual(want, paged, $"cpu paged vs contiguous window={window} sinks={sinks}");
    }

    [Test]
    public void BadMetadataThrowsBeforeAnyWork()
    {
        var s = PagedScenario.Create(4, 92);
        var p = PagedAttentionTests.GqaStep.Create(s, 2, 1, 8, 0, 0.35f, 616);
        var o = Nan(p.Q.Length);
        var k = (float[])p.KPool.Clone();
        var v = (float[])p.VPool.Clone();
        void Attend(int[] positions, int[] seqOfToken, int[] table)
        {
            fixed (float* q = p.Q, kc = k, vc = v, po = o)
            fixed (int* pos = positions, seq = seqOfToken, bt = table)
                CpuPaged.Attention(Three, q, kc, vc, po, pos, seq, bt, s.Tokens, 2, 1, 8, s.BlockSize, s.MaxBlocks, PagedScenario.Sequences, s.NumBlocks, 0, null, 0.35f);
        }

        var badSeq = (int[])s.SeqOfToken.Clone();
        badSeq[1] = 3;
        var badPos = (int[])s.Positions.Clone();
        badPos[2] = -1;
        var badTable = (int[])s.BlockTables.Clone();
        badTable[0] = s.NumBlocks;
        Assert.Throws<ArgumentOutOfRangeException>(() => Attend(s.Positions, badSeq, s.BlockTables), "sequence row");
        Assert.Throws<ArgumentOutOfRangeException>(() => Attend(badPos, s.SeqOfToken, s.BlockTables), "position");
        Assert.Throws<ArgumentOutOfRangeException>(() => Attend(s.Positions, s.SeqOfToken, badTable), "block");
        Assert.That(o, Has.All.NaN, "nothing written");
        var badSlots = (int[])s.Slots.Clone();
        badSlots[0] = s.NumBlocks * s.BlockSize;
        Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            fixed (float* pk = p.K, pv = p.V, kc = k, vc = v)
            fixed (int* slots = badSlots)
                CpuPaged.AppendKv(pk, pv, kc, vc, slots, s.Tokens, 1, 8, s.BlockSize, s.NumBlocks);
        }, "slot");
        Check.BitEqual(p.KPool, k, "nothing appended");
    }

    // ---- MLA --------------------------------------------------------------------------------------------------------

    private static (float[] Pool, float[] O) RunMla(CpuThreads threads, PagedAttentionTests.MlaStep p)
    {
        var s = p.S;
        var m = new CpuMlaShape(p.Shape.Rank, p.Shape.RopeDim, 0, 0);
        var pool = (float[])p.Pool.Clone();
        var o = Nan((long)s.Tokens * p.Shape.Heads * m.Rank);
        fixed (float* kv = p.Kv, c = pool, q = p.QAbs, po = o)
        fixed (int* slots = s.Slots, pos = s.Positions, seq = s.SeqOfToken, table = s.BlockTables)
        {
            CpuPaged.MlaAppend(kv, m.Row, kv + m.Rank, m.Row, slots, c, s.Tokens, m, s.NumBlocks * s.BlockSize);
            CpuPaged.MlaAttention(threads, q, c, pos, seq, table, po, s.Tokens, p.Shape.Heads, m, s.BlockSize, s.MaxBlocks, PagedScenario.Sequences,
                s.NumBlocks, p.Scale);
        }

        return (pool, o);
    }

    [TestCase(3, 8, 4, 4)]
    [TestCase(2, 12, 0, 16)]
    [TestCase(4, 9, 3, 4)]
    public void MlaMatchesReference(int heads, int rank, int ropeDim, int blockSize)
    {
        var s = PagedScenario.Create(blockSize, 800 + rank + blockSize);
        var p = PagedAttentionTests.MlaStep.Create(s, heads, rank, ropeDim, 6100 + heads + rank * 3 + ropeDim);
        var want = p.Expected();
        var one = RunMla(One, p);
        var three = RunMla(Three, p);
        string what = $"cpu/paged-mla H={heads} R={rank} Dr={ropeDim} BS={blockSize}";
        Check.BitEqual(want.Pool, one.Pool, what + " pool");
        Check.Close(want.O, one.O, Rtol, Atol, what);
        Check.BitEqual(one.O, three.O, what + ": 1 vs 3 workers");
    }
}
