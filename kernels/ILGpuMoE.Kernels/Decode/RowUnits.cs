// Weight readers of the decode kernels: a matrix W [Rows, Cols] (stacked experts: [E*N, Cols]) read along Cols in
// 16-byte units (one ld.global.v4 per lane per unit: a warp moves 512 contiguous bytes per load instruction), each unit
// dotted with the staged input xs (DecodeStaging.cs: tile column k at slot k + (k >> 5)).
//
// Readers (UnitValues = values per 16-byte unit):
//   F32Units 4, F16Units 8, BF16Units 8   float rows as 16-byte words (Wide16): Cols a multiple of UnitValues and
//                                         the view 16-byte aligned (RowUnits.F32/F16/BF16 check both)
//   ScalarUnits<TW> 4                     element loads with a bound check col < Cols: the tail path for rows that
//                                         are not whole 16-byte words (Cols = 37) or views that are not 16-byte aligned
//   Q8Units 16, Fp8Units 16, Q4Units 32   the packed matrices of QuantLayout.cs (rows already whole units; Q8/FP8
//                                         tails are zero bytes, and the staged xs is zero there too)
//   Mxfp4Units 32                         gpt-oss's MXFP4 blocks (Quant/Mxfp4.cs): a unit is one block, one E8M0
//                                         scale byte per unit, E2M1 decoded by bit moves (no table)
// Shapes: D model dim, F expert hidden dim, E experts, G quant group size (T = 1, K, V unused here).
//
// Why the three-step interface (Row, then Load and Dot per unit): the per-row part of the addressing (row * units, the
// scale row, FP8's expert and block-row divisions) is computed once per row outside the unit loop, so the loop holds no
// 64-bit multiply and no integer divide. A unit's loads (Load: its 16-byte word and its scale, a RawUnit of 5
// registers) are apart from its arithmetic (Dot), so a loop may issue the next units' loads before decoding the current
// ones (software pipelining: DecodePersistent.PackedUnits); DotUnit is the two in a row. The
// per-unit scale index of Q4 (unit / units-per-group) and FP8 (unit / units-per-block), computed in Load, is a
// multiply-high by a magic number precomputed on the host (UnitDivide), exact for the sizes the factories accept. Each
// Load and Dot is straight-line (no per-value branch) and the scale multiplies the unit's sum once.
// Q8 and Q4 decode a value where it lies in its word (mask and OR into the mantissa of 2^23, one subtraction: value
// times 256^i or 16^i, summed per position and rescaled per unit by an exact power of two), so most values cost one
// LOP3, one FADD and one FFMA.
using System.Runtime.InteropServices;
using ILGPU;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Kernels.Decode;

/// <summary>
/// The per-row part of a reader's addressing: the row's 16-byte units as a view (the loop then indexes from a fixed
/// base: one wide multiply-add per load, and the second unit of a lane's step is an immediate offset), the row's first
/// element (ScalarUnits), the scale index base and the per-row scale (Q8).
/// </summary>
public readonly struct RowRef(ArrayView<Wide16> words, long index, long scales, float scale)
{
    public readonly ArrayView<Wide16> Words = words;
    public readonly long Index = index;
    public readonly long Scales = scales;
    public readonly float Scale = scale;
}

/// <summary>A weight matrix W [Rows, Cols] (stacked experts: [E*N, Cols]) read as 16-byte units along Cols.</summary>
public interface IRowUnits
{
    int Rows { get; }

    int Cols { get; }

    /// <summary>Values per 16-byte unit: 4 f32, 8 f16/bf16, 16 int8/fp8, 32 int4 (4 for ScalarUnits).</summary>
    int UnitValues { get; }

    /// <summary>ceil(Cols / UnitValues).</summary>
    int UnitsPerRow { get; }

    /// <summary>The per-row addressing of row (0 &lt;= row &lt; Rows), computed once per row.</summary>
    RowRef Row(long row);

    /// <summary>Loads unit (0 &lt;= unit &lt; UnitsPerRow) of the row: its word and its scale bits, no arithmetic on them.</summary>
    RawUnit Load(RowRef row, int unit);

