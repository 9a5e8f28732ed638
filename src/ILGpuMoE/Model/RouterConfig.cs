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
    /// <summary>Mixtral's gate: softmax over E, top-k, renormalised.</summary>
    public static RouterConfig Mixtral(int experts, int topK) => new(RouterKind.Mixtral, experts, topK);
}
