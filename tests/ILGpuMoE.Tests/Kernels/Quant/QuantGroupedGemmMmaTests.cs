using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Moe;
using ILGpuMoE.Tests.Quant;

namespace ILGpuMoE.Tests.Kernels.Quant;

/// <summary>
/// The tensor-core grouped expert GEMM over packed experts (moe/grouped-gemm V6PackedMma, Quant/QuantGroupedGemmMma.cs),
/// run through the fragment-exact mma / ldmatrix / cp.async emulation, against the oracle on the dequantized experts
/// (RefGroupedExperts): ~1e-5 with the activations rounded to BF16 as the kernel rounds them (RefRoundTo.Bf16; each pass
/// on its own input: up-gate on x, down on the kernel's own h, so a BF16 tie flipped by F32 noise in h cannot show), and
/// ~1e-2 against the plain oracle (RefRoundTo.None, both passes chained). Shapes are small (the emulation pays ~32 shuffles per mma).
/// </summary>
public class QuantGroupedGemmMmaTests
{
    private const GroupedGemmVersion V = GroupedGemmVersion.V6PackedMma;
    private static readonly Dictionary<Type, object> Kernels = [];

    private static QuantGroupedGemmKernel<TQ> Kernel<TQ>()
        where TQ : struct, IQuantWeights
    {
        lock (Kernels)
        {
            if (!Kernels.TryGetValue(typeof(TQ), out var k))
                Kernels[typeof(TQ)] = k = QuantGroupedGemmKernel<TQ>.Create(TestDevice.Accelerator);
            return (QuantGroupedGemmKernel<TQ>)k;
        }
    }

    /// <summary>Quantizes one [outDim, inDim] matrix: the shared test schemes, plus "mxfp4".</summary>
    private static QuantizedMatrix Quantize(string scheme, float[] w, int outDim, int inDim) =>
        scheme == "mxfp4" ? ILGpuMoE.Quant.Mxfp4Matrix.Quantize(w, outDim, inDim) : QuantTestData.Quantize(scheme, w, outDim, inDim);

    /// <summary>Each expert quantized on its own, then stacked; the oracle's dequantized experts.</summary>
    private static (QuantizedMatrix Packed, float[][] Dequant) Experts(string scheme, int seed, int experts, int outDim, int inDim)
    {
        var parts = Enumerable.Range(0, experts)
            .Select(e => Quantize(scheme, Data.Gaussian(seed + e, (long)outDim * inDim, 1 / Math.Sqrt(inDim)), outDim, inDim))
            .ToArray();
        var stacked = QuantizedMatrix.Stack(parts);
        var dq = QuantTestData.RefDequant(stacked);
        return (stacked, Enumerable.Range(0, experts).Select(e => dq.AsSpan(e * outDim * inDim, outDim * inDim).ToArray()).ToArray());
    }

    private sealed record Problem(string Scheme, int Tokens, int TopK, int Experts, int Dim, int Hidden, RoutingShape Shape);

    private sealed record Outcome(float[] H, float[] Y, int[] Sorted, int[] RowExpert, int Rows)
    {
        public RefPermutation Permutation(RefRouting routing, int experts)
        {
            // The oracle's own permutation; the kernels' (stable, by expert) must be the same rows in the same order.
            var p = RefMoe.Permute(routing, experts);
            Assert.That(Sorted.Take(Rows), Is.EqualTo(p.SortedPairs), "sorted pairs");
            return p;
        }
    }

