// Quantized GEMV for decode: y [T, N] (+)= x [T, K] W^T for T = 1..8 tokens, W packed (QuantLayout.cs).
//
// Versions:
//   V1  one warp per output row n, 8 warps per group; lanes take the row's 16-byte units in turn (lane l loads unit
//       l, l+32, ...: a warp reads 512 contiguous bytes per step), dequantize them in registers (one scale lookup
//       per unit; integer codes become floats by the 2^23 mantissa trick, q - z is summed against x and the scale
//       multiplies each unit's sum once) and dot them with up to 8 token rows of x: every weight byte is read once for
//       all T tokens.
//       Split-K: grid y = S splits cut the row's units into S contiguous ranges, so a small N still fills the
//       GPU; with S > 1 each split writes partial sums [S, T, N] and ReduceV1 adds them in split order (no atomics:
//       bit-identical run to run). Lane partials are reduced through shared memory in lane order (one barrier,
//       no shuffles; cheap to emulate on the CPU accelerator too).
// GatherColumnsV1: xp = x[:, perm], the input side of a GPTQ act-order matrix (columns repacked in group order).
// The GEMV entry is generic over the packed reader: the PTX gate compiles it once per reader (quant-gemv-v1-q8, ...,
// quant-gemv-v1-mxfp4 for gpt-oss's MXFP4 blocks read as stored, Mxfp4.cs).
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Quant;

/// <summary>quant/gather-columns's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("quant/gather-columns")]
public enum GatherColumnsVersion
{
    /// <summary>xp[t, j] = x[t, perm[j]], one thread per element.</summary>
    V1 = 1,
}

/// <summary>The quantized GEMV's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("quant/gemv")]
public enum QuantGemvVersion
{
    /// <summary>Warp per row over 16-byte units, split-K partials plus their reduce.</summary>
    V1 = 1,
}

public static class QuantGemvKernels
{
    public const int Warps = 8;
    public const int GroupSize = Warps * 32;
    public const int MaxTokens = 8;
    private const int RedLd = 33;

    [KernelInfo(QuantGemvVersion.V1, "grid ceil(T*N/256), group 256", Entry = "reduce", Summary = "adds the split-K partials [S, T, N] in split order")]
    public static void ReduceV1(ArrayView<float> partial, ArrayView<float> y, int count, int splits, int accumulate)
    {
        long i = Grid.GlobalLinearIndex;
        if (i >= count)
            return;
        float acc = 0f;
        for (int s = 0; s < splits; s++)
            acc += partial[(long)s * count + i];
        y[i] = accumulate != 0 ? y[i] + acc : acc;
    }

    [KernelInfo(GatherColumnsVersion.V1, "grid ceil(T*K/256), group 256", Summary = "xp[t, j] = x[t, perm[j]]: input gather for GPTQ act-order matrices")]
    public static void GatherColumnsV1(ArrayView<float> x, ArrayView<int> perm, ArrayView<float> xp, int tokens, int cols)
    {
        long i = Grid.GlobalLinearIndex;
        if (i >= (long)tokens * cols)
            return;
        long t = i / cols;
        xp[i] = x[t * cols + perm[i - t * cols]];
    }

    // Sum of Code * x over one word; the unit's scale is applied once per unit by the caller.
    internal static float DotWord<TQ>(TQ w, uint word, UnitScale sc, ArrayView<float> x, int k)
        where TQ : struct, IQuantWeights
    {
        float acc = 0f;
        for (int i = 0; i < w.ValuesPerWord; i++)
            acc += w.Code(word, i, sc) * x[k + i];
        return acc;
    }

    // The same for the last, partly padded unit of a Q8/FP8 row: values past the row end are skipped (x is not read).
    internal static float DotWordTail<TQ>(TQ w, uint word, UnitScale sc, ArrayView<float> x, int k, int cols)
        where TQ : struct, IQuantWeights
    {
        float acc = 0f;
        for (int i = 0; i < w.ValuesPerWord; i++)
        {
            if (k + i < cols)
                acc += w.Code(word, i, sc) * x[k + i];
        }

        return acc;
    }

