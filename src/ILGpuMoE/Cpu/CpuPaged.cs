// cpu/paged-*: the paged KV cache of continuous batching on the CPU (the layouts, metadata and semantics of
// kernels/ILGpuMoE.Kernels/Attention/PagedAttentionKernel.cs and Attention/Mla/PagedMlaKernels.cs; oracle
// src/ILGpuMoE.Reference/RefPaged.cs). Several sequences' T tokens run in one call; token t sits at positions[t] of
// sequence seqOfToken[t], whose keys are found through blockTables [S, maxBlocks] in a pool of fixed-size blocks.
//   kv-append    k, v [T, Hkv, Dh] to slot slots[t] of kCache, vCache [NumBlocks, Hkv, BS, Dh].
//   attention    per (token, kv head) task, for its G query heads at once, as cpu/attention (CpuKernels.cs): each
//                visible K row (found through the table once per key) read once for the G heads, softmax in float with
//                the max subtracted and the sink logit in max and denominator, then each V row read once for the G heads.
//   mla-append   c and k_rope rows to pool row slots[t] of [NumBlocks * BS, R + Dr].
//   mla          per (token, head) task, as cpu/mla (CpuMla.cs), the rows found through the table.
// The metadata is host memory here, so it is checked before any work (a bad slot, sequence, position or block throws
// ArgumentOutOfRangeException; a throw inside a worker would surface after other tasks wrote). Each output is computed
// by one task in a fixed order: the same bits whatever the thread count.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace ILGpuMoE.Cpu;

public static unsafe class CpuPaged
{
    [ThreadStatic]
    private static float[]? scoresScratch;

    [ThreadStatic]
    private static long[]? rowsScratch;

    /// <summary>cpu/paged-kv-append: k, v [T, Hkv, Dh] into kCache, vCache [numBlocks, Hkv, BS, Dh] at slots[t].</summary>
    public static void AppendKv(float* k, float* v, float* kCache, float* vCache, int* slots, int t, int kvHeads, int headDim, int blockSize, int numBlocks)
    {
        CheckSlots(slots, t, blockSize, numBlocks, "cpu/paged-kv-append");
        long bytes = (long)headDim * sizeof(float);
        for (int i = 0; i < t; i++)
        {
            int block = slots[i] / blockSize, off = slots[i] % blockSize;
            for (int h = 0; h < kvHeads; h++)
            {
                long src = ((long)i * kvHeads + h) * headDim, dst = (((long)block * kvHeads + h) * blockSize + off) * headDim;
                Buffer.MemoryCopy(k + src, kCache + dst, bytes, bytes);
                Buffer.MemoryCopy(v + src, vCache + dst, bytes, bytes);
            }
        }
    }

