// Hugging Face Mixtral (config.json + safetensors) -> GGUF for llama.cpp's "llama" architecture, F32, the way
// llama.cpp's convert_hf_to_gguf.py lays it out:
//   token_embd, output_norm, output (absent when embeddings are tied: llama.cpp then reuses token_embd),
//   blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate_inp (router [E, D]),
//   ffn_gate_exps (w1 stacked [E, F, D]), ffn_up_exps (w3), ffn_down_exps (w2 stacked [E, D, F])}.
// q_proj / k_proj rows are permuted per head: llama.cpp's RoPE rotates adjacent pairs (2i, 2i+1) where Hugging
// Face rotates halves (i, i + Dh/2); row half*Dh/2 + i of a head moves to row 2i + half.
// The vocabulary is synthetic (<unk>, <s>, </s>, 256 byte tokens, filler pieces): llama.cpp only needs V entries
// when it is fed token ids.
using System.Text.Json;
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Testing;

public static class MixtralGguf
{
    /// <summary>Converts the model in <paramref name="hfDir"/> to an F32 GGUF at <paramref name="ggufPath"/>.</summary>
    public static void Convert(string hfDir, string ggufPath)
    {
        string configPath = Path.Combine(hfDir, "config.json");
        if (!File.Exists(configPath))
            throw new FileNotFoundException($"{configPath}: config.json not found", configPath);
        var c = ReadConfig(configPath);
        using var ck = Checkpoint.Open(hfDir);

        var g = new GgufWriter();
        g.AddString("general.architecture", "llama");
        g.AddString("general.name", "ilgpumoe-mixtral");
        g.AddUInt32("general.file_type", 0); // all F32
        g.AddUInt32("llama.vocab_size", (uint)c.Vocab);
        g.AddUInt32("llama.context_length", (uint)c.MaxPositions);
        g.AddUInt32("llama.embedding_length", (uint)c.Hidden);
        g.AddUInt32("llama.feed_forward_length", (uint)c.Ffn);
        g.AddUInt32("llama.block_count", (uint)c.Layers);
        g.AddUInt32("llama.attention.head_count", (uint)c.Heads);
        g.AddUInt32("llama.attention.head_count_kv", (uint)c.KvHeads);
        g.AddUInt32("llama.attention.key_length", (uint)c.HeadDim);
        g.AddUInt32("llama.attention.value_length", (uint)c.HeadDim);
        g.AddUInt32("llama.rope.dimension_count", (uint)c.HeadDim);
        g.AddFloat32("llama.rope.freq_base", (float)c.RopeTheta);
        g.AddFloat32("llama.attention.layer_norm_rms_epsilon", (float)c.RmsEps);
        g.AddUInt32("llama.expert_count", (uint)c.Experts);
        g.AddUInt32("llama.expert_used_count", (uint)c.TopK);

        AddSyntheticVocab(g, c.Vocab);

        long d = c.Hidden, f = c.Ffn, e = c.Experts, dh = c.HeadDim;
        void Plain(string gguf, string hf, params long[] torchShape)
        {
            Check(ck, hf, torchShape);
            g.AddTensorF32(gguf, [.. torchShape.Reverse()], () => ck.ReadFloat32(hf));
        }

        Plain("token_embd.weight", "model.embed_tokens.weight", c.Vocab, d);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.", b = $"blk.{l}.";
            Plain(b + "attn_norm.weight", p + "input_layernorm.weight", d);
            string q = p + "self_attn.q_proj.weight", k = p + "self_attn.k_proj.weight";
            Check(ck, q, c.Heads * dh, d);
            Check(ck, k, c.KvHeads * dh, d);
            g.AddTensorF32(b + "attn_q.weight", [d, c.Heads * dh], () => PermuteRope(ck.ReadFloat32(q), c.Heads, (int)dh, (int)d));
            g.AddTensorF32(b + "attn_k.weight", [d, c.KvHeads * dh], () => PermuteRope(ck.ReadFloat32(k), c.KvHeads, (int)dh, (int)d));
            Plain(b + "attn_v.weight", p + "self_attn.v_proj.weight", c.KvHeads * dh, d);
            Plain(b + "attn_output.weight", p + "self_attn.o_proj.weight", d, c.Heads * dh);
            Plain(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", d);
            Plain(b + "ffn_gate_inp.weight", p + "block_sparse_moe.gate.weight", e, d);
            foreach (var (gguf, w, rows, cols) in new[] { ("ffn_gate_exps", "w1", f, d), ("ffn_down_exps", "w2", d, f), ("ffn_up_exps", "w3", f, d) })
            {
                var names = Enumerable.Range(0, c.Experts).Select(x => p + $"block_sparse_moe.experts.{x}.{w}.weight").ToArray();
                foreach (string n in names)
                    Check(ck, n, rows, cols);
                g.AddTensorF32(b + gguf + ".weight", [cols, rows, e], () => Stack(ck, names, rows * cols));
            }
        }

        Plain("output_norm.weight", "model.norm.weight", d);
        if (ck.Contains("lm_head.weight"))
            Plain("output.weight", "lm_head.weight", c.Vocab, d);
        else if (!c.Tied)
            throw new InvalidDataException($"{hfDir}: lm_head.weight missing and tie_word_embeddings is false");

        g.Write(ggufPath);
    }

