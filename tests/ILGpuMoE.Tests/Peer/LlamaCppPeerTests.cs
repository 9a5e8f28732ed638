using System.Runtime.InteropServices;
using ILGpuMoE.IO;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Peer;

/// <summary>
/// The GGUF writer checked against llama.cpp's own converter: the shared fixture's logits came from llama.cpp on
/// a GGUF made by convert_hf_to_gguf.py; our GGUF of the same safetensors must give the same logits.
/// </summary>
[Category("Peer")]
public class LlamaCppPeerTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-peer-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    internal static string FixtureDir => Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", "mixtral-tiny-f32");

    [Test]
    public void OurGgufOfTheFixtureReproducesLlamaCppLogits()
    {
        string gguf = Path.Combine(_dir, "fixture.gguf");
        MixtralGguf.Convert(FixtureDir, gguf);
        using var expected = SafeTensorsFile.Open(Path.Combine(FixtureDir, "expected.safetensors"));
        int[] tokens = MemoryMarshal.Cast<byte, int>(expected.GetBytes("tokens")).ToArray();
        float[] want = expected.ReadFloat32("logits");

        float[] got = LlamaCppPeer.Logits(gguf, tokens, out int vocab);
        Assert.That(vocab, Is.EqualTo(512));
        Assert.That(got, Has.Length.EqualTo(want.Length));
        TestContext.Out.WriteLine($"max |diff| = {want.Zip(got, (x, y) => Math.Abs(x - y)).Max():E2}");
        Check.Close(want, got, rtol: 0, atol: 1e-4, what: "llama.cpp logits, our GGUF vs fixture");
    }

    [Test]
    public void RopePermutationMovesHalvesToPairs()
    {
        // One head, Dh = 4, 1 column: HF rows (x0, x1 | y0, y1) rotate (x_i, y_i); llama.cpp wants x0 y0 x1 y1.
        float[] w = [10, 11, 20, 21, 30, 31, 40, 41];
        Assert.That(MixtralGguf.PermuteRope(w, heads: 2, headDim: 4, cols: 1), Is.EqualTo(new float[] { 10, 20, 11, 21, 30, 40, 31, 41 }));
    }
}
