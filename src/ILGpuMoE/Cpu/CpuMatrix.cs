// cpu/rows: the one primitive every CPU matmul is built on: rows r0..r0+n-1 of a weight W [Rows, Cols] dotted with T
// input rows, y[j, r] (+)= sum_c x[j, c] * W[r0 + r, c]. The CPU backend's matmul, GEMV, router, experts and lm_head
// all call it on row blocks, one block per task (CpuThreads), so the threading lives in one place and each output is
// summed by one thread in one order: results do not depend on the thread count.
//
// Readers (one class per stored type, each reading its weights where they lie, never widened to a copy):
//   F32Rows   float rows.
//   Bf16Rows  BF16 rows widened in registers (a BF16 is the high half of an F32: zero-extend, shift left 16).
//   F16Rows   F16 rows converted a row at a time into the thread's scratch (TensorPrimitives.ConvertToSingle), then
//             as F32: no portable in-register F16 widening, and F16 MoE checkpoints are rare.
//   quantized readers on packed codes: CpuQuantRows.cs.
//
// Inner loops (F32/BF16), 8 float lanes (Vector256: AVX2 on x64, two AdvSimd registers on ARM64), a scalar tail for
// Cols % 8; sums are float with FMA, the lanes reduced at the end: fp32 within ~1e-6 relative of the double reference:
//   RowDot.F32 / Bf16   one weight row against up to four input rows (decode, T = 1: the weights stream once, at
//                       memory bandwidth; the FMAs are not the limit).
//   Tile4x4             four weight rows against four input rows (prefill): 16 accumulators, 4 weight and 1 input
//                       vector live, so each k step does 16 FMAs for 8 loads instead of RowDot's 4 for 5; compute-bound
//                       steps run at about twice RowDot's rate. 21 vector registers: fits x64 with AVX-512's 32 (the
//                       JIT's EVEX encoding); on 16-register machines the JIT spills a few accumulators to L1.
// One summation order for every path of a step of 4+ tokens: per (row, token) one vector accumulator over steps of 8
// columns, its lanes summed, then the scalar tail. Which path a row takes there depends on where its block starts (so
// on the thread count), which is why Tile4x4 and RowDot must agree bit for bit: they do. Steps of 1-3 tokens (decode)
// never tile, so RowDot runs four accumulators there (the latency of one FMA chain would cap a core's stream).
// Either way the logits are the same for any thread count.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace ILGpuMoE.Cpu;

/// <summary>
/// A weight matrix W [Rows, Cols] (stacked experts: [E*N, Cols], expert e's rows from e*N) that the CPU backend reads
/// row by row. Implementations are thread-safe: each call uses only its arguments and the calling thread's scratch.
/// </summary>
public abstract unsafe class CpuMatrix
{
    private protected CpuMatrix(int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        Rows = rows;
        Cols = cols;
    }

    public int Rows { get; }

    public int Cols { get; }

    /// <summary>"F32", "BF16", "Q4 g32", ...: the stored type (messages, the bench).</summary>
    public abstract string TypeName { get; }

    /// <summary>
    /// GPTQ act-order: column c of the packed rows is input column InputPermutation[c] ([Cols], or [E, Cols] for stacked
    /// experts). The caller gathers x through it (CpuKernels.Gather) before <see cref="Dot"/>; null when columns are in
    /// input order.
    /// </summary>
    public virtual int[]? InputPermutation => null;

