// The host-side description of one RoPE (shared by dense/rope and attention/rope-append): which dims of a head vector
// turn, how they pair up, and at which frequencies. RopeSpec.Full(Dh, theta) is the rotation every family before
// gpt-oss uses (all Dh dims, rotate-half pairs, theta^(-2i/Dh)) and gives the kernels' earlier bits exactly.
//
//   RotaryDim d (even, <= the head vector): dims [Offset, Offset + d) of every head turn; the others pass through.
//   Pairs: rotate-half (Offset + i, Offset + i + d/2) (Hugging Face's rotate_half; gpt-oss and every older family) or
//          interleaved (Offset + 2i, Offset + 2i + 1) (DeepSeek-V3's rope_interleave), i < d/2; pair i turns by
//          pos * inv_freq[i].
//   inv_freq [d/2], double, computed here on the host: theta^(-2i/d), or YaRN (YarnScaling: Hugging Face's
//          _compute_yarn_parameters, transcribed in src/ILGpuMoE.Reference/RefRope.cs) when Yarn is set.
//   cos and sin are both multiplied by CosSinFactor (YaRN's attention factor; 1 without YaRN, an exact no-op).
// DeepSeek's MLA rotates only the last Dr dims of q [T, H, Dn + Dr] and the shared k_rope [T, 1, Dr]: the dense/rope
// launcher takes a head stride per tensor, so q's rope part is (a view of q from Dn, stride Dn + Dr, Offset 0) and
// k_rope (a view from kv_lora_rank of kv_a_proj_with_mqa's output, stride kv_lora_rank + Dr), both in one launch.
namespace ILGpuMoE.Kernels.Dense;

/// <summary>
/// YaRN parameters as a config's rope_scaling / rope_parameters block gives them (after the config's defaults):
/// factor, original_max_position_embeddings, beta_fast, beta_slow, truncate (Hugging Face's default true; gpt-oss says
/// false), attention_factor, mscale, mscale_all_dim (DeepSeek-V3).
/// </summary>
public sealed record YarnScaling(double Factor, int OriginalMaxPositions, double BetaFast = 32, double BetaSlow = 1,
    bool Truncate = true, double? AttentionFactor = null, double Mscale = 0, double MscaleAllDim = 0)
{
    /// <summary>YaRN's magnitude correction: 1 for s &lt;= 1, else 0.1 m ln(s) + 1.</summary>
    public static double MagnitudeScale(double s, double m = 1) => s <= 1 ? 1.0 : 0.1 * m * Math.Log(s) + 1.0;

    /// <summary>
    /// What cos and sin are multiplied by: attention_factor when given, else mscale(factor, mscale) / mscale(factor,
    /// mscale_all_dim) when both are non-zero (DeepSeek-V3: 1 when they are equal), else mscale(factor, 1).
    /// </summary>
    public double CosSinFactor => AttentionFactor
        ?? (Mscale != 0 && MscaleAllDim != 0 ? MagnitudeScale(Factor, Mscale) / MagnitudeScale(Factor, MscaleAllDim) : MagnitudeScale(Factor));

    /// <summary>DeepSeek-V3's factor on the softmax scale qk_head_dim^-0.5: mscale(factor, mscale_all_dim)^2 (1 when mscale_all_dim is 0).</summary>
    public double SoftmaxScaleFactor
    {
        get
        {
            double m = MscaleAllDim != 0 ? MagnitudeScale(Factor, MscaleAllDim) : 1.0;
            return m * m;
        }
    }

    /// <summary>Throws ArgumentException (one line) naming the first field out of range.</summary>
    public void Validate(string who)
    {
        if (!(Factor > 0) || !double.IsFinite(Factor))
            throw new ArgumentException($"{who}: YaRN factor must be positive and finite, got {Factor}", nameof(Factor));
        if (OriginalMaxPositions < 1)
            throw new ArgumentException($"{who}: YaRN original_max_position_embeddings must be >= 1, got {OriginalMaxPositions}", nameof(OriginalMaxPositions));
        if (!(BetaFast > 0) || !(BetaSlow > 0) || !double.IsFinite(BetaFast) || !double.IsFinite(BetaSlow))
            throw new ArgumentException($"{who}: YaRN beta_fast ({BetaFast}) and beta_slow ({BetaSlow}) must be positive and finite", nameof(BetaFast));
        if (!double.IsFinite(Mscale) || !double.IsFinite(MscaleAllDim) || !double.IsFinite(CosSinFactor))
            throw new ArgumentException($"{who}: YaRN attention_factor, mscale and mscale_all_dim must be finite", nameof(AttentionFactor));
    }

    /// <summary>
    /// YaRN's inv_freq [dim/2] over the rotary dim at base theta: per pair a blend of extrapolation theta^(-2i/dim) and
    /// interpolation (the same over factor), the blend a linear ramp over YaRN's correction range of dims.
    /// </summary>
    internal double[] InverseFrequencies(int dim, double theta)
    {
        // The dim whose wavelength makes `turns` full turns over the original context (fractional unless truncated).
        double Boundary(double turns) => dim * Math.Log(OriginalMaxPositions / (turns * 2 * Math.PI)) / (2 * Math.Log(theta));
        double lo = Boundary(BetaFast), hi = Boundary(BetaSlow);
        if (Truncate)
        {
            lo = Math.Floor(lo);
            hi = Math.Ceiling(hi);
        }

        lo = Math.Max(lo, 0);
        hi = Math.Min(hi, dim - 1);
        if (lo == hi)
            hi += 0.001; // a zero-width ramp would divide by zero (Hugging Face's nudge)

        var inv = new double[dim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            double extrapolation = 1.0 / Math.Pow(theta, 2.0 * i / dim);
            double interpolated = Math.Clamp((i - lo) / (hi - lo), 0, 1); // 0: keep the extrapolation, 1: interpolate
            inv[i] = extrapolation / Factor * interpolated + extrapolation * (1 - interpolated);
        }

        return inv;
    }
}

