// What the schemes' quantizers (F32 -> our packed layouts, Schemes/*.cs: round to nearest even, scales chosen from
// each row / group / block's max |w|) and the checkpoint readers share: shape checks, the parallel row loop, E4M3 encoding.
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

public static class Quantizer
{
    /// <summary>The usual Q4 group sizes (the --quant schemes). The kernels take any multiple of 32 dividing K
    /// (G = K: one group per row, GPTQ's group_size -1).</summary>
    public static readonly int[] Q4GroupSizes = [32, 64, 128];

    /// <summary>FP8 checkpoints' scale block.</summary>
    public const int Fp8Block = 128;

    // Runs body(w, i) for i in [0, count) in parallel; each i owns its rows of w and the outputs derived from them, so
    // the result does not depend on the schedule. A span cannot enter a lambda: the weights are pinned and re-wrapped
    // (the call returns only when every task has finished). The first failure is rethrown as itself, not wrapped.
    internal delegate void RowBody(ReadOnlySpan<float> w, int index);

    internal static unsafe void ForRows(ReadOnlySpan<float> w, int count, RowBody body)
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

    internal static float MaxAbs(ReadOnlySpan<float> a)
    {
        float m = 0f;
        foreach (float v in a)
            m = Math.Max(m, Math.Abs(v));
        return m;
    }
}
