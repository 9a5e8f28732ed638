using System.Runtime.InteropServices;
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;
using ILGpuMoE.Testing;
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

    /// <summary>The kernel policies every parity test runs under: the V1 kernels the CPU accelerator runs by default, the
    /// versions a GPU runs (tiled matmul, flash prefill, split-K decode, grouped GEMM V2/V3) forced on the CPU accelerator,
    /// and the CPU backend (src/ILGpuMoE/Cpu: host SIMD code, no ILGPU kernel) on the same accelerator's memory.</summary>
    public static readonly KernelPolicy[] Policies = [KernelPolicy.Simple, KernelPolicy.Tuned, KernelPolicy.Cpu];

    /// <summary>The runtime's F32 logits against llama.cpp's at F32: measured max |diff| 2e-6 or less (see the log line),
    /// so 2e-5 absolute leaves 10x headroom and still fails on a kernel that loses a rounding step.</summary>
    internal const double FixtureAtol = 2e-5;

    /// <summary>Check.Close that also logs the largest |diff| (the figure the tolerance is set from).</summary>
    internal static void CloseLogged(ReadOnlySpan<float> want, ReadOnlySpan<float> got, double rtol, double atol, string what)
    {
        double max = 0;
        for (int i = 0; i < Math.Min(want.Length, got.Length); i++)
            max = Math.Max(max, Math.Abs((double)want[i] - got[i]));
        TestContext.Out.WriteLine($"{what}: max |diff| = {max:G3}");
        Check.Close(want, got, rtol, atol, what);
    }

    [TestCaseSource(nameof(Policies))]
    public void PrefillReproducesLlamaCppFixture(KernelPolicy policy)
    {
        var (tokens, want) = Expected();
        using var model = MoeModel.Load(TestDevice.Accelerator, FixtureDir, new ModelLoadOptions { MaxSeq = 32, Kernels = policy });
        using var session = model.NewSession();
        var got = session.Prefill(tokens, allLogits: true);
        CloseLogged(want, got, rtol: 0, atol: FixtureAtol, what: $"{policy}: runtime vs llama.cpp logits");
        AssertArgmaxEqual(want, got, model.Config.VocabSize, "runtime vs llama.cpp");
    }

    [TestCaseSource(nameof(Policies))]
    public void DecodeAfterPrefillEqualsOnePrefill(KernelPolicy policy)
    {
        var (tokens, want) = Expected();
        using var model = MoeModel.Load(TestDevice.Accelerator, FixtureDir, new ModelLoadOptions { MaxSeq = 32, Kernels = policy });
        int v = model.Config.VocabSize, split = 13;
        // Prefill of a prefix (causal: its rows are the fixture's first rows), then one decode step per remaining token;
        // every row against llama.cpp, so the decode kernels (split-K attention, GEMV) are held to the fixture too.
        using var session = model.NewSession();
        var first = session.Prefill(tokens.AsSpan(0, split), allLogits: true);
        CloseLogged(want.AsSpan(0, split * v), first, rtol: 0, atol: FixtureAtol, what: $"{policy}: prefill of a prefix vs llama.cpp");
        for (int i = split; i < tokens.Length; i++)
        {
            var row = session.Decode(tokens[i]);
            CloseLogged(want.AsSpan(i * v, v), row, rtol: 0, atol: FixtureAtol, what: $"{policy}: decode at position {i} vs llama.cpp");
        }

        Assert.That(session.Position, Is.EqualTo(tokens.Length));
        // The tuned policy decodes through the fused plan (DecodePlan.cs): 6 launches per layer (q/k/v, RoPE and the KV
        // append in one decode/qkv-rope launch; the router and its gating in one decode/router launch), counted as launched.
        if (policy == KernelPolicy.Tuned)
        {
            Assert.That(session.DecodePath, Does.StartWith("fused"));
            Assert.That(session.LastStepLaunchesPerLayer, Is.EqualTo(6));
            Assert.That(session.LastStepLaunches, Is.EqualTo(6 * model.Config.Layers + 2), "the embedding and the final norm + lm_head besides");
        }
        else
        {
            Assert.That(session.DecodePath, Does.StartWith("plain"));
        }

        if (policy == KernelPolicy.Cpu)
            Assert.That(session.LastStepLaunches, Is.Zero, "the CPU backend launches no ILGPU kernel");
    }

    [Test]
    public void ACudaGraphIsRefusedOffCudaAndChangesNothing()
    {
        var (tokens, want) = Expected();
        using var model = MoeModel.Load(TestDevice.Accelerator, FixtureDir, new ModelLoadOptions { MaxSeq = 32, Kernels = KernelPolicy.Tuned });
        int v = model.Config.VocabSize;
        using var session = model.NewSession(new SessionOptions { CudaGraph = true });
        Assert.That(session.CudaGraphStatus, Does.StartWith("not used: CPU"));
        for (int i = 0; i < 4; i++)
        {
            var row = session.Decode(tokens[i]);
            CloseLogged(want.AsSpan(i * v, v), row, rtol: 0, atol: FixtureAtol, what: $"decode steps from an empty cache, position {i}");
            Assert.That(session.LastStepReplayed, Is.False);
        }
    }

    [Test]
    public void ChunkedPrefillEqualsOnePrefill()
    {
        var (tokens, want) = Expected();
        // MaxBatch 7: the 16-token prompt runs as chunks of 7, 7, 2.
        using var model = MoeModel.Load(TestDevice.Accelerator, FixtureDir, new ModelLoadOptions { MaxSeq = 32, MaxBatch = 7 });
        using var session = model.NewSession();
        var got = session.Prefill(tokens, allLogits: true);
        CloseLogged(want, got, rtol: 0, atol: FixtureAtol, what: "chunked prefill vs llama.cpp");
        using var last = model.NewSession();
        var lastRow = last.Prefill(tokens, allLogits: false);
        Check.Close(got.AsSpan(got.Length - lastRow.Length), lastRow, rtol: 0, atol: 1e-6, what: "last-row logits");
    }

    public static IEnumerable<TestCaseData> Configs() =>
        ModelConfigs().SelectMany(c => Policies.Select(p => new TestCaseData(c.Arguments[0], p).SetName($"{c.TestName}_{p}")));

    private static IEnumerable<TestCaseData> ModelConfigs()
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
    public void RuntimeEqualsOracle(RandomMixtralOptions o, KernelPolicy policy)
    {
        string dir = Path.Combine(_dir, $"m{o.Seed}-{policy}");
        RandomMixtral.Write(dir, o);
        int[] tokens = Data.Ints((int)o.Seed, 13, 0, o.Vocab);
        var oracle = Oracle(dir);
        float[] want = oracle.Forward(tokens);

        using var model = MoeModel.Load(TestDevice.Accelerator, dir, new ModelLoadOptions { MaxSeq = 64, Kernels = policy });
        Assert.That(model.WeightDType, Is.EqualTo(o.DType.ToString()));
        using (var ck = Checkpoint.Open(dir))
            Assert.That(model.DeviceWeightBytes, Is.EqualTo(ck.Tensors.Sum(t => t.ByteLength)), "weights keep their dtype on the device");
        using var session = model.NewSession();
        session.CollectRoutingStats = true;
        float[] got = session.Prefill(tokens, allLogits: true);
        Assert.That(want.Max(Math.Abs), Is.GreaterThan(0.1f), "logits should not be near zero");
        CloseLogged(want, got, rtol: 1e-4, atol: 1e-4, what: $"{policy}: runtime vs RefMixtral");
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
            CloseLogged(r, g, rtol: 1e-4, atol: 1e-4, what: $"{policy}: decode step {i}");
        }
    }
}
