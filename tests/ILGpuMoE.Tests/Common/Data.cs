namespace ILGpuMoE.Tests.Common;

/// <summary>Seeded random inputs: never zeros, never the same twice across tests that pass different seeds.</summary>
public static class Data
{
    /// <summary>n floats uniform in [-scale, scale).</summary>
    public static float[] Uniform(int seed, long n, float scale = 1f)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (long i = 0; i < n; i++)
            a[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return a;
    }

    /// <summary>n floats, normal with the given standard deviation.</summary>
    public static float[] Gaussian(int seed, long n, double std = 1)
    {
        var rng = new Random(seed);
        var a = new float[n];
        for (long i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = (float)(std * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }

        return a;
    }

    public static int[] Ints(int seed, int n, int minInclusive, int maxExclusive)
    {
        var rng = new Random(seed);
        var a = new int[n];
        for (int i = 0; i < n; i++)
            a[i] = rng.Next(minInclusive, maxExclusive);
        return a;
    }

    /// <summary>Rounds each value through f16 (what a kernel reading F16 weights sees).</summary>
    public static float[] RoundToHalf(float[] a) => a.Select(x => (float)(Half)x).ToArray();

    /// <summary>Rounds each value through bf16 by truncating the low 16 bits after round-to-nearest-even.</summary>
    public static float[] RoundToBf16(float[] a) => a.Select(x => BF16.ToFloat(BF16.FromFloat(x))).ToArray();
}

/// <summary>bf16 bit helpers for tests (round to nearest even; NaN kept quiet).</summary>
public static class BF16
{
    public static ushort FromFloat(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f))
            return (ushort)((bits >> 16) | 0x40);
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    public static float ToFloat(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);
}