    /// <summary>Scale * sum over the unit's 16 or 32 values of Code * x[row, k0 ..].</summary>
    internal static float DotUnit<TQ>(TQ w, Packed16 u, UnitScale sc, ArrayView<float> x, long xRow, int k0, int cols)
        where TQ : struct, IQuantWeights
    {
        int vw = w.ValuesPerWord;
        ArrayView<float> xr = x.SubView(xRow, cols);
        float sum;
        if (k0 + 4 * vw <= cols)
        {
            sum = DotWord(w, u.A, sc, xr, k0) + DotWord(w, u.B, sc, xr, k0 + vw)
                + DotWord(w, u.C, sc, xr, k0 + 2 * vw) + DotWord(w, u.D, sc, xr, k0 + 3 * vw);
        }
        else
        {
            sum = DotWordTail(w, u.A, sc, xr, k0, cols) + DotWordTail(w, u.B, sc, xr, k0 + vw, cols)
                + DotWordTail(w, u.C, sc, xr, k0 + 2 * vw, cols) + DotWordTail(w, u.D, sc, xr, k0 + 3 * vw, cols);
        }

        return sum * sc.Scale;
    }

    [KernelInfo(QuantGemvVersion.V1, "grid (ceil(N/8), splits), group 256 = 8 warps", WideViews = ["w.Data:16"], BlockSize = GroupSize,
        Summary = "packed GEMV (int8 per channel, int4 group-wise, fp8 block-scaled, mxfp4), warp per row, 16-byte units, split-K partials")]
    public static void GemvV1<TQ>(ArrayView<float> x, TQ w, ArrayView<float> y, ArrayView<float> partial, int tokens, int splits, int accumulate)
        where TQ : struct, IQuantWeights
    {
        int warp = Group.IdxX >> 5, lane = Group.IdxX & 31;
        int n = Grid.IdxX * Warps + warp;
        int split = Grid.IdxY;
        int rows = w.Rows, cols = w.Cols;
        int unitsPerRow = w.RowWords >> 2;
        int perSplit = (unitsPerRow + splits - 1) / splits;
        int uBegin = split * perSplit;
        int uEnd = n < rows ? Math.Min(unitsPerRow, uBegin + perSplit) : 0; // a warp past N still reaches the barrier
        int unitValues = 4 * w.ValuesPerWord;
        var units = w.Words.Cast<Packed16>();
        long rowUnit = (long)n * unitsPerRow;

        float a0 = 0f, a1 = 0f, a2 = 0f, a3 = 0f, a4 = 0f, a5 = 0f, a6 = 0f, a7 = 0f;
        for (int u = uBegin + lane; u < uEnd; u += 32)
        {
            Packed16 p = units[rowUnit + u];
            var sc = w.ScaleOf(n, u);
            int k0 = u * unitValues;
            a0 += DotUnit(w, p, sc, x, 0, k0, cols);
            if (tokens > 1)
            {
                a1 += DotUnit(w, p, sc, x, (long)cols, k0, cols);
                if (tokens > 2)
                {
                    a2 += DotUnit(w, p, sc, x, 2L * cols, k0, cols);
                    if (tokens > 3)
                    {
                        a3 += DotUnit(w, p, sc, x, 3L * cols, k0, cols);
                        if (tokens > 4)
                        {
                            a4 += DotUnit(w, p, sc, x, 4L * cols, k0, cols);
                            if (tokens > 5)
                            {
                                a5 += DotUnit(w, p, sc, x, 5L * cols, k0, cols);
                                if (tokens > 6)
                                {
                                    a6 += DotUnit(w, p, sc, x, 6L * cols, k0, cols);
                                    if (tokens > 7)
                                        a7 += DotUnit(w, p, sc, x, 7L * cols, k0, cols);
                                }
                            }
                        }
                    }
                }
            }
        }

        // red[warp][t][lane]; lane t then adds token t's 32 partials in lane order.
        var red = SharedMemory.Allocate<float>(Warps * MaxTokens * RedLd);
        int s = warp * MaxTokens * RedLd + lane;
        red[s] = a0; red[s + RedLd] = a1; red[s + 2 * RedLd] = a2; red[s + 3 * RedLd] = a3;
        red[s + 4 * RedLd] = a4; red[s + 5 * RedLd] = a5; red[s + 6 * RedLd] = a6; red[s + 7 * RedLd] = a7;
        Group.Barrier();
        if (lane >= tokens || n >= rows)
            return;
        int b = warp * MaxTokens * RedLd + lane * RedLd;
        float acc = 0f;
        for (int j = 0; j < 32; j++)
            acc += red[b + j];
        long o = (long)lane * rows + n;
        if (splits > 1)
            partial[(long)split * tokens * rows + o] = acc;
        else
            y[o] = accumulate != 0 ? y[o] + acc : acc;
    }
}

