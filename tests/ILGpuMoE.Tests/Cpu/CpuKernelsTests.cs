// The CPU backend's row kernels against the oracle: cpu/matmul (F32, BF16, F16 readers) against RefOps.MatMulT on the
// values the reader holds, cpu/rmsnorm against RefOps.RmsNorm, cpu/bias-clip against RefOps.BiasClip, cpu/embedding
// against RefOps.Embedding, cpu/gather against its definition xp[t, c] = x[t, perm[c]].
//
// Shapes are odd on purpose: In = 1, 7, 12, 33, 45, 100 leave every kind of remainder of the 8- and 16-float loops;
// T = 1, 3, 4, 6, 9 hit the four-token tile, its remainder and both together; Out = 37, 517, 530 cut into uneven blocks.
// Each parallel kernel runs under one worker and under three; the kernels promise the same bits (one task owns each
// output and sums it in a fixed order), so the two results are compared bit for bit, and the three-worker shapes are big
// enough that CpuThreads really splits them (above CpuThreads.InlineWork).
using ILGpuMoE.Cpu;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using static ILGpuMoE.Tests.Cpu.CpuTestData;

namespace ILGpuMoE.Tests.Cpu;

public unsafe class CpuKernelsTests
{
    private const double Rtol = 1e-5;

    // ---- cpu/matmul ----------------------------------------------------------------------------------------------

    // 12 and 45 leave 8..15 floats after the 16-float steps (the single-token F32 loop's extra 8-float step).
    private static readonly int[] Ins = [1, 7, 12, 33, 45, 100];
    private static readonly int[] Outs = [1, 5, 37];
    private static readonly int[] Ts = [1, 3, 4, 6, 9];

    /// <summary>y [T, Out] (+)= x W^T with a NaN guard after y that must stay NaN; y0 null: y starts NaN.</summary>
    private static float[] MatMul(CpuThreads threads, CpuMatrix w, float[] x, int t, int outDim, float[]? y0)
    {
        const int guard = 9;
        var y = Nan((long)t * outDim + guard);
        y0?.CopyTo(y, 0);
        fixed (float* px = x, py = y)
            CpuKernels.MatMul(threads, w, px, py, t, outDim, accumulate: y0 is not null);
        StillPoisoned(y.AsSpan(t * outDim), "matmul guard after y");
        return y[..(t * outDim)];
    }

    /// <summary>The oracle: x W^T in double on the reader's values, plus y0 when accumulating.</summary>
    private static float[] MatMulWant(float[] x, float[] values, int t, int outDim, int inDim, float[]? y0)
    {
        var want = RefOps.MatMulT(x, values, t, outDim, inDim);
        return y0 is null ? want : RefOps.Add(y0, want);
    }

    /// <summary>
    /// The absolute tolerance of an fp32 dot product: a few float epsilons (2e-7, eps = 6e-8) of the largest
    /// sum_c |x_c| |w_c| of the case (at least 1e-6). A float sum's rounding error scales with the magnitude of its terms,
    /// not of its result, so an output that cancels to near 0 is not held to 1e-5 of itself.
    /// </summary>
    private static double DotAtol(float[] x, float[] values, int t, int outDim, int inDim) =>
        Math.Max(1e-6, 2e-7 * RefOps.MatMulT(x.Select(Math.Abs).ToArray(), values.Select(Math.Abs).ToArray(), t, outDim, inDim).Max());

    [Test]
    public void MatMulMatchesReference([Values] DenseType type, [Values] bool accumulate)
    {
        int cases = 0;
        foreach (int inDim in Ins)
        {
            foreach (int outDim in Outs)
            {
                foreach (int t in Ts)
                {
                    int seed = 1000 * inDim + 10 * outDim + t;
                    var (w, values) = Dense(type, Data.Uniform(seed, (long)outDim * inDim), outDim, inDim);
                    var x = Data.Uniform(seed + 1, (long)t * inDim, 2f);
                    var y0 = accumulate ? Data.Uniform(seed + 2, (long)t * outDim) : null;
                    var want = MatMulWant(x, values, t, outDim, inDim, y0);
                    var one = MatMul(One, w, x, t, outDim, y0);
                    var three = MatMul(Three, w, x, t, outDim, y0);
                    string what = $"{type} In={inDim} Out={outDim} T={t} accumulate={accumulate}";
                    Check.Close(want, one, Rtol, DotAtol(x, values, t, outDim, inDim), what);
                    Check.BitEqual(one, three, what + ": 3 workers vs 1");
                    cases++;
                }
            }
        }

        Assert.That(cases, Is.EqualTo(Ins.Length * Outs.Length * Ts.Length));
    }

