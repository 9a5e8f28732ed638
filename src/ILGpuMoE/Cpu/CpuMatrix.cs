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
// Inner loop (F32/BF16): up to four input rows at a time share each loaded weight vector (4 FMAs per weight load);
// 8 float lanes (Vector256: AVX2 on x64, two AdvSimd registers on ARM64), a scalar tail for Cols % 8. Sums are float
// with FMA, widened only for the reduction of the lane sums: fp32 within ~1e-6 relative of the double reference at
// the fixtures' sizes.
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
        for (int r = 0; r < count; r++)
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
        for (int r = 0; r < count; r++)
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

/// <summary>One weight row against up to four input rows at a time (see the header).</summary>
internal static unsafe class RowDot
{
    /// <summary>y[j * yStride] (+)= w . x_j for j &lt; tokens, w F32 of n values.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void F32(float* w, int n, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        int j = 0;
        for (; j + 4 <= tokens; j += 4)
        {
            float* x0 = x + (long)j * xStride, x1 = x0 + xStride, x2 = x1 + xStride, x3 = x2 + xStride;
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            int c = 0;
            for (; c + 8 <= n; c += 8)
            {
                var wv = Vector256.Load(w + c);
                a0 = Vector256.FusedMultiplyAdd(wv, Vector256.Load(x0 + c), a0);
                a1 = Vector256.FusedMultiplyAdd(wv, Vector256.Load(x1 + c), a1);
                a2 = Vector256.FusedMultiplyAdd(wv, Vector256.Load(x2 + c), a2);
                a3 = Vector256.FusedMultiplyAdd(wv, Vector256.Load(x3 + c), a3);
            }

            float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
            for (; c < n; c++)
            {
                float wc = w[c];
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
            Vector256<float> a0 = default, a1 = default;
            int c = 0;
            for (; c + 16 <= n; c += 16)
            {
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(w + c), Vector256.Load(x0 + c), a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(w + c + 8), Vector256.Load(x0 + c + 8), a1);
            }

            for (; c + 8 <= n; c += 8)
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(w + c), Vector256.Load(x0 + c), a0);
            float s = Vector256.Sum(a0 + a1);
            for (; c < n; c++)
                s += w[c] * x0[c];
            Store(y + (long)j * yStride, s, accumulate);
        }
    }

    /// <summary>The same for a BF16 row: 16 values per step, widened in registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Bf16(ushort* w, int n, float* x, int xStride, int tokens, float* y, int yStride, bool accumulate)
    {
        int j = 0;
        for (; j + 4 <= tokens; j += 4)
        {
            float* x0 = x + (long)j * xStride, x1 = x0 + xStride, x2 = x1 + xStride, x3 = x2 + xStride;
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            int c = 0;
            for (; c + 16 <= n; c += 16)
            {
                var (lo, hi) = Widen(Vector256.Load(w + c));
                a0 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x0 + c), a0);
                a1 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x1 + c), a1);
                a2 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x2 + c), a2);
                a3 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x3 + c), a3);
                a0 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x0 + c + 8), a0);
                a1 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x1 + c + 8), a1);
                a2 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x2 + c + 8), a2);
                a3 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x3 + c + 8), a3);
            }

            float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
            for (; c < n; c++)
            {
                float wc = BitConverter.Int32BitsToSingle(w[c] << 16);
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
            Vector256<float> a0 = default, a1 = default;
            int c = 0;
            for (; c + 16 <= n; c += 16)
            {
                var (lo, hi) = Widen(Vector256.Load(w + c));
                a0 = Vector256.FusedMultiplyAdd(lo, Vector256.Load(x0 + c), a0);
                a1 = Vector256.FusedMultiplyAdd(hi, Vector256.Load(x0 + c + 8), a1);
            }

            float s = Vector256.Sum(a0 + a1);
            for (; c < n; c++)
                s += BitConverter.Int32BitsToSingle(w[c] << 16) * x0[c];
            Store(y + (long)j * yStride, s, accumulate);
        }
    }

    /// <summary>16 BF16 values as two float vectors (values 0-7, 8-15).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector256<float> Lo, Vector256<float> Hi) Widen(Vector256<ushort> v)
    {
        var lo = Vector256.ShiftLeft(Vector256.WidenLower(v), 16).AsSingle();
        var hi = Vector256.ShiftLeft(Vector256.WidenUpper(v), 16).AsSingle();
        return (lo, hi);
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
