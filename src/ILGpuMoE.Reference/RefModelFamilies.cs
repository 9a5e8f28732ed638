// The gpt-oss and DeepSeek-V3 layers of the oracle (RefModel), transcribing Hugging Face transformers'
// modeling_gpt_oss.py and modeling_deepseek_v3.py (newest versions); RoPE, YaRN and RefOps.GeneralAttention in RefRope.cs.
//
// gpt-oss layer l (tensors model.layers.l.*):
//   h = rmsnorm(x, input_layernorm)
//   q, k, v = self_attn.{q,k,v}_proj h + bias; rotate-half RoPE over Dh with YaRN (cos, sin times attention_factor)
//   a = softmax over [q.k_j * Dh^-0.5 for visible j] ++ [self_attn.sinks[h]], the sink's probability dropped
//       (layer_types: sliding_attention = window sliding_window, full_attention = causal)
//   x += self_attn.o_proj a + bias
//   h = rmsnorm(x, post_attention_layernorm)
//   r = mlp.router h + bias [E]; the top-k logits (ties to the lower id); weights = softmax over those k only
//   per chosen e: gu = h gate_up_proj[e] + gate_up_proj_bias[e] (2F values, gate = even, up = odd columns)
//     gate = min(gate, limit); up = clamp(up, -limit, limit); u = (up + 1) * gate * sigmoid(alpha * gate)
//     y_e = u down_proj[e] + down_proj_bias[e]
//   x += sum_e weight_e * y_e
// Experts: BF16 gate_up_proj [E, D, 2F], down_proj [E, F, D] (input-major, as transformers' parameters), or MXFP4
// gate_up_proj_blocks / _scales [E, 2F, D/32, 16] / [E, 2F, D/32] and down_proj_blocks / _scales [E, D, F/32, 16] /
// [E, D, F/32] (output-major, RefMxfp4); both are kept here as [out, in] rows: Gates[e] / Ups[e] [F, D] (the even /
// odd rows of gate_up), Downs[e] [D, F]; biases in Extra.
//
// DeepSeek-V3 layer l:
//   h = rmsnorm(x, input_layernorm)
//   q = q_b_proj rmsnorm(q_a_proj h, q_a_layernorm) (q_proj h when q_lora_rank is null), per head [nope | rope]
//   [c | k_rope] = kv_a_proj_with_mqa h (kv_lora_rank | qk_rope_head_dim; k_rope one vector shared by every head)
//   [k_nope | v] per head = kv_b_proj rmsnorm(c, kv_a_layernorm)
//   RoPE (interleaved pairs when rope_interleave, YaRN when rope_scaling) on q's rope part and on k_rope
//   a = causal softmax(q.[k_nope | k_rope] * qk_head_dim^-0.5 * mscale^2) v; x += o_proj a
//   (the low-rank norms use rms_norm_eps, as the newest transformers; DeepSeek's own code used 1e-6)
//   h = rmsnorm(x, post_attention_layernorm)
//   layers l < first_k_dense_replace: x += the dense SwiGLU MLP mlp.{gate,up,down}_proj of intermediate_size
//   (moe_layer_freq is ignored, as Hugging Face's decoder layer does; num_nextn_predict_layers adds no layer)
//   else: x += routed (RouterKind.DeepSeekV3 over mlp.gate h, mlp.gate.e_score_correction_bias) + shared experts
//     mlp.shared_experts.{gate,up,down}_proj (SwiGLU of moe_intermediate_size x n_shared_experts), unweighted.
//   Hugging Face fills the dropped groups' scores with 0 before the final top-k, where RefMoe.Route excludes them
//   (llama.cpp: -inf); the two differ only when fewer than K biased scores in the kept groups are positive.
// The cache keeps the expanded per-head keys [S, H, qk_head_dim] and values [S, H, v_head_dim]: the oracle states
// the arithmetic; the latent cache and absorbed weights are the runtime's business.
namespace ILGpuMoE.Reference;

/// <summary>Per-layer tensors of gpt-oss and DeepSeek-V3 beyond RefModel.Layer's fields.</summary>
internal sealed record LayerExtra
{
    /// <summary>gpt-oss o_proj bias [D].</summary>
    public float[]? Bo { get; init; }

    /// <summary>gpt-oss self_attn.sinks [H].</summary>
    public float[]? Sinks { get; init; }

    /// <summary>gpt-oss mlp.router.bias [E].</summary>
    public float[]? RouterBias { get; init; }