    /// <summary>
    /// 517 or 530 outputs of a 532-row matrix (the first Out rows only) over 100 inputs for 6 tokens: 12 row blocks on
    /// three workers, of 44 rows (multiples of 4: the same 4-row groups as one worker's single block) or of 45 (the groups
    /// shift: each row's sum must not depend on the group it falls in). The same bits as one worker either way.
    /// </summary>
    [Test]
    public void MatMulSplitOverThreadsMatchesReference([Values] DenseType type, [Values] bool accumulate, [Values(517, 530)] int outDim)
    {
        const int rows = 532, inDim = 100, t = 6;
        Assert.That((long)outDim * inDim * t, Is.GreaterThan(CpuThreads.InlineWork), "the case must run in parallel");
        var (w, values) = Dense(type, Data.Uniform(71, (long)rows * inDim), rows, inDim);
        var x = Data.Uniform(72, (long)t * inDim);
        var y0 = accumulate ? Data.Uniform(73, (long)t * outDim) : null;
        var want = MatMulWant(x, values[..(outDim * inDim)], t, outDim, inDim, y0);
        var one = MatMul(One, w, x, t, outDim, y0);
        var three = MatMul(Three, w, x, t, outDim, y0);
        Check.Close(want, one, Rtol, DotAtol(x, values[..(outDim * inDim)], t, outDim, inDim), $"{type}");
        Check.BitEqual(one, three, $"{type}: 3 workers vs 1");
    }

    /// <summary>The span form CpuMatrix.Dot on rows [row0, row0 + count) of the matrix (not from row 0).</summary>
    [Test]
    public void SpanDotOnARowRangeMatchesReference([Values] DenseType type)
    {
        const int rows = 23, inDim = 19, row0 = 6, count = 11, t = 5;
        var (w, values) = Dense(type, Data.Uniform(81, (long)rows * inDim), rows, inDim);
        var x = Data.Uniform(82, (long)t * inDim);
        var want = RefOps.MatMulT(x, values[(row0 * inDim)..((row0 + count) * inDim)], t, count, inDim);
        var y = Nan((long)t * count);
        w.Dot(row0, count, x, t, y, accumulate: false);
        Check.Close(want, y, Rtol, DotAtol(x, values[(row0 * inDim)..((row0 + count) * inDim)], t, count, inDim), $"{type}");
        Assert.Throws<ArgumentOutOfRangeException>(() => w.Dot(rows - 2, 3, x, t, Nan((long)t * 3), accumulate: false), "rows past the matrix");
    }

    [Test]
    public void MatMulRefusesMoreOutputsThanRows()
    {
        var w = CpuMatrix.FromFloat32(Data.Uniform(91, 4 * 3), 4, 3);
        var x = Data.Uniform(92, 3);
        var y = Nan(5);
        Assert.Throws<ArgumentException>(() =>
        {
            fixed (float* px = x, py = y)
                CpuKernels.MatMul(One, w, px, py, 1, 5, accumulate: false);
        });
    }

    // ---- cpu/rmsnorm ---------------------------------------------------------------------------------------------

    /// <summary>
    /// Rows of D (odd) xPad / yPad floats apart: x's pads are NaN (a kernel that read them would turn the row NaN) and
    /// y's pads must stay NaN; 64 x 130 runs in parallel. In place (y = x, same stride) too.
    /// </summary>
    [TestCase(1, 1, 0, 0)]
    [TestCase(3, 7, 3, 5)]
    [TestCase(5, 33, 0, 2)]
    [TestCase(4, 100, 7, 0)]
    [TestCase(64, 130, 1, 3)]
    public void RmsNormMatchesReference(int t, int d, int xPad, int yPad)
    {
        const float eps = 1e-5f;
        int xStride = d + xPad, yStride = d + yPad;
        var rows = Data.Uniform(100 + d, (long)t * d, 3f);
        var w = Data.Uniform(101 + d, d, 0.5f).Select(v => v + 1f).ToArray();
        var want = RefOps.RmsNorm(rows, w, t, d, eps);
        var x = Nan((long)t * xStride);
        for (int i = 0; i < t; i++)
            rows.AsSpan(i * d, d).CopyTo(x.AsSpan(i * xStride));

        float[] Run(CpuThreads threads)
        {
            var y = Nan((long)t * yStride);
            fixed (float* px = x, pw = w, py = y)
                CpuKernels.RmsNorm(threads, px, xStride, pw, py, yStride, t, d, eps);
            var got = new float[t * d];
            for (int i = 0; i < t; i++)
            {
                y.AsSpan(i * yStride, d).CopyTo(got.AsSpan(i * d));
                StillPoisoned(y.AsSpan(i * yStride + d, yPad), $"y pad of row {i}");
            }

            return got;
        }

        var one = Run(One);
        Check.Close(want, one, Rtol, 1e-6, $"T={t} D={d}");
        Check.BitEqual(one, Run(Three), "3 workers vs 1");

        // In place: y = x, rows xStride apart.
        var inPlace = (float[])x.Clone();
        fixed (float* p = inPlace, pw = w)
            CpuKernels.RmsNorm(Three, p, xStride, pw, p, xStride, t, d, eps);
        for (int i = 0; i < t; i++)
            Check.BitEqual(one.AsSpan(i * d, d), inPlace.AsSpan(i * xStride, d), $"in place row {i}");
    }

