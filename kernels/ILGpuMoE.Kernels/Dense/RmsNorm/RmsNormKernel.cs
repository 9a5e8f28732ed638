// RMSNorm: x [T, D], w [D] (TW), eps -> y [T, D];  y = x * (1 / sqrt(mean(x^2) + eps)) * w, as Hugging Face Mixtral.
//
// Versions:
//   V1  one group per row; threads stride D accumulating x^2 in f32, a warp-shuffle + shared-memory block
//       reduction (BlockReduce, fixed order: bit-identical run to run), then the same threads scale their columns.
//
// Why one group per row: D = 4096 is 16 floats per thread at 256 threads; the row is read twice (sum, then scale)
// and the second read hits L1/L2. y may alias x (each element is read before it is written by the same thread).
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
    public static void RmsNormV1<TW>(ArrayView<float> x, TW weight, ArrayView<float> y, int dim, float eps)
        where TW : struct, IWeights
    {
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        long row = (long)Grid.IdxX * dim;
        float sumSq = 0f;
        for (int d = Group.IdxX; d < dim; d += Group.DimX)
        {
            float v = x[row + d];
            sumSq += v * v;
        }

        float total = BlockReduce.Sum(sumSq, slots);
        float scale = 1f / XMath.Sqrt(total / dim + eps);
        for (int d = Group.IdxX; d < dim; d += Group.DimX)
            y[row + d] = x[row + d] * scale * weight.Get(d);
    }
}

/// <summary>Launcher for one weight type: <c>RmsNormKernel.Create&lt;BF16Weights&gt;(accelerator)</c>.</summary>
public sealed class RmsNormKernel<TW>
    where TW : struct, IWeights
{
    private const string Name = "RmsNorm";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, TW, ArrayView<float>, int, float> _v1;

    internal RmsNormKernel(Accelerator accelerator)
    {
        _v1 = accelerator.LoadCounted<ArrayView<float>, TW, ArrayView<float>, int, float>(RmsNormKernel.RmsNormV1);
    }

    /// <summary>y = rmsnorm(x) * w over rows of x [T, D]; y may be the same view as x.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, TW weight, ArrayView<float> y, int tokens, int dim, float eps)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokens), tokens);
        DenseShapes.Positive(Name, nameof(dim), dim);
        if (!(eps >= 0f) || float.IsInfinity(eps))
            throw new ArgumentException($"{Name}: eps must be finite and >= 0, got {eps}", nameof(eps));
        DenseShapes.Length(Name, nameof(x), x, (long)tokens * dim, "[T, D]");
        DenseShapes.Weights(Name, nameof(weight), weight, dim, "[D]");
        DenseShapes.Length(Name, nameof(y), y, (long)tokens * dim, "[T, D]");
        _v1(stream, new KernelConfig(tokens, DenseShapes.RowGroupSize(dim)), x, weight, y, dim, eps);
    }
}
