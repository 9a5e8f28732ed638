// The expert activation of the fused up-gate passes and the expert biases, one struct for every expert kernel the
// runtime runs (moe/grouped-gemm V1-V4, decode/experts V1). Per chosen expert e of a token, f < F, d < D:
//   SiLU (Mixtral, Qwen, OLMoE; the default):  h_f = silu(g) * u,  g = x . W1[e, f], u = x . W3[e, f]
//   GptOssClamped (gpt-oss, src/ILGpuMoE.Reference/RefModelFamilies.cs):
//       g = x . W1[e, f] + bg[e, f];  u = x . W3[e, f] + bu[e, f];  g = min(g, limit);  u = clamp(u, -limit, limit)
//       h_f = (u + 1) * g * sigmoid(alpha * g)          (alpha 1.702, limit 7 in gpt-oss's config)
//   down:  y_e[d] = W2[e, d] . h + b2[e, d]  (b2 added in the down pass's epilogue, before the routing weight:
//          out = sum_k weight_k * y_{e_k} exactly as the semantics state)
// Biases are optional for either kind: empty views mean none (then nothing is loaded and nothing is added, so the
// default(ExpertGlu) path is bit-identical to the kernels before this option). Bias layouts: gate and up [E, F],
// down [E, D] (F32).
// Why one struct passed by value: the branches on Kind and on the bias flags are uniform per launch and sit in the
// epilogues (once per output), not in the weight loops; the PTX gate keeps one instance per weight reader.
// Clamps are written as compares so a NaN stays NaN (torch.clamp propagates it; PTX min.f32 would return the limit).
using ILGPU;
using ILGPU.Algorithms;

namespace ILGpuMoE.Kernels.Moe;

/// <summary>The expert activation of <see cref="ExpertGlu"/>.</summary>
public enum ExpertActivation
{
    /// <summary>silu(gate) * up (Mixtral, Qwen, OLMoE).</summary>
    SiLU = 0,

    /// <summary>gpt-oss: gate clamped above at limit, up to [-limit, limit], (up + 1) * gate * sigmoid(alpha * gate).</summary>
    GptOssClamped = 1,
}

/// <summary>
/// The activation and biases of the experts' up-gate and down passes (see the file header); default = SiLU, no biases.
/// </summary>
public readonly struct ExpertGlu
{
    public readonly int Kind;
    public readonly float Alpha;
    public readonly float Limit;

    /// <summary>[E, F] gate bias, [E, F] up bias (both or neither), [E, D] down bias; empty = none.</summary>
    public readonly ArrayView<float> GateBias;
    public readonly ArrayView<float> UpBias;
    public readonly ArrayView<float> DownBias;
    public readonly int HasUpGateBias;
    public readonly int HasDownBias;

    private ExpertGlu(ExpertActivation kind, float alpha, float limit, ArrayView<float> gateBias, ArrayView<float> upBias, ArrayView<float> downBias)
    {
        Kind = (int)kind;
        Alpha = alpha;
        Limit = limit;
        GateBias = gateBias;
        UpBias = upBias;
        DownBias = downBias;
        HasUpGateBias = gateBias.Length > 0 ? 1 : 0;
        HasDownBias = downBias.Length > 0 ? 1 : 0;
    }

    /// <summary>Mixtral's silu(gate) * up, optionally with biases.</summary>
    public static ExpertGlu SiLU(ArrayView<float> gateBias = default, ArrayView<float> upBias = default, ArrayView<float> downBias = default) =>
        new(ExpertActivation.SiLU, 1f, 0f, gateBias, upBias, downBias);

    /// <summary>gpt-oss's clamped GLU with its expert biases (any of them may be empty).</summary>
    public static ExpertGlu GptOss(float alpha, float limit, ArrayView<float> gateBias, ArrayView<float> upBias, ArrayView<float> downBias)
    {
        if (!float.IsFinite(alpha) || !(limit > 0f) || !float.IsFinite(limit))
            throw new ArgumentException($"ExpertGlu: alpha ({alpha}) must be finite and limit ({limit}) finite and positive");
        return new(ExpertActivation.GptOssClamped, alpha, limit, gateBias, upBias, downBias);
    }

    public ExpertActivation Activation => (ExpertActivation)Kind;

    /// <summary>h = act(g + bg[i], u + bu[i]); i = e * F + f (the bias index of the output).</summary>
    public float UpGate(float g, float u, long i)
    {
        if (HasUpGateBias != 0)
        {
            g += GateBias[i];
            u += UpBias[i];
        }

        if (Kind == (int)ExpertActivation.GptOssClamped)
        {
            float lim = Limit;
            g = g > lim ? lim : g;
            u = u > lim ? lim : (u < -lim ? -lim : u);
            return (u + 1f) * (g / (1f + XMath.Exp(-Alpha * g)));
        }

        return g / (1f + XMath.Exp(-g)) * u;
    }

    /// <summary>y + b2[i] (i = e * D + d), or y unchanged without a down bias.</summary>
    public float Down(float y, long i) => HasDownBias != 0 ? y + DownBias[i] : y;

    /// <summary>Host check before a launch: a known kind, biases of [E, F] / [E, D] or none. Throws ArgumentException.</summary>
    public void Check(string where, long experts, int hidden, int dim)
    {
        if (Kind is not ((int)ExpertActivation.SiLU or (int)ExpertActivation.GptOssClamped))
            throw new ArgumentException($"{where}: unknown expert activation {Kind}");
        if ((GateBias.Length > 0) != (UpBias.Length > 0))
            throw new ArgumentException($"{where}: the gate and up biases come together (gate {GateBias.Length}, up {UpBias.Length} elements)");
        if (HasUpGateBias != 0 && (GateBias.Length < experts * hidden || UpBias.Length < experts * hidden))
            throw new ArgumentException($"{where}: gate/up biases have {GateBias.Length}/{UpBias.Length} elements, need E*F = {experts * hidden}");
        if (HasDownBias != 0 && DownBias.Length < experts * dim)
            throw new ArgumentException($"{where}: the down bias has {DownBias.Length} elements, needs E*D = {experts * dim}");
    }
}
