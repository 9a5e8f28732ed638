namespace ILGpuMoE.Tests.Common;

/// <summary>Numeric comparisons. NaN or infinity in the actual output never passes.</summary>
public static class Check
{
    /// <summary>|a - e| &lt;= atol + rtol * |e| for every element; reports the worst element.</summary>
    public static void Close(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double rtol = 1e-5, double atol = 1e-6, string what = "")
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: length");
        int worst = -1;
        double worstExcess = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            float a = actual[i], e = expected[i];
            if (!float.IsFinite(a))
                Assert.Fail($"{what}: element {i} is {a} (expected {e})");
            double excess = Math.Abs((double)a - e) - (atol + rtol * Math.Abs((double)e));
            if (excess > worstExcess)
            {
                worstExcess = excess;
                worst = i;
            }
        }

        if (worst >= 0)
            Assert.Fail($"{what}: element {worst} is {actual[worst]:R}, expected {expected[worst]:R} (rtol {rtol}, atol {atol})");
    }

    /// <summary>Bit-identical floats.</summary>
    public static void BitEqual(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what = "")
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: length");
        for (int i = 0; i < expected.Length; i++)
        {
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                Assert.Fail($"{what}: element {i} differs: {actual[i]:R} vs {expected[i]:R}");
        }
    }
}
