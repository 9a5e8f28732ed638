using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Reference;

/// <summary>Every router mode on cases small enough to work out by hand.</summary>
public class RefRouterTests
{
    // softmax(1, 2, 3) = (e^-2, e^-1, 1) / (1 + e^-1 + e^-2).
    private const double P1 = 0.0900305732, P2 = 0.2447284711, P3 = 0.6652409558;

    [Test]
    public void MixtralRenormalisesTopK()
    {
        var r = RefMoe.Route(new RefRouterSpec(RouterKind.Mixtral, 3, 2), [1, 2, 3], 1);
        Assert.That(r.ExpertIds, Is.EqualTo(new[] { 2, 1 }));
        // p3 / (p3 + p2) = 1 / (1 + e^-1) = 0.7310585786.
        Check.Close([0.7310585786f, 0.2689414214f], r.Weights, 1e-7, 0);
        Assert.That(r.Dropped, Is.Zero);
    }

    [Test]
    public void SoftmaxTopKKeepsProbabilities()
    {
        var r = RefMoe.Route(new RefRouterSpec(RouterKind.SoftmaxTopK, 3, 2), [1, 2, 3, 3, 1, 2], 2);
        Assert.That(r.ExpertIds, Is.EqualTo(new[] { 2, 1, 0, 2 }));
        Check.Close([(float)P3, (float)P2, (float)P3, (float)P2], r.Weights, 1e-7, 0);
    }

    [Test]
    public void SharedSlotsFollowTheRoutedOnes()
    {
        // Rows [1, 2, 3 | gate 0] and [3, 1, 2 | gate ln 3], E = 3, K = 2, m = 2: the routed part is
        // SoftmaxTopKKeepsProbabilities' (the gate logit is not in the softmax); slots 2, 3 hold experts 3, 4 with
        // sigmoid(0) = 0.5, then sigmoid(ln 3) = 1 / (1 + 1/3) = 0.75.
        float ln3 = (float)Math.Log(3);
        var r = RefMoe.Route(new RefRouterSpec(RouterKind.SoftmaxTopK, 3, 2, SharedSlots: 2), [1, 2, 3, 0, 3, 1, 2, ln3], 2);
        Assert.That(r.TopK, Is.EqualTo(4));
        Assert.That(r.ExpertIds, Is.EqualTo(new[] { 2, 1, 3, 4, 0, 2, 3, 4 }));
        Check.Close([(float)P3, (float)P2, 0.5f, 0.5f, (float)P3, (float)P2, 0.75f, 0.75f], r.Weights, 1e-7, 0);
        Assert.Throws<ArgumentException>(() => RefMoe.Route(new RefRouterSpec(RouterKind.SoftmaxTopK, 3, 2, SharedSlots: 2), [1, 2, 3], 1), "row of E");
    }

    [Test]
    public void TiesGoToTheLowerExpertId()
    {
        var spec = new RefRouterSpec(RouterKind.Mixtral, 4, 2);
        var r = RefMoe.Route(spec, [1, 2, 2, 0, 3, 1, 1, 0, 5, 5, 5, 5], 3);
        Assert.That(r.ExpertIds, Is.EqualTo(new[] { 1, 2, 0, 1, 0, 1 }));
        Check.Close([0.5f, 0.5f], r.Weights.AsSpan(0, 2), 1e-7, 0);
        Check.Close([0.5f, 0.5f], r.Weights.AsSpan(4, 2), 1e-7, 0);
        var top1 = RefMoe.Route(new RefRouterSpec(RouterKind.SoftmaxTopK, 4, 1), [0, 7, 7, 7], 1);
        Assert.That(top1.ExpertIds, Is.EqualTo(new[] { 1 }));
    }

