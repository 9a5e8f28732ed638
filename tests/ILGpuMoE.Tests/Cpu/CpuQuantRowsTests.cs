// cpu/quant-rows (src/ILGpuMoE/Cpu/CpuQuantRows.cs) against the oracle: each scheme quantizes a seeded random matrix
// with its own quantizer, the reader's Dot runs on it, and the result is compared with a double loop over the oracle's
// dequantization of the same packed arrays (RefQuant / RefMxfp4), within 1e-5 of sum |w x| (+ |y| when accumulating).
// Shapes: Cols odd multiples of the group (96, 160, 192 = 3 x 64, 384 = 3 x 128) and, for the byte layouts, not a
// multiple of 8 (the scalar tail) or of 32 (the 8-lane path where AVX-512 takes whole 32-value units); 1, 3 and 5
// input rows (the 1-row path, the 3-row path, a 4-row block plus 1); the whole matrix and a row window starting past 0
// whose length is not a multiple of 4; y poisoned with NaN or holding values to add to. Weights are spread over powers of two by group and row, so a scale read from the wrong group,
// row or block is far off, and FP8 sees its subnormal codes. On an AVX-512 machine the 8-lane and portable decoders
// run for all shapes only with DOTNET_PreferredVectorBitWidth=256 or DOTNET_EnableAVX2=0 set (CpuQuantRows.cs header).
using System.Runtime.InteropServices;
using ILGpuMoE.Cpu;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Tests.Cpu;

public class CpuQuantRowsTests
{
    private const double Tolerance = 1e-5;

    // (scheme, rows, cols). fp8-16x32: 16 x 32 blocks so a small matrix spans several (the last one 4 columns wide).
    private static readonly object[] Cases =
    [
        new object[] { "int8", 37, 100 },
        new object[] { "int8", 37, 160 },
        new object[] { "int4-g32", 37, 96 },
        new object[] { "int4-g32", 37, 160 },
        new object[] { "int4-g64", 37, 192 },
        new object[] { "int4-g128", 37, 384 },
        new object[] { "int4-g32-asym", 37, 96 },
        new object[] { "int4-g64-asym", 37, 192 },
        new object[] { "int4-g128-asym", 37, 384 },
        new object[] { "int4-per-row", 37, 96 },
        new object[] { "int4-per-row-asym", 37, 160 },
        new object[] { "fp8-block128", 300, 200 },
        new object[] { "fp8-block128", 300, 384 },
        new object[] { "fp8-16x32", 37, 100 },
        new object[] { "fp8-tensor", 37, 100 },
        new object[] { "fp8-tensor", 37, 160 },
        new object[] { "mxfp4", 37, 96 },
        new object[] { "mxfp4", 37, 160 },
    ];

    private static readonly string[] StackSchemes = ["int8", "int4-g32", "int4-g64-asym", "int4-per-row", "fp8-16x32", "fp8-tensor", "mxfp4"];

    [TestCaseSource(nameof(Cases))]
    public void DotMatchesOracle(string scheme, int rows, int cols)
    {
        var m = Quantize(scheme, Weights(rows, cols, seed: cols * 31 + rows), rows, cols);
        var w = Oracle(m);
        var reader = CpuQuantRows.Of(m);
        Assert.That((reader.Rows, reader.Cols, reader.TypeName, reader.InputPermutation), Is.EqualTo((rows, cols, m.TypeName, (int[]?)null)));
        int window0 = 3, windowCount = rows - 6; // 31 of 37, 294 of 300: not a multiple of 4
        Assert.That(windowCount % 4, Is.Not.Zero);
        // 9 and 13: the prefill form (QuantRows.TileTokens and up: rows decoded once, F32 tiles), with 1 and 5 tokens left.
        foreach (int tokens in new[] { 1, 3, 5, 9, 13 })
        {
            foreach (bool accumulate in new[] { false, true })
            {
                Compare(reader, w, cols, 0, rows, tokens, accumulate, $"{scheme} all rows");
                Compare(reader, w, cols, window0, windowCount, tokens, accumulate, $"{scheme} rows {window0}..{window0 + windowCount}");
            }
        }
    }

