// The oracle of the T = 1 decode kernels (kernels/ILGpuMoE.Kernels/Decode) where RefOps / RefMoe have no op of the
// same shape: the MoE block split at its hidden activation, with stacked expert weights and the token's K ids read
// directly (no permutation). Plain loops, double accumulation, one rounding per output.
// Glossary: E experts, K experts per token, D model dim, F expert hidden dim.
namespace ILGpuMoE.Reference;

public static class RefDecode
{
    /// <summary>
    /// decode/linear for one matrix: y [rows] = clamp(xs . W^T + bias, -clip, clip), plus y0 when y0 is given (the
    /// accumulate form adds the clipped value); xs = RefOps.RmsNorm(x, norm, eps) when norm is given, else x. x [cols],
    /// W [rows, cols], norm [cols] or empty, bias [rows] or empty, clip &gt; 0 (+inf for none), y0 [rows] or empty.
    /// </summary>
    public static float[] Linear(ReadOnlySpan<float> x, ReadOnlySpan<float> norm, float eps, ReadOnlySpan<float> w, int rows, int cols,
        ReadOnlySpan<float> bias, float clip, ReadOnlySpan<float> y0 = default)
    {
        var xs = norm.IsEmpty ? x.ToArray() : RefOps.RmsNorm(x, norm, 1, cols, eps);
        var y = RefOps.BiasClip(RefOps.MatMulT(xs, w, 1, rows, cols), bias, 1, rows, clip);
        if (!y0.IsEmpty)
        {
            Require.Length(y0, rows, nameof(y0), "[rows]");
            for (int r = 0; r < rows; r++)
                y[r] = (float)((double)y0[r] + y[r]);
        }

        return y;
    }

    /// <summary>
    /// decode/qkv-rope: q, k, v = <see cref="Linear"/> of wq [H*Dh, D], wk and wv [Hkv*Dh, D] (norm, bias, clip as
    /// there), then q's and k's heads rotated at pos by <see cref="RefRope.Apply"/> (invFreq [d/2] over dims [offset,
    /// offset + d) of each head, rotate-half pairs, cos and sin times cosSinFactor), and k's and v's head h written to
    /// row pos of copies of kCache, vCache [Hkv, maxSeq, Dh] (head h's row p at (h * maxSeq + p) * Dh; every other row
    /// as given). Returns q [H*Dh] and the two caches.
    /// </summary>
    public static (float[] Q, float[] KCache, float[] VCache) QkvRope(ReadOnlySpan<float> x, ReadOnlySpan<float> norm, float eps, int cols,
        (float[] W, float[] Bias) q, (float[] W, float[] Bias) k, (float[] W, float[] Bias) v, float clip, int heads, int kvHeads, int headDim,
        int pos, double[] invFreq, int offset, double cosSinFactor, ReadOnlySpan<float> kCache, ReadOnlySpan<float> vCache, int maxSeq)
    {
        Require.Positive((cols, nameof(cols)), (heads, nameof(heads)), (kvHeads, nameof(kvHeads)), (headDim, nameof(headDim)), (maxSeq, nameof(maxSeq)));
        if (pos < 0 || pos >= maxSeq)
            throw new ArgumentException($"RefDecode.QkvRope: pos = {pos} is outside the cache [0, {maxSeq}).", nameof(pos));
        long cache = (long)kvHeads * maxSeq * headDim;
        Require.Length(kCache, cache, nameof(kCache), "[Hkv, maxSeq, Dh]");
        Require.Length(vCache, cache, nameof(vCache), "[Hkv, maxSeq, Dh]");
        int qRows = heads * headDim, kvRows = kvHeads * headDim;
        int[] at = [pos];
        var qy = Linear(x, norm, eps, q.W, qRows, cols, q.Bias, clip);
        RefRope.Apply(qy, at, 1, heads, headDim, offset, invFreq, cosSinFactor, interleaved: false);
        var ky = Linear(x, norm, eps, k.W, kvRows, cols, k.Bias, clip);
        RefRope.Apply(ky, at, 1, kvHeads, headDim, offset, invFreq, cosSinFactor, interleaved: false);
        var vy = Linear(x, norm, eps, v.W, kvRows, cols, v.Bias, clip);
        float[] kc = kCache.ToArray(), vc = vCache.ToArray();
        for (int h = 0; h < kvHeads; h++)
        {
            long row = ((long)h * maxSeq + pos) * headDim;
            Array.Copy(ky, h * headDim, kc, row, headDim);
            Array.Copy(vy, h * headDim, vc, row, headDim);
        }

        return (qy, kc, vc);
    }

