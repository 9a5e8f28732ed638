// The grouped expert GEMM's two passes over the expert-sorted rows, as plain loops with double accumulation: the oracle
// of moe/grouped-gemm pass by pass (kernels/ILGpuMoE.Kernels/Moe/GroupedGemm), with either activation (SiLU, or
// gpt-oss's clamped GLU with biases, as RefExpertGlu) and an option to round the activations the way the tensor-core
// kernels (V5Mma) do: x into the up-gate pass and h into the down pass rounded to BF16 or F16, nearest even, before the
// products (the weights are 16-bit already). h is handed between the passes in F32, as the kernels' workspace does.
//   UpGate: h[r, f] = act(xr . W1[e, f] + bg[e, f], xr . W3[e, f] + bu[e, f]),  xr = round(x[sorted[r] / K])
//   Down:   y[r, d] = round(h[r]) . W2[e, d] + b2[e, d]
//   Combine: out[t] = sum over the token's kept pairs of weight * y[pos(pair)]
// Shapes: T tokens, K experts per token, D model dim, F expert hidden; W1, W3 [F, D] and W2 [D, F] per expert; rows r
// in the permutation's sorted order (RefMoe.Permute), e the expert owning row r.
namespace ILGpuMoE.Reference;

/// <summary>How activations are rounded before the products.</summary>
public enum RefRoundTo
{
    /// <summary>Not rounded (F32 values as given).</summary>
    None,

    /// <summary>To BF16, nearest even.</summary>
    Bf16,

    /// <summary>To IEEE F16, nearest even (overflow to infinity).</summary>
    F16,
}

/// <summary>The expert activation: SiLU (biases allowed) or gpt-oss's clamped GLU; biases [E][F], [E][F], [E][D] or null.</summary>
public sealed record RefExpertActivation(bool ClampedGlu, double Alpha, double Limit, float[][]? GateBias = null, float[][]? UpBias = null,
    float[][]? DownBias = null)
{
    /// <summary>silu(g) * u, no biases (Mixtral).</summary>
    public static RefExpertActivation SiLU { get; } = new(false, 1, 0);

    /// <summary>h of one (g, u) before the biases were added: bias, clamp, activation, all in double.</summary>
    public double Apply(double g, double u, int expert, int f)
    {
        g += GateBias?[expert][f] ?? 0f;
        u += UpBias?[expert][f] ?? 0f;
        if (!ClampedGlu)
            return RefOps.Silu(g) * u;
        g = Math.Min(g, Limit);
        u = Math.Clamp(u, -Limit, Limit);
        return (u + 1) * g / (1 + Math.Exp(-Alpha * g));
    }
}

public static class RefGroupedExperts
{
    /// <summary>v rounded to the 16-bit type (nearest even), widened back.</summary>
    public static float Round(float v, RefRoundTo rounding) => rounding switch
    {
        RefRoundTo.None => v,
        RefRoundTo.Bf16 => RefRounding.Bf16(v),
        RefRoundTo.F16 => RefRounding.F16(v),
        _ => throw new ArgumentOutOfRangeException(nameof(rounding), rounding, "unknown rounding"),
    };

    /// <summary>h [rows, F] in sorted order (rows = Offsets[E]).</summary>
    public static float[] UpGate(ReadOnlySpan<float> x, RefPermutation permutation, int tokens, int topK, IReadOnlyList<float[]> w1,
        IReadOnlyList<float[]> w3, RefExpertActivation activation, int dim, int hidden, RefRoundTo rounding)
    {
        ArgumentNullException.ThrowIfNull(permutation);
        ArgumentNullException.ThrowIfNull(activation);
        Require.Length(x, (long)tokens * dim, nameof(x), "[T, D]");
        int experts = CheckExperts(permutation, w1, w3, (long)hidden * dim, "w1", "w3");
        int rows = permutation.Offsets[experts];
        var h = new float[(long)rows * hidden];
        var xr = new float[dim];
        for (int e = 0; e < experts; e++)
        {
            for (int r = permutation.Offsets[e]; r < permutation.Offsets[e + 1]; r++)
            {
                int t = permutation.SortedPairs[r] / topK;
                for (int k = 0; k < dim; k++)
                    xr[k] = Round(x[t * dim + k], rounding);
                for (int f = 0; f < hidden; f++)
                {
                    double g = RefOps.Dot(xr, w1[e].AsSpan(f * dim, dim));
                    double u = RefOps.Dot(xr, w3[e].AsSpan(f * dim, dim));
                    h[(long)r * hidden + f] = (float)activation.Apply(g, u, e, f);
                }
            }
        }

        return h;
    }

