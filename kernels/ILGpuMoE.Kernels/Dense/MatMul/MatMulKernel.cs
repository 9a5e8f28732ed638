// MatMul y = x W^T for Hugging Face [out, in] weights: x [T, In] f32, W [Out, In] (TW), y [T, Out] f32.
// Used for the q/k/v/o projections, the router logits and lm_head. F32 accumulation in k order.
//
// Versions:
//   V1    one thread per output (t, o); each thread walks a whole row of W. Simplest correct.
//   V2    shared-memory tiled for T > 1: a 16x16 output tile per group of 256, K in steps of 16. Why: each
//         weight element loaded into shared memory serves 16 tokens instead of 1. Tiles padded to 17 columns so
//         the column-wise reads of the W tile hit 16 different banks. Bounds-checked loads (zero fill) for shapes
//         that are not multiples of 16.
//   GEMV  for T = 1 (decode): one warp per output row, lanes stride In (a warp reads 32 consecutive weights:
//         coalesced), warp-shuffle butterfly reduction, lane 0 writes. Why: with one token there is nothing to
//         tile; the kernel is a pass over W and must keep every byte of it in flight.
//
// accumulate = true gives the fused residual form y += x W^T (h = h + o_proj(attn)); with false y is only
// written, never read (a NaN-poisoned y is fine). Launch picks GEMV for T = 1 and V2 otherwise.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

public static class MatMulKernel
{
    public const int Tile = 16;
    private const int TileStride = Tile + 1;
    private const int GemvRowsPerGroup = Devices.MaxGroupSize / 32;

    public static MatMulKernel<TW> Create<TW>(Accelerator accelerator)
        where TW : struct, IWeights => new(accelerator);

    internal static KernelConfig V1Config(int tokens, int outDim) => DenseShapes.Elementwise((long)tokens * outDim);

    internal static KernelConfig V2Config(int tokens, int outDim) =>
        new(((outDim + Tile - 1) / Tile) * ((tokens + Tile - 1) / Tile), Tile * Tile);

    internal static KernelConfig GemvConfig(int tokens, int outDim) =>
        new(tokens * ((outDim + GemvRowsPerGroup - 1) / GemvRowsPerGroup), GemvRowsPerGroup * 32);

    [KernelInfo("dense/matmul", "v1", "grid ceil(T*Out/256), group 256",
        Summary = "one thread per output, f32 dot over In")]
    public static void MatMulV1<TW>(ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, int accumulate)
        where TW : struct, IWeights
    {
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)tokens * outDim)
            return;
        int t = (int)(index / outDim);
        int o = (int)(index - (long)t * outDim);
        long xRow = (long)t * inDim;
        long wRow = (long)o * inDim;
        float acc = 0f;
        for (int k = 0; k < inDim; k++)
            acc += x[xRow + k] * w.Get(wRow + k);
        y[index] = accumulate != 0 ? y[index] + acc : acc;
    }

    [KernelInfo("dense/matmul", "v2", "grid ceil(Out/16)*ceil(T/16), group 256",
        Summary = "16x16 shared-memory tiles of x and W, padded against bank conflicts, bounds-checked")]
    public static void MatMulV2<TW>(ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, int accumulate)
        where TW : struct, IWeights
    {
        var xs = SharedMemory.Allocate<float>(Tile * TileStride);
        var ws = SharedMemory.Allocate<float>(Tile * TileStride);
        int tilesO = (outDim + Tile - 1) / Tile;
        int o0 = (Grid.IdxX % tilesO) * Tile;
        int t0 = (Grid.IdxX / tilesO) * Tile;
        int tx = Group.IdxX % Tile;
        int ty = Group.IdxX / Tile;

        // Loads: thread (ty, tx) fetches row ty, column k0 + tx of both tiles: consecutive tx read consecutive k.
        int tLoad = t0 + ty;
        int oLoad = o0 + ty;
        long xRow = (long)tLoad * inDim;
        long wRow = (long)oLoad * inDim;
        float acc = 0f;
        for (int k0 = 0; k0 < inDim; k0 += Tile)
        {
            int k = k0 + tx;
            xs[ty * TileStride + tx] = tLoad < tokens && k < inDim ? x[xRow + k] : 0f;
            ws[ty * TileStride + tx] = oLoad < outDim && k < inDim ? w.Get(wRow + k) : 0f;
            Group.Barrier();
            for (int kk = 0; kk < Tile; kk++)
                acc += xs[ty * TileStride + kk] * ws[tx * TileStride + kk];
            Group.Barrier();
        }

        // Output (t0 + ty, o0 + tx): consecutive tx write consecutive columns of y.
        int t = t0 + ty;
        int o = o0 + tx;
        if (t < tokens && o < outDim)
        {
            long i = (long)t * outDim + o;
            y[i] = accumulate != 0 ? y[i] + acc : acc;
        }
    }

    [KernelInfo("dense/matmul", "gemv-v1", "grid T*ceil(Out/8), group 256 (8 warps, one row each)",
        Summary = "warp per output row, lanes stride In (coalesced), shuffle butterfly reduction")]
    public static void GemvV1<TW>(ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, int accumulate)
        where TW : struct, IWeights
    {
        int groupsPerToken = (outDim + GemvRowsPerGroup - 1) / GemvRowsPerGroup;
        int t = Grid.IdxX / groupsPerToken;
        int o = (Grid.IdxX - t * groupsPerToken) * GemvRowsPerGroup + Warp.WarpIdx;
        int lane = Warp.LaneIdx;
        float acc = 0f;
        if (o < outDim)
        {
            long xRow = (long)t * inDim;
            long wRow = (long)o * inDim;
            for (int k = lane; k < inDim; k += Warp.WarpSize)
                acc += x[xRow + k] * w.Get(wRow + k);
        }

        // Every lane takes part in the shuffles (no early return above), lane 0's sum is written.
        for (int offset = Warp.WarpSize / 2; offset > 0; offset >>= 1)
            acc += Warp.ShuffleXor(acc, offset);
        if (lane == 0 && o < outDim)
        {
            long i = (long)t * outDim + o;
            y[i] = accumulate != 0 ? y[i] + acc : acc;
        }
    }
}

