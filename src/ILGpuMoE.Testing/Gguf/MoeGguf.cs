// Hugging Face Qwen3-MoE / Qwen2-MoE / OLMoE (config.json + safetensors) -> F32 GGUF for llama.cpp's `qwen3moe`,
// `qwen2moe` and `olmoe` architectures, laid out as llama.cpp's convert_hf_to_gguf.py does (names from its
// gguf-py constants); Mixtral goes through MixtralGguf, DeepSeek-V3 through MoeGgufDeepSeek.cs (`deepseek2`),
// gpt-oss through MoeGgufGptOss.cs (`gpt-oss`). The config is read with HfReferenceConfig (not the runtime's
// parser). These architectures use rotate-half (NeoX) RoPE in llama.cpp, so q_proj / k_proj rows are NOT permuted.
//   token_embd, output_norm, output (absent when a Qwen3-MoE is tied), blk.N.{attn_norm, attn_q, attn_k, attn_v
//   (+ .bias for Qwen2-MoE), attn_output, attn_q_norm / attn_k_norm (Qwen3-MoE [Dh], OLMoE [H*Dh]), ffn_norm,
//   ffn_gate_inp (router [E, D]), ffn_gate_exps / ffn_up_exps (stacked [E, F, D]), ffn_down_exps ([E, D, F])}, and for
//   Qwen2-MoE's shared expert blk.N.{ffn_gate_shexp, ffn_up_shexp, ffn_down_shexp, ffn_gate_inp_shexp ([D])}.
// Metadata: {arch}.{context_length, embedding_length, feed_forward_length, block_count, attention.head_count,
// attention.head_count_kv, attention.key_length, attention.value_length, rope.dimension_count, rope.freq_base,
// attention.layer_norm_rms_epsilon, expert_count, expert_used_count, expert_feed_forward_length,
// expert_shared_feed_forward_length (Qwen2-MoE)}.
// What llama.cpp (LLamaSharp 0.30.0's libllama) cannot run is refused rather than silently dropped (measured on
// tiny random checkpoints):
// - dense (non-MoE) layers: qwen3moe and qwen2moe fail to load a GGUF whose dense layers carry ffn_gate / ffn_up /
//   ffn_down instead of experts;
// - sliding windows: qwen3moe and qwen2moe attend to every key even with {arch}.attention.sliding_window written
//   (window 4, 13 tokens: 3.6 and 2.7 away from the windowed oracle, within 1.2e-6 of the full-attention one);
// - OLMoE with KV heads != heads: it sizes attn_k_norm like attn_q_norm;
// - OLMoE's clip_qkv: its olmoe graph ignores attention.clamp_kqv (2.1 away from the clipping oracle, within 1e-6
//   of the unclipped one);
// - Qwen2-MoE with head_dim != hidden / heads: the model fails to load.
// Its qwen2moe and olmoe fail to load without output.weight (measured), so a tied model of those gets a copy of the
// embedding there. Its routers ignore norm_topk_prob (qwen3moe always renormalises, qwen2moe and olmoe never do;
// pinned by MoePeerTests); the caller compares only where that matches.
using System.Text.Json;
using ILGpuMoE.IO;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Testing;

