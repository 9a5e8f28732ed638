// The MoE block as mistral-inference writes it: a loop over experts, each applied to the tokens routed to it.
namespace ILGpuMoE.Reference;

public static partial class RefMoe
{
    public static partial float[] MoeBlock(ReadOnlySpan<float> x, RefRouting routing, IReadOnlyList<float[]> w1,
        IReadOnlyList<float[]> w3, IReadOnlyList<float[]> w2, int tokens, int dim, int hidden)
    {
        ArgumentNullException.ThrowIfNull(routing);
        ArgumentNullException.ThrowIfNull(w1);
        ArgumentNullException.ThrowIfNull(w3);
        ArgumentNullException.ThrowIfNull(w2);
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive(dim, nameof(dim));
        Require.Positive(hidden, nameof(hidden));
        Require.Length(x, (long)tokens * dim, nameof(x), "[T, D]");
        int experts = w1.Count;
        if (experts == 0 || w3.Count != experts || w2.Count != experts)
            throw new ArgumentException($"MoeBlock: w1, w3, w2 hold {w1.Count}, {w3.Count}, {w2.Count} experts; they must be equal and non-zero.", nameof(w1));
        for (int e = 0; e < experts; e++)
        {
            Require.Length<float>(w1[e], (long)hidden * dim, $"w1[{e}]", "[F, D]");
            Require.Length<float>(w3[e], (long)hidden * dim, $"w3[{e}]", "[F, D]");
            Require.Length<float>(w2[e], (long)dim * hidden, $"w2[{e}]", "[D, F]");
        }

        if (routing.Tokens != tokens)
            throw new ArgumentException($"MoeBlock: routing has {routing.Tokens} tokens, x has {tokens}.", nameof(routing));
        CheckIds(routing, experts, "MoeBlock");

        int k = routing.TopK;
        var acc = new double[tokens * dim];
        var h = new double[hidden];
        for (int e = 0; e < experts; e++)
        {
            for (int t = 0; t < tokens; t++)
            {
                for (int slot = 0; slot < k; slot++)
                {
                    if (routing.ExpertIds[t * k + slot] != e)
                        continue;
                    var xt = x.Slice(t * dim, dim);
                    for (int f = 0; f < hidden; f++)
                    {
                        double g = RefOps.Dot(xt, w1[e].AsSpan(f * dim, dim));
                        double u = RefOps.Dot(xt, w3[e].AsSpan(f * dim, dim));
                        h[f] = RefOps.Silu(g) * u;
                    }

                    double weight = routing.Weights[t * k + slot];
                    for (int d = 0; d < dim; d++)
                    {
                        var row = w2[e].AsSpan(d * hidden, hidden);
                        double y = 0;
                        for (int f = 0; f < hidden; f++)
                            y += row[f] * h[f];
                        acc[t * dim + d] += weight * y;
                    }
                }
            }
        }

        var output = new float[acc.Length];
        for (int i = 0; i < acc.Length; i++)
            output[i] = (float)acc[i];
        return output;
    }
}
