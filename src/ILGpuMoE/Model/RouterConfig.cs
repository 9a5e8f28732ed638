// The MoE gate, described apart from the rest of the model so that other gates (Switch, Qwen-MoE, DeepSeek-V3)
// can be added without touching Mixtral's description. The kind is the one RouterKind the kernels and the oracle
// share (kernels/ILGpuMoE.Contracts/RouterKind.cs); the semantics of each kind are written there and implemented
// by the oracle (src/ILGpuMoE.Reference/RefRouter.cs). A kind that needs more knobs (capacity factor, groups,
// scaling) adds them here together with the config reader that sets them and the runtime that reads them.
namespace ILGpuMoE.Model;

/// <summary>One MoE gate: E routed experts, K chosen per token.</summary>
/// <param name="Kind">How logits become (expert, weight) pairs.</param>
/// <param name="Experts">E, routed experts per layer (router weight is [E, D]).</param>
/// <param name="TopK">K, experts chosen per token (1 &lt;= K &lt;= E).</param>
public sealed record RouterConfig(RouterKind Kind, int Experts, int TopK)
{
    /// <summary>Switch only: each expert takes at most ceil(CapacityFactor * T / E) of a step's T tokens.</summary>
    public double CapacityFactor { get; init; } = 1.0;

    /// <summary>NoisyTopK only: the noise's seed.</summary>
    public ulong NoiseSeed { get; init; }

    /// <summary>DeepSeekV3 only: n_group groups of E / n_group experts, topk_group of them kept per token.</summary>
    public int Groups { get; init; } = 1;

    public int TopKGroups { get; init; } = 1;

    /// <summary>DeepSeekV3 only: norm_topk_prob (divide the k sigmoid scores by their sum) and routed_scaling_factor.</summary>
    public bool NormTopK { get; init; } = true;

    public double RoutedScaling { get; init; } = 1.0;

    /// <summary>Mixtral's gate: softmax over E, top-k, renormalised.</summary>
    public static RouterConfig Mixtral(int experts, int topK) => new(RouterKind.Mixtral, experts, topK);

    public override string ToString() => Kind switch
    {
        RouterKind.Switch => $"switch (top-1, capacity factor {CapacityFactor.ToString(System.Globalization.CultureInfo.InvariantCulture)})",
        RouterKind.NoisyTopK => $"noisy top-{TopK} (noise seed {NoiseSeed})",
        RouterKind.Mixtral => $"softmax top-{TopK}, renormalised",
        RouterKind.SoftmaxTopK => $"softmax top-{TopK}",
        RouterKind.DeepSeekV3 => FormattableString.Invariant($"sigmoid top-{TopK} in the best {TopKGroups} of {Groups} groups, {(NormTopK ? "renormalised, " : "")}scaled {RoutedScaling}"),
        _ => throw new System.Diagnostics.UnreachableException($"router kind {Kind}"),
    };
}

/// <summary>
/// --router: run a model with a router of the MoE literature instead of its own (the router weights stay the model's).
/// </summary>
public sealed record RouterChoice
{
    /// <summary>"model" (the checkpoint's own router), "switch", "noisy-topk".</summary>
    public static readonly IReadOnlyList<string> Names = ["model", "switch", "noisy-topk"];

    /// <summary>Switch Transformers: top-1 with expert capacity ceil(C * T / E) per step; the tokens past an expert's
    /// capacity (in token order) skip the MoE block and keep only the residual.</summary>
    public static RouterChoice Switch(double capacityFactor) => new() { Kind = RouterKind.Switch, CapacityFactor = capacityFactor };

    /// <summary>Shazeer et al.'s noisy top-k (RouterKind.NoisyTopK); no seed: no noise.</summary>
    public static RouterChoice NoisyTopK(ulong? seed) => new() { Kind = RouterKind.NoisyTopK, NoiseSeed = seed };

    public RouterKind Kind { get; private init; }

    public double CapacityFactor { get; private init; } = 1.0;

    public ulong? NoiseSeed { get; private init; }

    /// <summary>
    /// The router a model runs with this choice. Switch: top-1, weight = its softmax probability. Noisy top-k: K of the
    /// model, h = logits + n * softplus(x W_noise), weights = softmax over the K chosen h. No checkpoint of these families
    /// carries W_noise, so its noise logits are zero: n * softplus(0) = n * ln 2 on every logit (documented default);
    /// without a seed there is no noise, and softmax over the K largest logits is exactly Mixtral's renormalised gate.
    /// </summary>
    public RouterConfig Apply(ModelConfig c)
    {
        if (c.Block.SharedExpertSize > 0)
            throw new ArgumentException($"--router {Name}: {c.ModelType}'s shared expert rides on its own router's slots; use --router model");
        return Kind switch
        {
            RouterKind.Switch => new RouterConfig(RouterKind.Switch, c.Experts, 1) { CapacityFactor = CapacityFactor },
            RouterKind.NoisyTopK when NoiseSeed is { } seed => new RouterConfig(RouterKind.NoisyTopK, c.Experts, c.TopK) { NoiseSeed = seed },
            RouterKind.NoisyTopK => RouterConfig.Mixtral(c.Experts, c.TopK),
            _ => throw new ArgumentException($"--router: no override for router kind {Kind}"),
        };
    }

    public string Name => Kind == RouterKind.Switch ? "switch" : "noisy-topk";

    /// <summary>Parses --router NAME with its knobs; "model" or null gives null. Errors are one-line ArgumentExceptions.</summary>
    public static RouterChoice? Parse(string? name, double? capacityFactor, ulong? noiseSeed)
    {
        switch (name)
        {
            case null or "model":
                if (capacityFactor is not null || noiseSeed is not null)
                    throw new ArgumentException("--capacity-factor and --noise-seed need --router switch or --router noisy-topk");
                return null;
            case "switch":
                if (noiseSeed is not null)
                    throw new ArgumentException("--noise-seed goes with --router noisy-topk, not switch");
                var cf = capacityFactor ?? 1.0;
                if (!(cf > 0) || double.IsInfinity(cf))
                    throw new ArgumentException($"--capacity-factor must be a positive number, got {cf}");
                return Switch(cf);
            case "noisy-topk":
                if (capacityFactor is not null)
                    throw new ArgumentException("--capacity-factor goes with --router switch, not noisy-topk");
                return NoisyTopK(noiseSeed);
            default:
                throw new ArgumentException($"--router '{name}' is not one of {string.Join(", ", Names)}");
        }
    }
}
