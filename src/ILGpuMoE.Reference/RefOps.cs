// Dense ops of the oracle, written from the math (Hugging Face Mixtral semantics), not from any kernel.
// Each op accumulates in double and rounds to float once, when it stores its output.
namespace ILGpuMoE.Reference;

public static partial class RefOps
{
    public static partial float[] Embedding(ReadOnlySpan<float> table, ReadOnlySpan<int> tokens, int vocab, int dim)
    {
        Require.Positive(vocab, nameof(vocab));
        Require.Positive(dim, nameof(dim));
        Require.Length(table, (long)vocab * dim, nameof(table), "[V, D]");
        var y = new float[tokens.Length * dim];
        for (int t = 0; t < tokens.Length; t++)
        {
            int id = tokens[t];
            if ((uint)id >= (uint)vocab)
                throw new ArgumentException($"Embedding: tokens[{t}] = {id} is outside the vocabulary [0, {vocab}).", nameof(tokens));
            table.Slice(id * dim, dim).CopyTo(y.AsSpan(t * dim, dim));
        }

        return y;
    }

    public static partial float[] RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, int tokens, int dim, float eps)
    {
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive(dim, nameof(dim));
        Require.Length(x, (long)tokens * dim, nameof(x), "[T, D]");
        Require.Length(weight, dim, nameof(weight), "[D]");
        var y = new float[tokens * dim];
        for (int t = 0; t < tokens; t++)
        {
            var row = x.Slice(t * dim, dim);
            double ss = 0;
            foreach (float v in row)
                ss += (double)v * v;
            double inv = 1.0 / Math.Sqrt(ss / dim + eps);
            for (int i = 0; i < dim; i++)
                y[t * dim + i] = (float)(row[i] * inv * weight[i]);
        }

        return y;
    }

    public static partial float[] HeadNormRope(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, ReadOnlySpan<int> positions,
        int tokens, int heads, int headDim, float eps, float theta)
    {
        Require.Positive(heads, nameof(heads));
        Require.NonNegative(tokens, nameof(tokens));
        return Rope(RmsNorm(x, weight, tokens * heads, headDim, eps), positions, tokens, heads, headDim, theta);
    }

    public static partial float[] BiasClip(ReadOnlySpan<float> y, ReadOnlySpan<float> bias, int tokens, int cols, float clip)
    {
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive(cols, nameof(cols));
        Require.Length(y, (long)tokens * cols, nameof(y), "[T, N]");
        if (!bias.IsEmpty)
            Require.Length(bias, cols, nameof(bias), "[N]");
        if (!(clip > 0))
            throw new ArgumentException($"BiasClip: clip = {clip} must be > 0 (+inf for none).", nameof(clip));
        var o = new float[y.Length];
        for (int i = 0; i < y.Length; i++)
        {
            double v = y[i] + (bias.IsEmpty ? 0.0 : bias[i % cols]);
            o[i] = (float)(v > clip ? clip : v < -clip ? -clip : v);
        }

        return o;
    }

    public static partial float[] MatMulT(ReadOnlySpan<float> x, ReadOnlySpan<float> w, int tokens, int outDim, int inDim)
    {
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive(outDim, nameof(outDim));
        Require.Positive(inDim, nameof(inDim));
        Require.Length(x, (long)tokens * inDim, nameof(x), "[T, In]");
        Require.Length(w, (long)outDim * inDim, nameof(w), "[Out, In]");
        var y = new float[tokens * outDim];
        for (int t = 0; t < tokens; t++)
        {
            var xr = x.Slice(t * inDim, inDim);
            for (int o = 0; o < outDim; o++)
                y[t * outDim + o] = (float)Dot(xr, w.Slice(o * inDim, inDim));
        }

        return y;
    }

    public static partial float[] Rope(ReadOnlySpan<float> x, ReadOnlySpan<int> positions, int tokens, int heads, int headDim, float theta)
    {
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive(heads, nameof(heads));
        Require.Positive(headDim, nameof(headDim));
        if (headDim % 2 != 0)
            throw new ArgumentException($"Rope: headDim = {headDim} must be even (rotate-half pairs i with i + Dh/2).", nameof(headDim));
        if (!(theta > 0) || !float.IsFinite(theta))
            throw new ArgumentException($"Rope: theta = {theta} must be a positive finite number.", nameof(theta));
        Require.Length(x, (long)tokens * heads * headDim, nameof(x), "[T, heads, Dh]");
        Require.Length(positions, tokens, nameof(positions), "[T]");
        int half = headDim / 2;
        var y = new float[x.Length];
        for (int t = 0; t < tokens; t++)
        {
            int pos = positions[t];
            if (pos < 0)
                throw new ArgumentException($"Rope: positions[{t}] = {pos} is negative.", nameof(positions));
            for (int i = 0; i < half; i++)
            {
                double a = pos * Math.Pow(theta, -2.0 * i / headDim);
                double c = Math.Cos(a), s = Math.Sin(a);
                for (int h = 0; h < heads; h++)
                {
                    int b = (t * heads + h) * headDim;
                    double x0 = x[b + i], x1 = x[b + i + half];
                    y[b + i] = (float)(x0 * c - x1 * s);
                    y[b + i + half] = (float)(x1 * c + x0 * s);
                }
            }
        }

        return y;
    }

    public static partial float[] SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up)
    {
        if (gate.Length != up.Length)
            throw new ArgumentException($"SwiGlu: gate has {gate.Length} elements but up has {up.Length}.", nameof(up));
        var y = new float[gate.Length];
        for (int i = 0; i < y.Length; i++)
            y[i] = (float)(Silu(gate[i]) * up[i]);
        return y;
    }

    public static partial float[] Softmax(ReadOnlySpan<float> x, int rows, int cols)
    {
        Require.NonNegative(rows, nameof(rows));
        Require.Positive(cols, nameof(cols));
        Require.Length(x, (long)rows * cols, nameof(x), "[rows, cols]");
        var y = new float[rows * cols];
        var p = new double[cols];
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * cols, cols);
            double max = double.NegativeInfinity;
            foreach (float v in row)
                max = Math.Max(max, v);
            double sum = 0;
            for (int c = 0; c < cols; c++)
                sum += p[c] = Math.Exp(row[c] - max);
            for (int c = 0; c < cols; c++)
                y[r * cols + c] = (float)(p[c] / sum);
        }

        return y;
    }

    public static partial float[] Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        ReadOnlySpan<int> queryPos, int tokens, int keys, int heads, int kvHeads, int headDim, int window)
    {
        // The loops gpt-oss and DeepSeek-V3 use, without sinks, with Dv = Dh (argument checks there).
        return GeneralAttention(q, k, v, queryPos, tokens, keys, heads, kvHeads, headDim, headDim, 1.0 / Math.Sqrt(headDim), window, default);
    }

    /// <summary>silu(g) = g / (1 + e^-g) in double.</summary>
    public static double Silu(double g) => g / (1.0 + Math.Exp(-g));

    /// <summary>Sum of a[i] * b[i] accumulated in double.</summary>
    public static double Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++)
            s += (double)a[i] * b[i];
        return s;
    }

    /// <summary>y = a + b elementwise (the residual add), one float rounding per element.</summary>
    public static float[] Add(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length)
            throw new ArgumentException($"Add: a has {a.Length} elements but b has {b.Length}.", nameof(b));
        var y = new float[a.Length];
        for (int i = 0; i < y.Length; i++)
            y[i] = a[i] + b[i];
        return y;
    }
}
