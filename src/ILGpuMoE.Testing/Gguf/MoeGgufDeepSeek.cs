// Hugging Face DeepSeek-V3 -> F32 GGUF for llama.cpp's `deepseek2` architecture, in the fused kv_b layout (one
// attn_kv_b per layer; llama.cpp expands keys and values from it, without its absorbed-MLA path). Names and keys as
// llama.cpp's converter writes them:
//   blk.N.{attn_norm, attn_q_a, attn_q_a_norm, attn_q_b (or attn_q without q LoRA), attn_kv_a_mqa, attn_kv_a_norm,
//   attn_kv_b, attn_output, ffn_norm}, dense layers blk.N.{ffn_gate, ffn_up, ffn_down}, MoE layers
//   blk.N.{ffn_gate_inp, exp_probs_b.bias (e_score_correction_bias), ffn_gate_exps, ffn_up_exps, ffn_down_exps,
//   ffn_gate_shexp, ffn_up_shexp, ffn_down_shexp}.
//   deepseek2.{leading_dense_block_count, attention.q_lora_rank, attention.kv_lora_rank, attention.key_length
//   (qk_nope + qk_rope), attention.value_length, rope.dimension_count (qk_rope), expert_shared_count,
//   expert_weights_scale, expert_weights_norm, expert_gating_func (2 = sigmoid), expert_group_count,
//   expert_group_used_count}.
// RoPE: llama.cpp's deepseek2 rotates adjacent pairs, which is Hugging Face's rope_interleave, so no row permutation.
// Refused: q_lora_rank null unless the model has 27 layers (llama.cpp reads q_lora_rank and the attn_q_a / attn_q_b
// tensors for every other depth: measured, a 3-layer GGUF without them fails to load, a 27-layer one matches);
// YaRN (llama.cpp rounds the correction range and derives mscale its own way; not measured here) and
// rope_interleave false. Hugging Face fills dropped groups' scores with 0, llama.cpp with -inf: equal while every
// biased score is positive (see src/ILGpuMoE.Reference/RefModelFamilies.cs).
using ILGpuMoE.IO;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Testing;

public static partial class MoeGguf
{
    private static void ConvertDeepSeek(string hfDir, RefModelConfig c, string ggufPath)
    {
        var mla = c.Mla!;
        if (c.Yarn is not null)
            throw new NotSupportedException($"{hfDir}: the deepseek2 GGUF writer does not write YaRN rope scaling");
        if (mla.QLoraRank == 0 && c.Layers != 27)
            throw new NotSupportedException($"{hfDir}: llama.cpp's deepseek2 takes a direct q_proj (q_lora_rank null) only at 27 layers (V2-Lite), not {c.Layers}");
        if (!c.RopeInterleave)
            throw new NotSupportedException($"{hfDir}: llama.cpp's deepseek2 rotates adjacent pairs (rope_interleave true only)");
        const string arch = "deepseek2";
        using var ck = Checkpoint.Open(hfDir);
        var g = Header(arch, c, 4096, c.DenseIntermediate, c.Heads, mla.QkHeadDim, mla.VHeadDim, mla.QkRopeHeadDim);
        void U(string key, int value) => g.AddUInt32($"{arch}.{key}", (uint)value);
        int firstDense = Array.IndexOf(c.MoeLayers, true) is var i and >= 0 ? i : c.Layers;
        if (mla.QLoraRank > 0)
            U("attention.q_lora_rank", mla.QLoraRank);
        U("attention.kv_lora_rank", mla.KvLoraRank);
        U("leading_dense_block_count", firstDense);
        U("expert_shared_count", c.SharedExpertIntermediate / c.MoeIntermediate);
        g.AddFloat32($"{arch}.expert_weights_scale", c.RoutedScaling);
        g.AddBool($"{arch}.expert_weights_norm", c.NormTopK);
        U("expert_gating_func", 2);
        U("expert_group_count", c.Groups);
        U("expert_group_used_count", c.TopKGroups);

        long d = c.Hidden, h = c.Heads, f = c.MoeIntermediate, e = c.Experts;
        void Plain(string gguf, string hf, params long[] torchShape) => AddPlain(g, ck, gguf, hf, torchShape);

        Plain("token_embd.weight", "model.embed_tokens.weight", c.Vocab, d);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.", a = p + "self_attn.", m = p + "mlp.", b = $"blk.{l}.";
            Plain(b + "attn_norm.weight", p + "input_layernorm.weight", d);
            if (mla.QLoraRank > 0)
            {
                Plain(b + "attn_q_a.weight", a + "q_a_proj.weight", mla.QLoraRank, d);
                Plain(b + "attn_q_a_norm.weight", a + "q_a_layernorm.weight", mla.QLoraRank);
                Plain(b + "attn_q_b.weight", a + "q_b_proj.weight", h * mla.QkHeadDim, mla.QLoraRank);
            }
            else
            {
                Plain(b + "attn_q.weight", a + "q_proj.weight", h * mla.QkHeadDim, d);
            }

            Plain(b + "attn_kv_a_mqa.weight", a + "kv_a_proj_with_mqa.weight", mla.KvLoraRank + mla.QkRopeHeadDim, d);
            Plain(b + "attn_kv_a_norm.weight", a + "kv_a_layernorm.weight", mla.KvLoraRank);
            Plain(b + "attn_kv_b.weight", a + "kv_b_proj.weight", h * (mla.QkNopeHeadDim + mla.VHeadDim), mla.KvLoraRank);
            Plain(b + "attn_output.weight", a + "o_proj.weight", d, h * mla.VHeadDim);
            Plain(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", d);
            if (!c.MoeLayers[l])
            {
                long di = c.DenseIntermediate;
                Plain(b + "ffn_gate.weight", m + "gate_proj.weight", di, d);
                Plain(b + "ffn_up.weight", m + "up_proj.weight", di, d);
                Plain(b + "ffn_down.weight", m + "down_proj.weight", d, di);
                continue;
            }

            Plain(b + "ffn_gate_inp.weight", m + "gate.weight", e, d);
            Plain(b + "exp_probs_b.bias", m + "gate.e_score_correction_bias", e);
            string[] Experts(string w) => Enumerable.Range(0, c.Experts).Select(x => $"{m}experts.{x}.{w}.weight").ToArray();
            AddStacked(g, ck, b + "ffn_gate_exps.weight", Experts("gate_proj"), f, d);
            AddStacked(g, ck, b + "ffn_up_exps.weight", Experts("up_proj"), f, d);
            AddStacked(g, ck, b + "ffn_down_exps.weight", Experts("down_proj"), d, f);
            long s = c.SharedExpertIntermediate;
            Plain(b + "ffn_gate_shexp.weight", m + "shared_experts.gate_proj.weight", s, d);
            Plain(b + "ffn_up_shexp.weight", m + "shared_experts.up_proj.weight", s, d);
            Plain(b + "ffn_down_shexp.weight", m + "shared_experts.down_proj.weight", d, s);
        }

        Plain("output_norm.weight", "model.norm.weight", d);
        Plain("output.weight", c.TieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight", c.Vocab, d);
        g.Write(ggufPath);
    }
}
