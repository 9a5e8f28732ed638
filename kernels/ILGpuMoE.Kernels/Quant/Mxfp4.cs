// MXFP4 (OCP microscaling FP4) weights exactly as gpt-oss checkpoints store them, read in place: no repacking, no
// dequantized copy (the oracle's definition and hand-checked layout: src/ILGpuMoE.Reference/Quant/RefMxfp4.cs).
//
//   blocks uint8 [Rows, G, 16]: row n's G blocks of 32 values along the INPUT dim (Cols = 32 G); byte j of a block
//          holds value 2j in its low nibble and 2j + 1 in its high nibble. Read as little-endian 32-bit words this is
//          Q4's straight nibble order: word j of row n, nibble i (bits 4i..4i+3) is column 8j + i; a 16-byte unit
//          is exactly one block (32 values, one scale). RowWords = Cols / 8, no padding.
//   scales uint8 [Rows, G]: E8M0, the block's factor is 2^(s - 127).
//   value = E2M1(nibble) * 2^(s - 127), E2M1 (bit 3 sign, bits 2..1 exponent e with bias 1, bit 0 mantissa m):
//          e = 0: m / 2 (0 or 0.5); e >= 1: 2^(e-1) (1 + m / 2): magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6.
//   4.25 bits per value (16 + 1 bytes per 32 values).
//
// Decoding in registers, no table in memory: the three magnitude bits (e, m) moved to f32 bits 23..24 and 22 read as an
// f32 whose exponent field is e and whose top mantissa bit is m: for e >= 1 that is 2^(e-127) (1 + m/2), for e = 0
// the subnormal m * 2^-127; either way 2^-126 * E2M1, and times 2^127 exactly 2 * E2M1 (an integer 0..12). The sign
// bit goes to bit 31. The kernels keep f32 subnormals (ILGPU emits no .ftz), as Fp8.cs relies on too.
// The block's factor is then applied as 2^(s - 128) (the 2 above folded in): 2^(s-128) is a finite f32 for every
// s = 0..255 (s = 0, 1 are the subnormals 2^-128, 2^-127), so Decode = Code * Scale is the oracle's float value
// v * 2^(s-127) exactly, overflow to +-inf included (|v| 2^(s-127) >= 2^128 happens for s >= 253 only).
// The unit readers (QuantGemv, grouped V4, RowUnits) sum Code * x over a block and multiply the sum by the factor once:
// the same value up to f32 rounding, except where the oracle's per-weight value overflows (s >= 253; E8M0 255 is NaN
// in the OCP spec and no real checkpoint uses scales that large): there they give the finite exact dot product.
using System.Runtime.InteropServices;
using ILGPU;

namespace ILGpuMoE.Kernels.Quant;

/// <summary>E2M1 and E8M0 decoding (device and host).</summary>
public static class Mxfp4
{
    /// <summary>Values per block (one scale) = per 16-byte unit.</summary>
    public const int BlockValues = 32;

    /// <summary>Bytes per block.</summary>
    public const int BlockBytes = 16;

    /// <summary>2^127: the subnormal-pattern f32 of an E2M1 magnitude times this is 2 * E2M1 (exact).</summary>
    public const float TwoPow127 = (float)(1UL << 63) * (float)(1UL << 63) * 2f;

    /// <summary>
    /// 2 * E2M1 of nibble i (0..3) of word, exact. The nibble, isolated, times 2^(22-4i) + 2^(28-4i) lands twice: once at
    /// bits 22..25 (magnitude at f32 bits 22..24) and once at 28..31 (sign at bit 31); the copies do not overlap, so no
    /// carry. One mask keeps magnitude and sign: LOP3, IMAD, LOP3, then the exact product by 2^127. Nibbles 4..7 are
    /// nibbles 0..3 of word &gt;&gt; 16 (<see cref="Code2Of"/>). With a constant i (unrolled callers) all are immediates.
    /// </summary>
    public static float Code2(uint word, int i)
    {
        uint nibble = word & (0xFu << (4 * i));
        uint twice = nibble * ((1u << (22 - 4 * i)) + (1u << (28 - 4 * i)));
        return Interop.IntAsFloat(twice & 0x81C00000u) * TwoPow127;
    }

    /// <summary>2 * E2M1 of nibble i (0..7) of word.</summary>
    public static float Code2Of(uint word, int i) => i < 4 ? Code2(word, i) : Code2(word >> 16, i - 4);

    /// <summary>2^(s - 128) for an E8M0 byte s: (s - 1) in the exponent field for s &gt;= 2, the subnormals 2^-128 and 2^-127 for s = 0, 1.</summary>
    public static float HalfScale(uint s) => Interop.IntAsFloat(s >= 2 ? (s - 1) << 23 : 0x00200000u << (int)s);
}

