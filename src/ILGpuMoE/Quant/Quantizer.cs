// F32 -> our packed layouts (round to nearest even; scales chosen from each row / group / block's max |w|).
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

public static class Quantizer
{
    /// <summary>The usual Q4 group sizes (the --quant schemes). The kernels take any multiple of 32 dividing K
    /// (G = K: one group per row, GPTQ's group_size -1).</summary>
    public static readonly int[] Q4GroupSizes = [32, 64, 128];

    /// <summary>FP8 checkpoints' scale block.</summary>
    public const int Fp8Block = 128;

    /// <summary>int8 symmetric per output row: scale = max|w| / 127, q = round(w / scale).</summary>
    public static QuantizedMatrix QuantizeQ8(ReadOnlySpan<float> w, int rows, int cols)
    {
        CheckShape("QuantizeQ8", w, rows, cols);
        int rowWords = QuantLayout.ByteRowWords(cols);
        var words = new uint[(long)rows * rowWords];
        var scales = new float[rows];
        ForRows(w, rows, (all, n) =>
        {
            var row = all.Slice(n * cols, cols);
            float amax = MaxAbs(row);
            float scale = amax / 127f;
            scales[n] = scale;
            var dst = words.AsSpan((int)((long)n * rowWords), rowWords);
            for (int k = 0; k < cols; k++)
            {
                int q = scale == 0f ? 0 : (int)Math.Clamp(Math.Round(row[k] / (double)scale, MidpointRounding.ToEven), -127, 127);
                dst[k / 4] |= (uint)(byte)(sbyte)q << (8 * (k % 4));
            }
        });
        return new QuantizedMatrix(QuantScheme.Q8, rows, cols, words, scales32: scales);
    }

    /// <summary>
    /// int4 per group of G along K with F16 scales. Symmetric: scale = max|w| / 7, q in [-8, 7] stored as q + 8.
    /// Asymmetric: the group's [min, max] (widened to include 0) maps onto [0, 15], z = round(-min / scale).
    /// The scale is rounded to f16 before q is computed, so the rounding of q sees the scale the kernel uses.
    /// </summary>
    public static QuantizedMatrix QuantizeQ4(ReadOnlySpan<float> w, int rows, int cols, int groupSize, bool symmetric)
    {
        CheckShape("QuantizeQ4", w, rows, cols);
        CheckGroup("QuantizeQ4", cols, groupSize);
        int groups = cols / groupSize, rowWords = QuantLayout.NibbleRowWords(cols);
        var words = new uint[(long)rows * rowWords];
        var scales = new ushort[(long)rows * groups];
        var zeros = symmetric ? [] : new byte[(long)rows * groups];
        ForRows(w, rows, (all, n) =>
        {
            for (int g = 0; g < groups; g++)
            {
                var grp = all.Slice(n * cols + g * groupSize, groupSize);
                float lo = 0f, hi = 0f;
                foreach (float v in grp)
                {
                    lo = Math.Min(lo, v);
                    hi = Math.Max(hi, v);
                }

                float scale = symmetric ? Math.Max(-lo, hi) / 7f : (hi - lo) / 15f;
                Half h = (Half)scale;
                if (Half.IsInfinity(h))
                    throw new ArgumentException($"QuantizeQ4: row {n} group {g} needs scale {scale}, beyond f16");
                float s = (float)h;
                int z = symmetric ? 8 : (s == 0f ? 0 : (int)Math.Clamp(Math.Round(-lo / (double)s, MidpointRounding.ToEven), 0, 15));
                long gi = (long)n * groups + g;
                scales[gi] = BitConverter.HalfToUInt16Bits(h);
                if (!symmetric)
                    zeros[gi] = (byte)z;
                var dst = words.AsSpan((int)((long)n * rowWords), rowWords);
                for (int i = 0; i < groupSize; i++)
                {
                    int k = g * groupSize + i;
                    int q = s == 0f ? z : (int)Math.Clamp(Math.Round(grp[i] / (double)s, MidpointRounding.ToEven) + z, 0, 15);
                    dst[k / 8] |= (uint)q << (4 * (k % 8));
                }
            }
        });
        return new QuantizedMatrix(QuantScheme.Q4, rows, cols, words, scales16: scales, zeros: zeros, groupSize: groupSize);
    }

