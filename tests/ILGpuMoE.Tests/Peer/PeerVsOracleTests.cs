using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Reference;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Peer;

/// <summary>
/// llama.cpp (through our GGUF) against the plain-C# oracle RefMixtral on make-model checkpoints of different
/// shapes (PeerModels.Configs). Both sides read the same widened weights.
/// </summary>
[Category("Peer")]
public class PeerVsOracleTests : PeerModels
{
    public static IEnumerable<TestCaseData> Cases() => Configs(20, "");

    [TestCaseSource(nameof(Cases))]
    public void LlamaCppMatchesOracle(RandomMixtralOptions o)
    {
        var (model, tokens, peer) = RunPeer(o);

        using var ck = Checkpoint.Open(model);
        var cfg = new RefMixtralConfig(o.Hidden, o.Ffn, o.Layers, o.Heads, o.KvHeads, o.ResolvedHeadDim, (float)o.RmsNormEps,
            (float)o.RopeTheta, o.SlidingWindow ?? 0, o.Experts, o.TopK, o.Vocab, o.TieEmbeddings);
        float[] oracle = new RefMixtral(cfg, ck.ReadFloat32).Forward(tokens);

        TestContext.Out.WriteLine($"max |diff| = {oracle.Zip(peer, (x, y) => Math.Abs(x - y)).Max():E2}");
        Check.Close(oracle, peer, rtol: 0, atol: 1e-4, what: "llama.cpp vs RefMixtral logits");
    }
}
