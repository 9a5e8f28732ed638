using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Moe.Gating;

/// <summary>moe/gating V1 and V2 against RefMoe.Route, hand-computed cases, ties, Switch capacity, determinism.</summary>
[TestFixture]
public class GatingTests
{
    private GatingKernel _v1 = null!;
    private GatingKernel _v2 = null!;

    [OneTimeSetUp]
    public void Load()
    {
        _v1 = GatingKernel.Create(TestDevice.Accelerator, GatingVersion.V1);
        _v2 = GatingKernel.Create(TestDevice.Accelerator, GatingVersion.V2);
    }

    [OneTimeTearDown]
    public void Unload()
    {
        _v1.Dispose();
        _v2.Dispose();
    }

    private GatingKernel Kernel(GatingVersion version) => version == GatingVersion.V1 ? _v1 : _v2;

    private sealed record Result(int[] Ids, float[] Weights, int Dropped);

    /// <summary>Runs the kernel with NaN / int.MinValue poisoned outputs and a poisoned dropped counter.</summary>
    private Result Run(GatingVersion version, RouterSpec spec, float[] logits, int tokens, float[]? noise = null, float[]? bias = null) =>
        Run(Kernel(version), spec, logits, tokens, noise, bias);

    private static Result Run(GatingKernel kernel, RouterSpec spec, float[] logits, int tokens, float[]? noise = null, float[]? bias = null)
    {
        var acc = TestDevice.Accelerator;
        using var l = TestDevice.Upload(logits);
        using var ids = TestDevice.PoisonedInts((long)tokens * spec.SlotsPerToken);
        using var w = TestDevice.PoisonedFloats((long)tokens * spec.SlotsPerToken);
        using var dropped = TestDevice.PoisonedInts(1);
        using var n = noise is null ? null : TestDevice.Upload(noise);
        using var b = bias is null ? null : TestDevice.Upload(bias);
        kernel.Launch(acc.DefaultStream, spec, l.View, ids.View, w.View, tokens,
            n is null ? default : n.View, b is null ? default : b.View, dropped.View);
        acc.Synchronize();
        return new Result(ids.GetAsArray1D(), w.GetAsArray1D(), dropped.GetAsArray1D()[0]);
    }

    internal static RefRouterSpec ToRef(RouterSpec s) => new(s.Kind, s.Experts, s.TopK, s.CapacityFactor,
        s.NoiseSeed, s.Groups, s.TopKGroups, s.NormTopK, s.ScalingFactor, s.SharedSlots);

    // ---- inputs -----------------------------------------------------------------------------------------------

    /// <summary>[T, E] logits in [-4, 4] whose values in a row are a shuffled grid of step 8/E with jitter of at most
    /// 0.3 step: no two are closer than 0.4 step, so the order is the same in float and in double.</summary>
    internal static float[] SeparatedLogits(int seed, int tokens, int experts)
    {
        var rng = new Random(seed);
        var logits = new float[tokens * experts];
        var perm = Enumerable.Range(0, experts).ToArray();
        for (int t = 0; t < tokens; t++)
        {
            rng.Shuffle(perm);
            for (int e = 0; e < experts; e++)
                logits[t * experts + e] = (float)((perm[e] + 0.5 + 0.3 * (rng.NextDouble() - 0.5)) * 8.0 / experts - 4.0);
        }

        return logits;
    }

    /// <summary>DeepSeek inputs whose choice values c = sigmoid(l) + bias are a shuffled grid in [0.25, 0.75] of step
    /// 0.5/E with jitter (|bias| &lt;= 0.2 keeps s = c - bias inside (0, 1)); group scores differ by random amounts.</summary>
    private static (float[] Logits, float[] Bias) DeepSeekInputs(int seed, int tokens, int experts)
    {
        var rng = new Random(seed);
        var bias = Data.Uniform(seed + 1, experts, 0.2f);
        var logits = new float[tokens * experts];
        var perm = Enumerable.Range(0, experts).ToArray();
        for (int t = 0; t < tokens; t++)
        {
            rng.Shuffle(perm);
            for (int e = 0; e < experts; e++)
            {
                double c = 0.25 + 0.5 * (perm[e] + 0.5 + 0.3 * (rng.NextDouble() - 0.5)) / experts;
                double s = c - bias[e];
                logits[t * experts + e] = (float)Math.Log(s / (1 - s));
            }
        }

        return (logits, bias);
    }

    // ---- comparison -------------------------------------------------------------------------------------------

