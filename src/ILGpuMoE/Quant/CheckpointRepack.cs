// Offline repack of quantized checkpoint formats into our layouts. Values are moved, never re-quantized: the
// repacked matrix dequantizes to exactly what the checkpoint format defines (see RefQuant for the definitions).
//
//   AWQ (GEMM)  qweight int32 [in, out/8], 8 output columns per word in nibble order [0,2,4,6,1,3,5,7]
//               (nibble i holds column 8c + ORDER[i]); qzeros int32 [in/G, out/8] same order; scales f16 [in/G, out].
//   GPTQ (v1)   qweight int32 [in/8, out], 8 input rows per word in straight order; qzeros int32 [groups, out/8]
//               straight order, stored as z - 1; scales f16 [groups, out]; g_idx int32 [in] (optional, act-order).
//   FP8         weight e4m3 [out, in] + weight_scale_inv f32 [ceil(out/128), ceil(in/128)] (it multiplies), or a
//               per-tensor scale.
// Our Q4 keeps zero points as bytes, so GPTQ's z = stored + 1 = 16 still fits.
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

public static class CheckpointRepack
{
    private static readonly int[] AwqOrder = [0, 2, 4, 6, 1, 3, 5, 7];

    private static int Nibble(int word, int i) => (int)(((uint)word >> (4 * i)) & 15);

    /// <summary>AWQ GEMM tensors of a Linear(in, out) -> Q4 [out, in] with zero points.</summary>
    public static Q4Matrix FromAwq(ReadOnlySpan<int> qweight, ReadOnlySpan<int> qzeros, ReadOnlySpan<ushort> scales,
        int inDim, int outDim, int groupSize)
    {
        Quantizer.CheckGroup("FromAwq", inDim, groupSize);
        if (outDim < 8 || outDim % 8 != 0)
            throw new ArgumentException($"FromAwq: out dim {outDim} must be a positive multiple of 8 (8 columns per packed word)");
        int groups = inDim / groupSize, cw = outDim / 8;
        Need("FromAwq", "qweight", qweight.Length, (long)inDim * cw, $"[{inDim}, {cw}]");
        Need("FromAwq", "qzeros", qzeros.Length, (long)groups * cw, $"[{groups}, {cw}]");
        Need("FromAwq", "scales", scales.Length, (long)groups * outDim, $"[{groups}, {outDim}]");
        var (words, s16, zeros) = NewQ4(outDim, inDim, groupSize);
        int rowWords = inDim / 8;
        // An 8 x 8 nibble transpose per (8 input rows k, packed column word c): AWQ word (k, c) holds output 8c +
        // ORDER[i] in nibble i; our word (n, k/8) holds k % 8 in nibble k % 8. Tiles of 16 words x 64 column words keep
        // the reads contiguous and the written lines (64 x 8 rows) in cache; tiles run in parallel (a Mixtral expert
        // matrix is 58.7 M weights, so the per-nibble loop this replaces took ~1 s each).
        var qw = qweight.ToArray(); // spans cannot cross into the parallel body
        const int RBlock = 16, CBlock = 64;
        int rBlocks = (rowWords + RBlock - 1) / RBlock, cBlocks = (cw + CBlock - 1) / CBlock;
        Parallel.For(0, rBlocks * cBlocks, tile =>
        {
            int r0 = tile / cBlocks * RBlock, c0 = tile % cBlocks * CBlock;
            Span<uint> w = stackalloc uint[8];
            for (int r = r0; r < Math.Min(rowWords, r0 + RBlock); r++)
            {
                for (int c = c0; c < Math.Min(cw, c0 + CBlock); c++)
                {
                    for (int i = 0; i < 8; i++)
                        w[i] = (uint)qw[(long)(8 * r + i) * cw + c];
                    for (int s = 0; s < 8; s++)
                    {
                        uint word = 0;
                        for (int i = 0; i < 8; i++)
                            word |= ((w[i] >> (4 * s)) & 15u) << (4 * i);
                        words[(long)(8 * c + AwqOrder[s]) * rowWords + r] = word;
                    }
                }
            }
        });

        for (int g = 0; g < groups; g++)
        {
            for (int c = 0; c < cw; c++)
            {
                for (int i = 0; i < 8; i++)
                {
                    int n = 8 * c + AwqOrder[i];
                    zeros[n * groups + g] = (byte)Nibble(qzeros[g * cw + c], i);
                    s16[n * groups + g] = scales[g * outDim + n];
                }
            }
        }

        return new Q4Matrix(outDim, inDim, words, s16, zeros, groupSize);
    }