public static partial class MoeGguf
{
    /// <summary>Converts the model in <paramref name="hfDir"/> to an F32 GGUF at <paramref name="ggufPath"/>. Throws
    /// NotSupportedException for a model llama.cpp's graph for the architecture cannot run.</summary>
    public static void Convert(string hfDir, string ggufPath)
    {
        var c = HfReferenceConfig.Load(hfDir);
        if (c.Family == RefFamily.Mixtral)
        {
            MixtralGguf.Convert(hfDir, ggufPath);
            return;
        }

        if (c.Family == RefFamily.DeepSeekV3)
        {
            ConvertDeepSeek(hfDir, c, ggufPath);
            return;
        }

        if (c.Family == RefFamily.GptOss)
        {
            ConvertGptOss(hfDir, c, ggufPath);
            return;
        }

        string arch = Arch(c.Family);
        if (c.MoeLayers.Any(m => !m))
            throw new NotSupportedException($"{hfDir}: llama.cpp's {arch} has no dense-layer path (mlp_only_layers / decoder_sparse_step)");
        if (c.SlidingWindow.Any(w => w > 0))
            throw new NotSupportedException($"{hfDir}: llama.cpp's {arch} has no sliding window");
        if (c.Family == RefFamily.Olmoe && c.KvHeads != c.Heads)
            throw new NotSupportedException($"{hfDir}: llama.cpp's olmoe sizes attn_k_norm like attn_q_norm, so it needs KV heads == heads");
        if (c.ClipQkv > 0)
            throw new NotSupportedException($"{hfDir}: llama.cpp's olmoe ignores attention.clamp_kqv (clip_qkv)");
        if (c.Family == RefFamily.Qwen2Moe && c.HeadDim * c.Heads != c.Hidden)
            throw new NotSupportedException($"{hfDir}: llama.cpp's qwen2moe does not load head_dim {c.HeadDim} != hidden_size / heads");
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(hfDir, "config.json")));
        int maxPos = doc.RootElement.TryGetProperty("max_position_embeddings", out var mp) && mp.ValueKind == JsonValueKind.Number ? mp.GetInt32() : 4096;
        using var ck = Checkpoint.Open(hfDir);

        var g = Header(arch, c, maxPos, c.Family == RefFamily.Olmoe ? c.MoeIntermediate : c.DenseIntermediate, c.KvHeads,
            c.HeadDim, c.HeadDim, c.HeadDim);
        if (c.SharedExpertIntermediate > 0)
            g.AddUInt32($"{arch}.expert_shared_feed_forward_length", (uint)c.SharedExpertIntermediate);

        long d = c.Hidden, f = c.MoeIntermediate, e = c.Experts, q = c.Heads * c.HeadDim, kv = c.KvHeads * c.HeadDim;
        void Plain(string gguf, string hf, params long[] torchShape) => AddPlain(g, ck, gguf, hf, torchShape);
        void Stacked(string gguf, string[] names, long rows, long cols) => AddStacked(g, ck, gguf, names, rows, cols);

        Plain("token_embd.weight", "model.embed_tokens.weight", c.Vocab, d);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.", a = p + "self_attn.", m = p + "mlp.", b = $"blk.{l}.";
            Plain(b + "attn_norm.weight", p + "input_layernorm.weight", d);
            Plain(b + "attn_q.weight", a + "q_proj.weight", q, d);
            Plain(b + "attn_k.weight", a + "k_proj.weight", kv, d);
            Plain(b + "attn_v.weight", a + "v_proj.weight", kv, d);
            if (c.QkvBias)
            {
                Plain(b + "attn_q.bias", a + "q_proj.bias", q);
                Plain(b + "attn_k.bias", a + "k_proj.bias", kv);
                Plain(b + "attn_v.bias", a + "v_proj.bias", kv);
            }

            Plain(b + "attn_output.weight", a + "o_proj.weight", d, q);
            if (c.QkNorm != RefQkNorm.None)
            {
                bool perHead = c.QkNorm == RefQkNorm.PerHead;
                Plain(b + "attn_q_norm.weight", a + "q_norm.weight", perHead ? c.HeadDim : q);
                Plain(b + "attn_k_norm.weight", a + "k_norm.weight", perHead ? c.HeadDim : kv);
            }

            Plain(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", d);
            Plain(b + "ffn_gate_inp.weight", m + "gate.weight", e, d);
            string[] Experts(string w) => Enumerable.Range(0, c.Experts).Select(x => $"{m}experts.{x}.{w}.weight").ToArray();
            Stacked(b + "ffn_gate_exps.weight", Experts("gate_proj"), f, d);
            Stacked(b + "ffn_up_exps.weight", Experts("up_proj"), f, d);
            Stacked(b + "ffn_down_exps.weight", Experts("down_proj"), d, f);
            if (c.SharedExpertIntermediate > 0)
            {
                long s = c.SharedExpertIntermediate;
                Plain(b + "ffn_gate_shexp.weight", m + "shared_expert.gate_proj.weight", s, d);
                Plain(b + "ffn_up_shexp.weight", m + "shared_expert.up_proj.weight", s, d);
                Plain(b + "ffn_down_shexp.weight", m + "shared_expert.down_proj.weight", d, s);
                // HF [1, D]; llama.cpp wants a vector of D.
                MixtralGguf.Check(ck, m + "shared_expert_gate.weight", 1, d);
                g.AddTensorF32(b + "ffn_gate_inp_shexp.weight", [d], () => ck.ReadFloat32(m + "shared_expert_gate.weight"));
            }
        }

        Plain("output_norm.weight", "model.norm.weight", d);
        // llama.cpp's qwen2moe and olmoe require output.weight (they fail to load a tied model), so they get a copy.
        if (!c.TieEmbeddings)
            Plain("output.weight", "lm_head.weight", c.Vocab, d);
        else if (c.Family != RefFamily.Qwen3Moe)
            Plain("output.weight", "model.embed_tokens.weight", c.Vocab, d);
        g.Write(ggufPath);
    }

    // A GGUF writer holding the general keys, the keys every architecture here takes alike, and the synthetic vocabulary.
    private static GgufWriter Header(string arch, RefModelConfig c, int contextLength, int feedForward, int kvHeads, int keyLength,
        int valueLength, int ropeDims)
    {
        var g = new GgufWriter();
        g.AddString("general.architecture", arch);
        g.AddString("general.name", "ilgpumoe-" + arch);
        g.AddUInt32("general.file_type", 0); // all F32
        void U(string key, int value) => g.AddUInt32($"{arch}.{key}", (uint)value);
        U("vocab_size", c.Vocab);
        U("context_length", contextLength);
        U("embedding_length", c.Hidden);
        U("feed_forward_length", feedForward);
        U("block_count", c.Layers);
        U("attention.head_count", c.Heads);
        U("attention.head_count_kv", kvHeads);
        U("attention.key_length", keyLength);
        U("attention.value_length", valueLength);
        U("rope.dimension_count", ropeDims);
        g.AddFloat32($"{arch}.rope.freq_base", c.RopeTheta);
        g.AddFloat32($"{arch}.attention.layer_norm_rms_epsilon", c.RmsEps);
        U("expert_count", c.Experts);
        U("expert_used_count", c.TopK);
        U("expert_feed_forward_length", c.MoeIntermediate);
        MixtralGguf.AddSyntheticVocab(g, c.Vocab);
        return g;
    }

    // One Hugging Face tensor of torchShape as an F32 GGUF tensor (dims reversed).
    private static void AddPlain(GgufWriter g, Checkpoint ck, string gguf, string hf, params long[] torchShape)
    {
        MixtralGguf.Check(ck, hf, torchShape);
        g.AddTensorF32(gguf, [.. torchShape.Reverse()], () => ck.ReadFloat32(hf));
    }

    // Per-expert [rows, cols] tensors stacked into one [E, rows, cols] GGUF tensor.
    private static void AddStacked(GgufWriter g, Checkpoint ck, string gguf, string[] names, long rows, long cols)
    {
        foreach (string n in names)
            MixtralGguf.Check(ck, n, rows, cols);
        g.AddTensorF32(gguf, [cols, rows, names.Length], () => MixtralGguf.Stack(ck, names, rows * cols));
    }

    /// <summary>llama.cpp's architecture name for a family.</summary>
    public static string Arch(RefFamily family) => family switch
    {
        RefFamily.Mixtral => "llama",
        RefFamily.Qwen3Moe => "qwen3moe",
        RefFamily.Qwen2Moe => "qwen2moe",
        RefFamily.Olmoe => "olmoe",
        RefFamily.DeepSeekV3 => "deepseek2",
        RefFamily.GptOss => "gpt-oss",
        _ => throw new ArgumentException($"unknown family {family}", nameof(family)),
    };
}
