// Parameter counts from the config alone (no checkpoint needed).
//
// Active per token follows the convention behind Mixtral-8x7B's "12.9B active of 46.7B": everything except the
// E-K experts a token does not visit, with the whole embedding table and lm_head counted (46.70B / 12.88B at
// V=32000, D=4096, F=14336, L=32, H=32, Hkv=8, E=8, K=2). "Without embeddings" drops embed_tokens and an untied
// lm_head (Kaplan et al.'s non-embedding count); a tied table is dropped once.
namespace ILGpuMoE.Model;

public sealed record ParameterCounts(
    long Embedding,
    long LmHead,
    long Attention,
    long Norms,
    long Router,
    long Experts,
    long PerExpert,
    long ActiveExperts)
{
    /// <summary>Every parameter in the checkpoint (a tied lm_head is not counted twice).</summary>
    public long Total => Embedding + LmHead + Attention + Norms + Router + Experts;

    /// <summary>Parameters one token's forward pass touches, embedding table and lm_head included (Mixtral's convention).</summary>
    public long ActiveWithEmbeddings => Embedding + LmHead + Attention + Norms + Router + ActiveExperts;

    /// <summary>Same as <see cref="ActiveWithEmbeddings"/> without embed_tokens and lm_head.</summary>
    public long ActiveWithoutEmbeddings => Attention + Norms + Router + ActiveExperts;

    /// <summary>Total without embed_tokens and lm_head.</summary>
    public long TotalWithoutEmbeddings => Attention + Norms + Router + Experts;

    public static ParameterCounts Of(ModelConfig c)
    {
        long v = c.VocabSize, d = c.HiddenSize, f = c.IntermediateSize, q = c.QueryDim, kv = c.KvDim, layers = c.Layers;
        var perExpert = 3 * d * f;                           // w1 [F, D] + w3 [F, D] + w2 [D, F]
        return new ParameterCounts(
            Embedding: v * d,
            LmHead: c.TieWordEmbeddings ? 0 : v * d,
            Attention: layers * (q * d + 2 * kv * d + d * q), // q, k, v, o
            Norms: layers * 2 * d + d,                        // input + post-attention per layer, final norm
            Router: layers * c.Experts * d,
            Experts: layers * c.Experts * perExpert,
            PerExpert: perExpert,
            ActiveExperts: layers * c.TopK * perExpert);
    }
}
