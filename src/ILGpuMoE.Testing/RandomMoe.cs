// A random Qwen3-MoE, Qwen2-MoE or OLMoE (or Mixtral, through RandomMixtral; gpt-oss and DeepSeek-V3 in
// RandomMoeFamilies.cs) in exactly Hugging Face's on-disk layout:
// config.json with the keys each family's configuration class writes, model.safetensors (or shards + index) with the
// real tensor names, generation_config.json and the synthetic tokenizer files. Every option the oracle models is
// reachable: E, K, head_dim != D / H, q/k/v biases, the shared expert, mlp_only_layers / decoder_sparse_step (dense
// layers), norm_topk_prob, tied embeddings, clip_qkv, the q/k norm each family has, the sliding window.
// Weights are seeded per tensor name (RandomMixtral.Normal): embeddings N(0, 1); linear weights N(0, 1/fan_in); the
// router twice that (sharper routing, fewer near-ties between the k-th and (k+1)-th expert, so F32 noise cannot flip
// a choice between engines); RMSNorm weights 1 + N(0, 0.1); q/k/v biases N(0, 0.2^2).
using System.Globalization;
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Testing;

/// <summary>Shape and option set of a random MoE checkpoint (defaults: a tiny Qwen3-MoE).</summary>
public sealed record RandomMoeOptions
{
    public RefFamily Family { get; init; } = RefFamily.Qwen3Moe;
    public int Hidden { get; init; } = 64;
    public int Layers { get; init; } = 2;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;

    /// <summary>Per-head dim; null = Hidden / Heads (OLMoE requires that).</summary>
    public int? HeadDim { get; init; }
    public int Vocab { get; init; } = 300;
    public int Experts { get; init; } = 8;
    public int TopK { get; init; } = 2;

    /// <summary>Routed expert hidden size (moe_intermediate_size; OLMoE's and Mixtral's intermediate_size).</summary>
    public int MoeIntermediate { get; init; } = 32;

    /// <summary>Dense MLP hidden size of non-MoE layers (Qwen intermediate_size).</summary>
    public int DenseIntermediate { get; init; } = 96;

    /// <summary>null = the family's usual value (Qwen3-MoE checkpoints true, Qwen2-MoE and OLMoE false).</summary>
    public bool? NormTopK { get; init; }
    public int[] MlpOnlyLayers { get; init; } = [];
    public int DecoderSparseStep { get; init; } = 1;

    /// <summary>Qwen2-MoE's shared expert size (shared_expert_intermediate_size); must be positive for Qwen2-MoE.</summary>
    public int SharedExpertIntermediate { get; init; } = 64;

    /// <summary>Qwen2-MoE's qkv_bias.</summary>
    public bool QkvBias { get; init; } = true;

    /// <summary>OLMoE's clip_qkv; null = none.</summary>
    public double? ClipQkv { get; init; }
    public bool UseSlidingWindow { get; init; }
    public int SlidingWindow { get; init; } = 4096;

    /// <summary>Qwen2-MoE's max_window_layers (also written for Qwen3-MoE, which ignores it).</summary>
    public int MaxWindowLayers { get; init; } = 28;
    public bool TieEmbeddings { get; init; }
    public DType DType { get; init; } = DType.F32;
    public ulong Seed { get; init; } = 1;
    public int Shards { get; init; } = 1;
    public int MaxPositions { get; init; } = 4096;
    public double RopeTheta { get; init; } = 1e6;

    /// <summary>null = the family's default (1e-6 Qwen and DeepSeek-V3, 1e-5 OLMoE, Mixtral and gpt-oss).</summary>
    public double? RmsNormEps { get; init; }

    /// <summary>gpt-oss and DeepSeek-V3: the YaRN rope_scaling block (max_position_embeddings is MaxPositions); null =
    /// none for DeepSeek-V3, the real checkpoints' block (factor 32 over 4096, truncate false) for gpt-oss.</summary>
    public RefYarn? Yarn { get; init; }

    /// <summary>gpt-oss: experts as the Hub stores them, MXFP4 *_blocks / *_scales (random codes, per-block
    /// exponents 2^-6..2^-3) with quantization_config quant_method mxfp4; else the BF16 / F32 form.</summary>
    public bool Mxfp4Experts { get; init; }

