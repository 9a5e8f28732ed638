// Quantized checkpoints: detect config.json's quantization_config, read its linear weights into our packed layout,
// and write our own packed layout (ilgpumoe quantize).
//
// Supported quantization_config.quant_method values:
//   "ilgpumoe"  ours (ilgpumoe quantize). "scheme" is a --quant name (QuantSpec.Parse). For every linear weight
//               BASE.weight [N, K] (attention q/k/v/o, each expert's w1/w2/w3, Hugging Face names):
//                 BASE.qweight  I32 [N, RowWords]   our packed words (QuantLayout.cs), bit-for-bit
//                 BASE.scales   int8: F32 [N]; int4: F16 [N, K/G]; fp8-block128: F32 [ceil(N/128), ceil(K/128)];
//                               fp8-tensor: F32 [1, 1]
//                 BASE.zeros    U8 [N, K/G]   (int4 -asym schemes only; 0..15, and 16 where repacked GPTQ stores it)
//                 BASE.perm     I32 [K]       (repacked GPTQ act-order only: packed column j is input column perm[j])
//               Every other tensor (embeddings, norms, router, lm_head, linear weights an AWQ/GPTQ/FP8 checkpoint left
//               in a float dtype) is copied as it was. `ilgpumoe quantize` without --scheme repacks an AWQ / GPTQ /
//               FP8 checkpoint into this layout once (values moved, never re-quantized), so loading it skips the repack.
//   "awq"       GEMM version, 4 bits, zero points: BASE.qweight / .qzeros / .scales (CheckpointRepack.ReadAwq).
//               AWQ and GPTQ: group_size a multiple of 32 dividing each input dim, or -1 (one group per row).
//   "gptq"      4 bits, v1 zeros (stored z - 1), BASE.qweight / .qzeros / .scales (+ .g_idx) (CheckpointRepack.ReadGptq).
//               A g_idx in input order (k / G) loads as is; an act-order g_idx (desc_act) is repacked in group order with
//               an input permutation, which the runtime applies as ActOrder.cs describes (attention: gather x; experts:
//               per-pair gather for w1/w3, w2's folded into w1/w3's rows). w1 and w3 of an expert must share g_idx.
//   "fp8"       E4M3 BASE.weight + BASE.weight_scale_inv (128 x 128 blocks) or BASE.weight_scale (per tensor).
//               Activations stay F32 (any static input_scale is not used).
// A linear weight a quantized checkpoint left in F32/F16/BF16 (modules_to_not_convert) is loaded dense; the experts of
// one kind in a layer must then all be dense or all packed.
// Anything else (other methods, bits != 4, group sizes outside {32, 64, 128}) is refused with one line.
// Each scheme (Schemes/*.cs) defines its BASE.scales / .zeros (QuantSpec.ScaleTensors) and reads the foreign forms it
// registered (QuantSchemeInfo.CheckpointMethods); this file reads our form for all of them.
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Quant;

/// <summary>
/// Where a checkpoint's linear weights come from when config.json declares a quantization_config: our own form
/// (<see cref="OurMethod"/>, read here for every scheme) or a scheme's foreign form (AWQ / GPTQ / FP8, read by the
/// scheme that registered the quant_method: Schemes/*.cs).
/// </summary>
public abstract class QuantSource
{
    public const string OurMethod = "ilgpumoe";

    private protected QuantSource(string method, QuantSpec planSpec)
    {
        Method = method;
        PlanSpec = planSpec;
    }

    /// <summary>quantization_config.quant_method, lower case.</summary>
    public string Method { get; }

    /// <summary>The scheme the memory plan counts the packed linear weights as.</summary>
    public QuantSpec PlanSpec { get; }

    /// <summary>True for the tensors the quantizers pack: attention q/k/v/o and experts w1/w2/w3.</summary>
    public static bool IsLinear(ExpectedTensor t) => t.IsLinear;

    /// <summary>True when the checkpoint holds <paramref name="name"/> in F32, F16 or BF16 (a linear weight left unquantized).</summary>
    public static bool IsFloat(Checkpoint checkpoint, string name) =>
        checkpoint.Contains(name) && checkpoint.Get(name).DType is DType.F32 or DType.F16 or DType.BF16;