    /// <summary>
    /// cpu/paged-attention: o [T, H, Dh] for q [T, H, Dh] over each token's own sequence keys 0..positions[t] (window:
    /// pos - p &lt; window when &gt; 0) in kCache, vCache [numBlocks, Hkv, BS, Dh] through blockTables [sequences, maxBlocks];
    /// sinks null or F32 [H].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Attention(CpuThreads threads, float* q, float* kCache, float* vCache, float* o, int* positions, int* seqOfToken, int* blockTables,
        int t, int heads, int kvHeads, int headDim, int blockSize, int maxBlocks, int sequences, int numBlocks, int window, float* sinks, float scale)
    {
        if (kvHeads < 1 || heads % kvHeads != 0)
            throw new ArgumentException($"cpu/paged-attention: {heads} heads do not divide into {kvHeads} kv heads");
        long work = CheckMetadata(positions, seqOfToken, blockTables, t, blockSize, maxBlocks, sequences, numBlocks, window, "cpu/paged-attention");
        int group = heads / kvHeads;
        threads.For(t * kvHeads, work / Math.Max(1, t) * headDim * 2 * group, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (task) =>
        {
            int i = task / kvHeads, kvh = task % kvHeads;
            int pos = positions[i];
            int first = window > 0 ? Math.Max(0, pos - window + 1) : 0;
            int n = pos - first + 1;
            int* table = blockTables + (long)seqOfToken[i] * maxBlocks;
            float* q0 = q + ((long)i * heads + kvh * group) * headDim; // the group's G query heads, consecutive
            float* o0 = o + ((long)i * heads + kvh * group) * headDim;
            if (scoresScratch is null || scoresScratch.Length < n * group)
                scoresScratch = new float[Math.Max(n * group, 256)];
            if (rowsScratch is null || rowsScratch.Length < n)
                rowsScratch = new long[Math.Max(n, 64)];
            var rows = rowsScratch;
            for (int j = 0; j < n; j++)
            {
                int p = first + j;
                rows[j] = (((long)table[p / blockSize] * kvHeads + kvh) * blockSize + p % blockSize) * headDim;
            }

            fixed (float* sc = scoresScratch)
            {
                // Scores: s[g, j] = q_g . k_j * scale, each K row loaded once for the G heads.
                for (int j = 0; j < n; j++)
                {
                    float* kj = kCache + rows[j];
                    for (int g = 0; g < group; g++)
                        sc[(long)g * n + j] = CpuKernels.Dot(q0 + (long)g * headDim, kj, headDim) * scale;
                }

                Span<float> inv = group <= 256 ? stackalloc float[group] : new float[group];
                for (int g = 0; g < group; g++)
                {
                    var s = new Span<float>(sc + (long)g * n, n);
                    float max = TensorPrimitives.Max(s);
                    float sink = sinks == null ? float.NegativeInfinity : sinks[kvh * group + g];
                    float m = Math.Max(max, sink);
                    float sum = 0f;
                    for (int j = 0; j < n; j++)
                    {
                        float e = MathF.Exp(s[j] - m);
                        s[j] = e;
                        sum += e;
                    }

                    inv[g] = 1f / (sum + (sinks == null ? 0f : MathF.Exp(sink - m)));
                    new Span<float>(o0 + (long)g * headDim, headDim).Clear();
                }

                // o_g = sum_j p[g, j] v_j, each V row loaded once for the G heads; then the 1 / denominator.
                for (int j = 0; j < n; j++)
                {
                    float* vj = vCache + rows[j];
                    for (int g = 0; g < group; g++)
                        CpuKernels.Axpy(sc[(long)g * n + j], vj, o0 + (long)g * headDim, headDim);
                }

                for (int g = 0; g < group; g++)
                {
                    var og = new Span<float>(o0 + (long)g * headDim, headDim);
                    TensorPrimitives.Multiply(og, inv[g], og);
                }
            }
        });
    }

    /// <summary>cpu/paged-mla-append: c rows (cStride apart) and k_rope rows (kStride apart) to pool rows slots[t] of [rows, Row] (rows = NumBlocks * BS).</summary>
    public static void MlaAppend(float* c, int cStride, float* kRope, int kStride, int* slots, float* cache, int t, CpuMlaShape m, int rows)
    {
        CheckSlots(slots, t, 1, rows, "cpu/paged-mla-append");
        for (int i = 0; i < t; i++)
        {
            float* row = cache + (long)slots[i] * m.Row;
            new ReadOnlySpan<float>(c + (long)i * cStride, m.Rank).CopyTo(new Span<float>(row, m.Rank));
            new ReadOnlySpan<float>(kRope + (long)i * kStride, m.RopeDim).CopyTo(new Span<float>(row + m.Rank, m.RopeDim));
        }
    }

    /// <summary>cpu/paged-mla: o_lat [T, H, R] from q_abs [T, H, Row] over each token's sequence rows 0..positions[t] through the table.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MlaAttention(CpuThreads threads, float* qAbs, float* cache, int* positions, int* seqOfToken, int* blockTables, float* oLat, int t,
        int heads, CpuMlaShape m, int blockSize, int maxBlocks, int sequences, int numBlocks, float scale)
    {
        long work = CheckMetadata(positions, seqOfToken, blockTables, t, blockSize, maxBlocks, sequences, numBlocks, 0, "cpu/paged-mla");
        threads.For(t * heads, work / Math.Max(1, t) * m.Row * 2, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (task) =>
        {
            int i = task / heads;
            int n = positions[i] + 1;
            int* table = blockTables + (long)seqOfToken[i] * maxBlocks;
            if (scoresScratch is null || scoresScratch.Length < n)
                scoresScratch = new float[Math.Max(n, 256)];
            var s = scoresScratch.AsSpan(0, n);
            var qs = new ReadOnlySpan<float>(qAbs + (long)task * m.Row, m.Row);
            for (int j = 0; j < n; j++)
                s[j] = TensorPrimitives.Dot(qs, new ReadOnlySpan<float>(Row(cache, table, j, blockSize, m.Row), m.Row)) * scale;
            float max = TensorPrimitives.Max(s);
            float denom = 0f;
            for (int j = 0; j < n; j++)
            {
                s[j] = MathF.Exp(s[j] - max);
                denom += s[j];
            }

            var o = new Span<float>(oLat + (long)task * m.Rank, m.Rank);
            o.Clear();
            for (int j = 0; j < n; j++)
                TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<float>(Row(cache, table, j, blockSize, m.Row), m.Rank), s[j], o, o);
            TensorPrimitives.Divide(o, denom, o);
        });
    }

    /// <summary>Pool row of position p of the sequence whose table row is table.</summary>
    private static float* Row(float* cache, int* table, int p, int blockSize, int row) =>
        cache + ((long)table[p / blockSize] * blockSize + p % blockSize) * row;

    private static void CheckSlots(int* slots, int t, int blockSize, int numBlocks, string who)
    {
        if (blockSize < 1 || numBlocks < 1)
            throw new ArgumentException($"{who}: blockSize ({blockSize}) and numBlocks ({numBlocks}) must be positive");
        long capacity = (long)numBlocks * blockSize;
        for (int i = 0; i < t; i++)
        {
            if ((ulong)slots[i] >= (ulong)capacity)
                throw new ArgumentOutOfRangeException(nameof(slots), $"{who}: slots[{i}] = {slots[i]} outside the pool of {numBlocks} blocks of {blockSize}");
        }
    }

    /// <summary>
    /// Checks every token's sequence, position and the blocks it reads (those of the window when window &gt; 0: a runtime
    /// may free the blocks before it); returns the keys read in all (the work estimate).
    /// </summary>
    private static long CheckMetadata(int* positions, int* seqOfToken, int* blockTables, int t, int blockSize, int maxBlocks, int sequences,
        int numBlocks, int window, string who)
    {
        if (blockSize < 1 || maxBlocks < 1 || sequences < 1 || numBlocks < 1)
            throw new ArgumentException($"{who}: blockSize ({blockSize}), maxBlocks ({maxBlocks}), sequences ({sequences}) and numBlocks ({numBlocks}) must be positive");
        long keys = 0;
        for (int i = 0; i < t; i++)
        {
            int seq = seqOfToken[i], pos = positions[i];
            if ((uint)seq >= (uint)sequences)
                throw new ArgumentOutOfRangeException(nameof(seqOfToken), $"{who}: seqOfToken[{i}] = {seq} is not one of the {sequences} table rows");
            if ((ulong)pos >= (ulong)maxBlocks * (ulong)blockSize)
                throw new ArgumentOutOfRangeException(nameof(positions), $"{who}: positions[{i}] = {pos} outside a table row of {maxBlocks} blocks of {blockSize}");
            int first = window > 0 ? Math.Max(0, pos - window + 1) : 0;
            for (int b = first / blockSize; b <= pos / blockSize; b++)
            {
                int block = blockTables[(long)seq * maxBlocks + b];
                if ((uint)block >= (uint)numBlocks)
                    throw new ArgumentOutOfRangeException(nameof(blockTables), $"{who}: blockTables[{seq}, {b}] = {block} outside the pool of {numBlocks} blocks");
            }

            keys += pos - first + 1;
        }

        return keys;
    }
}
