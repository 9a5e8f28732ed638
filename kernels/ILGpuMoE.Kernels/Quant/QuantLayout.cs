// Packed weight layouts of the quantized kernels (weights only; activations stay F32).
//
// Every scheme stores a weight matrix W [N, K] (Hugging Face [out, in]; experts stacked as [E*N, K]) row-major,
// each row a whole number of 16-byte units (one ld.v4.b32 per lane: a warp moves 512 contiguous bytes per load).
// Rows are packed along the INPUT dim K, so a GEMV warp that owns one output row streams that row's bytes
// front to back, and each weight byte is read exactly once per launch.
//
//   Q8   int8, symmetric, one F32 scale per output row:   w[n, k] = q * scale[n],  q in [-127, 127].
//        word j of row n (little endian), 4 values per 32-bit word:
//            bit 31      24 23      16 15       8 7        0
//               [ k=4j+3  ][ k=4j+2  ][ k=4j+1  ][ k=4j+0  ]   two's-complement bytes
//        RowWords = ceil(K / 16) * 4: the tail of the last unit is zero bytes (q = 0 contributes 0).
//
//   Q4   int4, G values per group along K (G a multiple of 32 dividing K: 32, 64, 128 usually; G = K is one group per
//        row, GPTQ's group_size -1), F16 scale per (row, group), optional
//        zero point per (row, group) (one byte each):      w[n, k] = (q - z) * scale[n, k / G],  q in [0, 15];
//        symmetric: no zero buffer, z = 8 (q = s + 8 for s in [-8, 7]).
//        word j of row n, 8 values per 32-bit word, straight order (nibble i is k = 8j + i):
//            bit 31  28 27  24 23  20 19  16 15  12 11   8 7    4 3    0
//               [ k+7  ][ k+6  ][ k+5  ][ k+4  ][ k+3  ][ k+2  ][ k+1  ][ k+0  ]     (k = 8j)
//        RowWords = K / 8 (K % G == 0 and G >= 32 make it a multiple of 4: no padding). A 16-byte unit is 32
//        values and never straddles a group, so one (scale, zero) serves a whole unit.
//        scales [N, K/G] F16; zeros [N, K/G] bytes (values 0..15).
//
//   FP8  E4M3FN bytes (see Fp8.cs), same byte layout as Q8, F32 scale per block of BlockN rows x BlockK columns:
//            w[n, k] = e4m3(b) * scale[e, n' / BlockN, k / BlockK]   (e = n / N, n' = n % N for stacked experts)
//        block 128 x 128 is the DeepSeek-V3 / FP8 Mixtral checkpoint layout (`weight_scale_inv` multiplies);
//        per-tensor scale = one block of N x K. BlockK must be a multiple of 16 (a unit never straddles a block).
//
//   MXFP4  gpt-oss's checkpoint bytes as they are (Mxfp4.cs): Q4's word and nibble order, FP4 E2M1 codes, one E8M0
//        scale byte per 32 values (= per 16-byte unit): w[n, k] = e2m1(nibble) * 2^(s[n, k / 32] - 127).
//
// Why these choices: nibbles in straight order let the decoder use one shift per value with the shift = 4 * i;
// AWQ's interleave [0,2,4,6,1,3,5,7] exists for its half2 conversion trick, which a f32 kernel does not use.
// Every dequantized value is computed exactly in f32 (a 4- or 8-bit integer times an f16/f32 scale rounds at
// most once), so the reference computes bit-identical dequantized weights.
using System.Runtime.InteropServices;
using ILGPU;

namespace ILGpuMoE.Kernels.Quant;

public enum QuantScheme
{
    /// <summary>int8, symmetric, per output channel.</summary>
    Q8,
    /// <summary>int4 group-wise along K, F16 scales, optional zero points.</summary>
    Q4,
    /// <summary>FP8 E4M3FN with F32 scales per block (or per tensor).</summary>
    Fp8,

    /// <summary>MXFP4: FP4 E2M1 codes, one E8M0 scale byte per 32 values along K (gpt-oss's experts).</summary>
    Mxfp4,
}