    /// <summary>gpt-oss expert biases: gate and up [E][F] (de-interleaved), down [E][D].</summary>
    public float[][] GateBias { get; init; } = [];
    public float[][] UpBias { get; init; } = [];
    public float[][] DownBias { get; init; } = [];

    /// <summary>DeepSeek-V3 mlp.gate.e_score_correction_bias [E].</summary>
    public float[]? ScoreBias { get; init; }

    /// <summary>DeepSeek-V3 q_a_proj [q_lora_rank, D] and q_a_layernorm (null without q LoRA), kv_a_layernorm.</summary>
    public float[]? QA { get; init; }
    public float[]? QANorm { get; init; }
    public float[]? KvANorm { get; init; }
}

public sealed partial class RefModel
{
    internal delegate float[] Reader(string name, long length, string shape);

    private static Layer ReadGptOssLayer(RefModelConfig c, int l, Reader read, Func<string, byte[]?>? raw)
    {
        long d = c.Hidden, q = c.Heads * c.HeadDim, kv = c.KvHeads * c.HeadDim, f = c.MoeIntermediate;
        int e = c.Experts;
        string p = $"model.layers.{l}.", a = p + "self_attn.", m = p + "mlp.", x = m + "experts.";
        float[][] gateUp, down;
        if (c.Mxfp4Experts)
        {
            if (raw is null)
                throw new ArgumentException($"{c.Family} weights: MXFP4 experts need the raw tensor reader.", nameof(raw));
            gateUp = Mxfp4(x + "gate_up_proj", 2 * f, d);
            down = Mxfp4(x + "down_proj", d, f);
        }
        else
        {
            gateUp = InputMajor(x + "gate_up_proj", d, 2 * f);
            down = InputMajor(x + "down_proj", f, d);
        }

        var guBias = Split(read(x + "gate_up_proj_bias", e * 2 * f, "[E, 2F]"), 2 * f);
        var extra = new LayerExtra
        {
            Bo = read(a + "o_proj.bias", d, "[D]"),
            Sinks = read(a + "sinks", c.Heads, "[H]"),
            RouterBias = read(m + "router.bias", e, "[E]"),
            GateBias = guBias.Select(b => Rows(b, 1, 0, 2, f)).ToArray(),
            UpBias = guBias.Select(b => Rows(b, 1, 1, 2, f)).ToArray(),
            DownBias = Split(read(x + "down_proj_bias", e * d, "[E, D]"), d),
        };
        return new Layer(
            read(p + "input_layernorm.weight", d, "[D]"),
            read(a + "q_proj.weight", q * d, "[H*Dh, D]"),
            read(a + "k_proj.weight", kv * d, "[Hkv*Dh, D]"),
            read(a + "v_proj.weight", kv * d, "[Hkv*Dh, D]"),
            read(a + "o_proj.weight", d * q, "[D, H*Dh]"),
            read(a + "q_proj.bias", q, "[H*Dh]"), read(a + "k_proj.bias", kv, "[Hkv*Dh]"), read(a + "v_proj.bias", kv, "[Hkv*Dh]"),
            null, null,
            read(p + "post_attention_layernorm.weight", d, "[D]"),
            read(m + "router.weight", e * d, "[E, D]"),
            gateUp.Select(w => Rows(w, d, 0, 2, f)).ToArray(),
            gateUp.Select(w => Rows(w, d, 1, 2, f)).ToArray(),
            down, null, [], extra);

        // [E, out, in] per expert from the blocks [E, out, in/32, 16] and scales [E, out, in/32].
        float[][] Mxfp4(string name, long outDim, long inDim)
        {
            int groups = (int)(inDim / RefMxfp4.BlockSize), rows = (int)(e * outDim);
            var blocks = raw(name + "_blocks") ?? throw new ArgumentException($"{c.Family} weights: tensor {name}_blocks is missing.", nameof(raw));
            var scales = raw(name + "_scales") ?? throw new ArgumentException($"{c.Family} weights: tensor {name}_scales is missing.", nameof(raw));
            if (blocks.Length != (long)rows * groups * 16 || scales.Length != (long)rows * groups)
                throw new ArgumentException($"{c.Family} weights: {name}_blocks / _scales have {blocks.Length} / {scales.Length} bytes, expected [E, {outDim}, {groups}, 16] / [E, {outDim}, {groups}].", nameof(raw));
            return Split(RefMxfp4.Dequantize(blocks, scales, rows, groups), outDim * inDim);
        }

        // transformers' parameter [E, in, out] turned into [out, in] per expert.
        float[][] InputMajor(string name, long inDim, long outDim) =>
            Split(RefOps.TransposeEach(read(name, e * inDim * outDim, $"[E, {inDim}, {outDim}]"), e, (int)inDim, (int)outDim), inDim * outDim);
    }

