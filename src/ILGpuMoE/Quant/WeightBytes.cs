// Weight bytes of a model under a storage scheme: all of it (what the device holds) and what one decode step must read
// (every layer's attention q/k/v/o, router and norms, K of the E experts, lm_head, one embedding row). Decode is
// bandwidth-bound, so the second number over the device's bandwidth is the roofline of one token.
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Quant;

public readonly record struct WeightBytes(long Total, long PerToken)
{
    /// <summary>
    /// Bytes as stored in <paramref name="tensors"/> (spec null) or with the linear weights packed by <paramref name="spec"/>.
    /// A linear weight stored quantized (BASE.qweight, ...) counts every tensor under BASE. <paramref name="lmHeadSpec"/>
    /// (--quant-lm-head): lm_head packed with it (a tied lm_head: a packed copy beside the embedding).
    /// </summary>
    public static WeightBytes Of(ModelConfig c, IReadOnlyList<TensorInfo> tensors, QuantSpec? spec, QuantSpec? lmHeadSpec = null)
    {
        ArgumentNullException.ThrowIfNull(c);
        var byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        long Bytes(ExpectedTensor e)
        {
            if (lmHeadSpec is not null && e.Role == TensorRole.LmHead)
                return lmHeadSpec.Bytes(c.VocabSize, c.HiddenSize);
            if (spec is not null && QuantSource.IsLinear(e))
            {
                var (n, rows, cols) = e.Packed(c);
                return spec.Bytes(rows, cols, n);
            }

            // BASE.weight and its packed parts BASE.qweight / .scales / ...; gpt-oss's MXFP4 experts are BASE_blocks / BASE_scales.
            string b = QuantSource.BaseOf(e.Name);
            long stored = tensors.Where(t => t.Name.StartsWith(b + ".", StringComparison.Ordinal) || t.Name == b
                                             || t.Name == b + "_blocks" || t.Name == b + "_scales").Sum(t => t.ByteLength);
            return stored > 0 ? stored : e.ElementCount * 4;
        }

        long total = 0, perToken = 0, tiedHead = 0;
        if (c.TieWordEmbeddings)
        {
            var embedding = ModelTensors.Expected(c).First(e => e.Role == TensorRole.Embedding);
            tiedHead = lmHeadSpec?.Bytes(c.VocabSize, c.HiddenSize) ?? Bytes(embedding);
            if (lmHeadSpec is not null)
                total += tiedHead;
        }

        foreach (var e in ModelTensors.Expected(c))
        {
            long b = Bytes(e);
            total += b;
            perToken += e.Role switch
            {
                TensorRole.Expert or TensorRole.ExpertBias => b * c.TopK / c.Experts, // K of E experts (equal sizes)
                TensorRole.Embedding => b / Math.Max(1, c.VocabSize)       // one row gathered
                                        + (c.TieWordEmbeddings ? tiedHead : 0), // tied: it is also lm_head
                TensorRole.Attention or TensorRole.AttentionBias or TensorRole.LatentExpansion or TensorRole.Router or TensorRole.Norm or TensorRole.LmHead
                    or TensorRole.SharedExpert or TensorRole.DenseMlp => b, // read whole every step
                _ => throw new System.Diagnostics.UnreachableException($"WeightBytes: tensor role {e.Role}"),
            };
        }

        return new WeightBytes(total, perToken);
    }
}
