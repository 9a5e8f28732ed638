// Paged attention/mla-*: DeepSeek's latent cache append and latent attention for a continuous-batching step, where the
// cache rows of several sequences live in fixed-size blocks of one shared pool (the GQA counterpart and the step metadata:
// ../PagedAttentionKernel.cs; the contiguous MLA kernels and their formulas: MlaKernels.cs).
//
// Cache layout (per layer): F32 [NumBlocks * BS, R + Dr], row = slot = block * BS + off, each row [c | k_rope] as in the
// contiguous cache [maxSeq, R + Dr]. MLA has one latent row per token for every head (MQA over the latent), so there is
// no head axis to keep together: a block is simply BS consecutive rows, and a sequence's key at position p is row
// blockTables[seq * maxBlocks + p / BS] * BS + p % BS. Causal, no window (DeepSeek-V3 has none).
//
// Versions:
//   attention/paged-mla-append V1  thread per (token, float of the row): c and k_rope (row strides given, as
//                                  MlaAppendV1) to cache row slots[t]; a slot outside the pool is skipped.
//   attention/paged-mla V1         thread per (token, head, latent dim): every thread walks the visible rows through the
//                                  block table with an online softmax, recomputing the score itself (Row-fold
//                                  redundant). Simplest correct; the same arithmetic in the same order as MlaAttentionV1,
//                                  so on the same rows the two agree bit for bit.
// Bad metadata (a sequence row outside the table, a negative position or one past the table, a block outside the pool)
// never reads out of bounds: the token has no keys (0 / 0 = NaN out) or the block's keys are hidden.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Attention.Mla;

/// <summary>attention/paged-mla-append's versions.</summary>
[KernelFamily("attention/paged-mla-append")]
public enum PagedMlaAppendVersion
{
    /// <summary>One thread per (token, float of the cache row).</summary>
    V1 = 1,
}

/// <summary>attention/paged-mla's (paged latent attention) versions.</summary>
[KernelFamily("attention/paged-mla")]
public enum PagedMlaAttentionVersion
{
    /// <summary>One thread per (token, head, latent dim); simplest correct.</summary>
    V1 = 1,
}

/// <summary>Scalar launch arguments of the paged MLA kernels.</summary>
public struct PagedMlaParams
{
    /// <summary>T: tokens of the step.</summary>
    public int Tokens;

    /// <summary>H: heads.</summary>
    public int Heads;

    /// <summary>R: kv_lora_rank.</summary>
    public int Rank;

    /// <summary>Dr: qk_rope_head_dim.</summary>
    public int RopeDim;

    /// <summary>BS: rows per block.</summary>
    public int BlockSize;

    /// <summary>Columns of blockTables [S, maxBlocks].</summary>
    public int MaxBlocks;

    /// <summary>S: rows of blockTables.</summary>
    public int Sequences;

    /// <summary>Blocks in the pool (cache [NumBlocks * BS, R + Dr]).</summary>
    public int NumBlocks;

    /// <summary>Softmax scale (qk_head_dim^-0.5 times YaRN's mscale^2, the caller's).</summary>
    public float Scale;

    /// <summary>Append: floats between consecutive tokens' c rows and k_rope rows.</summary>
    public int LatentStride;

    public int RopeStride;
}