    /// <summary>Three experts stacked: the reader over the stack, at expert 1's rows, gives expert 1's own oracle result.</summary>
    [TestCaseSource(nameof(StackSchemes))]
    public void StackedExpertsReadTheirOwnRows(string scheme)
    {
        const int n = 20, experts = 3;
        int cols = scheme == "int4-g64-asym" ? 192 : 160;
        var parts = Enumerable.Range(0, experts).Select(e => Quantize(scheme, Weights(n, cols, seed: 1000 + e), n, cols)).ToArray();
        var stacked = QuantizedMatrix.Stack(parts);
        Assert.That(stacked.MatrixRows, Is.EqualTo(n));
        var reader = CpuQuantRows.Of(stacked);
        Assert.That((reader.Rows, reader.TypeName), Is.EqualTo((experts * n, parts[0].TypeName)));
        var w1 = Oracle(parts[1]);
        // Expert 1's rows n .. 2n-1 are rows 0 .. n-1 of its own matrix: compare through a shifted oracle.
        var w = new float[(long)experts * n * cols];
        w1.CopyTo(w, (long)n * cols);
        foreach (int tokens in new[] { 1, 5, 9 })
        {
            foreach (bool accumulate in new[] { false, true })
            {
                Compare(reader, w, cols, n, n, tokens, accumulate, $"{scheme} expert 1");
                Compare(reader, w, cols, n + 3, 13, tokens, accumulate, $"{scheme} expert 1 rows 3..16");
            }
        }
    }

    /// <summary>
    /// A GPTQ act-order matrix (columns stored in group order, z up to 16): the reader exposes the host's permutation and
    /// reads x in packed column order, so Dot on x gathered through it equals the oracle's input-order weights times x.
    /// </summary>
    [Test]
    public void ActOrderReadsGatheredInput()
    {
        const int inDim = 160, outDim = 24, g = 32, groups = inDim / g, cw = outDim / 8;
        var rng = new Random(77);
        var gIdx = Enumerable.Range(0, inDim).Select(k => (k * 3 + k / 32) % groups).ToArray();
        Assert.That(Enumerable.Range(0, groups).All(gi => gIdx.Count(v => v == gi) == g), "test act-order: every group has G columns");
        var qweight = new int[inDim / 8 * outDim];
        for (int i = 0; i < qweight.Length; i++)
            qweight[i] = rng.Next(int.MinValue, int.MaxValue);
        var qzeros = new int[groups * cw];
        for (int i = 0; i < qzeros.Length; i++)
            qzeros[i] = rng.Next(int.MinValue, int.MaxValue); // stored z - 1: z in 1..16
        var scales = new ushort[groups * outDim];
        for (int i = 0; i < scales.Length; i++)
            scales[i] = BitConverter.HalfToUInt16Bits((Half)((rng.NextDouble() + 0.1) * Math.Pow(2, rng.Next(-4, 3))));
        var m = CheckpointRepack.FromGptq(qweight, qzeros, scales, gIdx, inDim, outDim, g);
        Assert.That(m.InputPermutation, Is.Not.Null);
        var reader = CpuQuantRows.Of(m);
        Assert.That(reader.InputPermutation, Is.SameAs(m.InputPermutation));
        var w = RefQuant.DequantGptq(qweight, qzeros, scales, gIdx, inDim, outDim, g); // input column order
        var perm = m.InputPermutation!;
        const int tokens = 3;
        var x = Input(tokens, inDim, seed: 5);
        var gathered = new float[x.Length];
        for (int j = 0; j < tokens; j++)
        {
            for (int c = 0; c < inDim; c++)
                gathered[j * inDim + c] = x[j * inDim + perm[c]];
        }

        var y = new float[tokens * outDim];
        Array.Fill(y, float.NaN);
        reader.Dot(0, outDim, gathered, tokens, y, accumulate: false);
        CheckAgainst(w, inDim, x, tokens, 0, outDim, y, null, "GPTQ act-order");
    }

    /// <summary>
    /// Every byte code through the byte layouts: row 1 of an int8 / FP8 matrix rewritten to the codes 0..255 in order
    /// (int8 -128, which the quantizer never writes, included; FP8's two NaN codes S.1111.111 replaced by 0x7E here),
    /// over 260 columns so the last codes go through the scalar tail; then one FP8 NaN code in the vector part of row 2
    /// and one in the tail of row 3 make exactly those rows NaN.
    /// </summary>
    [TestCase("int8")]
    [TestCase("fp8-tensor")]
    [TestCase("fp8-16x32")]
    public void EveryByteCodeDecodesAsTheOracle(string scheme)
    {
        const int rows = 6, cols = 260;
        var m = Quantize(scheme, Weights(rows, cols, seed: 3), rows, cols);
        bool fp8 = scheme != "int8";
        var bytes = MemoryMarshal.AsBytes(m.Words.AsSpan());
        int rowBytes = m.RowWords * 4;
        for (int c = 0; c < cols; c++)
        {
            int code = (c + 250) % 256; // 250..255 then 0.., so the vector part and the tail both see high codes
            bytes[rowBytes + c] = (byte)(fp8 && (code & 0x7F) == 0x7F ? 0x7E : code);
        }

        var reader = CpuQuantRows.Of(m);
        foreach (int tokens in new[] { 1, 4, 8 })
            Compare(reader, Oracle(m), cols, 0, rows, tokens, accumulate: false, $"{scheme} every code");
        if (!fp8)
            return;
        bytes[2 * rowBytes + 17] = 0xFF;
        bytes[3 * rowBytes + cols - 2] = 0x7F;
        var x = Input(1, cols, seed: 8);
        var y = new float[rows];
        reader.Dot(0, rows, x, 1, y, accumulate: false);
        Assert.That(y.Select(float.IsNaN), Is.EqualTo(new[] { false, false, true, true, false, false }), "the rows holding an E4M3 NaN code, and only they, are NaN");
    }