    /// <summary>gpt-oss swiglu_limit.</summary>
    public double SwigluLimit { get; init; } = 7.0;

    /// <summary>DeepSeek-V3 MLA sizes: q_lora_rank (null = a direct q_proj), kv_lora_rank, qk_nope / qk_rope / v head dims.</summary>
    public int? QLoraRank { get; init; } = 24;
    public int KvLoraRank { get; init; } = 24;
    public int QkNopeHeadDim { get; init; } = 16;
    public int QkRopeHeadDim { get; init; } = 8;
    public int VHeadDim { get; init; } = 16;

    /// <summary>DeepSeek-V3 router: n_group, topk_group, routed_scaling_factor; e_score_correction_bias values are
    /// N(ScoreBias, (ScoreBias / 2)^2), 0 = all zero.</summary>
    public int Groups { get; init; } = 4;
    public int TopKGroups { get; init; } = 2;
    public double RoutedScaling { get; init; } = 2.5;
    public double ScoreBias { get; init; } = 0.15;

    /// <summary>DeepSeek-V3 first_k_dense_replace and n_shared_experts (each of MoeIntermediate).</summary>
    public int FirstKDenseReplace { get; init; } = 1;
    public int SharedExperts { get; init; } = 1;

    public int ResolvedHeadDim => Family == RefFamily.DeepSeekV3 ? QkNopeHeadDim + QkRopeHeadDim : HeadDim ?? (Heads > 0 ? Hidden / Heads : 0);

    public bool ResolvedNormTopK => Family == RefFamily.Mixtral || (NormTopK ?? Family is RefFamily.Qwen3Moe or RefFamily.DeepSeekV3);

    public double ResolvedRmsNormEps => RmsNormEps ?? (Family is RefFamily.Qwen3Moe or RefFamily.Qwen2Moe or RefFamily.DeepSeekV3 ? 1e-6 : 1e-5);

    /// <summary>Layer i is MoE iff not in MlpOnlyLayers and (i + 1) % DecoderSparseStep == 0 (Qwen); iff
    /// i &gt;= FirstKDenseReplace (DeepSeek-V3); always otherwise.</summary>
    public bool IsMoeLayer(int i) =>
        Family is RefFamily.Olmoe or RefFamily.Mixtral or RefFamily.GptOss
        || (Family == RefFamily.DeepSeekV3 ? i >= FirstKDenseReplace : !MlpOnlyLayers.Contains(i) && (i + 1) % DecoderSparseStep == 0);
}

public static class RandomMoe
{
    /// <summary>Writes the model into <paramref name="dir"/> (created if needed).</summary>
    public static void Write(string dir, RandomMoeOptions o)
    {
        Validate(o);
        if (o.Family == RefFamily.Mixtral)
        {
            RandomMixtral.Write(dir, new RandomMixtralOptions
            {
                Hidden = o.Hidden, Layers = o.Layers, Experts = o.Experts, TopK = o.TopK, Ffn = o.MoeIntermediate, Heads = o.Heads,
                KvHeads = o.KvHeads, HeadDim = o.HeadDim, Vocab = o.Vocab, DType = o.DType, Seed = o.Seed, Shards = o.Shards,
                TieEmbeddings = o.TieEmbeddings, MaxPositions = o.MaxPositions, RopeTheta = o.RopeTheta, RmsNormEps = o.ResolvedRmsNormEps,
                SlidingWindow = o.UseSlidingWindow ? o.SlidingWindow : null,
            });
            return;
        }

        RandomMixtral.WriteFiles(dir, Tensors(o), (name, shape) => Values(o, name, shape), o.DType, o.Shards, ConfigJson(o), o.Vocab, "4.51.3",
            o.Mxfp4Experts ? (name, shape) => RandomMoeFamilies.Mxfp4Entry(o, name, shape) : null);
    }

