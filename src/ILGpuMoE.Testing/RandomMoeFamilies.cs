// RandomMoe's gpt-oss and DeepSeek-V3 checkpoints in Hugging Face's on-disk layout (tensor names and shapes as
// src/ILGpuMoE.Reference/RefModelFamilies.cs reads them; config.json keys as GptOssConfig / DeepseekV3Config write
// them). gpt-oss experts in the BF16 / F32 form (input-major: gate_up_proj [E, D, 2F] with gate / up interleaved on
// the last axis, down_proj [E, F, D]) or, with Mxfp4Experts, the Hub's MXFP4 form (output-major uint8
// gate_up_proj_blocks [E, 2F, D/32, 16] / _scales [E, 2F, D/32], down_proj_blocks [E, D, F/32, 16] / _scales; the
// layout RefMxfp4 reads): random code bytes, scales 127 + U{-6..-3}.
// Values beyond RandomMoe's: the stacked experts N(0, 1/D) and N(0, 1/F) (fan-in is their middle axis), gpt-oss'
// router N(0, 4/D) like the other routers, biases N(0, 0.2^2), sinks N(0, 1), DeepSeek-V3's e_score_correction_bias
// N(ScoreBias, (ScoreBias / 2)^2) (a non-zero bias that changes selections).
using ILGpuMoE.IO;
using ILGpuMoE.Reference;
using static ILGpuMoE.Testing.RandomMoe;

namespace ILGpuMoE.Testing;

internal static class RandomMoeFamilies
{
    public static IReadOnlyList<(string Name, long[] Shape)> Tensors(RandomMoeOptions o)
    {
        bool oss = o.Family == RefFamily.GptOss;
        long d = o.Hidden, h = o.Heads, e = o.Experts, f = o.MoeIntermediate;
        var list = new List<(string, long[])> { ("model.embed_tokens.weight", [o.Vocab, d]) };
        for (int l = 0; l < o.Layers; l++)
        {
            string p = $"model.layers.{l}.", a = p + "self_attn.", m = p + "mlp.";
            list.Add((p + "input_layernorm.weight", [d]));
            if (oss)
            {
                long dh = o.ResolvedHeadDim, q = h * dh, kv = o.KvHeads * dh;
                foreach (var (n, rows, cols) in new[] { ("q_proj", q, d), ("k_proj", kv, d), ("v_proj", kv, d), ("o_proj", d, q) })
                {
                    list.Add((a + n + ".weight", [rows, cols]));
                    list.Add((a + n + ".bias", [rows]));
                }

                list.Add((a + "sinks", [h]));
                list.Add((p + "post_attention_layernorm.weight", [d]));
                list.Add((m + "router.weight", [e, d]));
                list.Add((m + "router.bias", [e]));
                if (o.Mxfp4Experts)
                {
                    list.Add((m + "experts.gate_up_proj_blocks", [e, 2 * f, d / RefMxfp4.BlockSize, 16]));
                    list.Add((m + "experts.gate_up_proj_scales", [e, 2 * f, d / RefMxfp4.BlockSize]));
                }
                else
                {
                    list.Add((m + "experts.gate_up_proj", [e, d, 2 * f]));
                }

                list.Add((m + "experts.gate_up_proj_bias", [e, 2 * f]));
                if (o.Mxfp4Experts)
                {
                    list.Add((m + "experts.down_proj_blocks", [e, d, f / RefMxfp4.BlockSize, 16]));
                    list.Add((m + "experts.down_proj_scales", [e, d, f / RefMxfp4.BlockSize]));
                }
                else
                {
                    list.Add((m + "experts.down_proj", [e, f, d]));
                }

                list.Add((m + "experts.down_proj_bias", [e, d]));
                continue;
            }

            long qk = o.QkNopeHeadDim + o.QkRopeHeadDim;
            if (o.QLoraRank is { } qr)
            {
                list.Add((a + "q_a_proj.weight", [qr, d]));
                list.Add((a + "q_a_layernorm.weight", [qr]));
                list.Add((a + "q_b_proj.weight", [h * qk, qr]));
            }
            else
            {
                list.Add((a + "q_proj.weight", [h * qk, d]));
            }

            list.Add((a + "kv_a_proj_with_mqa.weight", [o.KvLoraRank + o.QkRopeHeadDim, d]));
            list.Add((a + "kv_a_layernorm.weight", [o.KvLoraRank]));
            list.Add((a + "kv_b_proj.weight", [h * (o.QkNopeHeadDim + o.VHeadDim), o.KvLoraRank]));
            list.Add((a + "o_proj.weight", [d, h * o.VHeadDim]));
            list.Add((p + "post_attention_layernorm.weight", [d]));
            if (o.IsMoeLayer(l))
            {
                list.Add((m + "gate.weight", [e, d]));
                list.Add((m + "gate.e_score_correction_bias", [e]));
                for (int x = 0; x < e; x++)
                    Mlp($"{m}experts.{x}.", f);
                Mlp(m + "shared_experts.", f * o.SharedExperts);
            }
            else
            {
                Mlp(m, o.DenseIntermediate);
            }
        }

        list.Add(("model.norm.weight", [d]));
        if (!o.TieEmbeddings)
            list.Add(("lm_head.weight", [o.Vocab, d]));
        return list;

        void Mlp(string prefix, long hidden)
        {
            list.Add((prefix + "gate_proj.weight", [hidden, d]));
            list.Add((prefix + "up_proj.weight", [hidden, d]));
            list.Add((prefix + "down_proj.weight", [d, hidden]));
        }
    }

