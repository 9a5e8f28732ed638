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
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Model;

namespace ILGpuMoE.Quant;

/// <summary>Where a checkpoint's linear weights come from when config.json declares a quantization_config.</summary>
public sealed record QuantSource(string Method, QuantSpec PlanSpec, int GroupSize)
{
    public const string OurMethod = "ilgpumoe";

    /// <summary>True for the tensors the quantizers pack: attention q/k/v/o and experts w1/w2/w3.</summary>
    public static bool IsLinear(ExpectedTensor t) => t.Role is TensorRole.Attention or TensorRole.Expert;

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
        string method = Str(q, "quant_method")?.ToLowerInvariant()
                        ?? throw new ModelConfigException(file, "quantization_config.quant_method", "is missing");
        switch (method)
        {
            case OurMethod:
            {
                string scheme = Str(q, "scheme") ?? throw new ModelConfigException(file, "quantization_config.scheme", "is missing");
                QuantSpec? spec;
                try
                {
                    spec = QuantSpec.Parse(scheme);
                }
                catch (ArgumentException)
                {
                    spec = null;
                }

                if (spec is null)
                    throw new ModelConfigException(file, "quantization_config.scheme", $"'{scheme}' is not a supported scheme ({string.Join(", ", QuantSpec.Names.Skip(1))})");
                return new QuantSource(method, spec, spec.GroupSize);
            }

            case "awq":
            case "gptq":
            {
                int bits = Int(q, "bits") ?? Int(q, "w_bit") ?? 4;
                if (bits != 4)
                    throw new ModelConfigException(file, "quantization_config.bits", $"{method} with {bits} bits is not supported (4 only)");
                // -1: one group per row (per output channel); otherwise G must keep a 16-byte unit inside one group.
                int g = Int(q, "group_size") ?? Int(q, "q_group_size") ?? 128;
                if (g != -1 && (g < 32 || g % 32 != 0))
                    throw new ModelConfigException(file, "quantization_config.group_size", $"{method} group size {g} is not supported (a multiple of 32, or -1)");
                string? version = Str(q, "version");
                if (method == "awq" && version is not null && !version.Equals("gemm", StringComparison.OrdinalIgnoreCase))
                    throw new ModelConfigException(file, "quantization_config.version", $"AWQ version '{version}' is not supported (GEMM only)");
                string? format = Str(q, "checkpoint_format");
                if (method == "gptq" && format is not null && !format.Equals("gptq", StringComparison.OrdinalIgnoreCase))
                    throw new ModelConfigException(file, "quantization_config.checkpoint_format", $"GPTQ format '{format}' is not supported (gptq v1 zeros only)");
                if (method == "awq" && q.TryGetProperty("zero_point", out var zp) && zp.ValueKind == JsonValueKind.False)
                    throw new ModelConfigException(file, "quantization_config.zero_point", "AWQ without zero points is not supported");
                int spec = Math.Max(g, 0); // QuantSpec / readers: 0 = the matrix's whole input dim
                return new QuantSource(method, new QuantSpec(g > 0 ? $"{method}-g{g}" : $"{method}-per-row", QuantScheme.Q4, spec, Symmetric: false), spec);
            }

            case "fp8":
            {
                if (q.TryGetProperty("weight_block_size", out var b) && b.ValueKind == JsonValueKind.Array)
                {
                    var dims = b.EnumerateArray().Select(e => e.TryGetInt32(out int v) ? v : -1).ToArray();
                    if (dims.Length != 2 || dims[0] != Quantizer.Fp8Block || dims[1] != Quantizer.Fp8Block)
                        throw new ModelConfigException(file, "quantization_config.weight_block_size", $"[{string.Join(", ", dims)}] is not supported ([128, 128] only)");
                    return new QuantSource(method, QuantSpec.Parse("fp8-block128")!, 0);
                }

                return new QuantSource(method, QuantSpec.Parse("fp8-tensor")!, 0);
            }

            default:
                throw new ModelConfigException(file, "quantization_config.quant_method",
                    $"'{method}' is not supported (ilgpumoe, awq, gptq, fp8)");
        }
    }

    /// <summary>Reads linear weight <paramref name="weightName"/> [rows, cols] into our packed layout.</summary>
    public QuantizedMatrix Read(Checkpoint checkpoint, string weightName, int rows, int cols)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        string b = BaseOf(weightName);
        QuantizedMatrix m;
        try
        {
            m = Method switch
            {
                OurMethod => ReadOurs(checkpoint, b, rows, cols),
                "awq" => CheckpointRepack.ReadAwq(checkpoint, b, GroupSize),
                "gptq" => CheckpointRepack.ReadGptq(checkpoint, b, GroupSize),
                _ => CheckpointRepack.ReadFp8(checkpoint, b),
            };
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{checkpoint.Directory}: {b}: {e.Message}");
        }

        if (m.Rows != rows || m.Cols != cols)
            throw new InvalidDataException($"{checkpoint.Directory}: {b} ({Method}) unpacks to [{m.Rows}, {m.Cols}], expected [{rows}, {cols}]");
        return m;
    }

    private QuantizedMatrix ReadOurs(Checkpoint ck, string b, int rows, int cols)
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
            if (s.Scheme != QuantScheme.Q4 || info.DType != DType.I32 || !info.Shape.SequenceEqual(new long[] { cols }))
                throw new InvalidDataException($"{ck.Directory}: tensor {b}.perm is {DTypes.ToName(info.DType)} [{string.Join(", ", info.Shape)}], expected I32 [{cols}] on an int4 matrix");
            perm = ck.GetSpan<int>(b + ".perm").ToArray();
            ActOrder.CheckPermutation($"{b}.perm", perm, cols);
        }

        uint[] words = MemoryMarshal.Cast<byte, uint>(ck.GetBytes(b + ".qweight")).ToArray();
        return s.Scheme switch
        {
            QuantScheme.Q8 => new QuantizedMatrix(QuantScheme.Q8, rows, cols, words, scales32: ck.GetSpan<float>(b + ".scales").ToArray()),
            QuantScheme.Q4 => new QuantizedMatrix(QuantScheme.Q4, rows, cols, words, scales16: ck.GetSpan<ushort>(b + ".scales").ToArray(),
                zeros: s.Symmetric ? null : ck.GetBytes(b + ".zeros").ToArray(), groupSize: s.GroupFor(cols), inputPermutation: perm),
            _ => new QuantizedMatrix(QuantScheme.Fp8, rows, cols, words, scales32: ck.GetSpan<float>(b + ".scales").ToArray(),
                blockN: s.PerTensor ? rows : Quantizer.Fp8Block, blockK: s.PerTensor ? cols : Quantizer.Fp8Block),
        };
    }

    /// <summary>The tensors ilgpumoe quantize writes for linear weight BASE [rows, cols] under <paramref name="s"/>
    /// (<paramref name="permuted"/>: an act-order matrix, which also gets BASE.perm).</summary>
    public static IReadOnlyList<(string Name, DType DType, long[] Shape)> Tensors(QuantSpec s, string b, long rows, long cols, bool permuted = false)
    {
        long rowWords = s.Scheme == QuantScheme.Q4 ? QuantLayout.NibbleRowWords((int)cols) : QuantLayout.ByteRowWords((int)cols);
        var list = new List<(string, DType, long[])> { (b + ".qweight", DType.I32, [rows, rowWords]) };
        switch (s.Scheme)
        {
            case QuantScheme.Q8:
                list.Add((b + ".scales", DType.F32, [rows]));
                break;
            case QuantScheme.Q4:
                list.Add((b + ".scales", DType.F16, [rows, cols / s.GroupFor(cols)]));
                if (!s.Symmetric)
                    list.Add((b + ".zeros", DType.U8, [rows, cols / s.GroupFor(cols)]));
                break;
            default:
                list.Add((b + ".scales", DType.F32, s.PerTensor ? [1, 1] : [(rows + Quantizer.Fp8Block - 1) / Quantizer.Fp8Block, (cols + Quantizer.Fp8Block - 1) / Quantizer.Fp8Block]));
                break;
        }

        if (permuted)
            list.Add((b + ".perm", DType.I32, [cols]));
        return list;
    }

    /// <summary>The bytes of <see cref="Tensors"/> in order, from a packed matrix.</summary>
    public static IReadOnlyList<byte[]> Bytes(QuantizedMatrix m)
    {
        var list = new List<byte[]> { MemoryMarshal.AsBytes(m.Words.AsSpan()).ToArray() };
        list.Add(m.Scheme == QuantScheme.Q4 ? MemoryMarshal.AsBytes(m.Scales16.AsSpan()).ToArray() : MemoryMarshal.AsBytes(m.Scales32.AsSpan()).ToArray());
        if (m.Zeros.Length > 0)
            list.Add(m.Zeros);
        if (m.InputPermutation is { } perm)
            list.Add(MemoryMarshal.AsBytes(perm.AsSpan()).ToArray());
        return list;
    }

    /// <summary>
    /// True when linear weight <paramref name="weightName"/> ([rows, cols]) reads its input permuted: a GPTQ g_idx that
    /// is not k / G, or a BASE.perm in our layout. A malformed g_idx counts as not: the reader refuses it with the reason.
    /// </summary>
    public bool IsActOrder(Checkpoint checkpoint, string weightName, long cols)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        string b = BaseOf(weightName);
        if (Method == OurMethod)
            return checkpoint.Contains(b + ".perm");
        if (Method != "gptq" || !checkpoint.Contains(b + ".g_idx"))
            return false;
        var info = checkpoint.Get(b + ".g_idx");
        return info.DType == DType.I32 && info.Shape.Length == 1
               && ActOrder.IsActOrder(checkpoint.GetSpan<int>(b + ".g_idx"), GroupSize > 0 ? GroupSize : (int)cols);
    }

    /// <summary>The layout `ilgpumoe quantize` repacks this (AWQ / GPTQ / FP8) checkpoint into: the same values in ours.</summary>
    public QuantSpec RepackSpec => Method switch
    {
        OurMethod => throw new ArgumentException("the checkpoint is already in our packed layout (quant_method 'ilgpumoe')"),
        "awq" or "gptq" => QuantSpec.Parse(GroupSize > 0 ? $"int4-g{GroupSize}-asym" : "int4-per-row-asym")!,
        _ => PlanSpec,
    };

    /// <summary>The quantization_config object ilgpumoe quantize writes into config.json.</summary>
    public static JsonObject ConfigFor(QuantSpec s)
    {
        var o = new JsonObject
        {
            ["quant_method"] = OurMethod,
            ["scheme"] = s.Name,
            ["layout"] = s.Scheme.ToString(),
            ["modules"] = "self_attn.{q,k,v,o}_proj, block_sparse_moe.experts.*.{w1,w2,w3}; embeddings, norms, router and lm_head keep their dtype",
        };
        if (s.Scheme == QuantScheme.Q4)
        {
            o["group_size"] = s.GroupSize > 0 ? s.GroupSize : -1; // -1: one group per row, as GPTQ writes it
            o["symmetric"] = s.Symmetric;
        }

        if (s.Scheme == QuantScheme.Fp8)
            o["weight_block_size"] = s.PerTensor ? null : new JsonArray(Quantizer.Fp8Block, Quantizer.Fp8Block);
        return o;
    }

    private static string? Str(JsonElement o, string key) => o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static int? Int(JsonElement o, string key) => o.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : null;
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