    /// <summary>Both passes through QuantGroupedGemmKernel with V6PackedMma on NaN-poisoned h and y.</summary>
    private static (Outcome Got, float[] X, float[][] W1, float[][] W3, float[][] W2, RefRouting Routing) Run(Problem p, ExpertGlu glu = default,
        Action<DeviceQuantMatrix, DeviceQuantMatrix, DeviceQuantMatrix>? useWeights = null)
    {
        var acc = TestDevice.Accelerator;
        var s = acc.DefaultStream;
        var routing = MoeTestData.Routing(p.Tokens * 17 + p.TopK, p.Tokens, p.TopK, p.Experts, p.Shape);
        var x = Data.Uniform(p.Tokens + 3, (long)p.Tokens * p.Dim);
        var (w1, q1) = Experts(p.Scheme, 1100, p.Experts, p.Hidden, p.Dim);
        var (w3, q3) = Experts(p.Scheme, 2100, p.Experts, p.Hidden, p.Dim);
        var (w2, q2) = Experts(p.Scheme, 3100, p.Experts, p.Dim, p.Hidden);
        int pairs = p.Tokens * p.TopK;
        using var perm = new MoePermutation(acc, pairs, p.Experts, GroupedGemm.TileRows(V));
        using var ids = TestDevice.Upload(routing.ExpertIds);
        using var xb = TestDevice.Upload(x);
        using var d1 = w1.Upload(acc);
        using var d3 = w3.Upload(acc);
        using var d2 = w2.Upload(acc);
        using var h = TestDevice.PoisonedFloats((long)pairs * p.Hidden);
        using var y = TestDevice.PoisonedFloats((long)pairs * p.Dim);
        MoeTestData.Permute.Launch(s, ids.View, p.Tokens, p.TopK, perm);
        if (useWeights is not null)
        {
            useWeights(d1, d3, d2);
        }
        else
        {
            switch (w1.Scheme)
            {
                case QuantScheme.Q8: Passes<Q8Weights>(); break;
                case QuantScheme.Q4: Passes<Q4Weights>(); break;
                case QuantScheme.Fp8: Passes<Fp8Weights>(); break;
                case QuantScheme.Mxfp4: Passes<Mxfp4Weights>(); break;
                default: throw new ArgumentOutOfRangeException(nameof(p), w1.Scheme, "no test dispatch for this scheme");
            }
        }

        acc.Synchronize();
        var sorted = perm.SortedPairs.GetAsArray1D();
        int rows = perm.Offsets.GetAsArray1D()[p.Experts];
        var rowExpert = sorted.Take(rows).Select(q => routing.ExpertIds[q]).ToArray();
        // Only the first `rows` sorted rows are defined (dropped pairs own none).
        var hGot = h.GetAsArray1D().AsSpan(0, rows * p.Hidden).ToArray();
        var yGot = y.GetAsArray1D().AsSpan(0, rows * p.Dim).ToArray();
        return (new Outcome(hGot, yGot, sorted, rowExpert, rows), x, q1, q3, q2, routing);

        void Passes<TQ>()
            where TQ : struct, IQuantWeights
        {
            var k = Kernel<TQ>();
            k.LaunchUpGate(s, V, perm, xb.View, p.Tokens, p.TopK, p.Dim, p.Hidden, d1.View<TQ>(), d3.View<TQ>(), h.View, glu);
            k.LaunchDown(s, V, perm, h.View, p.Tokens, p.TopK, p.Dim, p.Hidden, d2.View<TQ>(), y.View, glu);
        }
    }

    private static double MaxAbs(float[] a) => a.Length == 0 ? 0 : a.Max(v => Math.Abs((double)v));

