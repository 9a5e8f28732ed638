using ILGPU;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.TensorCore;

/// <summary>
/// The tensor-core loader (kernels/ILGpuMoE.Kernels/TensorCore/TensorCoreLoader.cs) as far as it runs without a GPU:
/// the reflected PTXCompiledKernel constructor on a kernel compiled by ILGPU's PTX backend, and the CPU path (plain
/// LoadCounted: launched, counted, and computing what the emulation computes).
/// </summary>
public class TensorCoreLoaderTests
{
    [Test]
    public void PatchBuildsAPtxCompiledKernelCarryingThePromotedText()
    {
        CudaDriver.InstallResolver();
        using var context = Context.Create(b => b.Default().Optimize(OptimizationLevel.O2));
        var method = typeof(PtxAsmOperandsTests).GetMethod(nameof(PtxAsmOperandsTests.AllPrimitives), System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic)!;
        var compiled = PtxAsmOperandsTests.Compile(method, context);
        var (patched, pass) = TensorCoreLoader.Patch(compiled);

        Assert.That(patched, Is.Not.SameAs(compiled));
        Assert.That(patched.PTXAssembly, Is.EqualTo(pass.Ptx));
        Assert.That(patched.PTXAssembly, Does.Not.Contain(".local"));
        Assert.That(compiled.PTXAssembly, Does.Contain(".local"), "the original is left as it was");
        Assert.That(pass.Promoted, Is.Not.Empty);
        // Everything but the text is the original's: the launcher ILGPU builds from it marshals the same parameters.
        Assert.That((patched.Context, patched.Name, patched.SourceMethod, patched.NumParameters, patched.IndexType),
            Is.EqualTo((compiled.Context, compiled.Name, compiled.SourceMethod, compiled.NumParameters, compiled.IndexType)));
        Assert.That(patched.Info, Is.SameAs(compiled.Info));
        Assert.That(patched.Specialization, Is.EqualTo(compiled.Specialization));

        var copy = TensorCoreLoader.WithPtx(compiled, "// any text");
        Assert.That(copy.PTXAssembly, Is.EqualTo("// any text"));
        Assert.Throws<ArgumentNullException>(() => TensorCoreLoader.WithPtx(compiled, null!));
    }

    [Test]
    public void EveryLoadCountedArityHasALoadTensorCore()
    {
        // The lead switches tensor-core launchers from LoadCounted to LoadTensorCore by name alone: same arities, same
        // launcher type, one more optional parameter.
        var methods = typeof(KernelLaunches).GetMethods(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static);
        // The plain LoadCounted overloads (accelerator, kernel); the persistent-grid ones (groupSize, out resident groups)
        // serve the decode V2 launchers and have no tensor-core twin.
        var counted = methods.Where(m => m.Name == nameof(KernelLaunches.LoadCounted) && m.GetParameters().Length == 2)
            .OrderBy(m => m.GetGenericArguments().Length).ToList();
        var tensor = methods.Where(m => m.Name == nameof(KernelLaunches.LoadTensorCore)).OrderBy(m => m.GetGenericArguments().Length).ToList();
        Assert.That(tensor.Select(m => m.GetGenericArguments().Length), Is.EqualTo(counted.Select(m => m.GetGenericArguments().Length)));
        Assert.That(counted, Has.Count.EqualTo(14));
        for (int i = 0; i < counted.Count; i++)
        {
            Assert.That(tensor[i].ReturnType.GetGenericTypeDefinition(), Is.EqualTo(counted[i].ReturnType.GetGenericTypeDefinition()));
            var last = tensor[i].GetParameters()[^1];
            Assert.That((last.Name, last.HasDefaultValue, last.DefaultValue), Is.EqualTo(("maxDynamicSharedBytes", true, (object)0)));
        }
    }

    [Test]
    public void OnTheCpuAcceleratorItIsLoadCounted()
    {
        // PeakMma loads its kernel through LoadTensorCore: one launch counts one, as LoadCounted's launches do.
        var acc = TestDevice.Accelerator;
        var peak = PeakMma.Create(acc);
        using var a = TestDevice.Upload(Enumerable.Range(0, PeakMma.AWords).Select(i => 0x3F803F80u).ToArray()); // 1.0 in both halves
        using var w = TestDevice.Upload(Enumerable.Range(0, PeakMma.WWords).Select(i => 0x40003F80u).ToArray()); // 1.0, 2.0
        using var sums = TestDevice.PoisonedFloats(2 * PeakMma.SumsPerWarp);
        long before = KernelLaunches.Count;
        peak.Launch(acc.DefaultStream, a.View, w.View, sums.View, groups: 1, iterations: 1, warpsPerGroup: 2);
        acc.Synchronize();
        Assert.That(KernelLaunches.Count - before, Is.EqualTo(1));
        // Hand-worked: A = all ones, every W row alternates 1, 2 along k (8 ones, 8 twos): each dot is 24; one iteration of
        // 8 chains starting at 0..7: 28 + 8 * 24 = 220 everywhere.
        Assert.That(sums.GetAsArray1D(), Is.All.EqualTo(220f));
    }
}