    [Test]
    public void SwitchDropsPastCapacityInTokenOrder()
    {
        // Both tokens prefer expert 0; capacity = ceil(2 * 1 / 2) = 1, so token 1 is dropped.
        float[] logits = [2, 0, 1, 0];
        var r = RefMoe.Route(new RefRouterSpec(RouterKind.Switch, 2, 1, CapacityFactor: 1.0), logits, 2);
        Assert.That(r.ExpertIds, Is.EqualTo(new[] { 0, -1 }));
        Check.Close([0.8807970780f, 0f], r.Weights, 1e-7, 0);  // softmax(2, 0)[0] = 1 / (1 + e^-2)
        Assert.That(r.Dropped, Is.EqualTo(1));

        // Capacity 2: nobody dropped, token 1 keeps softmax(1, 0)[0] = 1 / (1 + e^-1).
        var wide = RefMoe.Route(new RefRouterSpec(RouterKind.Switch, 2, 1, CapacityFactor: 2.0), logits, 2);
        Assert.That(wide.ExpertIds, Is.EqualTo(new[] { 0, 0 }));
        Check.Close([0.8807970780f, 0.7310585786f], wide.Weights, 1e-7, 0);
        Assert.That(wide.Dropped, Is.Zero);
    }

    [Test]
    public void SwitchCapacityIsCeiling()
    {
        Assert.That(RefMoe.SwitchCapacity(10, 1.25, 4), Is.EqualTo(4));   // 3.125
        Assert.That(RefMoe.SwitchCapacity(8, 1.0, 4), Is.EqualTo(2));
        Assert.That(RefMoe.SwitchCapacity(1, 1.0, 8), Is.EqualTo(1));
        Assert.Throws<ArgumentException>(() => RefMoe.SwitchCapacity(4, 0, 2));
        Assert.Throws<ArgumentException>(() => RefMoe.Route(new RefRouterSpec(RouterKind.Switch, 2, 2), [1, 2], 1));
    }

    [Test]
    public void NoisyTopKWithoutNoiseIsSoftmaxOverChosen()
    {
        // softplus(-200) ~ 1e-87: the noise vanishes, so h = logits and weights = softmax(3, 2).
        var r = RefMoe.Route(new RefRouterSpec(RouterKind.NoisyTopK, 3, 2, NoiseSeed: 9), [1, 2, 3], 1, noiseLogits: [-200, -200, -200]);
        Assert.That(r.ExpertIds, Is.EqualTo(new[] { 2, 1 }));
        Check.Close([0.7310585786f, 0.2689414214f], r.Weights, 1e-7, 0);
    }

    [Test]
    public void NoisyTopKAddsScaledNoise()
    {
        const int t = 3, e = 5, k = 2;
        const ulong seed = 1234;
        var logits = Data.Uniform(11, t * e, 0.5f);
        var noise = Data.Uniform(12, t * e, 2f);
        var r = RefMoe.Route(new RefRouterSpec(RouterKind.NoisyTopK, e, k, NoiseSeed: seed), logits, t, noiseLogits: noise);
        for (int tok = 0; tok < t; tok++)
        {
            var h = new double[e];
            for (int x = 0; x < e; x++)
                h[x] = logits[tok * e + x] + RefNoise.Normal(seed, tok, x) * Math.Log(1 + Math.Exp(noise[tok * e + x]));
            var order = Enumerable.Range(0, e).OrderByDescending(x => h[x]).ThenBy(x => x).Take(k).ToArray();
            Assert.That(r.ExpertIds.AsSpan(tok * k, k).ToArray(), Is.EqualTo(order), $"token {tok}");
            double w1 = 1 / (1 + Math.Exp(h[order[1]] - h[order[0]]));
            Check.Close([(float)w1, (float)(1 - w1)], r.Weights.AsSpan(tok * k, k), 1e-6, 0, $"token {tok}");
        }

        var other = RefMoe.Route(new RefRouterSpec(RouterKind.NoisyTopK, e, k, NoiseSeed: seed + 1), logits, t, noiseLogits: noise);
        Assert.That(other.Weights, Is.Not.EqualTo(r.Weights));
        Assert.Throws<ArgumentException>(() => RefMoe.Route(new RefRouterSpec(RouterKind.NoisyTopK, e, k), logits, t));
    }

