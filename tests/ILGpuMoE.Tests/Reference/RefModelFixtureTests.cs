using System.Runtime.InteropServices;
using ILGpuMoE.IO;
using ILGpuMoE.Reference;
using ILGpuMoE.Testing;

namespace ILGpuMoE.Tests.Reference;

/// <summary>The oracle's forward pass (RefModel, config read by HfReferenceConfig) against the expected logits of the
/// shared per-family fixtures (TestData/*-tiny-f32, see each PROVENANCE.md: a float64 transcription of Hugging Face's
/// eager forward, cross-checked with llama.cpp).</summary>
public class RefModelFixtureTests
{
    internal static string FixtureDir(string name) => Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", name);

    [TestCase("qwen3-moe-tiny-f32", RefFamily.Qwen3Moe)]
    [TestCase("qwen2-moe-tiny-f32", RefFamily.Qwen2Moe)]
    [TestCase("olmoe-tiny-f32", RefFamily.Olmoe)]
    [TestCase("mixtral-tiny-f32", RefFamily.Mixtral)]
    [TestCase("gpt-oss-tiny-mxfp4", RefFamily.GptOss)]
    [TestCase("deepseek-v3-tiny", RefFamily.DeepSeekV3)]
    public void ForwardReproducesFixtureLogits(string fixture, RefFamily family)
    {
        string dir = FixtureDir(fixture);
        var config = HfReferenceConfig.Load(dir);
        Assert.That(config.Family, Is.EqualTo(family));
        using var checkpoint = Checkpoint.Open(dir);
        using var expected = SafeTensorsFile.Open(Path.Combine(dir, "expected.safetensors"));
        Assert.That(expected.Get("tokens").DType, Is.EqualTo(DType.I32));
        int[] tokens = MemoryMarshal.Cast<byte, int>(expected.GetBytes("tokens")).ToArray();
        float[] want = expected.ReadFloat32("logits");
        int t = tokens.Length, v = config.Vocab;
        Assert.That(want, Has.Length.EqualTo(t * v));

        var model = new RefModel(config, checkpoint.ReadFloat32, RawReader(checkpoint));
        var got = model.Forward(tokens);
        Assert.That(got, Has.Length.EqualTo(t * v));
        double worst = 0;
        for (int i = 0; i < got.Length; i++)
        {
            Assert.That(float.IsFinite(got[i]), $"logit {i} is {got[i]}");
            worst = Math.Max(worst, Math.Abs((double)got[i] - want[i]));
        }

        TestContext.Out.WriteLine($"{fixture}: max |oracle - expected| = {worst:E3} over {t} x {v} logits");
        Assert.That(worst, Is.LessThanOrEqualTo(1e-4), "max abs logit difference");
        for (int row = 0; row < t; row++)
            Assert.That(ArgMax(got.AsSpan(row * v, v)), Is.EqualTo(ArgMax(want.AsSpan(row * v, v))), $"argmax of token {row}");
        Assert.That(model.LastRouting, Has.Count.EqualTo(config.Layers));
        for (int l = 0; l < config.Layers; l++)
        {
            var r = model.LastRouting[l];
            Assert.That(r is not null, Is.EqualTo(config.MoeLayers[l]), $"layer {l} routes iff it is MoE");
            if (r is not null)
                Assert.That((r.Tokens, r.TopK), Is.EqualTo((t, config.TopK)), $"layer {l} routing shape");
        }

        // Token-by-token decode through the KV cache gives the one-shot forward's logits.
        var session = model.NewSession();
        var pieces = new List<float>();
        for (int i = 0; i < t; i++)
            pieces.AddRange(session.Step(tokens.AsSpan(i, 1)));
        Assert.That(session.Position, Is.EqualTo(t));
        Assert.That(pieces, Is.EqualTo(got));
    }

    [Test]
    public void FixtureConfigsReadAsTheirProvenanceSays()
    {
        // Values copied from each PROVENANCE.md's "Shape and config highlights".
        var q3 = HfReferenceConfig.Load(FixtureDir("qwen3-moe-tiny-f32"));
        Assert.That((q3.Hidden, q3.Heads, q3.KvHeads, q3.HeadDim, q3.Experts, q3.TopK, q3.MoeIntermediate), Is.EqualTo((48, 4, 2, 16, 8, 2, 32)));
        Assert.That((q3.NormTopK, q3.QkNorm, q3.QkvBias, q3.SharedExpertIntermediate, q3.RopeTheta), Is.EqualTo((true, RefQkNorm.PerHead, false, 0, 1e6f)));
        var q2 = HfReferenceConfig.Load(FixtureDir("qwen2-moe-tiny-f32"));
        Assert.That((q2.HeadDim, q2.NormTopK, q2.QkNorm, q2.QkvBias, q2.SharedExpertIntermediate), Is.EqualTo((12, false, RefQkNorm.None, true, 64)));
        var ol = HfReferenceConfig.Load(FixtureDir("olmoe-tiny-f32"));
        Assert.That((ol.HeadDim, ol.NormTopK, ol.QkNorm, ol.ClipQkv, ol.MoeIntermediate, ol.RmsEps, ol.RopeTheta), Is.EqualTo((12, false, RefQkNorm.Whole, 0f, 32, 1e-5f, 10000f)));
        foreach (var c in new[] { q3, q2, ol })
        {
            Assert.That(c.MoeLayers, Is.All.True);
            Assert.That(c.SlidingWindow, Is.All.Zero);
        }
    }

    /// <summary>The stored bytes of a checkpoint tensor, null when absent (RefModel's MXFP4 reader).</summary>
    internal static Func<string, byte[]?> RawReader(Checkpoint checkpoint) =>
        name => checkpoint.Contains(name) ? checkpoint.GetBytes(name).ToArray() : null;

    internal static int ArgMax(ReadOnlySpan<float> row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++)
        {
            if (row[i] > row[best])
                best = i;
        }

        return best;
    }
}
