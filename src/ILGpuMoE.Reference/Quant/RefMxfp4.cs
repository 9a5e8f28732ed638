// MXFP4 as gpt-oss checkpoints store it (OCP microscaling: FP4 E2M1 elements, one E8M0 scale per 32 elements),
// dequantized from its definition for the oracle. Layout, as Hugging Face transformers' MXFP4 integration reads it:
//   *_blocks uint8 [..., R, G, 16]: row r's G blocks of 32 elements along the INPUT axis; byte j of a block holds
//            element 2j in its low nibble and element 2j + 1 in its high nibble.
//   *_scales uint8 [..., R, G]: E8M0, the block's factor is 2^(scale - 127) (transformers applies it with ldexp to
//            every code, 255 included; no NaN encoding is honoured).
//   value = FP4[nibble] * 2^(scale - 127), FP4 = [0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, -1, -1.5, -2, -3, -4, -6].
// The result is [..., R, G * 32], i.e. [out, in] per expert: transformers then transposes it to its [in, out]
// parameter layout; the oracle keeps [out, in] (the orientation of every other weight here).
// Each value is exact in float (a 1-bit mantissa times a power of two) unless the scale under- or overflows float.
namespace ILGpuMoE.Reference;

public static class RefMxfp4
{
    /// <summary>Elements per block (one scale each).</summary>
    public const int BlockSize = 32;

    private static readonly double[] Fp4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6];

    /// <summary>The E2M1 value of a 4-bit code (bit 3 sign, bits 2..1 exponent with bias 1, bit 0 mantissa).</summary>
    public static double DecodeE2M1(int code) => Fp4[code & 15];

    /// <summary>Dequantizes rows blocks [rows, groups, 16] with scales [rows, groups] to [rows, groups * 32].</summary>
    public static float[] Dequantize(ReadOnlySpan<byte> blocks, ReadOnlySpan<byte> scales, int rows, int groups)
    {
        Require.NonNegative(rows, nameof(rows));
        Require.Positive(groups, nameof(groups));
        Require.Length(blocks, (long)rows * groups * (BlockSize / 2), nameof(blocks), "[R, G, 16]");
        Require.Length(scales, (long)rows * groups, nameof(scales), "[R, G]");
        var w = new float[(long)rows * groups * BlockSize];
        for (long b = 0; b < (long)rows * groups; b++)
        {
            double scale = Math.ScaleB(1.0, scales[(int)b] - 127);
            for (int j = 0; j < BlockSize / 2; j++)
            {
                byte v = blocks[(int)(b * (BlockSize / 2) + j)];
                w[b * BlockSize + 2 * j] = (float)(Fp4[v & 15] * scale);
                w[b * BlockSize + 2 * j + 1] = (float)(Fp4[v >> 4] * scale);
            }
        }

        return w;
    }
}
