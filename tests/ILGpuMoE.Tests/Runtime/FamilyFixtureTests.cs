using System.Runtime.InteropServices;
using ILGpuMoE.IO;
using ILGpuMoE.Runtime;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// The runtime on the tiny checkpoints of the newer families (TestData/*/PROVENANCE.md says how each was made: a float64
/// transcription of Hugging Face's modeling code, cross-checked with llama.cpp), under both kernel policies: all
/// positions in one prefill, then the last tokens one at a time through the KV cache after a prefill of the others.
/// </summary>
public class FamilyFixtureTests
{
    public static readonly string[] Fixtures = ["qwen3-moe-tiny-f32", "qwen2-moe-tiny-f32", "olmoe-tiny-f32", "gpt-oss-tiny-mxfp4", "deepseek-v3-tiny"];

    private static IEnumerable<TestCaseData> Cases() =>
        from f in Fixtures from p in RuntimeTests.Policies select new TestCaseData(f, p).SetName($"{f}_{p}");

    // What a tuned decode step runs per family: the fused plan's launches per layer, or the plain step (0: not counted).
    private static readonly Dictionary<string, (string Path, int Launches)> FusedDecode = new()
    {
        ["qwen3_moe"] = ("fused", 7), ["qwen2_moe"] = ("fused", 6), ["olmoe"] = ("fused", 9), ["gpt_oss"] = ("fused", 6),
        ["deepseek_v3"] = ("plain: MLA attention", 0),
    };

    internal static string Dir(string fixture) => Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", fixture);

    internal static (int[] Tokens, float[] Logits) Expected(string fixture)
    {
        using var expected = SafeTensorsFile.Open(Path.Combine(Dir(fixture), "expected.safetensors"));
        return (MemoryMarshal.Cast<byte, int>(expected.GetBytes("tokens")).ToArray(), expected.ReadFloat32("logits"));
    }

    /// <summary>Prefill of all but the last <paramref name="tail"/> tokens in one step, then one decode step per token:
    /// the logits of those last steps [tail, V].</summary>
    internal static float[] DecodeTail(InferenceSession session, int[] tokens, int tail)
    {
        int head = tokens.Length - tail, v = session.Model.Config.VocabSize;
        session.Prefill(tokens.AsSpan(0, head), allLogits: false);
        var rows = new float[tail * v];
        for (int i = 0; i < tail; i++)
            session.Decode(tokens[head + i]).CopyTo(rows, i * v);
        return rows;
    }

    // The memory plan's KV cache is what a session allocates: MLA's compressed rows (latent + rope, 32 floats per token and
    // layer in deepseek-v3-tiny) or K and V per kv head.
    [TestCaseSource(nameof(Fixtures))]
    public void SessionAllocatesThePlannedCache(string fixture)
    {
        using var model = MoeModel.Load(TestDevice.Accelerator, Dir(fixture), new ModelLoadOptions { MaxSeq = 24 });
        using var session = model.NewSession();
        Assert.That(session.CacheBytes, Is.EqualTo(model.Plan.KvCacheBytes));
        var c = model.Config;
        long perToken = c.Block.Mla is { } m ? (long)m.CacheWidth * c.Layers * 4 : 2L * c.KvHeads * c.HeadDim * c.Layers * 4;
        Assert.That(model.Plan.KvCacheBytes, Is.EqualTo(24 * perToken));
    }

    [TestCaseSource(nameof(Cases))]
    public void PrefillThenDecodeMatchTheFixture(string fixture, KernelPolicy policy)
    {
        var (tokens, want) = Expected(fixture);
        using var model = MoeModel.Load(TestDevice.Accelerator, Dir(fixture), new ModelLoadOptions { MaxSeq = 32, Kernels = policy });
        int v = model.Config.VocabSize;
        using var session = model.NewSession();
        var got = session.Prefill(tokens, allLogits: true);
        RuntimeTests.CloseLogged(want, got, rtol: 0, atol: RuntimeTests.FixtureAtol, what: $"{fixture} {policy}: prefill vs expected");
        RuntimeTests.AssertArgmaxEqual(want, got, v, $"{fixture} prefill");

        // Decode after prefill: the first T - 3 tokens in one step, the last 3 one at a time through the cache (kept short:
        // the CPU accelerator emulates every launch of a decode step).
        const int tail = 3;
        using var stepwise = model.NewSession();
        var rows = DecodeTail(stepwise, tokens, tail);
        var wantTail = want.AsSpan((tokens.Length - tail) * v).ToArray();
        RuntimeTests.CloseLogged(wantTail, rows, rtol: 0, atol: RuntimeTests.FixtureAtol, what: $"{fixture} {policy}: decode steps vs expected");
        RuntimeTests.AssertArgmaxEqual(wantTail, rows, v, $"{fixture} decode");

        // The tuned policy decodes through the fused plan (DecodePlan.cs): 6 launches per layer where q/k/v, RoPE and the
        // KV append are one decode/qkv-rope launch, 7 for Qwen3's per-head q/k norm (rope-append apart), 9 for OLMoE's
        // two norms over the whole q and k projections; DeepSeek's MLA runs the plain step and says so.
        if (policy == KernelPolicy.Tuned)
        {
            var (path, launches) = FusedDecode[model.Config.ModelType];
            Assert.That(stepwise.DecodePath, Does.StartWith(path));
            if (launches > 0)
                Assert.That(stepwise.LastStepLaunchesPerLayer, Is.EqualTo(launches));
        }
    }
}
