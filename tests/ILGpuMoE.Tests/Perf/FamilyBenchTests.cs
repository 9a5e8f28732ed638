using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Perf.Cases;
using ILGpuMoE.Perf.EndToEnd;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Tests.Perf;

/// <summary>
/// The bench's gpt-oss and DeepSeek-V3 parts on the CPU accelerator: the presets' shapes and case lists, MXFP4 weights
/// made on the device, and the MXFP4 / gpt-oss-GLU cases' checks at a small gpt-oss-like shape (the tiny preset is a
/// Mixtral with D = 40, not whole MXFP4 blocks for the decode cases, and without gpt-oss's activation).
/// </summary>
[TestFixture]
public class FamilyBenchTests
{
    // Whole blocks of 32 (the decode cases need D, F % 32 == 0), E = 5 experts, K = 2, gpt-oss's family.
    private static readonly ShapePreset SmallGptOss = Presets.Tiny with
    {
        Name = "small-gpt-oss", Dim = 64, Hidden = 96, Experts = 5, Family = RefFamily.GptOss, QuantMoeSchemes = ["mxfp4"],
    };

    [Test]
    public void GptOssAndDeepSeekPresets_HaveTheHubConfigsShapes()
    {
        // gpt-oss-20b / -120b config.json: hidden 2880, intermediate 2880, 32 / 128 local experts, 4 per token,
        // 64 heads of 64, 8 kv heads, vocab 201088, 24 / 36 layers.
        var g20 = Presets.Get("gpt-oss-20b");
        Assert.That((g20.Dim, g20.Hidden, g20.Experts, g20.TopK, g20.Heads, g20.KvHeads, g20.HeadDim, g20.Vocab, g20.Layers),
            Is.EqualTo((2880, 2880, 32, 4, 64, 8, 64, 201088, 24)));
        var g120 = Presets.Get("gpt-oss-120b");
        Assert.That((g120.Dim, g120.Hidden, g120.Experts, g120.TopK, g120.Heads, g120.KvHeads, g120.HeadDim, g120.Layers),
            Is.EqualTo((2880, 2880, 128, 4, 64, 8, 64, 36)));
        Assert.That((g20.Family, g120.Family), Is.EqualTo((RefFamily.GptOss, RefFamily.GptOss)));
        Assert.That(g20.QuantMoeSchemes, Is.EqualTo(new[] { "mxfp4" }));
        Assert.That(g120.EndToEndLayers, Is.InRange(2, 4));

        // DeepSeek-V3: 256 routed experts of 2048, top-8 in 4 of 8 groups, 61 layers, FP8 block experts.
        var ds = Presets.Get("deepseek-v3-moe");
        Assert.That((ds.Dim, ds.Hidden, ds.Experts, ds.TopK, ds.RouterGroups, ds.RouterTopKGroups, ds.Layers, ds.Family),
            Is.EqualTo((7168, 2048, 256, 8, 8, 4, 61, RefFamily.DeepSeekV3)));
        Assert.That(ds.QuantMoeSchemes, Is.EqualTo(new[] { "fp8-block" }));
        Assert.That(ds.Note, Does.Contain("not DeepSeek's"), "its GQA attention rows say they are not DeepSeek's");
    }

    [TestCase("gpt-oss-20b")]
    [TestCase("gpt-oss-120b")]
    [TestCase("deepseek-v3-moe")]
    public void NewPresets_ListTheirCases(string name)
    {
        // Listing builds the cases without touching the device (Setup allocates); nothing here is run.
        var p = Presets.Get(name);
        using var device = BenchDevice.Open(DeviceChoice.CpuEmulator);
        var quant = p.Tokens.SelectMany(t => new QuantFamily().Cases(p, t, device)).ToList();
        var moe = quant.OfType<QuantMoeBlockCase>().ToList();
        string scheme = p.Family == RefFamily.GptOss ? "mxfp4" : "fp8-block";
        Assert.That(moe, Has.Count.EqualTo(p.Tokens.Length));
        Assert.That(moe.Select(c => c.DType), Is.All.EqualTo(scheme));
        Assert.That(moe.Single(c => c.Tokens == 1).Version, Does.Contain("v4"), "the packed GEMV at T = 1");
        Assert.That(moe.Where(c => c.Tokens > 1).Select(c => c.Version), Is.All.Contains("v2"), "tiled at T > 1");

        var decode = new DecodeFamily().Cases(p, 1, device).ToList();
        Assert.That(decode.Any(c => c.DType == "mxfp4"), Is.EqualTo(p.Dim % 32 == 0 && p.Hidden % 32 == 0));
        if (p.Family == RefFamily.GptOss)
        {
            Assert.That(moe[0].Shape, Does.Contain("gpt-oss GLU"));
            Assert.That(decode.OfType<DecodeExpertsCase>().Select(c => c.Shape), Is.All.Contains("gpt-oss GLU"));
        }

        foreach (var c in quant.Concat(decode))
            c.Dispose();
    }

