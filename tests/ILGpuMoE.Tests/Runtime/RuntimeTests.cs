using System.Runtime.InteropServices;
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>The runtime (our ILGPU kernels end to end, on the CPU accelerator) against llama.cpp's fixture logits and the
/// plain-C# oracle RefMixtral on make-model checkpoints.</summary>
public class RuntimeTests
{
    private string _dir = "";

    internal static string FixtureDir => Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", "mixtral-tiny-f32");

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-runtime-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    internal static (int[] Tokens, float[] Logits) Expected()
    {
        using var expected = SafeTensorsFile.Open(Path.Combine(FixtureDir, "expected.safetensors"));
        return (MemoryMarshal.Cast<byte, int>(expected.GetBytes("tokens")).ToArray(), expected.ReadFloat32("logits"));
    }

    internal static RefMixtral Oracle(string dir)
    {
        var c = ModelConfig.Load(dir);
        using var ck = Checkpoint.Open(dir);
        var cfg = new RefMixtralConfig(c.HiddenSize, c.IntermediateSize, c.Layers, c.Heads, c.KvHeads, c.HeadDim, (float)c.RmsNormEps,
            (float)c.RopeTheta, c.SlidingWindow ?? 0, c.Experts, c.TopK, c.VocabSize, c.TieWordEmbeddings);
        return new RefMixtral(cfg, ck.ReadFloat32);
    }

    internal static void AssertArgmaxEqual(float[] want, float[] got, int v, string what)
    {
        for (int r = 0; r < want.Length / v; r++)
        {
            int a = Sampler.Argmax(want.AsSpan(r * v, v)), b = Sampler.Argmax(got.AsSpan(r * v, v));
            Assert.That(b, Is.EqualTo(a), $"{what}: argmax of row {r}");
        }
    }

    [Test]
    public void PrefillReproducesLlamaCppFixture()
    {
        var (tokens, want) = Expected();
        using var model = MixtralModel.Load(TestDevice.Accelerator, FixtureDir);
        using var session = model.NewSession();
        var got = session.Prefill(tokens, allLogits: true);
        Check.Close(want, got, rtol: 0, atol: 1e-3, what: "runtime vs llama.cpp logits");
        AssertArgmaxEqual(want, got, model.Config.VocabSize, "runtime vs llama.cpp");
    }

    [Test]
    public void TunedKernelPathReproducesFixture()
    {
        // The kernel versions a GPU runs (tiled matmul, flash prefill, split-K decode, GEMV, grouped GEMM V2/V3),
        // forced on the CPU accelerator: checks the runtime's wiring of the GPU path without a GPU.
        var (tokens, want) = Expected();
        using var model = MixtralModel.Load(TestDevice.Accelerator, FixtureDir, new ModelLoadOptions { MaxSeq = 32, Kernels = KernelPolicy.Tuned });
        // Causal: the logits of positions 0..4 depend on tokens 0..4 only, so a 5-token prefix is checked against
        // the fixture's first rows (a short prefill keeps the emulated tiled kernels' barriers few).
        int v = model.Config.VocabSize, split = 4;
        using var session = model.NewSession();
        var got = session.Prefill(tokens.AsSpan(0, split), allLogits: true);
        Check.Close(want.AsSpan(0, split * v), got, rtol: 0, atol: 1e-3, what: "tuned prefill vs llama.cpp");
        var last = session.Decode(tokens[split]);
        Check.Close(want.AsSpan(split * v, v), last, rtol: 0, atol: 1e-3, what: "tuned decode vs llama.cpp");
        AssertArgmaxEqual(want[..((split + 1) * v)], [.. got, .. last], v, "tuned path vs llama.cpp");
    }

    [Test]
    public void DecodeAfterPrefillEqualsOnePrefill()
    {
        var (tokens, _) = Expected();
        using var model = MixtralModel.Load(TestDevice.Accelerator, FixtureDir);
        int v = model.Config.VocabSize, split = 13;
        using var whole = model.NewSession();
        var all = whole.Prefill(tokens, allLogits: true);

        using var session = model.NewSession();
        var first = session.Prefill(tokens.AsSpan(0, split), allLogits: true);
        Check.Close(all.AsSpan(0, split * v), first, rtol: 0, atol: 1e-4, what: "prefill of a prefix");
        for (int i = split; i < tokens.Length; i++)
        {
            var row = session.Decode(tokens[i]);
            Check.Close(all.AsSpan(i * v, v), row, rtol: 0, atol: 1e-4, what: $"decode at position {i}");
        }

        Assert.That(session.Position, Is.EqualTo(tokens.Length));
    }

