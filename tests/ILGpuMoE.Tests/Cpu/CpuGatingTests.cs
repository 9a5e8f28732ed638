// cpu/gating against RefMoe.Route for every RouterKind: Mixtral, SoftmaxTopK, Switch with its capacity drops,
// NoisyTopK with noise logits, DeepSeekV3 with groups, the score-correction bias, NormTopK on and off and the scaling
// factor; shared slots (RouterSpec.WithSharedSlots: Qwen2-MoE's gate logit at column E, DeepSeek's ungated slots); ties
// (equal scores go to the lower id), from all-equal rows and from rows of small integers.
// Ids must equal the oracle's exactly, weights within 1e-5 relative; ids start as int.MinValue and weights as NaN.
// Inputs keep the scores of a row well apart (GatingTests.SeparatedLogits, DeepSeekInputs below) so that the kernel's
// float scores order them as the oracle's double ones do, except in the tie tests, where the ties are exact.
using ILGpuMoE.Cpu;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Moe.Gating;
using static ILGpuMoE.Tests.Cpu.CpuTestData;

namespace ILGpuMoE.Tests.Cpu;

public unsafe class CpuGatingTests
{
    private sealed record Result(int[] Ids, float[] Weights, int Dropped);

    private static Result Run(RouterSpec spec, float[] logits, int t, float[]? noise = null, float[]? bias = null)
    {
        int slots = spec.SlotsPerToken;
        Assert.That(logits.Length, Is.EqualTo(t * spec.LogitsPerToken), "test logits shape");
        var ids = Poison((long)t * slots);
        var weights = Nan((long)t * slots);
        int dropped;
        fixed (float* pl = logits, pn = noise, pb = bias, pw = weights)
        fixed (int* pi = ids)
            dropped = CpuKernels.Gating(spec, pl, pn, pb, pi, pw, t);
        return new Result(ids, weights, dropped);
    }

    private static RefRouting Want(RouterSpec spec, float[] logits, int t, float[]? noise = null, float[]? bias = null) =>
        RefMoe.Route(GatingTests.ToRef(spec), logits, t, noise ?? ReadOnlySpan<float>.Empty, bias ?? ReadOnlySpan<float>.Empty);

    /// <summary>Ids equal, weights within 1e-5 relative, for the tokens not in skip; the dropped count equal.</summary>
    private static void AssertMatches(RefRouting want, Result got, string what, bool[]? skip = null)
    {
        int k = want.TopK;
        for (int t = 0; t < want.Tokens; t++)
        {
            if (skip is not null && skip[t])
                continue;
            Assert.That(got.Ids.AsSpan(t * k, k).ToArray(), Is.EqualTo(want.ExpertIds.AsSpan(t * k, k).ToArray()), $"{what}: ids of token {t}");
            Check.Close(want.Weights.AsSpan(t * k, k), got.Weights.AsSpan(t * k, k), 1e-5, 1e-6, $"{what}: weights of token {t}");
        }

        Assert.That(got.Dropped, Is.EqualTo(want.Dropped), $"{what}: dropped count");
    }

    private static void Compare(RouterSpec spec, float[] logits, int t, float[]? noise = null, float[]? bias = null, bool[]? skip = null) =>
        AssertMatches(Want(spec, logits, t, noise, bias), Run(spec, logits, t, noise, bias), $"{spec} T={t}", skip);

    /// <summary>DeepSeek inputs whose choice values sigmoid(l) + bias are a shuffled grid in [0.25, 0.75] of step 0.5/E
    /// with jitter (|bias| &lt;= 0.2 keeps sigmoid(l) inside (0, 1)).</summary>
    private static (float[] Logits, float[] Bias) DeepSeekInputs(int seed, int t, int experts)
    {
        var rng = new Random(seed);
        var bias = Data.Uniform(seed + 1, experts, 0.2f);
        var logits = new float[t * experts];
        var perm = Enumerable.Range(0, experts).ToArray();
        for (int i = 0; i < t; i++)
        {
            rng.Shuffle(perm);
            for (int e = 0; e < experts; e++)
            {
                double c = 0.25 + 0.5 * (perm[e] + 0.5 + 0.3 * (rng.NextDouble() - 0.5)) / experts;
                double s = c - bias[e];
                logits[i * experts + e] = (float)Math.Log(s / (1 - s));
            }
        }

        return (logits, bias);
    }

