using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using ILGpuMoE.IO;
using ILGpuMoE.Tests.Model;

namespace ILGpuMoE.Tests.Cli;

public class InspectCommandTests
{
    // The count on the table row whose first cell is exactly the label (numbers are printed as 1,234,567 (1.2 K)).
    private static long RowCount(string output, string label)
    {
        var cells = output.Split('\n')
            .Select(l => l.Split('│', StringSplitOptions.TrimEntries))
            .Single(c => c.Length >= 3 && c[1] == label);
        var m = Regex.Match(cells[2], @"^(\d{1,3}(,\d{3})*) \(");
        Assert.That(m.Success, Is.True, cells[2]);
        return long.Parse(m.Groups[1].Value, NumberStyles.AllowThousands, CultureInfo.InvariantCulture);
    }

    [Test]
    public void InspectsTheFixture()
    {
        var run = CliRun.Of("inspect", TinyModelFiles.FixtureDir);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Err, Is.Empty);

        var (total, active, activeNoEmbed) = TinyModelArithmetic.Counts();
        Assert.That(RowCount(run.Out, "total parameters"), Is.EqualTo(total));
        Assert.That(RowCount(run.Out, "active parameters per token (with embeddings, top-2 of 4 experts)"), Is.EqualTo(active));
        Assert.That(RowCount(run.Out, "active parameters per token (without embeddings)"), Is.EqualTo(activeNoEmbed));
        Assert.That(run.Out, Does.Contain("MixtralForCausalLM"));
        // 41 F32 tensors, 4 bytes per parameter.
        Assert.That(run.Out, Does.Match(@"F32\s*│\s*41\s*│\s*" + Regex.Escape((total * 4).ToString("N0", CultureInfo.InvariantCulture))));
    }

    [Test]
    public void InspectsAShardedBf16Copy()
    {
        // The fixture's weights rewritten as BF16 in 3 shards + index: same counts, half the bytes, all BF16.
        using var files = new TinyModelFiles();
        var shardDir = Path.Combine(files.Dir, "sharded");
        Directory.CreateDirectory(shardDir);
        File.Copy(files.ConfigPath, Path.Combine(shardDir, "config.json"));
        using (var checkpoint = Checkpoint.Open(files.Dir))
        {
            var entries = checkpoint.Tensors
                .Select(t => SafeTensorsWriter.FromFloats(t.Name, t.Shape, checkpoint.ReadFloat32(t.Name), DType.BF16))
                .ToList();
            SafeTensorsWriter.WriteSharded(shardDir, entries, 3);
        }

        var run = CliRun.Of("inspect", shardDir);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        var (total, active, _) = TinyModelArithmetic.Counts();
        Assert.That(RowCount(run.Out, "total parameters"), Is.EqualTo(total));
        Assert.That(RowCount(run.Out, "active parameters per token (with embeddings, top-2 of 4 experts)"), Is.EqualTo(active));
        Assert.That(run.Out, Does.Match(@"BF16\s*│\s*41\s*│\s*" + Regex.Escape((total * 2).ToString("N0", CultureInfo.InvariantCulture))));
        Assert.That(run.Out, Does.Not.Contain("F32 "));
    }

    [Test]
    public void MissingFolder()
    {
        var line = CliRun.Of("inspect", "/no/such/model").AssertBadInput();
        Assert.That(line, Does.Contain("/no/such/model"));
    }

    [Test]
    public void TruncatedSafetensors()
    {
        using var files = new TinyModelFiles();
        files.Truncate(new FileInfo(files.WeightsPath).Length / 2);
        Assert.That(CliRun.Of("inspect", files.Dir).AssertBadInput(), Does.Contain("model.safetensors"));
    }

    [Test]
    public void GarbageHeader()
    {
        using var files = new TinyModelFiles();
        var bytes = File.ReadAllBytes(files.WeightsPath);
        Encoding.ASCII.GetBytes("{\"model.embed_tokens.weight\": [not json").CopyTo(bytes, 8);
        File.WriteAllBytes(files.WeightsPath, bytes);
        Assert.That(CliRun.Of("inspect", files.Dir).AssertBadInput(), Does.Contain("model.safetensors"));
    }

    [Test]
    public void HeaderLengthBeyondTheFile()
    {
        using var files = new TinyModelFiles();
        var bytes = File.ReadAllBytes(files.WeightsPath);
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), ulong.MaxValue / 3);
        File.WriteAllBytes(files.WeightsPath, bytes);
        Assert.That(CliRun.Of("inspect", files.Dir).AssertBadInput(), Does.Contain("model.safetensors"));
    }

    [Test]
    public void HeadsNotDividedByKvHeads()
    {
        using var files = new TinyModelFiles();
        files.EditConfig(c => c["num_key_value_heads"] = 3);
        var line = CliRun.Of("inspect", files.Dir).AssertBadInput();
        Assert.That(line, Does.Contain("config.json").And.Contain("'num_key_value_heads'"));
    }

    [Test]
    public void MalformedConfig()
    {
        using var files = new TinyModelFiles();
        File.WriteAllText(files.ConfigPath, "{ \"hidden_size\": ");
        Assert.That(CliRun.Of("inspect", files.Dir).AssertBadInput(), Does.Contain("config.json"));
    }

    [Test]
    public void MissingTensor()
    {
        const string dropped = "model.layers.1.self_attn.o_proj.weight";
        using var files = new TinyModelFiles();
        files.RewriteWeights(name => name != dropped);
        var line = CliRun.Of("inspect", files.Dir).AssertBadInput();
        Assert.That(line, Does.Contain($"'{dropped}' is missing"));
    }

    [Test]
    public void WrongShapeAfterAConfigChange()
    {
        // The config says F=64 while the experts are [128, 64]: every expert weight is named as misshapen.
        using var files = new TinyModelFiles();
        files.EditConfig(c => c["intermediate_size"] = 64);
        var line = CliRun.Of("inspect", files.Dir).AssertBadInput();
        Assert.That(line, Does.Contain("'model.layers.0.block_sparse_moe.experts.0.w1.weight' has shape [128, 64], expected [64, 64]"));
    }

    [Test]
    public void ExtraTensorsAreReportedButAccepted()
    {
        using var files = new TinyModelFiles();
        files.RewriteWeights(_ => true, "model.layers.0.self_attn.rotary_emb.inv_freq", 8);
        var run = CliRun.Of("inspect", files.Dir);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Out, Does.Match(@"F32\s*│\s*42\s*│"));
        Assert.That(run.Out, Does.Contain("1 tensor(s) not used by the model (ignored)"));
        Assert.That(RowCount(run.Out, "total parameters"), Is.EqualTo(TinyModelArithmetic.Counts().Total));
    }
}