    /// <summary>The synthetic vocabulary llama.cpp needs to load a model fed token ids: &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, the
    /// 256 byte tokens, then filler pieces, V entries in all, tokenizer model "llama".</summary>
    internal static void AddSyntheticVocab(GgufWriter g, int vocab)
    {
        var tokens = new string[vocab];
        var scores = new float[vocab];
        var types = new int[vocab];
        for (int i = 0; i < vocab; i++)
        {
            (tokens[i], types[i]) = i switch
            {
                0 => ("<unk>", 2),
                1 => ("<s>", 3),
                2 => ("</s>", 3),
                < 259 => ($"<0x{i - 3:X2}>", 6),
                _ => ($"\u2581tok{i}", 1),
            };
            scores[i] = types[i] == 1 ? -i : 0;
        }

        g.AddString("tokenizer.ggml.model", "llama");
        g.AddStringArray("tokenizer.ggml.tokens", tokens);
        g.AddFloat32Array("tokenizer.ggml.scores", scores);
        g.AddInt32Array("tokenizer.ggml.token_type", types);
        g.AddUInt32("tokenizer.ggml.unknown_token_id", 0);
        g.AddUInt32("tokenizer.ggml.bos_token_id", 1);
        g.AddUInt32("tokenizer.ggml.eos_token_id", 2);
    }

    /// <summary>Hugging Face rotate-half row order -> llama.cpp adjacent-pair row order, per head. w is [heads * Dh, cols].</summary>
    public static float[] PermuteRope(float[] w, int heads, int headDim, int cols)
    {
        var o = new float[w.Length];
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
        {
            for (int s = 0; s < 2; s++)
            {
                for (int i = 0; i < half; i++)
                {
                    int from = h * headDim + s * half + i, to = h * headDim + 2 * i + s;
                    Array.Copy(w, (long)from * cols, o, (long)to * cols, cols);
                }
            }
        }

        return o;
    }

    internal static float[] Stack(Checkpoint ck, string[] names, long each)
    {
        var o = new float[names.Length * each];
        for (int x = 0; x < names.Length; x++)
            ck.ReadFloat32(names[x]).CopyTo(o, x * each);
        return o;
    }

    internal static void Check(Checkpoint ck, string name, params long[] shape)
    {
        if (!ck.Contains(name))
            throw new InvalidDataException($"{ck.Directory}: tensor '{name}' missing");
        var got = ck.Get(name).Shape;
        if (!got.SequenceEqual(shape))
            throw new InvalidDataException($"{ck.Directory}: tensor '{name}' has shape [{string.Join(", ", got)}], config says [{string.Join(", ", shape)}]");
    }

    private sealed record Config(int Hidden, int Ffn, int Layers, int Heads, int KvHeads, int HeadDim, int Experts, int TopK,
        int Vocab, int MaxPositions, double RopeTheta, double RmsEps, bool Tied);

    private static Config ReadConfig(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        var r = doc.RootElement;
        int Int(string key) => r.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number
            ? v.GetInt32()
            : throw new InvalidDataException($"{path}: \"{key}\" missing or not a number");
        int hidden = Int("hidden_size"), heads = Int("num_attention_heads");
        int headDim = r.TryGetProperty("head_dim", out var hd) && hd.ValueKind == JsonValueKind.Number ? hd.GetInt32() : hidden / heads;
        double theta = r.TryGetProperty("rope_theta", out var t) && t.ValueKind == JsonValueKind.Number ? t.GetDouble()
            : r.TryGetProperty("rope_parameters", out var rp) && rp.TryGetProperty("rope_theta", out var t2) ? t2.GetDouble() : 1e6;
        double eps = r.TryGetProperty("rms_norm_eps", out var ep) ? ep.GetDouble() : 1e-5;
        bool tied = r.TryGetProperty("tie_word_embeddings", out var tw) && tw.ValueKind == JsonValueKind.True;
        int maxPos = r.TryGetProperty("max_position_embeddings", out var mp) ? mp.GetInt32() : 4096;
        return new Config(hidden, Int("intermediate_size"), Int("num_hidden_layers"), heads, Int("num_key_value_heads"), headDim,
            Int("num_local_experts"), Int("num_experts_per_tok"), Int("vocab_size"), maxPos, theta, eps, tied);
    }
}
