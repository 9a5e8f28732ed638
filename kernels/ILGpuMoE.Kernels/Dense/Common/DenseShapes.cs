// Shape checks shared by the dense launchers: one-line ArgumentException naming the kernel and the argument.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

internal static class DenseShapes
{
    public static void Positive(string kernel, string name, int value)
    {
        if (value <= 0)
            throw new ArgumentException($"{kernel}: {name} must be positive, got {value}", name);
    }

    /// <summary>The view must hold exactly the elements of the shape (pass a SubView for a larger buffer).</summary>
    public static void Length<T>(string kernel, string name, ArrayView<T> view, long expected, string shape)
        where T : unmanaged
    {
        if (view.Length != expected)
            throw new ArgumentException($"{kernel}: {name} has {view.Length} elements, expected {expected} ({shape})", name);
    }

    /// <summary>An elementwise launch: a stream, a non-empty first input, and b and y of the same length.</summary>
    public static void Elementwise(string kernel, AcceleratorStream? stream, ArrayView<float> a, ArrayView<float> b, ArrayView<float> y,
        string aName, string bName)
    {
        Stream(kernel, stream);
        if (a.Length == 0)
            throw new ArgumentException($"{kernel}: {aName} is empty", aName);
        Length(kernel, bName, b, a.Length, $"same as {aName}");
        Length(kernel, "y", y, a.Length, $"same as {aName}");
    }

    /// <summary>Same check for a weight reader.</summary>
    public static void Weights<TW>(string kernel, string name, TW weights, long expected, string shape)
        where TW : struct, IWeights
    {
        if (weights.Length != expected)
            throw new ArgumentException($"{kernel}: {name} has {weights.Length} elements, expected {expected} ({shape})", name);
    }

    public static void Stream(string kernel, AcceleratorStream? stream)
    {
        if (stream is null)
            throw new ArgumentNullException(nameof(stream), $"{kernel}: stream is null");
    }

    /// <summary>Threads per row-group: D rounded up to a warp, at most 256. Why: a row of 40 needs no 256-thread group.</summary>
    public static int RowGroupSize(int dim) => Math.Min(Devices.MaxGroupSize, Math.Max(32, (dim + 31) / 32 * 32));

    /// <summary>Groups of 256 covering n elements (one thread each).</summary>
    public static KernelConfig Elementwise(long n)
    {
        const int group = Devices.MaxGroupSize;
        long groups = (n + group - 1) / group;
        if (groups > int.MaxValue)
            throw new ArgumentException($"{n} elements are too many for one launch");
        return new KernelConfig((int)groups, group);
    }
}