    /// <summary>Hugging Face's tensor names and shapes ([out, in] for linear weights), in file order.</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Tensors(RandomMoeOptions o)
    {
        Validate(o);
        if (o.Family == RefFamily.Mixtral)
            throw new ArgumentException("random MoE: Mixtral tensors are RandomMixtral.Tensors'");
        if (o.Family is RefFamily.GptOss or RefFamily.DeepSeekV3)
            return RandomMoeFamilies.Tensors(o);
        long d = o.Hidden, dh = o.ResolvedHeadDim, q = o.Heads * dh, kv = o.KvHeads * dh, f = o.MoeIntermediate;
        var list = new List<(string, long[])> { ("model.embed_tokens.weight", [o.Vocab, d]) };
        for (int l = 0; l < o.Layers; l++)
        {
            string p = $"model.layers.{l}.", a = p + "self_attn.", m = p + "mlp.";
            list.Add((p + "input_layernorm.weight", [d]));
            list.Add((a + "q_proj.weight", [q, d]));
            list.Add((a + "k_proj.weight", [kv, d]));
            list.Add((a + "v_proj.weight", [kv, d]));
            if (o.Family == RefFamily.Qwen2Moe && o.QkvBias)
            {
                list.Add((a + "q_proj.bias", [q]));
                list.Add((a + "k_proj.bias", [kv]));
                list.Add((a + "v_proj.bias", [kv]));
            }

            list.Add((a + "o_proj.weight", [d, q]));
            if (o.Family == RefFamily.Qwen3Moe)
            {
                list.Add((a + "q_norm.weight", [dh]));
                list.Add((a + "k_norm.weight", [dh]));
            }
            else if (o.Family == RefFamily.Olmoe)
            {
                list.Add((a + "q_norm.weight", [q]));
                list.Add((a + "k_norm.weight", [kv]));
            }

            list.Add((p + "post_attention_layernorm.weight", [d]));
            if (o.IsMoeLayer(l))
            {
                list.Add((m + "gate.weight", [o.Experts, d]));
                for (int e = 0; e < o.Experts; e++)
                {
                    list.Add((m + $"experts.{e}.gate_proj.weight", [f, d]));
                    list.Add((m + $"experts.{e}.up_proj.weight", [f, d]));
                    list.Add((m + $"experts.{e}.down_proj.weight", [d, f]));
                }

                if (o.Family == RefFamily.Qwen2Moe)
                {
                    long s = o.SharedExpertIntermediate;
                    list.Add((m + "shared_expert.gate_proj.weight", [s, d]));
                    list.Add((m + "shared_expert.up_proj.weight", [s, d]));
                    list.Add((m + "shared_expert.down_proj.weight", [d, s]));
                    list.Add((m + "shared_expert_gate.weight", [1, d]));
                }
            }
            else
            {
                long di = o.DenseIntermediate;
                list.Add((m + "gate_proj.weight", [di, d]));
                list.Add((m + "up_proj.weight", [di, d]));
                list.Add((m + "down_proj.weight", [d, di]));
            }
        }

        list.Add(("model.norm.weight", [d]));
        if (!o.TieEmbeddings)
            list.Add(("lm_head.weight", [o.Vocab, d]));
        return list;
    }

    /// <summary>The float values of one tensor (before rounding to the file's dtype).</summary>
    public static float[] Values(RandomMoeOptions o, string name, long[] shape)
    {
        if (o.Family is RefFamily.GptOss or RefFamily.DeepSeekV3 && RandomMoeFamilies.Values(o, name, shape) is { } special)
            return special;
        if (name.EndsWith("norm.weight", StringComparison.Ordinal))
            return RandomMixtral.Normal(o.Seed, name, shape, 1.0, 0.1);
        if (name.EndsWith(".bias", StringComparison.Ordinal))
            return RandomMixtral.Normal(o.Seed, name, shape, 0.0, 0.2);
        if (name == "model.embed_tokens.weight")
            return RandomMixtral.Normal(o.Seed, name, shape, 0.0, 1.0);
        double scale = name.EndsWith("mlp.gate.weight", StringComparison.Ordinal) ? 2.0 : 1.0;
        return RandomMixtral.Normal(o.Seed, name, shape, 0.0, scale / Math.Sqrt(shape[^1]));
    }