/// <summary>16 bytes: one wide load (ld.v4.b32).</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct Packed16
{
    public uint A;
    public uint B;
    public uint C;
    public uint D;
}

/// <summary>
/// Scale and zero of one 16-byte unit: value = (q - Zero) * Scale for the int schemes, e4m3(b) * Scale for FP8.
/// Bias = 2^23 + Zero (+ 128 for Q8's offset-binary trick): see <see cref="IQuantWeights.Code"/>.
/// </summary>
public readonly struct UnitScale(float scale, float zero)
{
    public readonly float Scale = scale;
    public readonly float Zero = zero;
    public readonly float Bias = QuantLayout.Magic + zero;
}

/// <summary>
/// A packed weight matrix on the device. Also an <see cref="IWeights"/> (element-wise dequantize) so the generic
/// MoE and dense kernels can read it; the quantized kernels decode whole words instead.
/// </summary>
public interface IQuantWeights : IWeights
{
    /// <summary>Packed words, [Rows, RowWords] row-major.</summary>
    ArrayView<uint> Words { get; }

    int Rows { get; }

    int Cols { get; }

    /// <summary>32-bit words per row (a multiple of 4).</summary>
    int RowWords { get; }

    /// <summary>Values per 32-bit word (4 or 8).</summary>
    int ValuesPerWord { get; }

    /// <summary>Scale (and zero) of 16-byte unit u of row n.</summary>
    UnitScale ScaleOf(long row, int unit);

    /// <summary>
    /// Value i of a word before scaling: q - z (int schemes) or e4m3 (FP8), exact in f32. The int schemes convert
    /// without an int-to-float instruction: OR-ing an integer q &lt; 2^23 into the mantissa of 2^23 gives the float
    /// 2^23 + q, and subtracting Bias = 2^23 + z leaves q - z exactly (one LOP3 + one FADD per value).
    /// </summary>
    float Code(uint word, int i, UnitScale s);

    /// <summary>Value i of a word, dequantized with its unit's scale (= Code * Scale, rounded once).</summary>
    float Decode(uint word, int i, UnitScale s);
}

public static class QuantLayout
{
    public const int UnitBytes = 16;

    /// <summary>2^23: the float whose mantissa holds an integer OR-ed into its low bits.</summary>
    public const float Magic = 8388608f;

    /// <summary>Float bits of 2^23.</summary>
    public const uint MagicBits = 0x4B000000u;

    /// <summary>Words per row of Q8 / FP8 (one byte per value, rows padded to 16 bytes).</summary>
    public static int ByteRowWords(int cols) => (cols + UnitBytes - 1) / UnitBytes * 4;

    /// <summary>Words per row of Q4 (cols must be a multiple of the group size).</summary>
    public static int NibbleRowWords(int cols) => cols / 8;

    /// <summary>
    /// Throws ArgumentException when a device matrix breaks its layout's rules (the host packers never build one;
    /// this guards structs built by hand): Q4 needs G a multiple of 32 dividing K; FP8 blocks need BlockK % 16 == 0
    /// (or BlockK &gt;= K) and whole matrices.
    /// </summary>
    public static void Check(string where, Q8Weights w) => CheckWords(where, w.Rows, w.Cols, w.RowWords, w.Words.Length, w.Scales.Length, w.Rows);

    public static void Check(string where, Q4Weights w)
    {
        // A 16-byte unit (32 values) must never straddle a group: one (scale, zero) per unit (ScaleOf).
        if (w.GroupSize < 32 || w.GroupSize % 32 != 0 || w.Cols % w.GroupSize != 0)
            throw new ArgumentException($"{where}: Q4 group size {w.GroupSize} must be a multiple of 32 dividing K = {w.Cols}");
        long groups = (long)w.Rows * (w.Cols / w.GroupSize);
        CheckWords(where, w.Rows, w.Cols, w.RowWords, w.Words.Length, w.Scales.Length, groups);
        if (w.Zeros.Length != 0 && w.Zeros.Length < groups)
            throw new ArgumentException($"{where}: Q4 zeros has {w.Zeros.Length} entries, needs {groups}");
    }

