using System.Text.Json.Nodes;
using ILGpuMoE.Model;
using ILGpuMoE.Tests.IO;

namespace ILGpuMoE.Tests.Model;

public class ModelConfigTests
{
    private static ModelConfig ParseEdited(Action<JsonObject> edit, string? generation = null)
    {
        var config = TinyModelFiles.FixtureConfig();
        edit(config);
        return ModelConfig.Parse(config.ToJsonString(), "/m/config.json", generation, "/m/generation_config.json");
    }

    private static ModelConfigException ParseFails(Action<JsonObject> edit, string? generation = null) =>
        Assert.Throws<ModelConfigException>(() => ParseEdited(edit, generation))!;

    [Test]
    public void LoadsTheFixture()
    {
        var c = ModelConfig.Load(TinyModelFiles.FixtureDir);
        Assert.Multiple(() =>
        {
            Assert.That(c.Architecture, Is.EqualTo("MixtralForCausalLM"));
            Assert.That(c.ModelType, Is.EqualTo("mixtral"));
            Assert.That((c.VocabSize, c.HiddenSize, c.IntermediateSize, c.Layers), Is.EqualTo((512, 64, 128, 2)));
            Assert.That((c.Heads, c.KvHeads, c.HeadDim, c.HeadDimExplicit), Is.EqualTo((4, 2, 16, true)));
            Assert.That((c.QueryDim, c.KvDim), Is.EqualTo((64, 32)));
            Assert.That(c.Router, Is.EqualTo(RouterConfig.Mixtral(4, 2)));
            Assert.That(c.Router.Kind, Is.EqualTo(RouterKind.Mixtral));
            Assert.That(c.RmsNormEps, Is.EqualTo(1e-5));
            Assert.That(c.RopeTheta, Is.EqualTo(1e6));
            Assert.That(c.MaxPositionEmbeddings, Is.EqualTo(4096));
            Assert.That(c.SlidingWindow, Is.Null);
            Assert.That(c.TieWordEmbeddings, Is.False);
            Assert.That(c.BosTokenId, Is.EqualTo(1));
            Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 2 }));
            Assert.That(c.TorchDtype, Is.EqualTo("float32"));
            Assert.That(c.Generation, Is.Null);
            Assert.That(c.Source, Does.EndWith("config.json"));
        });
    }

    [Test]
    public void RopeThetaAtTopLevelOrUnderRopeParameters()
    {
        Assert.That(ParseEdited(c => c["rope_theta"] = 10000.0).RopeTheta, Is.EqualTo(10000.0));
        var nested = ParseEdited(c =>
        {
            c.Remove("rope_theta");
            c["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 500000 };
        });
        Assert.That(nested.RopeTheta, Is.EqualTo(500000.0));
    }

    [Test]
    public void SlidingWindowNullIntOrAbsent()
    {
        Assert.That(ParseEdited(c => c["sliding_window"] = null).SlidingWindow, Is.Null);
        Assert.That(ParseEdited(c => c["sliding_window"] = 4096).SlidingWindow, Is.EqualTo(4096));
        Assert.That(ParseEdited(c => c.Remove("sliding_window")).SlidingWindow, Is.Null);
    }

    [Test]
    public void EosTokenIdIntOrList()
    {
        Assert.That(ParseEdited(c => c["eos_token_id"] = 7).EosTokenIds, Is.EqualTo(new[] { 7 }));
        Assert.That(ParseEdited(c => c["eos_token_id"] = new JsonArray(2, 5, 9)).EosTokenIds, Is.EqualTo(new[] { 2, 5, 9 }));
        Assert.That(ParseEdited(c => c.Remove("eos_token_id")).EosTokenIds, Is.Empty);
    }

    [Test]
    public void GenerationConfigOverridesTokensAndCarriesSampling()
    {
        const string generation = """{"bos_token_id": 3, "eos_token_id": [2, 4], "do_sample": true, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "max_new_tokens": 64}""";
        var c = ParseEdited(_ => { }, generation);
        Assert.Multiple(() =>
        {
            Assert.That(c.BosTokenId, Is.EqualTo(3));
            Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 2, 4 }));
            Assert.That(c.Generation!.DoSample, Is.True);
            Assert.That(c.Generation.Temperature, Is.EqualTo(0.7));
            Assert.That(c.Generation.TopP, Is.EqualTo(0.9));
            Assert.That(c.Generation.TopK, Is.EqualTo(50));
            Assert.That(c.Generation.MaxNewTokens, Is.EqualTo(64));
        });
    }

    [Test]
    public void LoadReadsGenerationConfigNextToConfig()
    {
        using var files = new TinyModelFiles();
        File.WriteAllText(Path.Combine(files.Dir, "generation_config.json"), """{"eos_token_id": 5, "temperature": 0.5}""");
        var c = ModelConfig.Load(files.Dir);
        Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 5 }));
        Assert.That(c.Generation!.Temperature, Is.EqualTo(0.5));
    }

    [Test]
    public void HeadDimDefaultsToHiddenOverHeads()
    {
        var c = ParseEdited(c => c.Remove("head_dim"));
        Assert.That((c.HeadDim, c.HeadDimExplicit, c.QueryDim), Is.EqualTo((16, false, 64)));
    }

    [Test]
    public void ExplicitHeadDimMayDifferFromHiddenOverHeads()
    {
        // Like Mistral-Nemo: H * Dh != D is legal when head_dim is written out; q_proj is then [H*Dh, D].
        var c = ParseEdited(c => c["head_dim"] = 32);
        Assert.That((c.HeadDim, c.QueryDim, c.KvDim), Is.EqualTo((32, 128, 64)));
        Assert.That(ModelTensors.Expected(c).Single(t => t.Name == TensorNames.Llama.QProj(0)).Shape, Is.EqualTo(new long[] { 128, 64 }));
        Assert.That(ModelTensors.Expected(c).Single(t => t.Name == TensorNames.Llama.OProj(1)).Shape, Is.EqualTo(new long[] { 64, 128 }));
    }

    [Test]
    public void NumKeyValueHeadsDefaultsToHeads()
    {
        Assert.That(ParseEdited(c => c.Remove("num_key_value_heads")).KvHeads, Is.EqualTo(4));
    }

    [Test]
    public void TorchDtypeOrDtype()
    {
        Assert.That(ParseEdited(c => { c.Remove("torch_dtype"); c["dtype"] = "bfloat16"; }).TorchDtype, Is.EqualTo("bfloat16"));
    }

    // Each bad config: the exception names the file and the key, on one line.
    private static IEnumerable<TestCaseData> BadConfigs()
    {
        TestCaseData Case(string name, string key, Action<JsonObject> edit) => new TestCaseData(edit, key).SetName($"BadConfig_{name}");
        yield return Case("MissingHidden", "hidden_size", c => c.Remove("hidden_size"));
        yield return Case("HiddenIsString", "hidden_size", c => c["hidden_size"] = "64");
        yield return Case("HiddenIsFraction", "hidden_size", c => c["hidden_size"] = 64.5);
        yield return Case("ZeroLayers", "num_hidden_layers", c => c["num_hidden_layers"] = 0);
        yield return Case("NegativeVocab", "vocab_size", c => c["vocab_size"] = -3);
        yield return Case("ZeroIntermediate", "intermediate_size", c => c["intermediate_size"] = 0);
        yield return Case("KvHeadsDoNotDivide", "num_key_value_heads", c => c["num_key_value_heads"] = 3);
        yield return Case("HiddenNotMultipleOfHeads", "hidden_size", c => { c.Remove("head_dim"); c["num_attention_heads"] = 3; c["num_key_value_heads"] = 1; });
        yield return Case("OddHeadDim", "head_dim", c => c["head_dim"] = 15);
        yield return Case("TopKZero", "num_experts_per_tok", c => c["num_experts_per_tok"] = 0);
        yield return Case("TopKAboveExperts", "num_experts_per_tok", c => c["num_experts_per_tok"] = 5);
        yield return Case("MissingExperts", "num_local_experts", c => c.Remove("num_local_experts"));
        yield return Case("UnknownModelType", "model_type", c => c["model_type"] = "dbrx");
        yield return Case("UnknownArchitecture", "architectures", c => c["architectures"] = new JsonArray("LlamaForCausalLM"));
        yield return Case("MissingRopeTheta", "rope_theta", c => c.Remove("rope_theta"));
        yield return Case("RopeScaling", "rope_scaling", c => c["rope_scaling"] = new JsonObject { ["factor"] = 2.0 });
        yield return Case("ZeroEps", "rms_norm_eps", c => c["rms_norm_eps"] = 0);
        yield return Case("ZeroSlidingWindow", "sliding_window", c => c["sliding_window"] = 0);
        yield return Case("EosOutsideVocab", "eos_token_id", c => c["eos_token_id"] = new JsonArray(2, 512));
        yield return Case("TieIsString", "tie_word_embeddings", c => c["tie_word_embeddings"] = "no");
        yield return Case("GeluExperts", "hidden_act", c => c["hidden_act"] = "gelu");
        yield return Case("MaxPositionsMissing", "max_position_embeddings", c => c.Remove("max_position_embeddings"));
    }

    [TestCaseSource(nameof(BadConfigs))]
    public void BadConfigNamesFileAndKey(Action<JsonObject> edit, string key)
    {
        var e = ParseFails(edit);
        Assert.That(e.Message, Does.StartWith("/m/config.json: "));
        Assert.That(e.Message, Does.Contain($"'{key}'"));
        Assert.That(e.Key, Is.EqualTo(key));
        Assert.That(e.Message, Does.Not.Contain('\n'));
    }

    [Test]
    public void UnsupportedModelTypeSaysWhichAreSupported()
    {
        Assert.That(ParseFails(c => c["model_type"] = "dbrx").Message, Does.Contain("supported: mixtral"));
    }

    [Test]
    public void BadGenerationConfigNamesThatFile()
    {
        var e = ParseFails(_ => { }, """{"top_p": 1.5}""");
        Assert.That(e.Message, Does.StartWith("/m/generation_config.json: 'top_p'"));
        var eos = ParseFails(_ => { }, """{"eos_token_id": 9999}""");
        Assert.That(eos.Message, Does.StartWith("/m/generation_config.json: 'eos_token_id'"));
    }

    [Test]
    public void MalformedJsonNamesTheFile()
    {
        var e = Assert.Throws<ModelConfigException>(() => ModelConfig.Parse("{\"hidden_size\": 64,, }", "/m/config.json"))!;
        Assert.That(e.Message, Does.StartWith("/m/config.json: is not valid JSON"));
        Assert.Throws<ModelConfigException>(() => ModelConfig.Parse("[1, 2]", "/m/config.json"));
    }

    [Test]
    public void LoadOfAFolderWithoutConfigNamesConfigJson()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ModelConfigException>(() => ModelConfig.Load(dir.Path))!;
        Assert.That(e.Message, Does.StartWith(dir.File("config.json")));
    }
}
