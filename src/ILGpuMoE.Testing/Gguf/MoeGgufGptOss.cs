// Hugging Face gpt-oss (BF16 or MXFP4 experts) -> F32 GGUF for llama.cpp's `gpt-oss` architecture. The MXFP4
// experts are dequantized with RefMxfp4 (exact in F32), so llama.cpp runs its float path, not ggml's MXFP4 one (which
// rounds activations to Q8_0). Names as llama.cpp's converter writes them:
//   blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output (each .weight and .bias), attn_sinks, post_attention_norm,
//   ffn_gate_inp (.weight, .bias), ffn_gate_exps, ffn_up_exps ([E, F, D], gate / up de-interleaved from gate_up_proj),
//   ffn_down_exps ([E, D, F]), each with its .bias}.
//   gpt-oss.{attention.sliding_window, expert_feed_forward_length, rope.scaling.type = yarn, rope.scaling.factor,
//   rope.scaling.original_context_length}.
// llama.cpp's gpt-oss slides the even layers (Hugging Face's default layer_types) and always rounds YaRN's correction
// range to whole dims, i.e. runs rope_scaling.truncate true whatever config.json says (the real checkpoints say
// false): compare it with the oracle run with Truncate = true. Other layer_types, and a missing YaRN block, are refused.
using ILGpuMoE.IO;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Testing;

public static partial class MoeGguf
{
    // Rows first, first + 2, ... of rows of width `width` (the even or odd rows).
    private static float[] EveryOther(float[] a, long width, int first)
    {
        long rows = a.Length / width / 2;
        var o = new float[rows * width];
        for (long r = 0; r < rows; r++)
            Array.Copy(a, (2 * r + first) * width, o, r * width, width);
        return o;
    }

    private static void ConvertGptOss(string hfDir, RefModelConfig c, string ggufPath)
    {
        const string arch = "gpt-oss";
        var yarn = c.Yarn ?? throw new NotSupportedException($"{hfDir}: the gpt-oss GGUF writer needs the YaRN rope_scaling block");
        int window = c.SlidingWindow.FirstOrDefault(w => w > 0);
        for (int l = 0; l < c.Layers; l++)
        {
            if (c.SlidingWindow[l] != (l % 2 == 0 ? window : 0))
                throw new NotSupportedException($"{hfDir}: llama.cpp's gpt-oss slides exactly the even layers with one window");
        }

        using var ck = Checkpoint.Open(hfDir);
        var g = Header(arch, c, 131072, c.MoeIntermediate, c.KvHeads, c.HeadDim, c.HeadDim, c.HeadDim);
        g.AddUInt32($"{arch}.attention.sliding_window", (uint)window);
        g.AddString($"{arch}.rope.scaling.type", "yarn");
        g.AddFloat32($"{arch}.rope.scaling.factor", (float)yarn.Factor);
        g.AddUInt32($"{arch}.rope.scaling.original_context_length", (uint)yarn.OriginalMaxPositions);

        long d = c.Hidden, q = c.Heads * c.HeadDim, kv = c.KvHeads * c.HeadDim, f = c.MoeIntermediate, e = c.Experts;
        void Plain(string gguf, string hf, params long[] torchShape) => AddPlain(g, ck, gguf, hf, torchShape);
        Plain("token_embd.weight", "model.embed_tokens.weight", c.Vocab, d);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.", a = p + "self_attn.", m = p + "mlp.", x = m + "experts.", b = $"blk.{l}.";
            Plain(b + "attn_norm.weight", p + "input_layernorm.weight", d);
            foreach (var (gg, hf, rows, cols) in new[] { ("attn_q", "q_proj", q, d), ("attn_k", "k_proj", kv, d), ("attn_v", "v_proj", kv, d), ("attn_output", "o_proj", d, q) })
            {
                Plain($"{b}{gg}.weight", $"{a}{hf}.weight", rows, cols);
                Plain($"{b}{gg}.bias", $"{a}{hf}.bias", rows);
            }

            Plain(b + "attn_sinks.weight", a + "sinks", c.Heads);
            Plain(b + "post_attention_norm.weight", p + "post_attention_layernorm.weight", d);
            Plain(b + "ffn_gate_inp.weight", m + "router.weight", e, d);
            Plain(b + "ffn_gate_inp.bias", m + "router.bias", e);
            // [E, 2F, D] gate_up rows: even rows (and bias entries) gate, odd rows up.
            var gateUp = OutputMajor(x + "gate_up_proj", 2 * f, d);
            var guBias = ck.ReadFloat32(x + "gate_up_proj_bias");
            g.AddTensorF32(b + "ffn_gate_exps.weight", [d, f, e], () => EveryOther(gateUp, d, 0));
            g.AddTensorF32(b + "ffn_up_exps.weight", [d, f, e], () => EveryOther(gateUp, d, 1));
            g.AddTensorF32(b + "ffn_down_exps.weight", [f, d, e], () => OutputMajor(x + "down_proj", d, f));
            g.AddTensorF32(b + "ffn_gate_exps.bias", [f, e], () => EveryOther(guBias, 1, 0));
            g.AddTensorF32(b + "ffn_up_exps.bias", [f, e], () => EveryOther(guBias, 1, 1));
            Plain(b + "ffn_down_exps.bias", x + "down_proj_bias", e, d);
        }

        Plain("output_norm.weight", "model.norm.weight", d);

        // [E, out, in] of an expert projection: MXFP4 dequantized, or the BF16 form's [E, in, out] transposed.
        float[] OutputMajor(string name, long outDim, long inDim)
        {
            if (c.Mxfp4Experts)
                return RefMxfp4.Dequantize(ck.GetBytes(name + "_blocks"), ck.GetBytes(name + "_scales"), (int)(e * outDim), (int)(inDim / RefMxfp4.BlockSize));
            MixtralGguf.Check(ck, name, e, inDim, outDim);
            return RefOps.TransposeEach(ck.ReadFloat32(name), (int)e, (int)inDim, (int)outDim);
        }
        Plain("output.weight", c.TieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight", c.Vocab, d);
        g.Write(ggufPath);
    }
}
