// Oracle for quantized weights: dequantize each format from its definition (plain loops, BCL only), then the
// kernels are compared with RefOps.MatMulT on the dequantized matrix. Every dequantized value is exact in f32
// (a 4/8-bit integer or an E4M3 value times an f16/f32 scale rounds at most once), so the kernels, which compute
// the same products in f32, see bit-identical weights.
//
// Our packed layouts (kernels/ILGpuMoE.Kernels/Quant/QuantLayout.cs), restated here from their definition:
//   Q8  rows of ceil(K/16)*4 little-endian words, byte k of a row = int8 q; w = q * scale[n].
//   Q4  rows of K/8 words, nibble i of word j = unsigned q of k = 8j+i; w = (q - z) * f16 scale[n, k/G],
//       z = zeros[n, k/G] or 8 when there are no zeros.
//   FP8 bytes as Q8, E4M3FN; w = e4m3 * scale[e, (n%N)/BlockN, k/BlockK] (e = n/N for stacked matrices).
// Checkpoint formats (all return W as [out, in], the Hugging Face orientation):
//   AWQ (GEMM)  qweight int32 [in, out/8], word (k, c) holds columns 8c + ORDER[i] in nibble i, ORDER = 0,2,4,6,1,3,5,7;
//               qzeros int32 [in/G, out/8] with the same interleave; scales f16 [in/G, out]; w = (q - z) * s.
//   GPTQ (v1)   qweight int32 [in/8, out], word (r, n) holds k = 8r + i in nibble i; qzeros int32 [groups, out/8],
//               nibble i of word (g, c) is column 8c + i, stored as z - 1; scales f16 [groups, out];
//               g_idx int32 [in] (group of each input column; k/G when absent); w = (q - z) * s.
//   FP8         weight e4m3 [out, in], weight_scale_inv f32 [ceil(out/B), ceil(in/B)] (B = 128); w = e4m3 * s.
namespace ILGpuMoE.Reference;

public static class RefQuant
{
    private static readonly int[] AwqOrder = [0, 2, 4, 6, 1, 3, 5, 7];

    /// <summary>E4M3FN from its definition: bias 7, subnormals at e = 0, only S.1111.111 is NaN, no infinities.</summary>
    public static float DecodeE4M3(byte code)
    {
        int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
        if (e == 15 && m == 7)
            return float.NaN;
        double mag = e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
        return (float)(s == 1 ? -mag : mag);
    }