    // D, F per scheme: Q4 needs multiples of its group; the byte schemes take D = 40 (a K step of 32 plus 8, the packed
    // rows padded) and F = 40: the outputs are ragged against the 64 (down) / 32 (up-gate) tile widths. Few rows per
    // expert keep the emulation cheap (m tiles past a tile's rows are skipped).
    private static IEnumerable<TestCaseData> Cases()
    {
        TestCaseData C(string scheme, int t, int k, int e, int d, int f, RoutingShape shape, string what) =>
            new TestCaseData(new Problem(scheme, t, k, e, d, f, shape)).SetName($"V6_{scheme}_T{t}_K{k}_E{e}_D{d}_F{f}_{shape}").SetDescription(what);
        return
        [
            C("q8", 5, 2, 4, 40, 40, RoutingShape.SkipExperts, "an expert with no token, packed rows padded past K"),
            C("q8", 1, 1, 4, 8, 40, RoutingShape.Random, "one token, K = 1, D = 8 (a quarter of a K step)"),
            C("q8", 2, 1, 4, 1, 33, RoutingShape.Random, "D = 1"),
            C("q4-sym-g32", 67, 1, 4, 64, 32, RoutingShape.AllToOne, "T = 67 to one expert: a full 64-row tile and a 3-row one"),
            C("q4-zero-g64", 5, 8, 8, 64, 64, RoutingShape.Random, "K = 8, zero points, a fold every 2 steps"),
            C("q4-row", 5, 2, 4, 96, 64, RoutingShape.AllToOne, "every token to the same experts, G = K = 96 (no power of two)"),
            C("q4-spread-g32", 5, 2, 4, 96, 32, RoutingShape.Random, "group scales 4x-64x apart: a scale from the wrong group is far off"),
            C("q4-zero-g128", 2, 1, 4, 256, 128, RoutingShape.Dropped, "g128 with zeros, two groups along D, dropped pairs"),
            C("q4-sym-g128", 1, 1, 4, 128, 128, RoutingShape.Random, "g128 symmetric, one group per row"),
            C("fp8-block", 5, 2, 4, 96, 40, RoutingShape.SkipExperts, "16 x 32 blocks: a fold every step"),
            C("fp8-block128", 1, 1, 4, 256, 40, RoutingShape.Random, "128 x 128 blocks, two along D"),
            C("fp8-tensor", 5, 2, 4, 40, 40, RoutingShape.Random, "one scale per tensor, K not a multiple of 32"),
            C("mxfp4", 5, 2, 4, 64, 32, RoutingShape.Random, "E8M0 per 32: a fold every step"),
        ];
    }

    [TestCaseSource(nameof(Cases))]
    public void PassesMatchTheOracleWithBf16Activations(object boxed)
    {
        var p = (Problem)boxed;
        var (got, x, q1, q3, q2, routing) = Run(p);
        Assert.That(got.Rows, Is.EqualTo(routing.ExpertIds.Count(id => id >= 0)));
        if (p.Shape == RoutingShape.SkipExperts)
            Assert.That(got.RowExpert, Does.Not.Contain(p.Experts - 1), "the routing leaves the last expert without tokens");
        var perm = got.Permutation(routing, p.Experts);
        var silu = RefExpertActivation.SiLU;

        var hWant = RefGroupedExperts.UpGate(x, perm, p.Tokens, p.TopK, q1, q3, silu, p.Dim, p.Hidden, RefRoundTo.Bf16);
        Check.Close(hWant, got.H, 1e-5, 1e-5 * MaxAbs(hWant), $"{p.Scheme} h vs BF16-activation oracle");
        var yWant = RefGroupedExperts.Down(got.H, perm, q2, silu, p.Dim, p.Hidden, RefRoundTo.Bf16);
        Check.Close(yWant, got.Y, 1e-5, 1e-5 * MaxAbs(yWant), $"{p.Scheme} y vs BF16-activation oracle (on the kernel's h)");

        // Against the plain oracle (F32 activations, both passes chained) only BF16's rounding apart.
        var hPlain = RefGroupedExperts.UpGate(x, perm, p.Tokens, p.TopK, q1, q3, silu, p.Dim, p.Hidden, RefRoundTo.None);
        var yPlain = RefGroupedExperts.Down(hPlain, perm, q2, silu, p.Dim, p.Hidden, RefRoundTo.None);
        Check.Close(hPlain, got.H, 1e-2, 1e-2 * MaxAbs(hPlain), $"{p.Scheme} h vs plain oracle");
        Check.Close(yPlain, got.Y, 1e-2, 1e-2 * MaxAbs(yPlain), $"{p.Scheme} y vs plain oracle");
        if (p.Dim >= 8)
        {
            // The rounded oracle is a different function: were the kernel to skip the rounding, the 1e-5 check would fail.
            double apart = hPlain.Zip(hWant).Max(t => Math.Abs(t.First - t.Second)) / MaxAbs(hPlain);
            Assert.That(apart, Is.GreaterThan(1e-4), "BF16 activations move h by more than the tolerance");
        }
    }