    // ---- cpu/bias-clip -------------------------------------------------------------------------------------------

    /// <summary>
    /// y [T, N] with NaN at some elements (they stay NaN, as torch.clamp), and +-inf (clamped) when clip is finite;
    /// bias or none, clip or +inf. Bit-exact: one float add and a compare, like the oracle's one rounding.
    /// </summary>
    [TestCase(3, 7, true, 0.8f)]
    [TestCase(2, 33, false, 0.5f)]
    [TestCase(4, 5, true, float.PositiveInfinity)]
    [TestCase(1, 1, true, 1.5f)]
    public void BiasClipMatchesReference(int t, int n, bool withBias, float clip)
    {
        var y = Data.Uniform(200 + n, (long)t * n, 2f);
        y[0] = float.NaN;
        y[^1] = float.NaN;
        if (y.Length > 3 && float.IsFinite(clip))
        {
            y[1] = float.PositiveInfinity;
            y[2] = float.NegativeInfinity;
        }

        var bias = withBias ? Data.Uniform(201 + n, n, 0.7f) : null;
        var want = RefOps.BiasClip(y, bias ?? ReadOnlySpan<float>.Empty, t, n, clip);
        var got = (float[])y.Clone();
        fixed (float* py = got, pb = bias)
            CpuKernels.BiasClip(py, t, n, pb, clip);
        CloseKeepingNaN(want, got, 0, 0, $"T={t} N={n} bias={withBias} clip={clip}");
        if (float.IsFinite(clip))
            Assert.That(got.Where(float.IsFinite), Has.All.InRange(-clip, clip), "clamped");
    }

    // ---- cpu/embedding, cpu/gather -------------------------------------------------------------------------------

    [Test]
    public void EmbeddingMatchesReference([Values] DenseType type)
    {
        const int vocab = 11, d = 7;
        var (table, values) = Dense(type, Data.Uniform(300, vocab * d), vocab, d);
        int[] tokens = [0, 10, 3, 3, 7, 1];
        var want = RefOps.Embedding(values, tokens, vocab, d);
        var x = Nan(tokens.Length * d + 5);
        fixed (int* pt = tokens)
        fixed (float* px = x)
            CpuKernels.Embedding(table, pt, tokens.Length, px);
        Check.BitEqual(want, x.AsSpan(0, want.Length), $"{type}");
        StillPoisoned(x.AsSpan(want.Length), "guard");

        foreach (int bad in new[] { vocab, -1 })
        {
            int[] one = [bad];
            Assert.Throws<ArgumentOutOfRangeException>(() =>
            {
                fixed (int* pt = one)
                fixed (float* px = x)
                    CpuKernels.Embedding(table, pt, 1, px);
            }, $"id {bad}");
        }
    }

    [Test]
    public void GatherPermutesColumns()
    {
        const int t = 3, inDim = 13;
        var x = Data.Uniform(400, t * inDim);
        var perm = Enumerable.Range(0, inDim).ToArray();
        new Random(401).Shuffle(perm);
        Assert.That(perm, Is.Not.EqualTo(Enumerable.Range(0, inDim).ToArray()), "a real permutation");
        var want = new float[t * inDim];
        for (int i = 0; i < t; i++)
        {
            for (int c = 0; c < inDim; c++)
                want[i * inDim + c] = x[i * inDim + perm[c]];
        }

        var xp = Nan(t * inDim + 3);
        fixed (float* px = x, pxp = xp)
        fixed (int* pp = perm)
            CpuKernels.Gather(px, pp, pxp, t, inDim);
        Check.BitEqual(want, xp.AsSpan(0, want.Length));
        StillPoisoned(xp.AsSpan(want.Length), "guard");
    }
}
