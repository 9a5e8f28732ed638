using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Perf.Suite;

namespace ILGpuMoE.Tests.Perf;

/// <summary>
/// The quant cases' weights are random codes made on the device (Suite/DeviceQuant.cs). The kernels' checks cannot see
/// a code the layout forbids (the reference reads the same bytes), so the layout rules are checked here directly.
/// </summary>
[TestFixture]
public class DeviceQuantTests
{
    [TestCase(QuantScheme.Q8)]
    [TestCase(QuantScheme.Fp8)]
    [TestCase(QuantScheme.Q4)]
    public void Codes_FollowTheLayout(QuantScheme scheme)
    {
        // K = 40 is not a multiple of 16 (int8/FP8 rows end in a padded unit); int4 needs K a multiple of G = 32.
        int cols = scheme == QuantScheme.Q4 ? 64 : 40;
        var shape = new QuantShape(scheme, Matrices: 3, Rows: 24, Cols: cols, GroupSize: 32, BlockN: 16, BlockK: 32);
        using var device = BenchDevice.Open(DeviceChoice.CpuEmulator);
        using var w = new DeviceQuantWeights(device, shape);
        device.Stream.Synchronize();

        float nominal = 1f / (shape.MaxCode * MathF.Sqrt(cols));
        var words = Host(scheme switch
        {
            QuantScheme.Q8 => w.Q8.Data,
            QuantScheme.Q4 => w.Q4.Data,
            _ => w.Fp8.Data,
        });
        Assert.That(words, Has.Length.EqualTo(shape.TotalRows * shape.RowWords));
        Assert.That(words.Distinct().Count(), Is.GreaterThan(words.Length / 2), "random, not a constant");
        for (long row = 0; row < shape.TotalRows; row++)
        {
            for (int k = 0; k < shape.RowWords * 4 && scheme != QuantScheme.Q4; k++)
            {
                uint b = (words[row * shape.RowWords + k / 4] >> (8 * (k % 4))) & 0xFFu;
                if (k >= cols)
                    Assert.That(b, Is.Zero, $"row {row} byte {k} is past K = {cols}: must be 0");
                else if (scheme == QuantScheme.Q8)
                    Assert.That(b, Is.Not.EqualTo(0x80u), "int8 codes are in [-127, 127]");
                else
                    Assert.That(b & 0x7Fu, Is.Not.EqualTo(0x7Fu), "no FP8 NaN code");
            }
        }

        float[] scales = scheme == QuantScheme.Q4
            ? [.. Host(w.Q4.Scales).Select(h => (float)h)]
            : Host(scheme == QuantScheme.Q8 ? w.Q8.Scales : w.Fp8.Scales);
        Assert.That(scales, Has.Length.EqualTo(shape.Matrices * shape.ScalesPerMatrix));
        Assert.That(scales, Is.All.InRange(0.49f * nominal, 1.51f * nominal), "positive scales of 1/(qmax sqrt(K))");

        // Dequantize(m) reads matrix m of the stack: finite weights of size O(1/sqrt(K)), as the float cases'.
        var m = w.Dequantize(2);
        Assert.That(m, Has.Length.EqualTo(24 * cols));
        Assert.That(m, Is.All.Matches<float>(float.IsFinite));
        Assert.That(m.Max(MathF.Abs), Is.LessThanOrEqualTo(1.51f / MathF.Sqrt(cols)).And.GreaterThan(0));
    }

    private static T[] Host<T>(ArrayView<T> view)
        where T : unmanaged
    {
        var a = new T[view.Length];
        view.CopyToCPU(a);
        return a;
    }
}