    [Test]
    public void ChunkedPrefillEqualsOnePrefill()
    {
        var (tokens, want) = Expected();
        // MaxBatch 7: the 16-token prompt runs as chunks of 7, 7, 2.
        using var model = MixtralModel.Load(TestDevice.Accelerator, FixtureDir, new ModelLoadOptions { MaxSeq = 32, MaxBatch = 7 });
        using var session = model.NewSession();
        var got = session.Prefill(tokens, allLogits: true);
        Check.Close(want, got, rtol: 0, atol: 1e-3, what: "chunked prefill vs llama.cpp");
        using var last = model.NewSession();
        var lastRow = last.Prefill(tokens, allLogits: false);
        Check.Close(got.AsSpan(got.Length - lastRow.Length), lastRow, rtol: 0, atol: 1e-6, what: "last-row logits");
    }

    public static IEnumerable<TestCaseData> Configs()
    {
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 64, Layers = 2, Experts = 4, TopK = 2, Ffn = 96, Heads = 8, KvHeads = 1, Vocab = 300, DType = DType.F16, Seed = 31,
        }).SetName("F16_GQA8to1");
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 48, Layers = 2, Experts = 8, TopK = 2, Ffn = 40, Heads = 4, KvHeads = 4, Vocab = 290, DType = DType.BF16, Seed = 32,
            TieEmbeddings = true,
        }).SetName("BF16_MHA4_Tied");
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 40, Layers = 3, Experts = 3, TopK = 1, Ffn = 56, Heads = 4, KvHeads = 2, HeadDim = 12, Vocab = 290, DType = DType.BF16,
            Seed = 33, Shards = 3, SlidingWindow = 5,
        }).SetName("BF16_Sharded_K1_HeadDim12_Window5");
    }

    [TestCaseSource(nameof(Configs))]
    public void RuntimeEqualsOracle(RandomMixtralOptions o)
    {
        string dir = Path.Combine(_dir, $"m{o.Seed}");
        RandomMixtral.Write(dir, o);
        int[] tokens = Data.Ints((int)o.Seed, 13, 0, o.Vocab);
        var oracle = Oracle(dir);
        float[] want = oracle.Forward(tokens);

        using var model = MixtralModel.Load(TestDevice.Accelerator, dir, new ModelLoadOptions { MaxSeq = 64 });
        Assert.That(model.WeightDType, Is.EqualTo(o.DType.ToString()));
        using (var ck = Checkpoint.Open(dir))
            Assert.That(model.DeviceWeightBytes, Is.EqualTo(ck.Tensors.Sum(t => t.ByteLength)), "weights keep their dtype on the device");
        using var session = model.NewSession();
        session.CollectRoutingStats = true;
        float[] got = session.Prefill(tokens, allLogits: true);
        Assert.That(want.Max(Math.Abs), Is.GreaterThan(0.1f), "logits should not be near zero");
        Check.Close(want, got, rtol: 1e-4, atol: 1e-4, what: "runtime vs RefMixtral");
        AssertArgmaxEqual(want, got, o.Vocab, "runtime vs RefMixtral");

        for (int l = 0; l < o.Layers; l++)
        {
            var refIds = oracle.LastRouting[l].ExpertIds;
            var ids = session.LastRoutingIds(l).ToArray();
            Assert.That(ids, Is.EqualTo(refIds), $"layer {l} expert ids");
            Assert.That(session.ExpertCounts[l].Sum(), Is.EqualTo((long)tokens.Length * o.TopK), $"layer {l}: counts sum to T*K");
        }

        // Decode after prefill, against the oracle's incremental session.
        var refSession = oracle.NewSession();
        refSession.Step(tokens);
        for (int i = 0; i < 2; i++)
        {
            int next = Sampler.Argmax(got.AsSpan((tokens.Length - 1) * o.Vocab, o.Vocab)) + i;
            var r = refSession.Step([next % o.Vocab]);
            var g = session.Decode(next % o.Vocab);
            Check.Close(r, g, rtol: 1e-4, atol: 1e-4, what: $"decode step {i}");
        }
    }
}
