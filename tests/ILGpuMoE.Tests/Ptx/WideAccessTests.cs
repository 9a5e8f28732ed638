using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Ptx;

/// <summary>
/// Every kernel whose PTX has vector accesses ([KernelInfo] WideViews, checked by PtxLintTests) refuses, before the
/// launch, a view that starts off its access width: a SubView starting at element 1 gets an ArgumentException naming
/// the tensor. On a GPU that launch would be a misaligned-address fault; the CPU accelerator would run it silently.
/// </summary>
public class WideAccessTests
{
    private const int Rows = 8, Cols = 64, Experts = 2, Hidden = 32;

    // Hand-built packed matrices (contents never read: the launch is refused first) over words starting at element 1.
    private static (IDisposable Buffers, Q8Weights Q8, Q4Weights Q4, Fp8Weights Fp8) Misaligned(int rows, int cols)
    {
        var acc = TestDevice.Accelerator;
        var words = acc.Allocate1D<uint>((long)rows * cols + 4);
        var f32 = acc.Allocate1D<float>(rows);
        var f16 = acc.Allocate1D<ILGPU.Half>((long)rows * cols / 32);
        var view = words.View.SubView(1, (long)rows * cols / 4);
        var all = new Disposables(words, f32, f16);
        return (all, new Q8Weights(view, f32.View, rows, cols), new Q4Weights(view, f16.View, default, rows, cols, 32),
            new Fp8Weights(view, f32.View, rows, cols, rows, rows, cols));
    }

    private sealed class Disposables(params IDisposable[] items) : IDisposable
    {
        public void Dispose()
        {
            foreach (var d in items)
                d.Dispose();
        }
    }

    [Test]
    public void QuantGemvRefusesMisalignedWords([Values("q8", "q4", "fp8")] string scheme)
    {
        var (buffers, q8, q4, fp8) = Misaligned(Rows, Cols);
        using var _ = buffers;
        using var x = TestDevice.PoisonedFloats(Cols);
        using var y = TestDevice.PoisonedFloats(Rows);
        var s = TestDevice.Accelerator.DefaultStream;
        var kernel = QuantGemvKernel.Create(TestDevice.Accelerator);
        Action launch = scheme switch
        {
            "q8" => () => kernel.Launch(s, x.View, q8, y.View, 1),
            "q4" => () => kernel.Launch(s, x.View, q4, y.View, 1),
            "fp8" => () => kernel.Launch(s, x.View, fp8, y.View, 1),
            _ => throw new ArgumentException(scheme),
        };
        var e = Assert.Throws<ArgumentException>(() => launch())!;
        Assert.That(e.Message, Does.Contain("w.Data").And.Contain("16-byte"), e.Message);
    }

    [Test]
    public void GroupedGemvV4RefusesMisalignedWords([Values("q8", "q4", "fp8")] string scheme, [Values("w1", "w3", "w2")] string tensor)
    {
        var acc = TestDevice.Accelerator;
        var (b13, up8, up4, upf) = Misaligned(Experts * Hidden, Cols); // w1, w3 [E*F, D]
        var (b2, dn8, dn4, dnf) = Misaligned(Experts * Cols, Hidden);  // w2 [E*D, F]
        using var _1 = b13;
        using var _2 = b2;
        // The aligned twin of an up/gate matrix (words from element 0), so that only the tensor under test is off.
        using var words = acc.Allocate1D<uint>((long)Experts * Cols * Cols);
        using var perm = new MoePermutation(acc, 4, Experts, GroupedGemmKernels.GemvRows);
        using var buf = TestDevice.PoisonedFloats(4096);
        var s = acc.DefaultStream;
        var v = GroupedGemmVersion.V4PackedGemv;
        Action launch = scheme switch
        {
            "q8" => Launch(QuantGroupedGemmKernel<Q8Weights>.Create(acc), up8, dn8,
                w => new Q8Weights(words.View.SubView(0, w.Words.Length), w.Scales, w.Rows, w.Cols)),
            "q4" => Launch(QuantGroupedGemmKernel<Q4Weights>.Create(acc), up4, dn4,
                w => new Q4Weights(words.View.SubView(0, w.Words.Length), w.Scales, default, w.Rows, w.Cols, 32)),
            "fp8" => Launch(QuantGroupedGemmKernel<Fp8Weights>.Create(acc), upf, dnf,
                w => new Fp8Weights(words.View.SubView(0, w.Words.Length), w.Scales, w.Rows, w.Cols, w.Rows, w.Rows, w.Cols)),
            _ => throw new ArgumentException(scheme),
        };
        var e = Assert.Throws<ArgumentException>(() => launch())!;
        Assert.That(e.Message, Does.Contain(tensor + ".Data").And.Contain("16-byte"), e.Message);

        Action Launch<TQ>(QuantGroupedGemmKernel<TQ> k, TQ up, TQ down, Func<TQ, TQ> aligned)
            where TQ : struct, IQuantWeights => tensor switch
            {
                "w1" => () => k.LaunchUpGate(s, v, perm, buf.View, 2, 2, Cols, Hidden, up, aligned(up), buf.View),
                "w3" => () => k.LaunchUpGate(s, v, perm, buf.View, 2, 2, Cols, Hidden, aligned(up), up, buf.View),
                "w2" => () => k.LaunchDown(s, v, perm, buf.View, 2, 2, Cols, Hidden, down, buf.View),
                _ => throw new ArgumentException(tensor),
            };
    }

    [Test]
    public void GemvV2RefusesMisalignedWeights()
    {
        var kernel = MatMulKernel.Create<F32Weights>(TestDevice.Accelerator);
        using var raw = TestDevice.Upload(Data.Uniform(3, 8 * 64 + 4));
        using var x = TestDevice.Upload(Data.Uniform(4, 64));
        using var y = TestDevice.PoisonedFloats(8);
        var e = Assert.Throws<ArgumentException>(() =>
            kernel.Launch(MatMulVersion.GemvV2, TestDevice.Accelerator.DefaultStream, x.View, new F32Weights(raw.View.SubView(1, 8 * 64)), y.View, 1, 8, 64))!;
        Assert.That(e.ParamName, Is.EqualTo("w"));
        Assert.That(e.Message, Does.Contain("W's offset"));
    }
}
