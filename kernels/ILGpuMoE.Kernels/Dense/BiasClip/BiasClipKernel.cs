// dense/bias-clip: a projection's epilogue, in place on y [T, N] (the output of dense/matmul or quant/gemm):
//   y[t, n] = clamp(y[t, n] + b[n], -c, c)
// b [N] optional, in the checkpoint's dtype (TW: F32/F16/BF16; Qwen2-MoE's q/k/v biases); c > 0, +inf for no clip
// (OLMoE's clip_qkv). The T = 1 decode step does the same inside decode/linear (DecodeLinearKernel.cs), so q/k/v stay
// one launch there; this kernel serves T > 1 and the simple (V1) path.
//
// Versions:
//   V1  one thread per element, no barriers. The pass reads and writes y once (T*N floats, a few MB at prefill next to the
//       matmul's weight stream and its T*N*K flops): an epilogue inside each of the matmul and GEMM versions (float and
//       packed) would save that one pass at the price of touching every one of them.
//
// NaN: the clamp is two compares and selects, so a NaN stays NaN as in torch.clamp (PTX min/max would return the other
// operand and hide it).
// Shapes: T tokens, N output columns of the projection (q: H*Dh, k/v: Hkv*Dh, or the three concatenated).
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>dense/bias-clip's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("dense/bias-clip")]
public enum BiasClipVersion
{
    /// <summary>One thread per element.</summary>
    V1 = 1,
}

public static class BiasClipKernel
{
    public static BiasClipKernel<TW> Create<TW>(Accelerator accelerator)
        where TW : struct, IWeights => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>clamp(v, -c, c) with NaN kept (compares and selects, see the header); c = +inf leaves v as it is.</summary>
    internal static float Clip(float v, float c)
    {
        v = v > c ? c : v;
        return v < -c ? -c : v;
    }

    /// <summary>y [T, N] in place: y + bias[n] (when hasBias != 0), clipped to [-clip, clip].</summary>
    [KernelInfo(BiasClipVersion.V1, "grid ceil(T*N/256), group 256",
        Summary = "thread per element: y = clamp(y + b[n], -c, c) in place, bias in the weight dtype, NaN kept")]
    public static void BiasClipV1<TW>(ArrayView<float> y, TW bias, int hasBias, int cols, float clip)
        where TW : struct, IWeights
    {
        long i = Grid.GlobalLinearIndex;
        if (i >= y.Length)
            return;
        float v = y[i];
        if (hasBias != 0)
            v += bias.Get(i % cols);
        y[i] = Clip(v, clip);
    }

    /// <summary>The launchers' check of a clip value: &gt; 0 (NaN refused), +inf for none.</summary>
    internal static void CheckClip(string kernel, float clip)
    {
        if (!(clip > 0f))
            throw new ArgumentException($"{kernel}: clip must be > 0 (+inf for none), got {clip}", nameof(clip));
    }
}

/// <summary>Launcher for one bias dtype: <c>BiasClipKernel.Create&lt;BF16Weights&gt;(accelerator)</c>.</summary>
public sealed class BiasClipKernel<TW>
    where TW : struct, IWeights
{
    private const string Name = "BiasClip";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, TW, int, int, float> _v1;

    internal BiasClipKernel(Accelerator accelerator)
    {
        _v1 = accelerator.LoadCounted<ArrayView<float>, TW, int, int, float>(BiasClipKernel.BiasClipV1);
    }

    /// <summary>
    /// y [T, N] = clamp(y + bias, -clip, clip) in place; bias [N] or null (none), clip &gt; 0 or +inf (none). With neither
    /// there is nothing to do and nothing is launched. Throws ArgumentException (one line) on a bad shape or clip.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> y, int tokens, int cols, TW? bias = null,
        float clip = float.PositiveInfinity)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokens), tokens);
        DenseShapes.Positive(Name, nameof(cols), cols);
        DenseShapes.Length(Name, nameof(y), y, (long)tokens * cols, "[T, N]");
        if (bias is { } b)
            DenseShapes.Weights(Name, nameof(bias), b, cols, "[N]");
        BiasClipKernel.CheckClip(Name, clip);
        if (bias is null && float.IsPositiveInfinity(clip))
            return;
        // Without a bias the kernel never reads it: the default reader (an empty view) stands in.
        _v1(stream, DenseShapes.Elementwise(y.Length), y, bias ?? default, bias is null ? 0 : 1, cols, clip);
    }
}
