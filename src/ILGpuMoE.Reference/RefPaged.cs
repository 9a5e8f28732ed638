// The paged KV cache of continuous batching, as the oracle states it: several sequences' tokens concatenated in one
// step, each sequence's keys and values in fixed-size blocks of one pool, found through a block table (the kernels:
// kernels/ILGpuMoE.Kernels/Attention/PagedAttentionKernel.cs and Attention/Mla/PagedMlaKernels.cs; the layouts are
// stated there). Paging is the only new thing here: the attention gathers a token's keys through its sequence's block
// table into a contiguous copy and hands it to the existing oracle (RefOps.GeneralAttention, RefMlaAttention
// .LatentAttention), so every softmax rule (causal, window, sinks, scale, GQA mapping) is the contiguous one.
//
// Layouts: kCache, vCache [NumBlocks, Hkv, BS, Dh], element (block, h, off, d) at ((block * Hkv + h) * BS + off) * Dh + d;
// the MLA pool [NumBlocks * BS, R + Dr], row = slot. A slot is block * BS + off; the key at position p of sequence s sits
// in slot blockTables[s * maxBlocks + p / BS] * BS + p % BS. Every index is checked: metadata that points outside the
// table or the pool throws (the oracle never guesses what a kernel does with bad data).
namespace ILGpuMoE.Reference;

public static partial class RefOps
{
    /// <summary>kCache, vCache [NumBlocks, Hkv, BS, Dh] at slot slots[t] get k[t, h, :], v[t, h, :] (k, v [T, Hkv, Dh]), in place.</summary>
    public static void PagedKvAppend(ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> kCache, Span<float> vCache, ReadOnlySpan<int> slots,
        int tokens, int kvHeads, int headDim, int blockSize)
    {
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive((kvHeads, nameof(kvHeads)), (headDim, nameof(headDim)), (blockSize, nameof(blockSize)));
        Require.Length(k, (long)tokens * kvHeads * headDim, nameof(k), "[T, Hkv, Dh]");
        Require.Length(v, (long)tokens * kvHeads * headDim, nameof(v), "[T, Hkv, Dh]");
        Require.Length(slots, tokens, nameof(slots), "[T]");
        int blocks = PagedBlocks(kCache.Length, vCache.Length, (long)kvHeads * blockSize * headDim, "PagedKvAppend");
        for (int t = 0; t < tokens; t++)
        {
            int slot = slots[t];
            if ((uint)slot >= (uint)((long)blocks * blockSize))
                throw new ArgumentException($"PagedKvAppend: slots[{t}] = {slot} is outside the pool of {blocks} blocks of {blockSize}.", nameof(slots));
            for (int h = 0; h < kvHeads; h++)
            {
                long dst = PagedIndex(slot / blockSize, h, slot % blockSize, kvHeads, blockSize, headDim);
                k.Slice((t * kvHeads + h) * headDim, headDim).CopyTo(kCache.Slice((int)dst, headDim));
                v.Slice((t * kvHeads + h) * headDim, headDim).CopyTo(vCache.Slice((int)dst, headDim));
            }
        }
    }

