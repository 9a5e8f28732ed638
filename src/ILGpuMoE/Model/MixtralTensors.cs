// The tensors a Mixtral config implies, with Hugging Face's names and [out, in] shapes (nn.Linear stores W as
// [out_features, in_features], y = x W^T):
//   model.embed_tokens.weight                                  [V, D]
//   model.layers.N.input_layernorm.weight                      [D]
//   model.layers.N.self_attn.q_proj.weight                     [H*Dh, D]
//   model.layers.N.self_attn.k_proj.weight / v_proj.weight     [Hkv*Dh, D]
//   model.layers.N.self_attn.o_proj.weight                     [D, H*Dh]
//   model.layers.N.post_attention_layernorm.weight             [D]
//   model.layers.N.block_sparse_moe.gate.weight                [E, D]
//   model.layers.N.block_sparse_moe.experts.J.w1.weight / w3   [F, D]
//   model.layers.N.block_sparse_moe.experts.J.w2.weight        [D, F]
//   model.norm.weight                                          [D]
//   lm_head.weight                                             [V, D]   (absent when tie_word_embeddings)
namespace ILGpuMoE.Model;

/// <summary>What a tensor is for; parameter counting groups by it.</summary>
public enum TensorRole
{
    Embedding,
    Norm,
    Attention,
    Router,
    Expert,
    LmHead,
}

/// <summary>A tensor the config requires: its name, shape, role, and the expert it belongs to (-1 if none).</summary>
public sealed record ExpectedTensor(string Name, long[] Shape, TensorRole Role, int Layer = -1, int Expert = -1)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

public static class MixtralTensors
{
    public const string Embedding = "model.embed_tokens.weight";
    public const string FinalNorm = "model.norm.weight";
    public const string LmHead = "lm_head.weight";

    public static string Layer(int layer) => $"model.layers.{layer}";
    public static string InputNorm(int layer) => $"{Layer(layer)}.input_layernorm.weight";
    public static string PostAttentionNorm(int layer) => $"{Layer(layer)}.post_attention_layernorm.weight";
    public static string QProj(int layer) => $"{Layer(layer)}.self_attn.q_proj.weight";
    public static string KProj(int layer) => $"{Layer(layer)}.self_attn.k_proj.weight";
    public static string VProj(int layer) => $"{Layer(layer)}.self_attn.v_proj.weight";
    public static string OProj(int layer) => $"{Layer(layer)}.self_attn.o_proj.weight";
    public static string Gate(int layer) => $"{Layer(layer)}.block_sparse_moe.gate.weight";

    /// <summary>Expert weight w1 (gate, [F, D]), w2 (down, [D, F]) or w3 (up, [F, D]).</summary>
    public static string ExpertWeight(int layer, int expert, int w) =>
        w is 1 or 2 or 3 ? $"{Layer(layer)}.block_sparse_moe.experts.{expert}.w{w}.weight"
                         : throw new ArgumentOutOfRangeException(nameof(w), w, "expert weights are w1, w2 and w3");

    /// <summary>Every tensor the config implies, in checkpoint order (embedding, layers, norm, lm_head).</summary>
    public static IEnumerable<ExpectedTensor> Expected(ModelConfig c)
    {
        long v = c.VocabSize, d = c.HiddenSize, f = c.IntermediateSize, q = c.QueryDim, kv = c.KvDim, e = c.Experts;
        yield return new(Embedding, [v, d], TensorRole.Embedding);
        for (var l = 0; l < c.Layers; l++)
        {
            yield return new(InputNorm(l), [d], TensorRole.Norm, l);
            yield return new(QProj(l), [q, d], TensorRole.Attention, l);
            yield return new(KProj(l), [kv, d], TensorRole.Attention, l);
            yield return new(VProj(l), [kv, d], TensorRole.Attention, l);
            yield return new(OProj(l), [d, q], TensorRole.Attention, l);
            yield return new(PostAttentionNorm(l), [d], TensorRole.Norm, l);
            yield return new(Gate(l), [e, d], TensorRole.Router, l);
            for (var j = 0; j < c.Experts; j++)
            {
                yield return new(ExpertWeight(l, j, 1), [f, d], TensorRole.Expert, l, j);
                yield return new(ExpertWeight(l, j, 2), [d, f], TensorRole.Expert, l, j);
                yield return new(ExpertWeight(l, j, 3), [f, d], TensorRole.Expert, l, j);
            }
        }

        yield return new(FinalNorm, [d], TensorRole.Norm);
        if (!c.TieWordEmbeddings)
            yield return new(LmHead, [v, d], TensorRole.LmHead);
    }
}
