// Elementwise helpers the runtime needs between the big kernels, F32.
//
// Versions:
//   V1  y = a + b, one thread per element (the residual add h = h + f(h); y may alias a or b).
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>dense/add's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("dense/add")]
public enum AddVersion
{
    /// <summary>One thread per element.</summary>
    V1 = 1,
}

public sealed class ElementwiseKernel
{
    private const string Name = "Add";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>> _add;

    private ElementwiseKernel(Accelerator accelerator)
    {
        _add = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>>(AddV1);
    }

    public static ElementwiseKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>y = a + b elementwise; y may be the same view as a or b (in-place residual add).</summary>
    public void Add(AcceleratorStream stream, ArrayView<float> a, ArrayView<float> b, ArrayView<float> y)
    {
        DenseShapes.Elementwise(Name, stream, a, b, y, nameof(a), nameof(b));
        _add(stream, DenseShapes.Elementwise(a.Length), a, b, y);
    }

    [KernelInfo(AddVersion.V1, "grid ceil(N/256), group 256", Summary = "y = a + b, one thread per element")]
    public static void AddV1(ArrayView<float> a, ArrayView<float> b, ArrayView<float> y)
    {
        long i = Grid.GlobalLinearIndex;
        if (i < y.Length)
            y[i] = a[i] + b[i];
    }
}