    public static float HalfToFloat(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    private static int Nibble(uint word, int i) => (int)((word >> (4 * i)) & 15);

    private static int Nibble(int word, int i) => Nibble(unchecked((uint)word), i);

    private static byte ByteOf(ReadOnlySpan<uint> words, long rowWord0, int k) => (byte)(words[(int)(rowWord0 + k / 4)] >> (8 * (k % 4)));

    /// <summary>Our Q8 layout -> W [rows, cols].</summary>
    public static float[] DequantQ8(ReadOnlySpan<uint> words, ReadOnlySpan<float> scales, int rows, int cols)
    {
        int rowWords = (cols + 15) / 16 * 4;
        Check(words.Length >= (long)rows * rowWords && scales.Length >= rows, "DequantQ8: buffers too short");
        var w = new float[(long)rows * cols];
        for (int n = 0; n < rows; n++)
        {
            for (int k = 0; k < cols; k++)
                w[(long)n * cols + k] = (float)((sbyte)ByteOf(words, (long)n * rowWords, k) * (double)scales[n]);
        }

        return w;
    }

    /// <summary>Our Q4 layout -> W [rows, cols]; zeros empty = symmetric (z = 8).</summary>
    public static float[] DequantQ4(ReadOnlySpan<uint> words, ReadOnlySpan<ushort> scalesF16, ReadOnlySpan<byte> zeros, int rows, int cols, int groupSize)
    {
        Check(groupSize > 0 && cols % groupSize == 0 && groupSize % 8 == 0, $"DequantQ4: cols = {cols} is not a multiple of the group size {groupSize}");
        int groups = cols / groupSize, rowWords = cols / 8;
        Check(words.Length >= (long)rows * rowWords && scalesF16.Length >= (long)rows * groups, "DequantQ4: buffers too short");
        var w = new float[(long)rows * cols];
        for (int n = 0; n < rows; n++)
        {
            for (int k = 0; k < cols; k++)
            {
                int g = n * groups + k / groupSize;
                int q = Nibble(words[n * rowWords + k / 8], k % 8);
                int z = zeros.IsEmpty ? 8 : zeros[g];
                w[(long)n * cols + k] = (float)((q - z) * (double)HalfToFloat(scalesF16[g]));
            }
        }

        return w;
    }

    /// <summary>Our FP8 layout -> W [rows, cols]; matrices of matrixRows rows stacked, each with its own block scales.</summary>
    public static float[] DequantFp8(ReadOnlySpan<uint> words, ReadOnlySpan<float> scales, int rows, int cols, int matrixRows, int blockN, int blockK)
    {
        int rowWords = (cols + 15) / 16 * 4;
        int sr = (matrixRows + blockN - 1) / blockN, sc = (cols + blockK - 1) / blockK;
        Check(words.Length >= (long)rows * rowWords && scales.Length >= (long)(rows / matrixRows) * sr * sc, "DequantFp8: buffers too short");
        var w = new float[(long)rows * cols];
        for (int n = 0; n < rows; n++)
        {
            int e = n / matrixRows, r = n % matrixRows;
            for (int k = 0; k < cols; k++)
            {
                float s = scales[(e * sr + r / blockN) * sc + k / blockK];
                w[(long)n * cols + k] = (float)(DecodeE4M3(ByteOf(words, (long)n * rowWords, k)) * (double)s);
            }
        }

        return w;
    }

    /// <summary>AWQ GEMM-format tensors -> W [outDim, inDim].</summary>
    public static float[] DequantAwq(ReadOnlySpan<int> qweight, ReadOnlySpan<int> qzeros, ReadOnlySpan<ushort> scales, int inDim, int outDim, int groupSize)
    {
        Check(outDim % 8 == 0 && inDim % groupSize == 0, $"DequantAwq: out {outDim} must be a multiple of 8 and in {inDim} of G {groupSize}");
        int cw = outDim / 8;
        var w = new float[(long)outDim * inDim];
        for (int k = 0; k < inDim; k++)
        {
            int g = k / groupSize;
            for (int c = 0; c < cw; c++)
            {
                for (int i = 0; i < 8; i++)
                {
                    int n = 8 * c + AwqOrder[i];
                    int q = Nibble(qweight[k * cw + c], i);
                    int z = Nibble(qzeros[g * cw + c], i);
                    w[(long)n * inDim + k] = (float)((q - z) * (double)HalfToFloat(scales[g * outDim + n]));
                }
            }
        }

        return w;
    }

    /// <summary>GPTQ (v1 zeros, stored = z - 1) tensors -> W [outDim, inDim]; gIdx empty = k / G.</summary>
    public static float[] DequantGptq(ReadOnlySpan<int> qweight, ReadOnlySpan<int> qzeros, ReadOnlySpan<ushort> scales, ReadOnlySpan<int> gIdx,
        int inDim, int outDim, int groupSize)
    {
        Check(outDim % 8 == 0 && inDim % 8 == 0, $"DequantGptq: in {inDim} and out {outDim} must be multiples of 8");
        var w = new float[(long)outDim * inDim];
        for (int k = 0; k < inDim; k++)
        {
            int g = gIdx.IsEmpty ? k / groupSize : gIdx[k];
            for (int n = 0; n < outDim; n++)
            {
                int q = Nibble(qweight[(k / 8) * outDim + n], k % 8);
                int z = Nibble(qzeros[g * (outDim / 8) + n / 8], n % 8) + 1;
                w[(long)n * inDim + k] = (float)((q - z) * (double)HalfToFloat(scales[g * outDim + n]));
            }
        }

        return w;
    }

    /// <summary>FP8 block-scaled checkpoint (weight [rows, cols] e4m3, weight_scale_inv [ceil(rows/B), ceil(cols/B)]) -> W.</summary>
    public static float[] DequantFp8Checkpoint(ReadOnlySpan<byte> weight, ReadOnlySpan<float> scaleInv, int rows, int cols, int block = 128)
    {
        int sc = (cols + block - 1) / block;
        Check(weight.Length >= (long)rows * cols && scaleInv.Length >= (long)((rows + block - 1) / block) * sc, "DequantFp8Checkpoint: buffers too short");
        var w = new float[(long)rows * cols];
        for (int n = 0; n < rows; n++)
        {
            for (int k = 0; k < cols; k++)
                w[(long)n * cols + k] = (float)(DecodeE4M3(weight[n * cols + k]) * (double)scaleInv[(n / block) * sc + k / block]);
        }

        return w;
    }

    /// <summary>||a - b||_F / ||b||_F in double.</summary>
    public static double RelativeFrobeniusError(ReadOnlySpan<float> approx, ReadOnlySpan<float> exact)
    {
        Check(approx.Length == exact.Length, "RelativeFrobeniusError: lengths differ");
        double num = 0, den = 0;
        for (int i = 0; i < exact.Length; i++)
        {
            double d = (double)approx[i] - exact[i];
            num += d * d;
            den += (double)exact[i] * exact[i];
        }

        return Math.Sqrt(num / den);
    }

    private static void Check(bool ok, string message)
    {
        if (!ok)
            throw new ArgumentException(message);
    }
}
