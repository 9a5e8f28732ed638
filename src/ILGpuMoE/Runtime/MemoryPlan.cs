// Device memory a model needs before anything is allocated: weights (in the checkpoint's dtype), the KV cache and
// the per-step workspaces sized for the largest step (MaxBatch tokens). Compared against the accelerator's memory so a
// model that does not fit is refused with one line instead of failing half-way through the upload.
//
// Glossary: T tokens per step (MaxBatch), D model dim, F expert hidden, E experts, K experts per token, H heads,
// Hkv kv heads, Dh head dim, V vocab, L layers, S cache length (MaxSeq).
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Quant;

namespace ILGpuMoE.Runtime;

/// <summary>Bad input to the runtime (a token id outside the vocabulary, a prompt longer than the cache, a bad
/// --max-seq): the CLI turns it into exit 2 with the one-line message.</summary>
public class RuntimeInputException(string message) : Exception(message);

/// <summary>The model does not fit the device; the message says how much it needs against how much there is.</summary>
public sealed class InsufficientDeviceMemoryException(string message) : RuntimeInputException(message);

/// <summary>Bytes per part. Build with <see cref="Of"/>.</summary>
public sealed record MemoryPlan(long WeightBytes, long KvCacheBytes, long WorkspaceBytes, int MaxSeq, int MaxBatch)
{
    private const double GiB = 1024.0 * 1024 * 1024;

    public long TotalBytes => WeightBytes + KvCacheBytes + WorkspaceBytes;

    /// <summary>Weights: the byte lengths of the tensors the config implies, as stored (BF16 stays 2 bytes); with
    /// <paramref name="quant"/>, the packed bytes (words + scales + zeros) of the linear weights instead (with
    /// <paramref name="keepFloatLinear"/>, a quantized checkpoint's linear weights stored in a float dtype stay as stored).
    /// <paramref name="actOrder"/>: a GPTQ act-order checkpoint's device permutations and gather scratch.</summary>
    public static MemoryPlan Of(ModelConfig c, IReadOnlyList<TensorInfo> tensors, int maxSeq, int maxBatch, QuantSpec? quant = null, bool keepFloatLinear = false,
        ActOrderLayout? actOrder = null, QuantSpec? lmHeadQuant = null)
    {
        actOrder ??= ActOrderLayout.None;
        var byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        long weights = 0;
        foreach (var e in ModelTensors.Expected(c))
        {
            // A quantized checkpoint's float shared expert / dense MLP is packed at load all the same (MoeModel.cs).
            bool storedFloat = keepFloatLinear && e.Role is not (TensorRole.SharedExpert or TensorRole.DenseMlp)
                               && byName.TryGetValue(e.Name, out var f) && f.DType is DType.F32 or DType.F16 or DType.BF16;
            if (keepFloatLinear && quant?.Layout == Kernels.Quant.QuantScheme.Fp8 && e.Role == TensorRole.DenseMlp && byName.TryGetValue(e.Name, out var dm)
                && dm.DType is not (DType.F32 or DType.F16 or DType.BF16))
            {
                var (n, rows, cols) = e.Packed(c);
                weights += n * rows * cols * 4; // an FP8 dense MLP runs as F32 chunks (MoeModel.cs)
            }
            else if (quant is not null && !storedFloat && QuantSource.IsLinear(e))
            {
                var (n, rows, cols) = e.Packed(c);
                weights += quant.Bytes(rows, cols, n);
            }
            else if (e.Role == TensorRole.LatentExpansion && byName.TryGetValue(e.Name, out var kvb) && kvb.DType is not (DType.F32 or DType.F16 or DType.BF16))
            {
                weights += e.ElementCount * 4; // a packed kv_b_proj is widened to F32 at load
            }
            else
            {
                weights += byName.TryGetValue(e.Name, out var t) ? t.ByteLength : e.ElementCount * 4;
            }
        }

        // --quant-lm-head: the packed lm_head replaces the float one; a tied lm_head is a packed copy beside the embedding.
        if (lmHeadQuant is not null)
        {
            if (!c.TieWordEmbeddings)
                weights -= byName.TryGetValue(c.Family.Names.LmHead, out var lm) ? lm.ByteLength : (long)c.VocabSize * c.HiddenSize * 4;
            weights += lmHeadQuant.Bytes(c.VocabSize, c.HiddenSize);
        }

        long kv = CacheBytes(c, maxSeq);
        weights += actOrder.WeightBytes(c);
        return new MemoryPlan(weights, kv, Workspace(c, maxSeq, maxBatch) + actOrder.WorkspaceBytes(c, maxBatch), maxSeq, maxBatch);
    }

