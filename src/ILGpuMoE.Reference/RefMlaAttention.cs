// DeepSeek-V3's Multi-head Latent Attention over a compressed cache, with absorbed weights: the oracle of the
// attention/mla-* kernels (kernels/ILGpuMoE.Kernels/Attention/Mla). The model-level oracle (RefModelFamilies.cs,
// DeepSeekLayer) keeps Hugging Face's EXPANDED per-head keys and values; this file states the ABSORBED arithmetic the
// runtime runs, and Expand gives the expanded keys and values of the same cache, so a test can check the two formulas
// against each other (RefOps.GeneralAttention on Expand's k, v).
//
// Shapes: T tokens, H heads, R = kv_lora_rank (512 in V3), Dr = qk_rope_head_dim (64), Dn = qk_nope_head_dim (128),
// Dv = v_head_dim (128), S cached positions. Per token: q [H, Dn + Dr] (nope part then rope part, already roped);
// the cache row [R + Dr] = [c | k_rope] (c = kv_a_layernorm of the latent, k_rope roped, one vector for all heads).
// kv_b_proj weight [H * (Dn + Dv), R] ([out, in]): rows h*(Dn+Dv) .. +Dn are W_UK[h] [Dn, R], the next Dv rows W_UV[h].
//   expanded: k_h,j = [W_UK[h] c_j | k_rope_j], v_h,j = W_UV[h] c_j, out_h = causal softmax(q_h . k_h,j * scale) v_h,j
//   absorbed: q_abs[h] = [W_UK[h]^T q_nope[h] | q_rope[h]] [R + Dr]; score_j = q_abs[h] . row_j * scale (the row is
//             [c_j | k_rope_j]); o_lat[h] = sum_j p_j c_j [R]; out_h = W_UV[h] o_lat[h] [Dv]
// They agree because q_nope . (W_UK c) = (W_UK^T q_nope) . c and sum_j p_j W_UV c_j = W_UV sum_j p_j c_j.
// Plain loops, double accumulation, one rounding to float per op (as the kernels round between launches).
namespace ILGpuMoE.Reference;

/// <summary>The MLA shape of one layer (see the file header for the letters).</summary>
public readonly record struct MlaShape(int Heads, int Rank, int RopeDim, int NopeDim, int VDim)
{
    /// <summary>Floats per cache row: R + Dr (576 in V3).</summary>
    public int Row => Rank + RopeDim;

    /// <summary>qk_head_dim = Dn + Dr (192 in V3): q's per-head width.</summary>
    public int QkDim => NopeDim + RopeDim;

    /// <summary>Rows of kv_b_proj: H * (Dn + Dv).</summary>
    public int KvBRows => Heads * (NopeDim + VDim);

    internal void Validate()
    {
        Require.Positive((Heads, nameof(Heads)), (Rank, nameof(Rank)), (NopeDim, nameof(NopeDim)), (VDim, nameof(VDim)));
        Require.NonNegative(RopeDim, nameof(RopeDim));
    }

    /// <summary>Validate, plus T &gt;= 0 and kv_b_proj [H * (Dn + Dv), R].</summary>
    internal void Validate(int tokens, ReadOnlySpan<float> kvB)
    {
        Validate();
        Require.NonNegative(tokens, "tokens");
        Require.Length(kvB, (long)KvBRows * Rank, "kvB", "[H * (Dn + Dv), R]");
    }
}

public static partial class RefMlaAttention
{
    /// <summary>q_abs [T, H, R + Dr] = per head [W_UK[h]^T q_nope[h] | q_rope[h]] from q [T, H, Dn + Dr] and kv_b_proj [H*(Dn+Dv), R].</summary>
    public static float[] AbsorbQ(ReadOnlySpan<float> q, ReadOnlySpan<float> kvB, int tokens, MlaShape s)
    {
        s.Validate(tokens, kvB);
        Require.Length(q, (long)tokens * s.Heads * s.QkDim, nameof(q), "[T, H, Dn + Dr]");
        var y = new float[tokens * s.Heads * s.Row];
        for (int t = 0; t < tokens; t++)
        {
            for (int h = 0; h < s.Heads; h++)
            {
                var qh = q.Slice((t * s.Heads + h) * s.QkDim, s.QkDim);
                int o = (t * s.Heads + h) * s.Row;
                int wk = h * (s.NopeDim + s.VDim) * s.Rank; // W_UK[h] row 0
                for (int r = 0; r < s.Rank; r++)
                {
                    double acc = 0;
                    for (int i = 0; i < s.NopeDim; i++)
                        acc += (double)kvB[wk + i * s.Rank + r] * qh[i];
                    y[o + r] = (float)acc;
                }

                for (int i = 0; i < s.RopeDim; i++)
                    y[o + s.Rank + i] = qh[s.NopeDim + i];
            }
        }

        return y;
    }