    /// <summary>y [rows, D] in sorted order from h [rows, F] (rounded to the 16-bit type first, as the down pass reads it).</summary>
    public static float[] Down(ReadOnlySpan<float> h, RefPermutation permutation, IReadOnlyList<float[]> w2, RefExpertActivation activation,
        int dim, int hidden, RefRoundTo rounding)
    {
        ArgumentNullException.ThrowIfNull(permutation);
        ArgumentNullException.ThrowIfNull(activation);
        int experts = CheckExperts(permutation, w2, w2, (long)dim * hidden, "w2", "w2");
        int rows = permutation.Offsets[experts];
        Require.Length(h, (long)rows * hidden, nameof(h), "[rows, F]");
        var y = new float[(long)rows * dim];
        var hr = new float[hidden];
        for (int e = 0; e < experts; e++)
        {
            for (int r = permutation.Offsets[e]; r < permutation.Offsets[e + 1]; r++)
            {
                for (int f = 0; f < hidden; f++)
                    hr[f] = Round(h[r * hidden + f], rounding);
                for (int d = 0; d < dim; d++)
                    y[(long)r * dim + d] = (float)(RefOps.Dot(hr, w2[e].AsSpan(d * hidden, hidden)) + (activation.DownBias?[e][d] ?? 0f));
            }
        }

        return y;
    }

    /// <summary>out [T, D] = sum over each token's kept pairs of weight * y[sorted row of the pair] (double, rounded once).</summary>
    public static float[] Combine(ReadOnlySpan<float> y, RefPermutation permutation, RefRouting routing, int dim)
    {
        ArgumentNullException.ThrowIfNull(permutation);
        ArgumentNullException.ThrowIfNull(routing);
        int pairs = routing.Tokens * routing.TopK;
        var position = new int[pairs];
        Array.Fill(position, -1);
        for (int r = 0; r < permutation.SortedPairs.Length; r++)
            position[permutation.SortedPairs[r]] = r;
        var output = new float[(long)routing.Tokens * dim];
        for (int t = 0; t < routing.Tokens; t++)
        {
            for (int d = 0; d < dim; d++)
            {
                double acc = 0;
                for (int k = 0; k < routing.TopK; k++)
                {
                    int r = position[t * routing.TopK + k];
                    if (r >= 0)
                        acc += (double)routing.Weights[t * routing.TopK + k] * y[r * dim + d];
                }

                output[t * dim + d] = (float)acc;
            }
        }

        return output;
    }

    /// <summary>The whole MoE block through the passes above: permute, up-gate, down, combine. x [T, D] -> [T, D].</summary>
    public static float[] MoeBlock(ReadOnlySpan<float> x, RefRouting routing, IReadOnlyList<float[]> w1, IReadOnlyList<float[]> w3,
        IReadOnlyList<float[]> w2, RefExpertActivation activation, int dim, int hidden, RefRoundTo rounding)
    {
        ArgumentNullException.ThrowIfNull(routing);
        ArgumentNullException.ThrowIfNull(w1);
        var permutation = RefMoe.Permute(routing, w1.Count);
        var h = UpGate(x, permutation, routing.Tokens, routing.TopK, w1, w3, activation, dim, hidden, rounding);
        var y = Down(h, permutation, w2, activation, dim, hidden, rounding);
        return Combine(y, permutation, routing, dim);
    }

    private static int CheckExperts(RefPermutation permutation, IReadOnlyList<float[]> a, IReadOnlyList<float[]> b, long length, string aName, string bName)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        int experts = permutation.Counts.Length;
        if (a.Count != experts || b.Count != experts)
            throw new ArgumentException($"RefGroupedExperts: {aName} and {bName} hold {a.Count} and {b.Count} experts, the permutation {experts}", aName);
        for (int e = 0; e < experts; e++)
        {
            Require.Length<float>(a[e], length, $"{aName}[{e}]", "[out, in]");
            Require.Length<float>(b[e], length, $"{bName}[{e}]", "[out, in]");
        }

        return experts;
    }
}
