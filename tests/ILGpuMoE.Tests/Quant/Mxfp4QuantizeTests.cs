using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Quant;

/// <summary>--quant mxfp4's conversion (src/ILGpuMoE/Quant/Schemes/Mxfp4.cs), worked by hand, read back through the
/// Hub layout's reference dequantization (RefMxfp4).</summary>
public class Mxfp4QuantizeTests
{
    [Test]
    public void OneBlockByHand()
    {
        // max |w| = 12: floor(log2 12) = 3, shared exponent 3 - 2 = 1 (scale byte 128, factor 2). w / 2, rounded to E2M1
        // {0, .5, 1, 1.5, 2, 3, 4, 6}: 0.25 -> 0.125 -> 0; 0.3 -> 0.15 -> 0; -1.1 -> -0.55 -> -0.5; 3 -> 1.5; 6 -> 3;
        // 7 -> 3.5, halfway between 3 (code 5) and 4 (code 6): the even code, 4; 12 -> 6; 20 would saturate (not here).
        // Read back (x 2): 0, 0, -1, 3, 6, 8, 12; the other 25 values are 0.
        var w = new float[32];
        float[] head = [0.25f, 0.3f, -1.1f, 3f, 6f, 7f, 12f];
        head.CopyTo(w, 0);
        var m = Mxfp4Matrix.Quantize(w, 1, 32);
        Assert.That(m.Scales, Is.EqualTo(new byte[] { 128 }));
        var back = RefMxfp4.Dequantize(System.Runtime.InteropServices.MemoryMarshal.AsBytes(m.Words.AsSpan()), m.Scales, 1, 1);
        Assert.That(back.AsSpan(0, 7).ToArray(), Is.EqualTo(new[] { 0f, 0f, -1f, 3f, 6f, 8f, 12f }));
        Assert.That(back.Skip(7).All(v => v == 0f));
    }

    [Test]
    public void SeededRowsStayWithinHalfAStepAndZeroBlocksStayZero()
    {
        const int rows = 3, cols = 96;
        var w = Data.Uniform(77, rows * cols, 5f);
        Array.Clear(w, cols, 32); // row 1's first block all zero
        var m = Mxfp4Matrix.Quantize(w, rows, cols);
        var back = RefMxfp4.Dequantize(System.Runtime.InteropServices.MemoryMarshal.AsBytes(m.Words.AsSpan()), m.Scales, rows, cols / 32);
        for (int b = 0; b < rows * cols / 32; b++)
        {
            var block = w.AsSpan(b * 32, 32);
            float max = block.ToArray().Max(Math.Abs);
            // 2^shared <= max / 4 < 2^(shared + 1): a rounding error is at most half the widest step (2 x 2^shared), and values
            // in (6, 8) x 2^shared saturate at 6 x 2^shared: at most 2 x 2^shared <= max / 2 in all.
            for (int i = 0; i < 32; i++)
                Assert.That(Math.Abs(back[b * 32 + i] - block[i]), Is.LessThanOrEqualTo(max / 2 + 1e-6f), $"block {b} value {i}");
        }

        Assert.That(back.AsSpan(cols, 32).ToArray().All(v => v == 0f), "a zero block reads back zero");
        Assert.Throws<ArgumentException>(() => Mxfp4Matrix.Quantize(new float[40], 1, 40), "K not whole blocks");
    }
}