    /// <summary>
    /// GPTQ (v1 zeros) tensors of a Linear(in, out) -> Q4 [out, in] with zero points. gIdx empty or k / G: columns stay in
    /// input order. Otherwise (act-order) columns are sorted by group and the result carries InputPermutation.
    /// </summary>
    public static Q4Matrix FromGptq(ReadOnlySpan<int> qweight, ReadOnlySpan<int> qzeros, ReadOnlySpan<ushort> scales, ReadOnlySpan<int> gIdx,
        int inDim, int outDim, int groupSize)
    {
        Quantizer.CheckGroup("FromGptq", inDim, groupSize);
        if (outDim < 8 || outDim % 8 != 0)
            throw new ArgumentException($"FromGptq: out dim {outDim} must be a positive multiple of 8 (8 zero points per packed word)");
        int groups = inDim / groupSize, cw = outDim / 8;
        Need("FromGptq", "qweight", qweight.Length, (long)(inDim / 8) * outDim, $"[{inDim / 8}, {outDim}]");
        Need("FromGptq", "qzeros", qzeros.Length, (long)groups * cw, $"[{groups}, {cw}]");
        Need("FromGptq", "scales", scales.Length, (long)groups * outDim, $"[{groups}, {outDim}]");
        int[]? perm = null;
        if (!gIdx.IsEmpty)
        {
            if (gIdx.Length != inDim)
                throw new ArgumentException($"FromGptq: g_idx has {gIdx.Length} entries, expected in dim {inDim}");
            var members = new int[groups];
            for (int k = 0; k < inDim; k++)
            {
                int g = gIdx[k];
                if (g < 0 || g >= groups)
                    throw new ArgumentException($"FromGptq: g_idx[{k}] = {g} is outside 0..{groups - 1}");
                members[g]++;
            }

            if (ActOrder.IsActOrder(gIdx, groupSize))
            {
                for (int g = 0; g < groups; g++)
                {
                    if (members[g] != groupSize)
                        throw new ArgumentException($"FromGptq: act-order group {g} has {members[g]} input columns, expected G = {groupSize}");
                }

                var ks = Enumerable.Range(0, inDim).ToArray();
                var keys = gIdx.ToArray();
                perm = ks.OrderBy(k => keys[k]).ThenBy(k => k).ToArray(); // stable: packed column j is input column perm[j]
            }
        }

        var (words, s16, zeros) = NewQ4(outDim, inDim, groupSize);
        int rowWords = inDim / 8;
        // GPTQ word (r, n) holds k = 8r..8r+7 of output n in straight nibble order, which is our word (n, r): in input
        // order the repack is a transpose of int32 words; act-order also moves each nibble to its packed column j
        // (k = perm[j]). Blocks of 64 output rows run in parallel (a Mixtral expert matrix is 58.7 M weights).
        var qw = qweight.ToArray(); // spans cannot cross into the parallel body
        var order = perm;
        const int NBlock = 64;
        Parallel.For(0, (outDim + NBlock - 1) / NBlock, blk =>
        {
            int n0 = blk * NBlock, n1 = Math.Min(outDim, n0 + NBlock);
            if (order is null)
            {
                for (int r = 0; r < rowWords; r++)
                {
                    long src = (long)r * outDim;
                    for (int n = n0; n < n1; n++)
                        words[(long)n * rowWords + r] = (uint)qw[src + n];
                }

                return;
            }

            var col = new uint[rowWords];
            for (int n = n0; n < n1; n++)
            {
                for (int r = 0; r < rowWords; r++)
                    col[r] = (uint)qw[(long)r * outDim + n];
                long dst = (long)n * rowWords;
                for (int j8 = 0; j8 < rowWords; j8++)
                {
                    uint word = 0;
                    for (int i = 0; i < 8; i++)
                    {
                        int k = order[8 * j8 + i];
                        word |= ((col[k >> 3] >> (4 * (k & 7))) & 15u) << (4 * i);
                    }

                    words[dst + j8] = word;
                }
            }
        });

        for (int g = 0; g < groups; g++)
        {
            for (int n = 0; n < outDim; n++)
            {
                zeros[n * groups + g] = (byte)(Nibble(qzeros[g * cw + n / 8], n % 8) + 1);
                s16[n * groups + g] = scales[g * outDim + n];
            }
        }

        return new Q4Matrix(outDim, inDim, words, s16, zeros, groupSize, inputPermutation: perm);
    }