    [Test]
    public void OfRefusesNull() => Assert.Throws<ArgumentNullException>(() => CpuQuantRows.Of(null!));

    [Test]
    public void DotRefusesRowsOutsideTheMatrix()
    {
        var reader = CpuQuantRows.Of(Quantize("int4-g32", Weights(8, 64, seed: 1), 8, 64));
        Assert.Throws<ArgumentOutOfRangeException>(() => reader.Dot(5, 4, new float[64], 1, new float[4], accumulate: false));
    }

    private static void Compare(CpuMatrix reader, float[] w, int cols, int row0, int count, int tokens, bool accumulate, string what)
    {
        var x = Input(tokens, cols, seed: row0 * 7 + tokens);
        var y = new float[tokens * count];
        float[]? y0 = null;
        if (accumulate)
        {
            y0 = Input(tokens, count, seed: 99 + count);
            y0.CopyTo(y, 0);
        }
        else
        {
            Array.Fill(y, float.NaN);
        }

        reader.Dot(row0, count, x, tokens, y, accumulate);
        CheckAgainst(w, cols, x, tokens, row0, count, y, y0, $"{what}, {tokens} tokens, accumulate {accumulate}");
    }

    /// <summary>y[j, r] against y0[j, r] + sum_c w[row0 + r, c] x[j, c] in double.</summary>
    private static void CheckAgainst(float[] w, int cols, float[] x, int tokens, int row0, int count, float[] y, float[]? y0, string what)
    {
        for (int j = 0; j < tokens; j++)
        {
            for (int r = 0; r < count; r++)
            {
                double sum = 0, abs = 0;
                for (int c = 0; c < cols; c++)
                {
                    double p = (double)w[(long)(row0 + r) * cols + c] * x[j * cols + c];
                    sum += p;
                    abs += Math.Abs(p);
                }

                double start = y0?[j * count + r] ?? 0;
                float got = y[j * count + r];
                double want = start + sum, tol = Tolerance * (abs + Math.Abs(start));
                Assert.That(abs, Is.GreaterThan(0), $"{what}: row {row0 + r} is all zeros (the test would prove nothing)");
                if (!(Math.Abs(got - want) <= tol))
                    Assert.Fail($"{what}: y[{j}, {r}] (row {row0 + r}) = {got}, oracle {want} (tolerance {tol:G3})");
            }
        }
    }

    private static QuantizedMatrix Quantize(string scheme, float[] w, int rows, int cols) => scheme switch
    {
        "fp8-16x32" => Fp8Matrix.Quantize(w, rows, cols, 16, 32),
        _ => QuantSpec.Parse(scheme)!.Quantize(w, rows, cols),
    };

    /// <summary>The oracle's dequantization of the packed arrays.</summary>
    private static float[] Oracle(QuantizedMatrix m) => m switch
    {
        Q8Matrix q => RefQuant.DequantQ8(q.Words, q.Scales, q.Rows, q.Cols),
        Q4Matrix q => RefQuant.DequantQ4(q.Words, q.Scales, q.Zeros, q.Rows, q.Cols, q.GroupSize),
        Fp8Matrix f => RefQuant.DequantFp8(f.Words, f.Scales, f.Rows, f.Cols, f.MatrixRows, f.BlockN, f.BlockK),
        Mxfp4Matrix x => RefMxfp4.Dequantize(MemoryMarshal.AsBytes(x.Words.AsSpan()), x.Scales, x.Rows, x.Cols / RefMxfp4.BlockSize),
        _ => throw new ArgumentException($"no oracle for {m.TypeName}"),
    };

    /// <summary>Uniform in [-1, 1) times 2^((k / 32 + n) % 5 - 2): neighbouring groups and rows 2x to 16x apart.</summary>
    private static float[] Weights(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var w = new float[(long)rows * cols];
        for (int n = 0; n < rows; n++)
        {
            for (int k = 0; k < cols; k++)
                w[(long)n * cols + k] = (float)(rng.NextDouble() * 2 - 1) * MathF.ScaleB(1f, (k / 32 + n) % 5 - 2);
        }

        return w;
    }

    private static float[] Input(int rows, int cols, int seed)
    {
        var rng = new Random(seed);
        var x = new float[rows * cols];
        for (int i = 0; i < x.Length; i++)
            x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