    /// <summary>
    /// y[j * yStride + r] (+)= sum_c x[j * xStride + c] * W[row0 + r, c] for r &lt; count, j &lt; tokens. x holds Cols
    /// floats per row in the matrix's column order; y points at output row0's slot of token 0.
    /// </summary>
    internal abstract void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate);

    /// <summary>
    /// y [T, count] (+)= x [T, Cols] W[row0 .. row0 + count)^T on the calling thread (the span form of the kernel's
    /// primitive, for tests and engines; the runtime splits row blocks over threads with CpuKernels.MatMul).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Dot(int row0, int count, ReadOnlySpan<float> x, int tokens, Span<float> y, bool accumulate)
    {
        CheckRows(row0, count);
        if (tokens < 0 || x.Length < (long)tokens * Cols || y.Length < (long)tokens * count)
            throw new ArgumentException($"CpuMatrix.Dot: x needs T*Cols = {(long)tokens * Cols} floats (has {x.Length}), y T*count = {(long)tokens * count} (has {y.Length})");
        fixed (float* px = x, py = y)
            Dot(row0, count, px, Cols, tokens, py, count, accumulate);
    }

    /// <summary>A reader over float rows [rows, cols] (copied into pinned memory that lives as long as the reader).</summary>
    public static DenseRows FromFloat32(ReadOnlySpan<float> w, int rows, int cols) => Pinned<float>.Of(w, rows, cols, p => new F32Rows((float*)p, rows, cols));

    /// <summary>A reader over BF16 rows (raw 16-bit patterns), copied into pinned memory.</summary>
    public static DenseRows FromBf16(ReadOnlySpan<ushort> w, int rows, int cols) => Pinned<ushort>.Of(w, rows, cols, p => new Bf16Rows((ushort*)p, rows, cols));

    /// <summary>A reader over F16 rows, copied into pinned memory.</summary>
    public static DenseRows FromHalf(ReadOnlySpan<Half> w, int rows, int cols) => Pinned<Half>.Of(w, rows, cols, p => new F16Rows((Half*)p, rows, cols));

    // The pinned copy is kept alive by the reader that points into it.
    private sealed class Pinned<T>
        where T : unmanaged
    {
        public static DenseRows Of(ReadOnlySpan<T> w, int rows, int cols, Func<nint, DenseRows> make)
        {
            if (w.Length != (long)rows * cols)
                throw new ArgumentException($"CpuMatrix: {w.Length} values for [{rows}, {cols}]");
            var data = GC.AllocateUninitializedArray<T>(w.Length, pinned: true);
            w.CopyTo(data);
            var m = make(data.Length == 0 ? 0 : (nint)Unsafe.AsPointer(ref data[0]));
            m.Keep = data;
            return m;
        }
    }

    /// <summary>Throws unless rows [row0, row0 + count) exist.</summary>
    private protected void CheckRows(int row0, int count)
    {
        if (row0 < 0 || count < 0 || (long)row0 + count > Rows)
            throw new ArgumentOutOfRangeException(nameof(row0), $"rows [{row0}, {(long)row0 + count}) outside the matrix's {Rows}");
    }

    /// <summary>Stores or adds one output.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private protected static void Put(float* y, float v, bool accumulate)
    {
        if (accumulate)
            *y += v;
        else
            *y = v;
    }
}

/// <summary>Dense F32 / BF16 / F16 rows at a host address (CPU accelerator memory or a memory-mapped checkpoint).</summary>
public abstract unsafe class DenseRows : CpuMatrix
{
    private protected DenseRows(int rows, int cols)
        : base(rows, cols)
    {
    }

    /// <summary>Whatever owns the memory the rows point into (a pinned array, the model's mapped checkpoint), kept alive with the reader.</summary>
    internal object? Keep { get; set; }

    /// <summary>Reads rows of F32 (4-byte), BF16 or F16 (2-byte) elements at <paramref name="data"/>, row-major.</summary>
    internal static DenseRows Of(ILGpuMoE.Kernels.WeightType type, nint data, int rows, int cols) => type switch
    {
        ILGpuMoE.Kernels.WeightType.F32 => new F32Rows((float*)data, rows, cols),
        ILGpuMoE.Kernels.WeightType.BF16 => new Bf16Rows((ushort*)data, rows, cols),
        ILGpuMoE.Kernels.WeightType.F16 => new F16Rows((Half*)data, rows, cols),
        _ => throw new System.Diagnostics.UnreachableException($"DenseRows: weight type {type}"),
    };

    /// <summary>Row r's values widened to float into <paramref name="row"/> (Cols floats): embedding lookups, MLA's
    /// per-head absorption.</summary>
    public abstract void ReadRow(int r, Span<float> row);

    /// <summary>Every row, widened, into dst (Rows * Cols floats).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void ReadRowsInto(Span<float> dst)
    {
        for (int r = 0; r < Rows; r++)
            ReadRow(r, dst.Slice(r * Cols, Cols));
    }
}

/// <summary>Expert matrices of one shape at separate addresses read as one stack [E * N, Cols] (zero-copy experts).</summary>
internal sealed unsafe class StackedRows(DenseRows[] parts) : DenseRows(parts.Length * parts[0].Rows, parts[0].Cols)
{
    private readonly int _each = parts[0].Rows;

