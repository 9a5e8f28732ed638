using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Moe;

/// <summary>
/// The tensor-core grouped expert GEMM (V5Mma, GroupedGemmMma.cs) through the MoE block (permute -> TensorCoreExperts ->
/// combine) on the CPU accelerator, where mma, ldmatrix and cp.async run their fragment-exact emulation. Each run is
/// checked three ways: the workspace's h against RefGroupedExperts.UpGate with x rounded to the 16-bit type as the kernel
/// rounds it (1e-5), the output against the oracle's down pass and combine applied to that same h (1e-5: the rounding of
/// h then sees identical inputs on both sides; an oracle h computed in double would, once in ~1e4 values, round to the
/// other 16-bit neighbour than the kernel's F32 h), and the output against the unrounded oracle (1e-2: BF16 keeps 8 bits).
/// </summary>
public class GroupedGemmMmaTests
{
    private const double Rtol = 1e-5;
    private const float Alpha = 1.702f, Limit = 7f;

    private static readonly Lazy<GroupedGemmMmaKernel<Bf16Mma>> Bf16Kernel = new(() => GroupedGemmMmaKernel<Bf16Mma>.Create(TestDevice.Accelerator));
    private static readonly Lazy<GroupedGemmMmaKernel<F16Mma>> F16Kernel = new(() => GroupedGemmMmaKernel<F16Mma>.Create(TestDevice.Accelerator));
    private static readonly Lazy<MoeBlock> Block = new(() => MoeBlock.Create(TestDevice.Accelerator));

    private sealed record Problem(int Tokens, int Dim, int Hidden, int Experts, RefRouting Routing, float[] X, float[][] W1, float[][] W3,
        float[][] W2, bool Bf16, bool GptOss, float[][]? GateBias, float[][]? UpBias, float[][]? DownBias)
    {
        public RefRoundTo Rounding => Bf16 ? RefRoundTo.Bf16 : RefRoundTo.F16;

        public RefExpertActivation Activation => GptOss
            ? new RefExpertActivation(true, Alpha, Limit, GateBias, UpBias, DownBias)
            : RefExpertActivation.SiLU;
    }

    private static Problem Make(int seed, int tokens, int dim, int hidden, int experts, int topK, RoutingShape shape, bool bf16, bool gptOss = false)
    {
        var routing = MoeTestData.Routing(seed, tokens, topK, experts, shape);
        float[][] Round(float[][] w) => bf16 ? MoeTestData.ToBf16Values(w) : w.Select(Data.RoundToHalf).ToArray();
        var w1 = Round(MoeTestData.ExpertWeights(seed + 1, experts, hidden, dim));
        var w3 = Round(MoeTestData.ExpertWeights(seed + 2, experts, hidden, dim));
        var w2 = Round(MoeTestData.ExpertWeights(seed + 3, experts, dim, hidden));
        // gpt-oss: x scaled and biases in +-2 so that g and u cross the clamps (checked below).
        var x = Data.Uniform(seed + 4, (long)tokens * dim, gptOss ? 10f : 1f);
        float[][]? Bias(int s, int n) => gptOss ? Enumerable.Range(0, experts).Select(e => Data.Uniform(s * 97 + e, n, 2f)).ToArray() : null;
        return new Problem(tokens, dim, hidden, experts, routing, x, w1, w3, w2, bf16, gptOss, Bias(seed + 5, hidden), Bias(seed + 6, hidden), Bias(seed + 7, dim));
    }

    private static ushort[] Bits(float[][] w, bool bf16) =>
        MoeTestData.Stack(w).Select(v => bf16 ? BF16.FromFloat(v) : BitConverter.HalfToUInt16Bits((System.Half)v)).ToArray();

    /// <summary>The kernel's outputs of one MoE block run: h [P, F] and the block output [T, D].</summary>
    private sealed record Result(float[] H, float[] Output);

