using System.Text.Json.Nodes;
using ILGpuMoE.Model;
using ILGpuMoE.Tests.Runtime;

namespace ILGpuMoE.Tests.Model;

/// <summary>Each family's config.json reader (src/ILGpuMoE/Model/Families/*.cs): what it maps onto BlockOptions and the
/// router on the fixtures, the layer plans and windows Hugging Face's configuration classes define, and one-line errors
/// naming the key for inconsistent input.</summary>
public class FamilyConfigTests
{
    private static JsonObject Fixture(string name) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(FamilyFixtureTests.Dir(name), "config.json")))!.AsObject();

    private static ModelConfig Parse(string fixture, Action<JsonObject>? edit = null)
    {
        var c = Fixture(fixture);
        edit?.Invoke(c);
        return ModelConfig.Parse(c.ToJsonString(), "/m/config.json");
    }

    [Test]
    public void Qwen3MoeFixture()
    {
        var c = Parse("qwen3-moe-tiny-f32");
        Assert.That(c.Family, Is.InstanceOf<Qwen3MoeFamily>());
        Assert.That((c.HeadDim, c.HeadDimExplicit, c.QueryDim, c.IntermediateSize), Is.EqualTo((16, true, 64, 32)), "explicit head_dim, moe_intermediate_size");
        Assert.That(c.Block.QkNorm, Is.EqualTo(QkNormKind.PerHead));
        Assert.That(c.Router.Kind, Is.EqualTo(RouterKind.Mixtral), "norm_topk_prob true renormalises");
        Assert.That((c.Block.QkvBias, c.Block.OutputBias, c.Block.SharedExpertSize, c.Block.DenseIntermediateSize), Is.EqualTo((false, false, 0, 0)));
        Assert.That(Enumerable.Range(0, c.Layers).All(c.IsMoeLayer));
        Assert.That(c.SlidingWindow, Is.Null);
    }

    [Test]
    public void Qwen2MoeFixture()
    {
        var c = Parse("qwen2-moe-tiny-f32");
        Assert.That(c.Family, Is.InstanceOf<Qwen2MoeFamily>());
        Assert.That(c.Router.Kind, Is.EqualTo(RouterKind.SoftmaxTopK), "norm_topk_prob false");
        Assert.That((c.Block.QkvBias, c.Block.OutputBias, c.Block.SharedExpertSize, c.SharedChunks), Is.EqualTo((true, false, 64, 2)));
        Assert.That(c.MoeShape(0), Is.EqualTo((2 + 2, 8 + 2)), "K + shared chunks, E + shared chunks");
    }

    [Test]
    public void OlmoeFixture()
    {
        var c = Parse("olmoe-tiny-f32");
        Assert.That(c.Family, Is.InstanceOf<OlmoeFamily>());
        Assert.That(c.Block.QkNorm, Is.EqualTo(QkNormKind.Whole));
        Assert.That(c.Block.ClipQkv, Is.Null);
        Assert.That(c.Router.Kind, Is.EqualTo(RouterKind.SoftmaxTopK));
        Assert.That(c.IntermediateSize, Is.EqualTo(32), "OLMoE's experts have intermediate_size");
        Assert.That(Parse("olmoe-tiny-f32", j => j["clip_qkv"] = 8.0).Block.ClipQkv, Is.EqualTo(8.0));
    }

    [Test]
    public void GptOssFixture()
    {
        var c = Parse("gpt-oss-tiny-mxfp4");
        Assert.That(c.Family, Is.InstanceOf<GptOssFamily>());
        Assert.That(c.Family.ExpertStorage, Is.EqualTo(ExpertStorage.StackedGateUp));
        Assert.That((c.Experts, c.TopK, c.IntermediateSize, c.HeadDim), Is.EqualTo((4, 2, 32, 16)));
        Assert.That(c.Router.Kind, Is.EqualTo(RouterKind.Mixtral), "softmax over the k selected logits = renormalised softmax");
        var b = c.Block;
        Assert.That((b.QkvBias, b.OutputBias, b.AttentionSinks, b.RouterBias, b.ExpertBias), Is.EqualTo((true, true, true, true, true)));
        Assert.That((b.SwigluLimit, b.SwigluAlpha), Is.EqualTo((7.0, 1.702)));
        Assert.That(b.LayerWindows, Is.EqualTo(new[] { 4, 0 }), "layer_types: sliding (window 4), then full");
        Assert.That(c.RopeScaling, Is.EqualTo(new ILGpuMoE.Kernels.Dense.YarnScaling(32, 4096, 32, 1, Truncate: false)));
        // attention_factor = 0.1 ln(32) + 1 (hand: ln 32 = 3.4657359, so 1.34657359).
        Assert.That(c.RopeScaling!.CosSinFactor, Is.EqualTo(1.34657359).Within(1e-8));
        Assert.That(c.RopeScaling.SoftmaxScaleFactor, Is.EqualTo(1.0), "no mscale_all_dim: the softmax scale stays Dh^-0.5");
    }

    [Test]
    public void GptOssDefaults_AreGptOssConfigs()
    {
        // Without layer_types: sliding on even layers; without rope_scaling: the released checkpoints' YaRN block.
        var c = Parse("gpt-oss-tiny-mxfp4", j => { j.Remove("layer_types"); j.Remove("rope_scaling"); j["sliding_window"] = 128; });
        Assert.That(c.Block.LayerWindows, Is.EqualTo(new[] { 128, 0 }));
        Assert.That(c.RopeScaling, Is.EqualTo(RopeScaling.GptOssDefault));
        // sliding_window null: the sliding layers attend to everything (GptOssAttention's window None).
        Assert.That(Parse("gpt-oss-tiny-mxfp4", j => j["sliding_window"] = null).Block.LayerWindows, Is.EqualTo(new[] { 0, 0 }));
        // experts_per_token (the original release's key) when num_experts_per_tok is absent.
        Assert.That(Parse("gpt-oss-tiny-mxfp4", j => { j.Remove("num_experts_per_tok"); j["experts_per_token"] = 3; }).TopK, Is.EqualTo(3));
    }

    [Test]
    public void DeepseekV3Fixture()
    {
        var c = Parse("deepseek-v3-tiny");
        Assert.That(c.Family, Is.InstanceOf<DeepseekV3Family>());
        Assert.That(c.Block.Mla, Is.EqualTo(new MlaOptions(24, 24, 16, 8, 16, RopeInterleave: true)));
        Assert.That((c.HeadDim, c.ValueHeadDim, c.QueryDim, c.AttentionDim), Is.EqualTo((24, 16, 96, 64)), "config's head_dim 8 is the rope part; q/k heads are nope + rope");
        Assert.That(c.Block.Mla!.CacheWidth, Is.EqualTo(32), "latent 24 + rope 8 floats per token and layer");
        Assert.That((c.Router.Kind, c.Experts, c.TopK, c.Router.Groups, c.Router.TopKGroups, c.Router.NormTopK, c.Router.RoutedScaling),
            Is.EqualTo((RouterKind.DeepSeekV3, 8, 2, 4, 2, true, 2.5)));
        Assert.That((c.IntermediateSize, c.Block.SharedExpertSize, c.Block.SharedExpertUngated, c.SharedChunks), Is.EqualTo((32, 32, true, 1)));
        Assert.That((c.IsMoeLayer(0), c.IsMoeLayer(1), c.Block.DenseIntermediateSize), Is.EqualTo((false, true, 96)), "first_k_dense_replace 1");
        Assert.That(c.RopeScaling, Is.Null);
        // q_lora_rank null: a direct q_proj (V2-Lite's form).
        Assert.That(Parse("deepseek-v3-tiny", j => j["q_lora_rank"] = null).Block.Mla!.QLoraRank, Is.Zero);
        var names = ModelTensors.Expected(c).Select(t => t.Name).ToHashSet();
        Assert.That(names, Does.Contain("model.layers.1.mlp.gate.e_score_correction_bias"));
        Assert.That(names, Does.Contain("model.layers.1.mlp.shared_experts.down_proj.weight"));
        Assert.That(names, Does.Not.Contain("model.layers.1.mlp.shared_expert_gate.weight"));
        Assert.That(names, Does.Contain("model.layers.0.self_attn.kv_b_proj.weight"));
    }

    [Test]
    public void Yarn_IsReadForGptOssAndDeepseek_RefusedElsewhere()
    {
        var y = Parse("gpt-oss-tiny-mxfp4", j => j["rope_scaling"] = new JsonObject
        {
            ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 32768,
        }).RopeScaling!;
        Assert.That((y.Factor, y.OriginalMaxPositions, y.BetaFast, y.BetaSlow, y.Truncate), Is.EqualTo((4.0, 32768, 32.0, 1.0, true)));
        // DeepSeek's mscale pair: cos/sin factor mscale(40, 1) / mscale(40, 1) = 1, softmax factor mscale(40, 1)^2.
        var d = Parse("deepseek-v3-tiny", j => j["rope_scaling"] = new JsonObject
        {
            ["type"] = "yarn", ["factor"] = 40.0, ["original_max_position_embeddings"] = 4096, ["mscale"] = 1.0, ["mscale_all_dim"] = 1.0,
        }).RopeScaling!;
        Assert.That(d.CosSinFactor, Is.EqualTo(1.0).Within(1e-15));
        Assert.That(d.SoftmaxScaleFactor, Is.EqualTo(Math.Pow(0.1 * Math.Log(40) + 1, 2)).Within(1e-12));
        Assert.That(Parse("qwen3-moe-tiny-f32", j => j["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 1e6 }).RopeScaling, Is.Null);
    }

    [Test]
    public void QwenLayerPlan_SparseStepAndMlpOnlyLayers()
    {
        // Hugging Face: layer i is MoE iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
        var c = Parse("qwen3-moe-tiny-f32", j =>
        {
            j["num_hidden_layers"] = 6;
            j["decoder_sparse_step"] = 2;
            j["mlp_only_layers"] = new JsonArray(3);
        });
        Assert.That(Enumerable.Range(0, 6).Select(c.IsMoeLayer), Is.EqualTo(new[] { false, true, false, false, false, true }));
        Assert.That(c.Block.DenseIntermediateSize, Is.EqualTo(96));
        Assert.That(c.MoeShape(0), Is.EqualTo((3, 3)), "the dense MLP of 96 as 3 experts of 32, all visited");
    }

    [Test]
    public void Windows_FollowEachFamilysDefaultAndLayerTypes()
    {
        // Qwen2-MoE's default layer_types: even layers below max_window_layers; Qwen3-MoE: every layer.
        var q2 = Parse("qwen2-moe-tiny-f32", j =>
        {
            j["num_hidden_layers"] = 5;
            j["use_sliding_window"] = true;
            j["sliding_window"] = 7;
            j["max_window_layers"] = 3;
        });
        Assert.That(Enumerable.Range(0, 5).Select(q2.WindowOf), Is.EqualTo(new[] { 7, 0, 7, 0, 0 }));
        var q3 = Parse("qwen3-moe-tiny-f32", j =>
        {
            j["use_sliding_window"] = true;
            j["sliding_window"] = 5;
        });
        Assert.That(Enumerable.Range(0, q3.Layers).Select(q3.WindowOf), Is.All.EqualTo(5));
        var typed = Parse("qwen3-moe-tiny-f32", j =>
        {
            j["sliding_window"] = 4;
            j["layer_types"] = new JsonArray("full_attention", "sliding_attention");
        });
        Assert.That(Enumerable.Range(0, 2).Select(typed.WindowOf), Is.EqualTo(new[] { 0, 4 }));
        Assert.That(Parse("qwen3-moe-tiny-f32", j => j["sliding_window"] = 4).SlidingWindow, Is.Null, "no window unless use_sliding_window");
    }

    private static IEnumerable<TestCaseData> BadConfigs()
    {
        TestCaseData Case(string name, string fixture, string key, Action<JsonObject> edit) => new TestCaseData(fixture, key, edit).SetName(name);
        yield return Case("MlpOnlyLayerOutOfRange", "qwen3-moe-tiny-f32", "mlp_only_layers", j => j["mlp_only_layers"] = new JsonArray(5));
        yield return Case("SparseStepZero", "qwen3-moe-tiny-f32", "decoder_sparse_step", j => j["decoder_sparse_step"] = 0);
        yield return Case("LayerTypesWrongLength", "qwen3-moe-tiny-f32", "layer_types", j => j["layer_types"] = new JsonArray("full_attention"));
        yield return Case("UnknownLayerType", "qwen3-moe-tiny-f32", "layer_types", j => j["layer_types"] = new JsonArray("full_attention", "chunked_attention"));
        yield return Case("WindowWithoutWidth", "qwen3-moe-tiny-f32", "sliding_window", j => { j["use_sliding_window"] = true; j.Remove("sliding_window"); });
        yield return Case("NegativeSharedExpert", "qwen2-moe-tiny-f32", "shared_expert_intermediate_size", j => j["shared_expert_intermediate_size"] = -1);
        yield return Case("NegativeClip", "olmoe-tiny-f32", "clip_qkv", j => j["clip_qkv"] = -2.0);
        yield return Case("TopKAboveExperts", "olmoe-tiny-f32", "num_experts_per_tok", j => j["num_experts_per_tok"] = 9);
        yield return Case("MissingMoeIntermediate", "qwen2-moe-tiny-f32", "moe_intermediate_size", j => j.Remove("moe_intermediate_size"));
        yield return Case("DenseLayerWithoutWidth", "qwen3-moe-tiny-f32", "intermediate_size", j => { j["mlp_only_layers"] = new JsonArray(0); j.Remove("intermediate_size"); });
        yield return Case("ArchitectureOfAnotherFamily", "olmoe-tiny-f32", "architectures", j => j["architectures"] = new JsonArray("Qwen3MoeForCausalLM"));
        yield return Case("GptOssSwigluLimitZero", "gpt-oss-tiny-mxfp4", "swiglu_limit", j => j["swiglu_limit"] = 0.0);
        yield return Case("GptOssLayerTypesWrongLength", "gpt-oss-tiny-mxfp4", "layer_types", j => j["layer_types"] = new JsonArray("full_attention"));
        yield return Case("GptOssUnknownLayerType", "gpt-oss-tiny-mxfp4", "layer_types", j => j["layer_types"] = new JsonArray("full_attention", "chunked"));
        yield return Case("GptOssTopKAboveExperts", "gpt-oss-tiny-mxfp4", "num_experts_per_tok", j => j["num_experts_per_tok"] = 5);
        yield return Case("LinearRopeScaling", "qwen3-moe-tiny-f32", "rope_scaling.rope_type", j => j["rope_scaling"] = new JsonObject { ["rope_type"] = "linear", ["factor"] = 2.0 });
        yield return Case("YarnFactorZero", "gpt-oss-tiny-mxfp4", "rope_scaling.factor", j => j["rope_scaling"]!["factor"] = 0.0);
        yield return Case("YarnWithoutType", "deepseek-v3-tiny", "rope_scaling", j => j["rope_scaling"] = new JsonObject { ["factor"] = 2.0 });
        yield return Case("YarnForQwen", "qwen3-moe-tiny-f32", "rope_scaling", j => j["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 });
        yield return Case("DeepseekGroupsDoNotDivide", "deepseek-v3-tiny", "n_group", j => j["n_group"] = 3);
        yield return Case("DeepseekKeepAboveGroups", "deepseek-v3-tiny", "topk_group", j => j["topk_group"] = 5);
        yield return Case("DeepseekTopKAboveKeptExperts", "deepseek-v3-tiny", "num_experts_per_tok", j => { j["topk_group"] = 1; j["num_experts_per_tok"] = 3; });
        yield return Case("DeepseekOddRopeDim", "deepseek-v3-tiny", "qk_rope_head_dim", j => j["qk_rope_head_dim"] = 7);
        yield return Case("DeepseekGqa", "deepseek-v3-tiny", "num_key_value_heads", j => j["num_key_value_heads"] = 2);
        yield return Case("DeepseekMissingLatent", "deepseek-v3-tiny", "kv_lora_rank", j => j.Remove("kv_lora_rank"));
        yield return Case("DeepseekDenseBeyondLayers", "deepseek-v3-tiny", "first_k_dense_replace", j => j["first_k_dense_replace"] = 3);
    }

    [TestCaseSource(nameof(BadConfigs))]
    public void BadConfigs_NameTheKeyInOneLine(string fixture, string key, Action<JsonObject> edit)
    {
        var e = Assert.Throws<ModelConfigException>(() => Parse(fixture, edit))!;
        Assert.That(e.Message, Does.Contain(key));
        Assert.That(e.Message, Does.Not.Contain('\n'));
    }
}
