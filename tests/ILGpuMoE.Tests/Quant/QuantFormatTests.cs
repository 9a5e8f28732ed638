using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Quant;

/// <summary>FP8 decoding, packed layouts, checkpoint repacks: dequantized values checked to the bit.</summary>
public class QuantFormatTests
{
    private static readonly int[] AwqOrder = [0, 2, 4, 6, 1, 3, 5, 7];

    /// <summary>E4M3FN written independently of both decoders: integer mantissa times a power of two.</summary>
    private static float IndependentE4M3(int code)
    {
        int e = (code >> 3) & 15, m = code & 7;
        if ((code & 0x7F) == 0x7F)
            return float.NaN;
        double mag = e == 0 ? Math.ScaleB(m, -9) : Math.ScaleB(8 + m, e - 10);
        return (float)((code & 0x80) != 0 ? -mag : mag);
    }

    private static void DecodeKernel(Index1D i, ArrayView<float> y) => y[i] = Fp8.DecodeE4M3((uint)i.X);

    [Test]
    public void Fp8DecoderMatchesDefinitionOnAll256Codes()
    {
        var acc = TestDevice.Accelerator;
        using var y = TestDevice.PoisonedFloats(256);
        acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>>(DecodeKernel)(256, y.View);
        acc.Synchronize();
        var device = y.GetAsArray1D();
        for (int c = 0; c < 256; c++)
        {
            float want = IndependentE4M3(c);
            foreach (var (what, got) in new[] { ("device", device[c]), ("host", Fp8.DecodeE4M3((uint)c)), ("reference", RefQuant.DecodeE4M3((byte)c)) })
            {
                if (float.IsNaN(want))
                    Assert.That(float.IsNaN(got), $"{what} code 0x{c:X2} should be NaN, got {got}");
                else
                    Assert.That(BitConverter.SingleToInt32Bits(got), Is.EqualTo(BitConverter.SingleToInt32Bits(want)), $"{what} code 0x{c:X2}: {got} vs {want}");
            }
        }

        // Landmarks of E4M3FN: max 448, no infinities, smallest subnormal 2^-9, smallest normal 2^-6, one, signed zero.
        Assert.That(device[0x7E], Is.EqualTo(448f));
        Assert.That(device[0xFE], Is.EqualTo(-448f));
        Assert.That(float.IsNaN(device[0x7F]) && float.IsNaN(device[0xFF]));
        Assert.That(device.Count(float.IsNaN), Is.EqualTo(2));
        Assert.That(device.Any(float.IsInfinity), Is.False);
        Assert.That(device[0x01], Is.EqualTo(MathF.ScaleB(1, -9)));
        Assert.That(device[0x08], Is.EqualTo(MathF.ScaleB(1, -6)));
        Assert.That(device[0x38], Is.EqualTo(1f));
        Assert.That(float.IsNegative(device[0x80]) && device[0x80] == 0f);
    }

    [Test]
    public void Fp8EncoderRoundsToNearestEvenAndSaturates()
    {
        for (int c = 0; c < 127; c++)
        {
            Assert.That(Quantizer.EncodeE4M3(IndependentE4M3(c)), Is.EqualTo((byte)c), $"round trip of code {c}");
            Assert.That(Quantizer.EncodeE4M3(-IndependentE4M3(c)), Is.EqualTo((byte)(c | 0x80)), $"round trip of code -{c}");
        }

        // 1.0625 lies halfway between 1 (0x38, even) and 1.125 (0x39): ties go to the even code.
        Assert.That(Quantizer.EncodeE4M3(1.0625f), Is.EqualTo((byte)0x38));
        Assert.That(Quantizer.EncodeE4M3(1.1875f), Is.EqualTo((byte)0x3A));
        Assert.That(Quantizer.EncodeE4M3(1e6f), Is.EqualTo((byte)0x7E));
        Assert.That(Quantizer.EncodeE4M3(-500f), Is.EqualTo((byte)0xFE));
        Assert.That(Quantizer.EncodeE4M3(float.NaN), Is.EqualTo((byte)0x7F));
    }

