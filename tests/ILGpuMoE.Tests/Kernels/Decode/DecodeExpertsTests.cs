using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Decode;

/// <summary>
/// decode/experts V1 and V2: up-gate against RefDecode.ExpertsUpGate, and up-gate + down together against Mixtral's MoE
/// block (RefMoe.MoeBlock on rmsnorm(x), plus the residual), on the values each reader holds. V2 runs with a grid cap
/// (MaxGroups) small enough that its groups loop over several blocks and its down projection splits D into chunks.
/// </summary>
public class DecodeExpertsTests
{
    private const float Eps = 1e-5f;

    private static DecodeExpertsKernel<TU> Kernel<TU>()
        where TU : struct, IRowUnits => DecodeTestUnits.Cached(() => DecodeExpertsKernel.Create<TU>(TestDevice.Accelerator));

    /// <summary>Which launches a case runs: both (checked against h and Mixtral's block), or one alone (the long-row
    /// cases: a long D makes the down grid large, a long F the up-gate grid; each is checked where it is cheap).</summary>
    private enum Stages
    {
        Both,
        UpGateOnly,
        DownOnly,
    }

    private sealed record Case(int Experts, int[] Ids, float[] Weights, int Dim, int Hidden, WeightType NormType, bool InPlace, string What,
        Stages Stages = Stages.Both, DecodeExpertsVersion Version = DecodeExpertsVersion.V2)
    {
        /// <summary>V2's grid cap: 3 groups per pair, so up-gate's groups take several (k, 8 f) blocks each and down
        /// splits D (32-row chunks) into up to 3 chunks per slice.</summary>
        public int MaxGroups => 3 * Ids.Length;
    }

    /// <summary>E = 3 (no power of two), K = 3: a dropped pair (its weight is not 0, so using it would show) and two
    /// pairs to the same expert; F and D odd for the 8 warps of a group (not multiples of 8 or 16).</summary>
    [Test]
    public void MoeMatchesMixtralEveryReader([ValueSource(typeof(DecodeTestUnits), nameof(DecodeTestUnits.Kinds))] string kind,
        [Values] DecodeExpertsVersion version)
    {
        int n = DecodeTestUnits.Cols(kind);
        Run(kind, new Case(3, [2, -1, 2], [0.5f, 0.3f, 0.2f], n, n, (WeightType)(Array.IndexOf(DecodeTestUnits.Kinds, kind) % 3), false,
            $"{kind} {version}", Version: version));
    }

    /// <summary>K = 1, and K = 2 on distinct experts of E = 5; the output written over the residual in place.</summary>
    [TestCase("bf16", 1)]
    [TestCase("q4-zero-g64", 1)]
    [TestCase("f32", 2)]
    [TestCase("q8", 2)]
    public void TopKEdgesInPlace(string kind, int topK)
    {
        int n = DecodeTestUnits.Cols(kind);
        var c = topK == 1
            ? new Case(5, [3], [1f], n, n, WeightType.BF16, true, kind + " K=1")
            : new Case(5, [4, 0], [0.7f, 0.3f], n, n, WeightType.BF16, true, kind + " K=2");
        Run(kind, c);
    }

    /// <summary>
    /// The T = 1 step of a Qwen2-MoE routing (moe/gating with shared slots): E' = 4 routed + 3 shared-expert chunks,
    /// K' = 2 + 3 slots, the three shared slots with one sigmoid weight (0.8) and experts E..E+2, against Mixtral's block
    /// over the E' stacked experts.
    /// </summary>
    [TestCase("bf16")]
    [TestCase("q4-zero-g64")]
    public void SharedSlotsAreMoreSlotsOfTheSameLaunch(string kind)
    {
        int n = DecodeTestUnits.Cols(kind);
        Run(kind, new Case(7, [2, 0, 4, 5, 6], [0.6f, 0.3f, 0.8f, 0.8f, 0.8f], n, n, WeightType.BF16, false, kind + " shared slots"));
    }