    private static Result Run(Problem p)
    {
        var acc = TestDevice.Accelerator;
        int topK = p.Routing.TopK;
        using var ws = new MoeWorkspace(acc, p.Tokens, topK, p.Experts, p.Dim, p.Hidden);
        MoeTestData.Poison(ws);
        using var x = TestDevice.Upload(p.X);
        using var ids = TestDevice.Upload(p.Routing.ExpertIds);
        using var weights = TestDevice.Upload(p.Routing.Weights);
        using var w1 = TestDevice.Upload(Bits(p.W1, p.Bf16));
        using var w3 = TestDevice.Upload(Bits(p.W3, p.Bf16));
        using var w2 = TestDevice.Upload(Bits(p.W2, p.Bf16));
        using var bg = TestDevice.Upload(p.GateBias is null ? [0f] : MoeTestData.Stack(p.GateBias));
        using var bu = TestDevice.Upload(p.UpBias is null ? [0f] : MoeTestData.Stack(p.UpBias));
        using var b2 = TestDevice.Upload(p.DownBias is null ? [0f] : MoeTestData.Stack(p.DownBias));
        using var output = TestDevice.PoisonedFloats((long)p.Tokens * p.Dim);
        var glu = p.GptOss ? ExpertGlu.GptOss(Alpha, Limit, bg.View, bu.View, b2.View) : default;
        var s = acc.DefaultStream;
        if (p.Bf16)
            Block.Value.Launch(s, ws, x.View, ids.View, weights.View, p.Tokens, new TensorCoreExperts<Bf16Mma>(Bf16Kernel.Value, w1.View, w3.View, w2.View, glu), output.View);
        else
            Block.Value.Launch(s, ws, x.View, ids.View, weights.View, p.Tokens, new TensorCoreExperts<F16Mma>(F16Kernel.Value, w1.View, w3.View, w2.View, glu), output.View);
        s.Synchronize();
        Assert.That(ws.Last!.TileRows, Is.EqualTo(GroupedGemmMmaKernels.TileM), "permuted with V5Mma's tile height");
        int rows = ws.Last.Offsets.GetAsArray1D()[p.Experts];
        var h = rows == 0 ? [] : ws.H.View.SubView(0, (long)rows * p.Hidden).GetAsArray1D();
        return new Result(h, output.GetAsArray1D());
    }

    /// <summary>The three checks of the class comment.</summary>
    private static void Verify(Problem p, Result got, string what)
    {
        var perm = RefMoe.Permute(p.Routing, p.Experts);
        var act = p.Activation;
        var wantH = RefGroupedExperts.UpGate(p.X, perm, p.Tokens, p.Routing.TopK, p.W1, p.W3, act, p.Dim, p.Hidden, p.Rounding);
        Assert.That(got.H, Has.Length.EqualTo(wantH.Length), $"{what}: rows");
        if (wantH.Length > 0)
            Check.Close(wantH, got.H, Rtol, Rtol * wantH.Max(Math.Abs), what + " h");

        var y = RefGroupedExperts.Down(got.H, perm, p.W2, act, p.Dim, p.Hidden, p.Rounding);
        var want = RefGroupedExperts.Combine(y, perm, p.Routing, p.Dim);
        double scale = Math.Max(want.Max(Math.Abs), 1e-3);
        Check.Close(want, got.Output, Rtol, Rtol * scale, what + " output");

        var exact = p.GptOss
            ? RefExpertGlu.MoeBlock(p.X, p.Routing, p.W1, p.W3, p.W2, p.GateBias, p.UpBias, p.DownBias, p.Tokens, p.Dim, p.Hidden, Alpha, Limit)
            : RefMoe.MoeBlock(p.X, p.Routing, p.W1, p.W3, p.W2, p.Tokens, p.Dim, p.Hidden);
        Check.Close(exact, got.Output, 1e-2, 1e-2 * scale, what + " output vs the unrounded oracle");
    }

