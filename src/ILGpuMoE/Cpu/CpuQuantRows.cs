// cpu/quant-rows: the CpuMatrix readers of the packed layouts (kernels/ILGpuMoE.Kernels/Quant/QuantLayout.cs), reading
// a host QuantizedMatrix's arrays where they lie: y[j, r] (+)= sum_c x[j, c] * W[row0 + r, c], W never widened to a copy.
//
// Readers (one class per layout; each owns the host matrix, pins its arrays for the length of a call):
//   Q8Rows     int8 bytes, one F32 scale per row: the row's code sum times its scale.
//   Q4Rows     nibbles, F16 scale per group of G (a multiple of 32, or the whole row), zeros or z = 8.
//   Fp8Rows    E4M3 bytes, F32 scale per BlockN x BlockK block (per tensor: one block); stacked experts each have their
//              own block grid (expert e = row / MatrixRows).
//   Mxfp4Rows  E2M1 nibbles, one E8M0 scale byte per 32 values.
//
// One loop (QuantRowDot.Row) serves all four: a row is cut into segments that share a scale (Q8: the row, Q4: a group,
// FP8: a block, MXFP4: 32 values); inside a segment the codes are decoded 8 at a time into a Vector256<float>, exactly
// (q - z for the int layouts, e4m3 or 2 * e2m1 for the float ones), and FMA-ed into one or two float accumulators per
// input row; at the segment's end its partial sums are multiplied by the scale and added to the row's sums. Decoding is
// in registers, no table in memory:
//   Q8     sign-extend 8 bytes to int32 (vpmovsxbd from memory) and convert.
//   Q4     broadcast a word, shift nibble i to the top (vpsllvd, 28 - 4i) and shift it back arithmetically: the signed
//          value of (q ^ 8), i.e. q - 8 when the word was XOR-ed with 0x88888888 first; + (8 - z) with zeros; convert.
//          (MXFP4's byte-table path with a table of q - 8 measured ~10% slower here.)
//   FP8    sign-extend the bytes; (b << 20) & 0x87F00000 puts the sign at bit 31 and exponent and mantissa at the top of
//          f32's (bits 23..26, 20..22), which read as f32 is e4m3 * 2^-120 (subnormals included: m * 2^-129 is f32's
//          subnormal m << 20), times 2^120 exact; the one NaN code (S.1111.111) is OR-ed to all ones (a NaN). E4M3's
//          own subnormals (|w| below 2^-6 of a block's scale: rare in weights) take f32's slow subnormal multiply.
//   MXFP4  (AVX2) all 32 nibbles of a block through a 16-entry int8 table of 2 * e2m1 (pshufb on the low and the high
//          nibbles, interleaved back into value order), sign-extended and converted as Q8: ~5 instructions per 8
//          values against ~7 for a per-lane decode. Elsewhere: the nibble at the top as in Q4, its magnitude bits index an
//          8-entry float table (0, 1, 2, 3, 4, 6, 8, 12), its top bit is the sign. The block's factor is applied as
//          2^(s - 128) (Mxfp4.cs: finite for every s). Not the kernels' bit trick (2 * e2m1 * 2^-127, then times
//          2^127): its subnormal floats for the codes 0 and 0.5 (a quarter of random codes) make the multiplies slow on
//          the CPU (4.8 ms against 2.3 ms at 4096 x 4096).
// Every decoded code is an exact float, so the sum differs from the dequantized reference only by f32 rounding of the
// sums (and the one rounding of the scale product): ~1e-6 relative.
//
// Words are read as 16 bytes (4 Q4 / MXFP4 words, 32 values) at a time, broadcast to both halves of a vector and spread
// one word per vector with an in-lane shuffle: no round trip through integer registers.
//
// 16 lanes where the runtime accelerates Vector512 (AVX-512: Zen 4/5, Intel since Ice Lake; QuantRowDot.Wide): the same
// decoding on 16 values per instruction (Q4: two words per vector, one vpermd each), for segments and rows of whole
// 32-value units (everything but Q8 / FP8 rows whose Cols is no multiple of 32 and FP8 blocks of 16, which take the
// 8-lane path). Single-threaded at 4096 x 4096 and one input row on this machine's Zen 5 it reads 1.3x (Q4) to 1.5x
// (Q8, FP8) the packed bytes per second of the 8-lane path. DOTNET_PreferredVectorBitWidth=256 turns it off: run the
// tests that way too on an AVX-512 machine (and with DOTNET_EnableAVX2=0 for the portable path), as a plain run takes
// the 8-lane path only for the shapes the 16-lane one leaves.

// Every method on the path is JIT'd fully optimized at its first call (AggressiveOptimization, as the other CPU kernels):
// no tier-0 pass over the first tokens.
//
// Tokens: up to four input rows share each decoded vector (the decode costs as much as the FMAs); a single input row
// uses four accumulators (FMA latency), several use two each. The token count is a generic struct parameter so each
// count compiles to straight code (no per-token loop). Variable shifts are AVX2's vpsllvd; elsewhere (ARM64) the same
// shift is a multiply by 2^count, exact modulo 2^32. No integer dot product: x stays f32 (quantizing x to int8 per
// block, as llama.cpp's Q8_0 x Q4_0 does, would change the numerics).
using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Quant;

namespace ILGpuMoE.Cpu;

/// <summary>CpuMatrix readers over packed quantized matrices (see the header).</summary>
public static class CpuQuantRows
{
    /// <summary>A reader of <paramref name="m"/>'s packed rows in place (stacked experts: [E*N, Cols]).</summary>
    public static CpuMatrix Of(QuantizedMatrix m)
    {
        ArgumentNullException.ThrowIfNull(m);
        return m.Scheme switch
        {
            QuantScheme.Q8 => new Q8Rows((Q8Matrix)m),
            QuantScheme.Q4 => new Q4Rows(Checked((Q4Matrix)m)),
            QuantScheme.Fp8 => new Fp8Rows(Checked((Fp8Matrix)m)),
            QuantScheme.Mxfp4 => new Mxfp4Rows((Mxfp4Matrix)m),
            _ => throw new System.Diagnostics.UnreachableException($"CpuQuantRows: scheme {m.Scheme}"),
        };
    }

