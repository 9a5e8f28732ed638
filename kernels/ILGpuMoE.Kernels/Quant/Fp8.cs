// FP8 E4M3FN decoder (ILGPU has no fp8 type: the bits are decoded by hand, on the device and on the host).
//
//   bit  7   6 5 4 3   2 1 0
//       [s] [ e e e e ] [m m m]     bias 7
//   e = 0:        (-1)^s * m/8 * 2^-6          subnormals (smallest 2^-9), m = 0 gives +-0
//   e = 1..15:    (-1)^s * (1 + m/8) * 2^(e-7)  max 1.75 * 2^8 = 448 (S.1111.110)
//   S.1111.111:   NaN (the FN variant has no infinities: e = 15 is an ordinary binade except this one code)
//
// Normal codes map onto an f32 by re-biasing the exponent (+120) and moving the mantissa to the top of f32's;
// subnormals are m * 2^-9 (exact in f32). The sign is OR-ed in last so -0 stays -0.
using ILGPU;

namespace ILGpuMoE.Kernels.Quant;

public static class Fp8
{
    /// <summary>Largest finite E4M3FN magnitude.</summary>
    public const float MaxE4M3 = 448f;

    /// <summary>Decodes the low 8 bits of code as E4M3FN.</summary>
    public static float DecodeE4M3(uint code)
    {
        uint mag = code & 0x7Fu;
        uint e = mag >> 3;
        uint m = mag & 7u;
        float v = e == 0 ? m * (1f / 512f) : Interop.IntAsFloat(((e + 120u) << 23) | (m << 20));
        uint bits = Interop.FloatAsInt(v) | ((code & 0x80u) << 24);
        return mag == 0x7Fu ? Interop.IntAsFloat(0x7FC00000u | ((code & 0x80u) << 24)) : Interop.IntAsFloat(bits);
    }
}