    /// <summary>BASE of BASE.weight.</summary>
    public static string BaseOf(string weightName) =>
        weightName.EndsWith(".weight", StringComparison.Ordinal) ? weightName[..^".weight".Length] : weightName;

    /// <summary>The folder's quantization_config, or null when config.json has none. Unsupported configs throw
    /// ModelConfigException (one line, naming the key).</summary>
    public static QuantSource? Load(string directory)
    {
        string file = Path.Combine(directory, ModelConfig.ConfigFileName);
        if (!File.Exists(file))
            return null;
        using var doc = ConfigReader.ParseFile(file);
        if (!doc.RootElement.TryGetProperty("quantization_config", out var q) || q.ValueKind == JsonValueKind.Null)
            return null;
        if (q.ValueKind != JsonValueKind.Object)
            throw new ModelConfigException(file, "quantization_config", "must be an object");
        string method = QuantConfigJson.Str(q, "quant_method")?.ToLowerInvariant()
                        ?? throw new ModelConfigException(file, "quantization_config.quant_method", "is missing");
        var config = new QuantConfigJson(file, method, q);
        if (method == OurMethod)
        {
            string scheme = config.Str("scheme") ?? throw config.Error("scheme", "is missing");
            QuantSpec? spec;
            try
            {
                spec = QuantSpec.Parse(scheme);
            }
            catch (ArgumentException)
            {
                spec = null;
            }

            return spec is null
                ? throw config.Error("scheme", $"'{scheme}' is not a supported scheme ({string.Join(", ", QuantSpec.Names.Skip(1))})")
                : new OwnSource(spec);
        }

        var reader = QuantSchemes.ForMethod(method)
                     ?? throw config.Error("quant_method", $"'{method}' is not supported ({string.Join(", ", QuantSchemes.CheckpointMethods)})");
        return reader.FromCheckpoint!(config);
    }

    /// <summary>
    /// Checks a checkpoint against its config before anything is read (model open, ilgpumoe quantize, inspect): with no
    /// quantization_config every tensor as ModelValidator checks it; otherwise the packed linear weights are checked by
    /// their reader when read, and every other tensor as usual.
    /// </summary>
    public static void Validate(ModelConfig config, Checkpoint checkpoint, QuantSource? source)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        if (source is null)
        {
            ModelValidator.Validate(config, checkpoint);
            return;
        }

