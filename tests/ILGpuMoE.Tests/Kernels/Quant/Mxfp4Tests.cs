using ILGPU.Runtime;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Moe;

namespace ILGpuMoE.Tests.Kernels.Quant;

/// <summary>
/// MXFP4 weights (Quant/Mxfp4.cs) read in place by quant/gemv, quant/gemm and the grouped expert GEMMs V2/V4, against
/// the oracle's dequantization (RefMxfp4) and hand-worked bytes.
/// </summary>
public class Mxfp4Tests
{
    private static readonly Lazy<QuantGemvKernel> Gemv = new(() => QuantGemvKernel.Create(TestDevice.Accelerator));
    private static readonly Lazy<QuantGemmKernel> Gemm = new(() => QuantGemmKernel.Create(TestDevice.Accelerator));
    private static readonly Lazy<QuantMoeBlockKernels<Mxfp4Weights>> Block = new(() => QuantMoeBlockKernels<Mxfp4Weights>.Create(TestDevice.Accelerator));

    /// <summary>Every code times every scale byte, bit for bit the oracle's float (subnormal scales 0, 1 and the
    /// overflow to inf at 253..255 included): the device decode is these two functions.</summary>
    [Test]
    public void EveryCodeAndScaleIsTheOraclesValue()
    {
        for (uint s = 0; s < 256; s++)
        {
            for (uint n = 0; n < 16; n++)
            {
                float want = (float)(RefMxfp4.DecodeE2M1((int)n) * Math.ScaleB(1.0, (int)s - 127));
                for (int i = 0; i < 8; i++)
                {
                    // Nibble i of a word whose other nibbles are all ones (a carry or a stray bit would show).
                    uint word = ~(0xFu << (4 * i)) | (n << (4 * i));
                    float got = Mxfp4.Code2Of(word, i) * Mxfp4.HalfScale(s);
                    Assert.That(BitConverter.SingleToInt32Bits(got), Is.EqualTo(BitConverter.SingleToInt32Bits(want)), $"code {n:X} at nibble {i}, scale {s}: {got:R} vs {want:R}");
                }
            }
        }
    }

    /// <summary>
    /// Hand-worked bytes, one block per row (K = 32), through the device GEMV:
    ///   row 0, scale 128 (x2): byte 0 = 0x2B: value 0 = nibble 0xB = 1011b: sign, e = 01, m = 1: -(1 + 1/2) = -1.5 -> -3;
    ///          value 1 = 0x2 = 0010b: e = 01, m = 0: 1 -> 2. byte 1 = 0x71: value 2 = 0x1 = 0001b: e = 0 (subnormal),
    ///          m = 1: 0.5 -> 1; value 3 = 0x7 = 0111b: e = 11, m = 1: 2^2 * 1.5 = 6 -> 12.
    ///          y0 = -3 * 1 + 2 * 10 + 1 * 100 + 12 * 1000 = 12117.
    ///   row 1, scale 126 (x0.5): byte 0 = 0xF8: value 0 = 0x8 = -0, value 1 = 0xF = 1111b = -(2^2 * 1.5) = -6 -> -3;
    ///          byte 15 = 0x4C: value 30 = 0xC = 1100b = -(2^1 * 1) = -2 -> -1; value 31 = 0x4 = 0100b = 2 -> 1.
    ///          y1 = -0 * 1 - 3 * 10 - 1 * 0.25 + 1 * 0.125 = -30.125.
    ///   row 2, scale 0 (2^-127): byte 0 = 0x01: value 0 = 0.5 -> 2^-128; y2 = 2^-128 * 1 (an f32 subnormal).
    ///   row 3, scale 254 (2^127): byte 2 = 0x02: value 4 = 0x2 = 1 -> 2^127; y3 = 2^127 * x[4] = 2^127 * 0.5 = 2^126.
    /// Every other byte is 0 and every other x is 7, so a wrong nibble or byte order shows. All sums are exact in f32.
    /// </summary>
    [Test]
    public void HandWorkedBlocksThroughTheGemv()
    {
        var blocks = new byte[4 * 16];
        blocks[0] = 0x2B; blocks[1] = 0x71;
        blocks[16] = 0xF8; blocks[31] = 0x4C;
        blocks[32] = 0x01;
        blocks[50] = 0x02;
        var m = new Mxfp4Matrix(blocks, [128, 126, 0, 254], 4, 32);
        var x = Enumerable.Repeat(7f, 32).ToArray();
        x[0] = 1; x[1] = 10; x[2] = 100; x[3] = 1000; x[4] = 0.5f; x[30] = 0.25f; x[31] = 0.125f;
        float[] want = [12117f, -30.125f, (float)Math.ScaleB(1.0, -128), (float)Math.ScaleB(1.0, 126)];
        using var d = m.Upload();
        using var xb = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats(4);
        Gemv.Value.Launch(TestDevice.Accelerator.DefaultStream, xb.View, d.View, y.View, 1);
        TestDevice.Accelerator.Synchronize();
        Check.BitEqual(want, y.GetAsArray1D(), "hand-worked rows");
        // The oracle agrees with the hand-worked values.
        Check.BitEqual(want, RefOps.MatMulT(x, m.Dequant(), 1, 4, 32), "oracle");
    }