    public override string TypeName => parts[0].TypeName;

    public override void ReadRow(int r, Span<float> row) => parts[r / _each].ReadRow(r % _each, row);

    internal override void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        CheckRows(row0, count);
        // A block may span experts: cut it at their boundaries.
        while (count > 0)
        {
            int e = row0 / _each, r = row0 % _each, n = Math.Min(count, _each - r);
            parts[e].Dot(r, n, x, xStride, tokens, y, yStride, accumulate);
            row0 += n;
            count -= n;
            y += n;
        }
    }
}

internal sealed unsafe class F32Rows(float* w, int rows, int cols) : DenseRows(rows, cols)
{
    public override string TypeName => "F32";

    public override void ReadRow(int r, Span<float> row) => new ReadOnlySpan<float>(w + (long)r * Cols, Cols).CopyTo(row);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal override void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        CheckRows(row0, count);
        int r = 0;
        if (tokens >= 4)
        {
            for (; r + 4 <= count; r += 4)
                Tiles.Rows4<F32Load, float>(w + (long)(row0 + r) * Cols, Cols, x, xStride, tokens, y + r, yStride, accumulate);
        }

        for (; r < count; r++)
            RowDot.F32(w + (long)(row0 + r) * Cols, Cols, x, xStride, tokens, y + r, yStride, accumulate);
    }
}

internal sealed unsafe class Bf16Rows(ushort* w, int rows, int cols) : DenseRows(rows, cols)
{
    public override string TypeName => "BF16";

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void ReadRow(int r, Span<float> row)
    {
        var src = w + (long)r * Cols;
        for (int c = 0; c < Cols; c++)
            row[c] = BitConverter.Int32BitsToSingle(src[c] << 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal override void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        CheckRows(row0, count);
        int r = 0;
        if (tokens >= 4)
        {
            for (; r + 4 <= count; r += 4)
                Tiles.Rows4<Bf16Load, ushort>(w + (long)(row0 + r) * Cols, Cols, x, xStride, tokens, y + r, yStride, accumulate);
        }

        for (; r < count; r++)
            RowDot.Bf16(w + (long)(row0 + r) * Cols, Cols, x, xStride, tokens, y + r, yStride, accumulate);

    }
}

internal sealed unsafe class F16Rows(Half* w, int rows, int cols) : DenseRows(rows, cols)
{
    [ThreadStatic]
    private static float[]? scratch;

    public override string TypeName => "F16";

    public override void ReadRow(int r, Span<float> row) => TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(w + (long)r * Cols, Cols), row);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal override void Dot(int row0, int count, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        CheckRows(row0, count);
        if (scratch is null || scratch.Length < Cols)
            scratch = new float[Cols];
        fixed (float* s = scratch)
        {
            for (int r = 0; r < count; r++)
            {
                ReadRow(row0 + r, new Span<float>(s, Cols));
                RowDot.F32(s, Cols, x, xStride, tokens, y + r, yStride, accumulate);
            }
        }
    }
}

/// <summary>8 weights of one type widened to floats (the tile kernel's weight reader, specialised per type by the JIT).</summary>
internal interface IWeightLoad<TW>
    where TW : unmanaged
{
    static abstract unsafe Vector256<float> Load8(TW* p);

    static abstract unsafe float Load1(TW* p);
}

internal readonly struct F32Load : IWeightLoad<float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> Load8(float* p) => Vector256.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe float Load1(float* p) => *p;
}

internal readonly struct Bf16Load : IWeightLoad<ushort>
{
    // 8 BF16 zero-extended to 32 bits (vpmovzxwd), shifted into the high half: the F32 with the same bits.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector256<float> Load8(ushort* p) => Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load(p).ToVector256Unsafe()), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe float Load1(ushort* p) => BitConverter.Int32BitsToSingle(*p << 16);
}