    // The layout rules the readers rely on (QuantLayout.Check's; the host builders keep them): a Q4 group is whole 32-value
    // units, an FP8 block is whole 16-byte units or the whole row, so no 8-value step crosses a scale.
    private static Q4Matrix Checked(Q4Matrix q) => q.GroupSize >= 32 && q.GroupSize % 32 == 0 && q.Cols % q.GroupSize == 0
        ? q
        : throw new ArgumentException($"CpuQuantRows: Q4 group size {q.GroupSize} must be a multiple of 32 dividing Cols = {q.Cols}");

    private static Fp8Matrix Checked(Fp8Matrix f) => f.BlockN >= 1 && (f.BlockK % 16 == 0 || f.BlockK >= f.Cols) && f.BlockK >= 1 && f.Rows % f.MatrixRows == 0
        ? f
        : throw new ArgumentException($"CpuQuantRows: FP8 scale block [{f.BlockN}, {f.BlockK}] of [{f.Rows}, {f.Cols}] ({f.MatrixRows} rows a matrix) breaks the layout");
}

/// <summary>What every quantized reader shares: the host matrix, its type name and input permutation, a scale scratch.</summary>
internal abstract unsafe class QuantRows(QuantizedMatrix host) : CpuMatrix(host.Rows, host.Cols)
{
    [ThreadStatic]
    private static float[]? scratch;

    public override string TypeName => host.TypeName;

    public override int[]? InputPermutation => host.InputPermutation;

    [ThreadStatic]
    private static float[]? tile;

    /// <summary>The calling thread's float scratch of at least <paramref name="n"/> entries (one row's scales).</summary>
    protected static float[] Scratch(int n)
    {
        if (scratch is null || scratch.Length < n)
            scratch = new float[Math.Max(n, 64)];
        return scratch;
    }

    /// <summary>Steps of at least this many tokens decode each row once and run the F32 tiles (see <see cref="DotTiled"/>).</summary>
    public const int TileTokens = 8;

    /// <summary>Row n decoded exactly (code x scale, rounded to F32) into dst [Cols].</summary>
    protected abstract void DecodeRow(int n, float* dst);

    /// <summary>
    /// Prefill form (tokens &gt;= <see cref="TileTokens"/>): four rows at a time decoded once into the thread's scratch
    /// (4 x Cols floats, L1/L2-resident: a transient tile, not a copy of the weights) and multiplied by Tile4x4 against
    /// every token, so the decode cost is shared by all the step's tokens instead of by four; the leftover rows through
    /// RowDot.F32 in the same summation order (CpuMatrix.cs).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    protected void DotTiled(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        if (tile is null || tile.Length < 4 * Cols)
            tile = GC.AllocateUninitializedArray<float>(4 * Cols, pinned: true);
        fixed (float* b = tile)
        {
            int r = 0;
            for (; r + 4 <= count; r += 4)
            {
                for (int i = 0; i < 4; i++)
                    DecodeRow(row0 + r + i, b + (long)i * Cols);
                Tiles.Rows4<F32Load, float>(b, Cols, x, xStride, tokens, y + r, yStride, accumulate);
            }

            for (; r < count; r++)
            {
                DecodeRow(row0 + r, b);
                RowDot.F32(b, Cols, x, xStride, tokens, y + r, yStride, accumulate);
            }
        }
    }
}