    /// <summary>
    /// Scaled sum over the unit's values v of W[row, unit * UnitValues + v] * xs[DecodeStaging.Slot(k0 + v)], raw being
    /// <see cref="Load"/>'s result for that unit; k0 is the unit's first column relative to the staged tile (a multiple
    /// of UnitValues).
    /// </summary>
    float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0);
}

/// <summary>
/// A unit as loaded (<see cref="IRowUnits.Load"/>): its 16-byte word (ScalarUnits: its 4 values' bits) and a 32-bit side
/// value, the bits of the unit's own scale for the readers that have one (Q4: F16 scale | zero &lt;&lt; 16; FP8: F32
/// scale; MXFP4: E8M0 byte), else 0. One shape for every reader keeps the interface non-generic.
/// </summary>
public readonly struct RawUnit(Wide16 word, uint side)
{
    public readonly Wide16 Word = word;
    public readonly uint Side = side;
}

/// <summary>
/// Exact unsigned division by a fixed divisor d as a multiply-high: n / d = mulhi(n, Magic) + (n &amp; OneMask) for
/// 0 &lt;= n &lt; 2^16 and 1 &lt;= d &lt; 2^16. Magic = ceil(2^32 / d) for d &gt;= 2 (then OneMask = 0); d = 1 has
/// no 32-bit magic, so Magic = 0 and OneMask = ~0 pass n through. Why exact: Magic * d = 2^32 + e with 0 &lt;= e &lt; d,
/// so n * Magic / 2^32 = n / d + n * e / (d * 2^32), and the excess n * e / (d * 2^32) &lt; n / 2^32 &lt; 1 / d (as
/// n * d &lt; 2^32) never carries the fraction of n / d (at most 1 - 1/d) past the next integer.
/// </summary>
public static class UnitDivide
{
    public const int Limit = 1 << 16;

    public static (uint Magic, uint OneMask) For(int divisor)
    {
        if (divisor < 1 || divisor >= Limit)
            throw new ArgumentException($"UnitDivide: divisor {divisor} must be in [1, {Limit})");
        return divisor == 1 ? (0u, ~0u) : ((uint)(((1UL << 32) + (ulong)divisor - 1) / (ulong)divisor), 0u);
    }

    /// <summary>n / d for the (Magic, OneMask) of d (device and host).</summary>
    public static int Divide(int n, uint magic, uint oneMask) => (int)((uint)(((ulong)(uint)n * magic) >> 32) + ((uint)n & oneMask));
}

public readonly struct F32Units(ArrayView<Wide16> data, int rows, int cols) : IRowUnits
{
    public readonly ArrayView<Wide16> Data = data;
    public readonly int NRows = rows;
    public readonly int NCols = cols;

    public int Rows => NRows;

    public int Cols => NCols;

    public int UnitValues => 4;

    public int UnitsPerRow => NCols >> 2;

    public RowRef Row(long row) => new(Data.SubView(row * (NCols >> 2), NCols >> 2), 0, 0, 1f);

    public RawUnit Load(RowRef row, int unit) => new(row.Words[unit], 0);

    public float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0)
    {
        Wide16 w = raw.Word;
        var x = DecodeStaging.UnitSlots(xs, k0, 4);
        float s = Interop.IntAsFloat(w.A) * x[0];
        s += Interop.IntAsFloat(w.B) * x[1];
        s += Interop.IntAsFloat(w.C) * x[2];
        s += Interop.IntAsFloat(w.D) * x[3];
        return s;
    }
}

public readonly struct BF16Units(ArrayView<Wide16> data, int rows, int cols) : IRowUnits
{
    public readonly ArrayView<Wide16> Data = data;
    public readonly int NRows = rows;
    public readonly int NCols = cols;

    public int Rows => NRows;

    public int Cols => NCols;

    public int UnitValues => 8;

    public int UnitsPerRow => NCols >> 3;

    public RowRef Row(long row) => new(Data.SubView(row * (NCols >> 3), NCols >> 3), 0, 0, 1f);

    public RawUnit Load(RowRef row, int unit) => new(row.Words[unit], 0);

    public float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0) =>
        HalfWords.Dot<BF16Pair>(raw.Word, DecodeStaging.UnitSlots(xs, k0, 8));
}