    /// <summary>FP8 block-scaled checkpoint: weight e4m3 [rows, cols], weight_scale_inv [ceil(rows/block), ceil(cols/block)].</summary>
    public static Fp8Matrix FromFp8(ReadOnlySpan<byte> weight, ReadOnlySpan<float> scaleInv, int rows, int cols, int block = Quantizer.Fp8Block)
    {
        if (rows < 1 || cols < 1)
            throw new ArgumentException($"FromFp8: shape [{rows}, {cols}] must be positive");
        Quantizer.CheckFp8Block("FromFp8", rows, cols, block, block);
        int sr = (rows + block - 1) / block, sc = (cols + block - 1) / block;
        Need("FromFp8", "weight", weight.Length, (long)rows * cols, $"[{rows}, {cols}]");
        Need("FromFp8", "weight_scale_inv", scaleInv.Length, (long)sr * sc, $"[{sr}, {sc}]");
        return new Fp8Matrix(rows, cols, PackBytes(weight, rows, cols), scaleInv[..(sr * sc)].ToArray(), block, block);
    }

    /// <summary>FP8 with one per-tensor scale (w = e4m3 * scale).</summary>
    public static Fp8Matrix FromFp8PerTensor(ReadOnlySpan<byte> weight, float scale, int rows, int cols)
    {
        if (rows < 1 || cols < 1)
            throw new ArgumentException($"FromFp8PerTensor: shape [{rows}, {cols}] must be positive");
        Need("FromFp8PerTensor", "weight", weight.Length, (long)rows * cols, $"[{rows}, {cols}]");
        return new Fp8Matrix(rows, cols, PackBytes(weight, rows, cols), [scale], rows, cols);
    }

    /// <summary>AWQ tensors PREFIX.qweight (I32 [in, out/8]), .qzeros (I32), .scales (F16) of a checkpoint. groupSize 0: one group per row.</summary>
    public static Q4Matrix ReadAwq(Checkpoint checkpoint, string prefix, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        var qw = Tensor(checkpoint, prefix + ".qweight", DType.I32, 2);
        Tensor(checkpoint, prefix + ".qzeros", DType.I32, 2);
        Tensor(checkpoint, prefix + ".scales", DType.F16, 2);
        int inDim = (int)qw.Shape[0];
        return FromAwq(checkpoint.GetSpan<int>(prefix + ".qweight"), checkpoint.GetSpan<int>(prefix + ".qzeros"),
            checkpoint.GetSpan<ushort>(prefix + ".scales"), inDim, (int)qw.Shape[1] * 8, groupSize > 0 ? groupSize : inDim);
    }