    [Test]
    public void DeepSeekBiasChangesChoiceNotWeight()
    {
        // s = sigmoid(0, 1, 0, 0) = (0.5, 0.7310585786, 0.5, 0.5); bias lifts expert 0 to choice 1.0 > 0.731,
        // so the order is (0, 1), but the weights are the unbiased s.
        float[] logits = [0, 1, 0, 0], bias = [0.5f, 0, 0, 0];
        var raw = RefMoe.Route(new RefRouterSpec(RouterKind.DeepSeekV3, 4, 2, NormTopK: false, ScalingFactor: 2.5), logits, 1, bias: bias);
        Assert.That(raw.ExpertIds, Is.EqualTo(new[] { 0, 1 }));
        Check.Close([1.25f, 0.7310585786f * 2.5f], raw.Weights, 1e-7, 0);

        var norm = RefMoe.Route(new RefRouterSpec(RouterKind.DeepSeekV3, 4, 2), logits, 1, bias: bias);
        Check.Close([(float)(0.5 / 1.2310585786), (float)(0.7310585786 / 1.2310585786)], norm.Weights, 1e-7, 0);

        var top1 = RefMoe.Route(new RefRouterSpec(RouterKind.DeepSeekV3, 4, 1, NormTopK: false), logits, 1, bias: new float[4]);
        Assert.That(top1.ExpertIds, Is.EqualTo(new[] { 1 }));
        var biased = RefMoe.Route(new RefRouterSpec(RouterKind.DeepSeekV3, 4, 1, NormTopK: false), logits, 1, bias: bias);
        Assert.That(biased.ExpertIds, Is.EqualTo(new[] { 0 }));
        Check.Close([0.5f], biased.Weights, 1e-7, 0);
    }

    [Test]
    public void DeepSeekKeepsOnlyTheBestGroups()
    {
        // s = 0.5 everywhere, choice = (0.8, 0.8, 1.0, 0.5): group 0 sums 1.6 > group 1's 1.5, so the single best
        // expert 2 is excluded and the tie inside group 0 goes to expert 0 first.
        var spec = new RefRouterSpec(RouterKind.DeepSeekV3, 4, 2, Groups: 2, TopKGroups: 1);
        var r = RefMoe.Route(spec, [0, 0, 0, 0], 1, bias: [0.3f, 0.3f, 0.5f, 0f]);
        Assert.That(r.ExpertIds, Is.EqualTo(new[] { 0, 1 }));
        Check.Close([0.5f, 0.5f], r.Weights, 1e-7, 0);

        // Both groups kept: plain top-2 of choice.
        var both = RefMoe.Route(spec with { TopKGroups = 2 }, [0, 0, 0, 0], 1, bias: [0.3f, 0.3f, 0.5f, 0f]);
        Assert.That(both.ExpertIds, Is.EqualTo(new[] { 2, 0 }));
        Assert.Throws<ArgumentException>(() => RefMoe.Route(spec with { TopK = 3 }, [0, 0, 0, 0], 1, bias: new float[4]));
        Assert.Throws<ArgumentException>(() => RefMoe.Route(spec with { Groups = 3 }, [0, 0, 0, 0], 1, bias: new float[4]));
        Assert.Throws<ArgumentException>(() => RefMoe.Route(spec, [0, 0, 0, 0], 1));
    }

    [Test]
    public void RouteRejectsBadInput()
    {
        var spec = new RefRouterSpec(RouterKind.Mixtral, 3, 2);
        Assert.Throws<ArgumentException>(() => RefMoe.Route(spec, [1, 2], 1));
        Assert.Throws<ArgumentException>(() => RefMoe.Route(spec, [1, float.NaN, 2], 1));
        Assert.Throws<ArgumentException>(() => RefMoe.Route(spec with { TopK = 4 }, [1, 2, 3], 1));
        Assert.Throws<ArgumentException>(() => RefMoe.Route(spec with { TopK = 0 }, [1, 2, 3], 1));
    }
}
