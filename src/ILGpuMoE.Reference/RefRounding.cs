// Rounding F32 values to the 16-bit types a tensor-core kernel multiplies in (mma.sync takes BF16 or F16 operands):
// the dense tensor-core matmul (kernels/ILGpuMoE.Kernels/Dense/MatMul/MatMulMma.cs) rounds its F32 activations to the
// weights' type, round to nearest even, on their way into shared memory. The oracle models that exactly by rounding x
// with these before its usual double-accumulated product: RefOps.MatMulT(RefRounding.ToBf16(x), w, ...).
namespace ILGpuMoE.Reference;

public static class RefRounding
{
    /// <summary>x rounded to BF16 (round to nearest even; NaN stays NaN, infinities stay infinite), widened back.</summary>
    public static float Bf16(float x)
    {
        uint u = BitConverter.SingleToUInt32Bits(x);
        if (float.IsNaN(x))
            return x;
        uint rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
        return BitConverter.UInt32BitsToSingle(rounded);
    }

    /// <summary>x rounded to IEEE F16 (round to nearest even: .NET's conversion; beyond 65519.99 it is infinite), widened back.</summary>
    public static float F16(float x) => (float)(Half)x;

    /// <summary>Every value rounded to BF16 (a new array).</summary>
    public static float[] ToBf16(ReadOnlySpan<float> x)
    {
        var r = new float[x.Length];
        for (int i = 0; i < x.Length; i++)
            r[i] = Bf16(x[i]);
        return r;
    }

    /// <summary>Every value rounded to F16 (a new array).</summary>
    public static float[] ToF16(ReadOnlySpan<float> x)
    {
        var r = new float[x.Length];
        for (int i = 0; i < x.Length; i++)
            r[i] = F16(x[i]);
        return r;
    }
}
