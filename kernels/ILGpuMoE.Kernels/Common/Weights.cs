// Weight element readers shared by every kernel family.
//
// Checkpoints keep F32, F16 or BF16 weights; kernels read them through a struct that widens one element
// to float. A kernel generic over TW : struct, IWeights gets one specialised copy per dtype (no virtual
// calls on the device). BF16 has no ILGPU type: it stays a raw 16-bit word and is widened by a shift.
using ILGPU;

namespace ILGpuMoE.Kernels;

public enum WeightType
{
    F32,
    F16,
    BF16,
}

/// <summary>Read-only weight storage; element i widened to float.</summary>
public interface IWeights
{
    float Get(long index);

    long Length { get; }
}

public readonly struct F32Weights(ArrayView<float> data) : IWeights
{
    public readonly ArrayView<float> Data = data;

    public float Get(long index) => Data[index];

    public long Length => Data.Length;
}

public readonly struct F16Weights(ArrayView<ILGPU.Half> data) : IWeights
{
    public readonly ArrayView<ILGPU.Half> Data = data;

    public float Get(long index) => (float)Data[index];

    public long Length => Data.Length;
}

public readonly struct BF16Weights(ArrayView<ushort> data) : IWeights
{
    public readonly ArrayView<ushort> Data = data;

    // bf16 is the top half of an f32: shift the bits into place.
    public float Get(long index) => Interop.IntAsFloat((uint)Data[index] << 16);

    public long Length => Data.Length;
}
