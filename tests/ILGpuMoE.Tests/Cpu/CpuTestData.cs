// Shared pieces of the CPU-kernel tests (tests/ILGpuMoE.Tests/Cpu): NaN-poisoned buffers, the dense readers in each
// stored type with the values the oracle sees, the two thread counts every parallel kernel is run under.
//
// The CPU kernels are pointer APIs (CpuKernels, CpuExperts, CpuMla); the tests pin managed arrays with `fixed` for the
// duration of one call. Outputs start as NaN so that an element the kernel forgot to write fails Check.Close, and cache
// rows the kernel must not read are NaN too (a read of one turns the output NaN).
using ILGpuMoE.Cpu;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Cpu;

/// <summary>The stored types of a dense weight the CPU readers take.</summary>
public enum DenseType
{
    F32,
    BF16,
    F16,
}

internal static class CpuTestData
{
    /// <summary>One worker (everything inline) and three (blocks over a Parallel.For when the work is large enough).</summary>
    public static readonly CpuThreads One = new(1);

    public static readonly CpuThreads Three = new(3);

    public static float[] Nan(long n)
    {
        var a = new float[n];
        Array.Fill(a, float.NaN);
        return a;
    }

    public static int[] Poison(long n)
    {
        var a = new int[n];
        Array.Fill(a, int.MinValue);
        return a;
    }

    /// <summary>
    /// A reader of w [rows, cols] stored as <paramref name="type"/>, and the values it holds widened to float (the
    /// test's own BF16 / F16 rounding and widening, not the reader's), which the oracle is given.
    /// </summary>
    public static (DenseRows Reader, float[] Values) Dense(DenseType type, float[] w, int rows, int cols)
    {
        switch (type)
        {
            case DenseType.F32:
                return (CpuMatrix.FromFloat32(w, rows, cols), (float[])w.Clone());
            case DenseType.BF16:
            {
                var bits = w.Select(BF16.FromFloat).ToArray();
                return (CpuMatrix.FromBf16(bits, rows, cols), bits.Select(BF16.ToFloat).ToArray());
            }

            case DenseType.F16:
            {
                var halves = w.Select(v => (Half)v).ToArray();
                return (CpuMatrix.FromHalf(halves, rows, cols), halves.Select(h => (float)h).ToArray());
            }

            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dense type");
        }
    }

    /// <summary>The values that are NaN in <paramref name="expected"/> must be NaN in actual; the rest Check.Close.</summary>
    public static void CloseKeepingNaN(float[] expected, float[] actual, double rtol, double atol, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: length");
        var e = (float[])expected.Clone();
        var a = (float[])actual.Clone();
        int nans = 0;
        for (int i = 0; i < e.Length; i++)
        {
            if (!float.IsNaN(e[i]))
                continue;
            Assert.That(a[i], Is.NaN, $"{what}: element {i} must stay NaN");
            e[i] = a[i] = 0f;
            nans++;
        }

        Assert.That(nans, Is.GreaterThan(0), $"{what}: the case holds no NaN");
        Check.Close(e, a, rtol, atol, what);
    }

    /// <summary>Every element of a is still the NaN it was poisoned with (nothing wrote there).</summary>
    public static void StillPoisoned(ReadOnlySpan<float> a, string what)
    {
        for (int i = 0; i < a.Length; i++)
        {
            if (!float.IsNaN(a[i]))
                Assert.Fail($"{what}: element {i} was written ({a[i]:R})");
        }
    }
}
