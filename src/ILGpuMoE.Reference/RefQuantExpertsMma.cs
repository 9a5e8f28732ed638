// The grouped expert passes row by row, as the tensor-core kernels over packed experts compute them
// (kernels/ILGpuMoE.Kernels/Quant/QuantGroupedGemmMma.cs): weights are the dequantized experts (exact F32 values), and
// with ActivationRounding.Bf16 the activations (x for up-gate, h for down) are first rounded to BF16, round to nearest
// even, which is what the kernel feeds the mma; the products and sums are then in double, rounded once. With
// ActivationRounding.None this is the plain oracle (RefOps.MatMulT / SwiGlu), so a test can hold a kernel to ~1e-5
// against the rounded form and show how far BF16 activations move it from the plain one.
// Shapes: rows in the permutation's sorted order; x [T, D]; h [P, F]; w1, w3 [E][F, D]; w2 [E][D, F].
namespace ILGpuMoE.Reference;

/// <summary>What the reference does to the activations before a matmul.</summary>
public enum ActivationRounding
{
    /// <summary>F32 as given (the plain oracle).</summary>
    None,

    /// <summary>Each activation rounded to BF16 (round to nearest even, NaN kept), as a BF16 mma's A operand.</summary>
    Bf16,
}

public static class RefQuantExpertsMma
{
    /// <summary>x rounded to the nearest BF16 (ties to even), returned as F32; NaN stays NaN, infinities stay.</summary>
    public static float RoundToBf16(float x)
    {
        if (float.IsNaN(x))
            return x;
        uint bits = BitConverter.SingleToUInt32Bits(x);
        uint rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
        return BitConverter.UInt32BitsToSingle(rounded);
    }

    /// <summary>The activations as the rounding leaves them.</summary>
    public static float[] Round(ReadOnlySpan<float> a, ActivationRounding rounding)
    {
        var o = new float[a.Length];
        for (int i = 0; i < a.Length; i++)
        {
            o[i] = rounding switch
            {
                ActivationRounding.None => a[i],
                ActivationRounding.Bf16 => RoundToBf16(a[i]),
                _ => throw new ArgumentOutOfRangeException(nameof(rounding), rounding, "unknown activation rounding"),
            };
        }

        return o;
    }

    /// <summary>
    /// h [rows, F]: row r = silu(x_s . w1[e]) * (x_s . w3[e]) with s = source[r] (a row of x), e = expert[r]; x rounded
    /// first by the given rounding.
    /// </summary>
    public static float[] UpGate(ReadOnlySpan<float> x, IReadOnlyList<int> source, IReadOnlyList<int> expert, IReadOnlyList<float[]> w1,
        IReadOnlyList<float[]> w3, int dim, int hidden, ActivationRounding rounding)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(expert);
        ArgumentNullException.ThrowIfNull(w1);
        ArgumentNullException.ThrowIfNull(w3);
        Require.Positive(dim, nameof(dim));
        Require.Positive(hidden, nameof(hidden));
        if (source.Count != expert.Count)
            throw new ArgumentException($"UpGate: {source.Count} sources but {expert.Count} experts", nameof(expert));
        var xr = Round(x, rounding);
        var h = new float[source.Count * hidden];
        for (int r = 0; r < source.Count; r++)
        {
            if (source[r] < 0 || ((long)source[r] + 1) * dim > xr.Length)
                throw new ArgumentException($"UpGate: source row {source[r]} is outside x [{xr.Length / dim}, {dim}]", nameof(source));
            var xs = xr.AsSpan(source[r] * dim, dim);
            float[] a = w1[expert[r]], b = w3[expert[r]];
            Require.Length<float>(a, (long)hidden * dim, "w1[e]", "[F, D]");
            Require.Length<float>(b, (long)hidden * dim, "w3[e]", "[F, D]");
            for (int f = 0; f < hidden; f++)
                h[r * hidden + f] = (float)(RefOps.Silu(RefOps.Dot(xs, a.AsSpan(f * dim, dim))) * RefOps.Dot(xs, b.AsSpan(f * dim, dim)));
        }

        return h;
    }

    /// <summary>y [rows, D]: row r = h_r . w2[expert[r]], h rounded first by the given rounding.</summary>
    public static float[] Down(ReadOnlySpan<float> h, IReadOnlyList<int> expert, IReadOnlyList<float[]> w2, int dim, int hidden,
        ActivationRounding rounding)
    {
        ArgumentNullException.ThrowIfNull(expert);
        ArgumentNullException.ThrowIfNull(w2);
        Require.Positive(dim, nameof(dim));
        Require.Positive(hidden, nameof(hidden));
        Require.Length(h, (long)expert.Count * hidden, nameof(h), "[rows, F]");
        var hr = Round(h, rounding);
        var y = new float[expert.Count * dim];
        for (int r = 0; r < expert.Count; r++)
        {
            float[] w = w2[expert[r]];
            Require.Length<float>(w, (long)dim * hidden, "w2[e]", "[D, F]");
            var hs = hr.AsSpan(r * hidden, hidden);
            for (int d = 0; d < dim; d++)
                y[r * dim + d] = (float)RefOps.Dot(hs, w.AsSpan(d * hidden, hidden));
        }

        return y;
    }
}
