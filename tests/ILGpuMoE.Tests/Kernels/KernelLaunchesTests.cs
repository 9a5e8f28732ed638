using ILGPU;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels;

/// <summary>The launch counter behind "launches per token": every launch counts, once.</summary>
public class KernelLaunchesTests
{
    [Test]
    public void EachLaunchCountsOnce()
    {
        var a = TestDevice.Accelerator;
        var matmul = MatMulKernel.Create<F32Weights>(a);
        using var x = TestDevice.Upload(Data.Uniform(1, 5));
        using var w = TestDevice.Upload(Data.Uniform(2, 3 * 5));
        using var y = TestDevice.PoisonedFloats(3);
        long before = KernelLaunches.Count;
        matmul.Launch(MatMulVersion.V1, a.DefaultStream, x.View, new F32Weights(w.View), y.View, 1, 3, 5);
        matmul.Launch(MatMulVersion.GemvV1, a.DefaultStream, x.View, new F32Weights(w.View), y.View, 1, 3, 5);
        a.Synchronize();
        Assert.That(KernelLaunches.Count - before, Is.EqualTo(2));
    }

    [Test]
    public void ASplitGemvCountsItsReduceToo()
    {
        // Two splits: the GEMV writes partials, a second kernel adds them (QuantGemv.cs).
        var a = TestDevice.Accelerator;
        var q = ILGpuMoE.Tests.Quant.QuantTestData.Quantize("q8", Data.Uniform(3, 4 * 64), 4, 64);
        using var dev = q.Upload(a);
        var gemv = QuantGemvKernel.Create(a);
        using var x = TestDevice.Upload(Data.Uniform(4, 64));
        using var y = TestDevice.PoisonedFloats(4);
        using var scratch = TestDevice.PoisonedFloats(QuantGemvKernel.ScratchLength(1, 4, 2));
        long before = KernelLaunches.Count;
        gemv.Launch(a.DefaultStream, x.View, dev.View<Q8Weights>(), y.View, 1, splits: 2, scratch: scratch.View);
        a.Synchronize();
        Assert.That(KernelLaunches.Count - before, Is.EqualTo(2));
    }

    [Test]
    public void NoLauncherBypassesTheCounter()
    {
        // A launcher that loads a kernel with ILGPU's LoadKernel launches uncounted, and "launches per token" would lie.
        // The two loaders themselves are exempt: LoadCounted (KernelLaunches.cs) and LoadTensorCore (TensorCoreLoader.cs,
        // which loads the patched PTX with LoadKernel and counts in the delegate it returns, as LoadCounted does).
        var kernels = Path.Combine(Repo.Root(), "kernels");
        string[] loaders = ["KernelLaunches.cs", "TensorCoreLoader.cs"];
        var offenders = Directory.EnumerateFiles(kernels, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") && !loaders.Contains(Path.GetFileName(f)))
            .Where(f => File.ReadAllText(f).Contains(".LoadKernel", StringComparison.Ordinal))
            .Select(f => Path.GetRelativePath(kernels, f))
            .ToList();
        Assert.That(offenders, Is.Empty, "use accelerator.LoadCounted (Common/KernelLaunches.cs) or LoadTensorCore instead of LoadKernel");
    }
}
