// The tensors a config implies, with Hugging Face's names and [out, in] shapes (nn.Linear stores W as
// [out_features, in_features], y = x W^T). Llama's names, which every family here shares for attention and norms:
//   model.embed_tokens.weight                                  [V, D]
//   model.layers.N.input_layernorm.weight                      [D]
//   model.layers.N.self_attn.q_proj.weight (.bias)             [H*Dh, D]   ([H*Dh])
//   model.layers.N.self_attn.k_proj.weight / v_proj (.bias)    [Hkv*Dh, D] ([Hkv*Dh])
//   model.layers.N.self_attn.o_proj.weight (.bias)             [D, H*Dh]   ([D])
//   model.layers.N.self_attn.q_norm.weight / k_norm            [Dh] per head, or [H*Dh] / [Hkv*Dh] over the whole projection
//   model.layers.N.post_attention_layernorm.weight             [D]
//   model.layers.N.mlp.gate.weight                             [E, D]      (the router)
//   model.layers.N.mlp.experts.J.gate_proj / up_proj.weight    [F, D]
//   model.layers.N.mlp.experts.J.down_proj.weight              [D, F]
//   model.layers.N.mlp.shared_expert.{gate,up,down}_proj       [Fs, D] / [D, Fs]   (Qwen2-MoE)
//   model.layers.N.mlp.shared_expert_gate.weight               [1, D]
//   model.layers.N.mlp.{gate,up,down}_proj.weight              [Fd, D] / [D, Fd]   (a dense layer)
//   model.norm.weight                                          [D]
//   lm_head.weight                                             [V, D]   (absent when tie_word_embeddings)
// Mixtral names its router block_sparse_moe.gate and its experts block_sparse_moe.experts.J.w1 (gate), w3 (up), w2 (down).
// gpt-oss (ExpertStorage.StackedGateUp) adds self_attn.sinks [H] and mlp.router.bias [E], names its router mlp.router,
// and stores all experts of a layer in one tensor per projection, with biases:
//   model.layers.N.mlp.experts.gate_up_proj        [E, D, 2F]  (BF16 copies; gate = even, up = odd columns)
//   model.layers.N.mlp.experts.gate_up_proj_bias   [E, 2F]
//   model.layers.N.mlp.experts.down_proj           [E, F, D]
//   model.layers.N.mlp.experts.down_proj_bias      [E, D]
// (the MXFP4 originals hold gate_up_proj_blocks / _scales and down_proj_blocks / _scales instead: Quant/Schemes/Mxfp4.cs).
namespace ILGpuMoE.Model;

/// <summary>What a tensor is for; parameter counting, memory planning and quantization group by it.</summary>
public enum TensorRole
{
    Embedding,
    Norm,

    /// <summary>q, k, v, o projections (linear: --quant packs them).</summary>
    Attention,

    /// <summary>q, k, v, o biases (kept in their dtype).</summary>
    AttentionBias,

    /// <summary>The router, and Qwen2-MoE's shared_expert_gate.</summary>
    Router,

    /// <summary>A routed expert's projection: a token reads K of E.</summary>
    Expert,

    /// <summary>The shared expert's projections: every token reads them.</summary>
    SharedExpert,

    /// <summary>A dense layer's MLP projections.</summary>
    DenseMlp,
    LmHead,

    /// <summary>gpt-oss's expert biases (a token reads K of E rows).</summary>
    ExpertBias,

    /// <summary>
    /// MLA's kv_b_proj: the absorbed attention reads it per head as two small matrices (W_UK, W_UV), so it stays in a
    /// float dtype (--quant leaves it; an FP8 checkpoint's is widened at load).
    /// </summary>
    LatentExpansion,
}

/// <summary>A tensor the config requires: its name, shape, role, and the expert it belongs to (-1 if none).</summary>
public sealed record ExpectedTensor(string Name, long[] Shape, TensorRole Role, int Layer = -1, int Expert = -1)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>A matrix the linear kernels read (and --quant may pack).</summary>
    public bool IsLinear => Role is TensorRole.Attention or TensorRole.Expert or TensorRole.SharedExpert or TensorRole.DenseMlp;

    /// <summary>
    /// The matrices this tensor becomes on the device, as (count, rows, cols): itself, except a shared expert's or a dense
    /// MLP's projection, which the runtime cuts into ceil(W / F) F-wide experts along its hidden axis (Runtime/MoeModel.cs):
    /// gate/up [W, D] become [F, D] each, down [D, W] becomes [D, F] each (the last zero-padded).
    /// </summary>
    public (int Count, long Rows, long Cols) Packed(ModelConfig c)
    {
        // gpt-oss's stacked experts: gate_up [E, D, 2F] becomes 2E matrices [F, D], down [E, F, D] E matrices [D, F].
        if (Role == TensorRole.Expert && Shape.Length == 3)
        {
            bool gateUp = Shape[2] == 2L * c.IntermediateSize && Shape[1] == c.HiddenSize;
            return gateUp ? ((int)Shape[0] * 2, Shape[2] / 2, Shape[1]) : ((int)Shape[0], Shape[2], Shape[1]);
        }

        if (Role is not (TensorRole.SharedExpert or TensorRole.DenseMlp))
            return (1, Shape[0], Shape[1]);
        long f = c.IntermediateSize;
        bool down = Shape[0] == c.HiddenSize && Name.Contains("down_proj", StringComparison.Ordinal);
        long width = down ? Shape[1] : Shape[0];
        int count = (int)((width + f - 1) / f);
        return down ? (count, Shape[0], f) : (count, f, Shape[1]);
    }
}

