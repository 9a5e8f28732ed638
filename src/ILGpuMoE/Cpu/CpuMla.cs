// cpu/mla-*: DeepSeek's multi-head latent attention, absorbed, on the CPU (the formulas of
// kernels/ILGpuMoE.Kernels/Attention/Mla/MlaKernels.cs; oracle src/ILGpuMoE.Reference/RefMlaAttention.cs). Shapes: T
// tokens, H heads, R = kv_lora_rank, Dr = qk_rope_head_dim, Dn = qk_nope_head_dim, Dv = v_head_dim, Row = R + Dr.
//   append    cache [S, Row] row positions[t] = [c_t | k_rope_t].
//   absorb-q  q_abs[t, h] = [W_UK[h]^T q_nope[t, h] | q_rope[t, h]]: W_UK[h] = kv_b_proj rows h*(Dn+Dv) .. +Dn, read
//             row by row (a row of W_UK scales into the R outputs: an axpy per row, rows streamed once per token-head).
//   attention o_lat[t, h] = softmax(scale * q_abs[t, h] . cache[0..pos]) cache[0..pos, :R] (MQA over the latent).
//   absorb-v  out[t, h*Dv + d] = W_UV[h][d] . o_lat[t, h]: W_UV[h] = the next Dv rows, one CpuMatrix dot per head.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace ILGpuMoE.Cpu;

/// <summary>MLA sizes (Hugging Face names: kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim).</summary>
public readonly record struct CpuMlaShape(int Rank, int RopeDim, int NopeDim, int VDim)
{
    public int Row => Rank + RopeDim;
}

public static unsafe class CpuMla
{
    /// <summary>cpu/mla-append: c rows (cStride apart) and k_rope rows (kStride apart) to cache rows positions[t].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Append(float* c, int cStride, float* kRope, int kStride, int* positions, float* cache, int t, CpuMlaShape m, int maxSeq)
    {
        for (int i = 0; i < t; i++)
        {
            int pos = positions[i];
            if ((uint)pos >= (uint)maxSeq)
                throw new ArgumentOutOfRangeException(nameof(positions), $"cpu/mla-append: position {pos} outside the cache of {maxSeq}");
            float* row = cache + (long)pos * m.Row;
            new ReadOnlySpan<float>(c + (long)i * cStride, m.Rank).CopyTo(new Span<float>(row, m.Rank));
            new ReadOnlySpan<float>(kRope + (long)i * kStride, m.RopeDim).CopyTo(new Span<float>(row + m.Rank, m.RopeDim));
        }
    }

    /// <summary>cpu/mla-absorb-q: q_abs [T, H, Row] from q [T, H, Dn + Dr] and kv_b_proj [H * (Dn + Dv), R].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AbsorbQ(CpuThreads threads, float* q, DenseRows kvB, float* qAbs, int t, int heads, CpuMlaShape m)
    {
        Check(kvB, heads, m);
        int qk = m.NopeDim + m.RopeDim;
        threads.For(t * heads, (long)m.NopeDim * m.Rank, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (task) =>
        {
            int h = task % heads;
            float* qh = q + (long)task * qk;
            var dst = new Span<float>(qAbs + (long)task * m.Row, m.Row);
            var latent = dst[..m.Rank];
            latent.Clear();
            Span<float> row = m.Rank <= 4096 ? stackalloc float[m.Rank] : new float[m.Rank];
            for (int n = 0; n < m.NopeDim; n++)
            {
                kvB.ReadRow(h * (m.NopeDim + m.VDim) + n, row);
                TensorPrimitives.FusedMultiplyAdd(row, qh[n], latent, latent);
            }

            new ReadOnlySpan<float>(qh + m.NopeDim, m.RopeDim).CopyTo(dst[m.Rank..]);
        });
    }

    /// <summary>cpu/mla: o_lat [T, H, R] from q_abs [T, H, Row] over the cache rows 0..positions[t].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Attention(CpuThreads threads, float* qAbs, float* cache, int* positions, float* oLat, int t, int heads, CpuMlaShape m, int maxSeq, float scale)
    {
        if (t == 0)
            return;
        // Checked before the loop: a throw inside a worker would surface as an AggregateException after other tasks wrote.
        for (int i = 0; i < t; i++)
        {
            if ((uint)positions[i] >= (uint)maxSeq)
                throw new ArgumentOutOfRangeException(nameof(positions), $"cpu/mla: position {positions[i]} outside the cache of {maxSeq}");
        }

        threads.For(t * heads, (long)(positions[t - 1] + 1) * m.Row * 2, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (task) =>
        {
            int n = positions[task / heads] + 1;
            var rows = CpuKernels.Rows(n);
            for (int j = 0; j < n; j++)
                rows[j] = (long)j * m.Row;
            fixed (long* r = rows)
                AttendLatent(qAbs + (long)task * m.Row, oLat + (long)task * m.Rank, cache, r, n, m, scale);
        });
    }

    [ThreadStatic]
    private static float[]? scoresScratch;

    /// <summary>
    /// One (token, head) of the latent attention: q_abs row qs [Row] over the n cache rows at cache + rows[j] (the
    /// contiguous cache or a paged pool: only the offsets differ, so both give the same bits), into o [R].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void AttendLatent(float* qs, float* oLat, float* cache, long* rows, int n, CpuMlaShape m, float scale)
    {
        if (scoresScratch is null || scoresScratch.Length < n)
            scoresScratch = new float[Math.Max(n, 256)];
        var s = scoresScratch.AsSpan(0, n);
        var q = new ReadOnlySpan<float>(qs, m.Row);
        for (int j = 0; j < n; j++)
            s[j] = TensorPrimitives.Dot(q, new ReadOnlySpan<float>(cache + rows[j], m.Row)) * scale;
        float max = TensorPrimitives.Max(s);
        // MathF.Exp per score, not TensorPrimitives.Exp: see cpu/attention (CpuKernels.cs).
        float denom = 0f;
        for (int j = 0; j < n; j++)
        {
            s[j] = MathF.Exp(s[j] - max);
            denom += s[j];
        }

        var o = new Span<float>(oLat, m.Rank);
        o.Clear();
        for (int j = 0; j < n; j++)
            TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<float>(cache + rows[j], m.Rank), s[j], o, o);
        TensorPrimitives.Divide(o, denom, o);
    }

    /// <summary>cpu/mla-absorb-v: output [T, H * Dv] = per head W_UV[h] o_lat[t, h].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AbsorbV(CpuThreads threads, float* oLat, DenseRows kvB, float* output, int t, int heads, CpuMlaShape m)
    {
        Check(kvB, heads, m);
        threads.For(heads, (long)t * m.VDim * m.Rank, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (h) =>
            kvB.Dot(h * (m.NopeDim + m.VDim) + m.NopeDim, m.VDim, oLat + (long)h * m.Rank, heads * m.Rank, t, output + (long)h * m.VDim, heads * m.VDim, accumulate: false));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Check(DenseRows kvB, int heads, CpuMlaShape m)
    {
        if (kvB.Rows != heads * (m.NopeDim + m.VDim) || kvB.Cols != m.Rank)
            throw new ArgumentException($"cpu/mla: kv_b_proj is [{kvB.Rows}, {kvB.Cols}], expected [H * (Dn + Dv), R] = [{heads * (m.NopeDim + m.VDim)}, {m.Rank}]");
    }
}