    /// <summary>gpt-oss's clamped GLU with gate/up/down biases in the epilogues, over MXFP4 experts (gpt-oss's own).</summary>
    [TestCase("mxfp4")]
    public void GptOssEpiloguesMatchTheOracle(string scheme)
    {
        const int e = 4, d = 64, f = 32, t = 5, k = 2;
        var acc = TestDevice.Accelerator;
        var bg = Data.Uniform(71, (long)e * f, 2f);
        var bu = Data.Uniform(72, (long)e * f, 2f);
        var b2 = Data.Uniform(73, (long)e * d, 2f);
        using var bgb = TestDevice.Upload(bg);
        using var bub = TestDevice.Upload(bu);
        using var b2b = TestDevice.Upload(b2);
        var glu = ExpertGlu.GptOss(1.702f, 1.5f, bgb.View, bub.View, b2b.View); // limit 1.5: the clamps are hit
        var p = new Problem(scheme, t, k, e, d, f, RoutingShape.Random);
        var (got, x, q1, q3, q2, routing) = Run(p, glu);
        float[][] PerExpert(float[] a, int n) => Enumerable.Range(0, e).Select(i => a.AsSpan(i * n, n).ToArray()).ToArray();
        var act = new RefExpertActivation(true, 1.702, 1.5, PerExpert(bg, f), PerExpert(bu, f), PerExpert(b2, d));
        var perm = got.Permutation(routing, e);
        var hWant = RefGroupedExperts.UpGate(x, perm, t, k, q1, q3, act, d, f, RefRoundTo.Bf16);
        var yWant = RefGroupedExperts.Down(got.H, perm, q2, act, d, f, RefRoundTo.Bf16);

        Check.Close(hWant, got.H, 1e-5, 1e-5 * MaxAbs(hWant), $"{scheme} gpt-oss h");
        Check.Close(yWant, got.Y, 1e-5, 1e-5 * MaxAbs(yWant), $"{scheme} gpt-oss y");
    }

    /// <summary>
    /// The MoE block through the packed-experts seam asking for V6PackedMma: the workspace's 64-row permutation, the
    /// combine, and GPTQ act-order (each pair's input gathered in its expert's column order, then a plain pass).
    /// </summary>
    [TestCase(true)] // act-order: the seam, the 64-row permutation, the gather and the combine in one run
    public void MoeBlockRunsV6ThroughTheSeam(bool actOrder)
    {
        const int e = 4, d = 64, f = 64, tokens = 9, k = 2;
        var acc = TestDevice.Accelerator;
        var routing = MoeTestData.Routing(91, tokens, k, e, RoutingShape.SkipExperts);
        var x = Data.Uniform(92, (long)tokens * d);
        var (w1, q1) = Experts("q4-sym-g32", 4100, e, f, d);
        var (w3, q3) = Experts("q4-sym-g32", 5100, e, f, d);
        var (w2, q2) = Experts("q4-sym-g32", 6100, e, d, f);
        var perms = Enumerable.Range(0, e).Select(i => Enumerable.Range(0, d).OrderBy(j => (j * 37 + i * 11) % d).ToArray()).ToArray();
        float[] InputOrder(float[] packed, int[] perm)
        {
            var w = new float[packed.Length];
            for (int n = 0; n < f; n++)
            {
                for (int j = 0; j < d; j++)
                    w[n * d + perm[j]] = packed[n * d + j];
            }

            return w;
        }

        var r1 = actOrder ? Enumerable.Range(0, e).Select(i => InputOrder(q1[i], perms[i])).ToArray() : q1;
        var r3 = actOrder ? Enumerable.Range(0, e).Select(i => InputOrder(q3[i], perms[i])).ToArray() : q3;
        var want = RefMoe.MoeBlock(x, routing, r1, r3, q2, tokens, d, f);
        using var ws = new MoeWorkspace(acc, tokens, k, e, d, f, permutedInput: actOrder);
        MoeTestData.Poison(ws);
        using var xb = TestDevice.Upload(x);
        using var ids = TestDevice.Upload(routing.ExpertIds);
        using var wts = TestDevice.Upload(routing.Weights);
        using var pb = TestDevice.Upload(perms.SelectMany(q => q).ToArray());
        using var d1 = w1.Upload(acc);
        using var d3 = w3.Upload(acc);
        using var d2 = w2.Upload(acc);
        using var output = TestDevice.PoisonedFloats((long)tokens * d);
        QuantMoeBlockKernels<Q4Weights>.Create(acc).Launch(acc.DefaultStream, ws, xb.View, ids.View, wts.View, tokens, d1.View<Q4Weights>(),
            d3.View<Q4Weights>(), d2.View<Q4Weights>(), output.View, version: V, inputPermutation: actOrder ? pb.View : default);
        acc.Synchronize();
        Assert.That(ws.Last!.TileRows, Is.EqualTo(QuantGroupedGemmMmaKernels.TileM));
        // BF16 activations in both passes: the plain oracle within 1e-2 (the exact form is checked per pass above).
        Check.Close(want, output.GetAsArray1D(), 1e-2, 1e-2 * MaxAbs(want), $"MoE block V6 act-order={actOrder}");
    }