internal sealed unsafe class Q8Rows(Q8Matrix m) : QuantRows(m)
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal override void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        CheckRows(row0, count);
        if (tokens >= TileTokens)
        {
            DotTiled(row0, count, x, xStride, tokens, y, yStride, accumulate);
            return;
        }

        long rowBytes = (long)m.RowWords * 4;
        fixed (uint* words = m.Words)
        fixed (float* scales = m.Scales)
        {
            for (int r = 0; r < count; r++)
            {
                int n = row0 + r;
                QuantRowDot.Row<Q8Codes>((byte*)words + n * rowBytes, Cols, Cols, scales + n, null, x, xStride, tokens, y + r, yStride, accumulate);
            }
        }
    }

    protected override void DecodeRow(int n, float* dst)
    {
        fixed (uint* words = m.Words)
        fixed (float* scales = m.Scales)
            QuantRowDot.Decode<Q8Codes>((byte*)words + n * (long)m.RowWords * 4, Cols, Cols, scales + n, null, dst);
    }
}
internal sealed unsafe class Q4Rows(Q4Matrix m) : QuantRows(m)
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal override void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        CheckRows(row0, count);
        if (tokens >= TileTokens)
        {
            DotTiled(row0, count, x, xStride, tokens, y, yStride, accumulate);
            return;
        }

        int g = m.GroupSize, groups = Cols / g;
        long rowBytes = (long)m.RowWords * 4;
        bool asym = m.Zeros.Length > 0;
        var s = Scratch(groups);
        fixed (uint* words = m.Words)
        fixed (ushort* scales = m.Scales)
        fixed (byte* zeros = m.Zeros)
        fixed (float* sf = s)
        {
            for (int r = 0; r < count; r++)
            {
                long n = row0 + r;
                // The row's F16 scales widened once for all its tokens (~10 ns a row at 4096 columns, g32).
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((Half*)scales + n * groups, groups), new Span<float>(sf, groups));
                byte* row = (byte*)words + n * rowBytes;
                if (asym)
                    QuantRowDot.Row<Q4AsymCodes>(row, Cols, g, sf, zeros + n * groups, x, xStride, tokens, y + r, yStride, accumulate);
                else
                    QuantRowDot.Row<Q4Codes>(row, Cols, g, sf, null, x, xStride, tokens, y + r, yStride, accumulate);
            }
        }
    }

    protected override void DecodeRow(int n, float* dst)
    {
        int g = m.GroupSize, groups = Cols / g;
        float* sf = stackalloc float[groups];
        fixed (uint* words = m.Words)
        fixed (ushort* scales = m.Scales)
        fixed (byte* zeros = m.Zeros)
        {
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((Half*)scales + (long)n * groups, groups), new Span<float>(sf, groups));
            byte* row = (byte*)words + n * (long)m.RowWords * 4;
            if (m.Zeros.Length > 0)
                QuantRowDot.Decode<Q4AsymCodes>(row, Cols, g, sf, zeros + (long)n * groups, dst);
            else
                QuantRowDot.Decode<Q4Codes>(row, Cols, g, sf, null, dst);
        }
    }
}
internal sealed unsafe class Fp8Rows(Fp8Matrix m) : QuantRows(m)
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal override void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        CheckRows(row0, count);
        if (tokens >= TileTokens)
        {
            DotTiled(row0, count, x, xStride, tokens, y, yStride, accumulate);
            return;
        }

        long rowBytes = (long)m.RowWords * 4;
        int scaleRows = (m.MatrixRows + m.BlockN - 1) / m.BlockN, scaleCols = (Cols + m.BlockK - 1) / m.BlockK;
        // BlockK >= Cols (per tensor) is one segment of Cols values.
        int segment = Math.Min(m.BlockK, Cols);
        fixed (uint* words = m.Words)
        fixed (float* scales = m.Scales)
        {
            for (int r = 0; r < count; r++)
            {
                int n = row0 + r, e = n / m.MatrixRows, nr = n - e * m.MatrixRows;
                float* rowScales = scales + ((long)e * scaleRows + nr / m.BlockN) * scaleCols;
                QuantRowDot.Row<Fp8Codes>((byte*)words + n * rowBytes, Cols, segment, rowScales, null, x, xStride, tokens, y + r, yStride, accumulate);
            }
        }
    }

    protected override void DecodeRow(int n, float* dst)
    {
        int scaleRows = (m.MatrixRows + m.BlockN - 1) / m.BlockN, scaleCols = (Cols + m.BlockK - 1) / m.BlockK;
        int e = n / m.MatrixRows, nr = n - e * m.MatrixRows;
        fixed (uint* words = m.Words)
        fixed (float* scales = m.Scales)
            QuantRowDot.Decode<Fp8Codes>((byte*)words + n * (long)m.RowWords * 4, Cols, Math.Min(m.BlockK, Cols),
                scales + ((long)e * scaleRows + nr / m.BlockN) * scaleCols, null, dst);
    }
}
internal sealed unsafe class Mxfp4Rows(Mxfp4Matrix m) : QuantRows(m)
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal override void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        CheckRows(row0, count);
        if (tokens >= TileTokens)
        {
            DotTiled(row0, count, x, xStride, tokens, y, yStride, accumulate);
            return;
        }

        int groups = Cols / Mxfp4.BlockValues;
        long rowBytes = (long)m.RowWords * 4;
        var s = Scratch(groups);
        fixed (uint* words = m.Words)
        fixed (byte* scales = m.Scales)
        fixed (float* sf = s)
        {
            for (int r = 0; r < count; r++)
            {
                long n = row0 + r;
                byte* rowScales = scales + n * groups;
                for (int g = 0; g < groups; g++)
                    sf[g] = Mxfp4.HalfScale(rowScales[g]); // 2^(s - 128): the codes carry the other factor 2
                QuantRowDot.Row<Mxfp4Codes>((byte*)words + n * rowBytes, Cols, Mxfp4.BlockValues, sf, null, x, xStride, tokens, y + r, yStride, accumulate);
            }
        }
    }

    protected override void DecodeRow(int n, float* dst)
    {
        int groups = Cols / Mxfp4.BlockValues;
        float* sf = stackalloc float[groups];
        fixed (uint* words = m.Words)
        fixed (byte* scales = m.Scales)
        {
            for (int g = 0; g < groups; g++)
                sf[g] = Mxfp4.HalfScale(scales[(long)n * groups + g]);
            QuantRowDot.Decode<Mxfp4Codes>((byte*)words + n * (long)m.RowWords * 4, Cols, Mxfp4.BlockValues, sf, null, dst);
        }
    }
}

/// <summary>How a layout's codes decode: 32 or 8 consecutive values of a row as floats (before the segment's scale), or one.</summary>
internal unsafe interface ICodes
{
    /// <summary>Whether segments carry a zero point (Q4 asym): the decoders then add 8 - z.</summary>
    static abstract bool HasZeros { get; }

    /// <summary>Values c .. c + 31 of the row at <paramref name="row"/> (c a multiple of 32), 8 per vector.</summary>
    static abstract void Unit(byte* row, int c, Vector256<int> zeroOffset, out Vector256<float> v0, out Vector256<float> v1, out Vector256<float> v2, out Vector256<float> v3);

    /// <summary>Values c .. c + 31 as two 16-lane vectors (AVX-512 only; <see cref="QuantRowDot.Wide"/>).</summary>
    static abstract void Unit512(byte* row, int c, Vector512<int> zeroOffset, out Vector512<float> v0, out Vector512<float> v1);

    /// <summary>Values c .. c + 7 (c a multiple of 8).</summary>
    static abstract Vector256<float> Eight(byte* row, int c, Vector256<int> zeroOffset);

    /// <summary>Value c.</summary>
    static abstract float One(byte* row, int c, int zeroOffset);
}

internal readonly unsafe struct Q8Codes : ICodes
{
    public static bool HasZeros => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit(byte* row, int c, Vector256<int> zeroOffset, out Vector256<float> v0, out Vector256<float> v1, out Vector256<float> v2, out Vector256<float> v3)
    {
        byte* p = row + c;
        v0 = Vector256.ConvertToSingle(CodeBits.SignExtend8(p));
        v1 = Vector256.ConvertToSingle(CodeBits.SignExtend8(p + 8));
        v2 = Vector256.ConvertToSingle(CodeBits.SignExtend8(p + 16));
        v3 = Vector256.ConvertToSingle(CodeBits.SignExtend8(p + 24));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit512(byte* row, int c, Vector512<int> zeroOffset, out Vector512<float> v0, out Vector512<float> v1)
    {
        v0 = Vector512.ConvertToSingle(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)row + c)));
        v1 = Vector512.ConvertToSingle(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)row + c + 16)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Eight(byte* row, int c, Vector256<int> zeroOffset) => Vector256.ConvertToSingle(CodeBits.SignExtend8(row + c));

    public static float One(byte* row, int c, int zeroOffset) => (sbyte)row[c];
}

