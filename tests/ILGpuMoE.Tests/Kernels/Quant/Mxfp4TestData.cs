using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Quant;

/// <summary>An MXFP4 matrix as a checkpoint stores it: blocks [Rows, G, 16] and E8M0 scales [Rows, G] bytes.</summary>
internal sealed record Mxfp4Matrix(byte[] Blocks, byte[] Scales, int Rows, int Cols)
{
    public int Groups => Cols / Mxfp4.BlockValues;

    /// <summary>The oracle's values (RefMxfp4.Dequantize), [Rows, Cols].</summary>
    public float[] Dequant() => RefMxfp4.Dequantize(Blocks, Scales, Rows, Groups);

    public Mxfp4Device Upload() => new(this);
}

/// <summary>The bytes on the device, as the runtime uploads them (blocks reinterpreted as words, no decoding).</summary>
internal sealed class Mxfp4Device : IDisposable
{
    private readonly MemoryBuffer1D<uint, Stride1D.Dense> words;
    private readonly MemoryBuffer1D<byte, Stride1D.Dense> scales;

    public Mxfp4Device(Mxfp4Matrix m)
    {
        words = TestDevice.Upload(Mxfp4Host.Words(m.Blocks, m.Rows, m.Groups).ToArray());
        scales = TestDevice.Upload(m.Scales);
        View = new Mxfp4Weights(words.View, scales.View, m.Rows, m.Cols);
    }

    public Mxfp4Weights View { get; }

    public void Dispose()
    {
        words.Dispose();
        scales.Dispose();
    }
}

internal static class Mxfp4TestData
{
    private static readonly double[] Magnitudes = [0, 0.5, 1, 1.5, 2, 3, 4, 6];

    /// <summary>Random codes (every nibble 0..15) and scales uniform in [center - spread, center + spread].</summary>
    public static Mxfp4Matrix Random(int seed, int rows, int cols, int center = 127, int spread = 8)
    {
        var rng = new Random(seed);
        var blocks = new byte[rows * cols / 2];
        rng.NextBytes(blocks);
        var scales = Enumerable.Range(0, rows * cols / 32).Select(_ => (byte)rng.Next(center - spread, center + spread + 1)).ToArray();
        return new Mxfp4Matrix(blocks, scales, rows, cols);
    }

    /// <summary>
    /// Rounds values [rows, cols] to MXFP4 (test data only): per block the smallest power-of-two scale with
    /// max |v| &lt;= 6 * scale, each value to its nearest code. Scales vary with each block's range.
    /// </summary>
    public static Mxfp4Matrix Quantize(float[] values, int rows, int cols)
    {
        int groups = cols / 32;
        var blocks = new byte[rows * cols / 2];
        var scales = new byte[rows * groups];
        for (int b = 0; b < rows * groups; b++)
        {
            double amax = 0;
            for (int i = 0; i < 32; i++)
                amax = Math.Max(amax, Math.Abs(values[b * 32 + i]));
            int e = amax == 0 ? 0 : (int)Math.Ceiling(Math.Log2(amax / 6));
            int s = Math.Clamp(127 + e, 1, 254);
            scales[b] = (byte)s;
            double scale = Math.ScaleB(1.0, s - 127);
            for (int i = 0; i < 32; i++)
            {
                double q = values[b * 32 + i] / scale;
                int best = 0;
                for (int c = 1; c < 8; c++)
                {
                    if (Math.Abs(Math.Abs(q) - Magnitudes[c]) < Math.Abs(Math.Abs(q) - Magnitudes[best]))
                        best = c;
                }

                int code = best | (q < 0 ? 8 : 0);
                blocks[b * 16 + i / 2] |= (byte)(i % 2 == 0 ? code : code << 4);
            }
        }

        return new Mxfp4Matrix(blocks, scales, rows, cols);
    }

    /// <summary>Experts stacked along rows: [E*N, Cols] (the checkpoint's [E, N, G, 16] is this already).</summary>
    public static Mxfp4Matrix Stack(IReadOnlyList<Mxfp4Matrix> parts) =>
        new(parts.SelectMany(p => p.Blocks).ToArray(), parts.SelectMany(p => p.Scales).ToArray(), parts.Sum(p => p.Rows), parts[0].Cols);

    /// <summary>Stacked expert values split back into [E][N*Cols].</summary>
    public static float[][] Split(float[] stacked, int experts)
    {
        int n = stacked.Length / experts;
        return Enumerable.Range(0, experts).Select(i => stacked.AsSpan(i * n, n).ToArray()).ToArray();
    }
}