    /// <summary>config.json with the keys Hugging Face's configuration class of the family writes, sorted.</summary>
    public static string ConfigJson(RandomMoeOptions o)
    {
        if (o.Family is RefFamily.GptOss or RefFamily.DeepSeekV3)
            return RandomMoeFamilies.ConfigJson(o);
        var keys = CommonKeys(o,
            o.Family switch { RefFamily.Qwen3Moe => "Qwen3MoeForCausalLM", RefFamily.Qwen2Moe => "Qwen2MoeForCausalLM", _ => "OlmoeForCausalLM" },
            o.Family switch { RefFamily.Qwen3Moe => "qwen3_moe", RefFamily.Qwen2Moe => "qwen2_moe", _ => "olmoe" }, "4.51.3");
        keys["norm_topk_prob"] = B(o.ResolvedNormTopK);
        keys["num_experts"] = I(o.Experts);
        keys["num_key_value_heads"] = I(o.KvHeads);
        keys["output_router_logits"] = "false";
        if (o.Family == RefFamily.Olmoe)
        {
            keys["attention_bias"] = "false";
            keys["clip_qkv"] = o.ClipQkv is { } c ? Num(c) : "null";
            keys["intermediate_size"] = I(o.MoeIntermediate);
            keys["pad_token_id"] = "1";
            keys["router_aux_loss_coef"] = "0.01";
        }
        else
        {
            if (o.Family == RefFamily.Qwen3Moe)
            {
                keys["attention_bias"] = "false";
                keys["head_dim"] = I(o.ResolvedHeadDim);
            }
            else
            {
                if (o.HeadDim is { } hd)
                    keys["head_dim"] = I(hd);
                keys["qkv_bias"] = B(o.QkvBias);
                keys["shared_expert_intermediate_size"] = I(o.SharedExpertIntermediate);
            }

            keys["decoder_sparse_step"] = I(o.DecoderSparseStep);
            keys["intermediate_size"] = I(o.DenseIntermediate);
            keys["max_window_layers"] = I(o.MaxWindowLayers);
            keys["mlp_only_layers"] = "[" + string.Join(", ", o.MlpOnlyLayers.Select(I)) + "]";
            keys["moe_intermediate_size"] = I(o.MoeIntermediate);
            keys["router_aux_loss_coef"] = "0.001";
            keys["sliding_window"] = o.UseSlidingWindow ? I(o.SlidingWindow) : "null";
            keys["use_sliding_window"] = B(o.UseSlidingWindow);
        }

        return RandomMixtral.JsonObject(keys);
    }