/// <summary>Tile4x4 (see the header): four weight rows against the input rows, four at a time.</summary>
internal static unsafe class Tiles
{
    /// <summary>y[j * yStride + r] (+)= W[r] . x_j for r &lt; 4, j &lt; tokens (tokens % 4 left to RowDot-like single rows).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Rows4<TL, TW>(TW* w, int n, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
        where TL : struct, IWeightLoad<TW>
        where TW : unmanaged
    {
        TW* w0 = w, w1 = w + n, w2 = w + 2L * n, w3 = w + 3L * n;
        int j = 0;
        for (; j + 4 <= tokens; j += 4)
        {
            float* x0 = x + (long)j * xStride, x1 = x0 + xStride, x2 = x1 + xStride, x3 = x2 + xStride;
            Vector256<float> a00 = default, a01 = default, a02 = default, a03 = default;
            Vector256<float> a10 = default, a11 = default, a12 = default, a13 = default;
            Vector256<float> a20 = default, a21 = default, a22 = default, a23 = default;
            Vector256<float> a30 = default, a31 = default, a32 = default, a33 = default;
            int c = 0;
            for (; c + 8 <= n; c += 8)
            {
                var v0 = TL.Load8(w0 + c);
                var v1 = TL.Load8(w1 + c);
                var v2 = TL.Load8(w2 + c);
                var v3 = TL.Load8(w3 + c);
                var xv = Vector256.Load(x0 + c);
                a00 = Vector256.FusedMultiplyAdd(v0, xv, a00);
                a10 = Vector256.FusedMultiplyAdd(v1, xv, a10);
                a20 = Vector256.FusedMultiplyAdd(v2, xv, a20);
                a30 = Vector256.FusedMultiplyAdd(v3, xv, a30);
                xv = Vector256.Load(x1 + c);
                a01 = Vector256.FusedMultiplyAdd(v0, xv, a01);
                a11 = Vector256.FusedMultiplyAdd(v1, xv, a11);
                a21 = Vector256.FusedMultiplyAdd(v2, xv, a21);
                a31 = Vector256.FusedMultiplyAdd(v3, xv, a31);
                xv = Vector256.Load(x2 + c);
                a02 = Vector256.FusedMultiplyAdd(v0, xv, a02);
                a12 = Vector256.FusedMultiplyAdd(v1, xv, a12);
                a22 = Vector256.FusedMultiplyAdd(v2, xv, a22);
                a32 = Vector256.FusedMultiplyAdd(v3, xv, a32);
                xv = Vector256.Load(x3 + c);
                a03 = Vector256.FusedMultiplyAdd(v0, xv, a03);
                a13 = Vector256.FusedMultiplyAdd(v1, xv, a13);
                a23 = Vector256.FusedMultiplyAdd(v2, xv, a23);
                a33 = Vector256.FusedMultiplyAdd(v3, xv, a33);
            }

            Finish<TL, TW>(w0, w1, w2, w3, c, n, x0, a00, a10, a20, a30, y + (long)j * yStride, accumulate);
            Finish<TL, TW>(w0, w1, w2, w3, c, n, x1, a01, a11, a21, a31, y + (long)(j + 1) * yStride, accumulate);
            Finish<TL, TW>(w0, w1, w2, w3, c, n, x2, a02, a12, a22, a32, y + (long)(j + 2) * yStride, accumulate);
            Finish<TL, TW>(w0, w1, w2, w3, c, n, x3, a03, a13, a23, a33, y + (long)(j + 3) * yStride, accumulate);
        }

        // The last tokens % 4 rows: four weight rows against one input row, the same per-token order as above.
        for (; j < tokens; j++)
        {
            float* x0 = x + (long)j * xStride;
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            int c = 0;
            for (; c + 8 <= n; c += 8)
            {
                var xv = Vector256.Load(x0 + c);
                a0 = Vector256.FusedMultiplyAdd(TL.Load8(w0 + c), xv, a0);
                a1 = Vector256.FusedMultiplyAdd(TL.Load8(w1 + c), xv, a1);
                a2 = Vector256.FusedMultiplyAdd(TL.Load8(w2 + c), xv, a2);
                a3 = Vector256.FusedMultiplyAdd(TL.Load8(w3 + c), xv, a3);
            }

            Finish<TL, TW>(w0, w1, w2, w3, c, n, x0, a0, a1, a2, a3, y + (long)j * yStride, accumulate);
        }
    }

    // Lane sums plus the scalar tail c..n of one input row against the four weight rows, stored to y[0..3].
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish<TL, TW>(TW* w0, TW* w1, TW* w2, TW* w3, int c, int n, float* x, Vector256<float> a0, Vector256<float> a1,
        Vector256<float> a2, Vector256<float> a3, float* y, bool accumulate)
        where TL : struct, IWeightLoad<TW>
        where TW : unmanaged
    {
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; c < n; c++)
        {
            float xc = x[c];
            s0 += TL.Load1(w0 + c) * xc;
            s1 += TL.Load1(w1 + c) * xc;
            s2 += TL.Load1(w2 + c) * xc;
            s3 += TL.Load1(w3 + c) * xc;
        }