internal readonly unsafe struct Fp8Codes : ICodes
{
    public static bool HasZeros => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit(byte* row, int c, Vector256<int> zeroOffset, out Vector256<float> v0, out Vector256<float> v1, out Vector256<float> v2, out Vector256<float> v3)
    {
        v0 = Eight(row, c, zeroOffset);
        v1 = Eight(row, c + 8, zeroOffset);
        v2 = Eight(row, c + 16, zeroOffset);
        v3 = Eight(row, c + 24, zeroOffset);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit512(byte* row, int c, Vector512<int> zeroOffset, out Vector512<float> v0, out Vector512<float> v1)
    {
        v0 = Sixteen(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)row + c)));
        v1 = Sixteen(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)row + c + 16)));
    }

    /// <summary>16 sign-extended E4M3 bytes decoded as <see cref="Eight"/> does.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Sixteen(Vector512<int> b)
    {
        var bits = Vector512.ShiftLeft(b, 20) & Vector512.Create(unchecked((int)0x87F00000));
        var nan = Vector512.Equals(b | Vector512.Create(~0x7F), Vector512.Create(-1));
        return (bits.AsSingle() * Vector512.Create(CodeBits.TwoPow120)) | nan.AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Eight(byte* row, int c, Vector256<int> zeroOffset)
    {
        var b = CodeBits.SignExtend8(row + c);
        var bits = Vector256.ShiftLeft(b, 20) & Vector256.Create(unchecked((int)0x87F00000));
        var nan = Vector256.Equals(b | Vector256.Create(~0x7F), Vector256.Create(-1));
        return (bits.AsSingle() * Vector256.Create(CodeBits.TwoPow120)) | nan.AsSingle();
    }

    public static float One(byte* row, int c, int zeroOffset) => Fp8.DecodeE4M3(row[c]);
}

internal readonly unsafe struct Q4Codes : ICodes
{
    public static bool HasZeros => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit(byte* row, int c, Vector256<int> zeroOffset, out Vector256<float> v0, out Vector256<float> v1, out Vector256<float> v2, out Vector256<float> v3)
    {
        CodeBits.Words4(row + (c >> 1), 0x88888888u, out var w0, out var w1, out var w2, out var w3);
        v0 = Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(w0));
        v1 = Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(w1));
        v2 = Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(w2));
        v3 = Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(w3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit512(byte* row, int c, Vector512<int> zeroOffset, out Vector512<float> v0, out Vector512<float> v1)
    {
        CodeBits.Words4Wide(row + (c >> 1), 0x88888888u, out var w01, out var w23);
        v0 = Vector512.ConvertToSingle(CodeBits.SignedTopNibbles(w01));
        v1 = Vector512.ConvertToSingle(CodeBits.SignedTopNibbles(w23));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Eight(byte* row, int c, Vector256<int> zeroOffset) =>
        Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(Vector256.Create(*(uint*)(row + (c >> 1)) ^ 0x88888888u)));

    public static float One(byte* row, int c, int zeroOffset) => (int)((*(uint*)(row + ((c >> 3) << 2)) >> (4 * (c & 7))) & 0xF) - 8;
}

internal readonly unsafe struct Q4AsymCodes : ICodes
{
    public static bool HasZeros => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit(byte* row, int c, Vector256<int> zeroOffset, out Vector256<float> v0, out Vector256<float> v1, out Vector256<float> v2, out Vector256<float> v3)
    {
        CodeBits.Words4(row + (c >> 1), 0x88888888u, out var w0, out var w1, out var w2, out var w3);
        v0 = Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(w0) + zeroOffset);
        v1 = Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(w1) + zeroOffset);
        v2 = Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(w2) + zeroOffset);
        v3 = Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(w3) + zeroOffset);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit512(byte* row, int c, Vector512<int> zeroOffset, out Vector512<float> v0, out Vector512<float> v1)
    {
        CodeBits.Words4Wide(row + (c >> 1), 0x88888888u, out var w01, out var w23);
        v0 = Vector512.ConvertToSingle(CodeBits.SignedTopNibbles(w01) + zeroOffset);
        v1 = Vector512.ConvertToSingle(CodeBits.SignedTopNibbles(w23) + zeroOffset);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Eight(byte* row, int c, Vector256<int> zeroOffset) =>
        Vector256.ConvertToSingle(CodeBits.SignedTopNibbles(Vector256.Create(*(uint*)(row + (c >> 1)) ^ 0x88888888u)) + zeroOffset);

    public static float One(byte* row, int c, int zeroOffset) => Q4Codes.One(row, c, 0) + zeroOffset;
}

