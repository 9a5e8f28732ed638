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
            var rows = CpuKernels.Rows(n);
            for (int j = 0; j < n; j++)
            {
                int p = first + j;
                rows[j] = (((long)table[p / blockSize] * kvHeads + kvh) * blockSize + p % blockSize) * headDim;
            }

            // The contiguous cache's attention core on these rows: the same bits as CpuKernels.Attention on the same keys.
            fixed (long* r = rows)
                CpuKernels.AttendGroup(q0, o0, kCache, vCache, r, n, group, headDim, scale, sinks == null ? null : sinks + kvh * group);
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
            var rows = CpuKernels.Rows(n);
            for (int j = 0; j < n; j++)
                rows[j] = ((long)table[j / blockSize] * blockSize + j % blockSize) * m.Row;
            // The contiguous cache's latent attention on these rows: the same bits as CpuMla.Attention on the same cache.
            fixed (long* r = rows)
                CpuMla.AttendLatent(qAbs + (long)task * m.Row, oLat + (long)task * m.Rank, cache, r, n, m, scale);
        });
    }

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
