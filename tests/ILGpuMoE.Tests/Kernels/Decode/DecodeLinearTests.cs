using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Decode;

/// <summary>decode/linear V1 and V2 against RefOps.RmsNorm + RefOps.MatMulT on the values each reader holds (V2, the
/// runtime's, in every test; V1 beside it for every reader, the V2 runs there with a grid cap of 2 so that each group
/// loops over several row blocks and matrices).</summary>
public class DecodeLinearTests
{
    private const float Eps = 1e-5f;

    internal static DecodeLinearKernel<TU> Kernel<TU>()
        where TU : struct, IRowUnits => DecodeTestUnits.Cached(() => DecodeLinearKernel.Create<TU>(TestDevice.Accelerator));

    /// <summary>Norm weights of a dtype on the device, and the values the kernel sees.</summary>
    internal static (NormWeights Norm, float[] Seen, IDisposable Buffer) Norm(WeightType type, float[] g)
    {
        switch (type)
        {
            case WeightType.F32:
            {
                var b = TestDevice.Upload(g);
                return (NormWeights.Of(new F32Weights(b.View)), g, b);
            }

            case WeightType.F16:
            {
                var b = TestDevice.Upload(g.Select(v => BitConverter.HalfToUInt16Bits((System.Half)v)).ToArray());
                return (NormWeights.Of(new F16Weights(((ArrayView<ushort>)b.View).Cast<ILGPU.Half>())), Data.RoundToHalf(g), b);
            }

            case WeightType.BF16:
            {
                var b = TestDevice.Upload(g.Select(BF16.FromFloat).ToArray());
                return (NormWeights.Of(new BF16Weights(b.View)), Data.RoundToBf16(g), b);
            }

            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, null);
        }
    }

    /// <summary>q, k, v in one launch: 45, 13 and 13 rows (none a multiple of 16; odd, so one warp's second row is
    /// past the end), the norm prologue with F32, F16 or BF16 weights by turns.</summary>
    [Test]
    public void QkvWithNormEveryReader([ValueSource(typeof(DecodeTestUnits), nameof(DecodeTestUnits.Kinds))] string kind,
        [Values] DecodeLinearVersion version)
    {
        int d = DecodeTestUnits.Cols(kind);
        int seed = Array.IndexOf(DecodeTestUnits.Kinds, kind);
        var normType = (WeightType)(seed % 3);
        int[] rows = [45, 13, 13];
        var mats = rows.Select((r, m) => new TestMatrix(Data.Gaussian(100 * seed + m, (long)r * d, 0.3), r, d)).ToList();
        var x = Data.Uniform(7 + seed, d, 2f);
        var (norm, g, gb) = Norm(normType, Data.Uniform(11 + seed, d, 1.5f));
        using var _ = gb;
        DecodeTestUnits.With(kind, mats, new QkvBody(x, norm, g, rows, version, $"{kind} {version} norm {normType}"));
    }

    private sealed class QkvBody(float[] x, NormWeights norm, float[] g, int[] rows, DecodeLinearVersion version, string what) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            int d = x.Length;
            var xs = RefOps.RmsNorm(x, g, 1, d, Eps);
            using var xb = TestDevice.Upload(x);
            var ys = rows.Select(r => TestDevice.PoisonedFloats(r)).ToArray();
            try
            {
                Kernel<TU>().Launch(TestDevice.Accelerator.DefaultStream, xb.View, norm, Eps,
                    new(w[0], ys[0].View), new DecodeTarget<TU>(w[1], ys[1].View), new DecodeTarget<TU>(w[2], ys[2].View), version: version, maxGroups: 2);
                TestDevice.Accelerator.Synchronize();
                for (int m = 0; m < 3; m++)
                    Check.Close(RefOps.MatMulT(xs, seen[m], 1, rows[m], d), ys[m].GetAsArray1D(), 1e-5, DecodeTestUnits.DotAtol(d), $"{what} matrix {m}");
            }
            finally
            {
                foreach (var y in ys)
                    y.Dispose();
            }
        }
    }

    /// <summary>
    /// The bias/clip epilogue (Qwen2-MoE q/k/v biases, OLMoE clip_qkv) on q, k, v in one launch with the norm prologue:
    /// rows 45, 13, 13, biases in F32, F16 and BF16 (one dtype per matrix), and a clip at the 70th percentile of |y| so
    /// that about a third of the outputs clip, against RefDecode.Linear.
    /// </summary>
    [TestCase("bf16")]
    [TestCase("f16")]
    [TestCase("scalar-f32")]
    [TestCase("scalar-bf16")]
    [TestCase("q4-zero-g64")]
    [TestCase("fp8-block")]
    [TestCase("q8")]
    public void QkvWithBiasAndClip(string kind)
    {
        int d = DecodeTestUnits.Cols(kind);
        int[] rows = [45, 13, 13];
        var mats = rows.Select((r, m) => new TestMatrix(Data.Gaussian(500 + m, (long)r * d, 0.3), r, d)).ToList();
        var (norm, g, gb) = Norm(WeightType.BF16, Data.Uniform(511, d, 1.5f));
        var biases = rows.Select((r, m) => Norm((WeightType)m, Data.Uniform(520 + m, r, 0.5f))).ToArray();
        try
        {
            DecodeTestUnits.With(kind, mats, new BiasClipBody(Data.Uniform(512, d, 2f), norm, g, biases, kind));
        }
        finally
        {
            gb.Dispose();
            foreach (var b in biases)
                b.Buffer.Dispose();
        }
    }

    private sealed class BiasClipBody(float[] x, NormWeights norm, float[] g, (NormWeights Norm, float[] Seen, IDisposable Buffer)[] biases,
        string what) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            int d = x.Length;
            var unclipped = Enumerable.Range(0, 3)
                .SelectMany(m => RefDecode.Linear(x, g, Eps, seen[m], w[m].Rows, d, biases[m].Seen, float.PositiveInfinity)).ToArray();
            var sorted = unclipped.Select(MathF.Abs).Order().ToArray();
            float clip = sorted[sorted.Length * 7 / 10];
            Assert.That(sorted.Count(v => v > clip * 1.01f), Is.GreaterThan(10), "enough outputs clip");
            using var xb = TestDevice.Upload(x);
            var ys = w.Select(m => TestDevice.PoisonedFloats(m.Rows)).ToArray();
            try
            {
                Kernel<TU>().Launch(TestDevice.Accelerator.DefaultStream, xb.View, norm, Eps, new(w[0], ys[0].View, biases[0].Norm),
                    new DecodeTarget<TU>(w[1], ys[1].View, biases[1].Norm), new DecodeTarget<TU>(w[2], ys[2].View, biases[2].Norm), clip: clip);
                TestDevice.Accelerator.Synchronize();
                for (int m = 0; m < 3; m++)
                {
                    var want = RefDecode.Linear(x, g, Eps, seen[m], w[m].Rows, d, biases[m].Seen, clip);
                    var got = ys[m].GetAsArray1D();
                    Check.Close(want, got, 1e-5, DecodeTestUnits.DotAtol(d), $"{what} matrix {m}");
                    Assert.That(got.All(v => MathF.Abs(v) <= clip), $"{what} matrix {m} within the clip");
                }
            }
            finally
            {
                foreach (var y in ys)
                    y.Dispose();
            }
        }
    }

    /// <summary>Accumulate with the epilogue: y += clamp(x W^T + b, -c, c) (the clipped value is what is added).</summary>
    [TestCase("bf16")]
    [TestCase("scalar-f32")]
    public void AccumulateAddsTheClippedValue(string kind)
    {
        int d = DecodeTestUnits.Cols(kind);
        const int rows = 21;
        var mats = new[] { new TestMatrix(Data.Gaussian(531, (long)rows * d, 0.3), rows, d) };
        var bias = Norm(WeightType.BF16, Data.Uniform(532, rows, 0.5f));
        using var _ = bias.Buffer;
        DecodeTestUnits.With(kind, mats, new AccumulateClipBody(Data.Uniform(533, d), Data.Uniform(534, rows, 3f), bias.Norm, bias.Seen, kind));
    }

    private sealed class AccumulateClipBody(float[] x, float[] y0, NormWeights bias, float[] b, string what) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            const float clip = 0.25f;
            var pre = RefDecode.Linear(x, default, 0f, seen[0], y0.Length, x.Length, b, float.PositiveInfinity);
            Assert.That(pre.Count(v => MathF.Abs(v) > 0.3f), Is.GreaterThan(3), "some outputs clip");
            using var xb = TestDevice.Upload(x);
            using var y = TestDevice.Upload(y0);
            Kernel<TU>().Launch(TestDevice.Accelerator.DefaultStream, xb.View, NormWeights.None, 0f, new(w[0], y.View, bias), accumulate: true, clip: clip);
            TestDevice.Accelerator.Synchronize();
            var want = RefDecode.Linear(x, default, 0f, seen[0], y0.Length, x.Length, b, clip, y0);
            Check.Close(want, y.GetAsArray1D(), 1e-5, DecodeTestUnits.DotAtol(x.Length), what);
        }
    }

    /// <summary>No norm, y += x W^T (the o projection into the residual), one target.</summary>
    [TestCase("bf16")]
    [TestCase("scalar-f32")]
    [TestCase("q4-zero-g64")]
    [TestCase("fp8-block")]
    public void AccumulateWithoutNorm(string kind)
    {
        int d = DecodeTestUnits.Cols(kind);
        const int rows = 21;
        var mats = new[] { new TestMatrix(Data.Gaussian(31, (long)rows * d, 0.3), rows, d) };
        DecodeTestUnits.With(kind, mats, new AccumulateBody(Data.Uniform(32, d), Data.Uniform(33, rows, 3f), kind));
    }

    private sealed class AccumulateBody(float[] x, float[] y0, string what) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            using var xb = TestDevice.Upload(x);
            using var y = TestDevice.Upload(y0);
            Kernel<TU>().Launch(TestDevice.Accelerator.DefaultStream, xb.View, NormWeights.None, 0f, new(w[0], y.View), accumulate: true);
            TestDevice.Accelerator.Synchronize();
            var want = RefOps.MatMulT(x, seen[0], 1, y0.Length, x.Length).Select((v, i) => v + y0[i]).ToArray();
            Check.Close(want, y.GetAsArray1D(), 1e-5, DecodeTestUnits.DotAtol(x.Length), what);
        }
    }

    /// <summary>Columns of a packed row of this many 16-byte units (q8: the last unit half padding).</summary>
    internal static int PackedCols(string kind, int units) => kind == "q8" ? 16 * units - 8 : 32 * units;

    /// <summary>
    /// V2's packed unit loop (DecodePersistent.Units, software pipelined for q8, q4 and mxfp4) at row lengths that take
    /// each of its paths (lane l reads units l, l + 32, ...): 1, 2 and 3 units (the prologue's single units, most lanes
    /// idle), 31 and 33 (no full step, or one), 65 (a step, then a single unit loaded ahead), 97 and 129 (steps loaded
    /// ahead of steps, the last loads past the row end; q4 and mxfp4 at 129 units are two tiles, the second starting at
    /// unit 128). 7 rows (one warp's second row past the end), outputs NaN-poisoned, seeded random values; against the
    /// oracle, and bit for bit against V1, whose loop adds the same units in the same order per lane.
    /// </summary>
    [Test]
    public void PackedRowsAtOddUnitCounts([Values("q8", "q4-sym-g32", "mxfp4")] string kind, [Values(1, 2, 3, 31, 33, 65, 97, 129)] int units)
    {
        int d = PackedCols(kind, units);
        const int rows = 7;
        int seed = 60 + units;
        var mats = new[] { new TestMatrix(Data.Gaussian(seed, (long)rows * d, 0.3), rows, d) };
        var (norm, g, gb) = Norm(WeightType.BF16, Data.Uniform(seed + 1, d, 1.5f));
        using var _ = gb;
        DecodeTestUnits.With(kind, mats, new OddUnitsBody(Data.Uniform(seed + 2, d, 2f), norm, g, $"{kind} {units} units"));
    }

    private sealed class OddUnitsBody(float[] x, NormWeights norm, float[] g, string what) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            int d = x.Length, rows = w[0].Rows;
            using var xb = TestDevice.Upload(x);
            using var y1 = TestDevice.PoisonedFloats(rows);
            using var y2 = TestDevice.PoisonedFloats(rows);
            var s = TestDevice.Accelerator.DefaultStream;
            Kernel<TU>().Launch(s, xb.View, norm, Eps, new(w[0], y1.View), version: DecodeLinearVersion.V1);
            Kernel<TU>().Launch(s, xb.View, norm, Eps, new(w[0], y2.View), version: DecodeLinearVersion.V2, maxGroups: 1);
            s.Synchronize();
            var v2 = y2.GetAsArray1D();
            Check.Close(RefOps.MatMulT(RefOps.RmsNorm(x, g, 1, d, Eps), seen[0], 1, rows, d), v2, 1e-5, DecodeTestUnits.DotAtol(d), what);
            Assert.That(v2, Is.EqualTo(y1.GetAsArray1D()), what + ": V2 gives V1's bits");
        }
    }

    /// <summary>D = 4096 + 160: two staged tiles (the second partial), with the norm over the whole row.</summary>
    [TestCase("bf16", DecodeLinearVersion.V1)]
    [TestCase("bf16", DecodeLinearVersion.V2)]
    [TestCase("q4-sym-g32", DecodeLinearVersion.V2)]
    [TestCase("q8", DecodeLinearVersion.V1)]
    public void InputLongerThanOneTile(string kind, DecodeLinearVersion version)
    {
        const int d = DecodeStaging.TileCols + 160, rows = 5;
        var mats = new[] { new TestMatrix(Data.Gaussian(41, (long)rows * d, 0.05), rows, d), new TestMatrix(Data.Gaussian(42, 3L * d, 0.05), 3, d) };
        var x = Data.Uniform(43, d);
        var (norm, g, gb) = Norm(WeightType.BF16, Data.Uniform(44, d, 1.5f));
        using var _ = gb;
        DecodeTestUnits.With(kind, mats, new TwoTargetsBody(x, norm, g, version, $"{kind} {version}"));
    }

    private sealed class TwoTargetsBody(float[] x, NormWeights norm, float[] g, DecodeLinearVersion version, string what) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            int d = x.Length;
            using var xb = TestDevice.Upload(x);
            using var y0 = TestDevice.PoisonedFloats(w[0].Rows);
            using var y1 = TestDevice.PoisonedFloats(w[1].Rows);
            // V2 with one group: it restages the long x for each of its row blocks in turn.
            Kernel<TU>().Launch(TestDevice.Accelerator.DefaultStream, xb.View, norm, Eps, new(w[0], y0.View), new DecodeTarget<TU>(w[1], y1.View),
                version: version, maxGroups: 1);
            TestDevice.Accelerator.Synchronize();
            var xs = RefOps.RmsNorm(x, g, 1, d, Eps);
            Check.Close(RefOps.MatMulT(xs, seen[0], 1, w[0].Rows, d), y0.GetAsArray1D(), 1e-5, DecodeTestUnits.DotAtol(d), what + " target 0");
            Check.Close(RefOps.MatMulT(xs, seen[1], 1, w[1].Rows, d), y1.GetAsArray1D(), 1e-5, DecodeTestUnits.DotAtol(d), what + " target 1");
        }
    }

    /// <summary>
    /// The norm prologue computes RmsNormKernel V1's scale: through an identity matrix (every product but one is an
    /// exact 0) y is the staged rmsnorm(x) * g itself, compared with RmsNormKernel's output at D = 320 (both reduce
    /// with 256 threads in the same order; V2's prologue from registers loaded at once) within 1e-6 relative.
    /// </summary>
    [Test]
    public void NormPrologueMatchesRmsNormKernel([Values] DecodeLinearVersion version)
    {
        const int d = 320;
        var eye = new float[d * d];
        for (int i = 0; i < d; i++)
            eye[i * d + i] = 1f;
        var x = Data.Gaussian(51, d, 3);
        var (norm, g, gb) = Norm(WeightType.BF16, Data.Uniform(52, d, 1.5f));
        using var _ = gb;
        using var w = TestDevice.Upload(eye);
        using var xb = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats(d);
        using var want = TestDevice.PoisonedFloats(d);
        var s = TestDevice.Accelerator.DefaultStream;
        Kernel<F32Units>().Launch(s, xb.View, norm, Eps, new(RowUnits.F32(new F32Weights(w.View), d, d), y.View), version: version);
        RmsNormKernel.Create<BF16Weights>(TestDevice.Accelerator).Launch(s, xb.View, new BF16Weights(norm.BF16), want.View, 1, d, Eps);
        s.Synchronize();
        Check.Close(want.GetAsArray1D(), y.GetAsArray1D(), 1e-6, 0, "decode/linear prologue vs RmsNormKernel");
        Check.Close(RefOps.RmsNorm(x, g, 1, d, Eps), y.GetAsArray1D(), 1e-5, 1e-6, "decode/linear prologue vs RefOps.RmsNorm");
    }

    /// <summary>
    /// Every E4M3 code through Fp8Units' decode (bits moved into f32 and scaled by 2^120, subnormals included; the NaN
    /// codes make their unit NaN): row r holds code r in column r mod 16 and zero bytes elsewhere, so y[r] =
    /// e4m3(r) * x[r mod 16] * scale, against RefQuant.DecodeE4M3.
    /// </summary>
    [Test]
    public void Fp8UnitsDecodeEveryCode()
    {
        const int rows = 256, cols = 16;
        const float scale = 0.125f;
        var words = new uint[rows * 4];
        for (int r = 0; r < rows; r++)
        {
            int c = r % cols;
            words[r * 4 + c / 4] = (uint)r << (8 * (c % 4));
        }

        var x = Enumerable.Range(0, cols).Select(c => 1f + c / 16f).ToArray();
        using var wb = TestDevice.Upload(words);
        using var sb = TestDevice.Upload(new[] { scale });
        using var xb = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats(rows);
        var w = RowUnits.Fp8(new Fp8Weights(wb.View, sb.View, rows, cols, rows, rows, cols));
        Kernel<Fp8Units>().Launch(TestDevice.Accelerator.DefaultStream, xb.View, NormWeights.None, 0f, new(w, y.View));
        TestDevice.Accelerator.Synchronize();
        var got = y.GetAsArray1D();
        var finite = Enumerable.Range(0, rows).Where(r => (r & 0x7F) != 0x7F).ToArray();
        foreach (int r in new[] { 0x7F, 0xFF })
            Assert.That(float.IsNaN(got[r]), $"code 0x{r:X2} must decode to NaN, got {got[r]}");
        var want = finite.Select(r => (float)((double)RefQuant.DecodeE4M3((byte)r) * x[r % cols] * scale)).ToArray();
        Check.Close(want, finite.Select(r => got[r]).ToArray(), 1e-6, 0, "every E4M3 code");
    }

    [Test]
    public void RefusesBadArguments()
    {
        var s = TestDevice.Accelerator.DefaultStream;
        using var wb = TestDevice.Upload(Data.Uniform(61, 40 * 64 + 8));
        var w = RowUnits.F32(new F32Weights(wb.View), 40, 64);
        var narrow = RowUnits.F32(new F32Weights(wb.View), 20, 32);
        using var x = TestDevice.PoisonedFloats(64);
        using var y = TestDevice.PoisonedFloats(40);
        var k = Kernel<F32Units>();
        Assert.Throws<ArgumentException>(() => k.Launch(s, x.View.SubView(0, 63), NormWeights.None, 0f, new(w, y.View)));
        Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, NormWeights.None, 0f, new(w, y.View.SubView(0, 39))));
        Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, NormWeights.None, 0f, new(w, y.View), new DecodeTarget<F32Units>(narrow, y.View)));
        Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, NormWeights.None, 0f, new(w, y.View), null, new DecodeTarget<F32Units>(w, y.View)));
        // An output over the input would race with the other groups' staging.
        using var xy = TestDevice.PoisonedFloats(64 + 40);
        var e0 = Assert.Throws<ArgumentException>(() => k.Launch(s, xy.View.SubView(0, 64), NormWeights.None, 0f, new(w, xy.View.SubView(60, 40))))!;
        Assert.That(e0.Message, Does.Contain("overlap"));
        var g = NormWeights.Of(new F32Weights(x.View.SubView(0, 10)));
        Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, g, Eps, new(w, y.View)));
        Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, NormWeights.Of(new F32Weights(x.View)), float.NaN, new(w, y.View)));
        // The epilogue: a bias shorter than the rows, a clip that is not > 0.
        var shortBias = Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, NormWeights.None, 0f, new(w, y.View, NormWeights.Of(new F32Weights(x.View.SubView(0, 39))))))!;
        Assert.That(shortBias.Message, Does.Contain("bias 0"));
        Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, NormWeights.None, 0f, new(w, y.View), maxGroups: -1));
        Assert.That(Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, NormWeights.None, 0f, new(w, y.View), version: (DecodeLinearVersion)9))!.Message,
            Does.Contain("unknown version"));
        foreach (float clip in new[] { 0f, -1f, float.NaN, float.NegativeInfinity })
            Assert.Throws<ArgumentException>(() => k.Launch(s, x.View, NormWeights.None, 0f, new(w, y.View), clip: clip), $"clip {clip}");

        // The factories refuse what a reader cannot read: rows that are not whole 16-byte units, an unaligned view, a
        // view too short for [rows, cols].
        var e = Assert.Throws<ArgumentException>(() => RowUnits.F32(new F32Weights(wb.View), 40, 37))!;
        Assert.That(e.Message, Does.Contain("RowUnits.Scalar"));
        Assert.Throws<ArgumentException>(() => RowUnits.F32(new F32Weights(wb.View.SubView(1, 40 * 64)), 40, 64));
        Assert.Throws<ArgumentException>(() => RowUnits.F32(new F32Weights(wb.View), 41, 64));
        Assert.Throws<ArgumentException>(() => RowUnits.Scalar(new F32Weights(wb.View), 80, 37));
        ArrayView<float> all = wb.View;
        Assert.That(RowUnits.CanReadWide(all, 64), Is.True);
        Assert.That(RowUnits.CanReadWide(all.SubView(1, 64), 64), Is.False);
        Assert.That(RowUnits.CanReadWide(all, 37), Is.False);
    }
}