/// <summary>Launcher of the quantized GEMV (decode, T = 1..8).</summary>
public sealed class QuantGemvKernel
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, Q8Weights, ArrayView<float>, ArrayView<float>, int, int, int> q8;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, Q4Weights, ArrayView<float>, ArrayView<float>, int, int, int> q4;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, Fp8Weights, ArrayView<float>, ArrayView<float>, int, int, int> fp8;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, Mxfp4Weights, ArrayView<float>, ArrayView<float>, int, int, int> mxfp4;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int> reduce;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int> gather;

    private QuantGemvKernel(Accelerator a)
    {
        q8 = a.LoadCounted<ArrayView<float>, Q8Weights, ArrayView<float>, ArrayView<float>, int, int, int>(QuantGemvKernels.GemvV1);
        q4 = a.LoadCounted<ArrayView<float>, Q4Weights, ArrayView<float>, ArrayView<float>, int, int, int>(QuantGemvKernels.GemvV1);
        fp8 = a.LoadCounted<ArrayView<float>, Fp8Weights, ArrayView<float>, ArrayView<float>, int, int, int>(QuantGemvKernels.GemvV1);
        mxfp4 = a.LoadCounted<ArrayView<float>, Mxfp4Weights, ArrayView<float>, ArrayView<float>, int, int, int>(QuantGemvKernels.GemvV1);
        reduce = a.LoadCounted<ArrayView<float>, ArrayView<float>, int, int, int>(QuantGemvKernels.ReduceV1);
        gather = a.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int>(QuantGemvKernels.GatherColumnsV1);
    }

    public static QuantGemvKernel Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>Floats of split-K scratch for T tokens, N outputs and S splits (0 when S = 1).</summary>
    public static long ScratchLength(int tokens, int outDim, int splits) => splits > 1 ? (long)splits * tokens * outDim : 0;

    /// <summary>
    /// Splits that give about 4 groups per multiprocessor: N/8 row groups alone fill an H200 (132 SMs) for N &gt;= ~4K,
    /// k/v projections (N = 1024) get 4 splits. Never more splits than 16-byte units per row / 32.
    /// </summary>
    public static int ChooseSplits(Accelerator accelerator, int outDim, int rowWords)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        int groups = (outDim + QuantGemvKernels.Warps - 1) / QuantGemvKernels.Warps;
        int want = (4 * accelerator.NumMultiprocessors + groups - 1) / groups;
        int most = Math.Max(1, rowWords / 4 / 32);
        return Math.Clamp(want, 1, Math.Min(most, 16));
    }

    public void Launch(AcceleratorStream stream, ArrayView<float> x, Q8Weights w, ArrayView<float> y, int tokens,
        int splits = 1, ArrayView<float> scratch = default, bool accumulate = false)
    {
        QuantLayout.Check("QuantGemv", w);
        QuantLayout.CheckWide("QuantGemv", "w", w);
        int s = Validate(stream, x, w.Rows, w.Cols, w.RowWords, w.Words.Length, y, tokens, splits, scratch);
        q8(stream, Config(w.Rows, s), x, w, y, Partial(scratch, y, s), tokens, s, accumulate ? 1 : 0);
        Reduce(stream, scratch, y, tokens, w.Rows, s, accumulate);
    }

    public void Launch(AcceleratorStream stream, ArrayView<float> x, Q4Weights w, ArrayView<float> y, int tokens,
        int splits = 1, ArrayView<float> scratch = default, bool accumulate = false)
    {
        QuantLayout.Check("QuantGemv", w);
        QuantLayout.CheckWide("QuantGemv", "w", w);
        int s = Validate(stream, x, w.Rows, w.Cols, w.RowWords, w.Words.Length, y, tokens, splits, scratch);
        q4(stream, Config(w.Rows, s), x, w, y, Partial(scratch, y, s), tokens, s, accumulate ? 1 : 0);
        Reduce(stream, scratch, y, tokens, w.Rows, s, accumulate);
    }

    public void Launch(AcceleratorStream stream, ArrayView<float> x, Fp8Weights w, ArrayView<float> y, int tokens,
        int splits = 1, ArrayView<float> scratch = default, bool accumulate = false)
    {
        QuantLayout.Check("QuantGemv", w);
        QuantLayout.CheckWide("QuantGemv", "w", w);
        int s = Validate(stream, x, w.Rows, w.Cols, w.RowWords, w.Words.Length, y, tokens, splits, scratch);
        fp8(stream, Config(w.Rows, s), x, w, y, Partial(scratch, y, s), tokens, s, accumulate ? 1 : 0);
        Reduce(stream, scratch, y, tokens, w.Rows, s, accumulate);
    }

    public void Launch(AcceleratorStream stream, ArrayView<float> x, Mxfp4Weights w, ArrayView<float> y, int tokens,
        int splits = 1, ArrayView<float> scratch = default, bool accumulate = false)
    {
        QuantLayout.Check("QuantGemv", w);
        QuantLayout.CheckWide("QuantGemv", "w", w);
        int s = Validate(stream, x, w.Rows, w.Cols, w.RowWords, w.Words.Length, y, tokens, splits, scratch);
        mxfp4(stream, Config(w.Rows, s), x, w, y, Partial(scratch, y, s), tokens, s, accumulate ? 1 : 0);
        Reduce(stream, scratch, y, tokens, w.Rows, s, accumulate);
    }

    /// <summary>
    /// xp [T, K] = x [T, K] with columns gathered through perm [K] (QuantizedMatrix.InputPermutation of a GPTQ
    /// act-order matrix: y = x W^T = xp Wp^T). perm must be a permutation of 0..K-1 (not checked on the device).
    /// </summary>
    public void LaunchGather(AcceleratorStream stream, ArrayView<float> x, ArrayView<int> perm, ArrayView<float> xp, int tokens, int cols)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (tokens < 1 || cols < 1)
            throw new ArgumentException($"QuantGemv.LaunchGather: tokens ({tokens}) and cols ({cols}) must be >= 1");
        long n = (long)tokens * cols;
        if (x.Length < n || xp.Length < n || perm.Length < cols)
            throw new ArgumentException($"QuantGemv.LaunchGather: x ({x.Length}) and xp ({xp.Length}) need T*K = {n} elements, perm ({perm.Length}) needs K = {cols}");
        gather(stream, new KernelConfig((int)((n + 255) / 256), 256), x, perm, xp, tokens, cols);
    }

    // With one split the kernel writes y directly and never touches the partial view; y stands in for it.
    private static ArrayView<float> Partial(ArrayView<float> scratch, ArrayView<float> y, int splits) => splits > 1 ? scratch : y;

    private void Reduce(AcceleratorStream stream, ArrayView<float> scratch, ArrayView<float> y, int tokens, int rows, int splits, bool accumulate)
    {
        if (splits <= 1)
            return;
        int count = tokens * rows;
        reduce(stream, new KernelConfig((count + 255) / 256, 256), scratch, y, count, splits, accumulate ? 1 : 0);
    }

    private static KernelConfig Config(int rows, int splits) =>
        new(new Index2D((rows + QuantGemvKernels.Warps - 1) / QuantGemvKernels.Warps, splits), new Index2D(QuantGemvKernels.GroupSize, 1));

    private static int Validate(AcceleratorStream stream, ArrayView<float> x, int rows, int cols, int rowWords, long words,
        ArrayView<float> y, int tokens, int splits, ArrayView<float> scratch)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (tokens < 1 || tokens > QuantGemvKernels.MaxTokens)
            throw new ArgumentException($"QuantGemv: tokens ({tokens}) must be in 1..{QuantGemvKernels.MaxTokens}; use QuantGemmKernel for more");
        if (rows < 1 || cols < 1)
            throw new ArgumentException($"QuantGemv: weight shape [{rows}, {cols}] is empty");
        if (words < (long)rows * rowWords)
            throw new ArgumentException($"QuantGemv: weight words has {words} elements, needs {(long)rows * rowWords}");
        if (x.Length < (long)tokens * cols)
            throw new ArgumentException($"QuantGemv: x has {x.Length} elements, needs T*K = {(long)tokens * cols}");
        if (y.Length < (long)tokens * rows)
            throw new ArgumentException($"QuantGemv: y has {y.Length} elements, needs T*N = {(long)tokens * rows}");
        Index64.CheckInt("QuantGemv", "y [T, N]", (long)tokens * rows); // the split-K reduce counts T*N in int
        if (splits < 1)
            throw new ArgumentException($"QuantGemv: splits ({splits}) must be >= 1");
        int s = Math.Min(splits, rowWords / 4);
        if (s > 1 && scratch.Length < ScratchLength(tokens, rows, s))
            throw new ArgumentException($"QuantGemv: {s} splits need scratch of {ScratchLength(tokens, rows, s)} floats, got {scratch.Length}");
        return s;
    }
}
