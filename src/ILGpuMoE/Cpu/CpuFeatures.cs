// What the CPU backend's vector code runs on here: the kernels are written on Vector256 (8 floats), which .NET maps to
// AVX2 + FMA on x64 and to pairs of AdvSimd registers on ARM64; without either it runs in software (correct, slow).
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;

namespace ILGpuMoE.Cpu;

public static class CpuFeatures
{
    /// <summary>True when Vector256 is hardware-accelerated (AVX2 on x64, AdvSimd on ARM64).</summary>
    public static bool Vector256Fast => Vector256.IsHardwareAccelerated;

    /// <summary>One phrase: the instruction sets the kernels use on this machine.</summary>
    public static string Describe()
    {
        if (Avx2.IsSupported && Fma.IsSupported)
            return Avx512F.IsSupported ? "AVX2+FMA (AVX-512 present)" : "AVX2+FMA";
        if (AdvSimd.IsSupported)
            return "ARM64 AdvSimd";
        return Vector256.IsHardwareAccelerated ? "Vector256" : "no SIMD (software vectors)";
    }
}
