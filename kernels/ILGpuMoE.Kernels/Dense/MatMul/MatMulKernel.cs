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
//   GEMV-V2  the same warp-per-row shape, but each lane loads W as 16-byte words (8 bf16/f16 or 4 f32, see
//         WideWeights.cs): one ld.v4 per lane per step instead of 8 scalar loads. One non-generic entry per dtype
//         (the word decoding differs). Needs In to be a multiple of 8 (f16/bf16) or 4 (f32) and W's view to start
//         on a 16-byte boundary; Launch uses it for T = 1 when that holds and GEMV-V1 otherwise.
//   V3-MMA  tensor cores (MatMulMma.cs): 64 x 64 tiles of mma.sync m16n8k16, W by cp.async in 3 stages, x rounded to
//         W's BF16/F16 on its way into shared memory, F32 accumulation. BF16 and F16 weights with In % 8 == 0 and W
//         16-byte aligned (Launch throws otherwise); CUDA sm_80+ or the CPU accelerator's emulation. Never Choose's pick:
//         the runtime's policy asks for it by name.
//
// accumulate = true gives the fused residual form y += x W^T (h = h + o_proj(attn)); with false y is only
// written, never read (a NaN-poisoned y is fine). Launch picks GEMV(-V2 when eligible) for T = 1 and V2 otherwise.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.TensorCore;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>The matmul's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("dense/matmul")]
public enum MatMulVersion
{
    /// <summary>One thread per output.</summary>
    V1 = 1,

    /// <summary>16x16 shared-memory tiles (T &gt; 1).</summary>
    V2 = 2,

    /// <summary>Warp per output row with scalar loads (T = 1).</summary>
    GemvV1 = 3,

    /// <summary>Warp per output row with 16-byte loads (T = 1; needs In and W's offset in whole 16-byte words).</summary>
    GemvV2 = 4,