    /// <summary>
    /// o [T, H, Dh] for q [T, H, Dh]: token t (position positions[t] of sequence seqOfToken[t]) attends to its sequence's
    /// keys at positions 0..pos, read through blockTables [S, maxBlocks] from kCache, vCache [NumBlocks, Hkv, BS, Dh]; the
    /// rest as <see cref="GeneralAttention"/> (window, sinks [H] or empty, scale), which computes it on the gathered keys.
    /// </summary>
    public static float[] PagedAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> kCache, ReadOnlySpan<float> vCache, ReadOnlySpan<int> positions,
        ReadOnlySpan<int> seqOfToken, ReadOnlySpan<int> blockTables, int tokens, int heads, int kvHeads, int headDim, int blockSize, int maxBlocks,
        int window, ReadOnlySpan<float> sinks, double scale)
    {
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive((heads, nameof(heads)), (kvHeads, nameof(kvHeads)), (headDim, nameof(headDim)), (blockSize, nameof(blockSize)),
            (maxBlocks, nameof(maxBlocks)));
        Require.Length(q, (long)tokens * heads * headDim, nameof(q), "[T, H, Dh]");
        Require.Length(positions, tokens, nameof(positions), "[T]");
        Require.Length(seqOfToken, tokens, nameof(seqOfToken), "[T]");
        int blocks = PagedBlocks(kCache.Length, vCache.Length, (long)kvHeads * blockSize * headDim, "PagedAttention");
        var o = new float[tokens * heads * headDim];
        for (int t = 0; t < tokens; t++)
        {
            int keys = PagedKeys(positions, seqOfToken, blockTables, t, blockSize, maxBlocks, "PagedAttention");
            // The sequence's keys 0..pos as the contiguous [S, Hkv, Dh] GeneralAttention reads; those before the window
            // are never read (NaN here shows it), and their blocks may be gone.
            var k = new float[keys * kvHeads * headDim];
            var v = new float[k.Length];
            Array.Fill(k, float.NaN);
            Array.Fill(v, float.NaN);
            for (int p = window > 0 ? Math.Max(0, keys - window) : 0; p < keys; p++)
            {
                int block = PagedBlock(blockTables, seqOfToken[t], p, blockSize, maxBlocks, blocks, "PagedAttention");
                for (int h = 0; h < kvHeads; h++)
                {
                    int src = (int)PagedIndex(block, h, p % blockSize, kvHeads, blockSize, headDim);
                    kCache.Slice(src, headDim).CopyTo(k.AsSpan((p * kvHeads + h) * headDim, headDim));
                    vCache.Slice(src, headDim).CopyTo(v.AsSpan((p * kvHeads + h) * headDim, headDim));
                }
            }

            var row = GeneralAttention(q.Slice(t * heads * headDim, heads * headDim), k, v, [keys - 1], 1, keys, heads, kvHeads, headDim, headDim,
                scale, window, sinks);
            row.CopyTo(o.AsSpan(t * heads * headDim));
        }

        return o;
    }

    /// <summary>Flat index of (block, kv head, offset, dim) in [NumBlocks, Hkv, BS, Dh].</summary>
    public static long PagedIndex(int block, int kvHead, int offset, int kvHeads, int blockSize, int headDim) =>
        (((long)block * kvHeads + kvHead) * blockSize + offset) * headDim;

    /// <summary>Blocks of a pool whose two caches hold kLength and vLength floats of perBlock each (whole blocks, the same count).</summary>
    internal static int PagedBlocks(long kLength, long vLength, long perBlock, string op)
    {
        if (kLength == 0 || kLength % perBlock != 0 || vLength != kLength)
            throw new ArgumentException($"{op}: the caches hold {kLength} and {vLength} floats, expected the same whole number of blocks of {perBlock}.");
        return checked((int)(kLength / perBlock));
    }

    /// <summary>Keys token t sees: positions[t] + 1, after checking its sequence row and position against the table.</summary>
    internal static int PagedKeys(ReadOnlySpan<int> positions, ReadOnlySpan<int> seqOfToken, ReadOnlySpan<int> blockTables, int t, int blockSize,
        int maxBlocks, string op)
    {
        int seq = seqOfToken[t], pos = positions[t];
        if (blockTables.Length % maxBlocks != 0 || (uint)seq >= (uint)(blockTables.Length / maxBlocks))
            throw new ArgumentException($"{op}: seqOfToken[{t}] = {seq} is not a row of blockTables [{blockTables.Length / maxBlocks}, {maxBlocks}].", nameof(seqOfToken));
        if ((uint)pos >= (uint)((long)maxBlocks * blockSize))
            throw new ArgumentException($"{op}: positions[{t}] = {pos} is outside the {maxBlocks} blocks of {blockSize} of a table row.", nameof(positions));
        return pos + 1;
    }

    /// <summary>The physical block holding position p of sequence seq, checked against the pool.</summary>
    internal static int PagedBlock(ReadOnlySpan<int> blockTables, int seq, int p, int blockSize, int maxBlocks, int blocks, string op)
    {
        int block = blockTables[seq * maxBlocks + p / blockSize];
        if ((uint)block >= (uint)blocks)
            throw new ArgumentException($"{op}: blockTables[{seq}, {p / blockSize}] = {block} is outside the pool of {blocks} blocks.", nameof(blockTables));
        return block;
    }
}