    // E = 8. T = 1, 5, 67; D = 40, 72 (input dims with a ragged k-step of 8 after one or two full ones; down's 64
    // outputs ragged at 40 and 8); F = 24, 56, 136 (up-gate's groups of 32 f ragged at 24 and 8; down's input dim ragged
    // at 24 and 8); K = 1 and 8. 67 tokens all to one expert: a full 64-row tile and a ragged one of 3, 7 experts with no
    // token; K = 8 at T = 1: 8 one-row tiles; a fully dropped routing: no tile at all, every schedule slot unused.
    // CPU cost: the emulation does an mma in ~32 warp shuffles; these shapes keep the whole class near a minute.
    private static readonly (int T, int D, int F, int K, RoutingShape Shape, bool Bf16)[] Cases =
    [
        (67, 72, 56, 1, RoutingShape.AllToOne, true),
        (5, 40, 136, 1, RoutingShape.AllToOne, false),
        (1, 40, 24, 8, RoutingShape.Random, false),
        (3, 40, 56, 2, RoutingShape.SkipExperts, true),
        (1, 72, 56, 2, RoutingShape.Dropped, true),
    ];

    private static IEnumerable<TestCaseData> ShapeCases() => Cases.Select(c => new TestCaseData(c.T, c.D, c.F, c.K, c.Shape, c.Bf16));

    [TestCaseSource(nameof(ShapeCases))]
    public void MoeBlockMatchesTheRoundedOracle(int tokens, int dim, int hidden, int topK, RoutingShape shape, bool bf16)
    {
        var p = Make(1000 + tokens * 7 + dim + hidden + topK, tokens, dim, hidden, 8, topK, shape, bf16);
        var got = Run(p);
        string what = $"T={tokens} D={dim} F={hidden} K={topK} {shape} {(bf16 ? "bf16" : "f16")}";
        Verify(p, got, what);
        if (shape == RoutingShape.Dropped)
            Assert.That(got.Output[..dim].All(v => v == 0f), "a token with every pair dropped gets 0");
        if (shape == RoutingShape.AllToOne)
            Assert.That(p.Routing.ExpertIds.Distinct().Count(), Is.EqualTo(topK), "one expert set takes every token");
    }

    [TestCase(true)]
    [TestCase(false)]
    public void GptOssClampedGluWithBiases(bool bf16)
    {
        var p = Make(1300, 2, 40, 56, 8, 2, RoutingShape.Random, bf16, gptOss: true);
        ExpertGluTests.AssertClampsHit(p.X.Select(v => RefGroupedExperts.Round(v, p.Rounding)).ToArray(), p.Routing, p.W1, p.W3, p.GateBias!, p.UpBias!,
            p.Dim, p.Hidden, Limit);
        Verify(p, Run(p), $"gpt-oss {(bf16 ? "bf16" : "f16")}");
    }

    [Test]
    public void LdmatrixPhasesAreBankConflictFree()
    {
        // ldmatrix reads 8 rows of 16 bytes per phase (lanes 8i..8i+7): the 8 rows at any 16-bit column chunk must hit
        // 32 distinct banks. With rows of 16 words (no pad) they would all start on bank 0 or 16 (8-way conflicts).
        for (int row0 = 0; row0 < GroupedGemmMmaKernels.TileM; row0 += 8)
        {
            for (int chunk = 0; chunk < GroupedGemmMmaKernels.TileK / 8; chunk++)
            {
                var banks = Enumerable.Range(0, 8).SelectMany(r => Enumerable.Range(0, 4).Select(w => (GroupedGemmMmaKernels.RowWord(row0 + r, chunk) + w) % 32));
                Assert.That(banks.Distinct().Count(), Is.EqualTo(32), $"rows {row0}..{row0 + 7}, chunk {chunk}");
                var unpadded = Enumerable.Range(0, 8).Select(r => ((row0 + r) * 16 + chunk * 4) % 32).Distinct().Count();
                Assert.That(unpadded, Is.EqualTo(2), "without the pad, 8 rows share two bank groups");
            }
        }

        Assert.That(GroupedGemmMmaKernels.SharedBytes, Is.LessThanOrEqualTo(48 * 1024), "no opt-in above 48 KB needed");
        Assert.That(GroupedGemmMmaKernels.StageWords % 4, Is.EqualTo(0), "stages start on 16-byte boundaries (cp.async, ldmatrix)");
    }