    /// <summary>GPTQ tensors PREFIX.qweight (I32 [in/8, out]), .qzeros (I32), .scales (F16), optional .g_idx (I32 [in]).
    /// groupSize 0: one group per row (group_size -1).</summary>
    public static Q4Matrix ReadGptq(Checkpoint checkpoint, string prefix, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        var qw = Tensor(checkpoint, prefix + ".qweight", DType.I32, 2);
        Tensor(checkpoint, prefix + ".qzeros", DType.I32, 2);
        Tensor(checkpoint, prefix + ".scales", DType.F16, 2);
        ReadOnlySpan<int> gIdx = default;
        if (checkpoint.Contains(prefix + ".g_idx"))
        {
            Tensor(checkpoint, prefix + ".g_idx", DType.I32, 1);
            gIdx = checkpoint.GetSpan<int>(prefix + ".g_idx");
        }

        int inDim = (int)qw.Shape[0] * 8;
        return FromGptq(checkpoint.GetSpan<int>(prefix + ".qweight"), checkpoint.GetSpan<int>(prefix + ".qzeros"),
            checkpoint.GetSpan<ushort>(prefix + ".scales"), gIdx, inDim, (int)qw.Shape[1], groupSize > 0 ? groupSize : inDim);
    }

    /// <summary>
    /// FP8 tensors PREFIX.weight (F8_E4M3 [out, in]) with PREFIX.weight_scale_inv (F32, 128 x 128 blocks) or
    /// PREFIX.weight_scale (F32, one element: per tensor).
    /// </summary>
    public static Fp8Matrix ReadFp8(Checkpoint checkpoint, string prefix)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        var w = Tensor(checkpoint, prefix + ".weight", DType.F8_E4M3, 2);
        int rows = (int)w.Shape[0], cols = (int)w.Shape[1];
        if (checkpoint.Contains(prefix + ".weight_scale_inv"))
        {
            Tensor(checkpoint, prefix + ".weight_scale_inv", DType.F32, 2);
            return FromFp8(checkpoint.GetBytes(prefix + ".weight"), checkpoint.GetSpan<float>(prefix + ".weight_scale_inv"), rows, cols);
        }

        if (checkpoint.Contains(prefix + ".weight_scale"))
        {
            var info = checkpoint.Get(prefix + ".weight_scale");
            if (info.DType != DType.F32 || info.ElementCount != 1)
                throw new InvalidDataException($"ReadFp8: {prefix}.weight_scale is {info.DType} with {info.ElementCount} elements, expected one F32");
            return FromFp8PerTensor(checkpoint.GetBytes(prefix + ".weight"), checkpoint.GetSpan<float>(prefix + ".weight_scale")[0], rows, cols);
        }

        throw new InvalidDataException($"ReadFp8: {prefix}.weight has neither weight_scale_inv nor weight_scale in {checkpoint.Directory}");
    }

    private static TensorInfo Tensor(Checkpoint checkpoint, string name, DType dtype, int rank)
    {
        if (!checkpoint.Contains(name))
            throw new InvalidDataException($"checkpoint {checkpoint.Directory} has no tensor {name}");
        var info = checkpoint.Get(name);
        if (info.DType != dtype || info.Shape.Length != rank)
            throw new InvalidDataException($"tensor {name} is {info.DType} rank {info.Shape.Length}, expected {dtype} rank {rank}");
        return info;
    }

    private static uint[] PackBytes(ReadOnlySpan<byte> bytes, int rows, int cols)
    {
        int rowWords = QuantLayout.ByteRowWords(cols);
        var words = new uint[(long)rows * rowWords];
        for (int n = 0; n < rows; n++)
        {
            for (int k = 0; k < cols; k++)
                words[n * rowWords + k / 4] |= (uint)bytes[n * cols + k] << (8 * (k % 4));
        }

        return words;
    }

    private static (uint[] Words, ushort[] Scales, byte[] Zeros) NewQ4(int rows, int cols, int groupSize) =>
        (new uint[(long)rows * (cols / 8)], new ushort[(long)rows * (cols / groupSize)], new byte[(long)rows * (cols / groupSize)]);

    private static void Need(string where, string what, long have, long need, string shape)
    {
        if (have != need)
            throw new ArgumentException($"{where}: {what} has {have} elements, expected {shape} = {need}");
    }
}
