// An independent reader of Hugging Face config.json for the oracle (RefModelConfig), so tests never judge the runtime's
// config parsing (src/ILGpuMoE/Model) with itself. Defaults are those of Hugging Face's configuration classes
// (MixtralConfig, Qwen3MoeConfig, Qwen2MoeConfig, OlmoeConfig, newest version); which layers are MoE and which slide
// follows the newest modeling code (see the header of src/ILGpuMoE.Reference/RefModel.cs).
using System.Text.Json;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Testing;

public static class HfReferenceConfig
{
    /// <summary>The model_type values Load understands.</summary>
    public static readonly IReadOnlyList<string> ModelTypes = ["mixtral", "qwen3_moe", "qwen2_moe", "olmoe"];

    /// <summary>Reads <paramref name="modelDir"/>/config.json. Throws InvalidDataException naming the file and key on a
    /// missing or unsupported setting.</summary>
    public static RefModelConfig Load(string modelDir)
    {
        string path = Path.Combine(modelDir, "config.json");
        if (!File.Exists(path))
            throw new FileNotFoundException($"{path}: config.json not found", path);
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        return FromJson(doc.RootElement, path);
    }

    /// <summary>The config of one parsed config.json; <paramref name="where"/> names it in errors.</summary>
    public static RefModelConfig FromJson(JsonElement j, string where)
    {
        string type = Str(j, "model_type", where) ?? throw new InvalidDataException($"{where}: \"model_type\" is missing");
        var family = type switch
        {
            "mixtral" => RefFamily.Mixtral,
            "qwen3_moe" => RefFamily.Qwen3Moe,
            "qwen2_moe" => RefFamily.Qwen2Moe,
            "olmoe" => RefFamily.Olmoe,
            _ => throw new InvalidDataException($"{where}: model_type \"{type}\" is not one of {string.Join(", ", ModelTypes)}"),
        };
        int Int(string key, int fallback) => IntOr(j, key, where) ?? fallback;

        // Defaults per family (Hugging Face's configuration classes).
        var (vocab, hidden, inter, layers, heads, kvHeads, eps) = family switch
        {
            RefFamily.Mixtral => (32000, 4096, 14336, 32, 32, 8, 1e-5),
            RefFamily.Qwen3Moe => (151936, 2048, 6144, 24, 32, 4, 1e-6),
            RefFamily.Qwen2Moe => (151936, 2048, 5632, 24, 16, 16, 1e-6),
            RefFamily.Olmoe => (50304, 2048, 2048, 16, 16, 0, 1e-5),
            _ => throw new InvalidOperationException($"family {family}"),
        };
        vocab = Int("vocab_size", vocab);
        hidden = Int("hidden_size", hidden);
        inter = Int("intermediate_size", inter);
        layers = Int("num_hidden_layers", layers);
        heads = Int("num_attention_heads", heads);
        kvHeads = Int("num_key_value_heads", kvHeads);
        if (kvHeads == 0)
            kvHeads = heads;  // num_key_value_heads null means multi-head attention
        eps = Num(j, "rms_norm_eps", where) ?? eps;
        if (heads <= 0 || hidden <= 0)
            throw new InvalidDataException($"{where}: hidden_size {hidden} and num_attention_heads {heads} must be positive");
        int headDim = Int("head_dim", hidden / heads);
        if (family == RefFamily.Olmoe && headDim * heads != hidden)
            throw new InvalidDataException($"{where}: olmoe sizes q_norm by hidden_size, so head_dim {headDim} must be hidden_size / heads = {hidden / heads}");

        string act = Str(j, "hidden_act", where) ?? "silu";
        if (act != "silu")
            throw new InvalidDataException($"{where}: hidden_act \"{act}\" is not supported (silu only)");
        if (Bool(j, "attention_bias", where) == true)
            throw new InvalidDataException($"{where}: attention_bias true (biases on q, k, v and o_proj) is not supported");
        float theta = (float)RopeTheta(j, where, family == RefFamily.Mixtral ? 1e6 : 10000.0);

        int experts = family == RefFamily.Mixtral ? Int("num_local_experts", 8)
            : Int("num_experts", family switch { RefFamily.Qwen3Moe => 128, RefFamily.Qwen2Moe => 60, _ => 64 });
        int topK = Int("num_experts_per_tok", family switch { RefFamily.Mixtral => 2, RefFamily.Qwen2Moe => 4, _ => 8 });
        var moe = new bool[layers];
        var window = new int[layers];
        int moeInter = inter, denseInter = 0, shared = 0;
        bool normTopK = family == RefFamily.Mixtral || (Bool(j, "norm_topk_prob", where) ?? false);
        switch (family)
        {
            case RefFamily.Mixtral:
            {
                Array.Fill(moe, true);
                Array.Fill(window, IntOr(j, "sliding_window", where) ?? 0);
                break;
            }

            case RefFamily.Olmoe:
                Array.Fill(moe, true);
                break;

            case RefFamily.Qwen3Moe:
            case RefFamily.Qwen2Moe:
            {
                moeInter = Int("moe_intermediate_size", family == RefFamily.Qwen3Moe ? 768 : 1408);
                denseInter = inter;
                int step = Int("decoder_sparse_step", 1);
                if (step <= 0)
                    throw new InvalidDataException($"{where}: decoder_sparse_step {step} must be positive");
                var mlpOnly = IntArray(j, "mlp_only_layers", where);
                for (int i = 0; i < layers; i++)
                    moe[i] = !mlpOnly.Contains(i) && experts > 0 && (i + 1) % step == 0;
                bool slide = Bool(j, "use_sliding_window", where) ?? false;
                int w = IntOr(j, "sliding_window", where) ?? 4096;
                if (family == RefFamily.Qwen3Moe)
                {
                    // Newest Qwen3-MoE: one sliding mask for every layer when use_sliding_window.
                    Array.Fill(window, slide ? w : 0);
                }
                else
                {
                    shared = Int("shared_expert_intermediate_size", 5632);
                    var types = StringArray(j, "layer_types", where);
                    int maxWindowLayers = Int("max_window_layers", 28);
                    for (int i = 0; i < layers; i++)
                    {
                        bool sliding = types is null
                            ? slide && (i + 1) % 2 != 0 && i < maxWindowLayers
                            : types.Length == layers ? types[i] == "sliding_attention"
                            : throw new InvalidDataException($"{where}: layer_types has {types.Length} entries for {layers} layers");
                        window[i] = sliding ? (slide ? w : 0) : 0;
                    }
                }

                break;
            }

            default:
                throw new InvalidOperationException($"family {family}");
        }

        var c = new RefModelConfig
        {
            Family = family,
            Hidden = hidden,
            Layers = layers,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            RmsEps = (float)eps,
            RopeTheta = theta,
            Vocab = vocab,
            TieEmbeddings = Bool(j, "tie_word_embeddings", where) ?? false,
            Experts = experts,
            TopK = topK,
            MoeIntermediate = moeInter,
            NormTopK = normTopK,
            DenseIntermediate = denseInter,
            MoeLayers = moe,
            SlidingWindow = window,
            QkvBias = family == RefFamily.Qwen2Moe && (Bool(j, "qkv_bias", where) ?? true),
            QkNorm = family switch { RefFamily.Qwen3Moe => RefQkNorm.PerHead, RefFamily.Olmoe => RefQkNorm.Whole, _ => RefQkNorm.None },
            ClipQkv = family == RefFamily.Olmoe ? (float)(Num(j, "clip_qkv", where) ?? 0) : 0,
            SharedExpertIntermediate = shared,
        };
        try
        {
            c.Validate();
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{where}: {e.Message}", e);
        }

        return c;
    }