        // Stand-ins first: the validator keeps the first tensor of a name, and FP8 keeps E4M3 BASE.weight.
        // MLA's kv_b_proj may be packed too (an FP8 checkpoint's); the loader widens it.
        ModelValidator.Validate(config, ModelTensors.Expected(config).Where(e => IsLinear(e) || (e.Role == TensorRole.LatentExpansion && !IsFloat(checkpoint, e.Name)))
            .Select(e => new TensorInfo(e.Name, DType.F32, e.Shape, 0, 0)).Concat(checkpoint.Tensors).ToList(), checkpoint.Directory);
    }

    /// <summary>Reads linear weight <paramref name="weightName"/> [rows, cols] into our packed layout.</summary>
    public QuantizedMatrix Read(Checkpoint checkpoint, string weightName, int rows, int cols)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        string b = BaseOf(weightName);
        QuantizedMatrix m;
        try
        {
            m = ReadBase(checkpoint, b, rows, cols);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{checkpoint.Directory}: {b}: {e.Message}");
        }

        if (m.Rows != rows || m.Cols != cols)
            throw new InvalidDataException($"{checkpoint.Directory}: {b} ({Method}) unpacks to [{m.Rows}, {m.Cols}], expected [{rows}, {cols}]");
        return m;
    }

    /// <summary>
    /// Reads expert <paramref name="expert"/>'s <paramref name="part"/> ([rows, cols], our [out, in]) of a layer's stacked
    /// expert tensor <paramref name="stackedName"/> (gpt-oss, ExpertStorage.StackedGateUp). Only a source that stores such
    /// tensors packed (MXFP4) reads them; the others refuse with one line.
    /// </summary>
    public virtual QuantizedMatrix ReadStacked(Checkpoint checkpoint, string stackedName, int expert, StackedPart part, int rows, int cols) =>
        throw new InvalidDataException($"{checkpoint.Directory}: {stackedName} is missing or packed; a '{Method}' checkpoint cannot store stacked experts packed (gpt-oss's come in BF16 or MXFP4)");

    /// <summary>Reads the tensors of linear weight BASE (<paramref name="baseName"/>); ArgumentException for bad values.</summary>
    private protected abstract QuantizedMatrix ReadBase(Checkpoint checkpoint, string baseName, int rows, int cols);

    /// <summary>
    /// True when linear weight <paramref name="weightName"/> ([rows, cols]) reads its input permuted: a GPTQ g_idx that
    /// is not k / G, or a BASE.perm in our layout. A malformed g_idx counts as not: the reader refuses it with the reason.
    /// </summary>
    public virtual bool IsActOrder(Checkpoint checkpoint, string weightName, long cols) => false;

    /// <summary>The layout `ilgpumoe quantize` repacks this (AWQ / GPTQ / FP8) checkpoint into: the same values in ours.</summary>
    public virtual QuantSpec RepackSpec => PlanSpec;

    /// <summary>The tensors ilgpumoe quantize writes for linear weight BASE [rows, cols] under <paramref name="s"/>
    /// (<paramref name="permuted"/>: an act-order matrix, which also gets BASE.perm).</summary>
    public static IReadOnlyList<(string Name, DType DType, long[] Shape)> Tensors(QuantSpec s, string b, long rows, long cols, bool permuted = false)
    {
        ArgumentNullException.ThrowIfNull(s);
        var list = new List<(string, DType, long[])> { (b + ".qweight", DType.I32, [rows, s.RowWords((int)cols)]) };
        list.AddRange(s.ScaleTensors(rows, cols).Select(t => (b + t.Suffix, t.DType, t.Shape)));
        if (permuted)
            list.Add((b + ".perm", DType.I32, [cols]));
        return list;
    }

    /// <summary>The quantization_config object ilgpumoe quantize writes into config.json.</summary>
    public static JsonObject ConfigFor(QuantSpec s)
    {
        ArgumentNullException.ThrowIfNull(s);
        var o = new JsonObject
        {
            ["quant_method"] = OurMethod,
            ["scheme"] = s.Name,
            ["layout"] = s.Layout.ToString(),
            ["modules"] = "self_attn.{q,k,v,o}_proj, block_sparse_moe.experts.*.{w1,w2,w3}; embeddings, norms, router and lm_head keep their dtype",
        };
        s.Describe(o);
        return o;
    }

    /// <summary>Our own form (quant_method "ilgpumoe", any scheme): BASE.qweight, the scheme's scale tensors, BASE.perm.</summary>
    private sealed class OwnSource(QuantSpec spec) : QuantSource(OurMethod, spec)
    {
        public override QuantSpec RepackSpec => throw new ArgumentException("the checkpoint is already in our packed layout (quant_method 'ilgpumoe')");

        public override bool IsActOrder(Checkpoint checkpoint, string weightName, long cols)
        {
            ArgumentNullException.ThrowIfNull(checkpoint);
            return checkpoint.Contains(BaseOf(weightName) + ".perm");
        }

        private protected override QuantizedMatrix ReadBase(Checkpoint ck, string b, int rows, int cols)
        {
            var s = PlanSpec;
            foreach (var t in Tensors(s, b, rows, cols))
            {
                if (!ck.Contains(t.Name))
                    throw new InvalidDataException($"{ck.Directory}: tensor {t.Name} is missing ({s.Name} checkpoint)");
                var info = ck.Get(t.Name);
                if (info.DType != t.DType || !info.Shape.SequenceEqual(t.Shape))
                    throw new InvalidDataException($"{ck.Directory}: tensor {t.Name} is {DTypes.ToName(info.DType)} [{string.Join(", ", info.Shape)}], expected {DTypes.ToName(t.DType)} [{string.Join(", ", t.Shape)}]");
            }

            int[]? perm = null;
            if (ck.Contains(b + ".perm"))
            {
                var info = ck.Get(b + ".perm");
                if (!s.TakesInputPermutation || info.DType != DType.I32 || !info.Shape.SequenceEqual(new long[] { cols }))
                    throw new InvalidDataException($"{ck.Directory}: tensor {b}.perm is {DTypes.ToName(info.DType)} [{string.Join(", ", info.Shape)}], expected I32 [{cols}] on an int4 matrix");
                perm = ck.GetSpan<int>(b + ".perm").ToArray();
                ActOrder.CheckPermutation($"{b}.perm", perm, cols);
            }

            return s.ReadPacked(ck, b, rows, cols, MemoryMarshal.Cast<byte, uint>(ck.GetBytes(b + ".qweight")).ToArray(), perm);
        }
    }
}

