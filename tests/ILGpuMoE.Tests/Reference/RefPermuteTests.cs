using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Reference;

/// <summary>Counting sort of routed pairs by expert, the tile schedule, and the MoE block.</summary>
public class RefPermuteTests
{
    [Test]
    public void PermuteByHand()
    {
        // T = 3, K = 2, E = 4; pair p = t*2 + k. Pair 3 is dropped; expert 3 gets nothing.
        var routing = new RefRouting([1, 0, 1, -1, 2, 1], new float[6], 3, 2, 1);
        var p = RefMoe.Permute(routing, 4);
        Assert.That(p.Counts, Is.EqualTo(new[] { 1, 3, 1, 0 }));
        Assert.That(p.Offsets, Is.EqualTo(new[] { 0, 1, 4, 5, 5 }));
        Assert.That(p.SortedPairs, Is.EqualTo(new[] { 1, 0, 2, 5, 4 }));
    }

    [Test]
    public void PermuteIsAStablePermutation()
    {
        const int t = 69, k = 2, e = 8;
        var r = RefMoe.Route(new RefRouterSpec(RouterKind.Mixtral, e, k), Data.Gaussian(21, t * e), t);
        var p = RefMoe.Permute(r, e);
        Assert.That(p.SortedPairs.Order(), Is.EqualTo(Enumerable.Range(0, t * k)));
        for (int x = 0; x < e; x++)
        {
            var seg = p.SortedPairs.AsSpan(p.Offsets[x], p.Counts[x]).ToArray();
            Assert.That(seg, Is.Ordered, $"expert {x} segment is not stable");
            Assert.That(seg.All(pair => r.ExpertIds[pair] == x), $"expert {x} segment holds another expert's pair");
        }

        Assert.Throws<ArgumentException>(() => RefMoe.Permute(r, 7));
        Assert.Throws<ArgumentException>(() => RefMoe.Permute(r with { ExpertIds = [0] }, e));
    }

    [Test]
    public void TileScheduleByHand()
    {
        var p = new RefPermutation([1, 3, 1, 0, 5], [0, 1, 4, 5, 5, 10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        Assert.That(RefMoe.TileSchedule(p, 2), Is.EqualTo(new RefTile[]
        {
            new(0, 0), new(1, 0), new(1, 2), new(2, 0), new(4, 0), new(4, 2), new(4, 4),
        }));
        Assert.That(RefMoe.TileSchedule(p, 64), Has.Length.EqualTo(4));
        Assert.Throws<ArgumentException>(() => RefMoe.TileSchedule(p, 0));
    }

    [Test]
    public void MoeBlockByHand()
    {
        // D = F = 1, two experts; token 0 -> (expert 1, 0.75), (expert 0, 0.25); token 1 -> (expert 0, 1), dropped.
        // expert e: y = w2 * silu(w1 x) * (w3 x).
        float[][] w1 = [[1f], [2f]], w3 = [[2f], [-1f]], w2 = [[3f], [0.5f]];
        var routing = new RefRouting([1, 0, 0, -1], [0.75f, 0.25f, 1f, 0f], 2, 2, 1);
        double Silu(double g) => g / (1 + Math.Exp(-g));
        double Expert(int e, double x) => w2[e][0] * Silu(w1[e][0] * x) * (w3[e][0] * x);
        var y = RefMoe.MoeBlock([1f, -0.5f], routing, w1, w3, w2, 2, 1, 1);
        Check.Close([(float)(0.75 * Expert(1, 1) + 0.25 * Expert(0, 1)), (float)Expert(0, -0.5)], y, 1e-7, 0);
    }

    [Test]
    public void MoeBlockEqualsPerTokenComputation()
    {
        const int t = 17, d = 12, f = 20, e = 4, k = 2;
        var x = Data.Gaussian(31, t * d);
        var w1 = Enumerable.Range(0, e).Select(i => Data.Gaussian(40 + i, f * d, 0.3)).ToArray();
        var w3 = Enumerable.Range(0, e).Select(i => Data.Gaussian(50 + i, f * d, 0.3)).ToArray();
        var w2 = Enumerable.Range(0, e).Select(i => Data.Gaussian(60 + i, d * f, 0.3)).ToArray();
        // Logits steer every token away from expert 3, so one expert receives nothing.
        var logits = Data.Gaussian(32, t * e);
        for (int i = 0; i < t; i++)
            logits[i * e + 3] = -50;
        var r = RefMoe.Route(new RefRouterSpec(RouterKind.Mixtral, e, k), logits, t);
        Assert.That(RefMoe.Permute(r, e).Counts[3], Is.Zero);

        var y = RefMoe.MoeBlock(x, r, w1, w3, w2, t, d, f);
        var expected = new float[t * d];
        for (int tok = 0; tok < t; tok++)
        {
            var xt = x.AsSpan(tok * d, d);
            var acc = new double[d];
            for (int s = 0; s < k; s++)
            {
                int ex = r.ExpertIds[tok * k + s];
                var hidden = RefOps.SwiGlu(RefOps.MatMulT(xt, w1[ex], 1, f, d), RefOps.MatMulT(xt, w3[ex], 1, f, d));
                var ye = RefOps.MatMulT(hidden, w2[ex], 1, d, f);
                for (int i = 0; i < d; i++)
                    acc[i] += r.Weights[tok * k + s] * ye[i];
            }

            for (int i = 0; i < d; i++)
                expected[tok * d + i] = (float)acc[i];
        }

        Check.Close(expected, y, 1e-5, 1e-6);

        // Every token to one expert, weight 1: the block is that expert's FFN.
        var one = new RefRouting(Enumerable.Repeat(2, t).ToArray(), Enumerable.Repeat(1f, t).ToArray(), t, 1, 0);
        var y2 = RefMoe.MoeBlock(x, one, w1, w3, w2, t, d, f);
        var ffn = RefOps.MatMulT(RefOps.SwiGlu(RefOps.MatMulT(x, w1[2], t, f, d), RefOps.MatMulT(x, w3[2], t, f, d)), w2[2], t, d, f);
        Check.Close(ffn, y2, 1e-5, 1e-6);
        Assert.Throws<ArgumentException>(() => RefMoe.MoeBlock(x, one, w1, w3, w2[..3], t, d, f));
        Assert.Throws<ArgumentException>(() => RefMoe.MoeBlock(x, one with { ExpertIds = Enumerable.Repeat(4, t).ToArray() }, w1, w3, w2, t, d, f));
    }
}