public readonly struct F16Units(ArrayView<Wide16> data, int rows, int cols) : IRowUnits
{
    public readonly ArrayView<Wide16> Data = data;
    public readonly int NRows = rows;
    public readonly int NCols = cols;

    public int Rows => NRows;

    public int Cols => NCols;

    public int UnitValues => 8;

    public int UnitsPerRow => NCols >> 3;

    public RowRef Row(long row) => new(Data.SubView(row * (NCols >> 3), NCols >> 3), 0, 0, 1f);

    public RawUnit Load(RowRef row, int unit) => new(row.Words[unit], 0);

    public float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0) =>
        HalfWords.Dot<F16Pair>(raw.Word, DecodeStaging.UnitSlots(xs, k0, 8));
}

/// <summary>Widens the two 16-bit values of a word (low one first, memory order).</summary>
internal interface IHalfPair
{
    float Low(uint bits);

    float High(uint bits);
}

/// <summary>bf16 is the top half of an f32: a shift, or a mask.</summary>
internal readonly struct BF16Pair : IHalfPair
{
    public float Low(uint bits) => Interop.IntAsFloat(bits << 16);

    public float High(uint bits) => Interop.IntAsFloat(bits & 0xFFFF0000u);
}

internal readonly struct F16Pair : IHalfPair
{
    public float Low(uint bits) => (float)Interop.IntAsFloat((ushort)(bits & 0xFFFFu));

    public float High(uint bits) => (float)Interop.IntAsFloat((ushort)(bits >> 16));
}

/// <summary>The dot of a 16-byte word of eight 16-bit values with their 8 staged x.</summary>
internal static class HalfWords
{
    // Two chains (words A, B and C, D) of fused multiply-adds: short dependency chains, no separate products.
    public static float Dot<TP>(Wide16 w, ArrayView<float> x)
        where TP : struct, IHalfPair =>
        Pair<TP>(w.B, x, 2, Pair<TP>(w.A, x, 0, 0f)) + Pair<TP>(w.D, x, 6, Pair<TP>(w.C, x, 4, 0f));

    private static float Pair<TP>(uint bits, ArrayView<float> x, int i, float acc)
        where TP : struct, IHalfPair
    {
        acc += default(TP).Low(bits) * x[i];
        acc += default(TP).High(bits) * x[i + 1];
        return acc;
    }
}

/// <summary>Element loads, 4 values per unit, columns past Cols read as 0: any float matrix, any alignment.</summary>
public readonly struct ScalarUnits<TW>(TW data, int rows, int cols) : IRowUnits
    where TW : struct, IWeights
{
    public readonly TW Data = data;
    public readonly int NRows = rows;
    public readonly int NCols = cols;

    public int Rows => NRows;

    public int Cols => NCols;

    public int UnitValues => 4;

    public int UnitsPerRow => (NCols + 3) >> 2;

    public RowRef Row(long row) => new(default, row * NCols, 0, 1f);

    public RawUnit Load(RowRef row, int unit)
    {
        int c = unit << 2;
        long b = row.Index + c;
        // The bound checks become predicated loads (no branch around arithmetic).
        var w = new Wide16
        {
            A = Interop.FloatAsInt(c < NCols ? Data.Get(b) : 0f),
            B = Interop.FloatAsInt(c + 1 < NCols ? Data.Get(b + 1) : 0f),
            C = Interop.FloatAsInt(c + 2 < NCols ? Data.Get(b + 2) : 0f),
            D = Interop.FloatAsInt(c + 3 < NCols ? Data.Get(b + 3) : 0f),
        };
        return new(w, 0);
    }

    public float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0)
    {
        int s = DecodeStaging.Slot(k0);
        Wide16 w = raw.Word;
        return Interop.IntAsFloat(w.A) * xs[s] + Interop.IntAsFloat(w.B) * xs[s + 1] + Interop.IntAsFloat(w.C) * xs[s + 2]
               + Interop.IntAsFloat(w.D) * xs[s + 3];
    }
}