    /// <summary>Ids equal exactly and weights within 1e-5 relative, for the tokens not in skip.</summary>
    private static void AssertMatches(RefRouting expected, Result actual, int experts, string what, bool[]? skip = null)
    {
        int k = expected.TopK;
        for (int t = 0; t < expected.Tokens; t++)
        {
            if (skip is not null && skip[t])
                continue;
            for (int i = 0; i < k; i++)
            {
                int got = actual.Ids[t * k + i];
                Assert.That(got, Is.InRange(-1, experts - 1), $"{what}: id [{t}, {i}] out of range");
                Assert.That(got, Is.EqualTo(expected.ExpertIds[t * k + i]), $"{what}: id [{t}, {i}]");
            }

            Check.Close(expected.Weights.AsSpan(t * k, k), actual.Weights.AsSpan(t * k, k), 1e-5, 1e-6, $"{what}: weights of token {t}");
        }

        Assert.That(actual.Dropped, Is.EqualTo(expected.Dropped), $"{what}: dropped count");
    }

    private static readonly GatingVersion[] Versions = [GatingVersion.V1, GatingVersion.V2];

    // ---- against the reference --------------------------------------------------------------------------------

    [TestCase(1, 8, 2)]
    [TestCase(3, 4, 1)]
    [TestCase(17, 8, 2)]
    [TestCase(69, 8, 2)]
    [TestCase(17, 64, 8)]
    [TestCase(3, 4, 4)]
    [TestCase(3, 16, 16)]
    public void MixtralMatchesReference(int tokens, int experts, int k) =>
        CompareSoftmaxMode(RouterSpec.Mixtral(experts, k), tokens, 100 + tokens * 7 + experts);

    [TestCase(1, 4, 1)]
    [TestCase(17, 16, 4)]
    [TestCase(17, 64, 8)]
    [TestCase(3, 8, 8)]
    public void SoftmaxTopKMatchesReference(int tokens, int experts, int k) =>
        CompareSoftmaxMode(RouterSpec.SoftmaxTopK(experts, k), tokens, 200 + tokens * 7 + experts);

    private void CompareSoftmaxMode(RouterSpec spec, int tokens, int seed)
    {
        var logits = SeparatedLogits(seed, tokens, spec.Experts);
        var expected = RefMoe.Route(ToRef(spec), logits, tokens);
        foreach (var v in Versions)
            AssertMatches(expected, Run(v, spec, logits, tokens), spec.Experts, $"{v} {spec} T={tokens}");
    }

    // Qwen3-MoE's E = 128, K = 8 and Qwen1.5-MoE's non-power-of-two E = 60, K = 4.
    [TestCase(RouterKind.Mixtral, 3, 128, 8)]
    [TestCase(RouterKind.SoftmaxTopK, 5, 128, 8)]
    [TestCase(RouterKind.SoftmaxTopK, 3, 60, 4)]
    [TestCase(RouterKind.Mixtral, 2, 60, 4)]
    public void QwenShapesMatchReference(RouterKind kind, int tokens, int experts, int k) =>
        CompareSoftmaxMode(new RouterSpec(kind, experts, k), tokens, 250 + tokens * 7 + experts);

    // ---- shared-expert slots (Qwen2-MoE) ----------------------------------------------------------------------

    // Qwen1.5-MoE: E = 60, K = 4 and 4 shared slots (Fs = 5632 = 4 x F = 1408); odd counts of E, K and m.
    [TestCase(RouterKind.SoftmaxTopK, 3, 60, 4, 4)]
    [TestCase(RouterKind.SoftmaxTopK, 1, 60, 4, 4)]
    [TestCase(RouterKind.Mixtral, 5, 8, 2, 3)]
    [TestCase(RouterKind.SoftmaxTopK, 17, 16, 4, 1)]
    [TestCase(RouterKind.SoftmaxTopK, 2, 7, 7, 2)]
    [TestCase(RouterKind.Mixtral, 3, 64, 8, 8)]
    public void SharedSlotsMatchReference(RouterKind kind, int tokens, int experts, int k, int shared)
    {
        var spec = new RouterSpec(kind, experts, k, sharedSlots: shared);
        Assert.That((spec.LogitsPerToken, spec.SlotsPerToken), Is.EqualTo((experts + 1, k + shared)));
        // E + 1 separated values per row: the last one is the shared-expert gate's logit.
        var logits = SeparatedLogits(700 + tokens * 7 + experts + shared, tokens, experts + 1);
        var expected = RefMoe.Route(ToRef(spec), logits, tokens);
        Assert.That(expected.TopK, Is.EqualTo(k + shared), "reference slots per token");
        // The routed slots are exactly those of the same mode over the first E logits alone.
        var routedOnly = RefMoe.Route(ToRef(new RouterSpec(kind, experts, k)),
            Enumerable.Range(0, tokens).SelectMany(t => logits.Skip(t * (experts + 1)).Take(experts)).ToArray(), tokens);
        for (int t = 0; t < tokens; t++)
        {
            Assert.That(expected.ExpertIds.AsSpan(t * (k + shared), k).ToArray(), Is.EqualTo(routedOnly.ExpertIds.AsSpan(t * k, k).ToArray()), $"reference routed ids of token {t}");
            Assert.That(expected.ExpertIds.AsSpan(t * (k + shared) + k, shared).ToArray(), Is.EqualTo(Enumerable.Range(experts, shared).ToArray()), $"reference shared ids of token {t}");
        }

        foreach (var v in Versions)
            AssertMatches(expected, Run(v, spec, logits, tokens), experts + shared, $"{v} {spec} T={tokens}");
    }

