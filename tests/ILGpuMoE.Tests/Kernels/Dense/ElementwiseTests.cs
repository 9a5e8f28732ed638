using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Dense;

/// <summary>RoPE, SwiGLU and the residual add.</summary>
public class ElementwiseTests
{
    private const float Theta = 1e6f; // Mixtral's rope_theta

    [TestCase(1, 4, 2, 16, 0)]
    [TestCase(3, 4, 2, 16, 5)]
    [TestCase(17, 2, 1, 10, 100)]
    public void RopeMatchesReference(int tokens, int heads, int kvHeads, int headDim, int start)
    {
        var positions = Enumerable.Range(start, tokens).ToArray();
        RunRope(tokens, heads, kvHeads, headDim, positions, atol: 1e-6);
    }

    [Test]
    public void RopeLargePositionsStayCloseToExactAngles()
    {
        // Dh = 128 as Mixtral, positions up to 8191 in random order (decode offsets, long prompts).
        const int tokens = 24;
        var positions = Data.Ints(980, tokens, 0, 8192);
        positions[0] = 8191;
        positions[1] = 4095;
        RunRope(tokens, 2, 1, 128, positions, atol: 3e-7);
    }

    private static void RunRope(int tokens, int heads, int kvHeads, int headDim, int[] positions, double atol)
    {
        var q = Data.Uniform(990 + tokens, (long)tokens * heads * headDim);
        var k = Data.Uniform(991 + tokens, (long)tokens * kvHeads * headDim);
        using var qBuf = TestDevice.Upload(q);
        using var kBuf = TestDevice.Upload(k);
        using var pBuf = TestDevice.Upload(positions);
        using var kernel = RopeKernel.Create(TestDevice.Accelerator);
        var gotQ = DenseTestWeights.Run(s => kernel.Launch(s, qBuf.View, kBuf.View, pBuf.View, tokens, heads, kvHeads, headDim, Theta), qBuf);
        var gotK = kBuf.GetAsArray1D();
        Check.Close(RefOps.Rope(q, positions, tokens, heads, headDim, Theta), gotQ, 1e-5, atol, "q");
        Check.Close(RefOps.Rope(k, positions, tokens, kvHeads, headDim, Theta), gotK, 1e-5, atol, "k");
    }

    [Test]
    public void RopeRejectsOddHeadDim()
    {
        using var kernel = RopeKernel.Create(TestDevice.Accelerator);
        using var q = TestDevice.Upload(Data.Uniform(995, 9));
        using var p = TestDevice.Upload(new[] { 0 });
        var e = Assert.Throws<ArgumentException>(() => kernel.Launch(TestDevice.Accelerator.DefaultStream, q.View, q.View, p.View, 1, 1, 1, 9, Theta))!;
        Assert.That(e.Message, Does.Contain("headDim must be even"));
    }

    [TestCase(1)]
    [TestCase(1000)]
    public void SwiGluMatchesReference(int n)
    {
        var gate = Data.Gaussian(1000 + n, n, 3);
        var up = Data.Gaussian(1001 + n, n, 2);
        var kernel = SwiGluKernel.Create(TestDevice.Accelerator);
        using var g = TestDevice.Upload(gate);
        using var u = TestDevice.Upload(up);
        using var y = TestDevice.PoisonedFloats(n);
        var got = DenseTestWeights.Run(s => kernel.Launch(s, g.View, u.View, y.View), y);
        Check.Close(RefOps.SwiGlu(gate, up), got, 1e-5, 1e-7, "swiglu");
    }

    [TestCase(1, 67)]
    [TestCase(17, 40)]
    public void SwiGluFusedLayoutIsGateThenUp(int tokens, int hidden)
    {
        var gateUp = Data.Gaussian(1010 + tokens, 2L * tokens * hidden, 3);
        var gate = new float[tokens * hidden];
        var up = new float[tokens * hidden];
        for (int t = 0; t < tokens; t++)
        {
            Array.Copy(gateUp, 2 * t * hidden, gate, t * hidden, hidden);
            Array.Copy(gateUp, 2 * t * hidden + hidden, up, t * hidden, hidden);
        }

        var kernel = SwiGluKernel.Create(TestDevice.Accelerator);
        using var gu = TestDevice.Upload(gateUp);
        using var y = TestDevice.PoisonedFloats(tokens * hidden);
        var got = DenseTestWeights.Run(s => kernel.LaunchFused(s, gu.View, y.View, tokens, hidden), y);
        Check.Close(RefOps.SwiGlu(gate, up), got, 1e-5, 1e-7, "fused swiglu");
    }

    [Test]
    public void AddInPlaceIsExact()
    {
        const int n = 1001;
        var a = Data.Gaussian(1020, n);
        var b = Data.Gaussian(1021, n);
        var kernel = ElementwiseKernel.Create(TestDevice.Accelerator);
        using var aBuf = TestDevice.Upload(a);
        using var bBuf = TestDevice.Upload(b);
        var got = DenseTestWeights.Run(s => kernel.Add(s, aBuf.View, bBuf.View, aBuf.View), aBuf);
        Check.BitEqual(a.Zip(b, (x, y) => x + y).ToArray(), got, "a + b");
        Assert.Throws<ArgumentException>(() => kernel.Add(TestDevice.Accelerator.DefaultStream, aBuf.View, bBuf.View.SubView(1, n - 1), aBuf.View));
    }
}