    // ---- each mode against the oracle ----------------------------------------------------------------------------

    [TestCase(RouterKind.Mixtral, 1, 8, 2)]
    [TestCase(RouterKind.Mixtral, 17, 8, 2)]
    [TestCase(RouterKind.Mixtral, 3, 16, 16)]
    [TestCase(RouterKind.Mixtral, 5, 128, 8)]
    [TestCase(RouterKind.SoftmaxTopK, 1, 4, 1)]
    [TestCase(RouterKind.SoftmaxTopK, 17, 16, 4)]
    [TestCase(RouterKind.SoftmaxTopK, 3, 60, 4)]
    [TestCase(RouterKind.SoftmaxTopK, 3, 8, 8)]
    public void SoftmaxModesMatchReference(RouterKind kind, int t, int experts, int k) =>
        Compare(new RouterSpec(kind, experts, k), GatingTests.SeparatedLogits(100 + t * 7 + experts, t, experts), t);

    [TestCase(69, 8, 1.0, true)]
    [TestCase(17, 4, 4.0, false)]
    [TestCase(17, 64, 1.25, true)]
    [TestCase(1, 4, 1.0, false)]
    public void SwitchMatchesReference(int t, int experts, double capacityFactor, bool expectDrops)
    {
        var spec = RouterSpec.Switch(experts, capacityFactor);
        var logits = GatingTests.SeparatedLogits(300 + t + experts, t, experts);
        Assert.That(Want(spec, logits, t).Dropped > 0, Is.EqualTo(expectDrops), "the case does (not) drop tokens as intended");
        Compare(spec, logits, t);
    }

    /// <summary>Every token prefers expert 2: capacity ceil(17 / 4) = 5 keeps tokens 0..4 (token order) and drops 12 (id -1, weight 0).</summary>
    [Test]
    public void SwitchEveryTokenToOneExpert()
    {
        const int t = 17, experts = 4;
        var logits = GatingTests.SeparatedLogits(41, t, experts);
        for (int i = 0; i < t; i++)
            logits[i * experts + 2] = 10f;
        var spec = RouterSpec.Switch(experts, 1.0);
        var got = Run(spec, logits, t);
        int capacity = spec.SwitchCapacity(t);
        Assert.That(got.Ids, Is.EqualTo(Enumerable.Range(0, t).Select(i => i < capacity ? 2 : -1).ToArray()), "ids");
        Assert.That(got.Weights.Skip(capacity), Is.All.EqualTo(0f), "dropped weights");
        AssertMatches(Want(spec, logits, t), got, $"{spec}");
    }

    [TestCase(17, 8, 2, 7UL)]
    [TestCase(69, 4, 2, 123456789UL)]
    [TestCase(17, 16, 4, 11UL)]
    [TestCase(3, 64, 8, 0xDEADBEEFUL)]
    public void NoisyTopKMatchesReference(int t, int experts, int k, ulong seed)
    {
        var spec = RouterSpec.NoisyTopK(experts, k, seed);
        var logits = Data.Gaussian(400 + t + experts, t * experts);
        var noise = Data.Gaussian(500 + t + experts, t * experts);

        // The kernel's scores are float: skip tokens whose top K+1 scores (double) are within 1e-4 of each other.
        var skip = new bool[t];
        for (int i = 0; i < t; i++)
        {
            var h = Enumerable.Range(0, experts)
                .Select(e => logits[i * experts + e] + RefNoise.Normal(seed, i, e) * RefMoe.Softplus(noise[i * experts + e]))
                .OrderDescending().Take(k + 1).ToArray();
            for (int j = 1; j < h.Length; j++)
                skip[i] |= h[j - 1] - h[j] < 1e-4;
        }

        Assert.That(skip.Count(s => s), Is.LessThanOrEqualTo(t / 4), "too many near-ties for a meaningful test");
        var want = Want(spec, logits, t, noise);
        if (t >= 17)
        {
            // The noise must change picks: a kernel that dropped or misscaled it fails on ids.
            var plain = Want(RouterSpec.SoftmaxTopK(experts, k), logits, t);
            int changed = Enumerable.Range(0, t).Count(i => !want.ExpertIds.AsSpan(i * k, k).SequenceEqual(plain.ExpertIds.AsSpan(i * k, k)));
            Assert.That(changed, Is.GreaterThanOrEqualTo(t / 4), "noise changes the picks");
        }

        AssertMatches(want, Run(spec, logits, t, noise), $"{spec}", skip);
    }

