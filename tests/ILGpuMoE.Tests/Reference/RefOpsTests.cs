using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Reference;

/// <summary>The oracle's dense ops against numbers worked out by hand (or by independent arithmetic in the test).</summary>
public class RefOpsTests
{
    [Test]
    public void EmbeddingGathersRows()
    {
        float[] table = [1, 2, 3, 4, 5, 6];  // V = 3, D = 2
        Check.BitEqual([5, 6, 1, 2, 5, 6], RefOps.Embedding(table, [2, 0, 2], 3, 2));
    }

    [Test]
    public void EmbeddingRejectsBadIdsAndShapes()
    {
        float[] table = [1, 2, 3, 4, 5, 6];
        Assert.Throws<ArgumentException>(() => RefOps.Embedding(table, [3], 3, 2));
        Assert.Throws<ArgumentException>(() => RefOps.Embedding(table, [-1], 3, 2));
        Assert.Throws<ArgumentException>(() => RefOps.Embedding(table, [0], 4, 2));
    }

    [Test]
    public void RmsNormByHand()
    {
        // Row 0: mean(9, 16) = 12.5; row 1: mean(1, 1) = 1.
        float eps = 1e-5f;
        float[] x = [3, 4, -1, 1], w = [1, 2];
        double r0 = 1 / Math.Sqrt(12.5 + eps), r1 = 1 / Math.Sqrt(1 + eps);
        Check.Close([(float)(3 * r0), (float)(8 * r0), (float)(-r1), (float)(2 * r1)], RefOps.RmsNorm(x, w, 2, 2, eps), 1e-7, 0);
        Assert.Throws<ArgumentException>(() => RefOps.RmsNorm(x, [1, 2, 3], 2, 2, eps));
    }

    [Test]
    public void MatMulTUsesOutByInLayout()
    {
        float[] x = [1, 2, 3, 4];           // T = 2, In = 2
        float[] w = [1, 0, 0, 1, 1, 1];     // Out = 3: rows (1,0), (0,1), (1,1)
        Check.BitEqual([1, 2, 3, 3, 4, 7], RefOps.MatMulT(x, w, 2, 3, 2));
        Assert.Throws<ArgumentException>(() => RefOps.MatMulT(x, w, 2, 2, 2));
    }

    [Test]
    public void RopeAtPositionZeroIsIdentity()
    {
        var x = Data.Uniform(1, 3 * 2 * 8);
        Check.BitEqual(x, RefOps.Rope(x, [0, 0, 0], 3, 2, 8, 10000f));
    }

    [Test]
    public void RopeRotatesHalvesByHand()
    {
        // Dh = 4, theta = 100: pair 0 (x0, x2) turns by pos * 1, pair 1 (x1, x3) by pos * 100^(-1/2) = pos * 0.1.
        float[] x = [1, 1, 0, 0];
        var y = RefOps.Rope(x, [2], 1, 1, 4, 100f);
        Check.Close([(float)Math.Cos(2), (float)Math.Cos(0.2), (float)Math.Sin(2), (float)Math.Sin(0.2)], y, 1e-6, 1e-7);
    }

    [Test]
    public void RopePreservesPairNorms()
    {
        const int t = 4, heads = 3, dh = 10;
        var x = Data.Gaussian(2, t * heads * dh);
        var y = RefOps.Rope(x, [5, 17, 123, 4000], t, heads, dh, 1e6f);
        for (int row = 0; row < t * heads; row++)
        {
            for (int i = 0; i < dh / 2; i++)
            {
                int a = row * dh + i, b = a + dh / 2;
                double before = Math.Sqrt((double)x[a] * x[a] + (double)x[b] * x[b]);
                double after = Math.Sqrt((double)y[a] * y[a] + (double)y[b] * y[b]);
                Assert.That(after, Is.EqualTo(before).Within(1e-6 * before + 1e-7), $"row {row} pair {i}");
            }
        }

        Assert.That(y, Is.Not.EqualTo(x));
        Assert.Throws<ArgumentException>(() => RefOps.Rope(new float[6], [1], 1, 2, 3, 10f));
    }

    [Test]
    public void SwiGluByHand()
    {
        // silu(1) = 1 / (1 + e^-1) = 0.7310585786; silu(0) = 0; silu(-2) = -2 / (1 + e^2) = -0.2384058440.
        Check.Close([2 * 0.7310585786f, 0f, -0.2384058440f * 3], RefOps.SwiGlu([1, 0, -2], [2, 5, 3]), 1e-7, 1e-8);
        Assert.Throws<ArgumentException>(() => RefOps.SwiGlu([1, 2], [1]));
    }