    [Test]
    public void VersionBookkeeping()
    {
        Assert.That(GroupedGemm.TileRows(GroupedGemmVersion.V5Mma), Is.EqualTo(64));
        Assert.That(GroupedGemm.AllTileRows, Does.Contain(64));
        Assert.That(GroupedGemm.FloatVersions, Does.Not.Contain(GroupedGemmVersion.V5Mma));
        foreach (int t in new[] { 1, 16, 512, 4096 })
        {
            foreach (bool packed in new[] { false, true })
                Assert.That(GroupedGemm.Choose(t, 2, 8, packed), Is.Not.EqualTo(GroupedGemmVersion.V5Mma), "V5Mma is not chosen by default yet");
        }

        var experts = new TensorCoreExperts<Bf16Mma>(Bf16Kernel.Value, default, default, default);
        Assert.That(experts.Resolve(null, 512, 2, 8), Is.EqualTo(GroupedGemmVersion.V5Mma));
        var e = Assert.Throws<ArgumentException>(() => experts.Resolve(GroupedGemmVersion.V2Tiled, 512, 2, 8))!;
        Assert.That(e.Message, Does.Contain("V2Tiled"));
        Assert.That(GroupedGemmMmaKernel<Bf16Mma>.Supports(40, 56), Is.True);
        Assert.That(GroupedGemmMmaKernel<Bf16Mma>.Supports(36, 56), Is.False);
        Assert.That(GroupedGemmMmaKernel<Bf16Mma>.Supports(40, 60), Is.False);
    }

    [Test]
    public void RefusesShapesAndMisalignedWeights()
    {
        var acc = TestDevice.Accelerator;
        const int E = 4, T = 2, K = 2;
        var s = acc.DefaultStream;
        void Expect(Action launch, string name)
        {
            var e = Assert.Throws<ArgumentException>(() => launch())!;
            Assert.That(e.Message, Does.Contain(name), e.Message);
        }

        using (var ws = new MoeWorkspace(acc, T, K, E, 36, 56))
        {
            using var x = TestDevice.Upload(Data.Uniform(1, T * 36));
            using var w = TestDevice.Upload(new ushort[E * 56 * 36]);
            var perm = ws.Permutation(64);
            Expect(() => Bf16Kernel.Value.LaunchUpGate(s, perm, x.View, T, K, 36, 56, w.View, w.View, ws.H.View), "dim (36)");
            Expect(() => Bf16Kernel.Value.LaunchDown(s, perm, ws.H.View, T, K, 36, 56, w.View, ws.Y.View), "dim (36)");
        }

        using (var ws = new MoeWorkspace(acc, T, K, E, 40, 56))
        {
            using var x = TestDevice.Upload(Data.Uniform(2, T * 40));
            using var w = TestDevice.Upload(new ushort[E * 56 * 40 + 8]);
            var good = w.View.SubView(0, E * 56 * 40);
            var off = w.View.SubView(2, E * 56 * 40); // 4 bytes past a 16-byte boundary
            var perm = ws.Permutation(64);
            Expect(() => Bf16Kernel.Value.LaunchUpGate(s, perm, x.View, T, K, 40, 56, off, good, ws.H.View), "w1");
            Expect(() => Bf16Kernel.Value.LaunchUpGate(s, perm, x.View, T, K, 40, 56, good, off, ws.H.View), "w3");
            Expect(() => F16Kernel.Value.LaunchDown(s, perm, ws.H.View, T, K, 40, 56, off, ws.Y.View), "w2");
            // 2 bytes in: a cast of this view to 32-bit words would drop the leading half word and look aligned.
            var half = w.View.SubView(1, E * 56 * 40);
            Expect(() => Bf16Kernel.Value.LaunchUpGate(s, perm, x.View, T, K, 40, 56, half, good, ws.H.View), "w1");
            Expect(() => Bf16Kernel.Value.LaunchDown(s, perm, ws.H.View, T, K, 40, 56, good.SubView(0, E * 56 * 40 - 8), ws.Y.View), "w2");
            Expect(() => Bf16Kernel.Value.LaunchUpGate(s, ws.Permutation(64), x.View, T, K, 40, 56, good, good, ws.H.View.SubView(0, 10)), "h");
        }
    }
}
