// The reference oracle's dense ops: the signatures and semantics kernel tests code against.
// Row-major float arrays, double accumulation inside, one rounding to float at the end of each op.
// Glossary: T tokens, S keys in cache, E experts, K experts per token, D model dim, F expert hidden dim,
// V vocab, H query heads, Hkv key/value heads, Dh head dim.
// Every op validates its arguments and throws ArgumentException naming the argument on a bad shape or id.
namespace ILGpuMoE.Reference;

public static partial class RefOps
{
    /// <summary>out[t] = table[tokens[t]] ; table [V, D] -> [T, D]. Throws on an out-of-range id.</summary>
    public static partial float[] Embedding(ReadOnlySpan<float> table, ReadOnlySpan<int> tokens, int vocab, int dim);

    /// <summary>y = x / sqrt(mean(x^2) + eps) * w ; x [T, D], w [D] -> [T, D].</summary>
    public static partial float[] RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, int tokens, int dim, float eps);

    /// <summary>y = x W^T ; x [T, In], W [Out, In] (Hugging Face layout) -> [T, Out].</summary>
    public static partial float[] MatMulT(ReadOnlySpan<float> x, ReadOnlySpan<float> w, int tokens, int outDim, int inDim);

    /// <summary>
    /// Hugging Face rotate-half RoPE on x [T, heads, Dh] at absolute positions[t]: for i in [0, Dh/2):
    /// inv = theta^(-2i/Dh), a = pos*inv, (x_i, x_{i+Dh/2}) -> (x_i cos a - x_{i+Dh/2} sin a, x_{i+Dh/2} cos a + x_i sin a).
    /// Angles and the rotation are computed in double. Dh must be even. Returns a new array.
    /// </summary>
    public static partial float[] Rope(ReadOnlySpan<float> x, ReadOnlySpan<int> positions, int tokens, int heads, int headDim, float theta);

    /// <summary>
    /// Qwen3-MoE's q_norm / k_norm then RoPE: every head's vector x[t, h, :] [Dh] RMS-normalised on its own (sum of
    /// squares over Dh, eps, times weight [Dh] shared by all heads: RmsNorm over the T*heads rows of Dh), then Rope.
    /// </summary>
    public static partial float[] HeadNormRope(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, ReadOnlySpan<int> positions,
        int tokens, int heads, int headDim, float eps, float theta);

    /// <summary>
    /// A projection's epilogue: y[t, n] = clamp(y[t, n] + bias[n], -clip, clip) for y [T, N]; bias [N] or empty (none,
    /// Qwen2-MoE's q/k/v biases when given); clip &gt; 0, +inf for none (OLMoE's clip_qkv). NaN stays NaN (torch.clamp).
    /// </summary>
    public static partial float[] BiasClip(ReadOnlySpan<float> y, ReadOnlySpan<float> bias, int tokens, int cols, float clip);

    /// <summary>silu(g) * u elementwise, silu(g) = g / (1 + e^-g).</summary>
    public static partial float[] SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up);

    /// <summary>Row-wise max-subtracted softmax of x [rows, cols].</summary>
    public static partial float[] Softmax(ReadOnlySpan<float> x, int rows, int cols);

    /// <summary>
    /// Grouped-query attention. q [T, H, Dh]; k, v [S, Hkv, Dh] hold key/value of positions 0..S-1 (cache plus the
    /// current tokens); query t is at absolute position queryPos[t] (0 &lt;= queryPos[t] &lt; S). Key j is visible to
    /// query t iff j &lt;= queryPos[t] and (window &lt;= 0 or queryPos[t] - j &lt; window). Query head h reads kv head
    /// h / (H / Hkv). Scale 1/sqrt(Dh). Returns [T, H, Dh].
    /// </summary>
    public static partial float[] Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        ReadOnlySpan<int> queryPos, int tokens, int keys, int heads, int kvHeads, int headDim, int window);
}