    /// <summary>N = 13 (not a multiple of 8 warps), K = 96 (3 blocks), T = 1 and 3, one and two splits, scales 127 +- 8.</summary>
    [TestCase(1, 1)]
    [TestCase(3, 1)]
    [TestCase(3, 2)]
    public void GemvMatchesOracle(int tokens, int splits)
    {
        const int n = 13, k = 96;
        var m = Mxfp4TestData.Random(40 + tokens + splits, n, k);
        var x = Data.Uniform(7 + tokens, (long)tokens * k);
        var w = m.Dequant();
        using var d = m.Upload();
        using var xb = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats((long)tokens * n);
        using var scratch = TestDevice.PoisonedFloats(Math.Max(1, QuantGemvKernel.ScratchLength(tokens, n, splits)));
        Gemv.Value.Launch(TestDevice.Accelerator.DefaultStream, xb.View, d.View, y.View, tokens, splits, scratch.View);
        TestDevice.Accelerator.Synchronize();
        Check.Close(RefOps.MatMulT(x, w, tokens, n, k), y.GetAsArray1D(), 1e-5, DotTol(x, w, tokens, n, k), $"gemv T={tokens} S={splits}");
    }

    [Test]
    public void GemmMatchesOracle()
    {
        const int tokens = 5, n = 13, k = 64;
        var m = Mxfp4TestData.Random(51, n, k);
        var x = Data.Uniform(52, (long)tokens * k);
        var w = m.Dequant();
        using var d = m.Upload();
        using var xb = TestDevice.Upload(x);
        using var y = TestDevice.PoisonedFloats((long)tokens * n);
        Gemm.Value.Launch(TestDevice.Accelerator.DefaultStream, xb.View, d.View, y.View, tokens);
        TestDevice.Accelerator.Synchronize();
        Check.Close(RefOps.MatMulT(x, w, tokens, n, k), y.GetAsArray1D(), 1e-5, DotTol(x, w, tokens, n, k), "gemm");
    }

    [Test]
    public void RefusesBadShapes()
    {
        var m = Mxfp4TestData.Random(3, 4, 64);
        using var d = m.Upload();
        using var x = TestDevice.PoisonedFloats(64);
        using var y = TestDevice.PoisonedFloats(4);
        var s = TestDevice.Accelerator.DefaultStream;
        var notBlocks = new Mxfp4Weights(d.View.Data, d.View.Scales, 4, 48); // K not whole blocks
        var shortScales = new Mxfp4Weights(d.View.Data, d.View.Scales.SubView(0, 7), 4, 64);
        Assert.Throws<ArgumentException>(() => Gemv.Value.Launch(s, x.View, notBlocks, y.View, 1));
        Assert.Throws<ArgumentException>(() => Gemv.Value.Launch(s, x.View, shortScales, y.View, 1));
        Assert.Throws<ArgumentException>(() => Gemm.Value.Launch(s, x.View, shortScales, y.View, 1));
        Assert.Throws<ArgumentException>(() => Mxfp4Host.Words(new byte[100], 4, 2)); // not [4, 2, 16]
        Assert.Throws<ArgumentException>(() => Mxfp4Host.SplitGateUp(new byte[3 * 2 * 16], new byte[3 * 2], 1, 1, 2)); // 2F = 2 rows, not 3
    }

    /// <summary>gate_up [E, 2F, G, 16] / [E, 2F, G]: even rows are the gate (W1), odd rows the up projection (W3), bytes moved whole.</summary>
    [Test]
    public void SplitGateUpMovesWholeBlocks()
    {
        const int e = 2, f = 3, groups = 2;
        var m = Mxfp4TestData.Random(9, e * 2 * f, groups * 32);
        var all = m.Dequant();
        var (gb, gs, ub, us) = Mxfp4Host.SplitGateUp(m.Blocks, m.Scales, e, f, groups);
        var gate = RefMxfp4.Dequantize(gb, gs, e * f, groups);
        var up = RefMxfp4.Dequantize(ub, us, e * f, groups);
        int cols = groups * 32;
        for (int r = 0; r < e * f; r++)
        {
            Check.BitEqual(all.AsSpan(2 * r * cols, cols), gate.AsSpan(r * cols, cols), $"gate row {r}");
            Check.BitEqual(all.AsSpan((2 * r + 1) * cols, cols), up.AsSpan(r * cols, cols), $"up row {r}");
        }
    }