        if (accumulate)
        {
            y[0] += s0;
            y[1] += s1;
            y[2] += s2;
            y[3] += s3;
        }
        else
        {
            y[0] = s0;
            y[1] = s1;
            y[2] = s2;
            y[3] = s3;
        }
    }
}

/// <summary>One weight row against up to four input rows at a time (see the header).</summary>
internal static unsafe class RowDot
{
    /// <summary>y[j * yStride] (+)= w . x_j for j &lt; tokens, w F32 of n values.</summary>
    public static void F32(float* w, int n, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate) =>
        Row<F32Load, float>(w, n, x, xStride, tokens, y, yStride, accumulate);

    /// <summary>The same for a BF16 row, widened in registers.</summary>
    public static void Bf16(ushort* w, int n, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate) =>
        Row<Bf16Load, ushort>(w, n, x, xStride, tokens, y, yStride, accumulate);

    /// <summary>One weight row of any type TL reads against the tokens, four at a time (the header's order).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Row<TL, TW>(TW* w, int n, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
        where TL : struct, IWeightLoad<TW>
        where TW : unmanaged
    {
        int j = 0;
        for (; j + 4 <= tokens; j += 4)
        {
            float* x0 = x + (long)j * xStride, x1 = x0 + xStride, x2 = x1 + xStride, x3 = x2 + xStride;
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            int c = 0;
            for (; c + 8 <= n; c += 8)
            {
                var wv = TL.Load8(w + c);
                a0 = Vector256.FusedMultiplyAdd(wv, Vector256.Load(x0 + c), a0);
                a1 = Vector256.FusedMultiplyAdd(wv, Vector256.Load(x1 + c), a1);
                a2 = Vector256.FusedMultiplyAdd(wv, Vector256.Load(x2 + c), a2);
                a3 = Vector256.FusedMultiplyAdd(wv, Vector256.Load(x3 + c), a3);
            }

            float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
            for (; c < n; c++)
            {
                float wc = TL.Load1(w + c);
                s0 += wc * x0[c];
                s1 += wc * x1[c];
                s2 += wc * x2[c];
                s3 += wc * x3[c];
            }

            Store4(y + (long)j * yStride, yStride, s0, s1, s2, s3, accumulate);
        }

        for (; j < tokens; j++)
        {
            float* x0 = x + (long)j * xStride;
            Vector256<float> a0 = default;
            int c = 0;
            if (tokens < 4)
            {
                // Decode (fewer than 4 tokens: no tile shares this order): four independent FMA chains, so the loop runs
                // at the load rate, not at one FMA latency per 8 floats.
                Vector256<float> a1 = default, a2 = default, a3 = default;
                for (; c + 32 <= n; c += 32)
                {
                    a0 = Vector256.FusedMultiplyAdd(TL.Load8(w + c), Vector256.Load(x0 + c), a0);
                    a1 = Vector256.FusedMultiplyAdd(TL.Load8(w + c + 8), Vector256.Load(x0 + c + 8), a1);
                    a2 = Vector256.FusedMultiplyAdd(TL.Load8(w + c + 16), Vector256.Load(x0 + c + 16), a2);
                    a3 = Vector256.FusedMultiplyAdd(TL.Load8(w + c + 24), Vector256.Load(x0 + c + 24), a3);
                }

                a0 = (a0 + a1) + (a2 + a3);
            }

            for (; c + 8 <= n; c += 8)
                a0 = Vector256.FusedMultiplyAdd(TL.Load8(w + c), Vector256.Load(x0 + c), a0);
            float s = Vector256.Sum(a0);
            for (; c < n; c++)
                s += TL.Load1(w + c) * x0[c];
            Store(y + (long)j * yStride, s, accumulate);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* y, float v, bool accumulate)
    {
        if (accumulate)
            *y += v;
        else
            *y = v;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store4(float* y, int stride, float s0, float s1, float s2, float s3, bool accumulate)
    {
        Store(y, s0, accumulate);
        Store(y + stride, s1, accumulate);
        Store(y + 2L * stride, s2, accumulate);
        Store(y + 3L * stride, s3, accumulate);
    }
}
