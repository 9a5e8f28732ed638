// An independent reader of Hugging Face config.json for the oracle (RefModelConfig), so tests never judge the runtime's
// config parsing (src/ILGpuMoE/Model) with itself. Defaults are those of Hugging Face's configuration classes
// (MixtralConfig, Qwen3MoeConfig, Qwen2MoeConfig, OlmoeConfig, GptOssConfig, DeepseekV3Config, newest version); which layers are MoE and which slide
// follows the newest modeling code (see the header of src/ILGpuMoE.Reference/RefModel.cs).
using System.Text.Json;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Testing;

public static class HfReferenceConfig
{
    /// <summary>The model_type values Load understands.</summary>
    public static readonly IReadOnlyList<string> ModelTypes = ["mixtral", "qwen3_moe", "qwen2_moe", "olmoe", "gpt_oss", "deepseek_v3"];

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
            "gpt_oss" => RefFamily.GptOss,
            "deepseek_v3" => RefFamily.DeepSeekV3,
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
            RefFamily.GptOss => (201088, 2880, 2880, 36, 64, 8, 1e-5),
            RefFamily.DeepSeekV3 => (129280, 7168, 18432, 61, 128, 128, 1e-6),
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
        int headDim = Int("head_dim", family == RefFamily.GptOss ? 64 : hidden / heads);
        if (family == RefFamily.Olmoe && headDim * heads != hidden)
            throw new InvalidDataException($"{where}: olmoe sizes q_norm by hidden_size, so head_dim {headDim} must be hidden_size / heads = {hidden / heads}");

        string act = Str(j, "hidden_act", where) ?? "silu";
        if (act != "silu")
            throw new InvalidDataException($"{where}: hidden_act \"{act}\" is not supported (silu only)");
        bool attentionBias = Bool(j, "attention_bias", where) ?? family == RefFamily.GptOss;
        if (attentionBias && family != RefFamily.GptOss)
            throw new InvalidDataException($"{where}: attention_bias true (biases on q, k, v and o_proj) is not supported");
        if (!attentionBias && family == RefFamily.GptOss)
            throw new InvalidDataException($"{where}: gpt_oss with attention_bias false is not supported");
        float theta = (float)RopeTheta(j, where, family switch { RefFamily.Mixtral => 1e6, RefFamily.GptOss => 150000.0, _ => 10000.0 });
        var yarn = Yarn(j, where, family);

        int experts = family switch
        {
            RefFamily.Mixtral => Int("num_local_experts", 8),
            RefFamily.GptOss => Int("num_local_experts", 128),
            RefFamily.DeepSeekV3 => Int("n_routed_experts", 256),
            _ => Int("num_experts", family switch { RefFamily.Qwen3Moe => 128, RefFamily.Qwen2Moe => 60, _ => 64 }),
        };
        int topK = Int("num_experts_per_tok", family switch { RefFamily.Mixtral => 2, RefFamily.Qwen2Moe or RefFamily.GptOss => 4, _ => 8 });
        var moe = new bool[layers];
        var window = new int[layers];
        int moeInter = inter, denseInter = 0, shared = 0;
        bool normTopK = family == RefFamily.Mixtral || (Bool(j, "norm_topk_prob", where) ?? family == RefFamily.DeepSeekV3);
        RefMla? mla = null;
        bool mxfp4 = false;
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

            case RefFamily.GptOss:
            {
                Array.Fill(moe, true);
                int w = IntOr(j, "sliding_window", where) ?? (j.TryGetProperty("sliding_window", out _) ? 0 : 128);
                var types = StringArray(j, "layer_types", where)
                    ?? Enumerable.Range(0, layers).Select(i => (i + 1) % 2 != 0 ? "sliding_attention" : "full_attention").ToArray();
                if (types.Length != layers)
                    throw new InvalidDataException($"{where}: layer_types has {types.Length} entries for {layers} layers");
                for (int i = 0; i < layers; i++)
                {
                    window[i] = types[i] switch
                    {
                        "sliding_attention" => w,
                        "full_attention" => 0,
                        _ => throw new InvalidDataException($"{where}: layer_types[{i}] \"{types[i]}\" is not sliding_attention or full_attention"),
                    };
                }

                if (j.TryGetProperty("quantization_config", out var qc) && qc.ValueKind == JsonValueKind.Object)
                {
                    string? method = Str(qc, "quant_method", where);
                    mxfp4 = method == "mxfp4"
                        ? true
                        : throw new InvalidDataException($"{where}: quantization_config.quant_method \"{method}\" is not supported for gpt_oss (mxfp4 only)");
                }

                break;
            }

