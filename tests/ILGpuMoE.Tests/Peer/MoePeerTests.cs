using System.Runtime.InteropServices;
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Runtime;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Reference;

namespace ILGpuMoE.Tests.Peer;

/// <summary>
/// llama.cpp (LLamaSharp's libllama through MoeGguf: qwen3moe, qwen2moe, olmoe) against the oracle RefModel on
/// RandomMoe checkpoints: logits of 13 tokens within 1e-4, every argmax equal. Where llama.cpp lacks an option (its
/// routers ignore norm_topk_prob; no dense layers, no sliding window, olmoe needs KV heads == heads and ignores
/// clip_qkv, qwen2moe needs head_dim = D / H) the case is checked against the oracle alone (Reference/RefModelTests)
/// and the limit itself is pinned here (norm_topk_prob) or refused by MoeGguf (the others).
/// </summary>
[Category("Peer")]
public class MoePeerTests
{
    private const int Tokens = 13;
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-moepeer-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    public static IEnumerable<TestCaseData> Configs()
    {
        yield return new TestCaseData(new RandomMoeOptions
        {
            Family = RefFamily.Qwen3Moe, Hidden = 48, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 16, Experts = 16, TopK = 4,
            MoeIntermediate = 24, NormTopK = true, Seed = 101,
        }).SetName("Qwen3Moe_E16_K4_GQA2_HeadDim16_F32");
        yield return new TestCaseData(new RandomMoeOptions
        {
            Family = RefFamily.Qwen3Moe, Hidden = 64, Layers = 3, Heads = 4, KvHeads = 4, HeadDim = 8, Experts = 16, TopK = 8,
            MoeIntermediate = 16, NormTopK = true, TieEmbeddings = true, DType = DType.BF16, RopeTheta = 10000, Seed = 102,
        }).SetName("Qwen3Moe_E16_K8_HeadDim8_Tied_BF16");
        yield return new TestCaseData(new RandomMoeOptions
        {
            Family = RefFamily.Qwen2Moe, Hidden = 48, Layers = 2, Heads = 4, KvHeads = 2, Experts = 16, TopK = 4,
            MoeIntermediate = 24, SharedExpertIntermediate = 40, QkvBias = true, NormTopK = false, Seed = 103,
        }).SetName("Qwen2Moe_E16_K4_Shared40_Bias_GQA2_F32");
        yield return new TestCaseData(new RandomMoeOptions
        {
            Family = RefFamily.Qwen2Moe, Hidden = 40, Layers = 2, Heads = 4, KvHeads = 2, Experts = 20, TopK = 8,
            MoeIntermediate = 16, SharedExpertIntermediate = 32, NormTopK = false, TieEmbeddings = true, DType = DType.BF16, Seed = 104,
        }).SetName("Qwen2Moe_E20_K8_Tied_BF16");
        yield return new TestCaseData(new RandomMoeOptions
        {
            Family = RefFamily.Olmoe, Hidden = 48, Layers = 2, Heads = 4, KvHeads = 4, Experts = 16, TopK = 8,
            MoeIntermediate = 24, NormTopK = false, RopeTheta = 10000, RmsNormEps = 1e-6, Seed = 105,
        }).SetName("Olmoe_E16_K8_Eps1e-6_F32");
        yield return new TestCaseData(new RandomMoeOptions
        {
            Family = RefFamily.Olmoe, Hidden = 32, Layers = 3, Heads = 4, KvHeads = 4, Experts = 16, TopK = 4,
            MoeIntermediate = 16, NormTopK = false, TieEmbeddings = true, DType = DType.BF16, Seed = 106,
        }).SetName("Olmoe_E16_K4_Tied_BF16");
    }

    /// <summary>Writes the model and its GGUF; returns the folder, the oracle and llama.cpp's logits [T, V].</summary>
    private (string Model, int[] Tokens, float[] Peer) Run(RandomMoeOptions o, string name)
    {
        string model = Path.Combine(_dir, name);
        RandomMoe.Write(model, o);
        string gguf = model + ".gguf";
        MoeGguf.Convert(model, gguf);
        int[] tokens = Data.Ints((int)o.Seed, Tokens, 0, o.Vocab);
        float[] peer = LlamaCppPeer.Logits(gguf, tokens, out int vocab);
        Assert.That(vocab, Is.EqualTo(o.Vocab));
        Assert.That(peer.Max(Math.Abs), Is.GreaterThan(0.5f), "logits should be O(1), not near-uniform");
        return (model, tokens, peer);
    }

