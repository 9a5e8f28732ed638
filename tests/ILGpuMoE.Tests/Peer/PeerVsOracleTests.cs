using ILGpuMoE.IO;
using ILGpuMoE.IO.Gguf;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Peer;

/// <summary>
/// llama.cpp (through our GGUF) against the plain-C# oracle RefMixtral on make-model checkpoints of different
/// shapes: expert count, top-k, GQA ratio, head dim != D / H, tied embeddings, F32 / BF16 / F16 weights (both
/// sides read the same widened values). The runtime is later compared to both the same way.
/// </summary>
[Category("Peer")]
public class PeerVsOracleTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-peer-oracle-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    public static IEnumerable<TestCaseData> Configs()
    {
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 64, Layers = 2, Experts = 4, TopK = 2, Ffn = 96, Heads = 4, KvHeads = 2, Vocab = 300, DType = DType.F32, Seed = 21,
        }).SetName("E4_K2_GQA2_F32");
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 40, Layers = 2, Experts = 8, TopK = 2, Ffn = 56, Heads = 8, KvHeads = 2, HeadDim = 8, Vocab = 320, DType = DType.BF16,
            Seed = 22, RopeTheta = 10000,
        }).SetName("E8_K2_GQA4_HeadDim8_BF16");
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 48, Layers = 3, Experts = 3, TopK = 1, Ffn = 72, Heads = 4, KvHeads = 4, HeadDim = 16, Vocab = 290, DType = DType.F16,
            Seed = 23, TieEmbeddings = true,
        }).SetName("E3_K1_MHA_HeadDim16_Tied_F16");
    }

    [TestCaseSource(nameof(Configs))]
    public void LlamaCppMatchesOracle(RandomMixtralOptions o)
    {
        string model = Path.Combine(_dir, $"m{o.Seed}");
        RandomMixtral.Write(model, o);
        string gguf = Path.Combine(_dir, $"m{o.Seed}.gguf");
        MixtralGguf.Convert(model, gguf);

        int[] tokens = Data.Ints((int)o.Seed, 13, 0, o.Vocab);
        float[] peer = LlamaCppPeer.Logits(gguf, tokens, out int vocab);
        Assert.That(vocab, Is.EqualTo(o.Vocab));

        using var ck = Checkpoint.Open(model);
        var cfg = new RefMixtralConfig(o.Hidden, o.Ffn, o.Layers, o.Heads, o.KvHeads, o.ResolvedHeadDim, (float)o.RmsNormEps,
            (float)o.RopeTheta, o.SlidingWindow ?? 0, o.Experts, o.TopK, o.Vocab, o.TieEmbeddings);
        float[] oracle = new RefMixtral(cfg, ck.ReadFloat32).Forward(tokens);

        Assert.That(oracle.Max(Math.Abs), Is.GreaterThan(0.5f), "logits should be O(1), not near-uniform");
        TestContext.Out.WriteLine($"max |diff| = {oracle.Zip(peer, (x, y) => Math.Abs(x - y)).Max():E2}");
        Check.Close(oracle, peer, rtol: 0, atol: 1e-4, what: "llama.cpp vs RefMixtral logits");
    }
}