    [Test]
    public void VersionIsOfferedForPackedExpertsButNeverChosen()
    {
        Assert.That(GroupedGemm.PackedVersions, Does.Contain(V));
        Assert.That(GroupedGemm.FloatVersions, Does.Not.Contain(V));
        Assert.That(GroupedGemm.TileRows(V), Is.EqualTo(64));
        foreach (int t in new[] { 1, 4, 32, 4096 })
            Assert.That(GroupedGemm.Choose(t, 2, 8, packed: true), Is.Not.EqualTo(V), $"T = {t}: the lead's policy picks it, not Choose");
        Assert.That(QuantGroupedGemmMmaKernels.MaxSharedBytes, Is.LessThan(48 * 1024), "no opt-in to more than 48 KB needed");
        Assert.That(QuantGroupedGemmMmaKernels.SharedWordCount(8) * 4, Is.LessThanOrEqualTo(QuantGroupedGemmMmaKernels.MaxSharedBytes));
        Assert.That(QuantGroupedGemmMmaKernels.SharedWordCount(4) * 4, Is.EqualTo(QuantGroupedGemmMmaKernels.MaxSharedBytes));
    }

    [Test]
    public void RefusesWhatItCannotRun()
    {
        var acc = TestDevice.Accelerator;
        var s = acc.DefaultStream;
        using var buf = TestDevice.PoisonedFloats(1 << 14);

        // FP8 scale blocks 48 wide over K = 96: a K step of 32 would straddle two scales.
        var (f8, _) = Experts("fp8-block", 1, 2, 32, 96);
        var blocky = Fp8Matrix.Quantize(Data.Gaussian(3, 2 * 32 * 96, 0.1), 64, 96, 16, 48);
        using var dBlocky = blocky.Upload(acc);
        using var perm = new MoePermutation(acc, 4, 2, GroupedGemm.TileRows(V));
        var e = Assert.Throws<ArgumentException>(() => Kernel<Fp8Weights>().LaunchUpGate(s, V, perm, buf.View, 2, 2, 96, 32,
            dBlocky.View<Fp8Weights>(), dBlocky.View<Fp8Weights>(), buf.View))!;
        Assert.That(e.Message, Does.Contain("48").And.Contain("multiple of 32"), e.Message);
        _ = f8;

        // Tiles taller than the kernel's 64 rows.
        var (q4, _) = Experts("q4-sym-g32", 2, 2, 32, 64);
        using var d4 = q4.Upload(acc);
        using var tall = new MoePermutation(acc, 4, 2, 128);
        e = Assert.Throws<ArgumentException>(() => Kernel<Q4Weights>().LaunchUpGate(s, V, tall, buf.View, 2, 2, 64, 32,
            d4.View<Q4Weights>(), d4.View<Q4Weights>(), buf.View))!;
        Assert.That(e.Message, Does.Contain("tile rows <= 64"), e.Message);

        // Packed words off a 16-byte boundary: cp.async reads whole units.
        var good = d4.View<Q4Weights>();
        using var shifted = acc.Allocate1D<uint>(good.Words.Length + 1);
        var off = new Q4Weights(shifted.View.SubView(1, good.Words.Length), good.Scales, good.Zeros, good.Rows, good.Cols, good.GroupSize);
        e = Assert.Throws<ArgumentException>(() => Kernel<Q4Weights>().LaunchDown(s, V, perm, buf.View, 2, 2, 32, 64, off, buf.View))!;
        Assert.That(e.Message, Does.Contain("w2.Data").And.Contain("16-byte"), e.Message);
    }

