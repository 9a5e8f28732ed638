// The tiny Mixtral fixture and broken copies of it, written to a temp folder by hand (no runtime code involved,
// so a bug in the reader cannot hide a bug in the broken file).
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ILGpuMoE.Tests.IO;

namespace ILGpuMoE.Tests.Model;

public sealed class TinyModelFiles : IDisposable
{
    public static string FixtureDir => Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", "mixtral-tiny-f32");

    private readonly TempDir _temp = new();

    /// <summary>A fresh copy of config.json and model.safetensors in a temp folder.</summary>
    public TinyModelFiles()
    {
        File.Copy(Path.Combine(FixtureDir, "config.json"), ConfigPath);
        File.Copy(Path.Combine(FixtureDir, "model.safetensors"), WeightsPath);
    }

    public string Dir => _temp.Path;

    public string ConfigPath => Path.Combine(Dir, "config.json");

    public string WeightsPath => Path.Combine(Dir, "model.safetensors");

    /// <summary>The fixture's config.json as a mutable JSON object.</summary>
    public static JsonObject FixtureConfig() =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(FixtureDir, "config.json")))!.AsObject();

    public void EditConfig(Action<JsonObject> edit)
    {
        var config = JsonNode.Parse(File.ReadAllText(ConfigPath))!.AsObject();
        edit(config);
        File.WriteAllText(ConfigPath, config.ToJsonString());
    }

    public void Truncate(long length)
    {
        using var f = new FileStream(WeightsPath, FileMode.Open, FileAccess.Write);
        f.SetLength(length);
    }

    /// <summary>
    /// Rewrites model.safetensors keeping only the tensors <paramref name="keep"/> accepts (data repacked), then
    /// appending an F32 tensor <paramref name="extraName"/> of <paramref name="extraLength"/> elements when given.
    /// </summary>
    public void RewriteWeights(Func<string, bool> keep, string? extraName = null, int extraLength = 0)
    {
        var bytes = File.ReadAllBytes(WeightsPath);
        var headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, headerLength))!.AsObject();
        var data = bytes.AsSpan(8 + headerLength);

        var newHeader = new JsonObject();
        var newData = new MemoryStream();
        foreach (var (name, node) in header.ToList())
        {
            var entry = node!.AsObject();
            if (name == "__metadata__")
            {
                newHeader[name] = entry.DeepClone();
                continue;
            }

            if (!keep(name))
                continue;
            var offsets = entry["data_offsets"]!.AsArray();
            long begin = offsets[0]!.GetValue<long>(), end = offsets[1]!.GetValue<long>();
            var copy = entry.DeepClone().AsObject();
            copy["data_offsets"] = new JsonArray(newData.Length, newData.Length + (end - begin));
            newData.Write(data[(int)begin..(int)end]);
            newHeader[name] = copy;
        }

        if (extraName is not null)
        {
            newHeader[extraName] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray(extraLength),
                ["data_offsets"] = new JsonArray(newData.Length, newData.Length + 4L * extraLength),
            };
            newData.Write(Crafted.Counting(4 * extraLength));
        }

        var json = newHeader.ToJsonString();
        json += new string(' ', (8 - Encoding.UTF8.GetByteCount(json) % 8) % 8);
        File.WriteAllBytes(WeightsPath, Crafted.Bytes(json, newData.ToArray()));
    }

    public void Dispose() => _temp.Dispose();
}

/// <summary>Parameter counts of the fixture, from config.json's numbers by hand (not through ModelConfig).</summary>
public static class TinyModelArithmetic
{
    public static (long Total, long Active, long ActiveNoEmbed) Counts()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(TinyModelFiles.FixtureDir, "config.json")));
        var c = doc.RootElement;
        long v = c.GetProperty("vocab_size").GetInt64(), d = c.GetProperty("hidden_size").GetInt64();
        long f = c.GetProperty("intermediate_size").GetInt64(), layers = c.GetProperty("num_hidden_layers").GetInt64();
        long h = c.GetProperty("num_attention_heads").GetInt64(), hkv = c.GetProperty("num_key_value_heads").GetInt64();
        long dh = c.GetProperty("head_dim").GetInt64(), e = c.GetProperty("num_local_experts").GetInt64();
        long k = c.GetProperty("num_experts_per_tok").GetInt64();
        Assert.That(c.GetProperty("tie_word_embeddings").GetBoolean(), Is.False, "the arithmetic below assumes an untied lm_head");

        // One layer, tensor by tensor.
        long q = h * dh * d, kProj = hkv * dh * d, vProj = hkv * dh * d, o = d * h * dh;
        long norms = d + d, gate = e * d;
        long w1 = f * d, w3 = f * d, w2 = d * f;
        long layerShared = q + kProj + vProj + o + norms + gate;
        long embed = v * d, head = v * d, finalNorm = d;

        var total = embed + head + finalNorm + layers * (layerShared + e * (w1 + w2 + w3));
        var active = embed + head + finalNorm + layers * (layerShared + k * (w1 + w2 + w3));
        return (total, active, active - embed - head);
    }
}