    public static void Check(string where, Fp8Weights w)
    {
        if (w.BlockN < 1 || w.BlockK < 1 || (w.BlockK % UnitBytes != 0 && w.BlockK < w.Cols))
            throw new ArgumentException($"{where}: FP8 scale block [{w.BlockN}, {w.BlockK}] must be positive with a width that is a multiple of 16 (or >= K = {w.Cols})");
        if (w.MatrixRows < 1 || w.Rows % w.MatrixRows != 0)
            throw new ArgumentException($"{where}: FP8 rows {w.Rows} are not whole matrices of {w.MatrixRows} rows");
        CheckWords(where, w.Rows, w.Cols, w.RowWords, w.Words.Length, w.Scales.Length, (long)(w.Rows / w.MatrixRows) * w.ScaleRows * w.ScaleCols);
    }

    /// <summary>MXFP4: K a multiple of 32 (whole blocks), words and scales long enough.</summary>
    public static void Check(string where, Mxfp4Weights w)
    {
        if (w.Cols % Mxfp4.BlockValues != 0)
            throw new ArgumentException($"{where}: MXFP4 K = {w.Cols} is not whole blocks of 32");
        CheckWords(where, w.Rows, w.Cols, w.RowWords, w.Words.Length, w.Scales.Length, (long)w.Rows * w.Groups);
    }

    /// <summary>
    /// Before a kernel that reads the packed words as 16-byte units (ld.global.v4: QuantGemv V1, grouped GEMV V4):
    /// the words view must start on a 16-byte boundary and each row must be whole units. Throws ArgumentException
    /// naming the tensor ("w1.Data") otherwise.
    /// </summary>
    public static void CheckWide<TQ>(string where, string tensor, TQ w)
        where TQ : struct, IQuantWeights
    {
        WideAccess.RequireAligned(where, tensor + ".Data", w.Words, UnitBytes);
        WideAccess.RequireMultiple(where, tensor + ".Data", "row stride (RowWords * 4)", (long)w.RowWords * 4, UnitBytes);
    }

    private static void CheckWords(string where, int rows, int cols, int rowWords, long words, long scales, long needScales)
    {
        if (rows < 1 || cols < 1)
            throw new ArgumentException($"{where}: weight shape [{rows}, {cols}] is empty");
        if (words < (long)rows * rowWords)
            throw new ArgumentException($"{where}: weight words has {words} elements, needs {(long)rows * rowWords} for [{rows}, {cols}]");
        if (scales < needScales)
            throw new ArgumentException($"{where}: scales has {scales} elements, needs {needScales}");
    }

    /// <summary>Sign-extends byte i of a word.</summary>
    public static int SByteOf(uint word, int i) => (int)(word << (24 - 8 * i)) >> 24;

    public static int NibbleOf(uint word, int i) => (int)((word >> (4 * i)) & 0xFu);
}

/// <summary>Q8 on the device: words [Rows, RowWords], scales [Rows] F32.</summary>
public readonly struct Q8Weights(ArrayView<uint> words, ArrayView<float> scales, int rows, int cols) : IQuantWeights
{
    public readonly ArrayView<uint> Data = words;
    public readonly ArrayView<float> Scales = scales;
    public readonly int NRows = rows;
    public readonly int NCols = cols;
    public readonly int NRowWords = QuantLayout.ByteRowWords(cols);

    public ArrayView<uint> Words => Data;

    public int Rows => NRows;

    public int Cols => NCols;

    public int RowWords => NRowWords;

    public int ValuesPerWord => 4;

    public long Length => (long)NRows * NCols;

    // Offset binary: (b ^ 0x80) = q + 128, so Bias carries 2^23 + 128.
    public UnitScale ScaleOf(long row, int unit) => new(Scales[row], 128f);

    public float Code(uint word, int i, UnitScale s) => Interop.IntAsFloat(QuantLayout.MagicBits | (((word >> (8 * i)) & 0xFFu) ^ 0x80u)) - s.Bias;

    public float Decode(uint word, int i, UnitScale s) => Code(word, i, s) * s.Scale;

    public float Get(long index)
    {
        long n = index / NCols;
        int k = (int)(index - n * NCols);
        uint word = Data[n * NRowWords + (k >> 2)];
        return QuantLayout.SByteOf(word, k & 3) * Scales[n];
    }
}

