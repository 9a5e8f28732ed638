using System.Numerics;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention;

namespace ILGpuMoE.Tests.Kernels;

/// <summary>
/// The 64-bit offset helpers the kernels use (Index64, KvCacheLayout.Index), at real model shapes whose element
/// counts pass 2^31 or 2^32, against exact BigInteger math; no gigabyte buffers. Each case also shows that the
/// same formula in int (what a kernel with 32-bit offsets computes) is wrong for that shape, so the case can fail.
/// </summary>
public class Index64Tests
{
    private static void Expect(long actual, BigInteger exact, BigInteger above, long int32Result)
    {
        Assert.That(exact, Is.GreaterThan(above), "the shape must pass the bound it is meant to test");
        Assert.That((BigInteger)actual, Is.EqualTo(exact));
        Assert.That((BigInteger)int32Result, Is.Not.EqualTo(exact), "32-bit math must be wrong here, or the case proves nothing");
    }

    // Qwen's V = 151,936: T*V passes 2^31 from T = 14,135 and 2^32 from T = 28,269.
    [TestCase(14_135, 151_936, 2_147_483_647L)]
    [TestCase(28_300, 151_936, 4_294_967_295L)]
    public void LogitsLastElement(int tokens, int vocab, long above)
    {
        long actual = Index64.At(tokens - 1, vocab, vocab - 1);
        Expect(actual, (BigInteger)(tokens - 1) * vocab + (vocab - 1), above, unchecked((tokens - 1) * vocab + (vocab - 1)));
        Assert.That(actual, Is.EqualTo((long)tokens * vocab - 1)); // the last element of [T, V]
    }

    // Embedding table [V, D] at V = 151,936, D = 16,384: 2.49e9 elements.
    [Test]
    public void EmbeddingTableLastRow()
    {
        const int vocab = 151_936, dim = 16_384;
        Expect(Index64.At(vocab - 1, dim, dim - 1), (BigInteger)(vocab - 1) * dim + dim - 1, int.MaxValue,
            unchecked((vocab - 1) * dim + dim - 1));
    }

    // Stacked experts, DeepSeek-V3: w1/w3 [E = 256, F = 2048, D = 7168] and w2 [E, D, F], 3.76e9 elements each;
    // the last case is twice as many experts and rows (1.5e10, past 2^32).
    [TestCase(256, 2048, 7168, 2_147_483_647L)]
    [TestCase(256, 7168, 2048, 2_147_483_647L)]
    [TestCase(512, 4096, 7168, 4_294_967_295L)]
    public void StackedExpertLastRow(int experts, int rows, int cols, long above)
    {
        int e = experts - 1, n = rows - 1;
        long rowBase = Index64.StackedRow(e, rows, n, cols);
        Expect(rowBase + cols - 1, ((BigInteger)e * rows + n) * cols + cols - 1, above, unchecked((e * rows + n) * cols + cols - 1));
        Assert.That(rowBase + cols, Is.EqualTo((long)experts * rows * cols)); // one past the end of the tensor
        // A middle expert too: the base of expert e is e * rows * cols exactly.
        Assert.That(Index64.StackedRow(experts / 2 + 1, rows, 0, cols), Is.EqualTo((long)(experts / 2 + 1) * rows * cols));
    }

    // Sorted rows of the permutation [P = T*K, D]: 37,500 tokens x K = 8 at D = 7168 is 2.15e9 elements.
    [Test]
    public void PermutedRowsLastElement()
    {
        const int pairs = 37_500 * 8, dim = 7168;
        Expect(Index64.At(pairs - 1, dim, dim - 1), (BigInteger)(pairs - 1) * dim + dim - 1, int.MaxValue,
            unchecked((pairs - 1) * dim + dim - 1));
    }

    // KV cache [Hkv, S, Dh] of one layer: 96 x 262,144 x 128 = 3.2e9 and 128 x 262,144 x 128 = 2^32 floats.
    [TestCase(96, 262_144, 128, 2_147_483_647L)]
    [TestCase(128, 262_144, 128, 4_294_967_294L)]
    public void KvCacheLastElement(int kvHeads, int maxSeq, int headDim, long above)
    {
        int h = kvHeads - 1, pos = maxSeq - 1, d = headDim - 1;
        long actual = KvCacheLayout.Index(h, pos, d, maxSeq, headDim);
        Expect(actual, ((BigInteger)h * maxSeq + pos) * headDim + d, above, unchecked((h * maxSeq + pos) * headDim + d));
        Assert.That(actual, Is.EqualTo(KvCacheLayout.Elements(kvHeads, maxSeq, headDim) - 1));
    }

    [Test]
    public void CheckIntAcceptsTheLargestIntAndNamesTheTensorBeyond()
    {
        Assert.DoesNotThrow(() => Index64.CheckInt("MatMul", "y [T, Out]", int.MaxValue));
        var ex = Assert.Throws<ArgumentException>(() => Index64.CheckInt("MatMul", "y [T, Out]", (long)int.MaxValue + 1));
        Assert.That(ex!.Message, Does.Contain("MatMul: y [T, Out] has 2147483648 elements"));
        Assert.That(ex.Message, Does.Not.Contain('\n'));
    }
}