    /// <summary>
    /// o_lat [T, H, R]: query t at queryPos[t] attends to cache rows j = 0..queryPos[t] of cache [S, R + Dr] with
    /// softmax(q_abs[t, h] . row_j * scale) (max subtracted) and sums p_j c_j (the rows' first R floats).
    /// </summary>
    public static float[] LatentAttention(ReadOnlySpan<float> qAbs, ReadOnlySpan<float> cache, ReadOnlySpan<int> queryPos,
        int tokens, int keys, MlaShape s, double scale)
    {
        s.Validate();
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive(keys, nameof(keys));
        Require.Length(qAbs, (long)tokens * s.Heads * s.Row, nameof(qAbs), "[T, H, R + Dr]");
        Require.Length(cache, (long)keys * s.Row, nameof(cache), "[S, R + Dr]");
        Require.Length(queryPos, tokens, nameof(queryPos), "[T]");
        var y = new float[tokens * s.Heads * s.Rank];
        var score = new double[keys];
        var acc = new double[s.Rank];
        for (int t = 0; t < tokens; t++)
        {
            int pos = queryPos[t];
            if ((uint)pos >= (uint)keys)
                throw new ArgumentException($"LatentAttention: queryPos[{t}] = {pos} is outside the keys [0, {keys}).", nameof(queryPos));
            for (int h = 0; h < s.Heads; h++)
            {
                var qh = qAbs.Slice((t * s.Heads + h) * s.Row, s.Row);
                double max = double.NegativeInfinity;
                for (int j = 0; j <= pos; j++)
                {
                    score[j] = RefOps.Dot(qh, cache.Slice(j * s.Row, s.Row)) * scale;
                    max = Math.Max(max, score[j]);
                }

                double sum = 0;
                Array.Clear(acc);
                for (int j = 0; j <= pos; j++)
                {
                    double p = Math.Exp(score[j] - max);
                    sum += p;
                    var c = cache.Slice(j * s.Row, s.Rank);
                    for (int r = 0; r < s.Rank; r++)
                        acc[r] += p * c[r];
                }

                for (int r = 0; r < s.Rank; r++)
                    y[(t * s.Heads + h) * s.Rank + r] = (float)(acc[r] / sum);
            }
        }

        return y;
    }

    /// <summary>out [T, H, Dv] = per head W_UV[h] o_lat[h] from o_lat [T, H, R] and kv_b_proj [H*(Dn+Dv), R].</summary>
    public static float[] AbsorbV(ReadOnlySpan<float> oLat, ReadOnlySpan<float> kvB, int tokens, MlaShape s)
    {
        s.Validate(tokens, kvB);
        Require.Length(oLat, (long)tokens * s.Heads * s.Rank, nameof(oLat), "[T, H, R]");
        var y = new float[tokens * s.Heads * s.VDim];
        for (int t = 0; t < tokens; t++)
        {
            for (int h = 0; h < s.Heads; h++)
            {
                var o = oLat.Slice((t * s.Heads + h) * s.Rank, s.Rank);
                for (int d = 0; d < s.VDim; d++)
                {
                    var w = kvB.Slice((h * (s.NopeDim + s.VDim) + s.NopeDim + d) * s.Rank, s.Rank);
                    y[(t * s.Heads + h) * s.VDim + d] = (float)RefOps.Dot(w, o);
                }
            }
        }

        return y;
    }

    /// <summary>The absorbed path end to end: AbsorbQ, LatentAttention, AbsorbV. Returns [T, H, Dv] (o_proj's input).</summary>
    public static float[] Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> cache, ReadOnlySpan<float> kvB, ReadOnlySpan<int> queryPos,
        int tokens, int keys, MlaShape s, double scale) =>
        AbsorbV(LatentAttention(AbsorbQ(q, kvB, tokens, s), cache, queryPos, tokens, keys, s, scale), kvB, tokens, s);

    /// <summary>
    /// Hugging Face's expanded keys and values of the cache rows [S, R + Dr]: k [S, H, Dn + Dr] = [W_UK[h] c_j | k_rope_j]
    /// and v [S, H, Dv] = W_UV[h] c_j, the inputs of RefOps.GeneralAttention (kvHeads = H).
    /// </summary>
    public static (float[] K, float[] V) Expand(ReadOnlySpan<float> cache, ReadOnlySpan<float> kvB, int keys, MlaShape s)
    {
        s.Validate();
        Require.Positive(keys, nameof(keys));
        Require.Length(cache, (long)keys * s.Row, nameof(cache), "[S, R + Dr]");
        Require.Length(kvB, (long)s.KvBRows * s.Rank, nameof(kvB), "[H * (Dn + Dv), R]");
        var k = new float[keys * s.Heads * s.QkDim];
        var v = new float[keys * s.Heads * s.VDim];
        for (int j = 0; j < keys; j++)
        {
            var c = cache.Slice(j * s.Row, s.Rank);
            for (int h = 0; h < s.Heads; h++)
            {
                int rows = h * (s.NopeDim + s.VDim);
                int ko = (j * s.Heads + h) * s.QkDim;
                for (int i = 0; i < s.NopeDim; i++)
                    k[ko + i] = (float)RefOps.Dot(kvB.Slice((rows + i) * s.Rank, s.Rank), c);
                for (int i = 0; i < s.RopeDim; i++)
                    k[ko + s.NopeDim + i] = cache[j * s.Row + s.Rank + i];
                for (int d = 0; d < s.VDim; d++)
                    v[(j * s.Heads + h) * s.VDim + d] = (float)RefOps.Dot(kvB.Slice((rows + s.NopeDim + d) * s.Rank, s.Rank), c);
            }
        }

        return (k, v);
    }
}
