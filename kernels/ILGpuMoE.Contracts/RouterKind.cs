// The MoE router modes, declared once for the model config (src/ILGpuMoE/Model/RouterConfig.cs), the gating kernels'
// RouterSpec (kernels/ILGpuMoE.Kernels/Moe/Gating/RouterSpec.cs), the oracle's RefRouterSpec
// (src/ILGpuMoE.Reference/ContractMoe.cs, implemented in RefRouter.cs) and the bench presets. The values are fixed:
// RouterSpec carries the kind to the device as its number. Mixtral and SoftmaxTopK also take shared-expert slots
// (SharedSlots = m, Qwen2-MoE): logits [T, E + 1], ids / weights [T, K + m], slots K.. = experts E..E+m-1 with weight
// sigmoid(logit[E]); the other kinds refuse them.
namespace ILGpuMoE.Contracts;

public enum RouterKind
{
    /// <summary>Mixtral: softmax over E (F32), top-k, renormalise the k weights to sum 1.</summary>
    Mixtral = 0,

    /// <summary>Qwen-MoE (norm_topk_prob false): softmax over E, top-k, no renormalisation.</summary>
    SoftmaxTopK = 1,

    /// <summary>Switch: softmax, top-1 (TopK must be 1) with weight = its probability; capacity =
    /// ceil(T * CapacityFactor / E) (RefMoe.SwitchCapacity); tokens taken in token order, those past an expert's
    /// capacity are dropped (expert id -1, weight 0).</summary>
    Switch = 2,

    /// <summary>Shazeer noisy top-k: h = logits + n * softplus(noiseLogits), n ~ N(0,1) from RefNoise.Normal(seed, t, e);
    /// top-k of h, weights = softmax over the k chosen h values.</summary>
    NoisyTopK = 3,

    /// <summary>DeepSeek-V3: s = sigmoid(logits); choice = s + bias[e]; experts in Groups equal groups; a group's score is
    /// the sum of its top-2 choice values (its top-1 when a group has one expert); keep the TopKGroups best groups;
    /// top-k of choice among their experts only; weights = s of the chosen (unbiased), divided by their sum if
    /// NormTopK, times ScalingFactor.</summary>
    DeepSeekV3 = 4,
}