    private static Layer ReadDeepSeekLayer(RefModelConfig c, int l, Reader read)
    {
        var mla = c.Mla!;
        long d = c.Hidden, h = c.Heads;
        string p = $"model.layers.{l}.", a = p + "self_attn.", m = p + "mlp.";
        bool lora = mla.QLoraRank > 0;
        float[]? gate = null;
        float[][] gates, ups, downs, shared = [];
        float[]? scoreBias = null;
        float[][] Mlp(string prefix, long hidden) =>
            [read(prefix + "gate_proj.weight", hidden * d, "[F, D]"), read(prefix + "up_proj.weight", hidden * d, "[F, D]"),
             read(prefix + "down_proj.weight", d * hidden, "[D, F]")];
        if (c.MoeLayers[l])
        {
            gate = read(m + "gate.weight", c.Experts * d, "[E, D]");
            scoreBias = read(m + "gate.e_score_correction_bias", c.Experts, "[E]");
            var experts = Enumerable.Range(0, c.Experts).Select(e => Mlp($"{m}experts.{e}.", c.MoeIntermediate)).ToArray();
            (gates, ups, downs) = (experts.Select(w => w[0]).ToArray(), experts.Select(w => w[1]).ToArray(), experts.Select(w => w[2]).ToArray());
            if (c.SharedExpertIntermediate > 0)
                shared = Mlp(m + "shared_experts.", c.SharedExpertIntermediate);
        }
        else
        {
            var dense = Mlp(m, c.DenseIntermediate);
            (gates, ups, downs) = ([dense[0]], [dense[1]], [dense[2]]);
        }

        var extra = new LayerExtra
        {
            ScoreBias = scoreBias,
            QA = lora ? read(a + "q_a_proj.weight", mla.QLoraRank * d, "[q_lora_rank, D]") : null,
            QANorm = lora ? read(a + "q_a_layernorm.weight", mla.QLoraRank, "[q_lora_rank]") : null,
            KvANorm = read(a + "kv_a_layernorm.weight", mla.KvLoraRank, "[kv_lora_rank]"),
        };
        // Wq = q_b_proj (or q_proj), Wk = kv_a_proj_with_mqa, Wv = kv_b_proj, Wo = o_proj.
        return new Layer(
            read(p + "input_layernorm.weight", d, "[D]"),
            lora ? read(a + "q_b_proj.weight", h * mla.QkHeadDim * mla.QLoraRank, "[H*qk_head_dim, q_lora_rank]")
                 : read(a + "q_proj.weight", h * mla.QkHeadDim * d, "[H*qk_head_dim, D]"),
            read(a + "kv_a_proj_with_mqa.weight", (mla.KvLoraRank + mla.QkRopeHeadDim) * d, "[kv_lora_rank + qk_rope_head_dim, D]"),
            read(a + "kv_b_proj.weight", h * (mla.QkNopeHeadDim + mla.VHeadDim) * mla.KvLoraRank, "[H*(qk_nope_head_dim + v_head_dim), kv_lora_rank]"),
            read(a + "o_proj.weight", d * h * mla.VHeadDim, "[D, H*v_head_dim]"),
            null, null, null, null, null,
            read(p + "post_attention_layernorm.weight", d, "[D]"),
            gate, gates, ups, downs, null, shared, extra);
    }

    private static float[][] Split(float[] a, long size) =>
        Enumerable.Range(0, (int)(a.Length / size)).Select(i => a.AsSpan((int)(i * size), (int)size).ToArray()).ToArray();

    // Rows first, first + step, ... (count of them) of a [.., width] matrix.
    private static float[] Rows(float[] a, long width, int first, int step, long count)
    {
        var o = new float[count * width];
        for (long r = 0; r < count; r++)
            a.AsSpan((int)((first + r * step) * width), (int)width).CopyTo(o.AsSpan((int)(r * width)));
        return o;
    }
}