    /// <summary>Tensor cores: mma.sync 64 x 64 tiles (BF16/F16 weights, In % 8 == 0, W 16-byte aligned; MatMulMma.cs).</summary>
    V3Mma = 5,
}

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

    [KernelInfo(MatMulVersion.V1, "grid ceil(T*Out/256), group 256",
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

    [KernelInfo(MatMulVersion.V2, "grid ceil(Out/16)*ceil(T/16), group 256",
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
            long i = Index64.At(t, outDim, o);
            y[i] = accumulate != 0 ? y[i] + acc : acc;
        }
    }

    [KernelInfo(MatMulVersion.GemvV1, "grid T*ceil(Out/8), group 256 (8 warps, one row each)",
        Summary = "warp per output row, lanes stride In (coalesced), shuffle butterfly reduction")]
    public static void GemvV1<TW>(ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, int accumulate)
        where TW : struct, IWeights
    {
        int groupsPerToken = (outDim + GemvRowsPerGroup - 1) / GemvRowsPerGroup;
        int t = Grid.IdxX / groupsPerToken;
        int o = (Grid.IdxX - t * groupsPerToken) * GemvRowsPerGroup + Warp.WarpIdx;
        float acc = 0f;
        if (o < outDim)
        {
            long xRow = (long)t * inDim;
            long wRow = (long)o * inDim;
            for (int k = Warp.LaneIdx; k < inDim; k += Warp.WarpSize)
                acc += x[xRow + k] * w.Get(wRow + k);
        }

        WarpSumAndStore(acc, y, t, o, outDim, accumulate);
    }

    // Every lane takes part in the shuffles (callers never return early), lane 0's sum is written.
    private static void WarpSumAndStore(float acc, ArrayView<float> y, int t, int o, int outDim, int accumulate)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset >>= 1)
            acc += Warp.ShuffleXor(acc, offset);
        if (Warp.IsFirstLane && o < outDim)
        {
            long i = Index64.At(t, outDim, o);
            y[i] = accumulate != 0 ? y[i] + acc : acc;
        }
    }

    [KernelInfo(MatMulVersion.GemvV2, "grid T*ceil(Out/8), group 256 (8 warps, one row each)", Reader = "f32",
        WideViews = ["w:16"], BlockSize = Devices.MaxGroupSize,
        Summary = "GEMV with 16-byte weight loads (4 f32 per lane per step)")]
    public static void GemvV2F32(ArrayView<float> x, ArrayView<Wide16> w, ArrayView<float> y, int tokens, int outDim, int inDim, int accumulate) =>
        GemvWide<F32Wide>(x, w, y, outDim, inDim, accumulate);

    [KernelInfo(MatMulVersion.GemvV2, "grid T*ceil(Out/8), group 256 (8 warps, one row each)", Reader = "f16",
        WideViews = ["w:16"], BlockSize = Devices.MaxGroupSize,
        Summary = "GEMV with 16-byte weight loads (8 f16 per lane per step)")]
    public static void GemvV2F16(ArrayView<float> x, ArrayView<Wide16> w, ArrayView<float> y, int tokens, int outDim, int inDim, int accumulate) =>
        GemvWide<F16Wide>(x, w, y, outDim, inDim, accumulate);

    [KernelInfo(MatMulVersion.GemvV2, "grid T*ceil(Out/8), group 256 (8 warps, one row each)", Reader = "bf16",
        WideViews = ["w:16"], BlockSize = Devices.MaxGroupSize,
        Summary = "GEMV with 16-byte weight loads (8 bf16 per lane per step)")]
    public static void GemvV2BF16(ArrayView<float> x, ArrayView<Wide16> w, ArrayView<float> y, int tokens, int outDim, int inDim, int accumulate) =>
        GemvWide<BF16Wide>(x, w, y, outDim, inDim, accumulate);

    private static void GemvWide<TDec>(ArrayView<float> x, ArrayView<Wide16> w, ArrayView<float> y, int outDim, int inDim, int accumulate)
        where TDec : struct, IWideDecoder
    {
        var decoder = default(TDec);
        int elements = decoder.Elements;
        int groupsPerToken = (outDim + GemvRowsPerGroup - 1) / GemvRowsPerGroup;
        int t = Grid.IdxX / groupsPerToken;
        int o = (Grid.IdxX - t * groupsPerToken) * GemvRowsPerGroup + Warp.WarpIdx;
        float acc = 0f;
        if (o < outDim)
        {
            int words = inDim / elements;
            // Row views made once: the loop then indexes from a fixed base (ILGPU does not hoist the 64-bit
            // row * width products out of the loop by itself; ptxas recomputed them every iteration, see
            // perf/notes/ptx-review.md). Same loads, same arithmetic order: bit-identical results.
            var wRow = w.SubView((long)o * words, words);
            var xRow = x.SubView((long)t * inDim, inDim);
            for (int j = Warp.LaneIdx; j < words; j += Warp.WarpSize)
                acc += decoder.Dot(wRow[j], xRow, (long)j * elements);
        }

        WarpSumAndStore(acc, y, t, o, outDim, accumulate);
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
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Wide16>, ArrayView<float>, int, int, int, int>? _gemvWide;
    private readonly bool _mmaSupported;

    // Loaded on first use: most users of the family never launch it (F32 weights, T = 1, devices without tensor cores).
    private readonly Lazy<Action<AcceleratorStream, KernelConfig, ArrayView<float>, GlobalWords, ArrayView<float>, int, int, int, int>>? _mma;

    internal MatMulKernel(Accelerator accelerator)
    {
        _v1 = accelerator.LoadCounted<ArrayView<float>, TW, ArrayView<float>, int, int, int, int>(MatMulKernel.MatMulV1);
        _v2 = accelerator.LoadCounted<ArrayView<float>, TW, ArrayView<float>, int, int, int, int>(MatMulKernel.MatMulV2);
        _gemv = accelerator.LoadCounted<ArrayView<float>, TW, ArrayView<float>, int, int, int, int>(MatMulKernel.GemvV1);
        Action<ArrayView<float>, ArrayView<Wide16>, ArrayView<float>, int, int, int, int>? wide =
            typeof(TW) == typeof(F32Weights) ? MatMulKernel.GemvV2F32
            : typeof(TW) == typeof(F16Weights) ? MatMulKernel.GemvV2F16
            : typeof(TW) == typeof(BF16Weights) ? MatMulKernel.GemvV2BF16
            : null;
        if (wide is not null)
            _gemvWide = accelerator.LoadCounted(wide);
        _mmaSupported = MatMulMma.Supported(accelerator);
        if (MatMulMma.For<TW>() is { } mma)
            _mma = new(() => accelerator.LoadTensorCore(mma, MatMulMmaLayout.SharedBytes));
    }

    /// <summary>Whether <see cref="MatMulVersion.V3Mma"/> can run these weights here (else Launch throws for it).</summary>
    public bool SupportsMma(TW w, int inDim) => _mma is not null && _mmaSupported && MatMulMma.TryWords(w, inDim, out _) is not null;

    /// <summary>W as 16-byte words when GEMV-V2 can read it: In a multiple of 16 bytes and W 16-byte aligned.</summary>
    public static bool TryGetWide(TW w, int inDim, out ArrayView<Wide16> words)
    {
        words = default;
        if (typeof(TW) == typeof(F32Weights))
            return TryCast(Unsafe.As<TW, F32Weights>(ref w).Data, inDim, out words);
        if (typeof(TW) == typeof(F16Weights))
            return TryCast(Unsafe.As<TW, F16Weights>(ref w).Data, inDim, out words);
        if (typeof(TW) == typeof(BF16Weights))
            return TryCast(Unsafe.As<TW, BF16Weights>(ref w).Data, inDim, out words);
        return false;
    }

    private static bool TryCast<T>(ArrayView<T> data, int inDim, out ArrayView<Wide16> words)
        where T : unmanaged
    {
        int size = Unsafe.SizeOf<T>();
        words = default;
        // Any failed check means GEMV-V1.
        if ((long)inDim * size % 16 != 0 || !WideAccess.IsAligned(data, 16) || data.Length * size % 16 != 0)
            return false;
        words = data.Cast<Wide16>();
        return true;
    }

    /// <summary>
    /// The family's choice: GEMV for T = 1 (V2 with 16-byte loads when W allows it, see TryGetWide, else V1), the
    /// tiles otherwise.
    /// </summary>
    public MatMulVersion Choose(TW w, int tokens, int inDim) =>
        tokens != 1 ? MatMulVersion.V2 : _gemvWide is not null && TryGetWide(w, inDim, out _) ? MatMulVersion.GemvV2 : MatMulVersion.GemvV1;

    /// <summary>y [T, Out] = x [T, In] W^T (W [Out, In]); accumulate adds to y instead. The version <see cref="Choose"/> picks.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim, bool accumulate = false) =>
        Launch(Choose(w, tokens, inDim), stream, x, w, y, tokens, outDim, inDim, accumulate);

    /// <summary>
    /// y [T, Out] (+)= x [T, In] W^T with the given version (every version is correct for any T; GEMV rereads W per
    /// token). GemvV2 throws ArgumentException when In or W's alignment does not allow 16-byte words.
    /// </summary>
    public void Launch(MatMulVersion version, AcceleratorStream stream, ArrayView<float> x, TW w, ArrayView<float> y, int tokens, int outDim, int inDim,
        bool accumulate = false)
    {
        Validate(stream, x, w, y, tokens, outDim, inDim);
        int acc = accumulate ? 1 : 0;
        switch (version)
        {
            case MatMulVersion.V1:
                _v1(stream, MatMulKernel.V1Config(tokens, outDim), x, w, y, tokens, outDim, inDim, acc);
                break;
            case MatMulVersion.V2:
                _v2(stream, MatMulKernel.V2Config(tokens, outDim), x, w, y, tokens, outDim, inDim, acc);
                break;
            case MatMulVersion.GemvV1:
                _gemv(stream, MatMulKernel.GemvConfig(tokens, outDim), x, w, y, tokens, outDim, inDim, acc);
                break;
            case MatMulVersion.GemvV2:
                if (_gemvWide is null || !TryGetWide(w, inDim, out var words))
                    throw new ArgumentException($"{Name}: GEMV-V2 needs In*sizeof(weight) and W's offset to be multiples of 16 bytes (In={inDim}, {typeof(TW).Name})", nameof(w));
                _gemvWide(stream, MatMulKernel.GemvConfig(tokens, outDim), x, words, y, tokens, outDim, inDim, acc);
                break;
            case MatMulVersion.V3Mma:
                if (!_mmaSupported)
                    throw new NotSupportedException($"{Name}: V3-MMA needs tensor cores (CUDA sm_80 or later) or the CPU accelerator's emulation");
                // TryWords refuses every weight type but BF16 and F16, the two _mma exists for.
                if (MatMulMma.TryWords(w, inDim, out string why) is not { } wordsOfW || _mma is null)
                    throw new ArgumentException($"{Name}: V3-MMA {why}", nameof(w));
                _mma.Value(stream, MatMulMma.Config(tokens, outDim), x, wordsOfW, y, tokens, outDim, inDim, acc);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(version), version, $"{Name}: unknown version");
        }
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
        Index64.CheckInt(Name, "V2 tiles of y [T, Out]", (long)((outDim + MatMulKernel.Tile - 1) / MatMulKernel.Tile) * ((tokens + MatMulKernel.Tile - 1) / MatMulKernel.Tile));
    }
}
