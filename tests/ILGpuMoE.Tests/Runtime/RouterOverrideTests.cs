using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>--router switch / noisy-topk in the runtime, against the oracle running the same router mode on the same
/// router weights (RefRouter.cs), and the routing statistics the session keeps.</summary>
public class RouterOverrideTests
{
    private static RefMixtral Oracle(RefRouterSpec spec)
    {
        var dir = RuntimeTests.FixtureDir;
        var c = ModelConfig.Load(dir);
        using var ck = Checkpoint.Open(dir);
        var cfg = new RefMixtralConfig(c.HiddenSize, c.IntermediateSize, c.Layers, c.Heads, c.KvHeads, c.HeadDim, (float)c.RmsNormEps,
            (float)c.RopeTheta, c.SlidingWindow ?? 0, c.Experts, c.TopK, c.VocabSize, c.TieWordEmbeddings);
        return new RefMixtral(cfg, ck.ReadFloat32, spec);
    }

    [Test]
    public void SwitchWithCapacityDropsTokensAsTheOracleDoes()
    {
        var (tokens, _) = RuntimeTests.Expected();
        // T = 16, E = 4, C = 0.5: each expert keeps ceil(0.5 * 16 / 4) = 2 tokens, so at least 8 of 16 are dropped per layer.
        using var model = MoeModel.Load(TestDevice.Accelerator, RuntimeTests.FixtureDir,
            new ModelLoadOptions { MaxSeq = 32, Router = RouterChoice.Switch(0.5) });
        Assert.That(model.Config.Router.Kind, Is.EqualTo(RouterKind.Switch));
        using var session = model.NewSession();
        session.CollectRoutingStats = true;
        var got = session.Prefill(tokens, allLogits: true);

        var oracle = Oracle(new RefRouterSpec(RouterKind.Switch, model.Config.Experts, 1, CapacityFactor: 0.5));
        var want = oracle.Forward(tokens);
        RuntimeTests.CloseLogged(want, got, rtol: 0, atol: 1e-4, what: "switch C=0.5: runtime vs oracle");
        for (int l = 0; l < model.Config.Layers; l++)
        {
            var r = session.Routing[l];
            Assert.That(r.Dropped, Is.EqualTo(oracle.LastRouting[l].Dropped), $"layer {l}: dropped");
            Assert.That(r.Dropped, Is.GreaterThanOrEqualTo(8), $"layer {l}: capacity 2 x 4 experts keeps at most 8 of 16");
            Assert.That(r.TokensPerExpert.Sum() + r.Dropped, Is.EqualTo(tokens.Length), $"layer {l}: every token kept or dropped");
            Assert.That(r.TokensPerExpert.Max(), Is.LessThanOrEqualTo(2), $"layer {l}: capacity");
            Assert.That(r.AuxLoss, Is.GreaterThanOrEqualTo(1.0 - 1e-9), "E * sum f_e P_e >= 1 for top-1 (Cauchy-Schwarz, f and P both sum to 1)");
        }
    }

    [Test]
    public void NoisyTopKMatchesTheOracleAndIsNoiseFreeWithoutASeed()
    {
        var (tokens, want) = RuntimeTests.Expected();
        int e;
        using (var model = MoeModel.Load(TestDevice.Accelerator, RuntimeTests.FixtureDir,
                   new ModelLoadOptions { MaxSeq = 32, Router = RouterChoice.NoisyTopK(seed: 7) }))
        {
            e = model.Config.Experts;
            using var session = model.NewSession();
            var got = session.Prefill(tokens, allLogits: true);
            // The session mixes the seed with the step's first position (+1): one prefill from position 0.
            var oracle = Oracle(new RefRouterSpec(RouterKind.NoisyTopK, e, model.Config.TopK, NoiseSeed: 7UL ^ 0x9E3779B97F4A7C15UL));
            RuntimeTests.CloseLogged(oracle.Forward(tokens), got, rtol: 0, atol: 1e-4, what: "noisy top-k seed 7: runtime vs oracle");
            double moved = want.Zip(got, (a, b) => Math.Abs(a - b)).Max();
            Assert.That(moved, Is.GreaterThan(1e-3), "noise of std ln 2 on the router logits must move some logits");
        }

        // No seed: no noise, and softmax over the k largest logits is Mixtral's renormalised gate: the fixture's logits.
        using var plain = MoeModel.Load(TestDevice.Accelerator, RuntimeTests.FixtureDir,
            new ModelLoadOptions { MaxSeq = 32, Router = RouterChoice.NoisyTopK(seed: null) });
        using var s2 = plain.NewSession();
        RuntimeTests.CloseLogged(want, s2.Prefill(tokens, allLogits: true), rtol: 0, atol: RuntimeTests.FixtureAtol, what: "noisy top-k without noise vs llama.cpp");
    }

    [TestCase("switch", null, 3UL, "--noise-seed goes with --router noisy-topk")]
    [TestCase("noisy-topk", 0.5, null, "--capacity-factor goes with --router switch")]
    [TestCase("model", 0.5, null, "need --router switch or --router noisy-topk")]
    [TestCase("switch", 0.0, null, "--capacity-factor must be a positive number")]
    [TestCase("switch", double.NaN, null, "--capacity-factor must be a positive number")]
    [TestCase("expert-choice", null, null, "is not one of model, switch, noisy-topk")]
    public void BadRouterOptionsAreOneLineErrors(string name, double? cf, ulong? seed, string message)
    {
        var e = Assert.Throws<ArgumentException>(() => RouterChoice.Parse(name, cf, seed))!;
        Assert.That(e.Message, Does.Contain(message));
        Assert.That(e.Message, Does.Not.Contain('\n'));
    }
}
