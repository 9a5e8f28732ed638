// Kernel output vs reference: |got - want| <= atol + rtol * |want| element-wise; NaN or infinity never passes.
namespace ILGpuMoE.Perf.Suite;

public static class Compare
{
    /// <summary>Compares two equally long spans; scope says what was compared ("all 2376", "tokens 0, 31, 63").</summary>
    public static CheckResult Close(ReadOnlySpan<float> got, ReadOnlySpan<float> want, double rtol, double atol, string scope)
    {
        if (got.Length != want.Length)
            return CheckResult.Fail($"length {got.Length} != reference {want.Length}");
        double maxAbs = 0, maxRel = 0;
        long bad = 0, firstBad = -1;
        for (int i = 0; i < got.Length; i++)
        {
            double g = got[i], w = want[i];
            double d = Math.Abs(g - w);
            if (!double.IsFinite(g) || !(d <= atol + rtol * Math.Abs(w)))
            {
                bad++;
                if (firstBad < 0)
                    firstBad = i;
            }

            if (double.IsFinite(d))
            {
                maxAbs = Math.Max(maxAbs, d);
                maxRel = Math.Max(maxRel, d / Math.Max(Math.Abs(w), 1e-30));
            }
        }

        return bad == 0
            ? new CheckResult(true, maxAbs, maxRel, got.Length, scope)
            : new CheckResult(false, maxAbs, maxRel, got.Length, scope,
                $"{bad} of {got.Length} outside {rtol:G2} rel + {atol:G2} abs; first at {firstBad}: got {got[(int)firstBad]:G9}, want {want[(int)firstBad]:G9}");
    }

    /// <summary>Exact equality for ids (routing, permutations).</summary>
    public static CheckResult Equal(ReadOnlySpan<int> got, ReadOnlySpan<int> want, string scope)
    {
        if (got.Length != want.Length)
            return CheckResult.Fail($"length {got.Length} != reference {want.Length}");
        for (int i = 0; i < got.Length; i++)
        {
            if (got[i] != want[i])
                return new CheckResult(false, double.NaN, double.NaN, got.Length, scope, $"element {i}: got {got[i]}, want {want[i]}");
        }

        return new CheckResult(true, 0, 0, got.Length, scope);
    }

    /// <summary>Token rows the reference recomputes: all when T is within the cap, else first, last and evenly spread ones.</summary>
    public static int[] SampleTokens(int tokens, int cap)
    {
        if (tokens <= cap)
            return Enumerable.Range(0, tokens).ToArray();
        var picks = new SortedSet<int> { 0, tokens - 1 };
        for (int i = 1; picks.Count < cap; i++)
            picks.Add((int)((long)i * tokens / cap));
        return [.. picks];
    }

    /// <summary>"all T" or "tokens a, b, c".</summary>
    public static string Scope(int[] sample, int tokens) =>
        sample.Length == tokens ? $"all {tokens} tokens" : $"tokens {string.Join(", ", sample)} of {tokens}";

    /// <summary>Rows of a row-major [rows, width] array.</summary>
    public static float[] Rows(ReadOnlySpan<float> data, int width, int[] rows)
    {
        var result = new float[rows.Length * width];
        for (int i = 0; i < rows.Length; i++)
            data.Slice(rows[i] * width, width).CopyTo(result.AsSpan(i * width, width));
        return result;
    }
}