    /// <summary>The KV cache: K and V [Hkv, S, Dh] f32 per layer, or MLA's compressed rows [S, latent + rope] f32 per
    /// layer (576 floats per token for DeepSeek-V3 against 2 x 128 x 192 expanded).</summary>
    public static long CacheBytes(ModelConfig c, int maxSeq) => c.Block.Mla is { } m
        ? (long)c.Layers * maxSeq * m.CacheWidth * sizeof(float)
        : 2L * c.Layers * c.KvHeads * maxSeq * c.HeadDim * sizeof(float);

    /// <summary>A paged KV pool (BatchSession): <paramref name="blocks"/> blocks of <paramref name="blockSize"/> positions,
    /// per position what <see cref="CacheBytes"/> holds per position.</summary>
    public static long PagedCacheBytes(ModelConfig c, int blocks, int blockSize) => CacheBytes(c, 1) * blocks * blockSize;

    /// <summary>Activations of one step of T = maxBatch tokens, the MoE scratch, logits and the attention decode partials.</summary>
    public static long Workspace(ModelConfig c, int maxSeq, int maxBatch)
    {
        long t = maxBatch, d = c.HiddenSize, q = Math.Max(c.QueryDim, c.AttentionDim), kv = c.KvDim, e = c.Experts, f = c.IntermediateSize, v = c.VocabSize;
        // MLA: the latent rows of the step, q's low-rank input, and the absorbed query and output per head [T, H, latent].
        long mla = c.Block.Mla is { } m ? t * (m.CacheWidth + m.QLoraRank + 2L * c.Heads * m.KvLoraRank) : 0;
        // One MoE workspace per distinct (slots K', stacked experts E') of the layers (ModelConfig.MoeShape).
        var shapes = Enumerable.Range(0, c.Layers).Select(c.MoeShape).Distinct().ToList();
        long k = shapes.Count > 0 ? shapes.Max(s => s.Slots) : c.TopK;
        long moeFloats = shapes.Sum(s => 2 * t * s.Slots * f + t * s.Slots * d);   // H [T*K', F] and a spare, Y [T*K', D]
        long moeInts = shapes.Sum(s => 2 * (4 * t * s.Slots + 8L * s.Experts + 64)); // two permutations each
        long floats = 2 * t * d           // x (residual stream), h (normed)
                      + 2 * t * q         // q, attention output
                      + 2 * t * kv        // k, v of this step
                      + c.Layers * t * (e + 1) // router logits per layer (+ a shared expert's gate)
                      + t * k             // routing weights
                      + moeFloats
                      + mla
                      + t * v;            // logits
        long ints = 2 * t                 // tokens, positions
                    + c.Layers * t * k    // expert ids per layer
                    + moeInts;
        // Split-K decode partials: at most ~1024 groups of Dh + 2 floats per (token, head) split; bounded generously.
        long partials = 2 * (1024L + (long)c.Heads * ((maxSeq + 31) / 32)) * (c.HeadDim + 2);
        return (floats + partials) * sizeof(float) + ints * sizeof(int);
    }

    /// <summary>Throws <see cref="InsufficientDeviceMemoryException"/> when the plan exceeds <paramref name="availableBytes"/>.</summary>
    public void EnsureFits(long availableBytes, string deviceName)
    {
        if (TotalBytes <= availableBytes)
            return;
        throw new InsufficientDeviceMemoryException(
            $"model needs {G(TotalBytes)} GiB (weights {G(WeightBytes)}, KV cache {G(KvCacheBytes)} for --max-seq {MaxSeq}, workspace {G(WorkspaceBytes)}) " +
            $"but the device ({deviceName}) has {G(availableBytes)} GiB; try a smaller --max-seq or a larger device");
    }

    public override string ToString() =>
        $"{G(TotalBytes)} GiB (weights {G(WeightBytes)}, KV cache {G(KvCacheBytes)}, workspace {G(WorkspaceBytes)})";

    private static string G(long bytes) => (bytes / GiB).ToString(bytes < GiB / 10 ? "F3" : "F1", System.Globalization.CultureInfo.InvariantCulture);
}