    [TestCase(17, 16, 4, 4, 2, true, 1.0)]
    [TestCase(3, 64, 8, 8, 4, true, 2.5)]
    [TestCase(69, 8, 2, 2, 1, false, 1.0)]
    [TestCase(17, 16, 4, 16, 4, true, 1.0)]
    [TestCase(3, 4, 4, 2, 2, false, 0.5)]
    [TestCase(5, 256, 8, 8, 4, true, 2.5)]
    [TestCase(4, 12, 3, 1, 1, false, 1.5)]
    public void DeepSeekV3MatchesReference(int t, int experts, int k, int groups, int topKGroups, bool norm, double scale)
    {
        var spec = RouterSpec.DeepSeekV3(experts, k, groups, topKGroups, norm, scale);
        var (logits, bias) = DeepSeekInputs(600 + t + experts + groups, t, experts);
        Compare(spec, logits, t, bias: bias);
    }

    /// <summary>Group choice matters: without the group limit (one group) the same inputs pick other experts.</summary>
    [Test]
    public void DeepSeekV3GroupLimitChangesThePicks()
    {
        const int t = 17, experts = 16, k = 4;
        var (logits, bias) = DeepSeekInputs(650, t, experts);
        var grouped = RouterSpec.DeepSeekV3(experts, k, 4, 1);
        var want = Want(grouped, logits, t, bias: bias);
        var free = Want(RouterSpec.DeepSeekV3(experts, k, 1, 1), logits, t, bias: bias);
        Assert.That(want.ExpertIds, Is.Not.EqualTo(free.ExpertIds), "the group limit must matter in this case");
        AssertMatches(want, Run(grouped, logits, t, bias: bias), $"{grouped}");
    }

    // ---- shared slots --------------------------------------------------------------------------------------------

    /// <summary>Qwen2-MoE: logits rows E + 1 wide (the shared gate's logit last), slots K..K+m-1 are experts E..E+m-1 at sigmoid(logit[E]).</summary>
    [TestCase(RouterKind.SoftmaxTopK, 3, 60, 4, 4)]
    [TestCase(RouterKind.SoftmaxTopK, 1, 60, 4, 4)]
    [TestCase(RouterKind.Mixtral, 5, 8, 2, 3)]
    [TestCase(RouterKind.SoftmaxTopK, 2, 7, 7, 2)]
    public void GatedSharedSlotsMatchReference(RouterKind kind, int t, int experts, int k, int shared)
    {
        var spec = new RouterSpec(kind, experts, k).WithSharedSlots(shared);
        Assert.That((spec.LogitsPerToken, spec.SlotsPerToken), Is.EqualTo((experts + 1, k + shared)));
        var logits = GatingTests.SeparatedLogits(700 + t * 7 + experts + shared, t, experts + 1);
        var got = Run(spec, logits, t);
        for (int i = 0; i < t; i++)
            Assert.That(got.Ids.AsSpan(i * (k + shared) + k, shared).ToArray(), Is.EqualTo(Enumerable.Range(experts, shared).ToArray()), $"shared ids of token {i}");
        AssertMatches(Want(spec, logits, t), got, $"{spec}");
    }

