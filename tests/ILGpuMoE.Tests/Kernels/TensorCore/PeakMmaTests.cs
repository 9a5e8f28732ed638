using ILGPU.Runtime;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.TensorCore;

/// <summary>
/// The peak-mma microbenchmark kernel (kernels/ILGpuMoE.Kernels/TensorCore/PeakMma.cs) on the CPU accelerator against
/// RefTensorCore.PeakMmaSums: random BF16 tiles, every warp's sums, outputs poisoned with NaN.
/// </summary>
public class PeakMmaTests
{
    private static (uint[] Words, float[] Values) Bf16Tile(int seed, int values)
    {
        var bits = Data.Uniform(seed, values).Select(BF16.FromFloat).ToArray();
        var words = Enumerable.Range(0, values / 2).Select(i => bits[2 * i] | ((uint)bits[2 * i + 1] << 16)).ToArray();
        return (words, bits.Select(BF16.ToFloat).ToArray());
    }

    [TestCase(1, 1, 0)]
    [TestCase(1, 1, 3)]
    [TestCase(2, 3, 1)]
    public void EveryWarpWritesTheChainsSum(int groups, int warpsPerGroup, int iterations)
    {
        var acc = TestDevice.Accelerator;
        var (aWords, a) = Bf16Tile(71 + iterations, 256);
        var (wWords, w) = Bf16Tile(73 + groups, 128);
        using var aBuf = TestDevice.Upload(aWords);
        using var wBuf = TestDevice.Upload(wWords);
        int warps = groups * warpsPerGroup;
        using var sums = TestDevice.PoisonedFloats(warps * PeakMma.SumsPerWarp);
        PeakMma.Create(acc).Launch(acc.DefaultStream, aBuf.View, wBuf.View, sums.View, groups, iterations, warpsPerGroup);
        acc.Synchronize();
        var got = sums.GetAsArray1D();

        var expected = RefTensorCore.PeakMmaSums(a, w, iterations, PeakMma.Chains);
        // F32 accumulation over iterations x 16 exact products and the 8-chain sum: ulps of the largest partial sums.
        double scale = PeakMma.Chains * (PeakMma.Chains + iterations * 16.0);
        for (int warp = 0; warp < warps; warp++)
            Check.Close(expected, got.AsSpan(warp * PeakMma.SumsPerWarp, PeakMma.SumsPerWarp), 1e-5, 1e-6 * scale, $"warp {warp}");
        Assert.That(PeakMma.Flops(groups, iterations, warpsPerGroup), Is.EqualTo(warps * iterations * 8 * 4096.0));
    }

    [Test]
    public void BadArgumentsAreOneLineErrors()
    {
        var acc = TestDevice.Accelerator;
        var peak = PeakMma.Create(acc);
        using var a = TestDevice.Upload(new uint[PeakMma.AWords]);
        using var w = TestDevice.Upload(new uint[PeakMma.WWords]);
        using var sums = TestDevice.PoisonedFloats(8 * PeakMma.SumsPerWarp);
        var s = acc.DefaultStream;
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => peak.Launch(s, a.View, w.View, sums.View, 0, 1))!.Message, Does.Contain("groups"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => peak.Launch(s, a.View, w.View, sums.View, 1, -1))!.Message, Does.Contain("iterations"));
        Assert.That(Assert.Throws<ArgumentException>(() => peak.Launch(s, w.View, w.View, sums.View, 1, 1))!.Message, Does.Contain("A [16, 16]"));
        Assert.That(Assert.Throws<ArgumentException>(() => peak.Launch(s, a.View, a.View, sums.View, 1, 1))!.Message, Does.Contain("W [8, 16]"));
        Assert.That(Assert.Throws<ArgumentException>(() => peak.Launch(s, a.View, w.View, sums.View, 2, 1))!.Message, Does.Contain("2 groups of 8 warps write 2048"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => peak.Launch(s, a.View, w.View, sums.View, 1, 1, 9))!.Message, Does.Contain("1 to 8 warps"));
    }
}