internal readonly unsafe struct Mxfp4Codes : ICodes
{
    /// <summary>2 * e2m1 by code: sign bit 3, magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 doubled.</summary>
    /// <remarks>Inlined by force: one call left in a loop makes the JIT keep the loop's accumulators on the stack.</remarks>
    private static Vector128<sbyte> Table
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector128.Create((sbyte)0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
    }

    public static bool HasZeros => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit(byte* row, int c, Vector256<int> zeroOffset, out Vector256<float> v0, out Vector256<float> v1, out Vector256<float> v2, out Vector256<float> v3)
    {
        if (Avx2.IsSupported)
        {
            CodeBits.NibbleBytes(row + (c >> 1), Table, out v0, out v1, out v2, out v3);
            return;
        }

        CodeBits.Words4(row + (c >> 1), 0u, out var w0, out var w1, out var w2, out var w3);
        v0 = Code2(w0);
        v1 = Code2(w1);
        v2 = Code2(w2);
        v3 = Code2(w3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unit512(byte* row, int c, Vector512<int> zeroOffset, out Vector512<float> v0, out Vector512<float> v1)
    {
        CodeBits.NibbleBytes(row + (c >> 1), Table, out var first, out var second);
        v0 = Vector512.ConvertToSingle(Avx512F.ConvertToVector512Int32(first));
        v1 = Vector512.ConvertToSingle(Avx512F.ConvertToVector512Int32(second));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Eight(byte* row, int c, Vector256<int> zeroOffset) => Code2(Vector256.Create(*(uint*)(row + (c >> 1))));

    public static float One(byte* row, int c, int zeroOffset)
    {
        uint nibble = (*(uint*)(row + ((c >> 3) << 2)) >> (4 * (c & 7))) & 0xF;
        float magnitude = (nibble & 7) switch
        {
            0 => 0f,
            1 => 1f,
            2 => 2f,
            3 => 3f,
            4 => 4f,
            5 => 6f,
            6 => 8f,
            7 => 12f,
            _ => throw new System.Diagnostics.UnreachableException(),
        };
        return (nibble & 8) != 0 ? -magnitude : magnitude;
    }

    /// <summary>2 * e2m1 of the 8 nibbles of a broadcast word (header).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Code2(Vector256<uint> word)
    {
        var top = CodeBits.NibblesToTop(word);
        var magnitude = Vector256.ShiftRightLogical(top, 28); // the sign bit (bit 3) is ignored by the 8-entry lookup
        var table = Vector256.Create(0f, 1, 2, 3, 4, 6, 8, 12);
        var v = Avx2.IsSupported ? Avx2.PermuteVar8x32(table, magnitude.AsInt32()) : Vector256.Shuffle(table, (magnitude & Vector256.Create(7u)).AsInt32());
        return v | (top & Vector256.Create(0x80000000u)).AsSingle();
    }
}

/// <summary>The in-register decoding steps the layouts share (header).</summary>
internal static unsafe class CodeBits
{
    /// <summary>2^120 (the literal rounds to it exactly).</summary>
    public const float TwoPow120 = 1.329227995784916E+36f;

    /// <summary>8 int8 values at p, sign-extended.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> SignExtend8(byte* p)
    {
        if (Avx2.IsSupported)
            return Avx2.ConvertToVector256Int32((sbyte*)p);
        var s16 = Vector128.WidenLower(Vector128.CreateScalar(*(ulong*)p).AsSByte());
        return Vector256.Create(Vector128.WidenLower(s16), Vector128.WidenUpper(s16));
    }

    /// <summary>
    /// The 4 words (16 bytes) at p, each XOR-ed with <paramref name="flip"/> and broadcast to all 8 lanes: one 16-byte load
    /// into both halves (vbroadcasti128) and an in-lane shuffle (vpshufd) per word, no round trip through integer registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Words4(byte* p, uint flip, out Vector256<uint> w0, out Vector256<uint> w1, out Vector256<uint> w2, out Vector256<uint> w3)
    {
        if (Avx2.IsSupported)
        {
            var u = (Avx2.BroadcastVector128ToVector256((uint*)p) ^ Vector256.Create(flip)).AsInt32();
            w0 = Avx2.Shuffle(u, 0x00).AsUInt32();
            w1 = Avx2.Shuffle(u, 0x55).AsUInt32();
            w2 = Avx2.Shuffle(u, 0xAA).AsUInt32();
            w3 = Avx2.Shuffle(u, 0xFF).AsUInt32();
            return;
        }

        uint* q = (uint*)p;
        w0 = Vector256.Create(q[0] ^ flip);
        w1 = Vector256.Create(q[1] ^ flip);
        w2 = Vector256.Create(q[2] ^ flip);
        w3 = Vector256.Create(q[3] ^ flip);
    }

    /// <summary>
    /// The 32 nibbles of 16 bytes at p (byte j: value 2j low, 2j + 1 high) mapped through a 16-entry int8 table, in value
    /// order: values 0..15 in <paramref name="first"/>, 16..31 in <paramref name="second"/>. Both nibbles of all 16 bytes
    /// go through one table lookup each (pshufb) and are interleaved back (punpcklbw / punpckhbw). SSSE3.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void NibbleBytes(byte* p, Vector128<sbyte> table, out Vector128<sbyte> first, out Vector128<sbyte> second)
    {
        var b = Sse2.LoadVector128(p);
        var mask = Vector128.Create((byte)0x0F);
        var lo = Ssse3.Shuffle(table, (b & mask).AsSByte());
        var hi = Ssse3.Shuffle(table, (Sse2.ShiftRightLogical(b.AsUInt16(), 4).AsByte() & mask).AsSByte());
        first = Sse2.UnpackLow(lo, hi);
        second = Sse2.UnpackHigh(lo, hi);
    }

    /// <summary><see cref="NibbleBytes"/> widened to floats, 8 per vector (vpmovsxbd). AVX2.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void NibbleBytes(byte* p, Vector128<sbyte> table, out Vector256<float> v0, out Vector256<float> v1, out Vector256<float> v2, out Vector256<float> v3)
    {
        NibbleBytes(p, table, out Vector128<sbyte> first, out Vector128<sbyte> second);
        v0 = Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(first));
        v1 = Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(first, 8)));
        v2 = Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(second));
        v3 = Vector256.ConvertToSingle(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(second, 8)));
    }

    /// <summary>
    /// The 4 words at p XOR-ed with <paramref name="flip"/>, words 0 and 1 in the low and high 8 lanes of
    /// <paramref name="w01"/>, words 2 and 3 in <paramref name="w23"/> (one 16-byte broadcast, one vpermd each). AVX-512.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Words4Wide(byte* p, uint flip, out Vector512<uint> w01, out Vector512<uint> w23)
    {
        var u = Avx512F.BroadcastVector128ToVector512((uint*)p) ^ Vector512.Create(flip);
        w01 = Avx512F.PermuteVar16x32(u, Vector512.Create(0u, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
        w23 = Avx512F.PermuteVar16x32(u, Vector512.Create(2u, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    }

    /// <summary>Lane i: nibble i % 8 of the lane's word as a signed 4-bit value (vpsllvd by 28 - 4 (i % 8), vpsrad 28). AVX-512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> SignedTopNibbles(Vector512<uint> w)
    {
        var top = Avx512F.ShiftLeftLogicalVariable(w, Vector512.Create(28u, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0));
        return Vector512.ShiftRightArithmetic(top.AsInt32(), 28);
    }

    /// <summary>Lane i: the broadcast word shifted left by 28 - 4i (nibble i at the top, the nibbles below it under it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> NibblesToTop(Vector256<uint> w)
    {
        // Without a variable shift (ARM64's portable path) the same as a multiply by 2^(28 - 4i), exact modulo 2^32.
        return Avx2.IsSupported
            ? Avx2.ShiftLeftLogicalVariable(w, Vector256.Create(28u, 24, 20, 16, 12, 8, 4, 0))
            : w * Vector256.Create(1u << 28, 1 << 24, 1 << 20, 1 << 16, 1 << 12, 1 << 8, 1 << 4, 1);
    }

    /// <summary>Lane i: nibble i of the broadcast word as a signed 4-bit value (q - 8 when the word was XOR-ed with 0x88888888).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> SignedTopNibbles(Vector256<uint> w) => Vector256.ShiftRightArithmetic(NibblesToTop(w).AsInt32(), 28);
}

/// <summary>Input rows per decoded vector: a compile-time count (1..4) for <see cref="QuantRowDot"/>.</summary>
internal interface ITokenCount
{
    static abstract int N { get; }
}

internal readonly struct OneToken : ITokenCount
{
    public static int N => 1;
}

internal readonly struct TwoTokens : ITokenCount
{
    public static int N => 2;
}

internal readonly struct ThreeTokens : ITokenCount
{
    public static int N => 3;
}

internal readonly struct FourTokens : ITokenCount
{
    public static int N => 4;
}

/// <summary>One packed row against the input rows (see the header).</summary>
internal static unsafe class QuantRowDot
{
    /// <summary>dst[c] = scales[s] * code(c) for a row of segments of <paramref name="segment"/> values (the exact values
    /// the dot products use, rounded to F32 once): DotTiled's decode.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Decode<TCodes>(byte* row, int cols, int segment, float* scales, byte* zeros, float* dst)
        where TCodes : ICodes
    {
        int full = cols & ~7;
        for (int c0 = 0, s = 0; c0 < full; c0 += segment, s++)
        {
            int c1 = Math.Min(full, c0 + segment);
            var zv = Vector256.Create(TCodes.HasZeros ? 8 - zeros[s] : 0);
            var sv = Vector256.Create(scales[s]);
            for (int c = c0; c < c1; c += 8)
                (TCodes.Eight(row, c, zv) * sv).Store(dst + c);
        }

        for (int c = full; c < cols; c++)
        {
            int s = c / segment;
            dst[c] = TCodes.One(row, c, TCodes.HasZeros ? 8 - zeros[s] : 0) * scales[s];
        }
    }

    /// <summary>
    /// y[j * yStride] (+)= sum_s scales[s] * sum_{c in segment s} code(c) * x[j * xStride + c] for j &lt; tokens; segments
    /// of <paramref name="segment"/> values (a multiple of 16, or all of Cols), zeros[s] the zero points where TCodes has them.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Row<TCodes>(byte* row, int cols, int segment, float* scales, byte* zeros, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
        where TCodes : ICodes
    {
        if (Wide && segment % 32 == 0 && cols % 32 == 0)
        {
            RowWide<TCodes>(row, cols, segment, scales, zeros, x, xStride, tokens, y, yStride, accumulate);
            return;
        }

        int j = 0;
        for (; j + 4 <= tokens; j += 4)
            Tokens<TCodes, FourTokens>(row, cols, segment, scales, zeros, x + (long)j * xStride, xStride, y + (long)j * yStride, yStride, accumulate);
        switch (tokens - j)
        {
            case 0:
                break;
            case 1:
                Tokens<TCodes, OneToken>(row, cols, segment, scales, zeros, x + (long)j * xStride, xStride, y + (long)j * yStride, yStride, accumulate);
                break;
            case 2:
                Tokens<TCodes, TwoTokens>(row, cols, segment, scales, zeros, x + (long)j * xStride, xStride, y + (long)j * yStride, yStride, accumulate);
                break;
            case 3:
                Tokens<TCodes, ThreeTokens>(row, cols, segment, scales, zeros, x + (long)j * xStride, xStride, y + (long)j * yStride, yStride, accumulate);
                break;
            default:
                throw new System.Diagnostics.UnreachableException($"QuantRowDot: {tokens - j} tokens left");
        }
    }

    /// <summary>
    /// Whether the 16-lane path runs: AVX-512 (F, BW) with Vector512 accelerated (the runtime reports it only where
    /// 512-bit instructions do not slow the core down). It takes segments and rows of whole 32-value units; others
    /// (Q8 / FP8 rows whose Cols is no multiple of 32, FP8 blocks of 16) take the 8-lane path.
    /// </summary>
    public static bool Wide => Vector512.IsHardwareAccelerated && Avx512F.IsSupported && Avx512BW.IsSupported;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowWide<TCodes>(byte* row, int cols, int segment, float* scales, byte* zeros, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
        where TCodes : ICodes
    {
        int j = 0;
        for (; j + 4 <= tokens; j += 4)
            TokensWide<TCodes, FourTokens>(row, cols, segment, scales, zeros, x + (long)j * xStride, xStride, y + (long)j * yStride, yStride, accumulate);
        switch (tokens - j)
        {
            case 0:
                break;
            case 1:
                OneTokenWide<TCodes>(row, cols, segment, scales, zeros, x + (long)j * xStride, y + (long)j * yStride, accumulate);
                break;
            case 2:
                TokensWide<TCodes, TwoTokens>(row, cols, segment, scales, zeros, x + (long)j * xStride, xStride, y + (long)j * yStride, yStride, accumulate);
                break;
            case 3:
                TokensWide<TCodes, ThreeTokens>(row, cols, segment, scales, zeros, x + (long)j * xStride, xStride, y + (long)j * yStride, yStride, accumulate);
                break;
            default:
                throw new System.Diagnostics.UnreachableException($"QuantRowDot: {tokens - j} tokens left");
        }
    }

    /// <summary>
    /// One input row on 16 lanes: two 32-value units in flight (four accumulators for the FMA latency). A method of its
    /// own: with the several-row loop in the same body the JIT stopped inlining the decoders and kept every accumulator
    /// on the stack (2.8 ms instead of 1 ms at 4096 x 4096).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void OneTokenWide<TCodes>(byte* row, int cols, int segment, float* scales, byte* zeros, float* x, float* y, bool accumulate)
        where TCodes : ICodes
    {
        if (segment < 128 && BitOperations.IsPow2(segment))
        {
            OneTokenWideSmallGroups<TCodes>(row, cols, BitOperations.Log2((uint)segment) - 5, scales, zeros, x, y, accumulate);
            return;
        }

        Vector512<float> r = default;
        for (int c0 = 0, s = 0; c0 < cols; c0 += segment, s++)
        {
            int c1 = c0 + segment;
            var zv = Vector512.Create(TCodes.HasZeros ? 8 - zeros[s] : 0);
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            int c = c0;
            for (; c + 64 <= c1; c += 64)
            {
                TCodes.Unit512(row, c, zv, out var v0, out var v1);
                TCodes.Unit512(row, c + 32, zv, out var v2, out var v3);
                a0 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x + c), a0);
                a1 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x + c + 16), a1);
                a2 = Vector512.FusedMultiplyAdd(v2, Vector512.Load(x + c + 32), a2);
                a3 = Vector512.FusedMultiplyAdd(v3, Vector512.Load(x + c + 48), a3);
            }

            if (c < c1)
            {
                TCodes.Unit512(row, c, zv, out var v0, out var v1);
                a0 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x + c), a0);
                a1 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x + c + 16), a1);
            }

            r = Vector512.FusedMultiplyAdd((a0 + a1) + (a2 + a3), Vector512.Create(scales[s]), r);
        }

        Put(y, Vector512.Sum(r), accumulate);
    }

    /// <summary>
    /// One input row on 16 lanes for segments of 32 or 64 values (int4 g32 / g64, MXFP4): each 32-value unit is scaled
    /// by its segment's scale as it is decoded, so the four accumulators run across segments. Summing a segment and then
    /// scaling it (the general path) chains one FMA per 32 values through the row's total, whose latency capped a core
    /// at ~4 GB/s of g32 codes; this costs two multiplies per unit instead. unitShift: log2(segment / 32).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void OneTokenWideSmallGroups<TCodes>(byte* row, int cols, int unitShift, float* scales, byte* zeros, float* x, float* y, bool accumulate)
        where TCodes : ICodes
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int c = 0;
        for (; c + 64 <= cols; c += 64)
        {
            int s0 = (c >> 5) >> unitShift, s1 = ((c >> 5) + 1) >> unitShift;
            TCodes.Unit512(row, c, Vector512.Create(TCodes.HasZeros ? 8 - zeros[s0] : 0), out var v0, out var v1);
            TCodes.Unit512(row, c + 32, Vector512.Create(TCodes.HasZeros ? 8 - zeros[s1] : 0), out var v2, out var v3);
            var k0 = Vector512.Create(scales[s0]);
            var k1 = Vector512.Create(scales[s1]);
            a0 = Vector512.FusedMultiplyAdd(v0 * k0, Vector512.Load(x + c), a0);
            a1 = Vector512.FusedMultiplyAdd(v1 * k0, Vector512.Load(x + c + 16), a1);
            a2 = Vector512.FusedMultiplyAdd(v2 * k1, Vector512.Load(x + c + 32), a2);
            a3 = Vector512.FusedMultiplyAdd(v3 * k1, Vector512.Load(x + c + 48), a3);
        }

        if (c < cols)
        {
            int s0 = (c >> 5) >> unitShift;
            TCodes.Unit512(row, c, Vector512.Create(TCodes.HasZeros ? 8 - zeros[s0] : 0), out var v0, out var v1);
            var k0 = Vector512.Create(scales[s0]);
            a0 = Vector512.FusedMultiplyAdd(v0 * k0, Vector512.Load(x + c), a0);
            a1 = Vector512.FusedMultiplyAdd(v1 * k0, Vector512.Load(x + c + 16), a1);
        }

        Put(y, Vector512.Sum((a0 + a1) + (a2 + a3)), accumulate);
    }

    /// <summary><see cref="Tokens{TCodes, TN}"/> on 16 lanes for 2 to 4 input rows: 32-value units as two vectors, two
    /// accumulators per input row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TokensWide<TCodes, TN>(byte* row, int cols, int segment, float* scales, byte* zeros, float* x, int xStride, float* y, int yStride, bool accumulate)
        where TCodes : ICodes
        where TN : ITokenCount
    {
        int nt = TN.N;
        float* x0 = x, x1 = x + xStride, x2 = x + (nt > 2 ? 2L * xStride : 0), x3 = x + (nt > 3 ? 3L * xStride : 0);
        Vector512<float> r0 = default, r1 = default, r2 = default, r3 = default;
        for (int c0 = 0, s = 0; c0 < cols; c0 += segment, s++)
        {
            int c1 = c0 + segment;
            var zv = Vector512.Create(TCodes.HasZeros ? 8 - zeros[s] : 0);
            Vector512<float> a0 = default, a1 = default, b0 = default, b1 = default, d0 = default, d1 = default, e0 = default, e1 = default;
            for (int c = c0; c < c1; c += 32)
            {
                TCodes.Unit512(row, c, zv, out var v0, out var v1);
                a0 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x0 + c), a0);
                a1 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x0 + c + 16), a1);
                b0 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x1 + c), b0);
                b1 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x1 + c + 16), b1);
                if (nt > 2)
                {
                    d0 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x2 + c), d0);
                    d1 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x2 + c + 16), d1);
                }

                if (nt > 3)
                {
                    e0 = Vector512.FusedMultiplyAdd(v0, Vector512.Load(x3 + c), e0);
                    e1 = Vector512.FusedMultiplyAdd(v1, Vector512.Load(x3 + c + 16), e1);
                }
            }

            var sv = Vector512.Create(scales[s]);
            r0 = Vector512.FusedMultiplyAdd(a0 + a1, sv, r0);
            r1 = Vector512.FusedMultiplyAdd(b0 + b1, sv, r1);
            if (nt > 2)
                r2 = Vector512.FusedMultiplyAdd(d0 + d1, sv, r2);
            if (nt > 3)
                r3 = Vector512.FusedMultiplyAdd(e0 + e1, sv, r3);
        }

        Put(y, Vector512.Sum(r0), accumulate);
        Put(y + yStride, Vector512.Sum(r1), accumulate);
        if (nt > 2)
            Put(y + 2L * yStride, Vector512.Sum(r2), accumulate);
        if (nt > 3)
            Put(y + 3L * yStride, Vector512.Sum(r3), accumulate);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tokens<TCodes, TN>(byte* row, int cols, int segment, float* scales, byte* zeros, float* x, int xStride, float* y, int yStride, bool accumulate)
        where TCodes : ICodes
        where TN : ITokenCount
    {
        int nt = TN.N;
        float* x0 = x, x1 = x + (nt > 1 ? xStride : 0), x2 = x + (nt > 2 ? 2L * xStride : 0), x3 = x + (nt > 3 ? 3L * xStride : 0);
        Vector256<float> r0 = default, r1 = default, r2 = default, r3 = default;
        // Segments are multiples of 16 wide except a last (or only) one: all values below `full` go through the vectors,
        // the < 8 after it (Q8 / FP8 rows of any Cols) through Tail, all inside the last segment.
        int full = cols & ~7;
        for (int c0 = 0, s = 0; c0 < full; c0 += segment, s++)
        {
            int c1 = Math.Min(full, c0 + segment);
            var zv = Vector256.Create(TCodes.HasZeros ? 8 - zeros[s] : 0);
            // Token j's partial sums: a (j = 0; four when alone), b, d, e.
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            Vector256<float> b0 = default, b1 = default, d0 = default, d1 = default, e0 = default, e1 = default;
            int c = c0;
            for (; c + 32 <= c1; c += 32)
            {
                TCodes.Unit(row, c, zv, out var v0, out var v1, out var v2, out var v3);
                if (nt == 1)
                {
                    a0 = Vector256.FusedMultiplyAdd(v0, Vector256.Load(x0 + c), a0);
                    a1 = Vector256.FusedMultiplyAdd(v1, Vector256.Load(x0 + c + 8), a1);
                    a2 = Vector256.FusedMultiplyAdd(v2, Vector256.Load(x0 + c + 16), a2);
                    a3 = Vector256.FusedMultiplyAdd(v3, Vector256.Load(x0 + c + 24), a3);
                    continue;
                }

                a0 = Vector256.FusedMultiplyAdd(v0, Vector256.Load(x0 + c), a0);
                a1 = Vector256.FusedMultiplyAdd(v1, Vector256.Load(x0 + c + 8), a1);
                b0 = Vector256.FusedMultiplyAdd(v0, Vector256.Load(x1 + c), b0);
                b1 = Vector256.FusedMultiplyAdd(v1, Vector256.Load(x1 + c + 8), b1);
                if (nt > 2)
                {
                    d0 = Vector256.FusedMultiplyAdd(v0, Vector256.Load(x2 + c), d0);
                    d1 = Vector256.FusedMultiplyAdd(v1, Vector256.Load(x2 + c + 8), d1);
                }

                if (nt > 3)
                {
                    e0 = Vector256.FusedMultiplyAdd(v0, Vector256.Load(x3 + c), e0);
                    e1 = Vector256.FusedMultiplyAdd(v1, Vector256.Load(x3 + c + 8), e1);
                }

                a0 = Vector256.FusedMultiplyAdd(v2, Vector256.Load(x0 + c + 16), a0);
                a1 = Vector256.FusedMultiplyAdd(v3, Vector256.Load(x0 + c + 24), a1);
                b0 = Vector256.FusedMultiplyAdd(v2, Vector256.Load(x1 + c + 16), b0);
                b1 = Vector256.FusedMultiplyAdd(v3, Vector256.Load(x1 + c + 24), b1);
                if (nt > 2)
                {
                    d0 = Vector256.FusedMultiplyAdd(v2, Vector256.Load(x2 + c + 16), d0);
                    d1 = Vector256.FusedMultiplyAdd(v3, Vector256.Load(x2 + c + 24), d1);
                }

                if (nt > 3)
                {
                    e0 = Vector256.FusedMultiplyAdd(v2, Vector256.Load(x3 + c + 16), e0);
                    e1 = Vector256.FusedMultiplyAdd(v3, Vector256.Load(x3 + c + 24), e1);
                }
            }

            for (; c < c1; c += 8)
            {
                var v = TCodes.Eight(row, c, zv);
                a0 = Vector256.FusedMultiplyAdd(v, Vector256.Load(x0 + c), a0);
                if (nt > 1)
                    b0 = Vector256.FusedMultiplyAdd(v, Vector256.Load(x1 + c), b0);
                if (nt > 2)
                    d0 = Vector256.FusedMultiplyAdd(v, Vector256.Load(x2 + c), d0);
                if (nt > 3)
                    e0 = Vector256.FusedMultiplyAdd(v, Vector256.Load(x3 + c), e0);
            }

            var sv = Vector256.Create(scales[s]);
            r0 = Vector256.FusedMultiplyAdd(nt == 1 ? (a0 + a1) + (a2 + a3) : a0 + a1, sv, r0);
            if (nt > 1)
                r1 = Vector256.FusedMultiplyAdd(b0 + b1, sv, r1);
            if (nt > 2)
                r2 = Vector256.FusedMultiplyAdd(d0 + d1, sv, r2);
            if (nt > 3)
                r3 = Vector256.FusedMultiplyAdd(e0 + e1, sv, r3);
        }

        // The row sums are reduced before Tail's call: a vector live across a call is spilled, and the JIT would spill
        // the accumulators inside the segment loop (a store and a reload on every segment's dependency chain).
        float y0 = Vector256.Sum(r0), y1 = nt > 1 ? Vector256.Sum(r1) : 0, y2 = nt > 2 ? Vector256.Sum(r2) : 0, y3 = nt > 3 ? Vector256.Sum(r3) : 0;
        if (full < cols)
        {
            int s = (cols - 1) / segment;
            var t = Tail<TCodes>(row, full, cols, TCodes.HasZeros ? 8 - zeros[s] : 0, x, xStride, nt) * scales[s];
            y0 += t.GetElement(0);
            y1 += t.GetElement(1);
            y2 += t.GetElement(2);
            y3 += t.GetElement(3);
        }

        Put(y, y0, accumulate);
        if (nt > 1)
            Put(y + yStride, y1, accumulate);
        if (nt > 2)
            Put(y + 2L * yStride, y2, accumulate);
        if (nt > 3)
            Put(y + 3L * yStride, y3, accumulate);
    }

    /// <summary>Token j's sum over columns from .. cols - 1 (fewer than 8) in element j, unscaled; out of the hot loop's way.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static Vector128<float> Tail<TCodes>(byte* row, int from, int cols, int zeroOffset, float* x, int xStride, int tokens)
        where TCodes : ICodes
    {
        var u = stackalloc float[4];
        for (int j = 0; j < 4; j++)
        {
            float sum = 0;
            if (j < tokens)
            {
                for (int c = from; c < cols; c++)
                    sum += TCodes.One(row, c, zeroOffset) * x[(long)j * xStride + c];
            }

            u[j] = sum;
        }

        return Vector128.Load(u);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Put(float* y, float v, bool accumulate)
    {
        if (accumulate)
            *y += v;
        else
            *y = v;
    }
}
