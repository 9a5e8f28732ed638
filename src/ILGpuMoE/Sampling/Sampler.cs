// Host-side sampling of the next token from one row of logits [V].
//
// Why on the host: one row of V floats (128 KB for V = 32000) per decode step is cheap to copy next to a forward pass
// that reads gigabytes of weights, and a host sampler is trivially identical on every backend, which keeps runs
// reproducible across CUDA and the CPU accelerator for a given seed.
//
// Order of operations (as Hugging Face's generate applies its warpers): temperature, then top-k, then top-p (nucleus)
// over the renormalised survivors, then a draw. Temperature 0 is greedy (argmax, ties toward the lower id).
namespace ILGpuMoE.Sampling;

public sealed record SamplingOptions(float Temperature = 0.7f, int TopK = 50, float TopP = 0.9f, ulong Seed = 1)
{
    /// <summary>Throws ArgumentException naming the bad option.</summary>
    public void Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0)
            throw new ArgumentException($"--temperature must be >= 0 (got {Temperature})");
        if (TopK < 0)
            throw new ArgumentException($"--top-k must be >= 0, 0 meaning off (got {TopK})");
        if (!float.IsFinite(TopP) || TopP <= 0 || TopP > 1)
            throw new ArgumentException($"--top-p must be in (0, 1] (got {TopP})");
    }
}

public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private ulong _state;
    private int[] _order = [];
    private double[] _probs = [];

    public Sampler(SamplingOptions options)
    {
        options.Validate();
        _options = options;
        // splitmix64 seeding: seeds 0, 1, 2 give unrelated streams.
        _state = options.Seed ^ 0x9E3779B97F4A7C15UL;
    }

    /// <summary>Index of the largest logit, ties toward the lower id. NaN logits are an error, never a token.</summary>
    public static int Argmax(ReadOnlySpan<float> logits)
    {
        if (logits.IsEmpty)
            throw new ArgumentException("empty logits");
        int best = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            if (float.IsNaN(logits[i]))
                throw new InvalidOperationException($"logit {i} is NaN: the forward pass produced an invalid value");
            if (logits[i] > logits[best])
                best = i;
        }

        return best;
    }

    /// <summary>Draws the next token id from logits [V].</summary>
    public int Next(ReadOnlySpan<float> logits)
    {
        if (_options.Temperature == 0)
            return Argmax(logits);

        int v = logits.Length;
        if (_order.Length != v)
        {
            _order = new int[v];
            _probs = new double[v];
        }

        // Softmax at temperature (double, max-subtracted).
        double max = logits[Argmax(logits)];
        double inv = 1.0 / _options.Temperature;
        for (int i = 0; i < v; i++)
        {
            _order[i] = i;
            _probs[i] = Math.Exp((logits[i] - max) * inv);
        }

        // Candidates sorted by probability, ties toward the lower id (stable and deterministic).
        var probs = _probs;
        Array.Sort(_order, (a, b) => probs[b] != probs[a] ? probs[b].CompareTo(probs[a]) : a.CompareTo(b));
        int keep = _options.TopK > 0 ? Math.Min(_options.TopK, v) : v;

        double total = 0;
        for (int i = 0; i < keep; i++)
            total += probs[_order[i]];

        // Nucleus: the smallest prefix whose mass reaches top-p of the kept mass (always at least one token).
        if (_options.TopP < 1)
        {
            double target = _options.TopP * total, run = 0;
            int n = 0;
            while (n < keep)
            {
                run += probs[_order[n++]];
                if (run >= target)
                    break;
            }

            keep = n;
            total = run;
        }

        double r = NextDouble() * total, acc = 0;
        for (int i = 0; i < keep; i++)
        {
            acc += probs[_order[i]];
            if (r < acc)
                return _order[i];
        }

        return _order[keep - 1];
    }

    /// <summary>Uniform in [0, 1) from splitmix64 (53 bits).</summary>
    private double NextDouble()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53));
    }
}