/// <summary>Launcher for one weight type: <c>MatMulKernel.Create&lt;BF16Weights&gt;(accelerator)</c>.</summary>
public sealed class MatMulKernel<TW>
    where TW : struct, IWeights
{
    private const string Name = "MatMul";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, TW, ArrayView<float>, int, int, int, int> _v1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, TW, ArrayView<float>, int, int, int, int> _v2;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, TW, ArrayView<float>, int, int, int, int> _gemv;

    internal MatMulKernel(Accelerator accelerator)
    {
        _v1 = accelerator.LoadKernel<ArrayView<float>, TW, ArrayView<float>, int, int, int, int>(MatMulKernel.MatMulV1);
        _v2 = accelerator.LoadKernel<ArrayView<float>, TW, ArrayView<float>, int, int, int, int>(MatMulKernel.MatMulV2);
        _gemv = accelerator.LoadKernel<ArrayView<float>, TW, ArrayView<float>, int, int, int, int>(MatMulKernel.GemvV1);
    }

    /// <summary>y [T, Out] = x [T, In] W^T (W [Out, In]); accumulate adds to y instead. GEMV for T = 1, V2 otherwise.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, bool accumulate = false)
    {
        if (tokens == 1)
            LaunchGemv(stream, x, w, y, tokens, outDim, inDim, accumulate);
        else
            LaunchV2(stream, x, w, y, tokens, outDim, inDim, accumulate);
    }

    public void LaunchV1(AcceleratorStream stream, ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, bool accumulate = false)
    {
        Validate(stream, x, w, y, tokens, outDim, inDim);
        _v1(stream, MatMulKernel.V1Config(tokens, outDim), x, w, y, tokens, outDim, inDim, accumulate ? 1 : 0);
    }

    public void LaunchV2(AcceleratorStream stream, ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, bool accumulate = false)
    {
        Validate(stream, x, w, y, tokens, outDim, inDim);
        _v2(stream, MatMulKernel.V2Config(tokens, outDim), x, w, y, tokens, outDim, inDim, accumulate ? 1 : 0);
    }

    /// <summary>The warp-per-row form; correct for any T (it rereads W per token), meant for T = 1.</summary>
    public void LaunchGemv(AcceleratorStream stream, ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, bool accumulate = false)
    {
        Validate(stream, x, w, y, tokens, outDim, inDim);
        _gemv(stream, MatMulKernel.GemvConfig(tokens, outDim), x, w, y, tokens, outDim, inDim, accumulate ? 1 : 0);
    }

    private static void Validate(AcceleratorStream stream, ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokens), tokens);
        DenseShapes.Positive(Name, nameof(outDim), outDim);
        DenseShapes.Positive(Name, nameof(inDim), inDim);
        DenseShapes.Length(Name, nameof(x), x, (long)tokens * inDim, "[T, In]");
        DenseShapes.Weights(Name, nameof(w), w, (long)outDim * inDim, "[Out, In]");
        DenseShapes.Length(Name, nameof(y), y, (long)tokens * outDim, "[T, Out]");
        if ((long)tokens * ((outDim + 7) / 8) > int.MaxValue)
            throw new ArgumentException($"{Name}: T={tokens} x Out={outDim} is too large for one launch", nameof(tokens));
    }
}
