using ILGpuMoE.Quant;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Quant;

/// <summary>
/// Every quantizer on small rows whose codes, scales and zero points are worked out by hand (in the comments), with
/// values placed on rounding ties and next to them: rounding down, truncating, or sending ties away from zero changes
/// a code and fails here, where an error bound would still pass. The packed words are then dequantized by the
/// reference (RefQuant) and by the device reader, which must give code * scale exactly.
/// </summary>
public class QuantizerHandWorkedTests
{
    private static float[] Row(int cols, params (int At, float Value)[] set)
    {
        var w = new float[cols];
        foreach (var (at, v) in set)
            w[at] = v;
        return w;
    }

    private static void AssertWords(uint[] want, ReadOnlySpan<uint> got, string what)
    {
        Assert.That(got.Length, Is.EqualTo(want.Length), $"{what}: word count");
        for (int i = 0; i < want.Length; i++)
            Assert.That(got[i], Is.EqualTo(want[i]), $"{what}: word {i} is 0x{got[i]:X8}, hand-worked 0x{want[i]:X8}");
    }

    private static void AssertDequant(QuantizedMatrix m, float[] want, string what)
    {
        Check.BitEqual(want, QuantTestData.RefDequant(m), $"{what}: reference dequant");
        Check.BitEqual(want, QuantTestData.DeviceDequant(m), $"{what}: device reader");
    }

    [Test]
    public void Int8CodesAndScalesByHand()
    {
        // Row 0: max |w| = 63.5, scale = 63.5 / 127 = 0.5 exactly; w / 0.5 = [127, 2.5, 3.5, -2.5, -3.5, 0.4, 0.6, -1.48]
        //   round half to even -> q = [127, 2, 4, -2, -4, 0, 1, -1]   (floor: 2, 3, -3, -4, 0, 0, -2; away from zero: 3, 4, -3, -4)
        //   bytes (two's complement) 7F 02 04 FE | FC 00 01 FF -> words 0xFE04027F, 0xFF0100FC; K = 8 pads the row to one
        //   16-byte unit (4 words), the last two 0.
        // Row 1: all zero -> scale 0 and every code 0 (no division by zero, no NaN).
        // Row 2: max |w| from a negative value, 31.75: scale = 31.75 / 127 = 0.25; w / 0.25 = [-127, 0.5, 1.5, -0.5, -1.5, 0.25, 0.75, 127]
        //   -> q = [-127, 0, 2, 0, -2, 0, 1, 127] (ties 0.5 -> 0, 1.5 -> 2, -0.5 -> 0, -1.5 -> -2)
        //   bytes 81 00 02 00 | FE 00 01 7F -> 0x00020081, 0x7F0100FE.
        float[] w =
        [
            63.5f, 1.25f, 1.75f, -1.25f, -1.75f, 0.2f, 0.3f, -0.74f,
            0, 0, 0, 0, 0, 0, 0, 0,
            -31.75f, 0.125f, 0.375f, -0.125f, -0.375f, 0.0625f, 0.1875f, 31.75f,
        ];
        var m = Q8Matrix.Quantize(w, 3, 8);
        AssertWords([0xFE04027Fu, 0xFF0100FCu, 0, 0, 0, 0, 0, 0, 0x00020081u, 0x7F0100FEu, 0, 0], m.Words, "int8");
        Assert.That(m.Scales, Is.EqualTo(new[] { 0.5f, 0f, 0.25f }), "int8 scales");
        // q * scale: row 0 [63.5, 1, 2, -1, -2, 0, 0.5, -0.5]; row 2 [-31.75, 0, 0.5, 0, -0.5, 0, 0.25, 31.75].
        AssertDequant(m,
        [
            63.5f, 1f, 2f, -1f, -2f, 0f, 0.5f, -0.5f,
            0, 0, 0, 0, 0, 0, 0, 0,
            -31.75f, 0f, 0.5f, 0f, -0.5f, 0f, 0.25f, 31.75f,
        ], "int8");
    }

