// The MoE gate, described apart from the rest of the model so that other gates (Switch, Qwen-MoE, DeepSeek-V3)
// can be added without touching Mixtral's description. The kinds mirror RefRouterKind in the oracle; the
// semantics of each kind are written there (src/ILGpuMoE.Reference/ContractMoe.cs).
namespace ILGpuMoE.Model;

public enum RouterKind
{
    /// <summary>Mixtral: softmax over E (F32), top-k, renormalise the k weights to sum 1.</summary>
    Mixtral,
    /// <summary>Qwen-MoE (norm_topk_prob false): softmax over E, top-k, no renormalisation.</summary>
    SoftmaxTopK,
    /// <summary>Switch: softmax, top-1, a per-expert capacity of ceil(T * CapacityFactor / E) tokens.</summary>
    Switch,
    /// <summary>Shazeer noisy top-k (training-time gate; inference uses it only when asked).</summary>
    NoisyTopK,
    /// <summary>DeepSeek-V3: sigmoid scores, a correction bias for choosing, group-limited top-k, scaled weights.</summary>
    DeepSeekV3,
}

/// <summary>
/// One MoE gate: E routed experts, K chosen per token, and the knobs the non-Mixtral kinds need. Fields a kind
/// does not use keep their defaults and are ignored by it.
/// </summary>
/// <param name="Kind">How logits become (expert, weight) pairs.</param>
/// <param name="Experts">E, routed experts per layer (router weight is [E, D]).</param>
/// <param name="TopK">K, experts chosen per token (1 &lt;= K &lt;= E).</param>
public sealed record RouterConfig(RouterKind Kind, int Experts, int TopK)
{
    /// <summary>Divide the K chosen weights by their sum (Mixtral: true; Qwen-MoE: norm_topk_prob).</summary>
    public bool NormTopK { get; init; } = true;

    /// <summary>Switch only: capacity factor.</summary>
    public double CapacityFactor { get; init; } = 1.0;

    /// <summary>DeepSeek-V3 only: experts are split into this many equal groups (n_group).</summary>
    public int Groups { get; init; } = 1;

    /// <summary>DeepSeek-V3 only: groups kept before the top-k (topk_group).</summary>
    public int TopKGroups { get; init; } = 1;

    /// <summary>DeepSeek-V3 only: multiplier on the final weights (routed_scaling_factor).</summary>
    public double ScalingFactor { get; init; } = 1.0;

    /// <summary>DeepSeek-V3 only: the gate carries e_score_correction_bias [E], used for choosing, not weighting.</summary>
    public bool HasScoreCorrectionBias { get; init; }

    /// <summary>Qwen-MoE / DeepSeek: always-on shared experts next to the routed ones (0 for Mixtral).</summary>
    public int SharedExperts { get; init; }

    /// <summary>Hidden size of the shared expert(s), 0 when there are none.</summary>
    public int SharedExpertHidden { get; init; }

    /// <summary>Mixtral's gate: softmax over E, top-k, renormalised.</summary>
    public static RouterConfig Mixtral(int experts, int topK) => new(RouterKind.Mixtral, experts, topK);
}
