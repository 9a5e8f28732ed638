// Quantized GEMM for prefill: y [T, N] (+)= x [T, K] W^T, any T, W packed (QuantLayout.cs).
//
// Versions:
//   V1  32 tokens x 32 outputs per group of 256 (each thread 4 tokens of one output), K in steps of 32. Per step the
//       group loads the x tile and DEQUANTIZES the W tile into shared memory: each thread decodes whole packed words
//       (Q4/MXFP4: 128 words of 8 values; Q8/FP8: 256 words of 4 values), one scale lookup per word, so every weight byte
//       is read once per 32-token tile and the inner loop is plain f32 FMAs from shared memory. Shared rows are
//       padded to 33 floats (no bank conflicts on the column-wise reads). Bounds-checked for any T and N; K past
//       the row's end is zero-filled (rows are padded to 16 bytes with zero codes anyway).
// The entry is generic over the packed reader: the PTX gate compiles it once per reader (quant-gemm-v1-q8, ...).
// Grid x walks the N tiles fastest so concurrent groups share the same x tile (L2) and stream different weights.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Quant;

/// <summary>The quantized tiled GEMM's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("quant/gemm")]
public enum QuantGemmVersion
{
    /// <summary>32x32 tiles, the W tile dequantized into shared memory.</summary>
    V1 = 1,
}

public static class QuantGemmKernels
{
    public const int GroupSize = 256;
    public const int TileM = 32;
    public const int TileN = 32;
    public const int TileK = 32;
    private const int Ld = TileK + 1;

    [KernelInfo(QuantGemmVersion.V1, "grid ceil(N/32)*ceil(T/32), group 256", Summary = "packed tiled GEMM, W tile dequantized into shared memory word by word")]
    public static void GemmV1<TQ>(ArrayView<float> x, TQ w, ArrayView<float> y, int tokens, int accumulate)
        where TQ : struct, IQuantWeights
    {
        int rows = w.Rows, cols = w.Cols, rowWords = w.RowWords, vw = w.ValuesPerWord;
        int tilesN = (rows + TileN - 1) / TileN;
        int n0 = (Grid.IdxX % tilesN) * TileN;
        int t0 = (Grid.IdxX / tilesN) * TileM;
        int tid = Group.IdxX;
        int tx = tid & 31, ty = tid >> 5;
        int wordsPerStep = TileK / vw;              // 4 (Q4) or 8 (Q8, FP8) words of one row per K step
        int wordsPerTile = TileN * wordsPerStep;    // 128 or 256: at most one word per thread

        var xs = SharedMemory.Allocate<float>(TileM * Ld);
        var ws = SharedMemory.Allocate<float>(TileN * Ld);
        float c0 = 0f, c1 = 0f, c2 = 0f, c3 = 0f;
        for (int k0 = 0; k0 < cols; k0 += TileK)
        {
            for (int i = tid; i < TileM * TileK; i += GroupSize)
            {
                int r = i >> 5, kk = i & 31, t = t0 + r, k = k0 + kk;
                bool ok = t < tokens && k < cols;
                float xv = x[ok ? (long)t * cols + k : 0];
                xs[r * Ld + kk] = ok ? xv : 0f;
            }

            if (tid < wordsPerTile)
            {
                int r = tid / wordsPerStep, wi = tid - r * wordsPerStep;
                int n = n0 + r;
                int word = k0 / vw + wi;
                bool ok = n < rows && word < rowWords;
                long at = ok ? (long)n * rowWords + word : 0;
                uint bits = w.Words[at];
                var sc = w.ScaleOf(ok ? n : 0, ok ? word >> 2 : 0);
                int s = r * Ld + wi * vw;
                for (int j = 0; j < vw; j++)
                    ws[s + j] = ok && k0 + wi * vw + j < cols ? w.Decode(bits, j, sc) : 0f;
            }

            Group.Barrier();
            for (int kk = 0; kk < TileK; kk++)
            {
                float b = ws[tx * Ld + kk];
                c0 += xs[ty * Ld + kk] * b;
                c1 += xs[(ty + 8) * Ld + kk] * b;
                c2 += xs[(ty + 16) * Ld + kk] * b;
                c3 += xs[(ty + 24) * Ld + kk] * b;
            }

            Group.Barrier();
        }

        int nOut = n0 + tx;
        if (nOut >= rows)
            return;
        Store(y, t0 + ty, nOut, rows, tokens, c0, accumulate);
        Store(y, t0 + ty + 8, nOut, rows, tokens, c1, accumulate);
        Store(y, t0 + ty + 16, nOut, rows, tokens, c2, accumulate);
        Store(y, t0 + ty + 24, nOut, rows, tokens, c3, accumulate);
    }