/// <summary>Q8 (QuantLayout.cs): 16 int8 per unit, one F32 scale per row (loaded once, in Row).</summary>
public readonly struct Q8Units : IRowUnits
{
    public readonly ArrayView<Wide16> Data;
    public readonly ArrayView<float> Scales;
    public readonly int NRows;
    public readonly int NCols;
    public readonly int NUnits;

    /// <summary>QuantLayout.MagicBits | 0x80, as data: a constant the compiler cannot see is kept in a register, so
    /// each value's mask-and-merge is one LOP3 (register, immediate mask, register) instead of two.</summary>
    public readonly uint MagicLo;

    internal Q8Units(Q8Weights w)
    {
        MagicLo = QuantLayout.MagicBits | 0x80u;
        Data = w.Data.SubView(0, (long)w.Rows * w.RowWords).Cast<Wide16>();
        Scales = w.Scales;
        NRows = w.Rows;
        NCols = w.Cols;
        NUnits = w.RowWords >> 2;
    }

    public int Rows => NRows;

    public int Cols => NCols;

    public int UnitValues => 16;

    public int UnitsPerRow => NUnits;

    public RowRef Row(long row) => new(Data.SubView(row * NUnits, NUnits), 0, row, Scales[row]);

    public RawUnit Load(RowRef row, int unit) => new(row.Words[unit], 0);

    public float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0)
    {
        Wide16 w = raw.Word;
        var x = DecodeStaging.UnitSlots(xs, k0, 16);
        uint lo = MagicLo, hi = MagicLo ^ 0x8080u; // MagicBits | 0x8000
        var a = Word(w.D, x, 12, lo, hi, Word(w.C, x, 8, lo, hi, Word(w.B, x, 4, lo, hi, Word(w.A, x, 0, lo, hi, default))));
        return (a.A + a.B * (1f / 256f)) * row.Scale;
    }

    // Offset binary: b ^ 0x80 = q + 128. A byte at bits 8i..8i+7 of a word, OR-ed (XOR-ed, for the 0x80) into the
    // mantissa of 2^23 where it lies, reads as 2^23 + 256^i (q + 128): one LOP3 per value, no shift, for bytes 0 and 1;
    // bytes 2 and 3 after one shift of the word (byte 2 would reach f32's exponent). Subtracting 2^23 + 256^i * 128
    // leaves 256^i q exactly; A sums the q * x of bytes 0 and 2, B the 256 q * x of bytes 1 and 3.
    private static DotPair Word(uint bits, ArrayView<float> x, int i, uint lo, uint hi, DotPair acc)
    {
        const float BiasLo = QuantLayout.Magic + 128f;
        const float BiasHi = QuantLayout.Magic + 32768f;
        uint h = bits >> 16;
        float a = acc.A, b = acc.B;
        a += (Interop.IntAsFloat((bits & 0xFFu) ^ lo) - BiasLo) * x[i];
        b += (Interop.IntAsFloat((bits & 0xFF00u) ^ hi) - BiasHi) * x[i + 1];
        a += (Interop.IntAsFloat((h & 0xFFu) ^ lo) - BiasLo) * x[i + 2];
        b += (Interop.IntAsFloat((h & 0xFF00u) ^ hi) - BiasHi) * x[i + 3];
        return new DotPair(a, b);
    }
}