    /// <summary>D and F of 4096 + 160: the up-gate's norm and staging and the down projection's h loop over two tiles.</summary>
    [TestCase("bf16", DecodeExpertsVersion.V1)]
    [TestCase("bf16", DecodeExpertsVersion.V2)]
    [TestCase("q4-sym-g32", DecodeExpertsVersion.V2)]
    [TestCase("mxfp4", DecodeExpertsVersion.V1)]
    public void LongRowsLoopOverTiles(string kind, DecodeExpertsVersion version)
    {
        const int big = DecodeStaging.TileCols + 160;
        // Up-gate over a long D with a small F, then down over a long F with a small D (each as cheap as it can be).
        Run(kind, new Case(2, [1, 0], [0.6f, 0.4f], big, 32, WeightType.F32, false, $"{kind} {version} D long", Stages.UpGateOnly, version));
        Run(kind, new Case(2, [1, 0], [0.6f, 0.4f], 32, big, WeightType.F32, false, $"{kind} {version} F long", Stages.DownOnly, version));
    }

    /// <summary>
    /// V2's packed unit loop at odd row lengths, as DecodeLinearTests.PackedRowsAtOddUnitCounts (1 to 129 units, each
    /// path of the pipeline): up-gate over D of that many units (F small), then down over F of as many (D small); E = 2,
    /// K = 2, outputs NaN-poisoned, against the oracle.
    /// </summary>
    [Test]
    public void PackedRowsAtOddUnitCounts([Values("q8", "q4-sym-g32", "mxfp4")] string kind, [Values(1, 2, 3, 31, 33, 65, 97, 129)] int units)
    {
        int n = DecodeLinearTests.PackedCols(kind, units), small = DecodeLinearTests.PackedCols(kind, 2);
        Run(kind, new Case(2, [1, 0], [0.6f, 0.4f], n, small, WeightType.F32, false, $"{kind} {units} units D", Stages.UpGateOnly));
        Run(kind, new Case(2, [1, 0], [0.6f, 0.4f], small, n, WeightType.F32, false, $"{kind} {units} units F", Stages.DownOnly));
    }

    /// <summary>
    /// V2's down split: F = 4096 + 40 is two column tiles per pair, D = 104 is 1 to 4 chunks of 32 rows as the grid cap
    /// goes 1, 8 and 1000; a dropped pair between two live ones. Each lane's partial of a tile does not depend on the
    /// chunking and the combine adds tiles and pairs in a fixed order, so every cap gives the same bits, and so does the
    /// same launch again (the counters went back to 0); all within 1e-5 of the oracle.
    /// </summary>
    [Test]
    public void DownV2SplitKeepsTheBits()
    {
        const int e = 3, d = 104, f = DecodeStaging.TileCols + 40;
        int[] ids = [2, -1, 0];
        float[] wk = [0.5f, 0.3f, 0.2f];
        var w2 = Data.RoundToBf16(Data.Gaussian(301, (long)e * d * f, 1 / Math.Sqrt(f)));
        var hIn = Data.Uniform(302, (long)ids.Length * f, 2f);
        var residual = Data.Uniform(303, d);
        using var wb = TestDevice.Upload(w2.Select(BF16.FromFloat).ToArray());
        using var hb = TestDevice.Upload(hIn);
        using var idb = TestDevice.Upload(ids);
        using var wkb = TestDevice.Upload(wk);
        using var res = TestDevice.Upload(residual);
        using var output = TestDevice.PoisonedFloats(d);
        var s = TestDevice.Accelerator.DefaultStream;
        var kernel = Kernel<BF16Units>();
        var u2 = RowUnits.BF16(new BF16Weights(wb.View), e * d, f);
        var want = RefDecode.ExpertsDown(hIn, ids, wk, w2, residual, e, d, f);
        float[]? first = null;
        foreach (int cap in new[] { 1, 8, 1000, 8 })
        {
            var (tiles, _, chunks) = kernel.Split(ids.Length, u2, d, cap);
            Assert.That(tiles, Is.EqualTo(2), "two column tiles");
            output.CopyFromCPU(Enumerable.Repeat(float.NaN, d).ToArray());
            kernel.LaunchDown(s, hb.View, u2, idb.View, wkb.View, ids.Length, d, res.View, output.View, maxGroups: cap);
            s.Synchronize();
            var got = output.GetAsArray1D();
            Check.Close(want, got, 1e-5, DecodeTestUnits.DotAtol(f), $"cap {cap} ({chunks} chunks)");
            first ??= got;
            Assert.That(got, Is.EqualTo(first), $"cap {cap} ({chunks} chunks) gives the bits of cap 1");
        }

        Assert.That(kernel.Split(ids.Length, u2, d, 1000).Chunks, Is.EqualTo(4), "a large cap splits D = 104 into 4 chunks");
    }