    [Test]
    public void Fp8EncoderEqualsABruteForceNearestEvenSearch()
    {
        // Every midpoint between neighbouring codes and the floats right around it, the codes themselves, values
        // past 448, and random magnitudes from 2^-12 to 2^9 on both signs: the encoder must pick what a search over
        // all 127 finite magnitudes picks (nearest; ties to the even code; saturating at 448).
        var values = new List<float> { 0f, -0f, 448f, 449f, 464f, 480f, 1e30f, float.Epsilon };
        for (int c = 0; c < 127; c++)
        {
            float v = IndependentE4M3(c);
            values.Add(v);
            if (c < 126)
            {
                float mid = (float)((v + (double)IndependentE4M3(c + 1)) / 2);
                values.AddRange([mid, MathF.BitDecrement(mid), MathF.BitIncrement(mid)]);
            }
        }

        var rng = new Random(5);
        for (int i = 0; i < 20000; i++)
            values.Add((float)Math.Pow(2, rng.NextDouble() * 21 - 12));
        foreach (float v in values.Concat(values.Select(x => -x)).ToList())
        {
            double a = Math.Abs((double)v);
            int best = 0;
            for (int c = 1; c < 127; c++)
            {
                double d = Math.Abs(IndependentE4M3(c) - a), db = Math.Abs(IndependentE4M3(best) - a);
                if (d < db || (d == db && (c & 1) == 0))
                    best = c;
            }

            int want = (float.IsNegative(v) ? 0x80 : 0) | best;
            Assert.That(Quantizer.EncodeE4M3(v), Is.EqualTo((byte)want), $"encode {v:R}");
        }
    }

    [TestCase("q8")]
    [TestCase("q4-sym-g32")]
    [TestCase("q4-zero-g64")]
    [TestCase("q4-zero-g128")]
    [TestCase("q4-row")]
    [TestCase("fp8-block")]
    [TestCase("fp8-tensor")]
    public void DeviceReaderDequantizesBitIdenticallyToTheReference(string scheme)
    {
        int rows = 37, cols = scheme == "q4-zero-g128" ? 256 : QuantTestData.InDim(scheme);
        var w = Data.Gaussian(scheme.Length * 17 + 3, (long)rows * cols, 0.5);
        var m = QuantTestData.Quantize(scheme, w, rows, cols);
        var reference = QuantTestData.RefDequant(m);
        Check.BitEqual(reference, QuantTestData.DeviceDequant(m), $"{scheme} device dequant");
        // The quantizer picked sensible codes: the dequantized matrix is near the input.
        Assert.That(RefQuant.RelativeFrobeniusError(reference, w), Is.LessThan(0.2), scheme);
    }

    [Test]
    public void Q4RefusesAScaleBeyondF16AsAnArgumentError()
    {
        // The row loop runs in parallel; the failure must still surface as the ArgumentException that names the group.
        var w = Data.Uniform(9, 64L * 64);
        w[37 * 64 + 5] = 1e6f;
        var e = Assert.Throws<ArgumentException>(() => Q4Matrix.Quantize(w, 64, 64, 32, symmetric: true))!;
        Assert.That(e.Message, Does.Contain("row 37 group 0").And.Contain("beyond f16"));
    }

    [Test]
    public void Q4RefusesGroupsThatDoNotDivideTheInputDim()
    {
        var w = Data.Uniform(5, 4 * 100);
        var e = Assert.Throws<ArgumentException>(() => Q4Matrix.Quantize(w, 4, 100, 32, symmetric: true))!;
        Assert.That(e.Message, Does.Contain("K = 100").And.Contain("G = 32"));
        Assert.Throws<ArgumentException>(() => Q4Matrix.Quantize(Data.Uniform(5, 4 * 96), 4, 96, 48, symmetric: true));
        Assert.Throws<ArgumentException>(() => CheckpointRepack.FromAwq(new int[100 * 2], new int[6], new ushort[48], 100, 16, 32));
        Assert.Throws<ArgumentException>(() => CheckpointRepack.FromGptq(new int[12 * 16], new int[6], new ushort[48], default, 96, 16, 64));
        Assert.Throws<ArgumentException>(() => RefQuant.DequantQ4(new uint[50], new ushort[12], default, 4, 100, 32));
        Assert.Throws<ArgumentException>(() => Q8Matrix.Quantize(Data.Uniform(5, 10), 4, 3));
    }

    // ---------------------------------------------------------------- AWQ / GPTQ / FP8 checkpoints

