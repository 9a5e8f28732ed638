// The router mode a gating launch runs, as a small value passed to the kernel by value.
//
// The kernels assembly cannot see the reference project, so this mirrors RefRouterSpec field for field; the runtime
// maps one to the other. It is a readonly struct of plain numbers (no bool: NormTopK travels as an int) so that
// every backend can take it as a kernel parameter. Its kind is the RouterKind the oracle uses too
// (kernels/ILGpuMoE.Contracts/RouterKind.cs). SharedSlots (Qwen2-MoE's shared expert, routed as m extra experts of the
// same grouped launch) is the last field and defaults to 0, so a spec without it routes as before.
namespace ILGpuMoE.Kernels.Moe.Gating;

/// <summary>A router mode with its parameters; fields a mode does not use are ignored.</summary>
public readonly struct RouterSpec
{
    public readonly RouterKind Kind;

    /// <summary>E: experts (router logits per token).</summary>
    public readonly int Experts;

    /// <summary>K: experts chosen per token.</summary>
    public readonly int TopK;

    /// <summary>Switch only: capacity = ceil(T * CapacityFactor / E).</summary>
    public readonly double CapacityFactor;

    /// <summary>NoisyTopK only: the seed of the counter-based normal generator.</summary>
    public readonly ulong NoiseSeed;

    /// <summary>DeepSeekV3 only: number of equal expert groups (E % Groups == 0).</summary>
    public readonly int Groups;

    /// <summary>DeepSeekV3 only: groups kept per token.</summary>
    public readonly int TopKGroups;

    /// <summary>DeepSeekV3 only: 1 divides the chosen weights by their sum, 0 does not.</summary>
    public readonly int NormTopKFlag;

    /// <summary>DeepSeekV3 only: factor applied to the final weights.</summary>
    public readonly double ScalingFactor;

    /// <summary>
    /// m: shared-expert slots: slots K..K+m-1 of the token get experts E..E+m-1 (the shared expert stacked as m F-wide
    /// chunks); output rows are K + m wide. Mixtral and SoftmaxTopK (Qwen2-MoE's gated shared expert): a logits row has
    /// E + 1 entries, the last being the shared-expert gate's logit; the mode routes over the first E as without it and
    /// the shared slots weigh sigmoid(logit[E]) in F32. DeepSeekV3 (ungated shared experts): rows stay E wide and the
    /// shared slots weigh 1.
    /// </summary>
    public readonly int SharedSlots;

    public RouterSpec(RouterKind kind, int experts, int topK, double capacityFactor = 1.0, ulong noiseSeed = 0,
        int groups = 1, int topKGroups = 1, bool normTopK = true, double scalingFactor = 1.0, int sharedSlots = 0)
    {
        Kind = kind;
        Experts = experts;
        TopK = topK;
        CapacityFactor = capacityFactor;
        NoiseSeed = noiseSeed;
        Groups = groups;
        TopKGroups = topKGroups;
        NormTopKFlag = normTopK ? 1 : 0;
        ScalingFactor = scalingFactor;
        SharedSlots = sharedSlots;
    }

    public bool NormTopK => NormTopKFlag != 0;

    /// <summary>Logits per token: E, or E + 1 with gated shared slots (the shared-expert gate's logit last).</summary>
    public int LogitsPerToken => SharedSlots > 0 && Kind != RouterKind.DeepSeekV3 ? Experts + 1 : Experts;

    /// <summary>Ids / weights per token: K + m.</summary>
    public int SlotsPerToken => TopK + SharedSlots;

    /// <summary>This spec with m shared-expert slots (see <see cref="SharedSlots"/>).</summary>
    public RouterSpec WithSharedSlots(int sharedSlots) =>
        new(Kind, Experts, TopK, CapacityFactor, NoiseSeed, Groups, TopKGroups, NormTopK, ScalingFactor, sharedSlots);

    public static RouterSpec Mixtral(int experts, int topK) => new(RouterKind.Mixtral, experts, topK);

    public static RouterSpec SoftmaxTopK(int experts, int topK) => new(RouterKind.SoftmaxTopK, experts, topK);

    public static RouterSpec Switch(int experts, double capacityFactor) =>
        new(RouterKind.Switch, experts, 1, capacityFactor: capacityFactor);

    public static RouterSpec NoisyTopK(int experts, int topK, ulong seed) =>
        new(RouterKind.NoisyTopK, experts, topK, noiseSeed: seed);

    public static RouterSpec DeepSeekV3(int experts, int topK, int groups, int topKGroups, bool normTopK = true,
        double scalingFactor = 1.0) =>
        new(RouterKind.DeepSeekV3, experts, topK, groups: groups, topKGroups: topKGroups, normTopK: normTopK,
            scalingFactor: scalingFactor);

    /// <summary>Switch: the per-expert token capacity for T tokens, ceil(T * CapacityFactor / E) in double.</summary>
    public int SwitchCapacity(int tokens) => (int)Math.Ceiling(tokens * CapacityFactor / Experts);

    public override string ToString() => SharedSlots == 0 ? Describe() : $"{Describe()[..^1]}, shared={SharedSlots})";

    private string Describe() => Kind switch
    {
        RouterKind.Switch => $"Switch(E={Experts}, cf={CapacityFactor})",
        RouterKind.NoisyTopK => $"NoisyTopK(E={Experts}, K={TopK}, seed={NoiseSeed})",
        RouterKind.DeepSeekV3 =>
            $"DeepSeekV3(E={Experts}, K={TopK}, groups={Groups}, topKGroups={TopKGroups}, norm={NormTopK}, scale={ScalingFactor})",
        RouterKind.Mixtral or RouterKind.SoftmaxTopK => $"{Kind}(E={Experts}, K={TopK})",
        _ => throw new System.Diagnostics.UnreachableException($"RouterSpec: unnamed router kind {(int)Kind}"),
    };
}
