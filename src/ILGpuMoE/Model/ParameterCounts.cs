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
    long ActiveExperts,
    long Dense = 0)
{
    /// <summary>Every parameter in the checkpoint (a tied lm_head is not counted twice).</summary>
    public long Total => Embedding + LmHead + Attention + Norms + Router + Experts + Dense;

    /// <summary>Parameters one token's forward pass touches, embedding table and lm_head included (Mixtral's convention).</summary>
    public long ActiveWithEmbeddings => Embedding + LmHead + ActiveWithoutEmbeddings;

    /// <summary>Same as <see cref="ActiveWithEmbeddings"/> without embed_tokens and lm_head.</summary>
    public long ActiveWithoutEmbeddings => Attention + Norms + Router + ActiveExperts + Dense;

    /// <summary>Total without embed_tokens and lm_head.</summary>
    public long TotalWithoutEmbeddings => Attention + Norms + Router + Experts + Dense;

    /// <summary>Sums the tensors the config implies by role (ModelTensors.Expected): attention counts its biases, the
    /// router Qwen2-MoE's shared_expert_gate, Dense the shared experts and dense layers' MLPs (every token reads them),
    /// ActiveExperts K of the E routed experts per MoE layer.</summary>
    public static ParameterCounts Of(ModelConfig c)
    {
        long embedding = 0, lmHead = 0, attention = 0, norms = 0, router = 0, experts = 0, dense = 0;
        foreach (var t in ModelTensors.Expected(c))
        {
            long n = t.ElementCount;
            switch (t.Role)
            {
                case TensorRole.Embedding: embedding += n; break;
                case TensorRole.LmHead: lmHead += n; break;
                case TensorRole.Attention or TensorRole.AttentionBias or TensorRole.LatentExpansion: attention += n; break;
                case TensorRole.Norm: norms += n; break;
                case TensorRole.Router: router += n; break;
                case TensorRole.Expert or TensorRole.ExpertBias: experts += n; break;
                case TensorRole.SharedExpert or TensorRole.DenseMlp: dense += n; break;
                default: throw new InvalidOperationException($"ParameterCounts: no bucket for tensor role {t.Role}");
            }
        }

        long perExpert = 3L * c.HiddenSize * c.IntermediateSize           // gate [F, D] + up [F, D] + down [D, F]
                         + (c.Block.ExpertBias ? 2L * c.IntermediateSize + c.HiddenSize : 0); // gpt-oss's biases
        int moeLayers = Enumerable.Range(0, c.Layers).Count(c.IsMoeLayer);
        return new ParameterCounts(embedding, lmHead, attention, norms, router, experts, perExpert, (long)moeLayers * c.TopK * perExpert, dense);
    }
}
