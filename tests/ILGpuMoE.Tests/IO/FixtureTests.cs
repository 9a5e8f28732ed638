using ILGpuMoE.IO;

namespace ILGpuMoE.Tests.IO;

/// <summary>The checked-in tiny Mixtral (written by a third-party tool) reads through our reader.</summary>
public class FixtureTests
{
    private static string FixtureDir => Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", "mixtral-tiny-f32");

    [Test]
    public void TinyMixtralModelReads()
    {
        using var file = SafeTensorsFile.Open(Path.Combine(FixtureDir, "model.safetensors"));
        Assert.That(file.Tensors, Is.Not.Empty);
        var embed = file.Get("model.embed_tokens.weight");
        Assert.That(embed.DType, Is.EqualTo(DType.F32));
        Assert.That(embed.Shape, Is.EqualTo(new long[] { 512, 64 }));
        float[] w = file.ReadFloat32("model.embed_tokens.weight");
        Assert.That(w, Has.Length.EqualTo(512 * 64));
        Assert.That(w.All(float.IsFinite), Is.True);
        Assert.That(w.Any(x => x != 0), Is.True);
        Assert.That(file.GetSpan<float>("model.embed_tokens.weight").ToArray(), Is.EqualTo(w));

        using var ckpt = Checkpoint.Open(FixtureDir);
        Assert.That(ckpt.Tensors, Has.Count.EqualTo(file.Tensors.Count));
        Assert.That(ckpt.GetBytes("model.embed_tokens.weight").SequenceEqual(file.GetBytes("model.embed_tokens.weight")), Is.True);
    }

    [Test]
    public void ExpectedLogitsRead()
    {
        using var file = SafeTensorsFile.Open(Path.Combine(FixtureDir, "expected.safetensors"));
        var tokens = file.Get("tokens");
        var logits = file.Get("logits");
        Assert.That((tokens.DType, tokens.Shape), Is.EqualTo((DType.I32, new long[] { 16 })));
        Assert.That((logits.DType, logits.Shape), Is.EqualTo((DType.F32, new long[] { 16, 512 })));
        Assert.That(file.GetSpan<int>("tokens").ToArray(), Has.All.InRange(0, 511));
        Assert.That(file.ReadFloat32("logits").All(float.IsFinite), Is.True);
    }
}