/// <summary>A checkpoint's quantization_config object, for the scheme that reads its quant_method.</summary>
public sealed class QuantConfigJson(string file, string method, JsonElement element)
{
    /// <summary>The config.json path (for messages).</summary>
    public string File { get; } = file;

    /// <summary>quant_method, lower case.</summary>
    public string Method { get; } = method;

    public JsonElement Element { get; } = element;

    /// <summary>A string member, or null when absent or not a string.</summary>
    public string? Str(string key) => Str(Element, key);

    /// <summary>An int member, or null when absent or not an int.</summary>
    public int? Int(string key) => Element.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : null;

    /// <summary>The one-line error naming quantization_config.KEY.</summary>
    public ModelConfigException Error(string key, string problem) => new(File, "quantization_config." + key, problem);

    internal static string? Str(JsonElement o, string key) => o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
}

/// <summary>
/// A safetensors file written in one pass, tensor by tensor: the header is built from names, dtypes and shapes known
/// up front, then each group of tensors is produced (e.g. one matrix quantized into qweight + scales) and written
/// before the next one is made, so at most one group is in memory.
/// </summary>
public static class StreamingSafeTensorsWriter
{
    public sealed record Planned(string Name, DType DType, long[] Shape)
    {
        public long ByteLength => Shape.Aggregate(1L, (a, b) => checked(a * b)) * DTypes.SizeOf(DType);
    }

    public sealed record Group(IReadOnlyList<Planned> Tensors, Func<IReadOnlyList<byte[]>> Produce);

    public static void Write(string path, IReadOnlyList<Group> groups, IReadOnlyDictionary<string, string>? metadata, Action<string, long>? progress = null)
    {
        byte[] header = SafeTensorsWriter.BuildHeader(groups.SelectMany(g => g.Tensors).Select(t => (t.Name, t.DType, t.Shape, t.ByteLength)), metadata);
        string tmp = path + ".tmp";
        try
        {
            WriteBody(tmp, header, groups, path, progress);
        }
        catch
        {
            File.Delete(tmp); // a producer that fails (bad source tensor) leaves no half-written file behind
            throw;
        }

        File.Move(tmp, path, overwrite: true);
    }

    private static void WriteBody(string tmp, byte[] header, IReadOnlyList<Group> groups, string path, Action<string, long>? progress)
    {
        using (var stream = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            stream.Write(prefix);
            stream.Write(header);
            foreach (var g in groups)
            {
                var data = g.Produce();
                if (data.Count != g.Tensors.Count)
                    throw new InvalidOperationException($"{path}: group {g.Tensors[0].Name} produced {data.Count} tensors, planned {g.Tensors.Count}");
                for (int i = 0; i < data.Count; i++)
                {
                    if (data[i].LongLength != g.Tensors[i].ByteLength)
                        throw new InvalidOperationException($"{path}: tensor {g.Tensors[i].Name} has {data[i].LongLength} bytes, planned {g.Tensors[i].ByteLength}");
                    stream.Write(data[i]);
                    progress?.Invoke(g.Tensors[i].Name, data[i].LongLength);
                }
            }
        }
    }
}