    private static void Run(string kind, Case c)
    {
        int e = c.Experts, d = c.Dim, f = c.Hidden;
        int seed = c.What.Length * 7 + c.Ids.Length;
        // Weights scaled by 1/sqrt(fan-in) as a trained model's are: h and out stay O(1), so 1e-5 relative is fp32 rounding.
        var w1 = new TestMatrix(Data.Gaussian(seed + 1, (long)e * f * d, 1 / Math.Sqrt(d)), e * f, d, e);
        var w3 = new TestMatrix(Data.Gaussian(seed + 2, (long)e * f * d, 1 / Math.Sqrt(d)), e * f, d, e);
        var w2 = new TestMatrix(Data.Gaussian(seed + 3, (long)e * d * f, 1 / Math.Sqrt(f)), e * d, f, e);
        DecodeTestUnits.With(kind, [w1, w3, w2], new MoeBody(c, seed));
    }

    private sealed class MoeBody(Case c, int seed) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            int e = c.Experts, d = c.Dim, f = c.Hidden, k = c.Ids.Length;
            var x = Data.Uniform(seed + 4, d, 2f);
            var residual = Data.Uniform(seed + 5, d);
            var (norm, g, gb) = DecodeLinearTests.Norm(c.NormType, Data.Uniform(seed + 6, d, 1.5f));
            using var _ = gb;
            using var xb = TestDevice.Upload(x);
            using var ids = TestDevice.Upload(c.Ids);
            using var weights = TestDevice.Upload(c.Weights);
            using var h = TestDevice.PoisonedFloats((long)k * f);
            using var res = TestDevice.Upload(residual);
            using var outPoisoned = TestDevice.PoisonedFloats(d);
            var output = c.InPlace ? res : outPoisoned;
            var s = TestDevice.Accelerator.DefaultStream;
            var kernel = Kernel<TU>();
            if (c.Stages == Stages.DownOnly)
            {
                var hIn = Data.Uniform(seed + 7, (long)k * f, 2f);
                h.CopyFromCPU(hIn);
                kernel.LaunchDown(s, h.View, w[2], ids.View, weights.View, k, d, res.View, output.View, version: c.Version, maxGroups: c.MaxGroups);
                s.Synchronize();
                var wantDown = RefDecode.ExpertsDown(hIn, c.Ids, c.Weights, seen[2], residual, e, d, f);
                Check.Close(wantDown, output.GetAsArray1D(), 1e-5, DecodeTestUnits.DotAtol(f), c.What + " out");
                return;
            }

            kernel.LaunchUpGate(s, xb.View, norm, Eps, w[0], w[1], ids.View, k, f, h.View, version: c.Version, maxGroups: c.MaxGroups);
            if (c.Stages == Stages.Both)
                kernel.LaunchDown(s, h.View, w[2], ids.View, weights.View, k, d, res.View, output.View, version: c.Version, maxGroups: c.MaxGroups);
            s.Synchronize();

            var xs = RefOps.RmsNorm(x, g, 1, d, Eps);
            var wantH = RefDecode.ExpertsUpGate(xs, c.Ids, seen[0], seen[1], e, d, f);
            Check.Close(wantH, h.GetAsArray1D(), 1e-5, DecodeTestUnits.DotAtol(d), c.What + " h");
            if (c.Stages == Stages.UpGateOnly)
                return;