/// <summary>Q4 (QuantLayout.cs): 32 nibbles per unit, F16 scale (and optional zero) per unit's group.</summary>
public readonly struct Q4Units : IRowUnits
{
    public readonly ArrayView<Wide16> Data;
    public readonly ArrayView<ILGPU.Half> Scales;
    public readonly ArrayView<byte> Zeros;
    public readonly int NRows;
    public readonly int NCols;
    public readonly int NUnits;
    public readonly int Groups;
    public readonly int HasZeros;

    /// <summary>unit / (G / 32) as a multiply-high (UnitDivide).</summary>
    public readonly uint GroupMagic;
    public readonly uint GroupOneMask;

    /// <summary>QuantLayout.MagicBits as data (see Q8Units.MagicLo): one LOP3 per nibble.</summary>
    public readonly uint Magic;

    internal Q4Units(Q4Weights w)
    {
        Magic = QuantLayout.MagicBits;
        Data = w.Data.SubView(0, (long)w.Rows * w.RowWords).Cast<Wide16>();
        Scales = w.Scales;
        Zeros = w.Zeros;
        NRows = w.Rows;
        NCols = w.Cols;
        NUnits = w.RowWords >> 2;
        Groups = w.Groups;
        HasZeros = w.HasZeros;
        (GroupMagic, GroupOneMask) = UnitDivide.For(w.GroupSize / 32);
    }

    public int Rows => NRows;

    public int Cols => NCols;

    public int UnitValues => 32;

    public int UnitsPerRow => NUnits;

    public RowRef Row(long row) => new(Data.SubView(row * NUnits, NUnits), 0, row * Groups, 1f);

    // Side: the group's F16 scale bits | its zero << 16 (8 without zeros).
    public RawUnit Load(RowRef row, int unit)
    {
        long g = row.Scales + UnitDivide.Divide(unit, GroupMagic, GroupOneMask);
        uint z = HasZeros != 0 ? Zeros[g] : 8u;
        return new(row.Words[unit], Interop.FloatAsInt(Scales[g]) | (z << 16));
    }

    public float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0)
    {
        Wide16 w = raw.Word;
        float scale = (float)Interop.IntAsFloat((ushort)(raw.Side & 0xFFFFu));
        float z = raw.Side >> 16;
        var x = DecodeStaging.UnitSlots(xs, k0, 32);
        var bias = new Nibbles(QuantLayout.Magic + z, QuantLayout.Magic + 16f * z, QuantLayout.Magic + 256f * z,
            QuantLayout.Magic + 4096f * z, QuantLayout.Magic + 65536f * z);
        uint m = Magic;
        var a = Word(w.D, x, 24, m, bias, Word(w.C, x, 16, m, bias, Word(w.B, x, 8, m, bias, Word(w.A, x, 0, m, bias, default))));
        return (a.N0 + a.N1 * (1f / 16f) + a.N2 * (1f / 256f) + a.N3 * (1f / 4096f) + a.N4 * (1f / 65536f)) * scale;
    }

    /// <summary>Five floats: per nibble position i &lt; 5 a bias 2^23 + 16^i z, or a sum of 16^i (q - z) * x.</summary>
    private readonly struct Nibbles(float n0, float n1, float n2, float n3, float n4)
    {
        public readonly float N0 = n0;
        public readonly float N1 = n1;
        public readonly float N2 = n2;
        public readonly float N3 = n3;
        public readonly float N4 = n4;
    }

    // Straight nibble order: nibble i is column 8j + i (QuantLayout.cs). Nibble i < 5 of the word, masked in place and
    // OR-ed into the mantissa of 2^23, reads as 2^23 + 16^i q (below 2^24: exact); subtracting 2^23 + 16^i z leaves
    // 16^i (q - z) exactly: one LOP3 and one FADD per value, no shift. Nibbles 5..7 (bit 23 is f32's exponent) take
    // one shift of the word and the masks of nibbles 0..2. Position i's products sum in N_i; the caller scales N_i by
    // 16^-i (exact) once per unit.
    private static Nibbles Word(uint bits, ArrayView<float> x, int i, uint m, Nibbles b, Nibbles acc)
    {
        uint h = bits >> 20;
        float n0 = acc.N0, n1 = acc.N1, n2 = acc.N2, n3 = acc.N3, n4 = acc.N4;
        n0 += (Interop.IntAsFloat((bits & 0xFu) | m) - b.N0) * x[i];
        n1 += (Interop.IntAsFloat((bits & 0xF0u) | m) - b.N1) * x[i + 1];
        n2 += (Interop.IntAsFloat((bits & 0xF00u) | m) - b.N2) * x[i + 2];
        n3 += (Interop.IntAsFloat((bits & 0xF000u) | m) - b.N3) * x[i + 3];
        n4 += (Interop.IntAsFloat((bits & 0xF0000u) | m) - b.N4) * x[i + 4];
        n0 += (Interop.IntAsFloat((h & 0xFu) | m) - b.N0) * x[i + 5];
        n1 += (Interop.IntAsFloat((h & 0xF0u) | m) - b.N1) * x[i + 6];
        n2 += (Interop.IntAsFloat((h & 0xF00u) | m) - b.N2) * x[i + 7];
        return new Nibbles(n0, n1, n2, n3, n4);
    }
}