/// <summary>
/// One RoPE: rotary dim d (even) at <see cref="Offset"/> inside each head vector, rotate-half or
/// <see cref="Interleaved"/> pairs, base <see cref="Theta"/> and optional <see cref="Yarn"/> (see the file header).
/// </summary>
public sealed record RopeSpec(int RotaryDim, double Theta)
{
    /// <summary>First rotated dim inside each head vector (DeepSeek's q: Dn when the view starts at the head).</summary>
    public int Offset { get; init; }

    /// <summary>Pairs (2i, 2i + 1) instead of rotate-half (i, i + d/2).</summary>
    public bool Interleaved { get; init; }

    /// <summary>YaRN frequencies and cos/sin factor; null: plain theta^(-2i/d), factor 1.</summary>
    public YarnScaling? Yarn { get; init; }

    /// <summary>Every earlier family's rotation: all Dh dims, rotate-half, plain frequencies.</summary>
    public static RopeSpec Full(int headDim, float theta) => new(headDim, theta);

    /// <summary>The factor cos and sin are multiplied by (1 without YaRN).</summary>
    public double CosSinFactor => Yarn?.CosSinFactor ?? 1.0;

    /// <summary>
    /// inv_freq [d/2] in double: without YaRN exactly <see cref="RopeKernel.InverseFrequencies"/>'s theta^(-2i/d), with
    /// YaRN the blend of src/ILGpuMoE.Reference/RefRope.cs (RefRope.InvFreq).
    /// </summary>
    public double[] InverseFrequencies() => Yarn is null ? RopeKernel.InverseFrequencies(RotaryDim, Theta) : Yarn.InverseFrequencies(RotaryDim, Theta);

    /// <summary>Whether this is <see cref="Full"/> over a head of headDim (what the per-head norm options need).</summary>
    public bool IsFullRotateHalf(int headDim) => RotaryDim == headDim && Offset == 0 && !Interleaved;

    /// <summary>Throws ArgumentException (one line) unless d is positive and even, theta finite and &gt; 1, the YaRN
    /// fields valid and [Offset, Offset + d) inside a head vector of headLength.</summary>
    internal void Check(string who, int headLength)
    {
        if (RotaryDim < 1 || RotaryDim % 2 != 0)
            throw new ArgumentException($"{who}: the rotary dim must be positive and even, got {RotaryDim}", nameof(RotaryDim));
        if (!(Theta > 1) || !double.IsFinite(Theta))
            throw new ArgumentException($"{who}: theta must be finite and > 1, got {Theta}", nameof(Theta));
        if (Offset < 0 || (long)Offset + RotaryDim > headLength)
            throw new ArgumentException($"{who}: rotary dims [{Offset}, {(long)Offset + RotaryDim}) do not fit a head vector of {headLength}", nameof(Offset));
        Yarn?.Validate(who);
    }

    /// <summary>The kernels' form: d/2, offset, pair layout, f32 cos/sin factor and the head strides of q and k.</summary>
    internal RopeGeometry Geometry(int qStride, int kStride) => new()
    {
        Half = RotaryDim / 2,
        Offset = Offset,
        Interleaved = Interleaved ? 1 : 0,
        QStride = qStride,
        KStride = kStride,
        Factor = (float)CosSinFactor,
    };
}

/// <summary>
/// The device form of a <see cref="RopeSpec"/> plus the head strides: pair i of a head starting at b is
/// (b + Offset + i, b + Offset + i + Half), or (b + Offset + 2i, b + Offset + 2i + 1) when Interleaved != 0.
/// </summary>
public struct RopeGeometry
{
    /// <summary>d/2: rotated pairs per head.</summary>
    public int Half;

    /// <summary>First rotated dim inside the head vector.</summary>
    public int Offset;

    /// <summary>1: interleaved pairs; 0: rotate-half.</summary>
    public int Interleaved;

    /// <summary>Floats from one q (k) head vector to the next.</summary>
    public int QStride;

    public int KStride;

    /// <summary>cos and sin are multiplied by this (1: exactly the plain rotation).</summary>
    public float Factor;

    /// <summary>Head-relative indices of pair i.</summary>
    public readonly int Lo(int i) => Offset + (Interleaved != 0 ? 2 * i : i);

    public readonly int Hi(int i) => Offset + (Interleaved != 0 ? 2 * i + 1 : i + Half);
}