    // rope_theta (older writers) or rope_parameters.rope_theta (newer); only the default RoPE type is modelled.
    private static double RopeTheta(JsonElement j, string where, double fallback)
    {
        foreach (string key in new[] { "rope_scaling", "rope_parameters" })
        {
            if (j.TryGetProperty(key, out var r) && r.ValueKind == JsonValueKind.Object)
            {
                string? kind = Str(r, "rope_type", where) ?? Str(r, "type", where);
                if (kind is not (null or "default"))
                    throw new InvalidDataException($"{where}: {key} type \"{kind}\" is not supported (default RoPE only)");
            }
        }

        if (Num(j, "rope_theta", where) is { } t)
            return t;
        if (j.TryGetProperty("rope_parameters", out var p) && p.ValueKind == JsonValueKind.Object && Num(p, "rope_theta", where) is { } t2)
            return t2;
        return fallback;
    }

    private static bool Present(JsonElement j, string key, out JsonElement v) =>
        j.TryGetProperty(key, out v) && v.ValueKind != JsonValueKind.Null;

    private static int? IntOr(JsonElement j, string key, string where) =>
        !Present(j, key, out var v) ? null
        : v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i
        : throw new InvalidDataException($"{where}: \"{key}\" must be an integer");

    private static double? Num(JsonElement j, string key, string where) =>
        !Present(j, key, out var v) ? null
        : v.ValueKind == JsonValueKind.Number ? v.GetDouble()
        : throw new InvalidDataException($"{where}: \"{key}\" must be a number");

    private static bool? Bool(JsonElement j, string key, string where) =>
        !Present(j, key, out var v) ? null
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean()
        : throw new InvalidDataException($"{where}: \"{key}\" must be true or false");

    private static string? Str(JsonElement j, string key, string where) =>
        !Present(j, key, out var v) ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString()
        : throw new InvalidDataException($"{where}: \"{key}\" must be a string");

    private static int[] IntArray(JsonElement j, string key, string where) =>
        !Present(j, key, out var v) ? []
        : v.ValueKind == JsonValueKind.Array && v.EnumerateArray().All(x => x.ValueKind == JsonValueKind.Number)
            ? v.EnumerateArray().Select(x => x.GetInt32()).ToArray()
            : throw new InvalidDataException($"{where}: \"{key}\" must be a list of integers");

    private static string[]? StringArray(JsonElement j, string key, string where) =>
        !Present(j, key, out var v) ? null
        : v.ValueKind == JsonValueKind.Array && v.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String)
            ? v.EnumerateArray().Select(x => x.GetString()!).ToArray()
            : throw new InvalidDataException($"{where}: \"{key}\" must be a list of strings");
}
