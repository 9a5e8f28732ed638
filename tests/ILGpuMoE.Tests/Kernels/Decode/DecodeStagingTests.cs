using ILGpuMoE.Kernels.Decode;

namespace ILGpuMoE.Tests.Kernels.Decode;

/// <summary>The host-side arithmetic the decode kernels rely on: the padded slot layout and the unit division.</summary>
public class DecodeStagingTests
{
    /// <summary>
    /// In a warp step lane l reads value v of unit u0 + l (u0 a multiple of 32 units, as the warp loop steps): the 32
    /// lanes must hit 32 different banks (slot mod 32) for every unit width and every v. Without the pad they would not
    /// (checked too, so the test can fail).
    /// </summary>
    [Test]
    public void PaddedSlotsAreConflictFreeForEveryUnitWidth([Values(4, 8, 16, 32)] int unitValues)
    {
        foreach (int u0 in new[] { 0, 32, 64, 96 })
        {
            if ((u0 + 32) * unitValues > DecodeStaging.TileCols)
                continue;
            for (int v = 0; v < unitValues; v++)
            {
                var banks = Enumerable.Range(0, 32).Select(l => DecodeStaging.Slot((u0 + l) * unitValues + v) % 32).Distinct().Count();
                Assert.That(banks, Is.EqualTo(32), $"U={unitValues} u0={u0} v={v}");
                var plain = Enumerable.Range(0, 32).Select(l => ((u0 + l) * unitValues + v) % 32).Distinct().Count();
                Assert.That(plain, Is.EqualTo(32 / unitValues), "without the pad, U lanes share each bank");
            }
        }

        // A unit's values are consecutive slots (what DecodeStaging.UnitSlots assumes), and the tile fits its slots.
        for (int k0 = 0; k0 < DecodeStaging.TileCols; k0 += unitValues)
            Assert.That(DecodeStaging.Slot(k0 + unitValues - 1), Is.EqualTo(DecodeStaging.Slot(k0) + unitValues - 1), $"k0={k0}");
        Assert.That(DecodeStaging.Slot(DecodeStaging.TileCols - 1), Is.LessThan(DecodeStaging.TileSlots));
    }

    /// <summary>n / d by multiply-high equals integer division for every n &lt; 2^16, for divisors that occur (units per
    /// Q4 group: 1, 2, 4, 3 for G = 96, 448 for G = K = 14336; FP8 units per 128-block: 8) and awkward ones.</summary>
    [Test]
    public void UnitDivideIsExact([Values(1, 2, 3, 4, 7, 8, 448, 1000, 4097, 65535)] int divisor)
    {
        var (magic, mask) = UnitDivide.For(divisor);
        for (int n = 0; n < UnitDivide.Limit; n++)
        {
            if (UnitDivide.Divide(n, magic, mask) != n / divisor)
                Assert.Fail($"{n} / {divisor}: got {UnitDivide.Divide(n, magic, mask)}");
        }
    }

    [Test]
    public void UnitDivideRefusesDivisorsOutOfRange()
    {
        Assert.Throws<ArgumentException>(() => UnitDivide.For(0));
        Assert.Throws<ArgumentException>(() => UnitDivide.For(UnitDivide.Limit));
    }
}