    /// <summary>DeepSeek's shared experts: logits stay E wide, the shared slots weigh 1 (neither normalised nor scaled).</summary>
    [TestCase(3, 16, 4, 4, 2, 1)]
    [TestCase(1, 32, 6, 4, 2, 2)]
    [TestCase(2, 8, 1, 2, 1, 3)]
    public void DeepSeekSharedSlotsMatchReference(int t, int experts, int k, int groups, int keep, int shared)
    {
        var spec = RouterSpec.DeepSeekV3(experts, k, groups, keep, normTopK: true, scalingFactor: 2.5).WithSharedSlots(shared);
        Assert.That((spec.LogitsPerToken, spec.SlotsPerToken), Is.EqualTo((experts, k + shared)));
        var (logits, bias) = DeepSeekInputs(900 + t * 7 + experts + shared, t, experts);
        Compare(spec, logits, t, bias: bias);
    }

    // ---- ties ----------------------------------------------------------------------------------------------------

    /// <summary>All scores of a row equal: every mode picks ids 0..K-1 in order (Switch: expert 0, then its capacity drops).</summary>
    [Test]
    public void AllEqualScoresPickTheLowestIds()
    {
        const int t = 3, experts = 8, k = 3;
        var flat = Enumerable.Repeat(0.5f, t * experts).ToArray();
        var lowest = Enumerable.Range(0, t).SelectMany(_ => Enumerable.Range(0, k)).ToArray();
        foreach (var spec in new[] { RouterSpec.Mixtral(experts, k), RouterSpec.SoftmaxTopK(experts, k), RouterSpec.DeepSeekV3(experts, k, 4, 2) })
        {
            var bias = spec.Kind == RouterKind.DeepSeekV3 ? new float[experts] : null;
            var got = Run(spec, flat, t, bias: bias);
            Assert.That(got.Ids, Is.EqualTo(lowest), $"{spec}");
            AssertMatches(Want(spec, flat, t, bias: bias), got, $"{spec}");
        }

        var sw = RouterSpec.Switch(2, 1.0);
        var swLogits = Enumerable.Repeat(1f, t * 2).ToArray();
        var swGot = Run(sw, swLogits, t);
        Assert.That(swGot.Ids.Where(id => id >= 0), Is.All.EqualTo(0), "Switch: expert 0 until its capacity");
        AssertMatches(Want(sw, swLogits, t), swGot, $"{sw}");
    }

    /// <summary>Rows of small integers (many exact ties at every rank) in every tie-able mode, against the oracle's lower-id-first order.</summary>
    [TestCase(RouterKind.Mixtral)]
    [TestCase(RouterKind.SoftmaxTopK)]
    [TestCase(RouterKind.Switch)]
    [TestCase(RouterKind.DeepSeekV3)]
    public void IntegerLogitsTieTowardTheLowerId(RouterKind kind)
    {
        const int t = 23, experts = 12;
        // DeepSeek's group scores add two sigmoids: from logits 0..2 no two different pairs have the same sum (from -2..2,
        // s(1) + s(-1) = s(0) + s(0) = 1 exactly in real numbers, and float and double round that tie apart differently).
        int low = kind == RouterKind.DeepSeekV3 ? 0 : -2;
        var logits = Data.Ints(1000 + (int)kind, t * experts, low, 3).Select(v => (float)v).ToArray();
        var spec = kind switch
        {
            RouterKind.Mixtral => RouterSpec.Mixtral(experts, 4),
            RouterKind.SoftmaxTopK => RouterSpec.SoftmaxTopK(experts, 5),
            RouterKind.Switch => RouterSpec.Switch(experts, 2.0),
            RouterKind.DeepSeekV3 => RouterSpec.DeepSeekV3(experts, 3, 4, 2, normTopK: true, scalingFactor: 1.5),
            RouterKind.NoisyTopK => throw new ArgumentOutOfRangeException(nameof(kind), kind, "noise breaks ties"),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown router kind"),
        };
        var bias = kind == RouterKind.DeepSeekV3 ? new float[experts] : null;
        var want = Want(spec, logits, t, bias: bias);
        var got = Run(spec, logits, t, bias: bias);
        AssertMatches(want, got, $"{spec}");

        // The property itself: within a token, equal logits come out in ascending id.
        int slots = spec.SlotsPerToken;
        for (int i = 0; i < t; i++)
        {
            for (int j = 1; j < slots; j++)
            {
                int a = got.Ids[i * slots + j - 1], b = got.Ids[i * slots + j];
                if (a >= 0 && b >= 0 && logits[i * experts + a] == logits[i * experts + b])
                    Assert.That(a, Is.LessThan(b), $"token {i}, slots {j - 1} and {j}");
            }
        }
    }

