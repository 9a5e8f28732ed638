using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Runtime;
using ILGpuMoE.Tokenizer;

namespace ILGpuMoE.Tests.Cli;

/// <summary>The CLI on the newer families: logits on each fixture, generate (with --chat and routing statistics) on a
/// random Qwen2-MoE with a tokenizer, and the family seam's refusals (unknown model_type, a missing tensor).</summary>
public class FamilyCliTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-famcli-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    [TestCaseSource(typeof(FamilyFixtureTests), nameof(FamilyFixtureTests.Fixtures))]
    public void LogitsReproduceTheFixture(string fixture)
    {
        var (tokens, want) = FamilyFixtureTests.Expected(fixture);
        string outPath = Path.Combine(_dir, fixture + ".safetensors");
        var run = CliRun.Of("logits", "--model", FamilyFixtureTests.Dir(fixture), "--tokens", string.Join(",", tokens), "--out", outPath, "--device", "cpu");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        using var file = SafeTensorsFile.Open(outPath);
        var got = file.ReadFloat32("logits");
        RuntimeTests.CloseLogged(want, got, rtol: 0, atol: RuntimeTests.FixtureAtol, what: $"ilgpumoe logits on {fixture}");
    }

    [Test]
    public void GenerateRunsAQwen2MoeInItsChatFormat()
    {
        string model = Path.Combine(_dir, "qwen2");
        RandomMoe.Write(model, new RandomMoeOptions { Family = RefFamily.Qwen2Moe, Hidden = 48, Experts = 6, TopK = 2, Seed = 401 });
        var run = CliRun.Of("generate", "--model", model, "--prompt", "a b c", "-n", "3", "--temperature", "0", "--chat", "--routing-stats", "--device", "cpu");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Err, Does.Contain("tokens generated"));
        Assert.That(run.Err, Does.Contain("routing (softmax top-2): tokens per expert"));

        // The prompt the chat form gives: ChatML, no BOS, as Qwen's chat template renders one user turn.
        using var tokenizer = TextTokenizer.Load(model);
        var ids = Generator.Tokenize(tokenizer, "a b c", chat: true, vocab: 300, ModelConfig.Load(model).Family);
        Assert.That(ids, Is.EqualTo(tokenizer.Encode("<|im_start|>user\na b c<|im_end|>\n<|im_start|>assistant\n", addBos: false)));
    }

    // generate on the two newest families: gpt-oss with MXFP4 experts in its harmony chat format, DeepSeek-V3 (MLA).
    [TestCase(RefFamily.GptOss, "<|start|>user<|message|>a b c<|end|><|start|>assistant")]
    [TestCase(RefFamily.DeepSeekV3, "<｜User｜>a b c<｜Assistant｜>")]
    public void GenerateRunsTheNewestFamilies(RefFamily family, string chatTail)
    {
        string model = Path.Combine(_dir, $"gen-{family}");
        RandomMoe.Write(model, family == RefFamily.GptOss
            ? new RandomMoeOptions { Family = family, Hidden = 64, HeadDim = 16, Experts = 4, TopK = 2, MoeIntermediate = 32, Mxfp4Experts = true, Seed = 402 }
            : new RandomMoeOptions { Family = family, Hidden = 48, Heads = 2, KvHeads = 2, Experts = 8, TopK = 2, Groups = 2, TopKGroups = 1, Seed = 403 });
        var run = CliRun.Of("generate", "--model", model, "--prompt", "a b c", "-n", "3", "--temperature", "0", "--chat", "--device", "cpu");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Err, Does.Contain("tokens generated"));
        using var tokenizer = TextTokenizer.Load(model);
        var config = ModelConfig.Load(model);
        var (text, _) = config.Family.ChatPrompt("a b c");
        Assert.That(text, Does.EndWith(chatTail));
        var ids = Generator.Tokenize(tokenizer, "a b c", chat: true, vocab: config.VocabSize, config.Family);
        Assert.That(ids, Is.Not.Empty);
    }

    [Test]
    public void AnUnknownModelTypeExits2NamingTheSupportedOnes()
    {
        string model = Path.Combine(_dir, "dbrx");
        CopyFixture("qwen3-moe-tiny-f32", model);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(model, "config.json")))!;
        config["model_type"] = "dbrx";
        config["architectures"] = new JsonArray("DbrxForCausalLM");
        File.WriteAllText(Path.Combine(model, "config.json"), config.ToJsonString());
        var line = CliRun.Of("logits", "--model", model, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu").AssertBadInput();
        Assert.That(line, Does.Contain("'dbrx' is not supported").And.Contain("mixtral, qwen3_moe, qwen2_moe, olmoe"));
    }

    [Test]
    public void AMissingTensorExits2NamingTheFirstOne()
    {
        // A Qwen2-MoE without its shared expert's gate: the seam expects it from shared_expert_intermediate_size.
        string model = Path.Combine(_dir, "noshared");
        CopyFixture("qwen2-moe-tiny-f32", model);
        string st = Path.Combine(model, "model.safetensors");
        using (var file = SafeTensorsFile.Open(st))
        {
            var kept = file.Tensors.Where(t => t.Name != "model.layers.0.mlp.shared_expert_gate.weight")
                .Select(t => new SafeTensorsWriter.Entry(t.Name, t.DType, t.Shape, file.GetBytes(t.Name).ToArray())).ToList();
            File.Delete(st + ".tmp");
            SafeTensorsWriter.Write(st + ".tmp", kept);
        }

        File.Move(st + ".tmp", st, overwrite: true);
        var line = CliRun.Of("logits", "--model", model, "--tokens", "1,2", "--out", Path.Combine(_dir, "y.safetensors"), "--device", "cpu").AssertBadInput();
        Assert.That(line, Does.Contain("tensor 'model.layers.0.mlp.shared_expert_gate.weight' is missing"));
    }

    // gpt-oss's MXFP4 blocks cut short (a block's 16 bytes become 8: [E, 2F, G, 8]), the checkpoint otherwise intact.
    [Test]
    public void MalformedMxfp4BlocksExit2NamingTheTensor()
    {
        string model = Path.Combine(_dir, "mxfp4-short");
        CopyFixture("gpt-oss-tiny-mxfp4", model);
        RewriteTensors(model, t => t.Name == "model.layers.1.mlp.experts.down_proj_blocks"
            ? new SafeTensorsWriter.Entry(t.Name, t.DType, [t.Shape[0], t.Shape[1], t.Shape[2], 8], t.Data.Slice(0, t.Data.Length / 2))
            : t);
        var line = CliRun.Of("logits", "--model", model, "--tokens", "1,2", "--out", Path.Combine(_dir, "m.safetensors"), "--device", "cpu").AssertBadInput();
        Assert.That(line, Does.Contain("model.layers.1.mlp.experts.down_proj").And.Contain("MXFP4"));
    }

    [Test]
    public void QuantizeRefusesGptOssStackedExperts()
    {
        var line = CliRun.Of("quantize", "--model", FamilyFixtureTests.Dir("gpt-oss-tiny-mxfp4"), "--out", Path.Combine(_dir, "q"), "--scheme", "int8").AssertBadInput();
        Assert.That(line, Does.Contain("stacked").And.Contain("--quant"));
    }

    // DeepSeek-V3 whose kv_b_proj does not expand the latent it is given (kv_lora_rank 24 in config, 20 columns stored).
    [Test]
    public void InconsistentMlaShapesExit2NamingTheTensor()
    {
        string model = Path.Combine(_dir, "mla-bad");
        CopyFixture("deepseek-v3-tiny", model);
        RewriteTensors(model, t => t.Name == "model.layers.0.self_attn.kv_b_proj.weight"
            ? new SafeTensorsWriter.Entry(t.Name, t.DType, [t.Shape[0], 20], t.Data.Slice(0, (int)(t.Shape[0] * 20 * 2)))
            : t);
        var line = CliRun.Of("logits", "--model", model, "--tokens", "1,2", "--out", Path.Combine(_dir, "d.safetensors"), "--device", "cpu").AssertBadInput();
        Assert.That(line, Does.Contain("model.layers.0.self_attn.kv_b_proj.weight").And.Contain("[128, 20]"));
    }

    private static void RewriteTensors(string model, Func<SafeTensorsWriter.Entry, SafeTensorsWriter.Entry> edit)
    {
        string st = Path.Combine(model, "model.safetensors");
        using (var file = SafeTensorsFile.Open(st))
        {
            var entries = file.Tensors.Select(t => edit(new SafeTensorsWriter.Entry(t.Name, t.DType, t.Shape, file.GetBytes(t.Name).ToArray()))).ToList();
            SafeTensorsWriter.Write(st + ".tmp", entries);
        }

        File.Move(st + ".tmp", st, overwrite: true);
    }

    private static void CopyFixture(string fixture, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(FamilyFixtureTests.Dir(fixture)))
            File.Copy(f, Path.Combine(to, Path.GetFileName(f)), overwrite: true);
    }
}