public static class PagedMlaKernels
{
    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(PagedMlaAppendVersion.V1, "grid ceil(T*(R+Dr)/256), group 256", Decode = DecodeUse.Activations, BlockSize = Devices.MaxGroupSize,
        Summary = "c and k_rope rows to pool rows slots[t]: thread per float")]
    public static void PagedMlaAppendV1(
        ArrayView<float> latent,     // [T, LatentStride], first R floats of each row used
        ArrayView<float> kRope,      // [T, RopeStride], first Dr floats used
        ArrayView<int> slots,        // [T]
        ArrayView<float> cache,      // [NumBlocks * BS, R + Dr]
        PagedMlaParams p)
    {
        int row = p.Rank + p.RopeDim;
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)p.Tokens * row)
            return;
        int t = (int)(index / row);
        int e = (int)(index - (long)t * row);
        int slot = slots[t];
        if (slot < 0 || slot >= p.NumBlocks * p.BlockSize)
            return; // refused on the host; never write outside the pool
        cache[(long)slot * row + e] = e < p.Rank ? latent[(long)t * p.LatentStride + e] : kRope[(long)t * p.RopeStride + e - p.Rank];
    }

    // ---------------------------------------------------------------------------------------------------------
    [KernelInfo(PagedMlaAttentionVersion.V1, "grid ceil(T*H*R/256), group 256", BlockSize = Devices.MaxGroupSize,
        Summary = "thread per (token, head, latent dim), online softmax over the rows found through the block table")]
    public static void PagedMlaAttentionV1(
        ArrayView<float> qAbs,         // [T, H, R + Dr]
        ArrayView<float> cache,        // [NumBlocks * BS, R + Dr]
        ArrayView<int> positions,      // [T]
        ArrayView<int> seqOfToken,     // [T]
        ArrayView<int> blockTables,    // [S, maxBlocks]
        ArrayView<float> oLat,         // [T, H, R]
        PagedMlaParams p)
    {
        int row = p.Rank + p.RopeDim;
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)p.Tokens * p.Heads * p.Rank)
            return;
        long th = index / p.Rank;
        int d = (int)(index - th * p.Rank);
        int t = (int)(th / p.Heads);
        int pos = positions[t];
        int seq = seqOfToken[t];
        if (seq < 0 || seq >= p.Sequences || pos >= p.MaxBlocks * p.BlockSize)
            pos = -1; // no visible row: NaN out, never a read outside the table
        int tableRow = IntrinsicMath.Max(seq, 0) * p.MaxBlocks;
        long qBase = th * row;
        float m = float.NegativeInfinity, l = 0f, acc = 0f;
        for (int j = 0; j <= pos; j++)
        {
            int lb = j / p.BlockSize;
            int block = blockTables[tableRow + lb];
            if (block < 0 || block >= p.NumBlocks)
                continue;
            long c = ((long)block * p.BlockSize + (j - lb * p.BlockSize)) * row;
            float dot = 0f;
            for (int e = 0; e < row; e++)
                dot += qAbs[qBase + e] * cache[c + e];
            float s = dot * p.Scale;
            float mNew = XMath.Max(m, s);
            float alpha = XMath.Exp(m - mNew); // m = -inf on the first row: exp(-inf) = 0
            float pj = XMath.Exp(s - mNew);
            l = l * alpha + pj;
            acc = acc * alpha + pj * cache[c + d];
            m = mNew;
        }

        oLat[index] = acc / l;
    }
}

/// <summary>Launchers of the paged MLA append and latent attention: load once, validate, launch (no scratch).</summary>
public sealed class PagedMlaKernel
{
    private const string Name = "PagedMlaKernel";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, PagedMlaParams> append;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>,
        ArrayView<float>, PagedMlaParams> attention;

    private PagedMlaKernel(Accelerator accelerator)
    {
        append = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, PagedMlaParams>(PagedMlaKernels.PagedMlaAppendV1);
        attention = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, PagedMlaParams>(
            PagedMlaKernels.PagedMlaAttentionV1);
    }

    public static PagedMlaKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>Floats of one layer's pool [numBlocks * BS, R + Dr].</summary>
    public static long CacheElements(int numBlocks, int blockSize, int rank, int ropeDim) => (long)numBlocks * blockSize * (rank + ropeDim);

