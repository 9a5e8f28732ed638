using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Dense;

/// <summary>
/// dense/rope with the per-head q/k RMSNorm (Qwen3-MoE's q_norm / k_norm) fused before the rotation: V2HeadNorm and
/// V3WarpNorm against RefOps.HeadNormRope (RmsNorm over the T*heads rows of Dh, then Rope), GQA with an odd count of
/// heads, each norm alone; without a norm both rotate with V1's bits.
/// </summary>
public class RopeNormTests
{
    private const float Theta = 1e6f, Eps = 1e-6f;

    private static readonly RopeVersion[] NormVersions = [RopeVersion.V2HeadNorm, RopeVersion.V3WarpNorm];

    private static RopeKernel? shared;

    private static RopeKernel Kernel()
    {
        lock (typeof(RopeNormTests))
            return shared ??= RopeKernel.Create(TestDevice.Accelerator);
    }

    /// <summary>Runs one version in place; qw / kw null: that norm is off. Returns (q, k) after the launch.</summary>
    private static (float[] Q, float[] K) Run(RopeVersion? version, float[] q, float[] k, int[] positions, int heads, int kvHeads, int headDim,
        float[]? qw, float[]? kw)
    {
        using var qb = TestDevice.Upload(q);
        using var kb = TestDevice.Upload(k);
        using var pb = TestDevice.Upload(positions);
        using var qwb = qw is null ? null : TestDevice.Upload(qw);
        using var kwb = kw is null ? null : TestDevice.Upload(kw);
        var s = TestDevice.Accelerator.DefaultStream;
        Kernel().Launch(s, qb.View, kb.View, pb.View, positions.Length, heads, kvHeads, headDim, Theta,
            qwb is null ? default : qwb.View, kwb is null ? default : kwb.View, Eps, version);
        s.Synchronize();
        return (qb.GetAsArray1D(), kb.GetAsArray1D());
    }

    // Dh = 16 with 3 q heads over 1 kv head (GQA 3:1, odd count); Dh = 128 (Qwen3's) 4:2; Dh = 80 (a lane count that is
    // not a multiple of 32 pairs: 40 pairs over 32 lanes); one token. normQ / normK: which norms are on.
    [TestCase(5, 3, 1, 16, true, true)]
    [TestCase(2, 4, 2, 128, true, true)]
    [TestCase(3, 5, 1, 80, true, false)]
    [TestCase(1, 3, 3, 16, false, true)]
    public void HeadNormMatchesReference(int tokens, int heads, int kvHeads, int headDim, bool normQ, bool normK)
    {
        int seed = 40 + tokens * 3 + headDim;
        // Values of scale 3 (so the norm is far from the identity) and weights around 1.
        var q = Data.Gaussian(seed, (long)tokens * heads * headDim, 3);
        var k = Data.Gaussian(seed + 1, (long)tokens * kvHeads * headDim, 3);
        var qw = Data.Uniform(seed + 2, headDim, 0.5f).Select(v => 1f + v).ToArray();
        var kw = Data.Uniform(seed + 3, headDim, 0.5f).Select(v => 1f + v).ToArray();
        var positions = Enumerable.Range(0, tokens).Select(t => 7 + 301 * t).ToArray();
        var wantQ = normQ ? RefOps.HeadNormRope(q, qw, positions, tokens, heads, headDim, Eps, Theta) : RefOps.Rope(q, positions, tokens, heads, headDim, Theta);
        var wantK = normK ? RefOps.HeadNormRope(k, kw, positions, tokens, kvHeads, headDim, Eps, Theta) : RefOps.Rope(k, positions, tokens, kvHeads, headDim, Theta);
        foreach (var v in NormVersions.Cast<RopeVersion?>().Append(null))
        {
            var (gotQ, gotK) = Run(v, q, k, positions, heads, kvHeads, headDim, normQ ? qw : null, normK ? kw : null);
            Check.Close(wantQ, gotQ, 1e-5, 2e-6, $"{v?.ToString() ?? "auto"} q");
            Check.Close(wantK, gotK, 1e-5, 2e-6, $"{v?.ToString() ?? "auto"} k");
        }
    }

    [Test]
    public void WithoutANormTheNewVersionsRotateWithV1Bits()
    {
        const int tokens = 3, heads = 3, kvHeads = 1, headDim = 16;
        var q = Data.Uniform(71, (long)tokens * heads * headDim);
        var k = Data.Uniform(72, (long)tokens * kvHeads * headDim);
        int[] positions = [0, 9, 4000];
        var (v1Q, v1K) = Run(RopeVersion.V1, q, k, positions, heads, kvHeads, headDim, null, null);
        foreach (var v in NormVersions)
        {
            var (gotQ, gotK) = Run(v, q, k, positions, heads, kvHeads, headDim, null, null);
            Check.BitEqual(v1Q, gotQ, $"{v} q");
            Check.BitEqual(v1K, gotK, $"{v} k");
        }
    }

    [Test]
    public void RejectsBadNormArguments()
    {
        var s = TestDevice.Accelerator.DefaultStream;
        using var q = TestDevice.Upload(Data.Uniform(81, 2 * 16));
        using var k = TestDevice.Upload(Data.Uniform(82, 16));
        using var p = TestDevice.Upload(new[] { 3 });
        using var w = TestDevice.Upload(Data.Uniform(83, 17));
        var kernel = Kernel();
        var e = Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, k.View, p.View, 1, 2, 1, 16, Theta, w.View, default, Eps))!;
        Assert.That(e.Message, Does.Contain("qNorm"));
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, k.View, p.View, 1, 2, 1, 16, Theta, default, w.View.SubView(0, 15), Eps), "kNorm [15]");
        Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, k.View, p.View, 1, 2, 1, 16, Theta, w.View.SubView(0, 16), default, float.NaN), "eps NaN");
        var v1 = Assert.Throws<ArgumentException>(() => kernel.Launch(s, q.View, k.View, p.View, 1, 2, 1, 16, Theta, w.View.SubView(0, 16), default, Eps,
            RopeVersion.V1))!;
        Assert.That(v1.Message, Does.Contain("V1 has no per-head norm"));
    }
}