    /// <summary>DeepSeek group tie: groups {0,1} and {2,3} both score 1.0; the lower group is kept although expert 2 is the best inside.</summary>
    [Test]
    public void DeepSeekGroupTieKeepsTheLowerGroup()
    {
        float ln3 = (float)Math.Log(3);
        var spec = RouterSpec.DeepSeekV3(4, 1, 2, 1);
        float[] logits = [0f, 0f, ln3, -ln3];
        float[] bias = [0f, 0f, -0.25f, 0.25f];
        var got = Run(spec, logits, 1, bias: bias);
        Assert.That(got.Ids[0], Is.LessThan(2), "an expert of group 0");
        AssertMatches(Want(spec, logits, 1, bias: bias), got, $"{spec}");
    }

    [Test]
    public void ZeroTokensRouteNothing()
    {
        foreach (var spec in new[] { RouterSpec.Switch(4, 1.0), RouterSpec.Mixtral(4, 2) })
            Assert.That(Run(spec, [], 0).Dropped, Is.Zero, $"{spec}");
    }

    // ---- bad input -----------------------------------------------------------------------------------------------

    [Test]
    public void RefusesMissingInputsAndBadTopK()
    {
        var logits = Data.Uniform(1100, 8);
        Assert.Throws<ArgumentException>(() => Run(RouterSpec.NoisyTopK(8, 2, 1), logits, 1), "NoisyTopK without noise logits");
        Assert.Throws<ArgumentException>(() => Run(RouterSpec.DeepSeekV3(8, 2, 2, 1), logits, 1), "DeepSeekV3 without bias");
        Assert.Throws<ArgumentException>(() => Run(RouterSpec.Mixtral(8, 9), logits, 1), "K > E");
        Assert.Throws<ArgumentException>(() => Run(RouterSpec.Mixtral(8, 0), logits, 1), "K = 0");
        Assert.Throws<ArgumentException>(() => Run(new RouterSpec((RouterKind)9, 8, 2), logits, 1), "unknown kind");
    }

    /// <summary>
    /// Specs the oracle refuses (and the GPU launcher with it) are refused, not routed into something: Switch with K = 2
    /// or a capacity factor of 0, shared slots on Switch / NoisyTopK, DeepSeek groups that do not divide E, more kept
    /// groups than groups, K above the kept groups' experts.
    /// </summary>
    [Test]
    public void RefusesSpecsTheOracleRefuses()
    {
        const int t = 2, experts = 8;
        var specs = new[]
        {
            new RouterSpec(RouterKind.Switch, experts, 2),
            RouterSpec.Switch(experts, 0),
            RouterSpec.Switch(experts, 1.0).WithSharedSlots(1),
            RouterSpec.NoisyTopK(experts, 2, 1).WithSharedSlots(1),
            RouterSpec.DeepSeekV3(experts, 2, 3, 1),
            RouterSpec.DeepSeekV3(experts, 2, 4, 5),
            RouterSpec.DeepSeekV3(experts, 5, 4, 2),
            RouterSpec.DeepSeekV3(experts, 2, 0, 1),
        };
        foreach (var spec in specs)
        {
            var logits = GatingTests.SeparatedLogits(1200, t, spec.LogitsPerToken);
            var noise = Data.Gaussian(1201, t * experts);
            var bias = Data.Uniform(1202, experts, 0.1f);
            Assert.Throws<ArgumentException>(() => Want(spec, logits, t, noise, bias), $"oracle: {spec}");
            Assert.Throws<ArgumentException>(() => Run(spec, logits, t, noise, bias), $"cpu/gating: {spec}");
        }
    }
}
