// The continuous-batching step the paged attention tests run (GPU kernels on the CPU accelerator, and the CPU backend):
// three sequences in one launch, their tokens concatenated out of table order,
//   table row 0: a chunk of 4 new tokens at positions BS+3 .. BS+6 over BS+3 cached keys (a prefill chunk that sees
//                its own earlier tokens and the cached ones, across blocks),
//   table row 1: a single token at position 0 (a new sequence),
//   table row 2: one decode token at position 2*BS+1 (a length of 2*BS+2, not a multiple of BS),
// with the step's tokens ordered [row 2's, row 0's 4, row 1's]. The pool's physical blocks are a seeded shuffle with
// free blocks left over; the table's unused entries point at a free block. Every float of the pool that holds no key
// is NaN (the free blocks, the tails of the last blocks, the slots the step appends to), so a read outside what the
// table says shows up in the output.
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Attention;

/// <summary>The metadata of the step (see the file header) and the pool's block assignment.</summary>
internal sealed class PagedScenario
{
    public const int Sequences = 3;

    private PagedScenario(int blockSize, int[] history, int[] fresh, int seed)
    {
        BlockSize = blockSize;
        History = history;
        var lengths = history.Zip(fresh, (h, n) => h + n).ToArray();
        var needed = lengths.Select(l => (l + blockSize - 1) / blockSize).ToArray();
        int used = needed.Sum();
        NumBlocks = used + 3;
        MaxBlocks = needed.Max() + 1;
        var rng = new Random(seed);
        var perm = Enumerable.Range(0, NumBlocks).ToArray();
        rng.Shuffle(perm);
        int free = perm[used];
        BlockTables = new int[Sequences * MaxBlocks];
        Array.Fill(BlockTables, free);
        int next = 0;
        for (int s = 0; s < Sequences; s++)
        {
            for (int b = 0; b < needed[s]; b++)
                BlockTables[s * MaxBlocks + b] = perm[next++];
        }

        // Step order: row 2's token, row 0's chunk, row 1's token.
        var seqs = new List<int>();
        var pos = new List<int>();
        foreach (int s in new[] { 2, 0, 1 })
        {
            for (int i = 0; i < fresh[s]; i++)
            {
                seqs.Add(s);
                pos.Add(history[s] + i);
            }
        }

        SeqOfToken = seqs.ToArray();
        Positions = pos.ToArray();
        Slots = Positions.Select((p, t) => SlotOf(SeqOfToken[t], p)).ToArray();
    }

    public int BlockSize { get; }

    public int NumBlocks { get; }

    public int MaxBlocks { get; }

    /// <summary>Cached keys per table row before the step.</summary>
    public int[] History { get; }

    public int[] BlockTables { get; }

    public int[] Positions { get; }

    public int[] SeqOfToken { get; }

    public int[] Slots { get; }

    public int Tokens => Positions.Length;

    public static PagedScenario Create(int blockSize, int seed) =>
        new(blockSize, [blockSize + 3, 0, 2 * blockSize + 1], [4, 1, 1], seed);

    /// <summary>One sequence only (row 0: history keys, then fresh tokens), rows 1 and 2 empty: the contiguous comparison.</summary>
    public static PagedScenario Single(int blockSize, int history, int fresh, int seed) => new(blockSize, [history, 0, 0], [fresh, 0, 0], seed);

    /// <summary>Slot of position p of table row s.</summary>
    public int SlotOf(int s, int p) => BlockTables[s * MaxBlocks + p / BlockSize] * BlockSize + p % BlockSize;

    /// <summary>
    /// kCache or vCache [NumBlocks, Hkv, BS, Dh], NaN but for the cached history keys: key p of row s, kv head h, is
    /// rows[(s, p, h)] (a seeded draw per sequence), written by the test's own indexing.
    /// </summary>
    public float[] GqaPool(int kvHeads, int headDim, int seed, bool uniform)
    {
        var pool = new float[(long)NumBlocks * kvHeads * BlockSize * headDim];
        Array.Fill(pool, float.NaN);
        for (int s = 0; s < Sequences; s++)
        {
            var rows = uniform ? Data.Uniform(seed + s, (long)Math.Max(1, History[s]) * kvHeads * headDim)
                : Data.Gaussian(seed + s, (long)Math.Max(1, History[s]) * kvHeads * headDim);
            for (int p = 0; p < History[s]; p++)
            {
                int slot = SlotOf(s, p);
                for (int h = 0; h < kvHeads; h++)
                {
                    long dst = (((long)(slot / BlockSize) * kvHeads + h) * BlockSize + slot % BlockSize) * headDim;
                    Array.Copy(rows, ((long)p * kvHeads + h) * headDim, pool, dst, headDim);
                }
            }
        }

        return pool;
    }

    /// <summary>The MLA pool [NumBlocks * BS, row], NaN but for the cached history rows.</summary>
    public float[] MlaPool(int row, int seed)
    {
        var pool = new float[(long)NumBlocks * BlockSize * row];
        Array.Fill(pool, float.NaN);
        for (int s = 0; s < Sequences; s++)
        {
            var rows = Data.Gaussian(seed + s, (long)Math.Max(1, History[s]) * row);
            for (int p = 0; p < History[s]; p++)
                Array.Copy(rows, (long)p * row, pool, (long)SlotOf(s, p) * row, row);
        }

        return pool;
    }
}