    [Test]
    public void Softmax1x3ByHand()
    {
        // e^-2, e^-1, 1 over their sum 1.5032147 (the row is shifted by its max 3 first; 1000 + the same row agrees).
        float[] expected = [0.0900305732f, 0.2447284711f, 0.6652409558f];
        Check.Close(expected, RefOps.Softmax([1, 2, 3], 1, 3), 1e-7, 0);
        Check.Close([.. expected, .. expected], RefOps.Softmax([1, 2, 3, 1001, 1002, 1003], 2, 3), 1e-6, 0);
    }

    [Test]
    public void AttentionWithOneKeyReturnsV()
    {
        var q = Data.Gaussian(3, 2 * 5);
        var k = Data.Gaussian(4, 5);
        var v = Data.Gaussian(5, 5);
        var y = RefOps.Attention(q, k, v, [0], 1, 1, 2, 1, 5, 0);
        Check.BitEqual([.. v, .. v], y);
    }

    [Test]
    public void AttentionWeightsByHand()
    {
        // Dh = 1, scale 1: scores q k = 0 and ln 3, so weights 1/4 and 3/4; v = 1 and 5 gives 4.
        float[] k = [0, (float)Math.Log(3)], v = [1, 5];
        var y = RefOps.Attention([1], k, v, [1], 1, 2, 1, 1, 1, 0);
        Assert.That(y[0], Is.EqualTo(4f).Within(1e-6));
    }

    [Test]
    public void AttentionMapsQueryHeadsToKvGroups()
    {
        // H = 4, Hkv = 2: heads 0, 1 read kv head 0 and heads 2, 3 read kv head 1 (one key: output = that v).
        const int dh = 3;
        var q = Data.Gaussian(6, 4 * dh);
        var k = Data.Gaussian(7, 2 * dh);
        var v = Data.Gaussian(8, 2 * dh);
        var y = RefOps.Attention(q, k, v, [0], 1, 1, 4, 2, dh, 0);
        float[] v0 = v[..dh], v1 = v[dh..];
        Check.BitEqual([.. v0, .. v0, .. v1, .. v1], y);
    }

    [Test]
    public void AttentionIsCausalAndWindowed()
    {
        // Dh = 1 and q = 0: every visible key scores equally, so the output is the mean of the visible v.
        float[] k = [0.3f, -0.7f, 1.1f, 0.2f], v = [1, 2, 4, 8];
        float At(int pos, int window) => RefOps.Attention([0f], k, v, [pos], 1, 4, 1, 1, 1, window)[0];
        Assert.That(At(0, 0), Is.EqualTo(1f));
        Assert.That(At(2, 0), Is.EqualTo(7f / 3).Within(1e-6));
        Assert.That(At(3, 0), Is.EqualTo(15f / 4).Within(1e-6));
        Assert.That(At(3, 1), Is.EqualTo(8f));
        Assert.That(At(3, 2), Is.EqualTo(6f).Within(1e-6));
        Assert.That(At(2, 2), Is.EqualTo(3f).Within(1e-6));
        Assert.That(At(3, 4), Is.EqualTo(At(3, 0)));
    }

    [Test]
    public void AttentionRejectsBadShapes()
    {
        float[] one = [1];
        Assert.Throws<ArgumentException>(() => RefOps.Attention(one, one, one, [1], 1, 1, 1, 1, 1, 0));
        Assert.Throws<ArgumentException>(() => RefOps.Attention(new float[3], new float[2], new float[2], [0], 1, 1, 3, 2, 1, 0));
        Assert.Throws<ArgumentException>(() => RefOps.Attention(one, one, new float[2], [0], 1, 1, 1, 1, 1, 0));
    }

    [Test]
    public void NoiseMatchesSplitMixVectorAndIsStandardNormal()
    {
        // splitmix64 seeded with 0: first output is 0xE220A8397B1DCDAF (the generator's published first value).
        Assert.That(RefNoise.SplitMix64(0), Is.EqualTo(0xE220A8397B1DCDAFUL));

        // The normal from the recipe, recomputed step by step here.
        ulong c = (3UL << 32) | 5UL;
        ulong a = RefNoise.SplitMix64(42UL ^ RefNoise.SplitMix64(c)), b = RefNoise.SplitMix64(a);
        double u1 = ((a >> 11) + 1) / 9007199254740992.0, u2 = (b >> 11) / 9007199254740992.0;
        Assert.That(RefNoise.Normal(42, 3, 5), Is.EqualTo(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)));

        double sum = 0, sq = 0;
        const int n = 20000;
        for (int i = 0; i < n; i++)
        {
            double z = RefNoise.Normal(7, i / 8, i % 8);
            Assert.That(double.IsFinite(z), Is.True);
            sum += z;
            sq += z * z;
        }

        Assert.That(sum / n, Is.EqualTo(0).Within(0.03));
        Assert.That(sq / n, Is.EqualTo(1).Within(0.05));
        Assert.That(RefNoise.Normal(1, 0, 0), Is.Not.EqualTo(RefNoise.Normal(2, 0, 0)));
    }
}
