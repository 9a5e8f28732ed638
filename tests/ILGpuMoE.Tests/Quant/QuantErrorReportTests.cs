using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Quant;

/// <summary>
/// The quantization error itself (separate from the kernels' tests, which compare against the dequantized weights):
/// relative Frobenius error ||deq(q(W)) - W|| / ||W|| per scheme on uniform and Gaussian weights, printed and bounded.
/// </summary>
public class QuantErrorReportTests
{
    // Bounds well above what each scheme gives (expected ~ int8 0.3-0.6%, int4 g32..g128 6-13%, fp8 ~2.5%),
    // but far below what a wrong scale or a broken rounding gives.
    private static readonly (string Scheme, double Bound)[] Schemes =
    [
        ("q8", 0.01),
        ("q4-sym-g32", 0.15),
        ("q4-zero-g64", 0.15),
        ("q4-sym-g128", 0.15),
        ("q4-zero-g128", 0.15),
        ("fp8-block128", 0.05),
        ("fp8-tensor", 0.05),
    ];

    [Test]
    public void RelativeFrobeniusErrorPerScheme()
    {
        const int rows = 64, cols = 512;
        var inputs = new (string Name, float[] W)[]
        {
            ("uniform", Data.Uniform(21, (long)rows * cols, 0.05f)),
            ("gaussian", Data.Gaussian(22, (long)rows * cols, 0.02)),
        };
        var lines = new List<string> { $"quantization error, W [{rows}, {cols}] (relative Frobenius)" };
        foreach (var (scheme, bound) in Schemes)
        {
            var parts = new List<string>();
            foreach (var (name, w) in inputs)
            {
                var m = QuantTestData.Quantize(scheme, w, rows, cols);
                double err = RefQuant.RelativeFrobeniusError(QuantTestData.RefDequant(m), w);
                parts.Add($"{name} {err * 100:F3}%");
                Assert.That(err, Is.LessThan(bound), $"{scheme} on {name}");
                Assert.That(err, Is.GreaterThan(0), $"{scheme} on {name}: lossless is impossible on random floats");
            }

            lines.Add($"  {scheme,-14} {string.Join("  ", parts)}");
        }

        TestContext.Out.WriteLine(string.Join(Environment.NewLine, lines));
    }
}
