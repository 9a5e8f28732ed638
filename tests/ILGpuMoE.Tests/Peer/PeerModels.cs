using ILGpuMoE.IO;
using ILGpuMoE.Testing;
using ILGpuMoE.Model;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Peer;

/// <summary>
/// The make-model configurations every peer comparison runs on (expert count, top-k, GQA ratio, head dim != D / H,
/// tied embeddings, F32 / BF16 / F16 weights), and the shared step: write the model, convert it to GGUF, run
/// llama.cpp on seeded tokens. Each test class passes its own seed base so the models differ between classes.
/// </summary>
public abstract class PeerModels
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-peer-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    public static IEnumerable<TestCaseData> Configs(int seedBase, string prefix)
    {
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 64, Layers = 2, Experts = 4, TopK = 2, Ffn = 96, Heads = 4, KvHeads = 2, Vocab = 300, DType = DType.F32,
            Seed = (ulong)seedBase + 1,
        }).SetName(prefix + "E4_K2_GQA2_F32");
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 40, Layers = 2, Experts = 8, TopK = 2, Ffn = 56, Heads = 8, KvHeads = 2, HeadDim = 8, Vocab = 320, DType = DType.BF16,
            Seed = (ulong)seedBase + 2, RopeTheta = 10000,
        }).SetName(prefix + "E8_K2_GQA4_HeadDim8_BF16");
        yield return new TestCaseData(new RandomMixtralOptions
        {
            Hidden = 48, Layers = 3, Experts = 3, TopK = 1, Ffn = 72, Heads = 4, KvHeads = 4, HeadDim = 16, Vocab = 290, DType = DType.F16,
            Seed = (ulong)seedBase + 3, TieEmbeddings = true,
        }).SetName(prefix + "E3_K1_MHA_HeadDim16_Tied_F16");
    }

    /// <summary>Writes the model, runs llama.cpp on 13 seeded tokens; returns the model folder, the tokens and its logits [T, V].</summary>
    protected (string Model, int[] Tokens, float[] PeerLogits) RunPeer(RandomMixtralOptions o)
    {
        string model = Path.Combine(_dir, $"m{o.Seed}");
        RandomMixtral.Write(model, o);
        string gguf = Path.Combine(_dir, $"m{o.Seed}.gguf");
        MixtralGguf.Convert(model, gguf);

        int[] tokens = Data.Ints((int)o.Seed, 13, 0, o.Vocab);
        float[] peer = LlamaCppPeer.Logits(gguf, tokens, out int vocab);
        Assert.That(vocab, Is.EqualTo(o.Vocab));
        Assert.That(peer.Max(Math.Abs), Is.GreaterThan(0.5f), "logits should be O(1), not near-uniform");
        return (model, tokens, peer);
    }
}
