using ILGpuMoE.Model;
using ILGpuMoE.Runtime;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Runtime;

namespace ILGpuMoE.Tests.Peer;

/// <summary>
/// Our runtime (ILGPU kernels end to end, CPU accelerator) against llama.cpp (LLamaSharp, through our GGUF) on the
/// make-model checkpoints of PeerModels.Configs: logits of every position from an empty cache.
/// </summary>
[Category("Peer")]
public class RuntimeVsLlamaCppTests : PeerModels
{
    public static IEnumerable<TestCaseData> Cases() => Configs(40, "Runtime_");

    [TestCaseSource(nameof(Cases))]
    public void RuntimeMatchesLlamaCpp(RandomMixtralOptions o)
    {
        var (model, tokens, peer) = RunPeer(o);

        using var m = MoeModel.Load(TestDevice.Accelerator, model, new ModelLoadOptions { MaxSeq = 32 });
        using var session = m.NewSession();
        float[] ours = session.Prefill(tokens, allLogits: true);

        Check.Close(peer, ours, rtol: 0, atol: 2e-4, what: "runtime vs llama.cpp logits");
        RuntimeTests.AssertArgmaxEqual(peer, ours, o.Vocab, "runtime vs llama.cpp");
    }
}