public static partial class RefMlaAttention
{
    /// <summary>
    /// The MLA pool [NumBlocks * BS, R + Dr] row slots[t] = [latent[t * latentStride .. + R] | kRope[t * ropeStride .. + Dr]],
    /// in place (a slot is a row: the block size plays no part).
    /// </summary>
    public static void PagedAppend(ReadOnlySpan<float> latent, int latentStride, ReadOnlySpan<float> kRope, int ropeStride, ReadOnlySpan<int> slots,
        Span<float> cache, int tokens, int rank, int ropeDim)
    {
        const int blockSize = 1;
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive(rank, nameof(rank));
        Require.NonNegative(ropeDim, nameof(ropeDim));
        if (latentStride < rank || ropeStride < ropeDim)
            throw new ArgumentException($"PagedAppend: row strides ({latentStride}, {ropeStride}) must be at least R ({rank}) and Dr ({ropeDim}).");
        Require.Length(slots, tokens, nameof(slots), "[T]");
        int row = rank + ropeDim;
        int blocks = RefOps.PagedBlocks(cache.Length, cache.Length, (long)blockSize * row, "PagedAppend");
        for (int t = 0; t < tokens; t++)
        {
            int slot = slots[t];
            if ((uint)slot >= (uint)((long)blocks * blockSize))
                throw new ArgumentException($"PagedAppend: slots[{t}] = {slot} is outside the pool of {blocks} rows.", nameof(slots));
            latent.Slice(t * latentStride, rank).CopyTo(cache.Slice(slot * row, rank));
            kRope.Slice(t * ropeStride, ropeDim).CopyTo(cache.Slice(slot * row + rank, ropeDim));
        }
    }

    /// <summary>
    /// o_lat [T, H, R] for q_abs [T, H, R + Dr]: token t (position positions[t] of sequence seqOfToken[t]) attends to its
    /// sequence's rows at positions 0..pos, read through blockTables [S, maxBlocks] from the pool [NumBlocks * BS, R + Dr];
    /// <see cref="LatentAttention"/> computes it on the gathered rows.
    /// </summary>
    public static float[] PagedLatentAttention(ReadOnlySpan<float> qAbs, ReadOnlySpan<float> cache, ReadOnlySpan<int> positions, ReadOnlySpan<int> seqOfToken,
        ReadOnlySpan<int> blockTables, int tokens, MlaShape s, int blockSize, int maxBlocks, double scale)
    {
        s.Validate();
        Require.NonNegative(tokens, nameof(tokens));
        Require.Positive((blockSize, nameof(blockSize)), (maxBlocks, nameof(maxBlocks)));
        Require.Length(qAbs, (long)tokens * s.Heads * s.Row, nameof(qAbs), "[T, H, R + Dr]");
        Require.Length(positions, tokens, nameof(positions), "[T]");
        Require.Length(seqOfToken, tokens, nameof(seqOfToken), "[T]");
        int blocks = RefOps.PagedBlocks(cache.Length, cache.Length, (long)blockSize * s.Row, "PagedLatentAttention");
        var o = new float[tokens * s.Heads * s.Rank];
        for (int t = 0; t < tokens; t++)
        {
            int keys = RefOps.PagedKeys(positions, seqOfToken, blockTables, t, blockSize, maxBlocks, "PagedLatentAttention");
            var rows = new float[keys * s.Row];
            for (int p = 0; p < keys; p++)
            {
                int block = RefOps.PagedBlock(blockTables, seqOfToken[t], p, blockSize, maxBlocks, blocks, "PagedLatentAttention");
                cache.Slice((block * blockSize + p % blockSize) * s.Row, s.Row).CopyTo(rows.AsSpan(p * s.Row, s.Row));
            }

            var y = LatentAttention(qAbs.Slice(t * s.Heads * s.Row, s.Heads * s.Row), rows, [keys - 1], 1, keys, s, scale);
            y.CopyTo(o.AsSpan(t * s.Heads * s.Rank));
        }

        return o;
    }
}