    private static float MaxDiff(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max();

    [TestCaseSource(nameof(Configs))]
    public void OracleRuntimeAndLlamaCppAgree(RandomMoeOptions o)
    {
        var (model, tokens, peer) = Run(o, $"m{o.Seed}");
        var config = HfReferenceConfig.Load(model);
        using var ck = Checkpoint.Open(model);
        var oracle = new RefModel(config, ck.ReadFloat32);
        float[] ours = oracle.Forward(tokens);

        TestContext.Out.WriteLine($"{o.Family}: max |oracle - llama.cpp| = {MaxDiff(ours, peer):E2}");
        Check.Close(ours, peer, rtol: 0, atol: 1e-4, what: "llama.cpp vs RefModel logits");
        for (int t = 0; t < tokens.Length; t++)
        {
            Assert.That(RefModelFixtureTests.ArgMax(peer.AsSpan(t * o.Vocab, o.Vocab)),
                Is.EqualTo(RefModelFixtureTests.ArgMax(ours.AsSpan(t * o.Vocab, o.Vocab))), $"argmax of token {t}");
        }

        // Decode after prefill equals the prefill, on the oracle side.
        var s = oracle.NewSession();
        var steps = new List<float>(s.Step(tokens.AsSpan(0, 9)));
        for (int t = 9; t < tokens.Length; t++)
            steps.AddRange(s.Step(tokens.AsSpan(t, 1)));
        Assert.That(steps, Is.EqualTo(ours));

        RuntimeAgrees(model, tokens, peer, o.Vocab, $"{o.Family}");
    }

    /// <summary>Our GGUF of each shared fixture gives llama.cpp logits within 1e-4 of the fixture's expected logits
    /// (its PROVENANCE.md: llama.cpp on a GGUF written by gguf-py was within 1.6e-6 of them), every argmax equal.</summary>
    [TestCase("qwen3-moe-tiny-f32")]
    [TestCase("qwen2-moe-tiny-f32")]
    [TestCase("olmoe-tiny-f32")]
    [TestCase("deepseek-v3-tiny")]
    public void OurGgufOfTheFixtureReproducesItsLogits(string fixture)
    {
        string dir = RefModelFixtureTests.FixtureDir(fixture), gguf = Path.Combine(_dir, fixture + ".gguf");
        MoeGguf.Convert(dir, gguf);
        using var expected = SafeTensorsFile.Open(Path.Combine(dir, "expected.safetensors"));
        int[] tokens = MemoryMarshal.Cast<byte, int>(expected.GetBytes("tokens")).ToArray();
        float[] want = expected.ReadFloat32("logits");
        float[] got = LlamaCppPeer.Logits(gguf, tokens, out int vocab);
        TestContext.Out.WriteLine($"{fixture}: max |llama.cpp - expected| = {MaxDiff(want, got):E2}");
        Check.Close(want, got, rtol: 0, atol: 1e-4, what: "llama.cpp logits, our GGUF vs fixture");
        for (int t = 0; t < tokens.Length; t++)
        {
            Assert.That(RefModelFixtureTests.ArgMax(got.AsSpan(t * vocab, vocab)),
                Is.EqualTo(RefModelFixtureTests.ArgMax(want.AsSpan(t * vocab, vocab))), $"argmax of token {t}");
        }
    }

    /// <summary>gpt-oss-tiny-mxfp4 through MoeGguf (experts dequantized to F32): llama.cpp always rounds YaRN's
    /// correction range, so it matches the oracle run with truncate true (its PROVENANCE.md: 3.2e-6) and misses the
    /// fixture's truncate-false logits by the rounding effect (0.00857 there).</summary>
    [Test]
    public void GptOssFixtureThroughLlamaCppMatchesTheTruncatedYarnOracle()
    {
        string dir = RefModelFixtureTests.FixtureDir("gpt-oss-tiny-mxfp4"), gguf = Path.Combine(_dir, "gpt-oss.gguf");
        MoeGguf.Convert(dir, gguf);
        using var expected = SafeTensorsFile.Open(Path.Combine(dir, "expected.safetensors"));
        int[] tokens = MemoryMarshal.Cast<byte, int>(expected.GetBytes("tokens")).ToArray();
        float[] want = expected.ReadFloat32("logits");
        float[] peer = LlamaCppPeer.Logits(gguf, tokens, out int vocab);
        var config = HfReferenceConfig.Load(dir);
        using var ck = Checkpoint.Open(dir);
        var truncated = config with { Yarn = config.Yarn! with { Truncate = true } };
        float[] ours = new RefModel(truncated, ck.ReadFloat32, RefModelFixtureTests.RawReader(ck)).Forward(tokens);
        TestContext.Out.WriteLine($"gpt-oss: max |llama.cpp - oracle(truncate)| = {MaxDiff(ours, peer):E2}, max |llama.cpp - expected| = {MaxDiff(want, peer):E2}");
        Check.Close(ours, peer, rtol: 0, atol: 1e-4, what: "llama.cpp vs RefModel(truncate = true) logits");
        for (int t = 0; t < tokens.Length; t++)
        {
            Assert.That(RefModelFixtureTests.ArgMax(peer.AsSpan(t * vocab, vocab)),
                Is.EqualTo(RefModelFixtureTests.ArgMax(ours.AsSpan(t * vocab, vocab))), $"argmax of token {t}");
        }

        Assert.That(MaxDiff(want, peer), Is.GreaterThan(1e-3), "llama.cpp cannot express truncate false");
    }

    /// <summary>Random gpt-oss (3 layers, window 3 on layers 0 and 2, 5 experts top-2) in both expert forms: llama.cpp
    /// within 1e-4 of the oracle (YaRN truncate true, as llama.cpp runs it), every argmax equal; the runtime within 1e-4 of
    /// llama.cpp (llama.cpp's F32 experts; its native MXFP4 path rounds activations to Q8_0 and is not what we compare).</summary>
    [TestCase(false, 109)]
    [TestCase(true, 110)]
    public void GptOssOracleAndLlamaCppAgree(bool mxfp4, int seed)
    {
        var o = new RandomMoeOptions
        {
            Family = RefFamily.GptOss, Hidden = 64, Layers = 3, Heads = 4, KvHeads = 2, HeadDim = 16, Experts = 5, TopK = 2,
            MoeIntermediate = 32, Vocab = 300, UseSlidingWindow = true, SlidingWindow = 3, Seed = (ulong)seed, RopeTheta = 150000,
            DType = DType.BF16, Mxfp4Experts = mxfp4, Yarn = new RefYarn(32, 4096, Truncate: true), MaxPositions = 131072,
        };
        var (model, tokens, peer) = Run(o, $"oss{seed}");
        var config = HfReferenceConfig.Load(model);
        using var ck = Checkpoint.Open(model);
        float[] ours = new RefModel(config, ck.ReadFloat32, RefModelFixtureTests.RawReader(ck)).Forward(tokens);
        TestContext.Out.WriteLine($"gpt-oss {(mxfp4 ? "MXFP4" : "BF16")}: max |oracle - llama.cpp| = {MaxDiff(ours, peer):E2}");
        Check.Close(ours, peer, rtol: 0, atol: 1e-4, what: "llama.cpp vs RefModel logits");
        for (int t = 0; t < tokens.Length; t++)
        {
            Assert.That(RefModelFixtureTests.ArgMax(peer.AsSpan(t * o.Vocab, o.Vocab)),
                Is.EqualTo(RefModelFixtureTests.ArgMax(ours.AsSpan(t * o.Vocab, o.Vocab))), $"argmax of token {t}");
        }

        RuntimeAgrees(model, tokens, peer, o.Vocab, $"gpt-oss {(mxfp4 ? "MXFP4" : "BF16")}");
    }

    // The runtime (our kernels on the CPU accelerator, V1 versions) on the same folder against llama.cpp.
    private static void RuntimeAgrees(string model, int[] tokens, float[] peer, int vocab, string what)
    {
        using var runtime = MoeModel.Load(TestDevice.Accelerator, model, new ModelLoadOptions { MaxSeq = 32 });
        using var session = runtime.NewSession();
        float[] got = session.Prefill(tokens, allLogits: true);
        TestContext.Out.WriteLine($"{what}: max |runtime - llama.cpp| = {MaxDiff(got, peer):E2}");
        Check.Close(peer, got, rtol: 0, atol: 1e-4, what: "runtime vs llama.cpp logits");
        RuntimeTests.AssertArgmaxEqual(peer, got, vocab, "runtime vs llama.cpp");
    }

    /// <summary>DeepSeek-V3 (MLA, dense first layer, grouped router with a non-zero correction bias, 2 shared experts)
    /// through MoeGguf's deepseek2 GGUF: llama.cpp within 1e-4 of the oracle, every argmax equal; without q LoRA at 27
    /// layers, the only depth at which llama.cpp takes a direct q_proj; the runtime against llama.cpp on the first.</summary>
    [TestCase(24, 107)]
    [TestCase(null, 108)]
    public void DeepSeekOracleAndLlamaCppAgree(int? qLoraRank, int seed)
    {
        var o = new RandomMoeOptions
        {
            Family = RefFamily.DeepSeekV3, Hidden = 40, Layers = qLoraRank is null ? 27 : 3, Heads = 3, KvHeads = 3, Experts = 12, TopK = 3, Groups = 4, TopKGroups = 2,
            MoeIntermediate = 20, DenseIntermediate = 56, SharedExperts = 2, QLoraRank = qLoraRank, KvLoraRank = 20, QkNopeHeadDim = 12,
            QkRopeHeadDim = 6, VHeadDim = 10, Vocab = 300, Seed = (ulong)seed, RopeTheta = 10000,
        };
        var (model, tokens, peer) = Run(o, $"ds{seed}");
        if (qLoraRank is null)
        {
            string three = Path.Combine(_dir, $"ds{seed}-3");
            RandomMoe.Write(three, o with { Layers = 3 });
            Assert.That(() => MoeGguf.Convert(three, three + ".gguf"), Throws.TypeOf<NotSupportedException>().With.Message.Contains("q_lora_rank"));
        }

        var config = HfReferenceConfig.Load(model);
        using var ck = Checkpoint.Open(model);
        float[] ours = new RefModel(config, ck.ReadFloat32).Forward(tokens);
        TestContext.Out.WriteLine($"DeepSeek-V3 q_lora_rank {qLoraRank?.ToString() ?? "null"}: max |oracle - llama.cpp| = {MaxDiff(ours, peer):E2}");
        Check.Close(ours, peer, rtol: 0, atol: 1e-4, what: "llama.cpp vs RefModel logits");
        for (int t = 0; t < tokens.Length; t++)
        {
            Assert.That(RefModelFixtureTests.ArgMax(peer.AsSpan(t * o.Vocab, o.Vocab)),
                Is.EqualTo(RefModelFixtureTests.ArgMax(ours.AsSpan(t * o.Vocab, o.Vocab))), $"argmax of token {t}");
        }

        // The runtime on the 3-layer model (the 27-layer one would take minutes on the CPU accelerator; FamilyRuntimeTests
        // runs a direct q_proj against the oracle).
        if (qLoraRank is not null)
            RuntimeAgrees(model, tokens, peer, o.Vocab, "DeepSeek-V3");
    }

    /// <summary>Measured: llama.cpp's qwen3moe always renormalises the top-k weights and its qwen2moe / olmoe never do,
    /// whatever norm_topk_prob says. With the flag set the other way it matches the oracle run with the flag flipped
    /// and misses the honest oracle by O(0.1).</summary>
    [TestCase(RefFamily.Qwen3Moe, false)]
    [TestCase(RefFamily.Qwen2Moe, true)]
    [TestCase(RefFamily.Olmoe, true)]
    public void LlamaCppIgnoresNormTopKProb(RefFamily family, bool normTopK)
    {
        var o = new RandomMoeOptions
        {
            Family = family, Hidden = 32, Layers = 2, Heads = 4, KvHeads = 4, Experts = 16, TopK = 4, MoeIntermediate = 16,
            SharedExpertIntermediate = 24, NormTopK = normTopK, Seed = 110 + (ulong)family,
        };
        var (model, tokens, peer) = Run(o, $"norm-{family}");
        var config = HfReferenceConfig.Load(model);
        Assert.That(config.NormTopK, Is.EqualTo(normTopK));
        using var ck = Checkpoint.Open(model);
        float[] honest = new RefModel(config, ck.ReadFloat32).Forward(tokens);
        float[] flipped = new RefModel(config with { NormTopK = !normTopK }, ck.ReadFloat32).Forward(tokens);
        float off = MaxDiff(honest, peer), on = MaxDiff(flipped, peer);
        TestContext.Out.WriteLine($"{family} norm_topk_prob {normTopK}: max |llama.cpp - oracle| = {off:E2}, with the flag flipped {on:E2}");
        Check.Close(flipped, peer, rtol: 0, atol: 1e-4, what: "llama.cpp vs oracle with norm_topk_prob flipped");
        Assert.That(off, Is.GreaterThan(1e-2f), "llama.cpp followed norm_topk_prob: update MoeGguf's header and these tests");
    }

    [Test]
    public void ConverterRefusesWhatLlamaCppCannotRun()
    {
        var dense = new RandomMoeOptions { Family = RefFamily.Qwen3Moe, Hidden = 32, Heads = 4, KvHeads = 2, Experts = 4, TopK = 2, MlpOnlyLayers = [0], Seed = 120 };
        var sliding = dense with { MlpOnlyLayers = [], UseSlidingWindow = true, SlidingWindow = 4 };
        var gqaOlmoe = dense with { Family = RefFamily.Olmoe, MlpOnlyLayers = [] };
        var clipOlmoe = gqaOlmoe with { KvHeads = 4, ClipQkv = 0.5 };
        var headDimQwen2 = dense with { Family = RefFamily.Qwen2Moe, MlpOnlyLayers = [], HeadDim = 12 };
        foreach (var (o, what) in new[]
        {
            (dense, "dense-layer"), (sliding, "sliding window"), (gqaOlmoe, "KV heads == heads"), (clipOlmoe, "clamp_kqv"), (headDimQwen2, "head_dim 12"),
        })
        {
            string dir = Path.Combine(_dir, "refuse-" + what.Replace(' ', '-'));
            RandomMoe.Write(dir, o);
            Assert.That(() => MoeGguf.Convert(dir, dir + ".gguf"), Throws.TypeOf<NotSupportedException>().With.Message.Contains(what));
        }
    }
}