/// <summary>Hugging Face tensor names; a family overrides what it names differently.</summary>
public class TensorNames
{
    /// <summary>Llama's names (Qwen2/3-MoE, OLMoE).</summary>
    public static readonly TensorNames Llama = new();

    public string Embedding => "model.embed_tokens.weight";
    public string FinalNorm => "model.norm.weight";
    public string LmHead => "lm_head.weight";

    public string Layer(int layer) => $"model.layers.{layer}";
    public string InputNorm(int layer) => $"{Layer(layer)}.input_layernorm.weight";
    public string PostAttentionNorm(int layer) => $"{Layer(layer)}.post_attention_layernorm.weight";
    public string QProj(int layer) => $"{Layer(layer)}.self_attn.q_proj.weight";
    public string KProj(int layer) => $"{Layer(layer)}.self_attn.k_proj.weight";
    public string VProj(int layer) => $"{Layer(layer)}.self_attn.v_proj.weight";
    public string OProj(int layer) => $"{Layer(layer)}.self_attn.o_proj.weight";

    /// <summary>The bias of a projection: its weight's name with .bias.</summary>
    public static string Bias(string weight) =>
        weight.EndsWith(".weight", StringComparison.Ordinal) ? weight[..^".weight".Length] + ".bias" : throw new ArgumentException($"{weight} is not a weight name");

    public string Sinks(int layer) => $"{Layer(layer)}.self_attn.sinks";

    /// <summary>gpt-oss: all experts' gate_up_proj (Gate and Up) or down_proj (Down) of a layer in one tensor.</summary>
    public string StackedExperts(int layer, MlpProjection p) => $"{Layer(layer)}.mlp.experts.{(p == MlpProjection.Down ? "down_proj" : "gate_up_proj")}";

    /// <summary>gpt-oss: the bias of <see cref="StackedExperts"/>.</summary>
    public string StackedExpertsBias(int layer, MlpProjection p) => StackedExperts(layer, p) + "_bias";

    public string QNorm(int layer) => $"{Layer(layer)}.self_attn.q_norm.weight";
    public string KNorm(int layer) => $"{Layer(layer)}.self_attn.k_norm.weight";

    /// <summary>The router [E, D].</summary>
    public virtual string Router(int layer) => $"{Layer(layer)}.mlp.gate.weight";

    /// <summary>Routed expert <paramref name="expert"/>'s projection.</summary>
    public virtual string Expert(int layer, int expert, MlpProjection p) => $"{Layer(layer)}.mlp.experts.{expert}.{Proj(p)}.weight";

    /// <summary>All experts' projection p of a layer, for messages ("...experts.*.gate_proj.weight").</summary>
    public virtual string Experts(int layer, MlpProjection p) => $"{Layer(layer)}.mlp.experts.*.{Proj(p)}.weight";

    public virtual string SharedExpert(int layer, MlpProjection p) => $"{Layer(layer)}.mlp.shared_expert.{Proj(p)}.weight";

    /// <summary>DeepSeek-V3's selection bias [E].</summary>
    public string ScoreCorrectionBias(int layer) => $"{Layer(layer)}.mlp.gate.e_score_correction_bias";

    /// <summary>An MLA projection or norm of layer l: q_a_proj, q_a_layernorm, q_b_proj, q_proj, kv_a_proj_with_mqa,
    /// kv_a_layernorm, kv_b_proj.</summary>
    public string Mla(int layer, string part) => $"{Layer(layer)}.self_attn.{part}.weight";
    public string SharedExpertGate(int layer) => $"{Layer(layer)}.mlp.shared_expert_gate.weight";
    public string DenseMlp(int layer, MlpProjection p) => $"{Layer(layer)}.mlp.{Proj(p)}.weight";

    protected static string Proj(MlpProjection p) => p switch
    {
        MlpProjection.Gate => "gate_proj",
        MlpProjection.Up => "up_proj",
        MlpProjection.Down => "down_proj",
        _ => throw new ArgumentOutOfRangeException(nameof(p), p, "an MLP has gate, up and down projections"),
    };
}

