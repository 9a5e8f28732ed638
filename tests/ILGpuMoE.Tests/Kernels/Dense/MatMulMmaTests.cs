using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using static ILGpuMoE.Kernels.Dense.MatMulMmaLayout;

namespace ILGpuMoE.Tests.Kernels.Dense;

/// <summary>
/// MatMul V3-MMA (kernels/ILGpuMoE.Kernels/Dense/MatMul/MatMulMma.cs) on the CPU accelerator, where mma, ldmatrix and
/// cp.async run their fragment-exact emulations: the tiling, the 3-stage pipeline, the zero fill and the masked
/// epilogue against the oracle. The exact oracle rounds x to the weights' 16-bit type first (RefRounding), as the
/// kernel does; the plain one shows the rounding costs no more than BF16's 2^-9 per product.
/// </summary>
public class MatMulMmaTests
{
    private sealed class Case(int tokens, int outDim, int inDim, int seed, bool accumulate) : IWeightsTest
    {
        public void Run<TW>(TW w, float[] seen)
            where TW : struct, IWeights
        {
            bool bf16 = typeof(TW) == typeof(BF16Weights);
            var kernel = MatMulKernel.Create<TW>(TestDevice.Accelerator);
            Assert.That(kernel.SupportsMma(w, inDim), Is.True);
            var x = Data.Uniform(seed + 1, (long)tokens * inDim);
            var y0 = Data.Uniform(seed + 2, (long)tokens * outDim);
            using var xBuf = TestDevice.Upload(x);
            using var yBuf = accumulate ? TestDevice.Upload(y0) : TestDevice.PoisonedFloats((long)tokens * outDim);
            var got = DenseTestWeights.Run(s => kernel.Launch(MatMulVersion.V3Mma, s, xBuf.View, w, yBuf.View, tokens, outDim, inDim, accumulate), yBuf);

            var exact = RefOps.MatMulT(bf16 ? RefRounding.ToBf16(x) : RefRounding.ToF16(x), seen, tokens, outDim, inDim);
            var plain = RefOps.MatMulT(x, seen, tokens, outDim, inDim);
            // The error scale of each output: sum |x||w| over its dot product (plus |y0| when it is added).
            var scale = new double[exact.Length];
            for (int t = 0; t < tokens; t++)
            {
                for (int n = 0; n < outDim; n++)
                {
                    double sum = 0;
                    for (int k = 0; k < inDim; k++)
                        sum += Math.Abs((double)x[(long)t * inDim + k] * seen[(long)n * inDim + k]);
                    int i = t * outDim + n;
                    scale[i] = sum + (accumulate ? Math.Abs(y0[i]) : 0);
                    if (accumulate)
                    {
                        exact[i] = (float)((double)exact[i] + y0[i]);
                        plain[i] = (float)((double)plain[i] + y0[i]);
                    }
                }
            }

            string what = $"V3-MMA {typeof(TW).Name} T={tokens} N={outDim} K={inDim} acc={accumulate}";
            // F32 sums of exact products: at most ~(K/16 + 16) ulps of the scale; 1e-6 of it is the fp32 tolerance.
            Close(exact, got, scale, 1e-6, what + " vs the rounded oracle");
            // Rounding x to BF16 moves each product by at most 2^-9 of it (F16: 2^-12): 3e-3 of the scale bounds both.
            Close(plain, got, scale, 3e-3, what + " vs the unrounded oracle");
            // The rounded oracle is the one that tells: at fp32 tolerance the unrounded one is off by far somewhere.
            Assert.That(Enumerable.Range(0, exact.Length).Any(i => Math.Abs(plain[i] - exact[i]) > 1e-5 * Math.Abs(exact[i]) + 1e-6 * scale[i]),
                Is.True, what + ": rounding x changes the product beyond the fp32 tolerance");
        }
    }

    /// <summary>|got - want| &lt;= 1e-5 |want| + c * scale, element by element; NaN or infinity never passes.</summary>
    private static void Close(float[] want, float[] got, double[] scale, double c, string what)
    {
        Assert.That(got, Has.Length.EqualTo(want.Length), what);
        for (int i = 0; i < want.Length; i++)
        {
            if (!float.IsFinite(got[i]))
                Assert.Fail($"{what}: element {i} is {got[i]} (expected {want[i]})");
            double bound = 1e-5 * Math.Abs(want[i]) + c * scale[i];
            if (Math.Abs((double)got[i] - want[i]) > bound)
                Assert.Fail($"{what}: element {i} is {got[i]:R}, expected {want[i]:R} (bound {bound:G3})");
        }
    }

    private static void Run(WeightType type, int tokens, int outDim, int inDim, bool accumulate)
    {
        int seed = HashCode.Combine(type, tokens, outDim, inDim, accumulate) & 0xFFFF;
        var w = Data.Uniform(seed, (long)outDim * inDim);
        DenseTestWeights.With(type, w, new Case(tokens, outDim, inDim, seed, accumulate));
    }