    [Test]
    public void Int4SymmetricCodesAndScalesByHand()
    {
        // G = 32, K = 64: two groups per row; unlisted weights are 0 (code 0 + 8 = 8, nibble 8).
        // Row 0 group 0: max |w| = 1.75, scale = 1.75 / 7 = 0.25 (f16 0x3400).
        //   w[0..7] / 0.25 = [7, 1.5, 2.5, -1.5, -2.5, 1.2, -0.8, 0.5] -> q = [7, 2, 2, -2, -2, 1, -1, 0] (half to even)
        //   stored q + 8 = [15, 10, 10, 6, 6, 9, 7, 8]; nibble i of a word is k = 8j + i -> word 0 = 0x87966AAF.
        //   (floor would store 1.5 -> 9; away from zero 2.5 -> 11.)
        // Row 0 group 1: max |w| = |-28|, scale = 28 / 7 = 4 (f16 0x4400), 16x group 0's.
        //   w[32..37] / 4 = [-7, 1.5, 2.5, 0.5, -0.5, 3.5] -> q = [-7, 2, 2, 0, 0, 4] -> stored [1, 10, 10, 8, 8, 12, 8, 8]
        //   -> word 4 = 0x88C88AA1.
        // Row 1 group 0: max |w| = 0.7, scale 0.7 / 7 = 0.1 rounds to f16 0x2E66 = 1638 / 16384 = 0.0999755859375 BEFORE
        //   the codes are computed: 0.7 / s = 7.0017 -> 7; 0.25 / s = 2.5006 -> 3 (with the unrounded 0.1 it would be
        //   the tie 2.5 -> 2). Stored [15, 11, 8, ...] -> word 0 = 0x888888BF.
        // Row 1 group 1: all zero -> scale 0, every code 8.
        var w = new float[2 * 64];
        Row(64, (0, 1.75f), (1, 0.375f), (2, 0.625f), (3, -0.375f), (4, -0.625f), (5, 0.3f), (6, -0.2f), (7, 0.125f),
            (32, -28f), (33, 6f), (34, 10f), (35, 2f), (36, -2f), (37, 14f)).CopyTo(w, 0);
        Row(64, (0, 0.7f), (1, 0.25f)).CopyTo(w, 64);
        var m = Q4Matrix.Quantize(w, 2, 64, 32, symmetric: true);
        const uint eights = 0x88888888u;
        AssertWords(
        [
            0x87966AAFu, eights, eights, eights, 0x88C88AA1u, eights, eights, eights,
            0x888888BFu, eights, eights, eights, eights, eights, eights, eights,
        ], m.Words, "int4 sym");
        Assert.That(m.Scales, Is.EqualTo(new ushort[] { 0x3400, 0x4400, 0x2E66, 0 }), "int4 sym f16 scales");
        Assert.That(m.Zeros.Length, Is.Zero, "symmetric int4 stores no zeros");

        // (q - 8) * scale.
        float s1 = 0.0999755859375f;
        var want = new float[2 * 64];
        Row(64, (0, 1.75f), (1, 0.5f), (2, 0.5f), (3, -0.5f), (4, -0.5f), (5, 0.25f), (6, -0.25f), (7, 0f),
            (32, -28f), (33, 8f), (34, 8f), (35, 0f), (36, 0f), (37, 16f)).CopyTo(want, 0);
        Row(64, (0, 7 * s1), (1, 3 * s1)).CopyTo(want, 64);
        AssertDequant(m, want, "int4 sym");
    }

    [Test]
    public void Int4AsymmetricCodesZerosAndScalesByHand()
    {
        // G = 32, K = 64; the range [min, max] (widened to include 0) maps onto 0..15: scale = (max - min) / 15,
        // z = round(-min / scale), q = clamp(round(w / scale) + z, 0, 15). Unlisted weights are 0, i.e. code z.
        // Row 0 group 0: [-1.5, 2.25] -> scale 3.75 / 15 = 0.25 (0x3400), z = 1.5 / 0.25 = 6.
        //   w / 0.25 = [-6, 9, 1.5, 2.5, -1.5, 0.4, -3.6] -> round [-6, 9, 2, 2, -2, 0, -4] + 6 = [0, 15, 8, 8, 4, 6, 2], then 6
        //   -> word 0 = 0x626488F0, words 1..3 = 0x66666666.
        // Row 0 group 1: [-28, 92] -> scale 120 / 15 = 8 (0x4800), z = round(28 / 8 = 3.5) = 4 (half to even; floor 3).
        //   w / 8 = [-3.5, 11.5, 2.5, 0.5, 1.5, -0.5] -> round [-4, 12, 2, 0, 2, 0] + 4 = [0, 16 -> clamped 15, 6, 4, 6, 4], then 4
        //   -> word 4 = 0x444646F0, words 5..7 = 0x44444444.
        // Row 1 group 0: [0, 1.5] (min widened to 0) -> 1.5 / 15 = 0.1 -> f16 0x2E66 = 0.0999755859375, z = 0;
        //   1.5 / s = 15.004 -> 15; 0.05 / s = 0.50012 -> 1 (the unrounded scale would make it the tie 0.5 -> 0)
        //   -> word 0 = 0x0000001F.
        // Row 1 group 1: all zero -> scale 0, z = 0, codes 0.
        var w = new float[2 * 64];
        Row(64, (0, -1.5f), (1, 2.25f), (2, 0.375f), (3, 0.625f), (4, -0.375f), (5, 0.1f), (6, -0.9f),
            (32, -28f), (33, 92f), (34, 20f), (35, 4f), (36, 12f), (37, -4f)).CopyTo(w, 0);
        Row(64, (0, 1.5f), (1, 0.05f)).CopyTo(w, 64);
        var m = Q4Matrix.Quantize(w, 2, 64, 32, symmetric: false);
        const uint sixes = 0x66666666u, fours = 0x44444444u;
        AssertWords(
        [
            0x626488F0u, sixes, sixes, sixes, 0x444646F0u, fours, fours, fours,
            0x0000001Fu, 0, 0, 0, 0, 0, 0, 0,
        ], m.Words, "int4 asym");
        Assert.That(m.Scales, Is.EqualTo(new ushort[] { 0x3400, 0x4800, 0x2E66, 0 }), "int4 asym f16 scales");
        Assert.That(m.Zeros, Is.EqualTo(new byte[] { 6, 4, 0, 0 }), "int4 asym zero points");

        // (q - z) * scale: group 1's clamped 92 comes back as (15 - 4) * 8 = 88.
        float s1 = 0.0999755859375f;
        var want = new float[2 * 64];
        Row(64, (0, -1.5f), (1, 2.25f), (2, 0.5f), (3, 0.5f), (4, -0.5f), (5, 0f), (6, -1f),
            (32, -32f), (33, 88f), (34, 16f), (35, 0f), (36, 16f), (37, 0f)).CopyTo(want, 0);
        Row(64, (0, 15 * s1), (1, s1)).CopyTo(want, 64);
        AssertDequant(m, want, "int4 asym");
    }

