// SwiGLU activation: silu(gate) * up, silu(g) = g / (1 + e^-g), F32.
//
// Versions:
//   V1  separate buffers: gate [N], up [N] -> y [N], one thread per element.
//   V2  fused input: gu [T, 2F] where row t holds gate in columns [0, F) and up in columns [F, 2F) (concatenated,
//       not interleaved) -> y [T, F]. Why: stacking w1 over w3 as one [2F, D] weight lets one matmul produce both
//       halves, and this layout is exactly that matmul's output.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>The SwiGLU's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("dense/swiglu")]
public enum SwiGluVersion
{
    /// <summary>Two input buffers (<see cref="SwiGluKernel.Launch"/>).</summary>
    V1 = 1,

    /// <summary>One fused [T, 2F] input (<see cref="SwiGluKernel.LaunchFused"/>).</summary>
    V2Fused = 2,
}

public sealed class SwiGluKernel
{
    private const string Name = "SwiGlu";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>> _v1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int> _v2;

    private SwiGluKernel(Accelerator accelerator)
    {
        _v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<float>>(SwiGluV1);
        _v2 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, int>(SwiGluFusedV2);
    }

    public static SwiGluKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>y = silu(gate) * up elementwise; y may alias gate or up.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> gate, ArrayView<float> up, ArrayView<float> y)
    {
        DenseShapes.Elementwise(Name, stream, gate, up, y, nameof(gate), nameof(up));
        _v1(stream, DenseShapes.Elementwise(gate.Length), gate, up, y);
    }

    /// <summary>y [T, F] = silu(gu[:, :F]) * gu[:, F:] for gu [T, 2F] (gate half first, then up half).</summary>
    public void LaunchFused(AcceleratorStream stream, ArrayView<float> gateUp, ArrayView<float> y, int tokens, int hidden)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokens), tokens);
        DenseShapes.Positive(Name, nameof(hidden), hidden);
        DenseShapes.Length(Name, nameof(gateUp), gateUp, 2L * tokens * hidden, "[T, 2F]");
        DenseShapes.Length(Name, nameof(y), y, (long)tokens * hidden, "[T, F]");
        _v2(stream, DenseShapes.Elementwise((long)tokens * hidden), gateUp, y, hidden);
    }

    internal static float Silu(float g) => g / (1f + XMath.Exp(-g));

    [KernelInfo(SwiGluVersion.V1, "grid ceil(N/256), group 256",
        Summary = "silu(gate) * up from two buffers, one thread per element")]
    public static void SwiGluV1(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> y)
    {
        long i = Grid.GlobalLinearIndex;
        if (i < y.Length)
            y[i] = Silu(gate[i]) * up[i];
    }

    [KernelInfo(SwiGluVersion.V2Fused, "grid ceil(T*F/256), group 256",
        Summary = "fused input [T, 2F] (gate | up concatenated per row) -> [T, F]")]
    public static void SwiGluFusedV2(ArrayView<float> gateUp, ArrayView<float> y, int hidden)
    {
        long i = Grid.GlobalLinearIndex;
        if (i >= y.Length)
            return;
        long t = i / hidden;
        long f = i - t * hidden;
        long g = t * 2 * hidden + f;
        y[i] = Silu(gateUp[g]) * gateUp[g + hidden];
    }
}
