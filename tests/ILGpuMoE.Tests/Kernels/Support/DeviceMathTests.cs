using ILGpuMoE.Kernels;

namespace ILGpuMoE.Tests.Kernels.Support;

/// <summary>DeviceMath (the register-only f64 log / exp / cos(2 pi u) of the NoisyTopK noise) against System.Math on its
/// domains, including the ends: u1 in [2^-53, 1], 1 + e in [1, 2], y in [-800, 0], u in [0, 1].</summary>
[TestFixture]
public class DeviceMathTests
{
    private const double TwoPowMinus53 = 1.0 / 9007199254740992.0;

    private static void Near(double got, double expected, double relative, double absolute, string what) =>
        Assert.That(Math.Abs(got - expected), Is.LessThanOrEqualTo(relative * Math.Abs(expected) + absolute),
            $"{what}: got {got:R}, expected {expected:R}");

    [Test]
    public void LogMatchesMath()
    {
        var rng = new Random(11);
        double[] ends = [TwoPowMinus53, 0.5, Math.BitDecrement(1.0), 1.0, Math.BitIncrement(1.0), Math.Sqrt(2.0), 1.5, 2.0];
        foreach (double x in ends.Concat(Enumerable.Range(0, 20000).Select(i =>
                     i % 2 == 0 ? (rng.NextInt64(1L << 53) + 1) * TwoPowMinus53 : 1.0 + rng.NextDouble())))
            Near(DeviceMath.Log(x), Math.Log(x), 1e-15, 1e-300, $"Log({x:R})");
    }

    [Test]
    public void ExpNonPositiveMatchesMath()
    {
        var rng = new Random(12);
        double[] ends = [0.0, -0.0, -1e-300, -0.34657359027997264, -708.0, -740.0, -745.1, -745.3, -800.0, double.NegativeInfinity];
        foreach (double y in ends.Concat(Enumerable.Range(0, 20000).Select(i =>
                     i % 2 == 0 ? -rng.NextDouble() * 30 : -rng.NextDouble() * 760)))
            Near(DeviceMath.ExpNonPositive(y), Math.Exp(y), 1e-15, 1e-323, $"Exp({y:R})");
    }

    [Test]
    public void CosTwoPiMatchesMath()
    {
        var rng = new Random(13);
        double[] ends = [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, Math.BitDecrement(1.0), 1.0, TwoPowMinus53];
        foreach (double u in ends.Concat(Enumerable.Range(0, 20000).Select(_ => rng.NextInt64(1L << 53) * TwoPowMinus53)))
        {
            // Math.Cos sees 2 pi u rounded to double (up to 4e-16 off for u near 1): compare absolutely at that scale.
            Near(DeviceMath.CosTwoPi(u), Math.Cos(2.0 * Math.PI * u), 0, 2e-15, $"CosTwoPi({u:R})");
        }
    }
}