    /// <summary>Known integer weights, zeros and exact f16 scales for a Linear(in, out), G = 32.</summary>
    private static (int[,] Q, int[,] Z, float[,] S) KnownQ4(int inDim, int outDim, int groups, int zeroMin, int zeroMax)
    {
        var q = new int[inDim, outDim];
        var z = new int[groups, outDim];
        var s = new float[groups, outDim];
        for (int k = 0; k < inDim; k++)
        {
            for (int n = 0; n < outDim; n++)
                q[k, n] = (k * 7 + n * 3 + k / 5) % 16;
        }

        for (int g = 0; g < groups; g++)
        {
            for (int n = 0; n < outDim; n++)
            {
                z[g, n] = zeroMin + (g * 5 + n) % (zeroMax - zeroMin + 1);
                s[g, n] = (1 + n % 4) * MathF.ScaleB(1, -(g + 3)); // exact in f16
            }
        }

        return (q, z, s);
    }

    private static ushort F16(float v) => BitConverter.HalfToUInt16Bits((System.Half)v);

    private static float[] Expected(int[,] q, int[,] z, float[,] s, Func<int, int> groupOf, int inDim, int outDim)
    {
        var w = new float[outDim * inDim];
        for (int n = 0; n < outDim; n++)
        {
            for (int k = 0; k < inDim; k++)
                w[n * inDim + k] = (q[k, n] - z[groupOf(k), n]) * s[groupOf(k), n];
        }

        return w;
    }

    [Test]
    public void AwqHandPackedTensorsDequantizeToKnownValues()
    {
        const int inDim = 64, outDim = 16, g = 32, groups = 2, cw = outDim / 8;
        var (q, z, s) = KnownQ4(inDim, outDim, groups, 0, 15);
        // Pack as AWQ's GEMM format: word (k, c) holds column 8c + ORDER[i] in nibble i.
        var qweight = new int[inDim * cw];
        var qzeros = new int[groups * cw];
        var scales = new ushort[groups * outDim];
        for (int k = 0; k < inDim; k++)
        {
            for (int c = 0; c < cw; c++)
            {
                uint word = 0;
                for (int i = 0; i < 8; i++)
                    word |= (uint)q[k, 8 * c + AwqOrder[i]] << (4 * i);
                qweight[k * cw + c] = unchecked((int)word);
            }
        }

        for (int gi = 0; gi < groups; gi++)
        {
            for (int c = 0; c < cw; c++)
            {
                uint word = 0;
                for (int i = 0; i < 8; i++)
                    word |= (uint)z[gi, 8 * c + AwqOrder[i]] << (4 * i);
                qzeros[gi * cw + c] = unchecked((int)word);
            }

            for (int n = 0; n < outDim; n++)
                scales[gi * outDim + n] = F16(s[gi, n]);
        }

        var want = Expected(q, z, s, k => k / g, inDim, outDim);
        Assert.That(want.Count(v => v != 0), Is.GreaterThan(want.Length / 2));
        Check.BitEqual(want, RefQuant.DequantAwq(qweight, qzeros, scales, inDim, outDim, g), "reference AWQ");
        var m = CheckpointRepack.FromAwq(qweight, qzeros, scales, inDim, outDim, g);
        Check.BitEqual(want, QuantTestData.RefDequant(m), "repacked, reference");
        Check.BitEqual(want, QuantTestData.DeviceDequant(m), "repacked, device");
        var read = ThroughCheckpoint(c => CheckpointRepack.ReadAwq(c, "mlp.up", g),
            SafeTensorsWriter.FromSpan<int>("mlp.up.qweight", DType.I32, [inDim, cw], qweight),
            SafeTensorsWriter.FromSpan<int>("mlp.up.qzeros", DType.I32, [groups, cw], qzeros),
            SafeTensorsWriter.FromSpan<ushort>("mlp.up.scales", DType.F16, [groups, outDim], scales));
        Check.BitEqual(want, QuantTestData.RefDequant(read), "read from a checkpoint");
    }

