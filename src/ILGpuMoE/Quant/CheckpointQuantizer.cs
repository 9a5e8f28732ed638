// ilgpumoe quantize: a float Mixtral folder -> a folder in our packed layout (QuantCheckpoint.cs documents the
// tensor names and quantization_config). Streams tensor by tensor: one matrix is read (memory-mapped), packed and
// written before the next, so the model is never held in memory.
using System.Text.Json;
using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Quant;

public static class CheckpointQuantizer
{
    /// <summary>
    /// Writes OUT/model.safetensors (packed linear weights + every other tensor as it was), OUT/config.json (the input's
    /// plus quantization_config) and copies the other files of the folder (tokenizer, generation config).
    /// progress: (tensor, bytes written so far, total bytes). Bad input: ModelConfigException / ModelValidationException
    /// / ArgumentException (a group size not dividing a tensor's input dim, naming it).
    /// </summary>
    public static long Run(string inDir, string outDir, QuantSpec spec, Action<string, long, long>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var config = ModelConfig.Load(inDir);
        if (QuantSource.Load(inDir) is { } already)
            throw new ArgumentException($"--model {inDir} is already quantized (quant_method '{already.Method}')");
        if (Path.GetFullPath(inDir).TrimEnd('/') == Path.GetFullPath(outDir).TrimEnd('/'))
            throw new ArgumentException("--out must differ from --model");
        using var checkpoint = Checkpoint.Open(inDir);
        ModelValidator.Validate(config, checkpoint);
        var expected = MixtralTensors.Expected(config).ToList();
        foreach (var e in expected.Where(QuantSource.IsLinear))
            spec.Check(e.Name, e.Shape[0], e.Shape[1]);

        var groups = new List<StreamingSafeTensorsWriter.Group>();
        foreach (var e in expected)
        {
            string name = e.Name;
            if (QuantSource.IsLinear(e))
            {
                int rows = (int)e.Shape[0], cols = (int)e.Shape[1];
                var planned = QuantSource.Tensors(spec, QuantSource.BaseOf(name), rows, cols)
                    .Select(t => new StreamingSafeTensorsWriter.Planned(t.Name, t.DType, t.Shape)).ToList();
                groups.Add(new(planned, () => QuantSource.Bytes(spec.Quantize(checkpoint.ReadFloat32(name), rows, cols))));
            }
            else
            {
                var info = checkpoint.Get(name);
                groups.Add(new([new(name, info.DType, info.Shape)], () => [checkpoint.GetBytes(name).ToArray()]));
            }
        }

        Directory.CreateDirectory(outDir);
        foreach (string stale in Directory.EnumerateFiles(outDir, "model*.safetensors*"))
            File.Delete(stale);
        long total = groups.SelectMany(g => g.Tensors).Sum(t => t.ByteLength), done = 0;
        StreamingSafeTensorsWriter.Write(Path.Combine(outDir, Checkpoint.SingleFileName), groups,
            new Dictionary<string, string> { ["format"] = "pt", ["quantization"] = spec.Name },
            (tensor, bytes) =>
            {
                done += bytes;
                progress?.Invoke(tensor, done, total);
            });

        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(inDir, ModelConfig.ConfigFileName)))!.AsObject();
        json["quantization_config"] = QuantSource.ConfigFor(spec);
        File.WriteAllText(Path.Combine(outDir, ModelConfig.ConfigFileName), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        foreach (string file in Directory.EnumerateFiles(inDir))
        {
            string n = Path.GetFileName(file);
            if (n == ModelConfig.ConfigFileName || n.StartsWith("model", StringComparison.Ordinal) && n.Contains(".safetensors", StringComparison.Ordinal))
                continue;
            File.Copy(file, Path.Combine(outDir, n), overwrite: true);
        }

        return total;
    }
}
