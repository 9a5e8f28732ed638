using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Tests.Model;

public class ParameterCountTests
{
    [Test]
    public void FixtureCountsMatchConfigArithmetic()
    {
        var (total, active, activeNoEmbed) = TinyModelArithmetic.Counts();
        var counts = ParameterCounts.Of(ModelConfig.Load(TinyModelFiles.FixtureDir));
        Assert.That(counts.Total, Is.EqualTo(total));
        Assert.That(counts.ActiveWithEmbeddings, Is.EqualTo(active));
        Assert.That(counts.ActiveWithoutEmbeddings, Is.EqualTo(activeNoEmbed));
        Assert.That(counts.ActiveWithEmbeddings, Is.LessThan(counts.Total));
    }

    [Test]
    public void FixtureTotalEqualsTheCheckpointsElementCount()
    {
        using var checkpoint = Checkpoint.Open(TinyModelFiles.FixtureDir);
        var stored = checkpoint.Tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b));
        Assert.That(ParameterCounts.Of(ModelConfig.Load(TinyModelFiles.FixtureDir)).Total, Is.EqualTo(stored));
    }

    [Test]
    public void Mixtral8x7BMatchesItsPublishedSize()
    {
        // Mistral's announcement: 46.7B total, 12.9B active per token. Exact values worked out by hand from the
        // architecture (V=32000, D=4096, F=14336, L=32, H=32, Hkv=8, Dh=128, E=8, K=2, untied lm_head).
        var config = TinyModelFiles.FixtureConfig();
        config["vocab_size"] = 32000;
        config["hidden_size"] = 4096;
        config["intermediate_size"] = 14336;
        config["num_hidden_layers"] = 32;
        config["num_attention_heads"] = 32;
        config["num_key_value_heads"] = 8;
        config["head_dim"] = 128;
        config["num_local_experts"] = 8;
        config["num_experts_per_tok"] = 2;
        config["max_position_embeddings"] = 32768;
        var counts = ParameterCounts.Of(ModelConfig.Parse(config.ToJsonString()));
        Assert.That(counts.Total, Is.EqualTo(46_702_792_704L));
        Assert.That(counts.ActiveWithEmbeddings, Is.EqualTo(12_879_925_248L));
        Assert.That(counts.ActiveWithoutEmbeddings, Is.EqualTo(12_879_925_248L - 2L * 32000 * 4096));
    }

    [Test]
    public void TiedEmbeddingsAreCountedOnceAndNeedNoLmHead()
    {
        var config = TinyModelFiles.FixtureConfig();
        config["tie_word_embeddings"] = true;
        var tied = ModelConfig.Parse(config.ToJsonString());
        var untied = ModelConfig.Load(TinyModelFiles.FixtureDir);
        Assert.That(ParameterCounts.Of(untied).Total - ParameterCounts.Of(tied).Total, Is.EqualTo(512L * 64));
        Assert.That(ModelTensors.Expected(tied).Any(t => t.Name == TensorNames.Llama.LmHead), Is.False);
        Assert.That(ParameterCounts.Of(tied).Total, Is.EqualTo(ModelTensors.Expected(tied).Sum(t => t.ElementCount)));
    }
}
