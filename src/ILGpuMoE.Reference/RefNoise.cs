// The NoisyTopK normal generator; its math is written in ContractMoe.cs so a kernel can reproduce it bit for bit
// up to the final sqrt/log/cos.
namespace ILGpuMoE.Reference;

public static partial class RefNoise
{
    public static partial double Normal(ulong seed, int token, int expert)
    {
        ulong c = ((ulong)(uint)token << 32) | (uint)expert;
        ulong a = SplitMix64(seed ^ SplitMix64(c));
        ulong b = SplitMix64(a);
        const double twoPowMinus53 = 1.0 / (1UL << 53);
        double u1 = ((a >> 11) + 1) * twoPowMinus53;
        double u2 = (b >> 11) * twoPowMinus53;
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }

    /// <summary>Steele, Lea and Flood's splitmix64 finaliser (one step from state z), uint64 wraparound.</summary>
    public static ulong SplitMix64(ulong z)
    {
        unchecked
        {
            z += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }
}
