using ILGpuMoE.IO;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// --quant on the newer families: the runtime with packed linear weights against the oracle (RefModel) fed the
/// dequantized weights. The shared expert and a dense layer's MLP are packed chunk by chunk, as the runtime stacks them
/// (F-wide chunks of the hidden axis, MoeModel.cs), so the oracle's weights are dequantized the same way: each chunk
/// quantized on its own, then put back in place (the padding dropped).
/// </summary>
public class FamilyQuantTests
{
    private string _dir = "";

    // D = F = 64: every int4 group of 32 divides every linear input dim; the shared expert (96) is one full chunk and
    // one half-padded chunk; layer 1 is dense (MLP 80: two chunks, the second padded).
    private static readonly RandomMoeOptions Options = new()
    {
        Family = RefFamily.Qwen2Moe, Hidden = 64, Layers = 2, Heads = 4, KvHeads = 2, Experts = 6, TopK = 2, MoeIntermediate = 64,
        DenseIntermediate = 80, MlpOnlyLayers = [1], SharedExpertIntermediate = 96, DType = DType.BF16, Seed = 301,
    };

    [OneTimeSetUp]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("ilgpumoe-fq-").FullName;
        RandomMoe.Write(_dir, Options);
    }

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    private static bool IsLinear(string name) =>
        name.EndsWith("_proj.weight", StringComparison.Ordinal) && !name.Contains("shared_expert_gate", StringComparison.Ordinal);

    /// <summary>W as the runtime's packed chunks give it back: whole for attention and routed experts, chunk by chunk along
    /// the hidden axis (rows of gate/up, columns of down) for the shared expert and the dense MLP.</summary>
    private static float[] Dequantized(QuantSpec spec, Checkpoint ck, string name, int f)
    {
        var info = ck.Get(name);
        int rows = (int)info.Shape[0], cols = (int)info.Shape[1];
        var w = ck.ReadFloat32(name);
        bool chunked = name.Contains(".shared_expert.", StringComparison.Ordinal) || !name.Contains(".experts.", StringComparison.Ordinal) && !name.Contains(".self_attn.", StringComparison.Ordinal);
        if (!chunked)
            return QuantRuntimeTests.Dequantize(spec.Quantize(w, rows, cols));
        bool down = name.Contains("down_proj", StringComparison.Ordinal);
        int width = down ? cols : rows, other = down ? rows : cols;
        var result = new float[w.Length];
        for (int start = 0; start < width; start += f)
        {
            // The chunk [f, other] (gate/up) or [other, f] (down), zero-padded past the MLP's width.
            var chunk = new float[f * other];
            for (int i = 0; i < Math.Min(f, width - start); i++)
            {
                for (int j = 0; j < other; j++)
                {
                    if (down)
                        chunk[j * f + i] = w[j * cols + start + i];
                    else
                        chunk[i * other + j] = w[(start + i) * cols + j];
                }
            }

            var back = QuantRuntimeTests.Dequantize(down ? spec.Quantize(chunk, other, f) : spec.Quantize(chunk, f, other));
            for (int i = 0; i < Math.Min(f, width - start); i++)
            {
                for (int j = 0; j < other; j++)
                {
                    if (down)
                        result[j * cols + start + i] = back[j * f + i];
                    else
                        result[(start + i) * cols + j] = back[i * other + j];
                }
            }
        }

        return result;
    }

    [TestCase("int8")]
    [TestCase("int4-g32")]
    [TestCase("fp8-block128")]
    public void QuantizedQwen2MoeEqualsOracleOnDequantizedWeights(string scheme)
    {
        var spec = QuantSpec.Parse(scheme)!;
        var config = HfReferenceConfig.Load(_dir);
        int[] tokens = Data.Ints(9, 10, 0, Options.Vocab);
        float[] want;
        using (var ck = Checkpoint.Open(_dir))
        {
            var oracle = new RefModel(config, name => IsLinear(name) ? Dequantized(spec, ck, name, Options.MoeIntermediate) : ck.ReadFloat32(name));
            var s0 = oracle.NewSession();
            want = [.. s0.Step(tokens.AsSpan(0, 9)), .. s0.Step(tokens.AsSpan(9, 1))];
        }

        using var model = MoeModel.Load(TestDevice.Accelerator, _dir, new ModelLoadOptions { MaxSeq = 16, Quant = spec });
        Assert.That(model.DeviceWeightBytes, Is.EqualTo(model.Plan.WeightBytes), "the memory plan counts the packed chunks");
        using var session = model.NewSession();
        float[] got = [.. session.Prefill(tokens.AsSpan(0, 9), allLogits: true), .. session.Decode(tokens[9])];
        RuntimeTests.CloseLogged(want, got, rtol: 1e-4, atol: 1e-4, what: $"--quant {scheme} vs RefModel on dequantized weights");
        RuntimeTests.AssertArgmaxEqual(want, got, Options.Vocab, scheme);
    }
    [Test]
    public void AQuantizedCheckpointLoadsAsQuantAtLoadDoes()
    {
        // `ilgpumoe quantize` keeps the shared expert and the dense MLP in float; the loader packs their chunks with the
        // checkpoint's scheme, so the quantized folder gives --quant's logits.
        var spec = QuantSpec.Parse("int8")!;
        string outDir = Path.Combine(Path.GetTempPath(), $"ilgpumoe-fq-out-{Environment.ProcessId}");
        try
        {
            CheckpointQuantizer.Run(_dir, outDir, spec);
            int[] tokens = Data.Ints(19, 8, 0, Options.Vocab);
            float[] Run(string dir, QuantSpec? quant)
            {
                using var model = MoeModel.Load(TestDevice.Accelerator, dir, new ModelLoadOptions { MaxSeq = 16, Quant = quant });
                Assert.That(model.DeviceWeightBytes, Is.EqualTo(model.Plan.WeightBytes), $"{dir}: the memory plan counts what is uploaded");
                using var session = model.NewSession();
                return session.Prefill(tokens, allLogits: true);
            }

            RuntimeTests.CloseLogged(Run(_dir, spec), Run(outDir, null), rtol: 0, atol: 1e-6, what: "quantized folder vs --quant int8");
        }
        finally
        {
            if (Directory.Exists(outDir))
                Directory.Delete(outDir, recursive: true);
        }
    }
}