    /// <summary>
    /// cache[slots[t], :] = [latent[t * latentStride .. + R] | kRope[t * ropeStride .. + Dr]] for t &lt; T (the contiguous
    /// MlaAttentionKernel.Append with a slot for a position). cache [NumBlocks * BS, R + Dr]: the append needs only its
    /// rows (cache.Length / (R + Dr)), not the block size. The caller checks 0 &lt;= slots[t] &lt; rows on the host (the
    /// kernel skips a slot outside).
    /// </summary>
    public void Append(AcceleratorStream stream, ArrayView<float> latent, int latentStride, ArrayView<float> kRope, int ropeStride,
        ArrayView<int> slots, ArrayView<float> cache, int tokens, int rank, int ropeDim)
    {
        const string who = Name + ".Append";
        // Blocks of one row: slot < NumBlocks * BS is then slot < rows.
        var p = Shape(who, stream, cache, tokens, 1, rank, ropeDim, 1);
        if (latentStride < rank || ropeStride < ropeDim)
            throw new ArgumentException($"{who}: row strides ({latentStride}, {ropeStride}) must be at least R ({rank}) and Dr ({ropeDim})");
        MlaChecks.AtLeast(who, "latent [T, stride]", latent.Length, (long)(tokens - 1) * latentStride + rank);
        if (ropeDim > 0)
            MlaChecks.AtLeast(who, "kRope [T, stride]", kRope.Length, (long)(tokens - 1) * ropeStride + ropeDim);
        MlaChecks.AtLeast(who, "slots [T]", slots.Length, tokens);
        p.LatentStride = latentStride;
        p.RopeStride = ropeStride;
        // An empty kRope (Dr = 0) still needs a valid view argument: the kernel never reads it then.
        append(stream, DenseShapes.Elementwise((long)tokens * (rank + ropeDim)), latent, ropeDim > 0 ? kRope : latent, slots, cache, p);
    }

    /// <summary>
    /// o_lat [T, H, R] for q_abs [T, H, R + Dr]: token t at positions[t] attends to the rows of its sequence
    /// (blockTables [S, maxBlocks] row seqOfToken[t]) at positions 0..pos, softmax(q_abs . row * scale), summing the
    /// rows' first R floats. cache [NumBlocks * BS, R + Dr]. Append the step's tokens first; the caller checks the
    /// metadata on the host.
    /// </summary>
    public void Attention(AcceleratorStream stream, ArrayView<float> qAbs, ArrayView<float> cache, ArrayView<int> positions, ArrayView<int> seqOfToken,
        ArrayView<int> blockTables, ArrayView<float> oLat, int tokens, int heads, int rank, int ropeDim, int blockSize, int maxBlocks, float scale)
    {
        const string who = Name + ".Attention";
        var p = Shape(who, stream, cache, tokens, heads, rank, ropeDim, blockSize);
        if (!float.IsFinite(scale) || scale <= 0f)
            throw new ArgumentException($"{who}: scale must be a positive finite number, got {scale}", nameof(scale));
        MlaChecks.AtLeast(who, "qAbs [T, H, R + Dr]", qAbs.Length, (long)tokens * heads * (rank + ropeDim));
        MlaChecks.AtLeast(who, "oLat [T, H, R]", oLat.Length, (long)tokens * heads * rank);
        p.Sequences = PagedMetadata.Check(who, positions, seqOfToken, blockTables, tokens, blockSize, maxBlocks);
        p.MaxBlocks = maxBlocks;
        p.Scale = scale;
        attention(stream, DenseShapes.Elementwise((long)tokens * heads * rank), qAbs, cache, positions, seqOfToken, blockTables, oLat, p);
    }

    private static PagedMlaParams Shape(string who, AcceleratorStream stream, ArrayView<float> cache, int tokens, int heads, int rank, int ropeDim,
        int blockSize)
    {
        DenseShapes.Stream(who, stream);
        MlaChecks.Dims(who, tokens, heads, rank, ropeDim, 1);
        if (blockSize < 1)
            throw new ArgumentException($"{who}: blockSize must be >= 1 (got {blockSize})");
        long perBlock = (long)blockSize * (rank + ropeDim);
        long blocks = cache.Length / perBlock;
        if (blocks < 1)
            throw new ArgumentException($"{who}: cache [NumBlocks * BS, R + Dr] has {cache.Length} floats, less than one block of {perBlock}");
        if (blocks * blockSize > int.MaxValue)
            throw new ArgumentException($"{who}: a pool of {blocks} blocks of {blockSize} has more slots than 32-bit slot ids allow");
        return new PagedMlaParams { Tokens = tokens, Heads = heads, Rank = rank, RopeDim = ropeDim, BlockSize = blockSize, NumBlocks = (int)blocks };
    }
}
