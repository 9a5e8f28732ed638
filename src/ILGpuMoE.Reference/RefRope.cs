// RoPE with YaRN scaling and the generalised attention (RefOps.GeneralAttention) the gpt-oss and DeepSeek-V3 oracles need, transcribing
// Hugging Face transformers (modeling_rope_utils.py _compute_yarn_parameters, newest version; modeling_gpt_oss.py;
// modeling_deepseek_v3.py). Frequencies and scales in double.
//
// YaRN over a rotary dim d (Dh for gpt-oss, qk_rope_head_dim for DeepSeek-V3), base theta:
//   pos_freq_i = theta^(2i/d), extrapolation 1/pos_freq_i, interpolation 1/(factor * pos_freq_i), i < d/2
//   corr(r) = d * ln(original_max_position_embeddings / (2 pi r)) / (2 ln theta)
//   low = corr(beta_fast), high = corr(beta_slow); floored / ceiled only when truncate (default true; gpt-oss sets
//   false, llama.cpp always rounds); low = max(low, 0), high = min(high, d - 1); high += 0.001 when equal
//   ramp_i = clamp((i - low) / (high - low), 0, 1); e_i = 1 - ramp_i
//   inv_freq_i = interpolation_i * (1 - e_i) + extrapolation_i * e_i
//   cos and sin are both multiplied by attention_factor = given, else mscale(factor, mscale) / mscale(factor,
//   mscale_all_dim) when both are set and non-zero, else mscale(factor, 1); mscale(s, m) = 1 if s <= 1 else
//   0.1 m ln(s) + 1.
//   factor comes from the rope block; only when it is absent, max_position_embeddings / original_max_position_embeddings
//   (older releases always took that ratio when original_max_position_embeddings was given: equal for the released
//   checkpoints).
// DeepSeek-V3 also multiplies the softmax scale qk_head_dim^-0.5 by mscale(factor, mscale_all_dim)^2 when rope
// scaling is set and mscale_all_dim is non-zero (RefYarn.SoftmaxScale).
// Pair layouts: rotate-half pairs (i, i + d/2) (gpt-oss, every older family); interleaved pairs (2i, 2i + 1)
// (DeepSeek-V3's rope_interleave: Hugging Face de-interleaves q and k the same way before a rotate-half, which only
// permutes the rotated dims of both, so every q.k dot product equals the interleaved form's).
namespace ILGpuMoE.Reference;