    [Test]
    public void Fp8CodesAndBlockScalesByHand()
    {
        // One row, K = 32 in two 16-wide scale blocks; scale = block max |w| / 448, code = E4M3(w / scale), nearest even.
        // E4M3FN: code = 8 (e + 7) + m for 1.m x 2^e; 1.0 = 0x38, 448 = 0x7E; subnormals m x 2^-9 are codes 0..7.
        // Block 0: max 3.5 -> scale 3.5 / 448 = 2^-7; w / scale = 128 w:
        //   3.5 -> 448 = 0x7E; 1.0625 (tie of 1 = 0x38 and 1.125 = 0x39) -> 0x38 (even); 1.1875 (tie of 0x39, 0x3A = 1.25)
        //   -> 0x3A (even; rounding down gives 0x39); -1.1875 -> 0xBA; 1.2 (0.075 above 1.125, 0.05 below 1.25) -> 0x3A;
        //   1.5 x 2^-9 (tie of subnormal codes 1 and 2) -> 0x02; 2.5 x 2^-9 -> 0x02; 0.5 x 2^-9 (tie of 0 and 1) -> 0x00.
        //   bytes 7E 38 3A BA | 3A 02 02 00 -> words 0xBA3A387E, 0x0002023A.
        // Block 1: max 1792 -> scale 1792 / 448 = 4; w / 4: 1792 -> 448 = 0x7E; -4.75 -> -1.1875 -> 0xBA; 6 -> 1.5 = 0x3C;
        //   0.5 -> 0.125 = 2^-3 = 8 (-3 + 7) = 0x20 -> word 4 = 0x203CBA7E.
        float ulp = MathF.ScaleB(1, -16); // 2^-9 x 2^-7
        var w = Row(32, (0, 3.5f), (1, 1.0625f / 128), (2, 1.1875f / 128), (3, -1.1875f / 128), (4, 1.2f / 128), (5, 1.5f * ulp),
            (6, 2.5f * ulp), (7, 0.5f * ulp), (16, 1792f), (17, -4.75f), (18, 6f), (19, 0.5f));
        var m = Fp8Matrix.Quantize(w, 1, 32, blockN: 1, blockK: 16);
        AssertWords([0xBA3A387Eu, 0x0002023Au, 0, 0, 0x203CBA7Eu, 0, 0, 0], m.Words, "fp8");
        Assert.That(m.Scales, Is.EqualTo(new[] { 1f / 128, 4f }), "fp8 block scales");

        // e4m3 x scale: 448 / 128 = 3.5, 1 / 128, 1.25 / 128 (twice), -1.25 / 128, 2 x 2^-16 (twice), 0; 448 x 4 = 1792,
        // -1.25 x 4 = -5, 1.5 x 4 = 6, 0.125 x 4 = 0.5.
        AssertDequant(m, Row(32, (0, 3.5f), (1, 1f / 128), (2, 1.25f / 128), (3, -1.25f / 128), (4, 1.25f / 128), (5, 2 * ulp),
            (6, 2 * ulp), (16, 1792f), (17, -5f), (18, 6f), (19, 0.5f)), "fp8");
    }
}
