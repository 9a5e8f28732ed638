// Router modes of the oracle (semantics in ContractMoe.cs). Scores are double; top-k is a repeated arg-max that
// scans experts in ascending id with a strict '>', so equal scores go to the lower id and the ids come out in
// selection order (descending score).
namespace ILGpuMoE.Reference;

public static partial class RefMoe
{
    public static partial RefRouting Route(RefRouterSpec spec, ReadOnlySpan<float> logits, int tokens,
        ReadOnlySpan<float> noiseLogits, ReadOnlySpan<float> bias)
    {
        ArgumentNullException.ThrowIfNull(spec);
        int e = spec.Experts, k = spec.TopK, m = spec.SharedSlots;
        Require.Positive(e, "spec.Experts");
        if (k < 1 || k > e)
            throw new ArgumentException($"Route: spec.TopK = {k} must be in [1, Experts = {e}].", nameof(spec));
        Require.NonNegative(m, "spec.SharedSlots");
        if (m > 0 && spec.Kind is not (RouterKind.Mixtral or RouterKind.SoftmaxTopK or RouterKind.DeepSeekV3))
            throw new ArgumentException($"Route: shared-expert slots are defined for the Mixtral, SoftmaxTopK and DeepSeekV3 routers only, not {spec.Kind}.", nameof(spec));
        Require.NonNegative(tokens, nameof(tokens));
        // With gated shared slots a row holds the E router logits, then the shared-expert gate's logit.
        bool gated = m > 0 && spec.Kind != RouterKind.DeepSeekV3;
        int cols = gated ? e + 1 : e, slots = k + m;
        Require.Length(logits, (long)tokens * cols, nameof(logits), gated ? "[T, E + 1]" : "[T, E]");
        RequireFinite(logits, cols, nameof(logits));

        var ids = new int[tokens * slots];
        var weights = new float[tokens * slots];
        int dropped = 0;
        var score = new double[e];
        var pick = new int[k];
        switch (spec.Kind)
        {
            case RouterKind.Mixtral:
            case RouterKind.SoftmaxTopK:
                for (int t = 0; t < tokens; t++)
                {
                    SoftmaxRow(logits.Slice(t * cols, e), score);
                    TopK(score, null, pick);
                    double sum = 0;
                    foreach (int id in pick)
                        sum += score[id];
                    double norm = spec.Kind == RouterKind.Mixtral ? sum : 1.0;
                    Store(t, pick, i => score[pick[i]] / norm);
                    if (m > 0)
                    {
                        // Hugging Face: F.sigmoid(shared_expert_gate(x)) on the F32 logit; here in double, rounded once.
                        float gate = (float)(1.0 / (1.0 + Math.Exp(-(double)logits[t * cols + e])));
                        for (int j = 0; j < m; j++)
                        {
                            ids[t * slots + k + j] = e + j;
                            weights[t * slots + k + j] = gate;
                        }
                    }
                }

                break;

            case RouterKind.Switch:
            {
                if (k != 1)
                    throw new ArgumentException($"Route: Switch routes top-1, but spec.TopK = {k}.", nameof(spec));
                int capacity = SwitchCapacity(tokens, spec.CapacityFactor, e);
                var load = new int[e];
                for (int t = 0; t < tokens; t++)
                {
                    SoftmaxRow(logits.Slice(t * e, e), score);
                    TopK(score, null, pick);
                    if (load[pick[0]] < capacity)
                    {
                        load[pick[0]]++;
                        Store(t, pick, _ => score[pick[0]]);
                    }
                    else
                    {
                        ids[t] = -1;
                        weights[t] = 0;
                        dropped++;
                    }
                }

                break;
            }

            case RouterKind.NoisyTopK:
                Require.Length(noiseLogits, (long)tokens * e, nameof(noiseLogits), "[T, E] (NoisyTopK)");
                RequireFinite(noiseLogits, e, nameof(noiseLogits));
                for (int t = 0; t < tokens; t++)
                {
                    for (int x = 0; x < e; x++)
                        score[x] = logits[t * e + x] + RefNoise.Normal(spec.NoiseSeed, t, x) * Softplus(noiseLogits[t * e + x]);
                    TopK(score, null, pick);
                    double max = score[pick[0]], sum = 0;
                    foreach (int id in pick)
                        sum += Math.Exp(score[id] - max);
                    Store(t, pick, i => Math.Exp(score[pick[i]] - max) / sum);
                }

                break;

            case RouterKind.DeepSeekV3:
            {
                int groups = spec.Groups, keep = spec.TopKGroups;
                if (groups < 1 || e % groups != 0)
                    throw new ArgumentException($"Route: spec.Groups = {groups} must be positive and divide Experts = {e}.", nameof(spec));
                int size = e / groups;
                if (keep < 1 || keep > groups)
                    throw new ArgumentException($"Route: spec.TopKGroups = {keep} must be in [1, Groups = {groups}].", nameof(spec));
                if (k > keep * size)
                    throw new ArgumentException($"Route: spec.TopK = {k} exceeds the {keep * size} experts in the kept groups.", nameof(spec));
                Require.Length(bias, e, nameof(bias), "[E] (DeepSeekV3)");
                RequireFinite(bias, e, nameof(bias));
                var s = new double[e];
                var groupScore = new double[groups];
                var keptGroups = new int[keep];
                var allowed = new bool[e];
                var top2 = new int[Math.Min(2, size)];
                for (int t = 0; t < tokens; t++)
                {
                    for (int x = 0; x < e; x++)
                    {
                        s[x] = 1.0 / (1.0 + Math.Exp(-(double)logits[t * e + x]));
                        score[x] = s[x] + bias[x];
                    }

                    for (int g = 0; g < groups; g++)
                    {
                        var groupChoice = score.AsSpan(g * size, size);
                        TopK(groupChoice, null, top2);
                        groupScore[g] = 0;
                        foreach (int i in top2)
                            groupScore[g] += groupChoice[i];
                    }

                    TopK(groupScore, null, keptGroups);
                    Array.Clear(allowed);
                    foreach (int g in keptGroups)
                        allowed.AsSpan(g * size, size).Fill(true);
                    TopK(score, allowed, pick);
                    double sum = 0;
                    foreach (int id in pick)
                        sum += s[id];
                    double norm = spec.NormTopK ? sum : 1.0;
                    Store(t, pick, i => s[pick[i]] / norm * spec.ScalingFactor);
                    // Hugging Face adds the shared experts' output unweighted (and unscaled).
                    for (int j = 0; j < m; j++)
                    {
                        ids[t * slots + k + j] = e + j;
                        weights[t * slots + k + j] = 1f;
                    }
                }

                break;
            }

            default:
                throw new ArgumentException($"Route: unknown router kind {spec.Kind}.", nameof(spec));
        }

        return new RefRouting(ids, weights, tokens, slots, dropped);

        void Store(int t, int[] chosen, Func<int, double> weight)
        {
            for (int i = 0; i < chosen.Length; i++)
            {
                ids[t * slots + i] = chosen[i];
                weights[t * slots + i] = (float)weight(i);
            }
        }
    }