/// <summary>FP8 E4M3FN (QuantLayout.cs, Fp8.cs): 16 codes per unit, F32 scale per (BlockN x BlockK) block.</summary>
public readonly struct Fp8Units : IRowUnits
{
    /// <summary>2^120: E4M3's magnitude bits placed at f32's bits 20..26 read as 2^-120 times the value.</summary>
    private const float Rebias = (float)(1UL << 60) * (float)(1UL << 60);

    public readonly ArrayView<Wide16> Data;
    public readonly ArrayView<float> Scales;
    public readonly int NRows;
    public readonly int NCols;
    public readonly int NUnits;
    public readonly int MatrixRows;
    public readonly int BlockN;
    public readonly int ScaleRows;
    public readonly int ScaleCols;

    /// <summary>unit / (BlockK / 16) as a multiply-high (UnitDivide); 0 for one block per row.</summary>
    public readonly uint BlockMagic;
    public readonly uint BlockOneMask;

    internal Fp8Units(Fp8Weights w)
    {
        Data = w.Data.SubView(0, (long)w.Rows * w.RowWords).Cast<Wide16>();
        Scales = w.Scales;
        NRows = w.Rows;
        NCols = w.Cols;
        NUnits = w.RowWords >> 2;
        MatrixRows = w.MatrixRows;
        BlockN = w.BlockN;
        ScaleRows = w.ScaleRows;
        ScaleCols = w.ScaleCols;
        // One block spans the row (BlockK >= K): magic 0 and mask 0 give block 0 for every unit.
        (BlockMagic, BlockOneMask) = w.BlockK >= w.Cols ? (0u, 0u) : UnitDivide.For(w.BlockK / 16);
    }

    public int Rows => NRows;

    public int Cols => NCols;

    public int UnitValues => 16;

    public int UnitsPerRow => NUnits;

    // 32-bit divisions (rows fit an int): ILGPU places the row arithmetic next to its use inside the unit loop, and
    // ptxas hoists an inline 32-bit division out of it but not the subroutine call of a 64-bit one.
    public RowRef Row(long row)
    {
        int n = (int)row;
        int e = n / MatrixRows;
        int r = n - e * MatrixRows;
        return new(Data.SubView(row * NUnits, NUnits), 0, ((long)e * ScaleRows + r / BlockN) * ScaleCols, 1f);
    }

    // Side: the block's F32 scale bits.
    public RawUnit Load(RowRef row, int unit) =>
        new(row.Words[unit], Interop.FloatAsInt(Scales[row.Scales + UnitDivide.Divide(unit, BlockMagic, BlockOneMask)]));

    public float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0)
    {
        Wide16 w = raw.Word;
        float scale = Interop.IntAsFloat(raw.Side);
        var x = DecodeStaging.UnitSlots(xs, k0, 16);
        float sum = Word(w.A, x, 0) + Word(w.B, x, 4) + (Word(w.C, x, 8) + Word(w.D, x, 12));
        // A NaN code (S.1111.111) in any byte makes the unit NaN, as Fp8.DecodeE4M3 times x would: adding 1 to the
        // low 7 bits of each byte carries into bit 7 only for 0x7F.
        uint nan = (((w.A & 0x7F7F7F7Fu) + 0x01010101u) | ((w.B & 0x7F7F7F7Fu) + 0x01010101u)
                    | ((w.C & 0x7F7F7F7Fu) + 0x01010101u) | ((w.D & 0x7F7F7F7Fu) + 0x01010101u)) & 0x80808080u;
        return nan != 0 ? float.NaN : sum * scale;
    }

    // E4M3 magnitude bits (e, m) moved to f32 bits 23..26 and 20..22 read as 2^-120 * value for normals and subnormals
    // alike (f32 subnormal m * 2^-129 = m * 2^-9 * 2^-120), the sign to bit 31; the product by 2^120 is exact.
    private static float Code(uint bits) => Interop.IntAsFloat(((bits & 0x7Fu) << 20) | ((bits & 0x80u) << 24)) * Rebias;

    private static float Word(uint bits, ArrayView<float> x, int i)
    {
        float s = Code(bits) * x[i];
        s += Code(bits >> 8) * x[i + 1];
        s += Code(bits >> 16) * x[i + 2];
        s += Code(bits >> 24) * x[i + 3];
        return s;
    }
}