    /// <summary>The config.json keys every family writes alike (sorted; rope_scaling null).</summary>
    internal static SortedDictionary<string, string> CommonKeys(RandomMoeOptions o, string architecture, string modelType, string transformersVersion)
    {
        double eps = o.ResolvedRmsNormEps;
        return new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["architectures"] = $"[\n    \"{architecture}\"\n  ]",
            ["attention_dropout"] = "0.0",
            ["bos_token_id"] = "1",
            ["eos_token_id"] = "2",
            ["hidden_act"] = "\"silu\"",
            ["hidden_size"] = I(o.Hidden),
            ["initializer_range"] = "0.02",
            ["max_position_embeddings"] = I(o.MaxPositions),
            ["model_type"] = $"\"{modelType}\"",
            ["num_attention_heads"] = I(o.Heads),
            ["num_experts_per_tok"] = I(o.TopK),
            ["num_hidden_layers"] = I(o.Layers),
            ["rms_norm_eps"] = eps < 1e-4 ? Sci(eps) : Num(eps),
            ["rope_scaling"] = "null",
            ["rope_theta"] = Num(o.RopeTheta),
            ["tie_word_embeddings"] = B(o.TieEmbeddings),
            ["torch_dtype"] = $"\"{TorchDType(o.DType)}\"",
            ["transformers_version"] = $"\"{transformersVersion}\"",
            ["use_cache"] = "true",
            ["vocab_size"] = I(o.Vocab),
        };
    }

    // config.json value writers shared with RandomMoeFamilies.
    internal static string I(int x) => x.ToString(CultureInfo.InvariantCulture);

    internal static string B(bool x) => x ? "true" : "false";

    internal static string Num(double x) => x.ToString("0.0###############", CultureInfo.InvariantCulture);

    internal static string Sci(double x) => x.ToString("0.#####e-00", CultureInfo.InvariantCulture);

    internal static string TorchDType(DType dtype) => dtype switch
    {
        DType.F32 => "float32",
        DType.F16 => "float16",
        DType.BF16 => "bfloat16",
        _ => throw new ArgumentException($"random MoE weights are F32, F16 or BF16, not {DTypes.ToName(dtype)}"),
    };

    internal static void Positive(int v, string what)
    {
        if (v <= 0)
            throw new ArgumentException($"random MoE: {what} must be positive, got {v}");
    }

    internal static void Validate(RandomMoeOptions o)
    {
        if (!Enum.IsDefined(o.Family))
            throw new ArgumentException($"random MoE: unknown family {o.Family}");
        Positive(o.Hidden, "hidden");
        Positive(o.Layers, "layers");
        Positive(o.Heads, "heads");
        Positive(o.KvHeads, "kv-heads");
        Positive(o.ResolvedHeadDim, "head-dim");
        Positive(o.Experts, "experts");
        Positive(o.TopK, "top-k");
        Positive(o.MoeIntermediate, "moe-intermediate");
        Positive(o.DecoderSparseStep, "decoder-sparse-step");
        Positive(o.MaxPositions, "max-pos");
        Positive(o.Shards, "shards");
        if (o.TopK > o.Experts)
            throw new ArgumentException($"random MoE: top-k {o.TopK} is larger than the number of experts {o.Experts}");
        if (o.Heads % o.KvHeads != 0)
            throw new ArgumentException($"random MoE: heads {o.Heads} is not a multiple of kv-heads {o.KvHeads}");
        if (o.ResolvedHeadDim % 2 != 0)
            throw new ArgumentException($"random MoE: head-dim {o.ResolvedHeadDim} must be even (RoPE rotates pairs)");
        if (o.HeadDim is null && o.Family != RefFamily.DeepSeekV3 && o.Hidden % o.Heads != 0)
            throw new ArgumentException($"random MoE: hidden {o.Hidden} is not a multiple of heads {o.Heads}; give a head dim");
        if (o.Family == RefFamily.Olmoe && o.ResolvedHeadDim * o.Heads != o.Hidden)
            throw new ArgumentException("random MoE: OLMoE sizes q_norm by hidden, so head-dim must be hidden / heads");
        if (o.Family == RefFamily.Qwen2Moe)
            Positive(o.SharedExpertIntermediate, "shared-expert-intermediate");
        bool dense = Enumerable.Range(0, o.Layers).Any(l => !o.IsMoeLayer(l));
        if (dense)
            Positive(o.DenseIntermediate, "dense-intermediate");
        if (o.Family is RefFamily.GptOss or RefFamily.DeepSeekV3)
            RandomMoeFamilies.Validate(o);
        if (o.Mxfp4Experts && o.Family != RefFamily.GptOss)
            throw new ArgumentException("random MoE: MXFP4 experts are a gpt-oss option");
        if (o.Family is RefFamily.Olmoe or RefFamily.Mixtral or RefFamily.GptOss or RefFamily.DeepSeekV3 && (o.MlpOnlyLayers.Length > 0 || o.DecoderSparseStep != 1))
            throw new ArgumentException($"random MoE: {o.Family} has no dense layers (mlp_only_layers / decoder_sparse_step)");
        if (o.ClipQkv is { } clip && (o.Family != RefFamily.Olmoe || !(clip > 0)))
            throw new ArgumentException($"random MoE: clip_qkv {clip} must be positive and is an OLMoE option");
        if (o.UseSlidingWindow && (o.Family is RefFamily.Olmoe or RefFamily.DeepSeekV3 || o.SlidingWindow <= 0))
            throw new ArgumentException($"random MoE: sliding window {o.SlidingWindow} must be positive and {o.Family} has none");
        if (o.Family == RefFamily.Mixtral && o.NormTopK == false)
            throw new ArgumentException("random MoE: Mixtral always renormalises its top-k weights");
        if (o.Vocab < SyntheticVocab.MinimumSize)
            throw new ArgumentException($"random MoE: vocab {o.Vocab} is too small; the synthetic tokenizer needs at least {SyntheticVocab.MinimumSize} entries");
        if (o.DType is not (DType.F32 or DType.F16 or DType.BF16))
            throw new ArgumentException($"random MoE: dtype {DTypes.ToName(o.DType)} is not one of F32, F16, BF16");
        if (!(o.RopeTheta > 0) || !(o.ResolvedRmsNormEps > 0))
            throw new ArgumentException("random MoE: rope-theta and rms-norm-eps must be positive");
    }
}
