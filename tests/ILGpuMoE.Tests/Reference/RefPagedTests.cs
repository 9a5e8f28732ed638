using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Attention;

namespace ILGpuMoE.Tests.Reference;

/// <summary>
/// The paged oracle (RefPaged.cs) on its own: paging is only where the keys are, so a sequence read through a shuffled
/// block table gives GeneralAttention's / LatentAttention's result on the same keys laid out contiguously, bit for bit;
/// and metadata outside the table or the pool is refused with an ArgumentException naming it.
/// </summary>
public class RefPagedTests
{
    [TestCase(0, false)]
    [TestCase(4, true)]
    public void PagedEqualsContiguous(int window, bool sinks)
    {
        const int heads = 4, kvHeads = 2, headDim = 6, blockSize = 4, history = 7, fresh = 3;
        var s = PagedScenario.Single(blockSize, history, fresh, 5);
        var p = PagedAttentionTests.GqaStep.Create(s, heads, kvHeads, headDim, window, 0.4f, 55);
        var (kPool, vPool, paged) = p.Expected(sinks);
        int keys = history + fresh;
        var k = new float[keys * kvHeads * headDim];
        var v = new float[k.Length];
        for (int pos = 0; pos < keys; pos++)
        {
            int slot = s.SlotOf(0, pos);
            for (int h = 0; h < kvHeads; h++)
            {
                int src = (int)RefOps.PagedIndex(slot / blockSize, h, slot % blockSize, kvHeads, blockSize, headDim);
                Array.Copy(kPool, src, k, (pos * kvHeads + h) * headDim, headDim);
                Array.Copy(vPool, src, v, (pos * kvHeads + h) * headDim, headDim);
            }
        }

        var want = RefOps.GeneralAttention(p.Q, k, v, s.Positions, fresh, keys, heads, kvHeads, headDim, headDim, p.Scale, window,
            sinks ? p.Sinks : ReadOnlySpan<float>.Empty);
        Check.BitEqual(want, paged, $"window={window} sinks={sinks}");
    }

    [Test]
    public void MlaPagedEqualsContiguous()
    {
        var s = PagedScenario.Single(3, 5, 2, 6);
        var p = PagedAttentionTests.MlaStep.Create(s, 2, 5, 2, 66);
        var (pool, paged) = p.Expected();
        int row = p.Shape.Row, keys = 7;
        var rows = new float[keys * row];
        for (int pos = 0; pos < keys; pos++)
            Array.Copy(pool, s.SlotOf(0, pos) * row, rows, pos * row, row);
        Check.BitEqual(RefMlaAttention.LatentAttention(p.QAbs, rows, s.Positions, 2, keys, p.Shape, p.Scale), paged, "paged MLA oracle");
    }

    [Test]
    public void BadMetadataIsRefused()
    {
        var s = PagedScenario.Create(4, 9);
        var p = PagedAttentionTests.GqaStep.Create(s, 2, 1, 4, 0, 0.5f, 99);
        float[] Attend(int[] positions, int[] seqOfToken, int[] table) =>
            RefOps.PagedAttention(p.Q, p.KPool, p.VPool, positions, seqOfToken, table, s.Tokens, 2, 1, 4, s.BlockSize, s.MaxBlocks, 0, default, 0.5);

        var seq = (int[])s.SeqOfToken.Clone();
        seq[0] = PagedScenario.Sequences;
        var pos = (int[])s.Positions.Clone();
        pos[0] = s.MaxBlocks * s.BlockSize;
        var table = (int[])s.BlockTables.Clone();
        table[0] = -1;
        Assert.That(() => Attend(s.Positions, seq, s.BlockTables), Throws.ArgumentException.With.Message.Contains("seqOfToken[0]"));
        Assert.That(() => Attend(pos, s.SeqOfToken, s.BlockTables), Throws.ArgumentException.With.Message.Contains("positions[0]"));
        Assert.That(() => Attend(s.Positions, s.SeqOfToken, table), Throws.ArgumentException.With.Message.Contains("blockTables[0, 0]"));
        var slots = (int[])s.Slots.Clone();
        slots[1] = s.NumBlocks * s.BlockSize;
        Assert.That(() => RefOps.PagedKvAppend(p.K, p.V, (float[])p.KPool.Clone(), (float[])p.VPool.Clone(), slots, s.Tokens, 1, 4, s.BlockSize),
            Throws.ArgumentException.With.Message.Contains("slots[1]"));
        Assert.That(() => RefOps.PagedKvAppend(p.K, p.V, p.KPool.AsSpan(1).ToArray(), (float[])p.VPool.Clone(), s.Slots, s.Tokens, 1, 4, s.BlockSize),
            Throws.ArgumentException.With.Message.Contains("whole number of blocks"));
    }
}
