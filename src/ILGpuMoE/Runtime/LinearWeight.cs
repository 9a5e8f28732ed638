// A linear layer's weight on the device: either a plain tensor in the checkpoint's dtype (F32/F16/BF16) or a packed
// quantized matrix (Q8 / Q4 / FP8, kernels/ILGpuMoE.Kernels/Quant/QuantLayout.cs). The forward pass is written once;
// WeightOps picks the kernel from which of the two this holds.
using ILGpuMoE.Quant;

namespace ILGpuMoE.Runtime;

/// <summary>Attention q/k/v/o or stacked experts w1/w2/w3: exactly one of <see cref="Dense"/> and <see cref="Quant"/> is set.</summary>
public sealed class LinearWeight : IDisposable
{
    public LinearWeight(DeviceTensor dense) => Dense = dense ?? throw new ArgumentNullException(nameof(dense));

    public LinearWeight(DeviceQuantMatrix quant) => Quant = quant ?? throw new ArgumentNullException(nameof(quant));

    public DeviceTensor? Dense { get; }

    public DeviceQuantMatrix? Quant { get; }

    /// <summary>Device bytes (packed words + scales + zeros for a quantized weight).</summary>
    public long Bytes => Dense?.Bytes ?? Quant!.Host.ByteSize;

    /// <summary>"BF16", "F32", ... or the packed scheme: what one grouped GEMM launch needs w1, w2 and w3 to share
    /// (the group size may differ between them: each is its own Q4Weights).</summary>
    public string Kind => Dense?.Type.ToString() ?? Quant!.Host.Scheme.ToString();

    /// <summary>"BF16", "F32", ... or the packed scheme ("Q8", "Q4 g128", "Q4 g128 asym", "Q4 g4096" for one group per row of 4096, "Fp8 128x128").</summary>
    public string TypeName => Dense?.Type.ToString() ?? Quant!.Host.TypeName;

    public void Dispose()
    {
        Dense?.Dispose();
        Quant?.Dispose();
    }
}