/// <summary>MXFP4 (Quant/Mxfp4.cs): 32 E2M1 codes per unit (= one block), one E8M0 scale byte per unit.</summary>
public readonly struct Mxfp4Units : IRowUnits
{
    public readonly ArrayView<Wide16> Data;
    public readonly ArrayView<byte> Scales;
    public readonly int NRows;
    public readonly int NCols;
    public readonly int NUnits;

    internal Mxfp4Units(Mxfp4Weights w)
    {
        Data = w.Data.SubView(0, (long)w.Rows * w.RowWords).Cast<Wide16>();
        Scales = w.Scales;
        NRows = w.Rows;
        NCols = w.Cols;
        NUnits = w.Groups;
    }

    public int Rows => NRows;

    public int Cols => NCols;

    public int UnitValues => 32;

    public int UnitsPerRow => NUnits;

    public RowRef Row(long row) => new(Data.SubView(row * NUnits, NUnits), 0, row * NUnits, 1f);

    // Side: the unit's E8M0 scale byte.
    public RawUnit Load(RowRef row, int unit) => new(row.Words[unit], Scales[row.Scales + unit]);

    public float Dot(RowRef row, RawUnit raw, ArrayView<float> xs, int k0)
    {
        Wide16 w = raw.Word;
        float scale = Mxfp4.HalfScale(raw.Side);
        var x = DecodeStaging.UnitSlots(xs, k0, 32);
        // Four independent chains (one per word), added in a fixed order; 2 * E2M1 per code, 2^(s - 128) per unit.
        return (Word(w.A, x, 0) + Word(w.B, x, 8) + (Word(w.C, x, 16) + Word(w.D, x, 24))) * scale;
    }

    // Straight nibble order: nibble i of word j is column 8j + i. Each code costs a mask, a multiply that places
    // magnitude and sign, a mask, the exact product by 2^127 and the FFMA (Mxfp4.Code2); nibbles 4..7 read the word's
    // high half (one shift per word).
    private static float Word(uint bits, ArrayView<float> x, int i)
    {
        uint hi = bits >> 16;
        float s = Mxfp4.Code2(bits, 0) * x[i];
        s += Mxfp4.Code2(bits, 1) * x[i + 1];
        s += Mxfp4.Code2(bits, 2) * x[i + 2];
        s += Mxfp4.Code2(bits, 3) * x[i + 3];
        s += Mxfp4.Code2(hi, 0) * x[i + 4];
        s += Mxfp4.Code2(hi, 1) * x[i + 5];
        s += Mxfp4.Code2(hi, 2) * x[i + 6];
        s += Mxfp4.Code2(hi, 3) * x[i + 7];
        return s;
    }
}

/// <summary>Host factories of the readers (each checks the layout the reader needs and throws a one-line ArgumentException),
/// and DotUnit.</summary>
public static class RowUnits
{
    /// <summary>Load then Dot of one unit (the readers' straight path, where no loop pipelines the loads).</summary>
    public static float DotUnit<TU>(this TU w, RowRef row, int unit, ArrayView<float> xs, int k0)
        where TU : struct, IRowUnits => w.Dot(row, w.Load(row, unit), xs, k0);

