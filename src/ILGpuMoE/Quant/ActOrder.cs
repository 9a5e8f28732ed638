// GPTQ act-order (desc_act) in the runtime.
//
// A GPTQ checkpoint quantized with desc_act assigns input column k to group g_idx[k], and the columns of one group are
// not adjacent. CheckpointRepack.FromGptq sorts the packed columns by group, so every group is G adjacent columns
// again (our Q4 layout), and records InputPermutation: packed column j is input column perm[j], y = x[:, perm] Wp^T.
// Someone has to read x through perm; where that costs least depends on what produced x:
//
//   attention q/k/v/o   x is shared (q, k, v read one normed row) or head-shaped (o): gather x into a scratch row
//                       before the matmul (QuantGemvKernel.LaunchGather, T * In floats); once for q, k and v when
//                       they share an order, as GPTQ gives them (LayerWeights.QkvShareInputOrder).
//   experts w1, w3      x is the token's normed row, a different column order per expert: the MoE block gathers one
//                       row per (token, expert) pair (QuantGroupedGemmKernels.GatherExpertInputsV1, T*K*D floats).
//                       w1 and w3 of one expert must share the permutation (one gathered row feeds both); GPTQ gives
//                       them the same one, since both are quantized on the same inputs (same Hessian, same order).
//   experts w2          x is h = silu(w1 x) * (w3 x) of the same expert: no gather at all. Reordering the rows of
//                       w1 and w3 by w2's permutation makes h come out already in w2's packed column order, an exact
//                       move of rows with their scales and zero points (QuantizedMatrix.PermuteRows; MoeModel reads w2 first).
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Quant;

/// <summary>
/// Which of a checkpoint's linear weights are act-order, as the memory plan counts them: the device permutations
/// (4 bytes per input column of each act-order attention matrix, [E, D] per layer whose experts' w1/w3 are act-order;
/// w2's fold away) and the gather scratch of one step of T tokens (T * the widest act-order attention input, plus
/// T*K*D for the experts' gathered rows).
/// </summary>
public sealed record ActOrderLayout(int AttentionMatrices, long AttentionPermutationBytes, int MaxAttentionCols, int ExpertLayers)
{
    public static readonly ActOrderLayout None = new(0, 0, 0, 0);

    public long WeightBytes(ModelConfig c) => AttentionPermutationBytes + (long)ExpertLayers * c.Experts * c.HiddenSize * sizeof(int);

    public long WorkspaceBytes(ModelConfig c, int maxBatch) =>
        (long)maxBatch * (MaxAttentionCols + (ExpertLayers > 0 ? (long)c.TopK * c.HiddenSize : 0)) * sizeof(float);

    /// <summary>Asks <paramref name="source"/> which linear weights are act-order (a GPTQ g_idx read from the
    /// memory-mapped checkpoint, or our BASE.perm).</summary>
    public static ActOrderLayout Of(ModelConfig c, Checkpoint checkpoint, QuantSource source)
    {
        ArgumentNullException.ThrowIfNull(source);
        long bytes = 0;
        int maxCols = 0, matrices = 0;
        var expertLayers = new HashSet<int>();
        foreach (var e in ModelTensors.Expected(c).Where(QuantSource.IsLinear))
        {
            if (!source.IsActOrder(checkpoint, e.Name, e.Shape[1]))
                continue;
            if (e.Role == TensorRole.Attention)
            {
                matrices++;
                bytes += e.Shape[1] * sizeof(int);
                maxCols = Math.Max(maxCols, (int)e.Shape[1]);
            }
            else if (!e.Name.EndsWith(".w2.weight", StringComparison.Ordinal))
            {
                expertLayers.Add(e.Layer);
            }
        }

        return new ActOrderLayout(matrices, bytes, maxCols, expertLayers.Count);
    }
}

public static class ActOrder
{
    /// <summary>Throws when w1's and w3's input orders differ (one of them act-order and the other not counts).</summary>
    public static void CheckSameInputOrder(int[]? w1, int[]? w3)
    {
        bool same = w1 is null ? w3 is null : w3 is not null && w1.AsSpan().SequenceEqual(w3);
        if (!same)
        {
            throw new ArgumentException("w1 and w3 have different act-order input orders (g_idx); the fused up/gate pass reads one gathered input " +
                                        "for both (GPTQ gives them the same order when both are quantized on the same inputs)");
        }
    }

    /// <summary>Throws unless <paramref name="perm"/> is a permutation of 0..n-1.</summary>
    public static void CheckPermutation(string where, ReadOnlySpan<int> perm, int n)
    {
        if (perm.Length != n)
            throw new ArgumentException($"{where}: permutation has {perm.Length} entries, expected {n}");
        var seen = new bool[n];
        foreach (int i in perm)
        {
            if (i < 0 || i >= n || seen[i])
                throw new ArgumentException($"{where}: {i} is {(i < 0 || i >= n ? "outside 0.." + (n - 1) : "repeated")}; not a permutation");
            seen[i] = true;
        }
    }

    /// <summary>True when a GPTQ g_idx is not k / G, i.e. the columns need the act-order permutation.</summary>
    public static bool IsActOrder(ReadOnlySpan<int> gIdx, int groupSize)
    {
        for (int k = 0; k < gIdx.Length; k++)
        {
            if (gIdx[k] != k / groupSize)
                return true;
        }

        return false;
    }
}