            // Mixtral's MoE block (experts as separate matrices, a loop over experts) on the same normalised x.
            var routing = new RefRouting(c.Ids, c.Weights.Select((v, i) => c.Ids[i] < 0 ? 0f : v).ToArray(), 1, k, 0);
            var moe = RefMoe.MoeBlock(xs, routing, Split(seen[0], e), Split(seen[1], e), Split(seen[2], e), 1, d, f);
            var want = moe.Select((v, i) => v + residual[i]).ToArray();
            Check.Close(want, output.GetAsArray1D(), 1e-5, DecodeTestUnits.DotAtol(f), c.What + " out");
        }

        private static float[][] Split(float[] stacked, int experts)
        {
            int n = stacked.Length / experts;
            return Enumerable.Range(0, experts).Select(i => stacked.AsSpan(i * n, n).ToArray()).ToArray();
        }
    }

    [Test]
    public void RefusesBadArguments()
    {
        var s = TestDevice.Accelerator.DefaultStream;
        const int e = 2, d = 16, f = 24;
        using var wb = TestDevice.Upload(Data.Uniform(71, (long)e * f * d));
        var w1 = RowUnits.F32(new F32Weights(wb.View), e * f, d);
        var w2 = RowUnits.F32(new F32Weights(wb.View), e * d, f);
        using var x = TestDevice.PoisonedFloats(d);
        using var ids = TestDevice.Upload(new[] { 0, 1 });
        using var weights = TestDevice.Upload(new[] { 0.5f, 0.5f });
        using var h = TestDevice.PoisonedFloats(2 * f);
        using var y = TestDevice.PoisonedFloats(d);
        var k = Kernel<F32Units>();
        Assert.Throws<ArgumentException>(() => k.LaunchUpGate(s, x.View, NormWeights.None, 0f, w1, w1, ids.View, 2, 25, h.View)); // rows not whole experts
        Assert.Throws<ArgumentException>(() => k.LaunchUpGate(s, x.View, NormWeights.None, 0f, w1, w2, ids.View, 2, f, h.View)); // w1, w3 differ
        Assert.Throws<ArgumentException>(() => k.LaunchUpGate(s, x.View, NormWeights.None, 0f, w1, w1, ids.View, 3, f, h.View)); // ids short
        Assert.Throws<ArgumentException>(() => k.LaunchUpGate(s, x.View, NormWeights.None, 0f, w1, w1, ids.View, 2, f, h.View.SubView(0, f))); // h short
        Assert.Throws<ArgumentException>(() => k.LaunchUpGate(s, x.View.SubView(0, 8), NormWeights.None, 0f, w1, w1, ids.View, 2, f, h.View));
        Assert.Throws<ArgumentException>(() => k.LaunchDown(s, h.View, w2, ids.View, weights.View, 2, 15, y.View, y.View)); // w2 rows not whole experts of D
        Assert.Throws<ArgumentException>(() => k.LaunchDown(s, h.View, w2, ids.View, weights.View.SubView(0, 1), 2, d, y.View, y.View));
        Assert.Throws<ArgumentException>(() => k.LaunchDown(s, h.View, w2, ids.View, weights.View, 2, d, y.View, y.View.SubView(0, 8)));
        Assert.Throws<ArgumentException>(() => k.LaunchDown(s, h.View, w2, ids.View, weights.View, 0, d, y.View, y.View));
        Assert.Throws<ArgumentException>(() => k.LaunchUpGate(s, x.View, NormWeights.None, 0f, w1, w1, ids.View, 2, f, h.View, maxGroups: -1));
        Assert.Throws<ArgumentException>(() => k.LaunchDown(s, h.View, w2, ids.View, weights.View, 2, d, y.View, y.View, version: (DecodeExpertsVersion)7));
        Assert.Throws<ArgumentException>(() => k.ReserveDown(s, 0, f, d));
        Assert.Throws<ArgumentException>(() => k.LaunchUpGate(s, h.View.SubView(0, d), NormWeights.None, 0f, w1, w1, ids.View, 2, f, h.View)); // h over x
        Assert.Throws<ArgumentException>(() => k.LaunchDown(s, h.View, w2, ids.View, weights.View, 2, d, y.View, h.View.SubView(f, d))); // output over h
    }
}
