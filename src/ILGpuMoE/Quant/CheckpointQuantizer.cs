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
        RefuseStacked(config);
        if (QuantSource.Load(inDir) is { } already)
            throw new ArgumentException($"--model {inDir} is already quantized (quant_method '{already.Method}'); leave --scheme out to repack it into our layout");
        if (Path.GetFullPath(inDir).TrimEnd('/') == Path.GetFullPath(outDir).TrimEnd('/'))
            throw new ArgumentException("--out must differ from --model");
        using var checkpoint = Checkpoint.Open(inDir);
        QuantSource.Validate(config, checkpoint, null);
        var expected = ModelTensors.Expected(config).ToList();
        spec.CheckLinearWeights(config);

        var groups = new List<StreamingSafeTensorsWriter.Group>();
        foreach (var e in expected)
        {
            string name = e.Name;
            // A shared expert's or a dense MLP's projections stay in their float dtype: the runtime cuts them into F-wide
            // experts along the hidden axis (ExpectedTensor.Packed) and packs each chunk at load with this scheme, which
            // a packing of the whole width (down's per-row scales span every chunk) would not reproduce.
            if (QuantSource.IsLinear(e) && e.Role is not (TensorRole.SharedExpert or TensorRole.DenseMlp))
            {
                int rows = (int)e.Shape[0], cols = (int)e.Shape[1];
                var planned = QuantSource.Tensors(spec, QuantSource.BaseOf(name), rows, cols)
                    .Select(t => new StreamingSafeTensorsWriter.Planned(t.Name, t.DType, t.Shape)).ToList();
                groups.Add(new(planned, () => spec.Quantize(checkpoint.ReadFloat32(name), rows, cols).PackedBytes()));
            }
            else
            {
                var info = checkpoint.Get(name);
                groups.Add(new([new(name, info.DType, info.Shape)], () => [checkpoint.GetBytes(name).ToArray()]));
            }
        }

        return Write(inDir, outDir, spec, groups, progress);
    }

    // Our packed form stores one matrix per BASE.weight; gpt-oss keeps every expert of a layer in one stacked tensor (and
    // its MXFP4 originals are already packed), so it is packed at load (--quant) instead.
    private static void RefuseStacked(ModelConfig config)
    {
        if (config.Family.ExpertStorage == ExpertStorage.StackedGateUp)
            throw new ArgumentException($"quantize: {config.ModelType} stores its experts stacked per layer (MXFP4 or BF16), which our packed form does not hold; load it with --quant instead");
    }

    /// <summary>
    /// Repacks an AWQ / GPTQ / FP8 checkpoint (config.json's quantization_config) into our layout, values moved and never
    /// re-quantized (CheckpointRepack), so it loads without the repack and dequantizes to exactly what the source
    /// format defines. GPTQ act-order matrices keep their input permutation as BASE.perm; linear weights the source
    /// left in a float dtype are copied as they are. Returns the scheme written and the tensor bytes.
    /// </summary>
    public static (QuantSpec Spec, long Bytes) Repack(string inDir, string outDir, Action<string, long, long>? progress = null)
    {
        var config = ModelConfig.Load(inDir);
        RefuseStacked(config);
        var source = QuantSource.Load(inDir) ?? throw new ArgumentException($"--model {inDir} is not quantized (no quantization_config); give --scheme");
        var spec = source.RepackSpec;
        if (Path.GetFullPath(inDir).TrimEnd('/') == Path.GetFullPath(outDir).TrimEnd('/'))
            throw new ArgumentException("--out must differ from --model");
        using var checkpoint = Checkpoint.Open(inDir);
        QuantSource.Validate(config, checkpoint, source);

        var groups = new List<StreamingSafeTensorsWriter.Group>();
        foreach (var e in ModelTensors.Expected(config))
        {
            string name = e.Name;
            if (QuantSource.IsLinear(e) && !QuantSource.IsFloat(checkpoint, name))
            {
                int rows = (int)e.Shape[0], cols = (int)e.Shape[1];
                var planned = QuantSource.Tensors(spec, QuantSource.BaseOf(name), rows, cols, source.IsActOrder(checkpoint, name, cols))
                    .Select(t => new StreamingSafeTensorsWriter.Planned(t.Name, t.DType, t.Shape)).ToList();
                groups.Add(new(planned, () => source.Read(checkpoint, name, rows, cols).PackedBytes()));
            }
            else
            {
                var info = checkpoint.Get(name);
                groups.Add(new([new(name, info.DType, info.Shape)], () => [checkpoint.GetBytes(name).ToArray()]));
            }
        }

        return (spec, Write(inDir, outDir, spec, groups, progress, repackedFrom: source.Method));
    }

    // OUT/model.safetensors from the groups, OUT/config.json with our quantization_config, and the folder's other
    // files (tokenizer, generation config); stale model*.safetensors* in OUT are removed first.
    private static long Write(string inDir, string outDir, QuantSpec spec, IReadOnlyList<StreamingSafeTensorsWriter.Group> groups,
        Action<string, long, long>? progress, string? repackedFrom = null)
    {
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
        var qc = QuantSource.ConfigFor(spec);
        if (repackedFrom is not null)
            qc["repacked_from"] = repackedFrom;
        json["quantization_config"] = qc;
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