public sealed partial class RefModelSession
{
    private float[] GptOssLayer(int l, float[] x, int[] positions, RefRouting?[] routing)
    {
        var c = _model.Config;
        var w = _model.Layers[l];
        var xw = w.Extra!;
        int t = positions.Length, d = c.Hidden, dh = c.HeadDim, qDim = c.Heads * dh, kvDim = c.KvHeads * dh;
        var h = RefOps.RmsNorm(x, w.InputNorm, t, d, c.RmsEps);
        var q = Project(h, w.Wq, w.Bq, t, qDim, d);
        var k = Project(h, w.Wk, w.Bk, t, kvDim, d);
        var v = Project(h, w.Wv, w.Bv, t, kvDim, d);
        var inv = RefRope.InvFreq(dh, c.RopeTheta, c.Yarn);
        double cs = c.Yarn?.CosSinFactor ?? 1.0;
        RefRope.Apply(q, positions, t, c.Heads, dh, 0, inv, cs, c.RopeInterleave);
        RefRope.Apply(k, positions, t, c.KvHeads, dh, 0, inv, cs, c.RopeInterleave);
        _k[l].AddRange(k);
        _v[l].AddRange(v);
        var a = RefOps.GeneralAttention(q, CollectionsMarshalSpan(_k[l]), CollectionsMarshalSpan(_v[l]), positions, t, Position + t,
            c.Heads, c.KvHeads, dh, dh, 1.0 / Math.Sqrt(dh), c.SlidingWindow[l], c.AttentionSinks ? xw.Sinks : default);
        x = RefOps.Add(x, Project(a, w.Wo, xw.Bo, t, d, qDim));

        h = RefOps.RmsNorm(x, w.PostNorm, t, d, c.RmsEps);
        var r = GptOssRoute(Project(h, w.Gate!, xw.RouterBias, t, c.Experts, d), t, c.Experts, c.TopK);
        routing[l] = r;
        return RefOps.Add(x, GptOssExperts(h, r, w, t));
    }

    // Top-k of the biased router logits, then a softmax over those k only.
    private static RefRouting GptOssRoute(float[] logits, int tokens, int experts, int k)
    {
        var ids = new int[tokens * k];
        var weights = new float[tokens * k];
        var taken = new bool[experts];
        for (int t = 0; t < tokens; t++)
        {
            var row = logits.AsSpan(t * experts, experts);
            Array.Clear(taken);
            for (int s = 0; s < k; s++)
            {
                int best = -1;
                for (int e = 0; e < experts; e++)
                {
                    if (!taken[e] && (best < 0 || row[e] > row[best]))
                        best = e;
                }

                taken[best] = true;
                ids[t * k + s] = best;
            }

            double max = row[ids[t * k]], sum = 0;
            for (int s = 0; s < k; s++)
                sum += Math.Exp(row[ids[t * k + s]] - max);
            for (int s = 0; s < k; s++)
                weights[t * k + s] = (float)(Math.Exp(row[ids[t * k + s]] - max) / sum);
        }

        return new RefRouting(ids, weights, tokens, k, 0);
    }

    private float[] GptOssExperts(float[] x, RefRouting r, RefModel.Layer w, int tokens)
    {
        var c = _model.Config;
        var xw = w.Extra!;
        int d = c.Hidden, f = c.MoeIntermediate, k = r.TopK;
        double limit = c.SwigluLimit, alpha = c.SwigluAlpha;
        var output = new float[tokens * d];
        var u = new double[f];
        var acc = new double[d];
        for (int t = 0; t < tokens; t++)
        {
            var xt = x.AsSpan(t * d, d);
            Array.Clear(acc);
            for (int s = 0; s < k; s++)
            {
                int e = r.ExpertIds[t * k + s];
                for (int i = 0; i < f; i++)
                {
                    double g = RefOps.Dot(xt, w.Gates[e].AsSpan(i * d, d)) + xw.GateBias[e][i];
                    double up = RefOps.Dot(xt, w.Ups[e].AsSpan(i * d, d)) + xw.UpBias[e][i];
                    g = Math.Min(g, limit);
                    up = Math.Clamp(up, -limit, limit);
                    u[i] = (up + 1) * g / (1 + Math.Exp(-alpha * g));
                }

                for (int o = 0; o < d; o++)
                {
                    var row = w.Downs[e].AsSpan(o * f, f);
                    double y = xw.DownBias[e][o];
                    for (int i = 0; i < f; i++)
                        y += row[i] * u[i];
                    acc[o] += r.Weights[t * k + s] * y;
                }
            }

            for (int o = 0; o < d; o++)
                output[t * d + o] = (float)acc[o];
        }

        return output;
    }