    /// <summary>Switch capacity per expert: ceil(T * capacityFactor / E), computed in double.</summary>
    public static int SwitchCapacity(int tokens, double capacityFactor, int experts)
    {
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive(experts, nameof(experts));
        if (!(capacityFactor > 0) || !double.IsFinite(capacityFactor))
            throw new ArgumentException($"Switch capacityFactor = {capacityFactor} must be a positive finite number.", nameof(capacityFactor));
        return (int)Math.Ceiling(tokens * capacityFactor / experts);
    }

    /// <summary>softplus(x) = ln(1 + e^x), evaluated without overflow.</summary>
    public static double Softplus(double x) => x > 0 ? x + Math.Log(1.0 + Math.Exp(-x)) : Math.Log(1.0 + Math.Exp(x));

    /// <summary>Fills pick with the indices of the pick.Length largest scores (only where allowed, if given), in
    /// descending score, equal scores toward the lower index.</summary>
    private static void TopK(ReadOnlySpan<double> score, bool[]? allowed, Span<int> pick)
    {
        Span<bool> taken = stackalloc bool[score.Length];
        for (int i = 0; i < pick.Length; i++)
        {
            int best = -1;
            for (int x = 0; x < score.Length; x++)
            {
                if (taken[x] || (allowed != null && !allowed[x]))
                    continue;
                if (best < 0 || score[x] > score[best])
                    best = x;
            }

            taken[best] = true;
            pick[i] = best;
        }
    }

    private static void SoftmaxRow(ReadOnlySpan<float> row, double[] p)
    {
        double max = double.NegativeInfinity;
        foreach (float v in row)
            max = Math.Max(max, v);
        double sum = 0;
        for (int i = 0; i < row.Length; i++)
            sum += p[i] = Math.Exp(row[i] - max);
        for (int i = 0; i < row.Length; i++)
            p[i] /= sum;
    }

    private static void RequireFinite(ReadOnlySpan<float> a, int cols, string name)
    {
        for (int i = 0; i < a.Length; i++)
        {
            if (!float.IsFinite(a[i]))
                throw new ArgumentException($"Route: {name}[{i / cols}, {i % cols}] = {a[i]} is not finite.", name);
        }
    }
}