    /// <summary>
    /// h [K, F]: h[k, f] = silu(w1[e_k*F + f] . x) * (w3[e_k*F + f] . x) with e_k = ids[k]; rows of a dropped pair
    /// (e_k = -1) are 0. x [D] (already normalised); w1, w3 [E*F, D] stacked.
    /// </summary>
    public static float[] ExpertsUpGate(ReadOnlySpan<float> x, ReadOnlySpan<int> ids, ReadOnlySpan<float> w1, ReadOnlySpan<float> w3,
        int experts, int dim, int hidden)
    {
        Require.Positive((experts, nameof(experts)), (dim, nameof(dim)), (hidden, nameof(hidden)));
        Require.Length(x, dim, nameof(x), "[D]");
        Require.Length(w1, (long)experts * hidden * dim, nameof(w1), "[E*F, D]");
        Require.Length(w3, (long)experts * hidden * dim, nameof(w3), "[E*F, D]");
        CheckIds(ids, experts);
        var h = new float[ids.Length * hidden];
        for (int k = 0; k < ids.Length; k++)
        {
            if (ids[k] < 0)
                continue;
            for (int f = 0; f < hidden; f++)
            {
                long row = ((long)ids[k] * hidden + f) * dim;
                double g = RefOps.Dot(x, w1.Slice((int)row, dim));
                double u = RefOps.Dot(x, w3.Slice((int)row, dim));
                h[k * hidden + f] = (float)(RefOps.Silu(g) * u);
            }
        }

        return h;
    }

    /// <summary>
    /// out [D] = residual + sum over k with ids[k] &gt;= 0 of weights[k] * (w2[e_k*D + d] . h[k, :]); h [K, F], w2 [E*D, F].
    /// </summary>
    public static float[] ExpertsDown(ReadOnlySpan<float> h, ReadOnlySpan<int> ids, ReadOnlySpan<float> weights, ReadOnlySpan<float> w2,
        ReadOnlySpan<float> residual, int experts, int dim, int hidden)
    {
        Require.Positive((experts, nameof(experts)), (dim, nameof(dim)), (hidden, nameof(hidden)));
        Require.Length(h, (long)ids.Length * hidden, nameof(h), "[K, F]");
        Require.Length(weights, ids.Length, nameof(weights), "[K]");
        Require.Length(w2, (long)experts * dim * hidden, nameof(w2), "[E*D, F]");
        Require.Length(residual, dim, nameof(residual), "[D]");
        CheckIds(ids, experts);
        var y = new float[dim];
        for (int d = 0; d < dim; d++)
        {
            double acc = 0;
            for (int k = 0; k < ids.Length; k++)
            {
                if (ids[k] >= 0)
                    acc += weights[k] * RefOps.Dot(h.Slice(k * hidden, hidden), w2.Slice((int)(((long)ids[k] * dim + d) * hidden), hidden));
            }

            y[d] = (float)(residual[d] + acc);
        }

        return y;
    }

    /// <summary>
    /// decode/router: logits [R] = rmsnorm(x) * norm . W^T + bias (RefDecode.Linear, no clip), then the token routed
    /// under spec (RefMoe.Route; R = E, or E + 1 with a gated shared expert's row last). scoreBias [E] for DeepSeekV3.
    /// </summary>
    public static (float[] Logits, RefRouting Routing) Router(ReadOnlySpan<float> x, ReadOnlySpan<float> norm, float eps, ReadOnlySpan<float> w,
        int rows, int cols, ReadOnlySpan<float> bias, RefRouterSpec spec, ReadOnlySpan<float> scoreBias = default)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var logits = Linear(x, norm, eps, w, rows, cols, bias, float.PositiveInfinity);
        return (logits, RefMoe.Route(spec, logits, 1, default, scoreBias));
    }

    private static void CheckIds(ReadOnlySpan<int> ids, int experts)
    {
        for (int k = 0; k < ids.Length; k++)
        {
            if (ids[k] < -1 || ids[k] >= experts)
                throw new ArgumentException($"RefDecode: ids[{k}] = {ids[k]} is outside [-1, {experts}).", nameof(ids));
        }
    }
}