    [Test]
    public void SharedSlotsByHand()
    {
        // Row [1, 3, 2, 0 | ln 3], E = 4, K = 2, m = 2, SoftmaxTopK: the routed slots are SoftmaxTopKByHand's (experts 1, 2
        // with 0.6439142599, 0.2368828181: the gate logit takes no part in the softmax); slots 2, 3 are experts 4, 5 with
        // sigmoid(ln 3) = 1 / (1 + 1/3) = 0.75. Second token [0, 0, 0, 5 | -100]: Mixtral top-2 = 3, then 0 (tie toward
        // the lower id): e^5 / (e^5 + 1) = 1 / (1 + e^-5) = 0.9933071491 and 0.0066928509; sigmoid(-100) ~ 3.7e-44 -> 0.
        float ln3 = (float)Math.Log(3);
        foreach (var v in Versions)
        {
            var got = Run(v, RouterSpec.SoftmaxTopK(4, 2).WithSharedSlots(2), [1f, 3f, 2f, 0f, ln3], 1);
            Assert.That(got.Ids, Is.EqualTo(new[] { 1, 2, 4, 5 }), $"{v}");
            Check.Close([0.6439142599f, 0.2368828181f, 0.75f, 0.75f], got.Weights, what: $"{v}");

            var mix = Run(v, RouterSpec.Mixtral(4, 2).WithSharedSlots(2), [0f, 0f, 0f, 5f, -100f], 1);
            Assert.That(mix.Ids, Is.EqualTo(new[] { 3, 0, 4, 5 }), $"{v} Mixtral");
            Check.Close([0.9933071491f, 0.0066928509f, 0f, 0f], mix.Weights, what: $"{v} Mixtral");
        }
    }

    // DeepSeek-V3's shared experts: logits rows stay E wide, the m shared slots weigh exactly 1 (neither normalised nor
    // scaled by routed_scaling_factor); the routed slots are the DeepSeekV3 mode's own. Groups of 4 and 8, K = 1..6.
    [TestCase(3, 16, 4, 4, 2, 1)]
    [TestCase(1, 32, 6, 4, 2, 2)]
    [TestCase(5, 64, 8, 8, 4, 1)]
    [TestCase(2, 8, 1, 2, 1, 3)]
    public void DeepSeekSharedSlotsMatchReference(int tokens, int experts, int k, int groups, int keep, int shared)
    {
        var spec = RouterSpec.DeepSeekV3(experts, k, groups, keep, normTopK: true, scalingFactor: 2.5).WithSharedSlots(shared);
        Assert.That((spec.LogitsPerToken, spec.SlotsPerToken), Is.EqualTo((experts, k + shared)));
        var logits = SeparatedLogits(900 + tokens * 7 + experts + shared, tokens, experts);
        var rng = new Random(17 + experts);
        var bias = Enumerable.Range(0, experts).Select(_ => (float)(rng.NextDouble() * 0.3 - 0.1)).ToArray();
        var expected = RefMoe.Route(ToRef(spec), logits, tokens, [], bias);
        var routedOnly = RefMoe.Route(ToRef(RouterSpec.DeepSeekV3(experts, k, groups, keep, normTopK: true, scalingFactor: 2.5)), logits, tokens, [], bias);
        for (int t = 0; t < tokens; t++)
        {
            Assert.That(expected.ExpertIds.AsSpan(t * (k + shared), k).ToArray(), Is.EqualTo(routedOnly.ExpertIds.AsSpan(t * k, k).ToArray()), $"reference routed ids of token {t}");
            Assert.That(expected.Weights.AsSpan(t * (k + shared) + k, shared).ToArray(), Is.EqualTo(Enumerable.Repeat(1f, shared).ToArray()), $"reference shared weights of token {t}");
        }

        foreach (var v in Versions)
            AssertMatches(expected, Run(v, spec, logits, tokens, bias: bias), experts + shared, $"{v} {spec} T={tokens}");
    }

