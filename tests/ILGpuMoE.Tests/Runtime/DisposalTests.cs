using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Runtime;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// Safe to embed: a session, a model or a launcher used after its model, accelerator or context was disposed throws
/// ObjectDisposedException naming what is gone (before this, a session stepped after its CPU accelerator was disposed
/// ended the test host with an assertion in ILGPU's runtime), and disposing in any order never throws. Each test owns
/// its context and accelerator (the shared TestDevice must stay alive).
/// </summary>
public class DisposalTests
{
    private sealed class Owned : IDisposable
    {
        public Owned()
        {
            Context = Devices.CreateContext(cpuOnly: true);
            Accelerator = Devices.Select(Context, DeviceChoice.Cpu).CreateAccelerator(Context);
            Model = MoeModel.Load(Accelerator, RuntimeTests.FixtureDir, new ModelLoadOptions { MaxSeq = 8 });
            Session = Model.NewSession();
        }

        public Context Context { get; }

        public Accelerator Accelerator { get; }

        public MoeModel Model { get; }

        public InferenceSession Session { get; }

        public void Dispose()
        {
            Session.Dispose();
            Model.Dispose();
            Accelerator.Dispose();
            Context.Dispose();
        }
    }

    public enum Gone
    {
        Session,
        Model,
        Accelerator,
        Context,
    }

    /// <summary>The session decodes once, then one owner goes: the next decode names it; disposing everything afterwards
    /// (in the usual order, so some objects twice) throws nothing.</summary>
    [TestCase(Gone.Session, nameof(InferenceSession))]
    [TestCase(Gone.Model, nameof(MoeModel))]
    [TestCase(Gone.Accelerator, nameof(Accelerator))]
    [TestCase(Gone.Context, nameof(Context))]
    public void ASessionAfterItsOwnerIsGoneSaysWhich(Gone gone, string named)
    {
        var o = new Owned();
        Assert.That(o.Session.Decode(1), Has.Length.EqualTo(o.Model.Config.VocabSize), "works before");
        switch (gone)
        {
            case Gone.Session: o.Session.Dispose(); break;
            case Gone.Model: o.Model.Dispose(); break;
            case Gone.Accelerator: o.Accelerator.Dispose(); break;
            case Gone.Context: o.Context.Dispose(); break;
            default: throw new ArgumentOutOfRangeException(nameof(gone), gone, null);
        }

        var e = Assert.Throws<ObjectDisposedException>(() => o.Session.Decode(2))!;
        Assert.That(e.ObjectName, Is.EqualTo(named));
        if (gone != Gone.Session)
        {
            var m = Assert.Throws<ObjectDisposedException>(() => o.Model.NewSession())!;
            Assert.That(m.ObjectName, Is.EqualTo(named));
            Assert.That(o.Model.IsDisposed, Is.True);
        }

        Assert.DoesNotThrow(o.Dispose);
        Assert.DoesNotThrow(o.Dispose, "a second time");
    }

    /// <summary>Disposal in the reverse of the usual order (context first) throws nothing, and leaves every object
    /// reporting what is gone.</summary>
    [Test]
    public void DisposingOwnersFirstThrowsNothing()
    {
        var o = new Owned();
        o.Context.Dispose();
        Assert.DoesNotThrow(o.Accelerator.Dispose);
        Assert.DoesNotThrow(o.Model.Dispose);
        Assert.DoesNotThrow(o.Session.Dispose);
        Assert.Throws<ObjectDisposedException>(() => o.Session.Prefill([1, 2], allLogits: true));
    }

    /// <summary>A kernel launcher (here RmsNorm) launched after its accelerator was disposed: ObjectDisposedException
    /// naming the accelerator, from the counted launch every launcher goes through.</summary>
    [Test]
    public void ALauncherAfterItsAcceleratorIsGoneSaysSo()
    {
        using var context = Devices.CreateContext(cpuOnly: true);
        var accelerator = Devices.Select(context, DeviceChoice.Cpu).CreateAccelerator(context);
        var kernel = RmsNormKernel.Create<F32Weights>(accelerator);
        using var x = accelerator.Allocate1D<float>(64);
        using var g = accelerator.Allocate1D<float>(64);
        using var y = accelerator.Allocate1D<float>(64);
        x.MemSetToZero();
        g.MemSetToZero();
        kernel.Launch(accelerator.DefaultStream, x.View, new F32Weights(g.View), y.View, 1, 64, 1e-5f);
        accelerator.Synchronize();
        var views = (x.View, g.View, y.View);
        accelerator.Dispose();
        var e = Assert.Throws<ObjectDisposedException>(() => kernel.Launch(accelerator.DefaultStream, views.Item1, new F32Weights(views.Item2), views.Item3, 1, 64, 1e-5f))!;
        Assert.That(e.ObjectName, Is.EqualTo(nameof(Accelerator)));
        Assert.That(e.Message, Does.Contain("disposed"));
    }
}