    // T: 1, 3 (below one tile), 65, 70 (a full tile and a ragged one); N: 8 (one n8 tile), 72 (a full tile and a ragged
    // one), 130 (three); K: 8 (one copy per row), 40 (a zero-filled second k-tile), 96 (three full k-tiles), 136 (five:
    // the 3-stage ring wraps, the last ragged); accumulate on and off, both types. Full 64 x 64 tiles (every ldmatrix and
    // mma of every warp) need T >= 64 and N >= 64: the emulation (32 shuffles per mma) makes them the costly cases, so
    // they come with few k-tiles, and the long K runs where T or N leave most warps idle.
    [TestCase(WeightType.BF16, 1, 8, 136, true)]
    [TestCase(WeightType.BF16, 3, 130, 40, false)]
    [TestCase(WeightType.BF16, 65, 72, 40, true)]
    [TestCase(WeightType.BF16, 70, 8, 96, false)]
    [TestCase(WeightType.F16, 1, 72, 96, false)]
    [TestCase(WeightType.F16, 3, 8, 136, true)]
    [TestCase(WeightType.F16, 65, 130, 8, false)]
    [TestCase(WeightType.F16, 70, 8, 40, true)]
    public void MatchesTheRoundedOracle(WeightType type, int tokens, int outDim, int inDim, bool accumulate) =>
        Run(type, tokens, outDim, inDim, accumulate);

    [Test]
    public void RefusesWhatCpAsyncCannotCopy()
    {
        var kernel = MatMulKernel.Create<BF16Weights>(TestDevice.Accelerator);
        var s = TestDevice.Accelerator.DefaultStream;
        using var raw = TestDevice.Upload(Data.Uniform(91, 8 * 64 + 8).Select(BF16.FromFloat).ToArray());
        using var x = TestDevice.Upload(Data.Uniform(92, 3 * 64));
        using var y = TestDevice.PoisonedFloats(3 * 8);

        // K = 12: a W row of 24 bytes is no whole number of 16-byte copies.
        var w12 = new BF16Weights(raw.View.SubView(0, 8 * 12));
        Assert.That(kernel.SupportsMma(w12, 12), Is.False);
        var e = Assert.Throws<ArgumentException>(() =>
            kernel.Launch(MatMulVersion.V3Mma, s, x.View.SubView(0, 3 * 12), w12, y.View, 3, 8, 12))!;
        Assert.That(e.ParamName, Is.EqualTo("w"));
        Assert.That(e.Message, Does.Contain("multiple of 8"));

        // W starting 2 bytes into the buffer: cp.async's 16-byte source would be misaligned.
        var shifted = new BF16Weights(raw.View.SubView(1, 8 * 64));
        Assert.That(kernel.SupportsMma(shifted, 64), Is.False);
        e = Assert.Throws<ArgumentException>(() => kernel.Launch(MatMulVersion.V3Mma, s, x.View, shifted, y.View, 3, 8, 64))!;
        Assert.That(e.ParamName, Is.EqualTo("w"));
        Assert.That(e.Message, Does.Contain("16-byte boundary"));
        Assert.That(kernel.SupportsMma(new BF16Weights(raw.View.SubView(8, 8 * 64)), 64), Is.True, "16 bytes in is aligned");

        // F32 weights have no mma of their own here.
        var k32 = MatMulKernel.Create<F32Weights>(TestDevice.Accelerator);
        using var w32 = TestDevice.Upload(Data.Uniform(93, 8 * 64));
        e = Assert.Throws<ArgumentException>(() => k32.Launch(MatMulVersion.V3Mma, s, x.View, new F32Weights(w32.View), y.View, 3, 8, 64))!;
        Assert.That(e.Message, Does.Contain("BF16 or F16"));
        Assert.That(y.GetAsArray1D().All(float.IsNaN), "nothing was launched");
    }

    [Test]
    public void ChooseNeverPicksTheTensorCoreVersion()
    {
        var kernel = MatMulKernel.Create<BF16Weights>(TestDevice.Accelerator);
        using var raw = TestDevice.Upload(new ushort[40 * 64]);
        foreach (int tokens in new[] { 1, 3, 4096 })
            Assert.That(kernel.Choose(new BF16Weights(raw.View), tokens, 64), Is.Not.EqualTo(MatMulVersion.V3Mma));
    }