    /// <summary>Writes the tensors as a one-file checkpoint and reads a matrix back through the IO layer.</summary>
    private static QuantizedMatrix ThroughCheckpoint(Func<Checkpoint, QuantizedMatrix> read, params SafeTensorsWriter.Entry[] entries)
    {
        string dir = Path.Combine(Path.GetTempPath(), "ilgpumoe-quant-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            SafeTensorsWriter.Write(Path.Combine(dir, Checkpoint.SingleFileName), entries);
            using var c = Checkpoint.Open(dir);
            return read(c);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    // Random packed words large enough that the parallel repack runs several tiles in both directions (AWQ: 3 x 3
    // tiles of 16 words x 64 column words; GPTQ: 17 blocks of 64 rows, the last one partial), against the reference's
    // reading of the source format. Scales are exact f16 values so the comparison is bit for bit.
    [TestCase("awq", false)]
    [TestCase("gptq", false)]
    [TestCase("gptq", true)]
    public void RepackOfLargeRandomTensorsMatchesTheReference(string format, bool actOrder)
    {
        const int inDim = 384, outDim = 1040, g = 64, groups = inDim / g, cw = outDim / 8;
        var rng = new Random(actOrder ? 11 : 7);
        int[] Words(int n) => Enumerable.Range(0, n).Select(_ => rng.Next() ^ (rng.Next() << 16)).ToArray();
        var scales = Enumerable.Range(0, groups * outDim).Select(_ => F16((float)(rng.Next(1, 64) / 256.0))).ToArray();
        var qzeros = Words(groups * cw);
        if (format == "awq")
        {
            var qweight = Words(inDim * cw);
            var m = CheckpointRepack.FromAwq(qweight, qzeros, scales, inDim, outDim, g);
            Check.BitEqual(RefQuant.DequantAwq(qweight, qzeros, scales, inDim, outDim, g), QuantTestData.RefDequant(m), "AWQ repack");
            return;
        }

        var qw = Words(inDim / 8 * outDim);
        var order = Enumerable.Range(0, inDim).OrderBy(_ => rng.Next()).ToArray();
        var gIdx = new int[inDim];
        for (int j = 0; j < inDim; j++)
            gIdx[actOrder ? order[j] : j] = j / g;
        var p = CheckpointRepack.FromGptq(qw, qzeros, scales, gIdx, inDim, outDim, g);
        var want = RefQuant.DequantGptq(qw, qzeros, scales, gIdx, inDim, outDim, g);
        var perm = p.InputPermutation ?? Enumerable.Range(0, inDim).ToArray();
        Assert.That(p.InputPermutation is not null, Is.EqualTo(actOrder));
        var got = QuantTestData.RefDequant(p);
        var inInputOrder = new float[got.Length];
        for (int n = 0; n < outDim; n++)
        {
            for (int j = 0; j < inDim; j++)
                inInputOrder[n * inDim + perm[j]] = got[n * inDim + j];
        }

        Check.BitEqual(want, inInputOrder, $"GPTQ repack (act-order {actOrder})");
    }

    [TestCase(false)]
    [TestCase(true)]
    public void GptqHandPackedTensorsDequantizeToKnownValues(bool actOrder)
    {
        const int inDim = 64, outDim = 16, g = 32, groups = 2, cw = outDim / 8;
        var (q, z, s) = KnownQ4(inDim, outDim, groups, 1, 16); // v1 stores z - 1, so z = 16 is representable
        Func<int, int> groupOf = actOrder ? k => (k * 3 + k / 16) % groups : k => k / g;
        var gIdx = Enumerable.Range(0, inDim).Select(groupOf).ToArray();
        Assert.That(gIdx.Count(x => x == 0), Is.EqualTo(g), "test act-order: every group has G columns");
        var qweight = new int[inDim / 8 * outDim];
        var qzeros = new int[groups * cw];
        var scales = new ushort[groups * outDim];
        for (int r = 0; r < inDim / 8; r++)
        {
            for (int n = 0; n < outDim; n++)
            {
                uint word = 0;
                for (int i = 0; i < 8; i++)
                    word |= (uint)q[8 * r + i, n] << (4 * i);
                qweight[r * outDim + n] = unchecked((int)word);
            }
        }

        for (int gi = 0; gi < groups; gi++)
        {
            for (int c = 0; c < cw; c++)
            {
                uint word = 0;
                for (int i = 0; i < 8; i++)
                    word |= (uint)(z[gi, 8 * c + i] - 1) << (4 * i);
                qzeros[gi * cw + c] = unchecked((int)word);
            }

            for (int n = 0; n < outDim; n++)
                scales[gi * outDim + n] = F16(s[gi, n]);
        }

        var want = Expected(q, z, s, groupOf, inDim, outDim);
        Check.BitEqual(want, RefQuant.DequantGptq(qweight, qzeros, scales, actOrder ? gIdx : default, inDim, outDim, g), "reference GPTQ");
        var m = CheckpointRepack.FromGptq(qweight, qzeros, scales, gIdx, inDim, outDim, g);
        Assert.That(m.InputPermutation is null, Is.EqualTo(!actOrder));
        var perm = m.InputPermutation ?? Enumerable.Range(0, inDim).ToArray();
        var wantPacked = new float[want.Length];
        for (int n = 0; n < outDim; n++)
        {
            for (int j = 0; j < inDim; j++)
                wantPacked[n * inDim + j] = want[n * inDim + perm[j]];
        }

        Check.BitEqual(wantPacked, QuantTestData.RefDequant(m), "repacked, reference");
        Check.BitEqual(wantPacked, QuantTestData.DeviceDequant(m), "repacked, device");
        var entries = new List<SafeTensorsWriter.Entry>
        {
            SafeTensorsWriter.FromSpan<int>("q.qweight", DType.I32, [inDim / 8, outDim], qweight),
            SafeTensorsWriter.FromSpan<int>("q.qzeros", DType.I32, [groups, cw], qzeros),
            SafeTensorsWriter.FromSpan<ushort>("q.scales", DType.F16, [groups, outDim], scales),
        };
        if (actOrder)
            entries.Add(SafeTensorsWriter.FromSpan<int>("q.g_idx", DType.I32, [inDim], gIdx));
        Check.BitEqual(wantPacked, QuantTestData.RefDequant(ThroughCheckpoint(c => CheckpointRepack.ReadGptq(c, "q", g), [.. entries])), "read from a checkpoint");
        if (actOrder)
        {
            // y = x W^T = x[:, perm] Wp^T: the GEMV on the gathered input reproduces the unpermuted product.
            var x = Data.Uniform(77, inDim);
            using var d = m.Upload(TestDevice.Accelerator);
            using var xb = TestDevice.Upload(x);
            using var pb = TestDevice.Upload(perm);
            using var xp = TestDevice.PoisonedFloats(inDim);
            using var y = TestDevice.PoisonedFloats(outDim);
            QuantTestData.Gemv.LaunchGather(TestDevice.Accelerator.DefaultStream, xb.View, pb.View, xp.View, 1, inDim);
            QuantTestData.Gemv.Launch(TestDevice.Accelerator.DefaultStream, xp.View, d.View<Q4Weights>(), y.View, 1);
            TestDevice.Accelerator.Synchronize();
            Check.Close(RefOps.MatMulT(x, want, 1, outDim, inDim), y.GetAsArray1D(), 1e-5, 1e-5, "act-order GEMV");
        }
    }

    [Test]
    public void Fp8CheckpointBlocksDequantizeToKnownValues()
    {
        const int rows = 130, cols = 40, block = 128; // two row blocks (one of 2 rows), one column block
        var rng = new Random(11);
        var weight = new byte[rows * cols];
        for (int i = 0; i < weight.Length; i++)
        {
            int c;
            do
                c = rng.Next(256);
            while ((c & 0x7F) == 0x7F);
            weight[i] = (byte)c;
        }

        float[] scaleInv = [0.015625f, 3.5f];
        var want = new float[rows * cols];
        for (int n = 0; n < rows; n++)
        {
            for (int k = 0; k < cols; k++)
                want[n * cols + k] = (float)(IndependentE4M3(weight[n * cols + k]) * (double)scaleInv[n / block]);
        }

        Check.BitEqual(want, RefQuant.DequantFp8Checkpoint(weight, scaleInv, rows, cols), "reference FP8");
        var m = CheckpointRepack.FromFp8(weight, scaleInv, rows, cols);
        Check.BitEqual(want, QuantTestData.RefDequant(m), "repacked, reference");
        Check.BitEqual(want, QuantTestData.DeviceDequant(m), "repacked, device");

        var t = CheckpointRepack.FromFp8PerTensor(weight, 0.75f, rows, cols);
        Check.BitEqual(weight.Select(b => (float)(IndependentE4M3(b) * 0.75)).ToArray(), QuantTestData.DeviceDequant(t), "per-tensor, device");
        Assert.Throws<ArgumentException>(() => CheckpointRepack.FromFp8(weight, [1f], rows, cols));
        var read = ThroughCheckpoint(c => CheckpointRepack.ReadFp8(c, "w1"),
            SafeTensorsWriter.FromSpan<byte>("w1.weight", DType.F8_E4M3, [rows, cols], weight),
            SafeTensorsWriter.FromSpan<float>("w1.weight_scale_inv", DType.F32, [2, 1], scaleInv));
        Check.BitEqual(want, QuantTestData.RefDequant(read), "read from a checkpoint");
        var e = Assert.Throws<InvalidDataException>(() => ThroughCheckpoint(c => CheckpointRepack.ReadFp8(c, "w1"),
            SafeTensorsWriter.FromSpan<byte>("w1.weight", DType.F8_E4M3, [rows, cols], weight)))!;
        Assert.That(e.Message, Does.Contain("weight_scale_inv"));
    }
}