    /// <summary>The values of the tensors RandomMoe.Values does not cover; null for the rest.</summary>
    public static float[]? Values(RandomMoeOptions o, string name, long[] shape)
    {
        if (name.EndsWith("_bias", StringComparison.Ordinal) && !name.EndsWith("e_score_correction_bias", StringComparison.Ordinal))
            return RandomMixtral.Normal(o.Seed, name, shape, 0.0, 0.2);
        if (name.EndsWith("e_score_correction_bias", StringComparison.Ordinal))
            return o.ScoreBias == 0 ? new float[shape[0]] : RandomMixtral.Normal(o.Seed, name, shape, o.ScoreBias, o.ScoreBias / 2);
        if (name.EndsWith("self_attn.sinks", StringComparison.Ordinal))
            return RandomMixtral.Normal(o.Seed, name, shape, 0.0, 1.0);
        if (name.EndsWith("mlp.router.weight", StringComparison.Ordinal))
            return RandomMixtral.Normal(o.Seed, name, shape, 0.0, 2.0 / Math.Sqrt(shape[^1]));
        if (name.EndsWith("experts.gate_up_proj", StringComparison.Ordinal) || name.EndsWith("experts.down_proj", StringComparison.Ordinal))
            return RandomMixtral.Normal(o.Seed, name, shape, 0.0, 1.0 / Math.Sqrt(shape[1]));
        return null;
    }

    /// <summary>The uint8 entry of an MXFP4 *_blocks / *_scales tensor; null for every other tensor.</summary>
    public static SafeTensorsWriter.Entry? Mxfp4Entry(RandomMoeOptions o, string name, long[] shape)
    {
        bool blocks = name.EndsWith("_blocks", StringComparison.Ordinal);
        if (!blocks && !name.EndsWith("_scales", StringComparison.Ordinal))
            return null;
        // Uniform draws from the seeded normals: codes 0..255, scales 121..124 (2^-6..2^-3).
        var u = RandomMixtral.Normal(o.Seed, name, shape, 0.0, 1.0);
        var bytes = new byte[u.Length];
        for (int i = 0; i < u.Length; i++)
        {
            double p = 0.5 * (1 + Math.Tanh(0.8 * u[i]));  // a smooth map of N(0, 1) onto (0, 1)
            bytes[i] = blocks ? (byte)Math.Min(255, (int)(p * 256)) : (byte)(121 + Math.Min(3, (int)(p * 4)));
        }

        return SafeTensorsWriter.FromSpan<byte>(name, DType.U8, shape, bytes);
    }

