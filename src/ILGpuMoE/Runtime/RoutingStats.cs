// Per-layer routing statistics a session gathers when asked (InferenceSession.CollectRoutingStats): what the router
// did with every token of every step, prefill and decode alike.
//
// - tokens per expert: the routed (id, weight) pairs each expert received (a Qwen2-MoE shared expert is not counted:
//   every token visits it);
// - dropped: routed slots with no expert (Switch's tokens past an expert's capacity), which keep only the residual;
// - coefficient of variation of the load: std / mean of tokens per expert (0 = perfectly balanced);
// - the Switch auxiliary loss, as Hugging Face's load_balancing_loss_func computes it over these tokens:
//   E * sum_e f_e * P_e, f_e = (tokens whose top-K by router probability include e) / tokens, P_e = mean router
//   softmax probability of e. It is K for a perfectly balanced router (1 for Switch's top-1) and grows with imbalance.
//   f_e is taken from the clean router probabilities, before capacity and noise, as the loss is defined.
namespace ILGpuMoE.Runtime;

public sealed class LayerRoutingStats
{
    private readonly long[] _perExpert, _chosen;
    private readonly double[] _probSum;

    internal LayerRoutingStats(int experts)
    {
        _perExpert = new long[experts];
        _chosen = new long[experts];
        _probSum = new double[experts];
    }

    /// <summary>Routed pairs each expert received.</summary>
    public IReadOnlyList<long> TokensPerExpert => _perExpert;

    /// <summary>Routed slots left without an expert (Switch capacity overflow).</summary>
    public long Dropped { get; private set; }

    /// <summary>Tokens routed through this layer.</summary>
    public long Tokens { get; private set; }

    /// <summary>std / mean of <see cref="TokensPerExpert"/> (population std); 0 when nothing was routed.</summary>
    public double LoadCv
    {
        get
        {
            double mean = _perExpert.Average();
            if (mean == 0)
                return 0;
            double var = _perExpert.Sum(c => (c - mean) * (c - mean)) / _perExpert.Length;
            return Math.Sqrt(var) / mean;
        }
    }

    /// <summary>E * sum_e f_e * P_e (see the file header); 0 before any token.</summary>
    public double AuxLoss
    {
        get
        {
            if (Tokens == 0)
                return 0;
            double sum = 0;
            for (int e = 0; e < _perExpert.Length; e++)
                sum += _chosen[e] / (double)Tokens * (_probSum[e] / Tokens);
            return _perExpert.Length * sum;
        }
    }

    /// <summary>Adds one step: ids [T, slots] (the first k routed), router logits [T, stride] (the first E are the router's).</summary>
    internal void Add(ReadOnlySpan<int> ids, int slots, int k, ReadOnlySpan<float> logits, int stride, int tokens)
    {
        int e = _perExpert.Length;
        var p = new double[e];
        var order = new int[e];
        for (int t = 0; t < tokens; t++)
        {
            for (int j = 0; j < k; j++)
            {
                int id = ids[t * slots + j];
                if (id >= 0 && id < e)
                    _perExpert[id]++;
                else if (id < 0)
                    Dropped++;
            }

            // Softmax of the clean logits in double; top-K by probability with the lower id first on ties.
            var row = logits.Slice(t * stride, e);
            double max = double.NegativeInfinity, z = 0;
            foreach (var l in row)
                max = Math.Max(max, l);
            for (int i = 0; i < e; i++)
                z += p[i] = Math.Exp(row[i] - max);
            for (int i = 0; i < e; i++)
            {
                p[i] /= z;
                _probSum[i] += p[i];
                order[i] = i;
            }

            Array.Sort(order, (a, b) => p[b] != p[a] ? p[b].CompareTo(p[a]) : a.CompareTo(b));
            for (int j = 0; j < k; j++)
                _chosen[order[j]]++;
        }

        Tokens += tokens;
    }

    internal void Reset()
    {
        Array.Clear(_perExpert);
        Array.Clear(_chosen);
        Array.Clear(_probSum);
        Dropped = 0;
        Tokens = 0;
    }
}
