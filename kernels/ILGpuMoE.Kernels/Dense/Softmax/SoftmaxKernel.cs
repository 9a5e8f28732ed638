// Row-wise softmax, max-subtracted, F32: x [rows, cols] -> y [rows, cols].
//
// Versions:
//   V1  one group per row: block max, then exp(x - max) written to y while summing, block sum, then scale y.
//       Each thread rescales only the elements it wrote, so no barrier is needed between the last two passes.
//
// y may alias x. Exp comes from XMath (MathF on the CPU accelerator, the PTX library on the GPU).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>dense/softmax's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("dense/softmax")]
public enum SoftmaxVersion
{
    /// <summary>One group per row.</summary>
    V1 = 1,
}

public sealed class SoftmaxKernel
{
    private const string Name = "Softmax";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int> _v1;

    private SoftmaxKernel(Accelerator accelerator)
    {
        _v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, int>(SoftmaxV1);
    }

    public static SoftmaxKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>y[r, :] = softmax(x[r, :]); y may be the same view as x.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int rows, int cols)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(rows), rows);
        DenseShapes.Positive(Name, nameof(cols), cols);
        DenseShapes.Length(Name, nameof(x), x, (long)rows * cols, "[rows, cols]");
        DenseShapes.Length(Name, nameof(y), y, (long)rows * cols, "[rows, cols]");
        _v1(stream, new KernelConfig(rows, DenseShapes.RowGroupSize(cols)), x, y, cols);
    }

    [KernelInfo(SoftmaxVersion.V1, "grid rows, group min(256, cols rounded up to 32)",
        Summary = "one group per row: block max, exp and block sum, scale")]
    public static void SoftmaxV1(ArrayView<float> x, ArrayView<float> y, int cols)
    {
        var maxSlots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        var sumSlots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        long row = (long)Grid.IdxX * cols;
        float localMax = float.NegativeInfinity;
        for (int c = Group.IdxX; c < cols; c += Group.DimX)
            localMax = IntrinsicMath.Max(localMax, x[row + c]);
        float max = BlockReduce.Max(localMax, maxSlots);

        float localSum = 0f;
        for (int c = Group.IdxX; c < cols; c += Group.DimX)
        {
            float e = XMath.Exp(x[row + c] - max);
            y[row + c] = e;
            localSum += e;
        }

        float inv = 1f / BlockReduce.Sum(localSum, sumSlots);
        for (int c = Group.IdxX; c < cols; c += Group.DimX)
            y[row + c] *= inv;
    }
}
