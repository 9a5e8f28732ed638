using ILGpuMoE.Quant;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Quant;

/// <summary>The host side of GPTQ act-order: moving packed rows, stacking per-expert permutations, the checks.</summary>
public class ActOrderTests
{
    [TestCase("q8", 24, 40)]
    [TestCase("q4-sym-g32", 24, 96)]
    [TestCase("q4-zero-g64", 17, 128)]
    public void PermuteRowsMovesRowsWithTheirScalesAndZeros(string scheme, int rows, int cols)
    {
        var m = QuantTestData.Quantize(scheme, Data.Gaussian(rows * 7 + cols, (long)rows * cols), rows, cols);
        var rng = new Random(rows + cols);
        var order = Enumerable.Range(0, rows).OrderBy(_ => rng.Next()).ToArray();
        Assert.That(order, Is.Not.EqualTo(Enumerable.Range(0, rows)), "the test order must move rows");
        var moved = m.PermuteRows(order);
        var before = QuantTestData.RefDequant(m);
        var after = QuantTestData.RefDequant(moved);
        var want = new float[before.Length];
        for (int i = 0; i < rows; i++)
            before.AsSpan(order[i] * cols, cols).CopyTo(want.AsSpan(i * cols));
        Check.BitEqual(want, after, $"{scheme} rows moved");
        Assert.That(moved.ByteSize, Is.EqualTo(m.ByteSize));
    }

    [Test]
    public void PermuteRowsRefusesFp8StackedAndBadOrders()
    {
        var w = Data.Gaussian(5, 16 * 32);
        var fp8 = QuantTestData.Quantize("fp8-block", w, 16, 32);
        Assert.That(() => fp8.PermuteRows(Enumerable.Range(0, 16).ToArray()), Throws.ArgumentException.With.Message.Contains("FP8"));
        var q4 = QuantTestData.Quantize("q4-sym-g32", w, 16, 32);
        Assert.That(() => QuantizedMatrix.Stack([q4, q4]).PermuteRows(Enumerable.Range(0, 32).ToArray()), Throws.ArgumentException.With.Message.Contains("stacked"));
        Assert.That(() => q4.PermuteRows(Enumerable.Range(0, 15).ToArray()), Throws.ArgumentException.With.Message.Contains("15 entries"));
        Assert.That(() => q4.PermuteRows([.. Enumerable.Range(0, 15), 3]), Throws.ArgumentException.With.Message.Contains("repeated"));
        Assert.That(() => q4.PermuteRows([.. Enumerable.Range(0, 15), 16]), Throws.ArgumentException.With.Message.Contains("outside"));
    }

    [Test]
    public void IsActOrderOnlyWhenSomeColumnLeavesItsGroup()
    {
        Assert.That(ActOrder.IsActOrder(Enumerable.Range(0, 96).Select(k => k / 32).ToArray(), 32), Is.False);
        Assert.That(ActOrder.IsActOrder([], 32), Is.False);
        var g = Enumerable.Range(0, 96).Select(k => k / 32).ToArray();
        (g[5], g[70]) = (g[70], g[5]);
        Assert.That(ActOrder.IsActOrder(g, 32), Is.True);
    }

    [Test]
    public void W1AndW3MustShareTheirInputOrder()
    {
        int[] a = [2, 0, 1], b = [0, 2, 1];
        Assert.DoesNotThrow(() => ActOrder.CheckSameInputOrder(null, null));
        Assert.DoesNotThrow(() => ActOrder.CheckSameInputOrder(a, [2, 0, 1]));
        Assert.That(() => ActOrder.CheckSameInputOrder(a, b), Throws.ArgumentException.With.Message.Contains("w1 and w3"));
        Assert.That(() => ActOrder.CheckSameInputOrder(a, null), Throws.ArgumentException);
        Assert.That(() => ActOrder.CheckSameInputOrder(null, b), Throws.ArgumentException);
    }
}