    private float[] DeepSeekLayer(int l, float[] x, int[] positions, RefRouting?[] routing)
    {
        var c = _model.Config;
        var mla = c.Mla!;
        var w = _model.Layers[l];
        var xw = w.Extra!;
        int t = positions.Length, d = c.Hidden, heads = c.Heads, qk = mla.QkHeadDim, nope = mla.QkNopeHeadDim;
        int rope = mla.QkRopeHeadDim, vd = mla.VHeadDim, kvr = mla.KvLoraRank;
        var h = RefOps.RmsNorm(x, w.InputNorm, t, d, c.RmsEps);
        float[] q;
        if (xw.QA is { } qa)
        {
            var lat = RefOps.RmsNorm(RefOps.MatMulT(h, qa, t, mla.QLoraRank, d), xw.QANorm!, t, mla.QLoraRank, c.RmsEps);
            q = RefOps.MatMulT(lat, w.Wq, t, heads * qk, mla.QLoraRank);
        }
        else
        {
            q = RefOps.MatMulT(h, w.Wq, t, heads * qk, d);
        }

        var ckv = RefOps.MatMulT(h, w.Wk, t, kvr + rope, d);
        var latent = new float[t * kvr];
        var kRope = new float[t * rope];
        for (int i = 0; i < t; i++)
        {
            ckv.AsSpan(i * (kvr + rope), kvr).CopyTo(latent.AsSpan(i * kvr));
            ckv.AsSpan(i * (kvr + rope) + kvr, rope).CopyTo(kRope.AsSpan(i * rope));
        }

        var kv = RefOps.MatMulT(RefOps.RmsNorm(latent, xw.KvANorm!, t, kvr, c.RmsEps), w.Wv, t, heads * (nope + vd), kvr);
        var inv = RefRope.InvFreq(rope, c.RopeTheta, c.Yarn);
        double cs = c.Yarn?.CosSinFactor ?? 1.0;
        RefRope.Apply(q, positions, t, heads, qk, nope, inv, cs, c.RopeInterleave);
        RefRope.Apply(kRope, positions, t, 1, rope, 0, inv, cs, c.RopeInterleave);
        var k = new float[t * heads * qk];
        var v = new float[t * heads * vd];
        for (int i = 0; i < t; i++)
        {
            for (int hh = 0; hh < heads; hh++)
            {
                var src = kv.AsSpan((i * heads + hh) * (nope + vd), nope + vd);
                src[..nope].CopyTo(k.AsSpan((i * heads + hh) * qk));
                kRope.AsSpan(i * rope, rope).CopyTo(k.AsSpan((i * heads + hh) * qk + nope));
                src[nope..].CopyTo(v.AsSpan((i * heads + hh) * vd));
            }
        }

        _k[l].AddRange(k);
        _v[l].AddRange(v);
        double scale = 1.0 / Math.Sqrt(qk) * (c.Yarn?.SoftmaxScale ?? 1.0);
        var a = RefOps.GeneralAttention(q, CollectionsMarshalSpan(_k[l]), CollectionsMarshalSpan(_v[l]), positions, t, Position + t,
            heads, heads, qk, vd, scale, c.SlidingWindow[l], default);
        x = RefOps.Add(x, RefOps.MatMulT(a, w.Wo, t, d, heads * vd));

        h = RefOps.RmsNorm(x, w.PostNorm, t, d, c.RmsEps);
        float[] y;
        if (c.MoeLayers[l])
        {
            var spec = new RefRouterSpec(RouterKind.DeepSeekV3, c.Experts, c.TopK, Groups: c.Groups, TopKGroups: c.TopKGroups,
                NormTopK: c.NormTopK, ScalingFactor: c.RoutedScaling);
            var r = RefMoe.Route(spec, RefOps.MatMulT(h, w.Gate!, t, c.Experts, d), t, default, xw.ScoreBias);
            routing[l] = r;
            y = RefMoe.MoeBlock(h, r, w.Gates, w.Ups, w.Downs, t, d, c.MoeIntermediate);
            if (w.SharedGateUpDown is [var sg, var su, var sd])
                y = RefOps.Add(y, RefModel.DenseMlp(h, sg, su, sd, t, d, c.SharedExpertIntermediate));
        }
        else
        {
            y = RefModel.DenseMlp(h, w.Gates[0], w.Ups[0], w.Downs[0], t, d, c.DenseIntermediate);
        }

        return RefOps.Add(x, y);
    }

    private static ReadOnlySpan<float> CollectionsMarshalSpan(List<float> list) => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(list);
}
