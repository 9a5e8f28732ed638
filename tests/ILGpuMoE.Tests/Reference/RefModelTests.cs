using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Reference;

/// <summary>RefModel's options checked without a peer: Mixtral equals RefMixtral, the dense layer is the SwiGLU MLP,
/// the sliding window per layer, clip_qkv, decode = forward, and HfReferenceConfig's reading of RandomMoe's config.json.</summary>
public class RefModelTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-refmodel-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    private (RefModelConfig Config, Checkpoint Checkpoint) Write(RandomMoeOptions o, string name)
    {
        string dir = Path.Combine(_dir, name);
        RandomMoe.Write(dir, o);
        return (HfReferenceConfig.Load(dir), Checkpoint.Open(dir));
    }

    private static float[] DecodeAfterPrefill(RefModel m, int[] tokens, int prefill)
    {
        var s = m.NewSession();
        var all = new List<float>(s.Step(tokens.AsSpan(0, prefill)));
        for (int i = prefill; i < tokens.Length; i++)
            all.AddRange(s.Step(tokens.AsSpan(i, 1)));
        return all.ToArray();
    }

    [Test]
    public void MixtralFamilyEqualsRefMixtral()
    {
        // GQA 4, head_dim 8 != 40 / 8, sliding window 5 shorter than the 11 tokens.
        var o = new RandomMoeOptions
        {
            Family = RefFamily.Mixtral, Hidden = 40, Layers = 2, Heads = 8, KvHeads = 2, HeadDim = 8, Experts = 5, TopK = 2,
            MoeIntermediate = 24, Vocab = 290, Seed = 31, UseSlidingWindow = true, SlidingWindow = 5,
        };
        var (config, ck) = Write(o, "mixtral");
        using var _ = ck;
        Assert.That(config.SlidingWindow, Is.All.EqualTo(5));
        var mixtral = new RefMixtral(RefMixtralFixtureTests.ReadConfig(Path.Combine(ck.Directory, "config.json")), ck.ReadFloat32);
        var model = new RefModel(config, ck.ReadFloat32);
        int[] tokens = Data.Ints(31, 11, 0, o.Vocab);
        var want = mixtral.Forward(tokens);
        Check.BitEqual(want, model.Forward(tokens), "RefModel(Mixtral) vs RefMixtral");
        for (int l = 0; l < config.Layers; l++)
        {
            Assert.That(model.LastRouting[l]!.ExpertIds, Is.EqualTo(mixtral.LastRouting[l].ExpertIds));
            Assert.That(model.LastRouting[l]!.Weights, Is.EqualTo(mixtral.LastRouting[l].Weights));
        }

        Check.BitEqual(want, DecodeAfterPrefill(model, tokens, 4), "RefModel(Mixtral) decode vs RefMixtral forward");
    }

    [Test]
    public void DenseMlpIsTheSwiGluMlp()
    {
        const int t = 3, d = 10, f = 7;
        var x = Data.Gaussian(1, t * d);
        var gate = Data.Gaussian(2, f * d, 0.3);
        var up = Data.Gaussian(3, f * d, 0.3);
        var down = Data.Gaussian(4, d * f, 0.3);
        // down (silu(gate x) * up x), written out with plain loops in double.
        var want = new float[t * d];
        for (int i = 0; i < t; i++)
        {
            var h = new double[f];
            for (int j = 0; j < f; j++)
            {
                double g = 0, u = 0;
                for (int k = 0; k < d; k++)
                {
                    g += (double)gate[j * d + k] * x[i * d + k];
                    u += (double)up[j * d + k] * x[i * d + k];
                }

                h[j] = g / (1 + Math.Exp(-g)) * u;
            }

            for (int k = 0; k < d; k++)
            {
                double y = 0;
                for (int j = 0; j < f; j++)
                    y += down[k * f + j] * h[j];
                want[i * d + k] = (float)y;
            }
        }

        Check.Close(want, RefModel.DenseMlp(x, gate, up, down, t, d, f), rtol: 1e-6, atol: 1e-7, what: "DenseMlp");
    }

    [TestCase(RefFamily.Qwen3Moe)]
    [TestCase(RefFamily.Qwen2Moe)]
    public void DenseAndMoeLayersReadTheirOwnWeights(RefFamily family)
    {
        // 4 layers, decoder_sparse_step 2 and mlp_only_layers [3]: MoE only on layer 1 ((1 + 1) % 2 == 0; 3 is excluded).
        var o = new RandomMoeOptions
        {
            Family = family, Hidden = 32, Layers = 4, Heads = 4, KvHeads = 2, HeadDim = 10, Experts = 6, TopK = 3,
            MoeIntermediate = 16, DenseIntermediate = 40, DecoderSparseStep = 2, MlpOnlyLayers = [3], Seed = 41, NormTopK = true,
            SharedExpertIntermediate = 24,
        };
        var (config, ck) = Write(o, $"dense-{family}");
        using var _ = ck;
        Assert.That(config.MoeLayers, Is.EqualTo(new[] { false, true, false, false }));
        Assert.That(config.DenseIntermediate, Is.EqualTo(40));
        var model = new RefModel(config, ck.ReadFloat32);
        int[] tokens = Data.Ints(41, 9, 0, o.Vocab);
        var logits = model.Forward(tokens);
        Assert.That(model.LastRouting.Select(r => r is null), Is.EqualTo(new[] { true, false, true, true }));
        var r1 = model.LastRouting[1]!;
        for (int i = 0; i < tokens.Length; i++)
            Assert.That(r1.Weights.Skip(i * 3).Take(3).Sum(), Is.EqualTo(1f).Within(1e-6), "NormTopK weights sum to 1");
        Assert.That(DecodeAfterPrefill(model, tokens, 5), Is.EqualTo(logits));
    }

    [Test]
    public void SlidingWindowLayersFollowTheNewestHuggingFaceRules()
    {
        // Qwen2-MoE: layer i slides iff use_sliding_window, i even, i < max_window_layers (3): layers 0 and 2.
        // Qwen3-MoE: every layer slides when use_sliding_window.
        var q2 = new RandomMoeOptions
        {
            Family = RefFamily.Qwen2Moe, Hidden = 32, Layers = 4, Heads = 4, KvHeads = 4, Experts = 4, TopK = 2, MoeIntermediate = 16,
            SharedExpertIntermediate = 16, UseSlidingWindow = true, SlidingWindow = 3, MaxWindowLayers = 3, Seed = 51,
        };
        var (c2, ck2) = Write(q2, "slide-q2");
        using var _ = ck2;
        Assert.That(c2.SlidingWindow, Is.EqualTo(new[] { 3, 0, 3, 0 }));
        var (c3, ck3) = Write(q2 with { Family = RefFamily.Qwen3Moe }, "slide-q3");
        using var __ = ck3;
        Assert.That(c3.SlidingWindow, Is.EqualTo(new[] { 3, 3, 3, 3 }));

        // The window changes the logits once a query sees more than 3 keys, and the KV cache honours it when decoding.
        var windowed = new RefModel(c3, ck3.ReadFloat32);
        var full = new RefModel(c3 with { SlidingWindow = new int[4] }, ck3.ReadFloat32);
        int[] tokens = Data.Ints(51, 8, 0, q2.Vocab);
        var a = windowed.Forward(tokens);
        var b = full.Forward(tokens);
        int v = c3.Vocab;
        Check.BitEqual(b.AsSpan(0, 3 * v), a.AsSpan(0, 3 * v), "the first 3 positions see at most 3 keys");
        Assert.That(a.Zip(b, (x, y) => Math.Abs(x - y)).Max(), Is.GreaterThan(1e-3f), "window had no effect");
        Assert.That(DecodeAfterPrefill(windowed, tokens, 2), Is.EqualTo(a));
    }

    [Test]
    public void ClipQkvClampsOnlyWhenBelowTheValues()
    {
        var o = new RandomMoeOptions { Family = RefFamily.Olmoe, Hidden = 32, Heads = 4, KvHeads = 4, Experts = 4, TopK = 2, Seed = 61, ClipQkv = 0.5 };
        var (config, ck) = Write(o, "clip");
        using var _ = ck;
        Assert.That(config.ClipQkv, Is.EqualTo(0.5f));
        int[] tokens = Data.Ints(61, 7, 0, o.Vocab);
        var clipped = new RefModel(config, ck.ReadFloat32).Forward(tokens);
        var none = new RefModel(config with { ClipQkv = 0 }, ck.ReadFloat32).Forward(tokens);
        var loose = new RefModel(config with { ClipQkv = 1e6f }, ck.ReadFloat32).Forward(tokens);
        Check.BitEqual(none, loose, "a bound above every value is no clamp");
        Assert.That(clipped.Zip(none, (x, y) => Math.Abs(x - y)).Max(), Is.GreaterThan(1e-2f), "clip 0.5 had no effect");
    }

    [Test]
    public void RandomMoeConfigReadsBack()
    {
        var o = new RandomMoeOptions
        {
            Family = RefFamily.Qwen3Moe, Hidden = 48, Heads = 6, KvHeads = 2, HeadDim = 14, Experts = 12, TopK = 5, MoeIntermediate = 20,
            NormTopK = false, TieEmbeddings = true, DType = DType.BF16, RopeTheta = 5e5, Seed = 71, Shards = 3,
        };
        var (c, ck) = Write(o, "readback");
        using var _ = ck;
        Assert.That((c.Family, c.Hidden, c.Heads, c.KvHeads, c.HeadDim, c.Experts, c.TopK, c.MoeIntermediate),
            Is.EqualTo((RefFamily.Qwen3Moe, 48, 6, 2, 14, 12, 5, 20)));
        Assert.That((c.NormTopK, c.TieEmbeddings, c.RopeTheta, c.RmsEps, c.QkNorm), Is.EqualTo((false, true, 5e5f, 1e-6f, RefQkNorm.PerHead)));
        Assert.That(ck.Contains("lm_head.weight"), Is.False);
        Assert.That(ck.Shards, Has.Count.EqualTo(3));
        Assert.That(ck.Get("model.layers.0.self_attn.q_norm.weight").Shape, Is.EqualTo(new long[] { 14 }));
        Assert.That(new RefModel(c, ck.ReadFloat32).Forward([5, 299]).All(float.IsFinite));
    }

    [Test]
    public void HfReferenceConfigDefaultsAndErrors()
    {
        RefModelConfig Parse(string json) =>
            HfReferenceConfig.FromJson(System.Text.Json.JsonDocument.Parse(json).RootElement, "test.json");

        // Qwen2MoeConfig's defaults: 24 layers, 16/16 heads, 60 experts top-4, moe 1408, shared 5632, qkv_bias true.
        var q2 = Parse("""{"model_type": "qwen2_moe"}""");
        Assert.That((q2.Layers, q2.Heads, q2.KvHeads, q2.Experts, q2.TopK, q2.MoeIntermediate, q2.SharedExpertIntermediate, q2.QkvBias, q2.NormTopK),
            Is.EqualTo((24, 16, 16, 60, 4, 1408, 5632, true, false)));
        Assert.That(q2.RopeTheta, Is.EqualTo(10000f));
        // OlmoeConfig: num_key_value_heads null means heads; 64 experts top-8; eps 1e-5.
        var ol = Parse("""{"model_type": "olmoe", "num_key_value_heads": null, "clip_qkv": 8.0}""");
        Assert.That((ol.KvHeads, ol.Experts, ol.TopK, ol.RmsEps, ol.ClipQkv), Is.EqualTo((16, 64, 8, 1e-5f, 8f)));
        // Newer writers put the base under rope_parameters.
        var q3 = Parse("""{"model_type": "qwen3_moe", "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}""");
        Assert.That(q3.RopeTheta, Is.EqualTo(1e6f));

        Assert.That(() => Parse("""{"model_type": "llama"}"""), Throws.TypeOf<InvalidDataException>().With.Message.Contains("qwen3_moe"));
        Assert.That(() => Parse("""{"model_type": "qwen3_moe", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("yarn"));
        Assert.That(() => Parse("""{"model_type": "olmoe", "head_dim": 64, "hidden_size": 256, "num_attention_heads": 8}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("head_dim"));
        Assert.That(() => Parse("""{"model_type": "qwen3_moe", "attention_bias": true}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("attention_bias"));
    }

    [Test]
    public void ValidateNamesTheBadField()
    {
        var good = new RefModelConfig
        {
            Family = RefFamily.Qwen3Moe, Hidden = 8, Layers = 2, Heads = 2, KvHeads = 1, HeadDim = 4, RmsEps = 1e-6f, RopeTheta = 1e4f,
            Vocab = 10, Experts = 4, TopK = 2, MoeIntermediate = 8, MoeLayers = [true, true], SlidingWindow = [0, 0],
        };
        Assert.That(good.Validate, Throws.Nothing);
        Assert.That((good with { MoeLayers = [true] }).Validate, Throws.ArgumentException.With.Message.Contains("MoeLayers"));
        Assert.That((good with { MoeLayers = [true, false] }).Validate, Throws.ArgumentException.With.Message.Contains("DenseIntermediate"));
        Assert.That((good with { TopK = 5 }).Validate, Throws.ArgumentException.With.Message.Contains("TopK"));
        Assert.That((good with { SlidingWindow = [0, -1] }).Validate, Throws.ArgumentException.With.Message.Contains("SlidingWindow[1]"));
        Assert.That((good with { Family = RefFamily.Mixtral }).Validate, Throws.ArgumentException.With.Message.Contains("Mixtral"));
        Assert.That((good with { ClipQkv = float.NaN }).Validate, Throws.ArgumentException.With.Message.Contains("ClipQkv"));
    }
}