    private static IEnumerable<TestCaseData> BlockCases() =>
    [
        new TestCaseData(GroupedGemmVersion.V4PackedGemv, 3, 2, RoutingShape.SkipExperts, false).SetName("V4 T=3 K=2 an expert without tokens, SiLU"),
        new TestCaseData(GroupedGemmVersion.V4PackedGemv, 3, 4, RoutingShape.SkipExperts, true).SetName("V4 T=3 K=4 gpt-oss"),
        new TestCaseData(GroupedGemmVersion.V4PackedGemv, 5, 1, RoutingShape.AllToOne, true).SetName("V4 T=5 K=1 every token to one expert, gpt-oss"),
        new TestCaseData(GroupedGemmVersion.V2Tiled, 17, 2, RoutingShape.SkipExperts, false).SetName("V2 T=17 K=2 SiLU"),
        new TestCaseData(GroupedGemmVersion.V2Tiled, 9, 4, RoutingShape.AllToOne, true).SetName("V2 T=9 K=4 every token to the same experts, gpt-oss"),
    ];

    /// <summary>
    /// The MoE block over MXFP4 experts (E = 6, D = 64, F = 96, scales 127 +- 8): SiLU against Mixtral's block, gpt-oss's
    /// clamped GLU with its three biases against RefExpertGlu.MoeBlock, on the oracle's dequantized experts.
    /// </summary>
    [TestCaseSource(nameof(BlockCases))]
    public void MoeBlockMatchesOracle(GroupedGemmVersion version, int tokens, int topK, RoutingShape shape, bool gptOss)
    {
        const int e = 6, dim = 64, hidden = 96;
        var acc = TestDevice.Accelerator;
        var routing = MoeTestData.Routing(tokens * 5 + topK, tokens, topK, e, shape);
        // x small enough that the products stay O(1e2) with weights up to 6 * 2^8, large enough that g and u pass +-7.
        var x = Data.Uniform(tokens + 11, (long)tokens * dim, 0.02f);
        var w1 = Mxfp4TestData.Random(100 + tokens, e * hidden, dim);
        var w3 = Mxfp4TestData.Random(200 + tokens, e * hidden, dim);
        var w2 = Mxfp4TestData.Random(300 + tokens, e * dim, hidden, 120);
        var q1 = Mxfp4TestData.Split(w1.Dequant(), e);
        var q3 = Mxfp4TestData.Split(w3.Dequant(), e);
        var q2 = Mxfp4TestData.Split(w2.Dequant(), e);
        var bg = Data.Uniform(61, (long)e * hidden, 2f);
        var bu = Data.Uniform(62, (long)e * hidden, 2f);
        var b2 = Data.Uniform(63, (long)e * dim, 2f);
        var want = gptOss
            ? RefExpertGlu.MoeBlock(x, routing, q1, q3, q2, Mxfp4TestData.Split(bg, e), Mxfp4TestData.Split(bu, e), Mxfp4TestData.Split(b2, e),
                tokens, dim, hidden, 1.702, 7.0)
            : RefMoe.MoeBlock(x, routing, q1, q3, q2, tokens, dim, hidden);
        if (gptOss)
            ExpertGluTests.AssertClampsHit(x, routing, q1, q3, Mxfp4TestData.Split(bg, e), Mxfp4TestData.Split(bu, e), dim, hidden, 7.0);

        using var ws = new MoeWorkspace(acc, tokens, topK, e, dim, hidden);
        MoeTestData.Poison(ws);
        using var xb = TestDevice.Upload(x);
        using var ids = TestDevice.Upload(routing.ExpertIds);
        using var wts = TestDevice.Upload(routing.Weights);
        using var d1 = w1.Upload();
        using var d3 = w3.Upload();
        using var d2 = w2.Upload();
        using var bgb = TestDevice.Upload(bg);
        using var bub = TestDevice.Upload(bu);
        using var b2b = TestDevice.Upload(b2);
        using var output = TestDevice.PoisonedFloats((long)tokens * dim);
        var glu = gptOss ? ExpertGlu.GptOss(1.702f, 7f, bgb.View, bub.View, b2b.View) : default;
        Block.Value.Launch(acc.DefaultStream, ws, xb.View, ids.View, wts.View, tokens, d1.View, d3.View, d2.View, output.View,
            version: version, glu: glu);
        acc.Synchronize();
        Assert.That(ws.Last!.TileRows, Is.EqualTo(GroupedGemm.TileRows(version)));
        Check.Close(want, output.GetAsArray1D(), 1e-5, 1e-5 * want.Max(Math.Abs), $"{version} T={tokens} K={topK}");
    }

    /// <summary>fp32 rounding of a dot product: 1e-6 of the largest sum of |w| |x| over the outputs (weights span 2^16).</summary>
    private static double DotTol(float[] x, float[] w, int tokens, int n, int k)
    {
        double worst = 0;
        for (int t = 0; t < tokens; t++)
        {
            for (int r = 0; r < n; r++)
            {
                double s = 0;
                for (int i = 0; i < k; i++)
                    s += Math.Abs((double)x[t * k + i] * w[r * k + i]);
                worst = Math.Max(worst, s);
            }
        }

        return 1e-6 * worst;
    }
}