public static class ModelTensors
{
    /// <summary>Every tensor the config implies, in checkpoint order (embedding, layers, norm, lm_head).</summary>
    public static IEnumerable<ExpectedTensor> Expected(ModelConfig c)
    {
        var n = c.Family.Names;
        var b = c.Block;
        long v = c.VocabSize, d = c.HiddenSize, f = c.IntermediateSize, q = c.QueryDim, kv = c.KvDim, e = c.Experts, a = c.AttentionDim;
        yield return new(n.Embedding, [v, d], TensorRole.Embedding);
        for (var l = 0; l < c.Layers; l++)
        {
            yield return new(n.InputNorm(l), [d], TensorRole.Norm, l);
            if (b.Mla is { } m)
            {
                if (m.QLoraRank > 0)
                {
                    yield return new(n.Mla(l, "q_a_proj"), [m.QLoraRank, d], TensorRole.Attention, l);
                    yield return new(n.Mla(l, "q_a_layernorm"), [m.QLoraRank], TensorRole.Norm, l);
                    yield return new(n.Mla(l, "q_b_proj"), [q, m.QLoraRank], TensorRole.Attention, l);
                }
                else
                {
                    yield return new(n.QProj(l), [q, d], TensorRole.Attention, l);
                }

                yield return new(n.Mla(l, "kv_a_proj_with_mqa"), [m.CacheWidth, d], TensorRole.Attention, l);
                yield return new(n.Mla(l, "kv_a_layernorm"), [m.KvLoraRank], TensorRole.Norm, l);
                yield return new(n.Mla(l, "kv_b_proj"), [c.Heads * (m.QkNopeHeadDim + m.VHeadDim), m.KvLoraRank], TensorRole.LatentExpansion, l);
            }
            else
            {
                foreach (var (name, rows) in new[] { (n.QProj(l), q), (n.KProj(l), kv), (n.VProj(l), kv) })
                {
                    yield return new(name, [rows, d], TensorRole.Attention, l);
                    if (b.QkvBias)
                        yield return new(TensorNames.Bias(name), [rows], TensorRole.AttentionBias, l);
                }
            }

            yield return new(n.OProj(l), [d, a], TensorRole.Attention, l);
            if (b.OutputBias)
                yield return new(TensorNames.Bias(n.OProj(l)), [d], TensorRole.AttentionBias, l);
            if (b.AttentionSinks)
                yield return new(n.Sinks(l), [c.Heads], TensorRole.AttentionBias, l);
            if (b.QkNorm != QkNormKind.None)
            {
                bool perHead = b.QkNorm == QkNormKind.PerHead;
                yield return new(n.QNorm(l), [perHead ? c.HeadDim : q], TensorRole.Norm, l);
                yield return new(n.KNorm(l), [perHead ? c.HeadDim : kv], TensorRole.Norm, l);
            }

            yield return new(n.PostAttentionNorm(l), [d], TensorRole.Norm, l);
            if (!c.IsMoeLayer(l))
            {
                long fd = b.DenseIntermediateSize;
                yield return new(n.DenseMlp(l, MlpProjection.Gate), [fd, d], TensorRole.DenseMlp, l);
                yield return new(n.DenseMlp(l, MlpProjection.Up), [fd, d], TensorRole.DenseMlp, l);
                yield return new(n.DenseMlp(l, MlpProjection.Down), [d, fd], TensorRole.DenseMlp, l);
                continue;
            }

            yield return new(n.Router(l), [e, d], TensorRole.Router, l);
            if (b.RouterBias)
                yield return new(TensorNames.Bias(n.Router(l)), [e], TensorRole.Router, l);
            if (b.ScoreCorrectionBias)
                yield return new(n.ScoreCorrectionBias(l), [e], TensorRole.Router, l);
            if (c.Family.ExpertStorage == ExpertStorage.StackedGateUp)
            {
                yield return new(n.StackedExperts(l, MlpProjection.Gate), [e, d, 2 * f], TensorRole.Expert, l);
                if (b.ExpertBias)
                    yield return new(n.StackedExpertsBias(l, MlpProjection.Gate), [e, 2 * f], TensorRole.ExpertBias, l);
                yield return new(n.StackedExperts(l, MlpProjection.Down), [e, f, d], TensorRole.Expert, l);
                if (b.ExpertBias)
                    yield return new(n.StackedExpertsBias(l, MlpProjection.Down), [e, d], TensorRole.ExpertBias, l);
                continue;
            }

            for (var j = 0; j < c.Experts; j++)
            {
                // Mixtral's order (w1, w2, w3): checkpoints written by our tools keep it.
                yield return new(n.Expert(l, j, MlpProjection.Gate), [f, d], TensorRole.Expert, l, j);
                yield return new(n.Expert(l, j, MlpProjection.Down), [d, f], TensorRole.Expert, l, j);
                yield return new(n.Expert(l, j, MlpProjection.Up), [f, d], TensorRole.Expert, l, j);
            }

            if (b.SharedExpertSize > 0)
            {
                long fs = b.SharedExpertSize;
                yield return new(n.SharedExpert(l, MlpProjection.Gate), [fs, d], TensorRole.SharedExpert, l);
                yield return new(n.SharedExpert(l, MlpProjection.Up), [fs, d], TensorRole.SharedExpert, l);
                yield return new(n.SharedExpert(l, MlpProjection.Down), [d, fs], TensorRole.SharedExpert, l);
                if (!b.SharedExpertUngated)
                    yield return new(n.SharedExpertGate(l), [1, d], TensorRole.Router, l);
            }
        }

        yield return new(n.FinalNorm, [d], TensorRole.Norm);
        if (!c.TieWordEmbeddings)
            yield return new(n.LmHead, [v, d], TensorRole.LmHead);
    }
}
