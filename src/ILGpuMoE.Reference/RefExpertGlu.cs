// gpt-oss's expert MLP as plain loops with double accumulation (the kernels' ExpertGlu, kernels/ILGpuMoE.Kernels/Moe/
// GroupedGemm/ExpertGlu.cs), in the [out, in] orientation of the kernels (gate and up de-interleaved):
//   g = x . W1[e, f] + bg[e, f];  u = x . W3[e, f] + bu[e, f];  g = min(g, limit);  u = clamp(u, -limit, limit)
//   h_f = (u + 1) * g * sigmoid(alpha * g);  y_e = W2[e] h + b2[e];  out[t] = sum_k weight_k * y_{e_k}
// (RefModel's gpt-oss layer, RefModelFamilies.cs, computes the same per token inside the whole model.)
// Shapes: T tokens, K experts per token, D model dim, F expert hidden; W1, W3 [F, D] and W2 [D, F] per expert;
// biases bg, bu [F] and b2 [D] per expert (null = zero). Expert id -1 is a dropped pair (skipped).
namespace ILGpuMoE.Reference;

public static class RefExpertGlu
{
    /// <summary>h [F] of one token through one expert (gate/up projections, biases, clamps, GLU); double inside.</summary>
    public static float[] UpGate(ReadOnlySpan<float> x, float[] w1, float[] w3, float[]? gateBias, float[]? upBias,
        int dim, int hidden, double alpha, double limit)
    {
        Require.Length(x, dim, nameof(x), "[D]");
        Require.Length<float>(w1, (long)hidden * dim, nameof(w1), "[F, D]");
        Require.Length<float>(w3, (long)hidden * dim, nameof(w3), "[F, D]");
        var h = new float[hidden];
        for (int f = 0; f < hidden; f++)
        {
            double g = RefOps.Dot(x, w1.AsSpan(f * dim, dim)) + (gateBias?[f] ?? 0f);
            double u = RefOps.Dot(x, w3.AsSpan(f * dim, dim)) + (upBias?[f] ?? 0f);
            g = Math.Min(g, limit);
            u = Math.Clamp(u, -limit, limit);
            h[f] = (float)((u + 1) * g / (1 + Math.Exp(-alpha * g)));
        }

        return h;
    }

    /// <summary>y [D] = W2 h + b2 (double accumulation, rounded once).</summary>
    public static float[] Down(ReadOnlySpan<float> h, float[] w2, float[]? downBias, int dim, int hidden)
    {
        Require.Length(h, hidden, nameof(h), "[F]");
        Require.Length<float>(w2, (long)dim * hidden, nameof(w2), "[D, F]");
        var y = new float[dim];
        for (int d = 0; d < dim; d++)
            y[d] = (float)(RefOps.Dot(h, w2.AsSpan(d * hidden, hidden)) + (downBias?[d] ?? 0f));
        return y;
    }

    /// <summary>
    /// out [T, D] = sum over each token's pairs (e_k &gt;= 0) of weight_k * (W2[e] h + b2[e]), h from <see cref="UpGate"/>;
    /// every step in double (h and y are not rounded between the passes here).
    /// </summary>
    public static float[] MoeBlock(ReadOnlySpan<float> x, RefRouting routing, IReadOnlyList<float[]> w1, IReadOnlyList<float[]> w3,
        IReadOnlyList<float[]> w2, float[][]? gateBias, float[][]? upBias, float[][]? downBias, int tokens, int dim, int hidden,
        double alpha, double limit)
    {
        ArgumentNullException.ThrowIfNull(routing);
        Require.Length(x, (long)tokens * dim, nameof(x), "[T, D]");
        int k = routing.TopK, experts = w1.Count;
        var output = new float[tokens * dim];
        var h = new double[hidden];
        for (int t = 0; t < tokens; t++)
        {
            var xt = x.Slice(t * dim, dim);
            var acc = new double[dim];
            for (int s = 0; s < k; s++)
            {
                int e = routing.ExpertIds[t * k + s];
                if (e < 0)
                    continue;
                if (e >= experts)
                    throw new ArgumentException($"RefExpertGlu.MoeBlock: expert id {e} is out of range for E = {experts}", nameof(routing));
                for (int f = 0; f < hidden; f++)
                {
                    double g = RefOps.Dot(xt, w1[e].AsSpan(f * dim, dim)) + (gateBias?[e][f] ?? 0f);
                    double u = RefOps.Dot(xt, w3[e].AsSpan(f * dim, dim)) + (upBias?[e][f] ?? 0f);
                    g = Math.Min(g, limit);
                    u = Math.Clamp(u, -limit, limit);
                    h[f] = (u + 1) * g / (1 + Math.Exp(-alpha * g));
                }

                double wk = routing.Weights[t * k + s];
                for (int d = 0; d < dim; d++)
                {
                    var row = w2[e].AsSpan(d * hidden, hidden);
                    double y = downBias?[e][d] ?? 0f;
                    for (int f = 0; f < hidden; f++)
                        y += row[f] * h[f];
                    acc[d] += wk * y;
                }
            }

            for (int d = 0; d < dim; d++)
                output[t * dim + d] = (float)acc[d];
        }

        return output;
    }
}