    [Test]
    public void SharedSlotsRefusedWhereUndefined()
    {
        var acc = TestDevice.Accelerator;
        using var logits = TestDevice.Upload(new float[3 * 9]);
        using var ids = TestDevice.PoisonedInts(3 * 8);
        using var w = TestDevice.PoisonedFloats(3 * 8);
        void Launch(RouterSpec spec) => _v1.Launch(acc.DefaultStream, spec, logits.View, ids.View, w.View, 3, logits.View, logits.View);

        foreach (var spec in new[] { RouterSpec.Switch(8, 1.0), RouterSpec.NoisyTopK(8, 2, 1) })
        {
            var e = Assert.Throws<ArgumentException>(() => Launch(spec.WithSharedSlots(1)), $"{spec.Kind}")!;
            Assert.That(e.Message, Does.Contain("shared-expert slots"), $"{spec.Kind}");
            Assert.Throws<ArgumentException>(() => RefMoe.Route(ToRef(spec.WithSharedSlots(1)), new float[9], 1, new float[9], new float[8]), $"reference {spec.Kind}");
        }

        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(8, 2).WithSharedSlots(-1)), "negative m");
        // K + m = 8 slots fit 3 tokens; 9 slots do not; E + 1 = 9 logits per token fit exactly, 10 do not.
        Launch(RouterSpec.Mixtral(8, 2).WithSharedSlots(6));
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(8, 2).WithSharedSlots(7)), "ids too short for K + m");
        var shortLogits = Assert.Throws<ArgumentException>(() => _v1.Launch(acc.DefaultStream, RouterSpec.Mixtral(9, 2).WithSharedSlots(1),
            logits.View, ids.View, w.View, 3))!;
        Assert.That(shortLogits.Message, Does.Contain("[T, E + 1]"));
    }

    [TestCase(69, 8, 1.0, true)]
    [TestCase(17, 4, 4.0, false)]
    [TestCase(3, 16, 1.0, false)]
    [TestCase(1, 4, 1.0, false)]
    [TestCase(17, 64, 1.25, true)]
    public void SwitchMatchesReference(int tokens, int experts, double capacityFactor, bool expectDrops)
    {
        var spec = RouterSpec.Switch(experts, capacityFactor);
        var logits = SeparatedLogits(300 + tokens + experts, tokens, experts);
        var expected = RefMoe.Route(ToRef(spec), logits, tokens);
        Assert.That(expected.Dropped > 0, Is.EqualTo(expectDrops), "the case does (not) exercise drops as intended");
        foreach (var v in Versions)
            AssertMatches(expected, Run(v, spec, logits, tokens), experts, $"{v} {spec} T={tokens}");
    }

    /// <summary>Every token prefers expert 2 (an edge case: the other experts get none): capacity ceil(17 * 1 / 4) = 5,
    /// so tokens 0..4 keep expert 2 and the other 12 are dropped.</summary>
    [Test]
    public void SwitchEveryTokenToOneExpert()
    {
        const int tokens = 17, experts = 4;
        var logits = SeparatedLogits(41, tokens, experts);
        for (int t = 0; t < tokens; t++)
            logits[t * experts + 2] = 10f;
        var spec = RouterSpec.Switch(experts, 1.0);
        var expected = RefMoe.Route(ToRef(spec), logits, tokens);
        foreach (var v in Versions)
        {
            var got = Run(v, spec, logits, tokens);
            Assert.That(got.Ids, Is.EqualTo(Enumerable.Range(0, tokens).Select(t => t < 5 ? 2 : -1).ToArray()), $"{v} ids");
            Assert.That(got.Dropped, Is.EqualTo(12), $"{v} dropped");
            Assert.That(got.Weights.Skip(5), Is.All.EqualTo(0f), $"{v} dropped weights");
            AssertMatches(expected, got, experts, $"{v} {spec}");
        }
    }

    [TestCase(17, 8, 2, 7UL)]
    [TestCase(69, 4, 2, 123456789UL)]
    [TestCase(17, 16, 4, 11UL)]
    [TestCase(3, 64, 8, 0xDEADBEEFUL)]
    [TestCase(1, 4, 4, 1UL)]
    public void NoisyTopKMatchesReference(int tokens, int experts, int k, ulong seed)
    {
        var spec = RouterSpec.NoisyTopK(experts, k, seed);
        var logits = Data.Gaussian(400 + tokens + experts, tokens * experts);
        var noise = Data.Gaussian(500 + tokens + experts, tokens * experts);
        var expected = RefMoe.Route(ToRef(spec), logits, tokens, noise);

        // The kernel keeps h in float: only compare tokens whose top K+1 values of h (in double) are 1e-4 apart.
        var skip = new bool[tokens];
        for (int t = 0; t < tokens; t++)
        {
            var h = Enumerable.Range(0, experts).Select(e =>
            {
                double x = noise[t * experts + e];
                double softplus = Math.Max(x, 0) + Math.Log(1 + Math.Exp(-Math.Abs(x)));
                return logits[t * experts + e] + RefNoise.Normal(seed, t, e) * softplus;
            }).OrderDescending().Take(k + 1).ToArray();
            for (int i = 1; i < h.Length; i++)
                skip[t] |= h[i - 1] - h[i] < 1e-4;
        }

        Assert.That(skip.Count(s => s), Is.LessThanOrEqualTo(tokens / 4), "too many near-ties for a meaningful test");
        // The noise must matter: against the noise-free top-K of the logits, the picks of a quarter of the tokens change
        // (so a kernel that dropped the noise term, or scaled it wrongly, fails on ids, not only on weights).
        if (tokens >= 17)
        {
            var plain = RefMoe.Route(ToRef(RouterSpec.SoftmaxTopK(experts, k)), logits, tokens);
            int changed = Enumerable.Range(0, tokens).Count(t => !expected.ExpertIds.AsSpan(t * k, k).SequenceEqual(plain.ExpertIds.AsSpan(t * k, k)));
            Assert.That(changed, Is.GreaterThanOrEqualTo(tokens / 4), "noise changes the picks");
        }
        foreach (var v in Versions)
        {
            var got = Run(v, spec, logits, tokens, noise);
            AssertMatches(expected, got, experts, $"{v} {spec} T={tokens}", skip);
        }
    }

    [TestCase(17, 16, 4, 4, 2, true, 1.0)]
    [TestCase(3, 64, 8, 8, 4, true, 2.5)]
    [TestCase(69, 8, 2, 2, 1, false, 1.0)]
    [TestCase(17, 16, 4, 16, 4, true, 1.0)]
    [TestCase(3, 4, 4, 2, 2, false, 0.5)]
    [TestCase(5, 256, 8, 8, 4, true, 2.5)]
    public void DeepSeekV3MatchesReference(int tokens, int experts, int k, int groups, int topKGroups, bool norm, double scale)
    {
        var spec = RouterSpec.DeepSeekV3(experts, k, groups, topKGroups, norm, scale);
        var (logits, bias) = DeepSeekInputs(600 + tokens + experts + groups, tokens, experts);
        var expected = RefMoe.Route(ToRef(spec), logits, tokens, default, bias);
        foreach (var v in Versions)
            AssertMatches(expected, Run(v, spec, logits, tokens, bias: bias), experts, $"{v} {spec} T={tokens}");
    }

    /// <summary>V2 with 8 warps (tokens) per group, the GPU launch shape: 17 tokens leave 7 idle warps in the last group,
    /// which must still pass DeepSeek's warp barriers and write nothing; each warp uses its own shared slice.</summary>
    [Test]
    public void V2EightWarpsPerGroupMatchesReference()
    {
        using var wide = GatingKernel.Create(TestDevice.Accelerator, GatingVersion.V2, warpsPerGroup: 8);
        Assert.That(wide.WarpsPerGroup, Is.EqualTo(8));
        const int tokens = 17, experts = 16;
        var spec = RouterSpec.DeepSeekV3(experts, 2, 4, 2, true, 1.5);
        var (logits, bias) = DeepSeekInputs(901, tokens, experts);
        var expected = RefMoe.Route(ToRef(spec), logits, tokens, default, bias);
        var got = Run(wide, spec, logits, tokens, bias: bias);
        AssertMatches(expected, got, experts, $"V2x8 {spec}");
        var mix = RouterSpec.Mixtral(8, 2);
        var mixLogits = SeparatedLogits(902, tokens, 8);
        AssertMatches(RefMoe.Route(ToRef(mix), mixLogits, tokens), Run(wide, mix, mixLogits, tokens), 8, $"V2x8 {mix}");
        // Qwen1.5-MoE's E = 60, K = 4 with 4 shared slots: the idle warps of the last group write no shared slot either.
        var qwen = RouterSpec.SoftmaxTopK(60, 4).WithSharedSlots(4);
        var qwenLogits = SeparatedLogits(903, tokens, 61);
        AssertMatches(RefMoe.Route(ToRef(qwen), qwenLogits, tokens), Run(wide, qwen, qwenLogits, tokens), 64, $"V2x8 {qwen}");
    }

    // ---- hand-computed (numbers derived by hand, independent of the code under test and of the oracle) --------

    [Test]
    public void MixtralByHand()
    {
        // logits [1, 3, 2, 0], K = 2: picks expert 1 (3) then 2 (2). Renormalised softmax of the two:
        // e^3 / (e^3 + e^2) = 1 / (1 + e^-1) = 1 / 1.3678794412 = 0.7310585786; the other 1 - that = 0.2689414214.
        foreach (var v in Versions)
        {
            var got = Run(v, RouterSpec.Mixtral(4, 2), [1f, 3f, 2f, 0f], 1);
            Assert.That(got.Ids, Is.EqualTo(new[] { 1, 2 }), $"{v}");
            Check.Close([0.7310585786f, 0.2689414214f], got.Weights, what: $"{v}");
            Assert.That(got.Dropped, Is.Zero);
        }
    }

    [Test]
    public void SoftmaxTopKByHand()
    {
        // logits [1, 3, 2, 0]: softmax denominator (shifted by the max 3) = e^-2 + 1 + e^-1 + e^-3
        // = 0.1353352832 + 1 + 0.3678794412 + 0.0497870684 = 1.5530017928.
        // Top-2 without renormalising: 1 / 1.5530017928 = 0.6439142599, e^-1 / 1.5530017928 = 0.2368828181.
        foreach (var v in Versions)
        {
            var got = Run(v, RouterSpec.SoftmaxTopK(4, 2), [1f, 3f, 2f, 0f], 1);
            Assert.That(got.Ids, Is.EqualTo(new[] { 1, 2 }), $"{v}");
            Check.Close([0.6439142599f, 0.2368828181f], got.Weights, what: $"{v}");
        }
    }

    [Test]
    public void SwitchByHand()
    {
        // T = 4, E = 2, cf = 1: capacity = ceil(4 * 1 / 2) = 2 per expert.
        // t0 [2, 0] -> e0, p = 1 / (1 + e^-2) = 0.8807970780
        // t1 [0, 1] -> e1, p = 1 / (1 + e^-1) = 0.7310585786
        // t2 [4, 1] -> e0, p = 1 / (1 + e^-3) = 0.9525741268   (e0's second token: kept)
        // t3 [5, 0] -> e0 is full (third token): dropped, id -1, weight 0; dropped count 1.
        foreach (var v in Versions)
        {
            var got = Run(v, RouterSpec.Switch(2, 1.0), [2f, 0f, 0f, 1f, 4f, 1f, 5f, 0f], 4);
            Assert.That(got.Ids, Is.EqualTo(new[] { 0, 1, 0, -1 }), $"{v}");
            Check.Close([0.8807970780f, 0.7310585786f, 0.9525741268f, 0f], got.Weights, what: $"{v}");
            Assert.That(got.Dropped, Is.EqualTo(1), $"{v}");
        }
    }

    [Test]
    public void NoisyTopKByHand()
    {
        // noise logits -100: softplus(-100) = log(1 + e^-100) ~ 3.7e-44, so |n * softplus| < 1e-42 and h rounds to the
        // logits [0, 2, 1, -1] in float. K = 2 picks 1 then 2; softmax over the two chosen h:
        // e^2 / (e^2 + e^1) = 1 / (1 + e^-1) = 0.7310585786, and 0.2689414214.
        foreach (var v in Versions)
        {
            var got = Run(v, RouterSpec.NoisyTopK(4, 2, 99), [0f, 2f, 1f, -1f], 1, noise: [-100f, -100f, -100f, -100f]);
            Assert.That(got.Ids, Is.EqualTo(new[] { 1, 2 }), $"{v}");
            Check.Close([0.7310585786f, 0.2689414214f], got.Weights, what: $"{v}");
        }
    }

    [Test]
    public void DeepSeekV3ByHand()
    {
        // E = 4 in 2 groups {0, 1}, {2, 3}; keep 1 group; K = 2; NormTopK; scale 2.5.
        // logits [0, 0, ln 3, -ln 3] -> s = [0.5, 0.5, 0.75, 0.25]; bias [0.1, 0, 0, 0.2]
        // choice = [0.6, 0.5, 0.75, 0.45]; group scores: {0,1} 0.6 + 0.5 = 1.1, {2,3} 0.75 + 0.45 = 1.2 -> keep {2,3}.
        // top-2 of choice among 2, 3: 2 (0.75), 3 (0.45) (expert 0's 0.6 would win without the group limit).
        // weights = s / (0.75 + 0.25) * 2.5 = [1.875, 0.625].
        float ln3 = (float)Math.Log(3);
        foreach (var v in Versions)
        {
            var got = Run(v, RouterSpec.DeepSeekV3(4, 2, 2, 1, true, 2.5), [0f, 0f, ln3, -ln3], 1, bias: [0.1f, 0f, 0f, 0.2f]);
            Assert.That(got.Ids, Is.EqualTo(new[] { 2, 3 }), $"{v}");
            Check.Close([1.875f, 0.625f], got.Weights, what: $"{v}");
        }
    }

    [Test]
    public void DeepSeekV3GroupsAreChosenByTheirTopTwoSum()
    {
        // E = 8 in 2 groups of 4, keep 1 group, K = 2, NormTopK, scale 1, bias 0, so choice = s = sigmoid(logit).
        // Token 0: s = [0.7, 0.69, 0.1, 0.1 | 0.75, 0.6, 0.5, 0.5].
        //   top-2 sums: group 0 0.7 + 0.69 = 1.39, group 1 0.75 + 0.6 = 1.35 -> keep group 0 -> experts 0, 1.
        //   (a top-1 group score keeps group 1 (0.75 > 0.7) -> experts 4, 5; a whole-group sum too (2.35 > 1.6); no group
        //   limit gives 4, 0.) Weights s / (0.7 + 0.69): 0.7 / 1.39 = 0.5035971223, 0.69 / 1.39 = 0.4964028777.
        // Token 1: the groups swapped and the pair moved inside its group: s = [0.75, 0.6, 0.5, 0.5 | 0.1, 0.7, 0.69, 0.1]
        //   -> keep group 1 -> experts 5, 6, same weights.
        // logit = ln(s / (1 - s)).
        static float L(double s) => (float)Math.Log(s / (1 - s));
        float[] logits =
        [
            L(0.7), L(0.69), L(0.1), L(0.1), L(0.75), L(0.6), L(0.5), L(0.5),
            L(0.75), L(0.6), L(0.5), L(0.5), L(0.1), L(0.7), L(0.69), L(0.1),
        ];
        var spec = RouterSpec.DeepSeekV3(8, 2, 2, 1, true, 1.0);
        float[] bias = new float[8];
        var reference = RefMoe.Route(ToRef(spec), logits, 2, default, bias);
        Assert.That(reference.ExpertIds, Is.EqualTo(new[] { 0, 1, 5, 6 }), "reference");
        foreach (var v in Versions)
        {
            var got = Run(v, spec, logits, 2, bias: bias);
            Assert.That(got.Ids, Is.EqualTo(new[] { 0, 1, 5, 6 }), $"{v}");
            Check.Close([0.5035971223f, 0.4964028777f, 0.5035971223f, 0.4964028777f], got.Weights, what: $"{v}");
        }
    }

    // ---- ties: equal scores go to the lower expert id ---------------------------------------------------------

    [Test]
    public void TiesGoToLowerIds()
    {
        foreach (var v in Versions)
        {
            // All 8 equal: ids 0, 1, 2; each renormalised weight 1/3.
            var all = Run(v, RouterSpec.Mixtral(8, 3), Enumerable.Repeat(0.5f, 16).ToArray(), 2);
            Assert.That(all.Ids, Is.EqualTo(new[] { 0, 1, 2, 0, 1, 2 }), $"{v} Mixtral all equal");
            Check.Close(Enumerable.Repeat(1f / 3, 6).ToArray(), all.Weights, what: $"{v} Mixtral all equal");

            // [1, 2, 2, 0]: the tie for first is 1 then 2; softmax over 4 equal-free values, K = 2 without renorm:
            // e^0 / (e^-1 + 1 + 1 + e^-2) = 1 / 2.5032147244 = 0.3994862...
            var partial = Run(v, RouterSpec.SoftmaxTopK(4, 2), [1f, 2f, 2f, 0f], 1);
            Assert.That(partial.Ids, Is.EqualTo(new[] { 1, 2 }), $"{v} SoftmaxTopK partial tie");
            Check.Close([0.3994862f, 0.3994862f], partial.Weights, what: $"{v} SoftmaxTopK partial tie");

            // Switch, all equal: every token picks expert 0; capacity ceil(3 / 2) = 2 drops token 2.
            var sw = Run(v, RouterSpec.Switch(2, 1.0), [1f, 1f, 1f, 1f, 1f, 1f], 3);
            Assert.That(sw.Ids, Is.EqualTo(new[] { 0, 0, -1 }), $"{v} Switch all equal");
            Check.Close([0.5f, 0.5f, 0f], sw.Weights, what: $"{v} Switch all equal");
            Assert.That(sw.Dropped, Is.EqualTo(1), $"{v} Switch all equal");

            // DeepSeek, all equal: groups {0,1} {2,3} {4,5} {6,7} tie, keep the 2 lowest; K = 3 -> 0, 1, 2; s = 0.5 each,
            // normalised 1/3.
            var ds = Run(v, RouterSpec.DeepSeekV3(8, 3, 4, 2), new float[8], 1, bias: new float[8]);
            Assert.That(ds.Ids, Is.EqualTo(new[] { 0, 1, 2 }), $"{v} DeepSeek all equal");
            Check.Close(Enumerable.Repeat(1f / 3, 3).ToArray(), ds.Weights, what: $"{v} DeepSeek all equal");

            // DeepSeek group tie with a later group better inside: groups {0,1} and {2,3} both sum 1.0, keep 1 -> group 0.
            // choice [0.5, 0.5, 0.75 - 0.25, 0.25 + 0.25]: bias [0, 0, -0.25, 0.25] on s [0.5, 0.5, 0.75, 0.25].
            float ln3 = (float)Math.Log(3);
            var dg = Run(v, RouterSpec.DeepSeekV3(4, 1, 2, 1), [0f, 0f, ln3, -ln3], 1, bias: [0f, 0f, -0.25f, 0.25f]);
            Assert.That(dg.Ids, Is.EqualTo(new[] { 0 }), $"{v} DeepSeek group tie");
        }
    }

    // ---- determinism, bad input -------------------------------------------------------------------------------

    [Test]
    public void BitIdenticalTwice()
    {
        var ds = RouterSpec.DeepSeekV3(64, 8, 8, 4, true, 2.5);
        var (logits, bias) = DeepSeekInputs(77, 5, 64);
        var noisy = RouterSpec.NoisyTopK(16, 4, 5);
        var nl = Data.Gaussian(78, 5 * 16);
        var nn = Data.Gaussian(79, 5 * 16);
        foreach (var v in Versions)
        {
            var a = Run(v, ds, logits, 5, bias: bias);
            var b = Run(v, ds, logits, 5, bias: bias);
            Assert.That(b.Ids, Is.EqualTo(a.Ids));
            Check.BitEqual(a.Weights, b.Weights, $"{v} DeepSeek");
            var c = Run(v, noisy, nl, 5, noise: nn);
            var d = Run(v, noisy, nl, 5, noise: nn);
            Assert.That(d.Ids, Is.EqualTo(c.Ids));
            Check.BitEqual(c.Weights, d.Weights, $"{v} Noisy");
        }
    }

    [Test]
    public void ZeroTokensWritesZeroDropped()
    {
        var got = Run(GatingVersion.V2, RouterSpec.Switch(4, 1.0), [], 0);
        Assert.That(got.Dropped, Is.Zero);
    }

    [Test]
    public void RejectsBadShapes()
    {
        var acc = TestDevice.Accelerator;
        using var logits = TestDevice.Upload(new float[3 * 8]);
        using var ids = TestDevice.PoisonedInts(3 * 8);
        using var w = TestDevice.PoisonedFloats(3 * 8);
        void Launch(RouterSpec spec, int tokens = 3, ArrayView<float> noise = default, ArrayView<float> bias = default) =>
            _v2.Launch(acc.DefaultStream, spec, logits.View, ids.View, w.View, tokens, noise, bias);

        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(8, 9)), "K > E");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(8, 0)), "K = 0");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(8, 2), tokens: 4), "logits too short");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(8, 2), tokens: -1), "negative T");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(300, 2), tokens: 0), "E > 256");
        Assert.Throws<ArgumentException>(() => Launch(new RouterSpec(RouterKind.Switch, 8, 2)), "Switch K = 2");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Switch(8, 0)), "Switch cf 0");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.NoisyTopK(8, 2, 1)), "Noisy without noise logits");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.DeepSeekV3(8, 2, 2, 1)), "DeepSeek without bias");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.DeepSeekV3(8, 2, 3, 1), bias: logits.View), "E % groups");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.DeepSeekV3(8, 2, 4, 5), bias: logits.View), "topKGroups > groups");
        Assert.Throws<ArgumentException>(() => Launch(RouterSpec.DeepSeekV3(8, 5, 4, 2), bias: logits.View), "K > kept experts");
        Assert.Throws<ArgumentException>(() => Launch(new RouterSpec((RouterKind)9, 8, 2)), "unknown kind");
        var ex = Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(8, 9)));
        Assert.That(ex!.Message, Does.Contain("topK"));
    }
}