/// <summary>YaRN parameters as the rope_scaling / rope_parameters block gives them (after the config's defaults).</summary>
public sealed record RefYarn(double Factor, int OriginalMaxPositions, double BetaFast = 32, double BetaSlow = 1,
    bool Truncate = true, double? AttentionFactor = null, double Mscale = 0, double MscaleAllDim = 0)
{
    /// <summary>mscale(s, m) = 1 if s &lt;= 1 else 0.1 m ln(s) + 1.</summary>
    public static double GetMscale(double scale, double mscale = 1) => scale <= 1 ? 1.0 : 0.1 * mscale * Math.Log(scale) + 1.0;

    /// <summary>The factor cos and sin are multiplied by.</summary>
    public double CosSinFactor => AttentionFactor
        ?? (Mscale != 0 && MscaleAllDim != 0 ? GetMscale(Factor, Mscale) / GetMscale(Factor, MscaleAllDim) : GetMscale(Factor));

    /// <summary>DeepSeek-V3's factor on the softmax scale: mscale(factor, mscale_all_dim)^2, 1 when mscale_all_dim is 0.</summary>
    public double SoftmaxScale => MscaleAllDim != 0 ? GetMscale(Factor, MscaleAllDim) * GetMscale(Factor, MscaleAllDim) : 1.0;

    /// <summary>The correction range (low, high) over dim rotary dims (before the equal-bounds nudge).</summary>
    public (double Low, double High) CorrectionRange(int dim, double theta)
    {
        double Corr(double rotations) => dim * Math.Log(OriginalMaxPositions / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
        double low = Corr(BetaFast), high = Corr(BetaSlow);
        if (Truncate)
            (low, high) = (Math.Floor(low), Math.Ceiling(high));
        return (Math.Max(low, 0), Math.Min(high, dim - 1));
    }

    /// <summary>Throws ArgumentException naming the first invalid field.</summary>
    public void Validate()
    {
        if (!(Factor > 0) || !double.IsFinite(Factor))
            throw new ArgumentException($"YaRN factor = {Factor} must be positive and finite.", nameof(Factor));
        Require.Positive(OriginalMaxPositions, nameof(OriginalMaxPositions));
        if (!(BetaFast > 0) || !(BetaSlow > 0) || !double.IsFinite(BetaFast) || !double.IsFinite(BetaSlow))
            throw new ArgumentException($"YaRN beta_fast = {BetaFast} and beta_slow = {BetaSlow} must be positive and finite.", nameof(BetaFast));
        if (!double.IsFinite(CosSinFactor) || !double.IsFinite(Mscale) || !double.IsFinite(MscaleAllDim))
            throw new ArgumentException($"YaRN attention_factor / mscale / mscale_all_dim must be finite.", nameof(AttentionFactor));
    }
}

public static class RefRope
{
    /// <summary>inv_freq [dim / 2] of plain RoPE (theta^(-2i/dim)) or of YaRN when <paramref name="yarn"/> is set.</summary>
    public static double[] InvFreq(int dim, double theta, RefYarn? yarn)
    {
        Require.Positive(dim, nameof(dim));
        var inv = new double[dim / 2];
        double low = 0, high = 0;
        if (yarn is not null)
        {
            (low, high) = yarn.CorrectionRange(dim, theta);
            if (low == high)
                high += 0.001;  // as Hugging Face: prevents a zero-width ramp
        }

        for (int i = 0; i < inv.Length; i++)
        {
            double extrapolation = 1.0 / Math.Pow(theta, 2.0 * i / dim);
            if (yarn is null)
            {
                inv[i] = extrapolation;
                continue;
            }

            double interpolation = extrapolation / yarn.Factor;
            double e = 1 - Math.Clamp((i - low) / (high - low), 0, 1);
            inv[i] = interpolation * (1 - e) + extrapolation * e;
        }

        return inv;
    }

    /// <summary>Rotates, in place, dims [offset, offset + invFreq.Length * 2) of every head vector of x
    /// [T, heads, stride] at its token's position; cos and sin are multiplied by <paramref name="cosSinFactor"/>.
    /// Pairs are (i, i + d/2) or, when <paramref name="interleaved"/>, (2i, 2i + 1); pair i turns by pos * invFreq[i].</summary>
    public static void Apply(float[] x, ReadOnlySpan<int> positions, int tokens, int heads, int stride, int offset,
        double[] invFreq, double cosSinFactor, bool interleaved)
    {
        int half = invFreq.Length, dim = 2 * half;
        if (offset < 0 || offset + dim > stride)
            throw new ArgumentException($"RefRope.Apply: rotary dims [{offset}, {offset + dim}) exceed the head vector of {stride}.", nameof(offset));
        Require.Length<float>(x, (long)tokens * heads * stride, nameof(x), "[T, heads, stride]");
        Require.Length(positions, tokens, nameof(positions), "[T]");
        for (int t = 0; t < tokens; t++)
        {
            for (int i = 0; i < half; i++)
            {
                double a = positions[t] * invFreq[i];
                double c = Math.Cos(a) * cosSinFactor, s = Math.Sin(a) * cosSinFactor;
                int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + half;
                for (int h = 0; h < heads; h++)
                {
                    int b = (t * heads + h) * stride + offset;
                    double x0 = x[b + i0], x1 = x[b + i1];
                    x[b + i0] = (float)(x0 * c - x1 * s);
                    x[b + i1] = (float)(x1 * c + x0 * s);
                }
            }
        }
    }
}

public static partial class RefOps
{
    /// <summary>Each of the <paramref name="count"/> [rows, cols] matrices of w transposed: [count, cols, rows]
    /// (gpt-oss' input-major expert parameters to and from the [out, in] rows used everywhere else).</summary>
    public static float[] TransposeEach(ReadOnlySpan<float> w, int count, int rows, int cols)
    {
        Require.Length(w, (long)count * rows * cols, nameof(w), "[count, rows, cols]");
        var o = new float[w.Length];
        for (long z = 0; z < count; z++)
        {
            for (long i = 0; i < rows; i++)
            {
                for (long j = 0; j < cols; j++)
                    o[(z * cols + j) * rows + i] = w[(int)((z * rows + i) * cols + j)];
            }
        }

        return o;
    }

    /// <summary>Causal attention of q [T, H, Dqk] over the cache k [S, Hkv, Dqk], v [S, Hkv, Dv] (query t at
    /// queryPos[t] sees keys j &lt;= pos with pos - j &lt; window when window &gt; 0), softmax scale
    /// <paramref name="scale"/>; with <paramref name="sinks"/> [H] (gpt-oss) each head's softmax row gets one extra
    /// logit sinks[h] that takes probability mass and adds no value. Returns [T, H, Dv].</summary>
    public static float[] GeneralAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        ReadOnlySpan<int> queryPos, int tokens, int keys, int heads, int kvHeads, int qkDim, int vDim, double scale,
        int window, ReadOnlySpan<float> sinks)
    {
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive((keys, nameof(keys)), (heads, nameof(heads)), (kvHeads, nameof(kvHeads)), (qkDim, nameof(qkDim)), (vDim, nameof(vDim)));
        Require.MultipleOf(heads, kvHeads, "Attention", nameof(heads), nameof(kvHeads));
        Require.Length(q, (long)tokens * heads * qkDim, nameof(q), "[T, H, Dqk]");
        Require.Length(k, (long)keys * kvHeads * qkDim, nameof(k), "[S, Hkv, Dqk]");
        Require.Length(v, (long)keys * kvHeads * vDim, nameof(v), "[S, Hkv, Dv]");
        Require.Length(queryPos, tokens, nameof(queryPos), "[T]");
        if (!sinks.IsEmpty)
            Require.Length(sinks, heads, nameof(sinks), "[H]");
        int group = heads / kvHeads;
        var y = new float[tokens * heads * vDim];
        var score = new double[keys];
        var acc = new double[vDim];
        for (int t = 0; t < tokens; t++)
        {
            int pos = queryPos[t];
            if ((uint)pos >= (uint)keys)
                throw new ArgumentException($"GeneralAttention: queryPos[{t}] = {pos} is outside the keys [0, {keys}).", nameof(queryPos));
            int first = window > 0 ? Math.Max(0, pos - window + 1) : 0;
            for (int h = 0; h < heads; h++)
            {
                var qh = q.Slice((t * heads + h) * qkDim, qkDim);
                int kvh = h / group;
                double max = sinks.IsEmpty ? double.NegativeInfinity : sinks[h];
                for (int j = first; j <= pos; j++)
                {
                    score[j] = RefOps.Dot(qh, k.Slice((j * kvHeads + kvh) * qkDim, qkDim)) * scale;
                    max = Math.Max(max, score[j]);
                }

                double sum = sinks.IsEmpty ? 0 : Math.Exp(sinks[h] - max);
                Array.Clear(acc);
                for (int j = first; j <= pos; j++)
                {
                    double p = Math.Exp(score[j] - max);
                    sum += p;
                    var vj = v.Slice((j * kvHeads + kvh) * vDim, vDim);
                    for (int d = 0; d < vDim; d++)
                        acc[d] += p * vj[d];
                }

                for (int d = 0; d < vDim; d++)
                    y[(t * heads + h) * vDim + d] = (float)(acc[d] / sum);
            }
        }

        return y;
    }
}
