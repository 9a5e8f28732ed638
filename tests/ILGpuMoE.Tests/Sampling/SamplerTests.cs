using ILGpuMoE.Sampling;

namespace ILGpuMoE.Tests.Sampling;

public class SamplerTests
{
    [Test]
    public void TemperatureZeroIsArgmaxWithLowerIdOnTies()
    {
        var s = new Sampler(new SamplingOptions(Temperature: 0));
        Assert.That(s.Next([0.5f, 2f, -1f, 2f]), Is.EqualTo(1));
        Assert.That(s.Next([3f, 1f]), Is.EqualTo(0));
    }

    [Test]
    public void NaNLogitIsAnError()
    {
        var s = new Sampler(new SamplingOptions(Temperature: 0));
        Assert.Throws<InvalidOperationException>(() => s.Next([0f, float.NaN, 1f]));
    }

    [Test]
    public void SameSeedSameTokensOtherSeedOtherTokens()
    {
        var logits = Common.Data.Gaussian(5, 300).ToArray();
        int[] Draw(ulong seed)
        {
            var s = new Sampler(new SamplingOptions(1.0f, 0, 1.0f, seed));
            return Enumerable.Range(0, 50).Select(_ => s.Next(logits)).ToArray();
        }

        Assert.That(Draw(7), Is.EqualTo(Draw(7)));
        Assert.That(Draw(7), Is.Not.EqualTo(Draw(8)));
    }

    [Test]
    public void TopKOnlyEverDrawsTheKLargest()
    {
        var logits = Common.Data.Uniform(9, 64, 3f);
        var top3 = logits.Select((x, i) => (x, i)).OrderByDescending(p => p.x).Take(3).Select(p => p.i).ToHashSet();
        var s = new Sampler(new SamplingOptions(Temperature: 5f, TopK: 3, TopP: 1f, Seed: 3));
        var seen = Enumerable.Range(0, 400).Select(_ => s.Next(logits)).ToHashSet();
        Assert.That(seen.IsSubsetOf(top3), Is.True);
        Assert.That(seen.Count, Is.EqualTo(3), "at a high temperature all three should appear in 400 draws");
    }

    [Test]
    public void TopPKeepsTheSmallestPrefixReachingP()
    {
        // probabilities at T=1: softmax(ln 0.5, ln 0.3, ln 0.15, ln 0.05) = 0.5, 0.3, 0.15, 0.05.
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.15f), MathF.Log(0.05f)];
        var s = new Sampler(new SamplingOptions(Temperature: 1f, TopK: 0, TopP: 0.75f, Seed: 11));
        var counts = new int[4];
        for (int i = 0; i < 4000; i++)
            counts[s.Next(logits)]++;
        // 0.5 + 0.3 = 0.8 >= 0.75: ids 0 and 1 only, in ratio 5:3.
        Assert.That(counts[2] + counts[3], Is.Zero);
        Assert.That(counts[0] / (double)(counts[0] + counts[1]), Is.EqualTo(0.625).Within(0.03));
    }

    [Test]
    public void FrequenciesFollowTheSoftmax()
    {
        float[] logits = [0f, 1f, 2f];
        double z = 1 + Math.E + Math.E * Math.E;
        var s = new Sampler(new SamplingOptions(Temperature: 1f, TopK: 0, TopP: 1f, Seed: 2));
        var counts = new int[3];
        const int n = 20000;
        for (int i = 0; i < n; i++)
            counts[s.Next(logits)]++;
        for (int i = 0; i < 3; i++)
            Assert.That(counts[i] / (double)n, Is.EqualTo(Math.Exp(i) / z).Within(0.015), $"token {i}");
    }

    [TestCase(-1f, 50, 0.9f)]
    [TestCase(0.7f, -2, 0.9f)]
    [TestCase(0.7f, 50, 0f)]
    [TestCase(0.7f, 50, 1.5f)]
    [TestCase(float.NaN, 50, 0.9f)]
    public void BadOptionsAreRefused(float t, int k, float p) =>
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplingOptions(t, k, p)));
}