    /// <summary>True when a float matrix [rows, cols] of T can be read as 16-byte units: cols * sizeof(T) a multiple of
    /// 16 and the view 16-byte aligned (else use <see cref="Scalar{TW}"/>).</summary>
    public static bool CanReadWide<T>(ArrayView<T> data, int cols)
        where T : unmanaged =>
        cols > 0 && (long)cols * Marshal.SizeOf<T>() % 16 == 0 && WideAccess.IsAligned(data, 16);

    public static F32Units F32(F32Weights w, int rows, int cols) => new(Wide(w.Data, rows, cols, "f32"), rows, cols);

    public static F16Units F16(F16Weights w, int rows, int cols) => new(Wide(w.Data, rows, cols, "f16"), rows, cols);

    public static BF16Units BF16(BF16Weights w, int rows, int cols) => new(Wide(w.Data, rows, cols, "bf16"), rows, cols);

    public static ScalarUnits<TW> Scalar<TW>(TW w, int rows, int cols)
        where TW : struct, IWeights
    {
        Shape(rows, cols, w.Length, typeof(TW).Name);
        if ((long)cols + 3 > int.MaxValue)
            throw new ArgumentException($"RowUnits: {cols} columns are too many");
        return new(w, rows, cols);
    }

    public static Q8Units Q8(Q8Weights w)
    {
        QuantLayout.Check("RowUnits", w);
        QuantLayout.CheckWide("RowUnits", "w", w);
        return new(w);
    }

    /// <summary>Q4: also needs at most 2^16 - 1 units (32 values) per row, the range of the group division (UnitDivide).</summary>
    public static Q4Units Q4(Q4Weights w)
    {
        QuantLayout.Check("RowUnits", w);
        QuantLayout.CheckWide("RowUnits", "w", w);
        if (w.RowWords / 4 >= UnitDivide.Limit)
            throw new ArgumentException($"RowUnits: Q4 rows of {w.Cols} values are more than {UnitDivide.Limit - 1} units");
        return new(w);
    }

    /// <summary>FP8: also needs at most 2^16 - 1 units (16 values) per row, the range of the block division (UnitDivide).</summary>
    public static Fp8Units Fp8(Fp8Weights w)
    {
        QuantLayout.Check("RowUnits", w);
        QuantLayout.CheckWide("RowUnits", "w", w);
        if (w.RowWords / 4 >= UnitDivide.Limit)
            throw new ArgumentException($"RowUnits: FP8 rows of {w.Cols} values are more than {UnitDivide.Limit - 1} units");
        return new(w);
    }

    /// <summary>MXFP4: one scale per unit, so no unit division and no bound on the row length.</summary>
    public static Mxfp4Units Mxfp4(Mxfp4Weights w)
    {
        QuantLayout.Check("RowUnits", w);
        QuantLayout.CheckWide("RowUnits", "w", w);
        return new(w);
    }

    private static void Shape(int rows, int cols, long length, string type)
    {
        if (rows < 1 || cols < 1)
            throw new ArgumentException($"RowUnits: weight shape [{rows}, {cols}] is empty");
        if (length < (long)rows * cols)
            throw new ArgumentException($"RowUnits: {type} weights have {length} elements, need {(long)rows * cols} for [{rows}, {cols}]");
    }

    private static ArrayView<Wide16> Wide<T>(ArrayView<T> data, int rows, int cols, string type)
        where T : unmanaged
    {
        Shape(rows, cols, data.Length, type);
        int size = Marshal.SizeOf<T>();
        if ((long)cols * size % 16 != 0)
            throw new ArgumentException($"RowUnits: {type} rows of {cols} values are {(long)cols * size} bytes, not whole 16-byte units (use RowUnits.Scalar)");
        WideAccess.RequireAligned("RowUnits", type + " weights", data, 16);
        return data.SubView(0, (long)rows * cols).Cast<Wide16>();
    }
}