    /// <summary>The raster visits every (token tile, N tile) once, a band of RasterGroup token tiles at a time (the
    /// kernel tests reach one band only: the emulation cannot afford T > 1024).</summary>
    [TestCase(1, 1)]
    [TestCase(3, 500)]
    [TestCase(16, 7)]
    [TestCase(17, 2)]
    [TestCase(64, 63)]
    [TestCase(37, 1)]
    public void RasterCoversEveryTileOnceBandByBand(int tilesM, int tilesN)
    {
        var seen = new HashSet<(int, int)>();
        for (int b = 0; b < tilesM * tilesN; b++)
        {
            int tm = TileM(b, tilesM, tilesN), tn = TileN(b, tilesM, tilesN);
            Assert.That(tm, Is.InRange(0, tilesM - 1), $"block {b}");
            Assert.That(tn, Is.InRange(0, tilesN - 1), $"block {b}");
            Assert.That(tm / RasterGroup, Is.EqualTo(b / (RasterGroup * tilesN)), $"block {b}: its band");
            Assert.That(seen.Add((tm, tn)), Is.True, $"block {b}: ({tm}, {tn}) twice");
        }

        Assert.That(seen, Has.Count.EqualTo(tilesM * tilesN));
        Assert.That(Groups(tilesM * BM, tilesN * BN), Is.EqualTo((long)tilesM * tilesN));
    }

    /// <summary>ldmatrix.x4 reads 4 matrices of 8 rows x 16 bytes, one per phase: the 8 rows must sit on 8 distinct bank
    /// quads (16-byte groups of banks), for every A tile, B pair and k16 step the kernel uses. With unpadded 16-word rows
    /// they would not (checked too, so the test can fail).</summary>
    [Test]
    public void LdmatrixPhasesAreConflictFree()
    {
        foreach (int rowBase in new[] { 0, 16, 32, 48 })
        {
            for (int ks = 0; ks < BK / 16; ks++)
            {
                foreach (var (name, word) in new (string, Func<int, int, int, int>)[] { ("A", AFragWord), ("B", BFragWord) })
                {
                    for (int matrix = 0; matrix < 4; matrix++)
                    {
                        var lanes = Enumerable.Range(8 * matrix, 8).ToList();
                        Assert.That(lanes.All(l => word(l, rowBase, ks) % 4 == 0), $"{name}: 16-byte aligned rows");
                        int quads = lanes.Select(l => word(l, rowBase, ks) / 4 % 8).Distinct().Count();
                        Assert.That(quads, Is.EqualTo(8), $"{name} rowBase={rowBase} ks={ks} matrix {matrix}");
                        int unpadded = lanes.Select(l => Unpadded(word(l, rowBase, ks)) / 4 % 8).Distinct().Count();
                        Assert.That(unpadded, Is.LessThan(8), "16-word rows put ldmatrix rows on shared quads");
                    }
                }
            }
        }
    }

    /// <summary>A word offset re-laid with rows of 16 words instead of RowWords (the layout without the pad).</summary>
    private static int Unpadded(int word) => word / RowWords * (BK / 2) + word % RowWords;

    /// <summary>Each warp's x store (32 words) hits 32 banks; each 8-lane phase of cp.async (8 x 16 bytes) 8 quads; both
    /// maps cover every word / chunk of a tile exactly once; all offsets stay inside the dynamic shared memory.</summary>
    [Test]
    public void StagingStoresAreConflictFreeAndCoverTheTile()
    {
        var xWords = new HashSet<int>();
        var wChunks = new HashSet<int>();
        for (int warp = 0; warp < Threads / 32; warp++)
        {
            for (int i = 0; i < XSteps; i++)
            {
                var words = Enumerable.Range(32 * warp, 32).Select(tid => XRow(tid, i) * RowWords + XWord(tid)).ToList();
                Assert.That(words.Select(x => x % 32).Distinct().Count(), Is.EqualTo(32), $"x store warp {warp} step {i}");
                words.ForEach(x => xWords.Add(x));
            }

            for (int p = 0; p < WCopies; p++)
            {
                for (int phase = 0; phase < 4; phase++)
                {
                    var words = Enumerable.Range(32 * warp + 8 * phase, 8).Select(tid => WRow(tid, p) * RowWords + 4 * WChunk(tid)).ToList();
                    Assert.That(words.Select(x => x / 4 % 8).Distinct().Count(), Is.EqualTo(8), $"cp.async warp {warp} copy {p} phase {phase}");
                    words.ForEach(x => wChunks.Add(x));
                }
            }
        }

        Assert.That(xWords, Is.EquivalentTo(Enumerable.Range(0, BM).SelectMany(r => Enumerable.Range(0, BK / 2).Select(c => r * RowWords + c))));
        Assert.That(wChunks, Is.EquivalentTo(Enumerable.Range(0, BN).SelectMany(r => Enumerable.Range(0, BK / 8).Select(c => r * RowWords + 4 * c))));
        Assert.That(WBase + Stages * TileWords, Is.EqualTo(SharedWordCount));
        Assert.That(SharedBytes, Is.LessThanOrEqualTo(48 * 1024), "no opt-in beyond 48 KB needed");
    }
}