    public static string ConfigJson(RandomMoeOptions o)
    {
        bool oss = o.Family == RefFamily.GptOss;
        var yarn = o.Yarn ?? (oss ? new RefYarn(32.0, 4096, 32.0, 1.0, Truncate: false) : null);
        string rope = "null";
        if (yarn is not null)
        {
            var r = new SortedDictionary<string, string>(StringComparer.Ordinal)
            {
                ["beta_fast"] = Num(yarn.BetaFast),
                ["beta_slow"] = Num(yarn.BetaSlow),
                ["factor"] = Num(yarn.Factor),
                ["original_max_position_embeddings"] = I(yarn.OriginalMaxPositions),
                ["rope_type"] = "\"yarn\"",
                ["truncate"] = B(yarn.Truncate),
            };
            if (yarn.Mscale != 0)
                r["mscale"] = Num(yarn.Mscale);
            if (yarn.MscaleAllDim != 0)
                r["mscale_all_dim"] = Num(yarn.MscaleAllDim);
            if (yarn.AttentionFactor is { } af)
                r["attention_factor"] = Num(af);
            rope = "{" + string.Join(", ", r.Select(kv => $"\"{kv.Key}\": {kv.Value}")) + "}";
        }

        var keys = CommonKeys(o, oss ? "GptOssForCausalLM" : "DeepseekV3ForCausalLM", oss ? "gpt_oss" : "deepseek_v3", "4.55.0");
        keys["attention_bias"] = B(oss);
        keys["rope_scaling"] = rope;
        if (oss)
        {
            keys["head_dim"] = I(o.ResolvedHeadDim);
            keys["intermediate_size"] = I(o.MoeIntermediate);
            keys["layer_types"] = "[" + string.Join(", ", Enumerable.Range(0, o.Layers)
                .Select(i => i % 2 == 0 ? "\"sliding_attention\"" : "\"full_attention\"")) + "]";
            keys["num_key_value_heads"] = I(o.KvHeads);
            keys["num_local_experts"] = I(o.Experts);
            keys["sliding_window"] = o.UseSlidingWindow ? I(o.SlidingWindow) : "null";
            keys["swiglu_limit"] = Num(o.SwigluLimit);
            if (o.Mxfp4Experts)
            {
                keys["quantization_config"] = "{\"modules_to_not_convert\": [\"model.layers.*.self_attn\", \"model.layers.*.mlp.router\", "
                    + "\"model.embed_tokens\", \"lm_head\"], \"quant_method\": \"mxfp4\"}";
            }
        }
        else
        {
            keys["first_k_dense_replace"] = I(o.FirstKDenseReplace);
            keys["head_dim"] = I(o.QkRopeHeadDim);
            keys["intermediate_size"] = I(o.DenseIntermediate);
            keys["kv_lora_rank"] = I(o.KvLoraRank);
            keys["moe_intermediate_size"] = I(o.MoeIntermediate);
            keys["moe_layer_freq"] = "1";
            keys["n_group"] = I(o.Groups);
            keys["n_routed_experts"] = I(o.Experts);
            keys["n_shared_experts"] = I(o.SharedExperts);
            keys["norm_topk_prob"] = B(o.ResolvedNormTopK);
            keys["num_key_value_heads"] = I(o.Heads);
            keys["num_nextn_predict_layers"] = "0";
            keys["q_lora_rank"] = o.QLoraRank is { } qr ? I(qr) : "null";
            keys["qk_nope_head_dim"] = I(o.QkNopeHeadDim);
            keys["qk_rope_head_dim"] = I(o.QkRopeHeadDim);
            keys["rope_interleave"] = "true";
            keys["routed_scaling_factor"] = Num(o.RoutedScaling);
            keys["scoring_func"] = "\"sigmoid\"";
            keys["topk_group"] = I(o.TopKGroups);
            keys["topk_method"] = "\"noaux_tc\"";
            keys["v_head_dim"] = I(o.VHeadDim);
        }

        return RandomMixtral.JsonObject(keys);
    }

    public static void Validate(RandomMoeOptions o)
    {
        if (o.Family == RefFamily.GptOss)
        {
            if (!(o.SwigluLimit > 0))
                throw new ArgumentException($"random MoE: swiglu-limit {o.SwigluLimit} must be positive");
            if (o.Mxfp4Experts && (o.Hidden % RefMxfp4.BlockSize != 0 || o.MoeIntermediate % RefMxfp4.BlockSize != 0))
                throw new ArgumentException($"random MoE: MXFP4 experts need hidden {o.Hidden} and moe-intermediate {o.MoeIntermediate} divisible by {RefMxfp4.BlockSize}");
            return;
        }

        if (o.QLoraRank is { } qr)
            Positive(qr, "q-lora-rank");
        Positive(o.KvLoraRank, "kv-lora-rank");
        Positive(o.QkRopeHeadDim, "qk-rope-head-dim");
        Positive(o.VHeadDim, "v-head-dim");
        Positive(o.Groups, "groups");
        Positive(o.TopKGroups, "topk-groups");
        Positive(o.SharedExperts, "shared-experts");
        if (o.QkNopeHeadDim < 0 || o.QkRopeHeadDim % 2 != 0)
            throw new ArgumentException($"random MoE: qk-nope-head-dim {o.QkNopeHeadDim} must not be negative and qk-rope-head-dim {o.QkRopeHeadDim} must be even");
        if (o.Experts % o.Groups != 0 || o.TopKGroups > o.Groups || o.TopK > o.TopKGroups * (o.Experts / o.Groups))
            throw new ArgumentException($"random MoE: groups {o.Groups} must divide experts {o.Experts}, topk-groups {o.TopKGroups} be at most groups, and their experts hold top-k {o.TopK}");
        if (o.KvHeads != o.Heads)
            throw new ArgumentException($"random MoE: DeepSeek-V3 (MLA) has kv-heads = heads, got {o.KvHeads} and {o.Heads}");
        if (o.FirstKDenseReplace < 0 || !(o.RoutedScaling > 0))
            throw new ArgumentException("random MoE: first-k-dense-replace must not be negative and routed-scaling must be positive");
    }
}