    /// <summary>FP8 E4M3 with one F32 scale per blockN x blockK block (scale = max|w| / 448; saturating RNE encode).</summary>
    public static QuantizedMatrix QuantizeFp8(ReadOnlySpan<float> w, int rows, int cols, int blockN = Fp8Block, int blockK = Fp8Block)
    {
        CheckShape("QuantizeFp8", w, rows, cols);
        CheckFp8Block("QuantizeFp8", rows, cols, blockN, blockK);
        int sr = (rows + blockN - 1) / blockN, sc = (cols + blockK - 1) / blockK;
        var scales = new float[sr * sc];
        // Pass 1, one task per block row (its scales are its own): max |w| per block.
        ForRows(w, sr, (all, bn) =>
        {
            for (int n = bn * blockN; n < Math.Min(rows, (bn + 1) * blockN); n++)
            {
                var row = all.Slice(n * cols, cols);
                for (int kb = 0; kb < sc; kb++)
                {
                    int k0 = kb * blockK;
                    float m = MaxAbs(row.Slice(k0, Math.Min(cols, k0 + blockK) - k0));
                    scales[bn * sc + kb] = Math.Max(scales[bn * sc + kb], m);
                }
            }

            for (int kb = 0; kb < sc; kb++)
                scales[bn * sc + kb] /= Fp8.MaxE4M3;
        });

        int rowWords = QuantLayout.ByteRowWords(cols);
        var words = new uint[(long)rows * rowWords];
        ForRows(w, rows, (all, n) =>
        {
            var row = all.Slice(n * cols, cols);
            var dst = words.AsSpan((int)((long)n * rowWords), rowWords);
            for (int k = 0; k < cols; k++)
            {
                float s = scales[(n / blockN) * sc + k / blockK];
                byte code = s == 0f ? (byte)0 : EncodeE4M3(row[k] / s);
                dst[k / 4] |= (uint)code << (8 * (k % 4));
            }
        });
        return new QuantizedMatrix(QuantScheme.Fp8, rows, cols, words, scales32: scales, blockN: blockN, blockK: blockK);
    }

    // Runs body(w, i) for i in [0, count) in parallel; each i owns its rows of w and the outputs derived from them, so
    // the result does not depend on the schedule. A span cannot enter a lambda: the weights are pinned and re-wrapped
    // (the call returns only when every task has finished). The first failure is rethrown as itself, not wrapped.
    private delegate void RowBody(ReadOnlySpan<float> w, int index);

    private static unsafe void ForRows(ReadOnlySpan<float> w, int count, RowBody body)
    {
        fixed (float* p = w)
        {
            nint at = (nint)p;
            int length = w.Length;
            try
            {
                Parallel.For(0, count, i => body(new ReadOnlySpan<float>((float*)at, length), i));
            }
            catch (AggregateException e) when (e.InnerExceptions.Count > 0)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
            }
        }
    }

    /// <summary>FP8 E4M3 with one scale for the whole matrix.</summary>
    public static QuantizedMatrix QuantizeFp8PerTensor(ReadOnlySpan<float> w, int rows, int cols) => QuantizeFp8(w, rows, cols, rows, cols);

    /// <summary>Nearest E4M3FN code (ties to even), saturating at +-448; NaN -> 0x7F.</summary>
    public static byte EncodeE4M3(float v)
    {
        if (float.IsNaN(v))
            return 0x7F;
        int sign = float.IsNegative(v) ? 0x80 : 0;
        double a = Math.Abs((double)v);
        if (a >= Fp8.MaxE4M3)
            return (byte)(sign | 126);
        // Codes 0..126 are the finite magnitudes in increasing order, and code = 8 * (e + 7) + m for normals, m for
        // subnormals: spacing 2^-9 below 2^-6 (subnormals and the first binade alike), 2^(e-3) in binade e. So the
        // code is the value's position on its binade's grid, rounded to nearest even (the parity of the code is the
        // parity of m); a round-up to m = 8 carries into the next binade's m = 0, which is the next code. Every step
        // is exact in double (a is a float), so this equals a search over the 127 values (see the tests).
        int code;
        if (a < 1.0 / 64)
        {
            code = (int)Math.Round(a * 512, MidpointRounding.ToEven);
        }
        else
        {
            int e = Math.ILogB(a); // floor(log2 a), exact for a double
            code = 8 * (e + 7) + (int)Math.Round(Math.ScaleB(a, 3 - e) - 8, MidpointRounding.ToEven);
        }

        return (byte)(sign | Math.Min(code, 126));
    }

    internal static void CheckShape(string where, ReadOnlySpan<float> w, int rows, int cols)
    {
        if (rows < 1 || cols < 1)
            throw new ArgumentException($"{where}: shape [{rows}, {cols}] must be positive");
        if (w.Length != (long)rows * cols)
            throw new ArgumentException($"{where}: {w.Length} weights for shape [{rows}, {cols}]");
    }

    internal static void CheckGroup(string where, int cols, int groupSize)
    {
        if (groupSize < 32 || groupSize % 32 != 0)
            throw new ArgumentException($"{where}: group size {groupSize} is not supported (a multiple of 32: 32, 64, 128, ..., or the whole input dim)");
        if (cols % groupSize != 0)
            throw new ArgumentException($"{where}: input dim K = {cols} is not a multiple of the group size G = {groupSize}");
    }

    internal static void CheckFp8Block(string where, int rows, int cols, int blockN, int blockK)
    {
        if (blockN < 1 || blockK < 1)
            throw new ArgumentException($"{where}: scale block [{blockN}, {blockK}] must be positive");
        if (blockK % QuantLayout.UnitBytes != 0 && blockK < cols)
            throw new ArgumentException($"{where}: scale block width {blockK} must be a multiple of 16 (or cover all {cols} columns)");
    }

    private static float MaxAbs(ReadOnlySpan<float> a)
    {
        float m = 0f;
        foreach (float v in a)
            m = Math.Max(m, Math.Abs(v));
        return m;
    }
}
