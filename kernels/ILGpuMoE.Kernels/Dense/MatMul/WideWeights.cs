// 16-byte weight words for the wide-load GEMV (MatMulKernel.GemvV2*).
//
// IWeights reads one element per call, so a warp of lanes reading bf16 weights issues 2-byte loads. Reading the
// same row as 16-byte words (ld.v4.b32: 8 bf16/f16 or 4 f32 per lane) moves 512 bytes per warp instruction instead
// of 64 and cuts the load instructions 8x; each decoder below widens one word and dots it with the matching x.
// Element order inside a word is memory order (little endian: element 0 is the low half of A).
using System.Runtime.InteropServices;
using ILGPU;

namespace ILGpuMoE.Kernels.Dense;

[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct Wide16
{
    public uint A;
    public uint B;
    public uint C;
    public uint D;
}

/// <summary>Decodes one 16-byte word of weights and dots it with x[k .. k + Elements).</summary>
internal interface IWideDecoder
{
    int Elements { get; }

    float Dot(Wide16 w, ArrayView<float> x, long k);
}

internal readonly struct F32Wide : IWideDecoder
{
    public int Elements => 4;

    public float Dot(Wide16 w, ArrayView<float> x, long k) =>
        Interop.IntAsFloat(w.A) * x[k] + Interop.IntAsFloat(w.B) * x[k + 1]
        + Interop.IntAsFloat(w.C) * x[k + 2] + Interop.IntAsFloat(w.D) * x[k + 3];
}

internal readonly struct BF16Wide : IWideDecoder
{
    public int Elements => 8;

    public float Dot(Wide16 w, ArrayView<float> x, long k) =>
        Pair(w.A, x, k) + Pair(w.B, x, k + 2) + Pair(w.C, x, k + 4) + Pair(w.D, x, k + 6);

    // Two bf16 in one uint: the low one is the top half of its f32 after a shift, the high one after a mask.
    private static float Pair(uint bits, ArrayView<float> x, long k) =>
        Interop.IntAsFloat(bits << 16) * x[k] + Interop.IntAsFloat(bits & 0xFFFF0000u) * x[k + 1];
}

internal readonly struct F16Wide : IWideDecoder
{
    public int Elements => 8;

    public float Dot(Wide16 w, ArrayView<float> x, long k) =>
        Pair(w.A, x, k) + Pair(w.B, x, k + 2) + Pair(w.C, x, k + 4) + Pair(w.D, x, k + 6);

    private static float Pair(uint bits, ArrayView<float> x, long k) =>
        (float)Interop.IntAsFloat((ushort)(bits & 0xFFFFu)) * x[k] + (float)Interop.IntAsFloat((ushort)(bits >> 16)) * x[k + 1];
}