/// <summary>Q4 on the device: words [Rows, Cols/8], scales [Rows, Cols/G] F16, zeros [Rows, Cols/G] bytes or empty (z = 8).</summary>
public readonly struct Q4Weights(ArrayView<uint> words, ArrayView<ILGPU.Half> scales, ArrayView<byte> zeros, int rows, int cols, int groupSize) : IQuantWeights
{
    public readonly ArrayView<uint> Data = words;
    public readonly ArrayView<ILGPU.Half> Scales = scales;
    public readonly ArrayView<byte> Zeros = zeros;
    public readonly int NRows = rows;
    public readonly int NCols = cols;
    public readonly int GroupSize = groupSize;
    public readonly int Groups = cols / groupSize;
    public readonly int HasZeros = zeros.Length > 0 ? 1 : 0;

    public ArrayView<uint> Words => Data;

    public int Rows => NRows;

    public int Cols => NCols;

    public int RowWords => NCols >> 3;

    public int ValuesPerWord => 8;

    public long Length => (long)NRows * NCols;

    public UnitScale ScaleOf(long row, int unit)
    {
        long g = row * Groups + (unit * 32) / GroupSize;
        return new((float)Scales[g], HasZeros != 0 ? Zeros[g] : 8f);
    }

    public float Code(uint word, int i, UnitScale s) => Interop.IntAsFloat(QuantLayout.MagicBits | ((word >> (4 * i)) & 0xFu)) - s.Bias;

    public float Decode(uint word, int i, UnitScale s) => Code(word, i, s) * s.Scale;

    public float Get(long index)
    {
        // Rows are K/8 words long and K % G == 0, so the flat index gives word and group directly.
        uint word = Data[index >> 3];
        long g = index / GroupSize;
        float z = HasZeros != 0 ? Zeros[g] : 8f;
        return (QuantLayout.NibbleOf(word, (int)(index & 7)) - z) * (float)Scales[g];
    }
}

/// <summary>
/// FP8 E4M3 on the device: bytes as Q8, scales F32 [Rows/N matrices, ceil(N/BlockN), ceil(K/BlockK)].
/// matrixRows = N of one matrix (experts are stacked); per-tensor scaling is BlockN = N, BlockK = K.
/// </summary>
public readonly struct Fp8Weights(ArrayView<uint> words, ArrayView<float> scales, int rows, int cols, int matrixRows, int blockN, int blockK) : IQuantWeights
{
    public readonly ArrayView<uint> Data = words;
    public readonly ArrayView<float> Scales = scales;
    public readonly int NRows = rows;
    public readonly int NCols = cols;
    public readonly int NRowWords = QuantLayout.ByteRowWords(cols);
    public readonly int MatrixRows = matrixRows;
    public readonly int BlockN = blockN;
    public readonly int BlockK = blockK;
    public readonly int ScaleRows = (matrixRows + blockN - 1) / blockN;
    public readonly int ScaleCols = (cols + blockK - 1) / blockK;

    public ArrayView<uint> Words => Data;

    public int Rows => NRows;

    public int Cols => NCols;

    public int RowWords => NRowWords;

    public int ValuesPerWord => 4;

    public long Length => (long)NRows * NCols;

    private long ScaleIndex(long row, int k)
    {
        long e = row / MatrixRows;
        long r = row - e * MatrixRows;
        return (e * ScaleRows + r / BlockN) * ScaleCols + k / BlockK;
    }

    public UnitScale ScaleOf(long row, int unit) => new(Scales[ScaleIndex(row, unit * 16)], 0f);

    public float Code(uint word, int i, UnitScale s) => Fp8.DecodeE4M3((word >> (8 * i)) & 0xFFu);

    public float Decode(uint word, int i, UnitScale s) => Code(word, i, s) * s.Scale;

    public float Get(long index)
    {
        long n = index / NCols;
        int k = (int)(index - n * NCols);
        uint word = Data[n * NRowWords + (k >> 2)];
        return Fp8.DecodeE4M3((word >> (8 * (k & 3))) & 0xFFu) * Scales[ScaleIndex(n, k)];
    }
}
