using ILGpuMoE.IO;
using ILGpuMoE.IO.Gguf;
using ILGpuMoE.Model;
using ILGpuMoE.Runtime;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Runtime;

namespace ILGpuMoE.Tests.Peer;

/// <summary>
/// Our runtime (ILGPU kernels end to end, CPU accelerator) against llama.cpp (LLamaSharp, through our GGUF) on
/// make-model checkpoints of different shapes: expert count E, top-k K, GQA ratio, head dim, tied embeddings,
/// F32 / BF16 / F16 weights. Both sides read the same widened weights; logits of every position from an empty cache.
/// </summary>
[Category("Peer")]
public class RuntimeVsLlamaCppTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-peer-runtime-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    public static IEnumerable<TestCaseData> Configs()
    {
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 64, Layers = 2, Experts = 4, TopK = 2, Ffn = 96, Heads = 4, KvHeads = 2, Vocab = 300, DType = DType.F32, Seed = 41,
        }).SetName("Runtime_E4_K2_GQA2_F32");
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 40, Layers = 2, Experts = 8, TopK = 2, Ffn = 56, Heads = 8, KvHeads = 2, HeadDim = 8, Vocab = 320, DType = DType.BF16,
            Seed = 42, RopeTheta = 10000,
        }).SetName("Runtime_E8_K2_GQA4_HeadDim8_BF16");
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 48, Layers = 3, Experts = 3, TopK = 1, Ffn = 72, Heads = 4, KvHeads = 4, HeadDim = 16, Vocab = 290, DType = DType.F16,
            Seed = 43, TieEmbeddings = true,
        }).SetName("Runtime_E3_K1_MHA_HeadDim16_Tied_F16");
    }

    [TestCaseSource(nameof(Configs))]
    public void RuntimeMatchesLlamaCpp(RandomMixtralOptions o)
    {
        string model = Path.Combine(_dir, $"m{o.Seed}");
        RandomMixtral.Write(model, o);
        string gguf = Path.Combine(_dir, $"m{o.Seed}.gguf");
        MixtralGguf.Convert(model, gguf);

        int[] tokens = Data.Ints((int)o.Seed, 13, 0, o.Vocab);
        float[] peer = LlamaCppPeer.Logits(gguf, tokens, out int vocab);
        Assert.That(vocab, Is.EqualTo(o.Vocab));

        using var m = MixtralModel.Load(TestDevice.Accelerator, model, new ModelLoadOptions { MaxSeq = 32 });
        using var session = m.NewSession();
        float[] ours = session.Prefill(tokens, allLogits: true);

        Assert.That(peer.Max(Math.Abs), Is.GreaterThan(0.5f), "logits should be O(1), not near-uniform");
        Check.Close(peer, ours, rtol: 0, atol: 2e-4, what: "runtime vs llama.cpp logits");
        RuntimeTests.AssertArgmaxEqual(peer, ours, o.Vocab, "runtime vs llama.cpp");
    }
}
