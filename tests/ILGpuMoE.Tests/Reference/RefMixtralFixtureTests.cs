using System.Runtime.InteropServices;
using System.Text.Json;
using ILGpuMoE.IO;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Tests.Reference;

/// <summary>The oracle's forward pass against logits that llama.cpp computed from the same checkpoint
/// (TestData/mixtral-tiny-f32, see its PROVENANCE.md).</summary>
public class RefMixtralFixtureTests
{
    private static string FixtureDir => Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", "mixtral-tiny-f32");

    /// <summary>Hugging Face config.json to the oracle's config (head_dim defaults to hidden / heads; a null
    /// sliding_window means none).</summary>
    internal static RefMixtralConfig ReadConfig(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var j = doc.RootElement;
        int Int(string name) => j.GetProperty(name).GetInt32();
        bool Has(string name) => j.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null;
        int hidden = Int("hidden_size"), heads = Int("num_attention_heads");
        return new RefMixtralConfig(
            Hidden: hidden,
            Intermediate: Int("intermediate_size"),
            Layers: Int("num_hidden_layers"),
            Heads: heads,
            KvHeads: Int("num_key_value_heads"),
            HeadDim: Has("head_dim") ? Int("head_dim") : hidden / heads,
            RmsEps: (float)j.GetProperty("rms_norm_eps").GetDouble(),
            RopeTheta: (float)j.GetProperty("rope_theta").GetDouble(),
            SlidingWindow: Has("sliding_window") ? Int("sliding_window") : 0,
            Experts: Int("num_local_experts"),
            TopK: Int("num_experts_per_tok"),
            Vocab: Int("vocab_size"),
            TieEmbeddings: Has("tie_word_embeddings") && j.GetProperty("tie_word_embeddings").GetBoolean());
    }

    [Test]
    public void ForwardReproducesLlamaCppLogits()
    {
        var config = ReadConfig(Path.Combine(FixtureDir, "config.json"));
        using var checkpoint = Checkpoint.Open(FixtureDir);
        using var expected = SafeTensorsFile.Open(Path.Combine(FixtureDir, "expected.safetensors"));
        var tokensInfo = expected.Get("tokens");
        Assert.That(tokensInfo.DType, Is.EqualTo(DType.I32));
        int[] tokens = MemoryMarshal.Cast<byte, int>(expected.GetBytes("tokens")).ToArray();
        float[] want = expected.ReadFloat32("logits");
        int t = tokens.Length, v = config.Vocab;
        Assert.That(want, Has.Length.EqualTo(t * v));

        var model = new RefMixtral(config, checkpoint.ReadFloat32);
        var got = model.Forward(tokens);
        Assert.That(got, Has.Length.EqualTo(t * v));
        double worst = 0;
        for (int i = 0; i < got.Length; i++)
        {
            Assert.That(float.IsFinite(got[i]), $"logit {i} is {got[i]}");
            worst = Math.Max(worst, Math.Abs((double)got[i] - want[i]));
        }

        TestContext.Out.WriteLine($"max |oracle - llama.cpp| = {worst:E3} over {t} x {v} logits");
        Assert.That(worst, Is.LessThanOrEqualTo(1e-4), "max abs logit difference");
        for (int row = 0; row < t; row++)
            Assert.That(ArgMax(got.AsSpan(row * v, v)), Is.EqualTo(ArgMax(want.AsSpan(row * v, v))), $"argmax of token {row}");

        // Decoding the last tokens one by one after a prefill gives the same logits.
        var session = model.NewSession();
        var pieces = new List<float>(session.Step(tokens.AsSpan(0, 12)));
        for (int i = 12; i < t; i++)
            pieces.AddRange(session.Step(tokens.AsSpan(i, 1)));
        Assert.That(pieces, Is.EqualTo(got));
    }

    private static int ArgMax(ReadOnlySpan<float> row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++)
        {
            if (row[i] > row[best])
                best = i;
        }

        return best;
    }
}
