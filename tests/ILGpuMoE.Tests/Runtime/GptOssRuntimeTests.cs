using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// gpt-oss's two forms on the Hub give one model: a BF16 copy of the MXFP4 fixture written here in transformers' layout
/// (the same values, stacked input-major experts) gives the MXFP4 original's logits under both kernel policies. The
/// fixture itself and random checkpoints of both forms are checked against Hugging Face's semantics in
/// FamilyFixtureTests and FamilyRuntimeTests.
/// </summary>
public class GptOssRuntimeTests
{
    private const string Fixture = "gpt-oss-tiny-mxfp4";
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-gptoss-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    [TestCaseSource(typeof(RuntimeTests), nameof(RuntimeTests.Policies))]
    public void Bf16CopyOfTheMxfp4Fixture_GivesItsLogits(KernelPolicy policy)
    {
        string copy = Path.Combine(_dir, "bf16-copy");
        if (!Directory.Exists(copy))
            WriteBf16Copy(FamilyFixtureTests.Dir(Fixture), copy);
        var (tokens, _) = FamilyFixtureTests.Expected(Fixture);
        float[] Logits(string dir)
        {
            using var model = MoeModel.Load(TestDevice.Accelerator, dir, new ModelLoadOptions { MaxSeq = 32, Kernels = policy });
            using var session = model.NewSession();
            return session.Prefill(tokens, allLogits: true);
        }

        var mx = Logits(FamilyFixtureTests.Dir(Fixture));
        var bf = Logits(copy);
        // Equal values, different kernels (packed MXFP4 decode vs BF16 widening): only the summation order may differ.
        RuntimeTests.CloseLogged(mx, bf, rtol: 0, atol: 1e-5, what: $"{policy}: BF16 copy vs MXFP4 original");
        RuntimeTests.AssertArgmaxEqual(mx, bf, 520, "BF16 copy vs MXFP4");
    }

    // The MXFP4 fixture as a BF16 copy in transformers' layout: experts dequantized (exact: a 1-bit mantissa times a
    // power of two) to gate_up_proj [E, D, 2F] and down_proj [E, F, D], input-major; no quantization_config.
    private static void WriteBf16Copy(string from, string to)
    {
        Directory.CreateDirectory(to);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(from, "config.json")))!.AsObject();
        config.Remove("quantization_config");
        File.WriteAllText(Path.Combine(to, "config.json"), config.ToJsonString());
        using var src = SafeTensorsFile.Open(Path.Combine(from, "model.safetensors"));
        var entries = new List<SafeTensorsWriter.Entry>();
        foreach (var t in src.Tensors)
        {
            if (t.Name.EndsWith("_scales", StringComparison.Ordinal))
                continue;
            if (!t.Name.EndsWith("_blocks", StringComparison.Ordinal))
            {
                entries.Add(new SafeTensorsWriter.Entry(t.Name, t.DType, t.Shape, src.GetBytes(t.Name).ToArray()));
                continue;
            }

            string name = t.Name[..^"_blocks".Length];
            int e = (int)t.Shape[0], rows = (int)t.Shape[1], groups = (int)t.Shape[2], cols = groups * RefMxfp4.BlockSize;
            var w = RefMxfp4.Dequantize(src.GetBytes(t.Name), src.GetBytes(name + "_scales"), e * rows, groups); // [E, out, in]
            var inputMajor = new float[w.Length];                                                             // [E, in, out]
            for (int x = 0; x < e; x++)
            {
                for (int r = 0; r < rows; r++)
                {
                    for (int k = 0; k < cols; k++)
                        inputMajor[((long)x * cols + k) * rows + r] = w[((long)x * rows + r) * cols + k];
                }
            }

            entries.Add(SafeTensorsWriter.FromFloats(name, [e, cols, rows], inputMajor, DType.BF16));
        }

        SafeTensorsWriter.Write(Path.Combine(to, "model.safetensors"), entries);
    }
}