/// <summary>
/// MXFP4 on the device: blocks as words [Rows, Cols/8] (the checkpoint's [Rows, G, 16] bytes as they are), scales
/// [Rows, Cols/32] E8M0 bytes. Cols must be a multiple of 32. Experts stack as [E*N, Cols] (the checkpoint's
/// [E, N, G, 16] is already that).
/// </summary>
public readonly struct Mxfp4Weights(ArrayView<uint> blocks, ArrayView<byte> scales, int rows, int cols) : IQuantWeights
{
    public readonly ArrayView<uint> Data = blocks;
    public readonly ArrayView<byte> Scales = scales;
    public readonly int NRows = rows;
    public readonly int NCols = cols;
    public readonly int Groups = cols >> 5;

    public ArrayView<uint> Words => Data;

    public int Rows => NRows;

    public int Cols => NCols;

    public int RowWords => NCols >> 3;

    public int ValuesPerWord => 8;

    public long Length => (long)NRows * NCols;

    /// <summary>Scale = 2^(s - 128) of unit (= block) u of row n; Code carries the factor 2.</summary>
    public UnitScale ScaleOf(long row, int unit) => new(Mxfp4.HalfScale(Scales[row * Groups + unit]), 0f);

    /// <summary>2 * E2M1 of nibble i (exact).</summary>
    public float Code(uint word, int i, UnitScale s) => Mxfp4.Code2Of(word, i);

    public float Decode(uint word, int i, UnitScale s) => Code(word, i, s) * s.Scale;

    public float Get(long index)
    {
        // Rows are Cols/8 words and Cols/32 scales long: the flat index gives word and block directly.
        uint word = Data[index >> 3];
        return Mxfp4.Code2(word >> (4 * (int)(index & 7)), 0) * Mxfp4.HalfScale(Scales[index >> 5]);
    }
}

/// <summary>
/// Host side of MXFP4: the checkpoint's bytes as the device layout takes them (a reinterpretation, no copy of values),
/// the shape checks, and gpt-oss's gate/up de-interleave (whole blocks and scales move).
/// </summary>
public static class Mxfp4Host
{
    /// <summary>
    /// The blocks of a [Rows, G, 16] uint8 tensor as the little-endian words Mxfp4Weights.Data holds ([Rows, G*4]):
    /// a view of the same bytes. Throws ArgumentException when the length is not Rows * G * 16.
    /// </summary>
    public static ReadOnlySpan<uint> Words(ReadOnlySpan<byte> blocks, int rows, int groups)
    {
        CheckShape("Mxfp4Host.Words", blocks.Length, -1, rows, groups);
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Mxfp4Host.Words: the device layout reads the bytes as little-endian words");
        return MemoryMarshal.Cast<byte, uint>(blocks);
    }

    /// <summary>Throws a one-line ArgumentException unless blocks has Rows*G*16 bytes and scales Rows*G (scales -1: not checked).</summary>
    public static void CheckShape(string where, long blockBytes, long scaleBytes, int rows, int groups)
    {
        if (rows < 1 || groups < 1)
            throw new ArgumentException($"{where}: MXFP4 shape [{rows}, {groups} blocks] is empty");
        if (blockBytes != (long)rows * groups * Mxfp4.BlockBytes)
            throw new ArgumentException($"{where}: MXFP4 blocks have {blockBytes} bytes, [{rows}, {groups}, 16] needs {(long)rows * groups * Mxfp4.BlockBytes}");
        if (scaleBytes >= 0 && scaleBytes != (long)rows * groups)
            throw new ArgumentException($"{where}: MXFP4 scales have {scaleBytes} bytes, [{rows}, {groups}] needs {(long)rows * groups}");
    }

    /// <summary>
    /// gpt-oss's gate_up_proj_blocks [E, 2F, G, 16] / _scales [E, 2F, G] de-interleaved into W1 (gate: rows 2f) and W3
    /// (up: rows 2f + 1), each [E, F, G, 16] / [E, F, G]: whole 16-byte blocks and their scale bytes move, no value is
    /// decoded. The same split serves the biases [E, 2F] with <see cref="SplitRows{T}"/> and a row length of 1.
    /// </summary>
    public static (byte[] GateBlocks, byte[] GateScales, byte[] UpBlocks, byte[] UpScales) SplitGateUp(
        ReadOnlySpan<byte> blocks, ReadOnlySpan<byte> scales, int experts, int hidden, int groups)
    {
        if (experts < 1 || hidden < 1)
            throw new ArgumentException($"Mxfp4Host.SplitGateUp: experts ({experts}) and F ({hidden}) must be >= 1");
        CheckShape("Mxfp4Host.SplitGateUp", blocks.Length, scales.Length, checked(experts * 2 * hidden), groups);
        var (gb, ub) = SplitRows(blocks, experts * hidden, groups * Mxfp4.BlockBytes);
        var (gs, us) = SplitRows(scales, experts * hidden, groups);
        return (gb, gs, ub, us);
    }

    /// <summary>Rows 2i and 2i + 1 (each rowLength elements) of [2 pairs, rowLength] into two [pairs, rowLength] arrays.</summary>
    public static (T[] Even, T[] Odd) SplitRows<T>(ReadOnlySpan<T> src, int pairs, int rowLength)
    {
        if ((long)src.Length != 2L * pairs * rowLength)
            throw new ArgumentException($"Mxfp4Host.SplitRows: {src.Length} elements are not {pairs} pairs of rows of {rowLength}");
        var even = new T[(long)pairs * rowLength];
        var odd = new T[(long)pairs * rowLength];
        for (int p = 0; p < pairs; p++)
        {
            src.Slice(2 * p * rowLength, rowLength).CopyTo(even.AsSpan(p * rowLength, rowLength));
            src.Slice((2 * p + 1) * rowLength, rowLength).CopyTo(odd.AsSpan(p * rowLength, rowLength));
        }

        return (even, odd);
    }
}