    /// <summary>
    /// Every shared read of a warp, from the kernel's own index functions: lanes that hit the same bank read the same
    /// word (a broadcast), so no read is replayed. B fragments per scheme width (4 words of nibbles, 12 of bytes), A
    /// through ldmatrix (each 8-lane phase reads 8 rows of 16 bytes), and the A stores of the BF16 pairs.
    /// </summary>
    [Test]
    public void SharedReadsAreFreeOfBankConflicts()
    {
        static int Ways(IEnumerable<int> words) =>
            words.Distinct().GroupBy(w => w % 32).Max(g => g.Count());

        foreach (int vpw in new[] { 4, 8 })
        {
            for (int warp = 0; warp < 4; warp++)
            {
                for (int nTile = 0; nTile < 2; nTile++)
                {
                    for (int kk = 0; kk < 2; kk++)
                    {
                        for (int r = 0; r < 2; r++)
                        {
                            var words = Enumerable.Range(0, 32).Select(l =>
                                QuantGroupedGemmMmaKernels.BWord(0, vpw, 16 * warp + 8 * nTile + (l >> 2), kk, r, l & 3));
                            Assert.That(Ways(words), Is.EqualTo(1), $"B read vpw={vpw} warp {warp} n tile {nTile} kk {kk} R{r}");
                        }
                    }
                }
            }
        }

        // The unpadded byte rows (8 words) would conflict: the padding is what the test above proves works.
        Assert.That(Ways(Enumerable.Range(0, 32).Select(l => (l >> 2) * 8 + (2 * (l & 3)) / 4)), Is.EqualTo(2));

        for (int i = 0; i < 4; i++)
        {
            for (int kk = 0; kk < 2; kk++)
            {
                for (int phase = 0; phase < 4; phase++)
                {
                    // ldmatrix: each phase of 8 lanes reads 8 rows x 4 words; all 32 words must sit in distinct banks.
                    var words = Enumerable.Range(8 * phase, 8)
                        .SelectMany(l => Enumerable.Range(0, 4).Select(j => QuantGroupedGemmMmaKernels.AFragWord(0, i, kk, l) + j));
                    Assert.That(Ways(words), Is.EqualTo(1), $"ldmatrix m tile {i} kk {kk} phase {phase}");
                }
            }
        }

        for (int j = 0; j < 8; j++)
        {
            // A stores: two rows of 16 words per warp store; padded rows of 20 overlap in 4 banks (2-way, once per step).
            var words = Enumerable.Range(0, 32).Select(l => QuantGroupedGemmMmaKernels.ARow(0, l, j) * QuantGroupedGemmMmaKernels.ALd + (l & 15));
            Assert.That(Ways(words), Is.LessThanOrEqualTo(2), $"A store slot {j}");
        }
    }
}
