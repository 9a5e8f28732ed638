// RMSNorm: x [T, D], w [D] (TW), eps -> y [T, D];  y = x * (1 / sqrt(mean(x^2) + eps)) * w, as Hugging Face Mixtral.
//
// Versions:
//   V1  one group per row; threads stride D accumulating x^2 in f32, a warp-shuffle + shared-memory block
//       reduction (BlockReduce, fixed order: bit-identical run to run), then the same threads scale their columns.
//
// Why one group per row: D = 4096 is 16 floats per thread at 256 threads; the row is read twice (sum, then scale)
// and the second read hits L1/L2. y may alias x (each element is read before it is written by the same thread).
// Rows may sit in wider rows (strides >= D): MLA normalises the latent, the first kv_lora_rank values of each
// [kv_lora_rank + rope] row of kv_a_proj_with_mqa's output, in place, leaving the rope part as it is.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>dense/rmsnorm's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("dense/rmsnorm")]
public enum RmsNormVersion
{
    /// <summary>One group per row.</summary>
    V1 = 1,
}

public static class RmsNormKernel
{
    public static RmsNormKernel<TW> Create<TW>(Accelerator accelerator)
        where TW : struct, IWeights => new(accelerator);

    [KernelInfo(RmsNormVersion.V1, "grid T, group min(256, D rounded up to 32)",
        Summary = "one group per row, f32 sum of squares, shuffle + shared block reduction")]
    public static void RmsNormV1<TW>(ArrayView<float> x, TW weight, ArrayView<float> y, int dim, float eps, int xStride, int yStride)
        where TW : struct, IWeights
    {
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        long row = (long)Grid.IdxX * xStride, outRow = (long)Grid.IdxX * yStride;
        float sumSq = 0f;
        for (int d = Group.IdxX; d < dim; d += Group.DimX)
        {
            float v = x[row + d];
            sumSq += v * v;
        }

        float total = BlockReduce.Sum(sumSq, slots);
        float scale = 1f / XMath.Sqrt(total / dim + eps);
        for (int d = Group.IdxX; d < dim; d += Group.DimX)
            y[outRow + d] = x[row + d] * scale * weight.Get(d);
    }
}

/// <summary>Launcher for one weight type: <c>RmsNormKernel.Create&lt;BF16Weights&gt;(accelerator)</c>.</summary>
public sealed class RmsNormKernel<TW>
    where TW : struct, IWeights
{
    private const string Name = "RmsNorm";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, TW, ArrayView<float>, int, float, int, int> _v1;

    internal RmsNormKernel(Accelerator accelerator)
    {
        _v1 = accelerator.LoadCounted<ArrayView<float>, TW, ArrayView<float>, int, float, int, int>(RmsNormKernel.RmsNormV1);
    }

    /// <summary>y = rmsnorm(x) * w over rows of x [T, D]; y may be the same view as x.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, TW weight, ArrayView<float> y, int tokens, int dim, float eps) =>
        Launch(stream, x, dim, weight, y, dim, tokens, dim, eps);

    /// <summary>The same over rows D wide that start xStride (yStride) floats apart in x (y), strides &gt;= D; only the first
    /// D floats of each output row are written. y may be the same view as x with the same stride.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, int xStride, TW weight, ArrayView<float> y, int yStride, int tokens, int dim, float eps)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokens), tokens);
        DenseShapes.Positive(Name, nameof(dim), dim);
        if (xStride < dim || yStride < dim)
            throw new ArgumentException($"{Name}: strides ({xStride}, {yStride}) must be >= D = {dim}");
        if (!(eps >= 0f) || float.IsInfinity(eps))
            throw new ArgumentException($"{Name}: eps must be finite and >= 0, got {eps}", nameof(eps));
        // Dense rows: exactly [T, D]; strided rows: long enough to reach the last row's D values.
        void Rows(string name, ArrayView<float> v, int stride)
        {
            if (stride == dim)
                DenseShapes.Length(Name, name, v, (long)tokens * dim, "[T, D]");
            else if (v.Length < (long)(tokens - 1) * stride + dim)
                throw new ArgumentException($"{Name}: {name} has {v.Length} elements, needs {(long)(tokens - 1) * stride + dim} ({tokens} rows {stride} apart)", name);
        }

        Rows(nameof(x), x, xStride);
        DenseShapes.Weights(Name, nameof(weight), weight, dim, "[D]");
        Rows(nameof(y), y, yStride);
        _v1(stream, new KernelConfig(tokens, DenseShapes.RowGroupSize(dim)), x, weight, y, dim, eps, xStride, yStride);
    }
}