            case RefFamily.DeepSeekV3:
            {
                moeInter = Int("moe_intermediate_size", 2048);
                denseInter = inter;
                int firstDense = Int("first_k_dense_replace", 3);
                for (int i = 0; i < layers; i++)
                    moe[i] = i >= firstDense;
                shared = moeInter * Int("n_shared_experts", 1);
                // q_lora_rank null (V2-Lite style) means a direct q_proj; absent means the default 1536.
                int qLora = j.TryGetProperty("q_lora_rank", out var ql) && ql.ValueKind == JsonValueKind.Null ? 0 : Int("q_lora_rank", 1536);
                mla = new RefMla(qLora, Int("kv_lora_rank", 512), Int("qk_nope_head_dim", 128), Int("qk_rope_head_dim", 64), Int("v_head_dim", 128));
                headDim = mla.QkHeadDim;
                if (kvHeads != heads)
                    throw new InvalidDataException($"{where}: num_key_value_heads {kvHeads} must equal num_attention_heads {heads} (MLA)");
                break;
            }

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
            AttentionBias = family == RefFamily.GptOss,
            AttentionSinks = family == RefFamily.GptOss,
            Yarn = yarn,
            RopeInterleave = family == RefFamily.DeepSeekV3 && (Bool(j, "rope_interleave", where) ?? true),
            SwigluLimit = family == RefFamily.GptOss ? (float)(Num(j, "swiglu_limit", where) ?? 7.0) : 0,
            SwigluAlpha = family == RefFamily.GptOss ? (float)(Num(j, "swiglu_alpha", where) ?? 1.702) : 0,
            Mxfp4Experts = mxfp4,
            Mla = mla,
            Groups = family == RefFamily.DeepSeekV3 ? Int("n_group", 8) : 1,
            TopKGroups = family == RefFamily.DeepSeekV3 ? Int("topk_group", 4) : 1,
            RoutedScaling = family == RefFamily.DeepSeekV3 ? (float)(Num(j, "routed_scaling_factor", where) ?? 2.5) : 1,
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

    // The YaRN block of gpt-oss (GptOssConfig's default when absent) and DeepSeek-V3 (none when rope_scaling is null);
    // the older families take the default RoPE only. Keys and defaults as modeling_rope_utils.py reads them.
    private static RefYarn? Yarn(JsonElement j, string where, RefFamily family)
    {
        bool scaled = family is RefFamily.GptOss or RefFamily.DeepSeekV3, explicitBlock = false;
        foreach (string key in new[] { "rope_scaling", "rope_parameters" })
        {
            if (!j.TryGetProperty(key, out var r) || r.ValueKind != JsonValueKind.Object)
                continue;
            string? kind = Str(r, "rope_type", where) ?? Str(r, "type", where);
            explicitBlock = true;
            if (kind is null or "default")
                continue;
            if (kind != "yarn" || !scaled)
                throw new InvalidDataException($"{where}: {key} type \"{kind}\" is not supported ({(scaled ? "default or yarn" : "default RoPE only")})");
            int maxPos = IntOr(j, "max_position_embeddings", where) ?? (family == RefFamily.GptOss ? 131072 : 4096);
            int original = IntOr(r, "original_max_position_embeddings", where) ?? maxPos;
            double factor = Num(r, "factor", where) ?? (double)maxPos / original;
            // Hugging Face reads beta_fast / beta_slow with `or`, so 0 also means the default.
            double betaFast = Num(r, "beta_fast", where) is { } bf and not 0 ? bf : 32;
            double betaSlow = Num(r, "beta_slow", where) is { } bs and not 0 ? bs : 1;
            return new RefYarn(factor, original, betaFast, betaSlow, Bool(r, "truncate", where) ?? true,
                Num(r, "attention_factor", where), Num(r, "mscale", where) ?? 0, Num(r, "mscale_all_dim", where) ?? 0);
        }

        // GptOssConfig fills in the real checkpoints' YaRN block when config.json has none.
        return family == RefFamily.GptOss && !explicitBlock ? new RefYarn(32.0, 4096, 32.0, 1.0, Truncate: false) : null;
    }

    // rope_theta (older writers) or rope_parameters.rope_theta (newer).
    private static double RopeTheta(JsonElement j, string where, double fallback)
    {

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