    [Test]
    public void Mxfp4MoeBlock_MinBytesCountPackedBytes()
    {
        // 0.5 B per value + 1 B per 32 values (4.25 bits): gpt-oss-20b's w1, w3 [F, D] and w2 [D, F] per expert.
        var p = Presets.Get("gpt-oss-20b");
        var up = new QuantShape(QuantScheme.Mxfp4, 1, p.Hidden, p.Dim);
        Assert.That(up.BytesPerMatrix, Is.EqualTo(2880L * 2880 / 2 + 2880L * 2880 / 32));
        Assert.That(up.BytesPerMatrix * 8.0 / (2880.0 * 2880), Is.EqualTo(4.25).Within(1e-12));
    }

    [Test]
    public void Mxfp4Weights_HaveRandomCodesAndSpreadScales()
    {
        const int Cols = 96, Rows = 24;
        var shape = new QuantShape(QuantScheme.Mxfp4, Matrices: 3, Rows: Rows, Cols: Cols);
        using var device = BenchDevice.Open(DeviceChoice.CpuEmulator);
        using var w = new DeviceQuantWeights(device, shape);
        device.Stream.Synchronize();

        var words = Host(w.Mxfp4.Data);
        Assert.That(words, Has.Length.EqualTo(3 * Rows * Cols / 8));
        Assert.That(words.Distinct().Count(), Is.GreaterThan(words.Length / 2), "random, not a constant");
        var scales = Host(w.Mxfp4.Scales);
        Assert.That(scales, Has.Length.EqualTo(3 * Rows * Cols / 32));
        // c = 127 + round(log2(1 / (6 sqrt(96)))) = 127 + round(-5.88) = 121; bytes in 119..123, several of them.
        Assert.That(DeviceQuantWeights.ExponentCenter(Cols), Is.EqualTo(121));
        Assert.That(scales.Select(s => (int)s), Is.All.InRange(119, 123));
        Assert.That(scales.Distinct().Count(), Is.GreaterThanOrEqualTo(4), "blocks differ in scale: a wrong block's scale fails the checks");

        // Matrix 2 as the kernels read it: |w| <= 6 * 2^(123 - 127) and not all zero.
        var m = w.Dequantize(2);
        Assert.That(m, Has.Length.EqualTo(Rows * Cols));
        Assert.That(m, Is.All.Matches<float>(float.IsFinite));
        Assert.That(m.Max(MathF.Abs), Is.LessThanOrEqualTo(6f / 16).And.GreaterThan(0));
    }

    [TestCase(1)]
    [TestCase(5)]
    public void GptOssMxfp4Cases_MatchTheReference(int tokens)
    {
        // The quantized MoE block (V4 at T = 1, V2 tiled at T = 5) and, at T = 1, decode/experts V2 and V1: MXFP4 experts
        // with gpt-oss's clamped GLU and biases, checked against RefExpertGlu on RefMxfp4's dequantization.
        using var device = BenchDevice.Open(DeviceChoice.CpuEmulator);
        var cases = new QuantFamily().Cases(SmallGptOss, tokens, device).OfType<QuantMoeBlockCase>()
            .Concat(new DecodeFamily().Cases(SmallGptOss, tokens, device).Where(c => c.DType == "mxfp4" && c is DecodeExpertsCase)).ToList();
        Assert.That(cases, Has.Count.EqualTo(tokens == 1 ? 3 : 1));
        foreach (var c in cases)
        {
            using (c)
            {
                c.Setup(device, 1);
                var r = c.Check(device);
                Assert.That(r.Passed, Is.True, $"{c.Family} {c.DType} T={tokens}: {r.Message}");
                Assert.That(r.Compared, Is.GreaterThan(0));
            }
        }
    }

    [Test]
    public void EndToEndModels_AreTheFamilies()
    {
        // The CPU model of gpt-oss: YaRN truncate true (what llama.cpp runs), a float checkpoint; on a GPU MXFP4 experts.
        var oss = EndToEndRun.ModelFor(Presets.Get("gpt-oss-20b"), gpu: false);
        Assert.That((oss.Family, oss.Yarn?.Truncate, oss.Mxfp4Experts, oss.UseSlidingWindow), Is.EqualTo((RefFamily.GptOss, (bool?)true, false, true)));
        var ossGpu = EndToEndRun.ModelFor(Presets.Get("gpt-oss-120b"), gpu: true);
        Assert.That((ossGpu.Mxfp4Experts, ossGpu.Layers, ossGpu.Experts), Is.EqualTo((true, 2, 128)));
        var ds = EndToEndRun.ModelFor(Presets.Get("deepseek-v3-moe"), gpu: true);
        Assert.That((ds.Family, ds.KvLoraRank, ds.QkRopeHeadDim, ds.FirstKDenseReplace, ds.Groups, ds.TopKGroups),
            Is.EqualTo((RefFamily.DeepSeekV3, 512, 64, 0, 8, 4)));
    }

    private static T[] Host<T>(ArrayView<T> view)
        where T : unmanaged
    {
        var a = new T[view.Length];
        view.CopyToCPU(a);
        return a;
    }
}
