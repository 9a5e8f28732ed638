using System.Text.Json;
using ILGpuMoE.IO;
using ILGpuMoE.Tokenizer;

namespace ILGpuMoE.Tests.Tools;

/// <summary>make-model: runs the tool in-process, reopens the result with Checkpoint and checks it against
/// Hugging Face's Mixtral layout written out here by hand.</summary>
public class MakeModelTests
{
    private string _root = "";

    [OneTimeSetUp]
    public void Setup() => _root = Directory.CreateTempSubdirectory("ilgpumoe-mm-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_root, recursive: true);

    private static (int Rc, string Out, string Err) Tool(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int rc = ILGpuMoE.Tools.Program.Run(args, o, e);
        return (rc, o.ToString(), e.ToString());
    }

    // HF MixtralForCausalLM's state dict, by hand: [out, in] linear weights.
    private static List<(string, long[])> ExpectedTensors(int d, int layers, int e, int f, int h, int hkv, int dh, int v, bool tied)
    {
        var list = new List<(string, long[])> { ("model.embed_tokens.weight", [v, d]), ("model.norm.weight", [d]) };
        if (!tied)
            list.Add(("lm_head.weight", [v, d]));
        for (int l = 0; l < layers; l++)
        {
            list.Add(($"model.layers.{l}.input_layernorm.weight", [d]));
            list.Add(($"model.layers.{l}.post_attention_layernorm.weight", [d]));
            list.Add(($"model.layers.{l}.self_attn.q_proj.weight", [h * dh, d]));
            list.Add(($"model.layers.{l}.self_attn.k_proj.weight", [hkv * dh, d]));
            list.Add(($"model.layers.{l}.self_attn.v_proj.weight", [hkv * dh, d]));
            list.Add(($"model.layers.{l}.self_attn.o_proj.weight", [d, h * dh]));
            list.Add(($"model.layers.{l}.block_sparse_moe.gate.weight", [e, d]));
            for (int x = 0; x < e; x++)
            {
                list.Add(($"model.layers.{l}.block_sparse_moe.experts.{x}.w1.weight", [f, d]));
                list.Add(($"model.layers.{l}.block_sparse_moe.experts.{x}.w2.weight", [d, f]));
                list.Add(($"model.layers.{l}.block_sparse_moe.experts.{x}.w3.weight", [f, d]));
            }
        }

        return list;
    }

    [TestCase("f32", DType.F32, 1, false)]
    [TestCase("bf16", DType.BF16, 3, true)]
    [TestCase("f16", DType.F16, 1, false)]
    public void WritesHuggingFaceLayout(string dtypeArg, DType dtype, int shards, bool tied)
    {
        string dir = Path.Combine(_root, $"m-{dtypeArg}-{shards}-{tied}");
        var args = new List<string> { "make-model", "--out", dir, "--hidden", "48", "--layers", "2", "--experts", "3", "--top-k", "2",
            "--ffn", "40", "--heads", "6", "--kv-heads", "2", "--head-dim", "10", "--vocab", "300", "--dtype", dtypeArg, "--seed", "7",
            "--shards", shards.ToString(), "--sliding-window", "64", "--rope-theta", "10000" };
        if (tied)
            args.Add("--tie-embeddings");
        var (rc, _, err) = Tool([.. args]);
        Assert.That(rc, Is.EqualTo(0), err);

        using var ck = Checkpoint.Open(dir);
        var expected = ExpectedTensors(48, 2, 3, 40, 6, 2, 10, 300, tied);
        Assert.That(ck.Tensors.Select(t => t.Name).Order(), Is.EqualTo(expected.Select(t => t.Item1).Order()));
        foreach (var (name, shape) in expected)
        {
            var info = ck.Get(name);
            Assert.That(info.Shape, Is.EqualTo(shape), name);
            Assert.That(info.DType, Is.EqualTo(dtype), name);
            var values = ck.ReadFloat32(name);
            Assert.That(values.All(float.IsFinite), name);
            Assert.That(values.Distinct().Count(), Is.GreaterThan(Math.Min(values.Length / 4, 100)), $"{name}: values look constant");
            if (name.EndsWith("norm.weight"))
                Assert.That(Math.Abs(values.Average() - 1), Is.LessThan(0.1), $"{name}: norm weights near 1");
            else if (name.Contains("proj") || name.Contains("experts") || name.Contains("gate"))
            {
                double rms = Math.Sqrt(values.Select(x => (double)x * x).Average());
                Assert.That(rms * Math.Sqrt(shape[1]), Is.InRange(0.8, 1.2), $"{name}: std ~ 1/sqrt(fan_in)");
            }
        }

        Assert.That(File.Exists(Path.Combine(dir, "model.safetensors.index.json")), Is.EqualTo(shards > 1));
        if (shards > 1)
            Assert.That(ck.Shards, Has.Count.EqualTo(shards));

        using var cfg = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "config.json")));
        var c = cfg.RootElement;
        Assert.That(c.GetProperty("model_type").GetString(), Is.EqualTo("mixtral"));
        Assert.That(c.GetProperty("architectures")[0].GetString(), Is.EqualTo("MixtralForCausalLM"));
        Assert.That(c.GetProperty("hidden_size").GetInt32(), Is.EqualTo(48));
        Assert.That(c.GetProperty("intermediate_size").GetInt32(), Is.EqualTo(40));
        Assert.That(c.GetProperty("num_hidden_layers").GetInt32(), Is.EqualTo(2));
        Assert.That(c.GetProperty("num_attention_heads").GetInt32(), Is.EqualTo(6));
        Assert.That(c.GetProperty("num_key_value_heads").GetInt32(), Is.EqualTo(2));
        Assert.That(c.GetProperty("head_dim").GetInt32(), Is.EqualTo(10));
        Assert.That(c.GetProperty("num_local_experts").GetInt32(), Is.EqualTo(3));
        Assert.That(c.GetProperty("num_experts_per_tok").GetInt32(), Is.EqualTo(2));
        Assert.That(c.GetProperty("vocab_size").GetInt32(), Is.EqualTo(300));
        Assert.That(c.GetProperty("rope_theta").GetDouble(), Is.EqualTo(10000.0));
        Assert.That(c.GetProperty("rms_norm_eps").GetDouble(), Is.EqualTo(1e-5));
        Assert.That(c.GetProperty("sliding_window").GetInt32(), Is.EqualTo(64));
        Assert.That(c.GetProperty("tie_word_embeddings").GetBoolean(), Is.EqualTo(tied));
        Assert.That(c.GetProperty("torch_dtype").GetString(), Is.EqualTo(dtypeArg switch { "f32" => "float32", "f16" => "float16", _ => "bfloat16" }));
        using var gen = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "generation_config.json")));
        Assert.That(gen.RootElement.GetProperty("eos_token_id").GetInt32(), Is.EqualTo(2));

        using var tok = TextTokenizer.Load(dir);
        Assert.That(tok.VocabSize, Is.EqualTo(300));
        Assert.That(tok.Decode(tok.Encode("make a model", addBos: true)), Is.EqualTo("make a model"));
    }

    [Test]
    public void SameSeedSameBytesOtherSeedOtherValues()
    {
        string a = Path.Combine(_root, "seed-a"), b = Path.Combine(_root, "seed-b"), c = Path.Combine(_root, "seed-c"), s = Path.Combine(_root, "seed-sharded");
        Assert.That(Tool("make-model", "--out", a, "--seed", "3").Rc, Is.EqualTo(0));
        Assert.That(Tool("make-model", "--out", b, "--seed", "3").Rc, Is.EqualTo(0));
        Assert.That(Tool("make-model", "--out", c, "--seed", "4").Rc, Is.EqualTo(0));
        Assert.That(Tool("make-model", "--out", s, "--seed", "3", "--shards", "2").Rc, Is.EqualTo(0));
        // SequenceEqual: NUnit's element-wise collection comparison is seconds on ~1 MB.
        Assert.That(File.ReadAllBytes(Path.Combine(b, "model.safetensors")).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(a, "model.safetensors"))), "same seed, different bytes");
        using var ca = Checkpoint.Open(a);
        using var cc = Checkpoint.Open(c);
        using var cs = Checkpoint.Open(s);
        foreach (var t in ca.Tensors)
        {
            Assert.That(cs.ReadFloat32(t.Name).AsSpan().SequenceEqual(ca.ReadFloat32(t.Name)), $"{t.Name}: sharding changed values");
            Assert.That(cc.ReadFloat32(t.Name).AsSpan().SequenceEqual(ca.ReadFloat32(t.Name)), Is.False, $"{t.Name}: seed ignored");
        }

        // Rewriting a directory with another layout leaves no stale files behind.
        Assert.That(Tool("make-model", "--out", a, "--seed", "3", "--shards", "2").Rc, Is.EqualTo(0));
        Assert.That(File.Exists(Path.Combine(a, "model.safetensors")), Is.False);
    }

    [TestCase("--vocab", "200", "too small")]
    [TestCase("--top-k", "5", "top-k")]
    [TestCase("--kv-heads", "3", "kv-heads")]
    [TestCase("--dtype", "f8", "f8")]
    [TestCase("--hidden", "0", "hidden")]
    public void BadArgumentsGiveOneLineErrors(string option, string value, string mention)
    {
        var (rc, _, err) = Tool("make-model", "--out", Path.Combine(_root, "bad"), option, value);
        Assert.That(rc, Is.Not.EqualTo(0));
        Assert.That(err, Does.Contain(mention));
        Assert.That(err.Trim().Split('\n'), Has.Length.EqualTo(1), err);
    }
}
