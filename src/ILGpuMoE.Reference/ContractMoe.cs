// The oracle's router modes, permutation and MoE block: the signatures and semantics kernel tests code against.
namespace ILGpuMoE.Reference;

/// <summary>A router mode with its parameters; unused fields are ignored by the other modes.
/// SharedSlots = m (a shared expert stacked as m extra experts): slots K..K+m-1 of each token get experts E..E+m-1 and
/// the routing's TopK is then K + m. Mixtral and SoftmaxTopK (Qwen2-MoE's gated shared expert): logits rows are E + 1
/// wide, the last entry the shared-expert gate's logit, the mode routes over the first E, and the shared slots weigh
/// sigmoid(logit[E]). DeepSeekV3 (its ungated shared experts): rows stay E wide and the shared slots weigh 1.</summary>
public sealed record RefRouterSpec(
    RouterKind Kind,
    int Experts,
    int TopK,
    double CapacityFactor = 1.0,
    ulong NoiseSeed = 0,
    int Groups = 1,
    int TopKGroups = 1,
    bool NormTopK = true,
    double ScalingFactor = 1.0,
    int SharedSlots = 0);

/// <summary>Router output: ids [T, K] (-1 = dropped) and weights [T, K] (0 for dropped), in selection order
/// (descending selection score, ties toward the lower expert id). Dropped counts tokens dropped by capacity.</summary>
public sealed record RefRouting(int[] ExpertIds, float[] Weights, int Tokens, int TopK, int Dropped);

/// <summary>Expert-sorted order of the T*K (token, slot) pairs: Counts [E], Offsets [E+1] (exclusive scan),
/// SortedPairs [sum counts]: pair index p = t*K + k, stable (ascending p within an expert), dropped pairs excluded.</summary>
public sealed record RefPermutation(int[] Counts, int[] Offsets, int[] SortedPairs);

/// <summary>One tile of a grouped expert matmul: rows [RowStart, RowStart + tileRows) of Expert's segment of the
/// sorted pairs (RowStart is relative to Offsets[Expert]; the last tile of an expert may be partial).</summary>
public readonly record struct RefTile(int Expert, int RowStart);

public static partial class RefMoe
{
    /// <summary>logits [T, E] ([T, E + 1] with shared slots); noiseLogits [T, E] only for NoisyTopK; bias [E] only for DeepSeekV3.
    /// Selection scores are computed in double; NaN logits are rejected.</summary>
    public static partial RefRouting Route(RefRouterSpec spec, ReadOnlySpan<float> logits, int tokens,
        ReadOnlySpan<float> noiseLogits = default, ReadOnlySpan<float> bias = default);

    /// <summary>Counting sort of the routing's (token, slot) pairs by expert; throws on an id outside [-1, experts).</summary>
    public static partial RefPermutation Permute(RefRouting routing, int experts);

    /// <summary>
    /// The MoE block as a loop over experts (mistral-inference style): for each expert e, the tokens routed to it,
    /// y_e = w2_e (silu(w1_e x) * w3_e x), out[t] += weight * y_e. x [T, D]; w1, w3 [E][F, D]; w2 [E][D, F] -> [T, D].
    /// E is w1.Count. The hidden activation and the sum over experts stay in double; one rounding at the end.
    /// </summary>
    public static partial float[] MoeBlock(ReadOnlySpan<float> x, RefRouting routing, IReadOnlyList<float[]> w1,
        IReadOnlyList<float[]> w3, IReadOnlyList<float[]> w2, int tokens, int dim, int hidden);
}

/// <summary>
/// The counter-based standard normal that NoisyTopK uses; the kernel implements the same math:
///   splitmix64(z): z += 0x9E3779B97F4A7C15; z = (z ^ (z &gt;&gt; 30)) * 0xBF58476D1CE4E5B9;
///                  z = (z ^ (z &gt;&gt; 27)) * 0x94D049BB133111EB; return z ^ (z &gt;&gt; 31)   (uint64 wraparound)
///   c = ((ulong)(uint)token &lt;&lt; 32) | (uint)expert;  a = splitmix64(seed ^ splitmix64(c));  b = splitmix64(a)
///   u1 = ((a &gt;&gt; 11) + 1) * 2^-53  (in (0, 1]);  u2 = (b &gt;&gt; 11) * 2^-53  (in [0, 1))
///   n = sqrt(-2 ln u1) * cos(2 pi u2)   (Box-Muller, one of the pair)
/// </summary>
public static partial class RefNoise
{
    public static partial double Normal(ulong seed, int token, int expert);
}