    private static void Store(ArrayView<float> y, int t, int n, int rows, int tokens, float v, int accumulate)
    {
        if (t >= tokens)
            return;
        long o = (long)t * rows + n;
        y[o] = accumulate != 0 ? y[o] + v : v;
    }
}

/// <summary>Launcher of the quantized tiled GEMM (prefill, any T).</summary>
public sealed class QuantGemmKernel
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, Q8Weights, ArrayView<float>, int, int> q8;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, Q4Weights, ArrayView<float>, int, int> q4;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, Fp8Weights, ArrayView<float>, int, int> fp8;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, Mxfp4Weights, ArrayView<float>, int, int> mxfp4;

    private QuantGemmKernel(Accelerator a)
    {
        q8 = a.LoadCounted<ArrayView<float>, Q8Weights, ArrayView<float>, int, int>(QuantGemmKernels.GemmV1);
        q4 = a.LoadCounted<ArrayView<float>, Q4Weights, ArrayView<float>, int, int>(QuantGemmKernels.GemmV1);
        fp8 = a.LoadCounted<ArrayView<float>, Fp8Weights, ArrayView<float>, int, int>(QuantGemmKernels.GemmV1);
        mxfp4 = a.LoadCounted<ArrayView<float>, Mxfp4Weights, ArrayView<float>, int, int>(QuantGemmKernels.GemmV1);
    }

    public static QuantGemmKernel Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    public void Launch(AcceleratorStream stream, ArrayView<float> x, Q8Weights w, ArrayView<float> y, int tokens, bool accumulate = false)
    {
        QuantLayout.Check("QuantGemm", w);
        q8(stream, Config(stream, x, w.Rows, w.Cols, w.RowWords, w.Words.Length, y, tokens), x, w, y, tokens, accumulate ? 1 : 0);
    }

    public void Launch(AcceleratorStream stream, ArrayView<float> x, Q4Weights w, ArrayView<float> y, int tokens, bool accumulate = false)
    {
        QuantLayout.Check("QuantGemm", w);
        q4(stream, Config(stream, x, w.Rows, w.Cols, w.RowWords, w.Words.Length, y, tokens), x, w, y, tokens, accumulate ? 1 : 0);
    }

    public void Launch(AcceleratorStream stream, ArrayView<float> x, Fp8Weights w, ArrayView<float> y, int tokens, bool accumulate = false)
    {
        QuantLayout.Check("QuantGemm", w);
        fp8(stream, Config(stream, x, w.Rows, w.Cols, w.RowWords, w.Words.Length, y, tokens), x, w, y, tokens, accumulate ? 1 : 0);
    }

    public void Launch(AcceleratorStream stream, ArrayView<float> x, Mxfp4Weights w, ArrayView<float> y, int tokens, bool accumulate = false)
    {
        QuantLayout.Check("QuantGemm", w);
        mxfp4(stream, Config(stream, x, w.Rows, w.Cols, w.RowWords, w.Words.Length, y, tokens), x, w, y, tokens, accumulate ? 1 : 0);
    }

    private static KernelConfig Config(AcceleratorStream stream, ArrayView<float> x, int rows, int cols, int rowWords, long words,
        ArrayView<float> y, int tokens)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (tokens < 1)
            throw new ArgumentException($"QuantGemm: tokens ({tokens}) must be >= 1");
        if (rows < 1 || cols < 1)
            throw new ArgumentException($"QuantGemm: weight shape [{rows}, {cols}] is empty");
        if (words < (long)rows * rowWords)
            throw new ArgumentException($"QuantGemm: weight words has {words} elements, needs {(long)rows * rowWords}");
        if (x.Length < (long)tokens * cols)
            throw new ArgumentException($"QuantGemm: x has {x.Length} elements, needs T*K = {(long)tokens * cols}");
        if (y.Length < (long)tokens * rows)
            throw new ArgumentException($"QuantGemm: y has {y.Length} elements, needs T*N = {(long)tokens * rows}");
        long groups = (long)((rows + QuantGemmKernels.TileN - 1) / QuantGemmKernels.TileN) * ((tokens + QuantGemmKernels.TileM - 1) / QuantGemmKernels.TileM);
        if (groups > int.MaxValue)
            throw new ArgumentException($"QuantGemm: T = {tokens}, N = {rows} needs {groups} groups (too many)");
        return new KernelConfig((int)groups, QuantGemmKernels.GroupSize);
    }
}
