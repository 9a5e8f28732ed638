using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Model;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Cli;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// --quant end to end: the runtime with packed linear weights (quant GEMV / GEMM / grouped MoE kernels on the CPU
/// accelerator) against RefMixtral fed the DEQUANTIZED weights (RefQuant), and the CLI's int8 logits against float.
/// </summary>
public class QuantRuntimeTests
{
    private string _dir = "";

    // D = F = 128 so every int4 group size (32, 64, 128) divides every linear input dim; one layer, 4 experts.
    internal static readonly RandomMixtralOptions Tiny = new()
    {
        Hidden = 128, Layers = 1, Experts = 4, TopK = 2, Ffn = 128, Heads = 4, KvHeads = 2, Vocab = 300, DType = DType.BF16, Seed = 71,
    };

    [OneTimeSetUp]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("ilgpumoe-qrt-").FullName;
        RandomMixtral.Write(Path.Combine(_dir, "m"), Tiny);
    }

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    private string ModelDir => Path.Combine(_dir, "m");

    /// <summary>W [rows, cols] as the kernels see it, computed by the plain-C# reference dequantizers.</summary>
    internal static float[] Dequantize(QuantizedMatrix m) => Quant.QuantTestData.RefDequant(m);

    internal static bool IsLinear(string name) =>
        name.Contains(".self_attn.", StringComparison.Ordinal) || name.Contains(".experts.", StringComparison.Ordinal);

    /// <summary>RefMixtral over a checkpoint whose linear weights go through <paramref name="linear"/> first.</summary>
    internal static RefMixtral Oracle(string dir, Func<string, Checkpoint, float[]> linear)
    {
        var c = ModelConfig.Load(dir);
        var ck = Checkpoint.Open(dir);
        var cfg = new RefMixtralConfig(c.HiddenSize, c.IntermediateSize, c.Layers, c.Heads, c.KvHeads, c.HeadDim, (float)c.RmsNormEps,
            (float)c.RopeTheta, c.SlidingWindow ?? 0, c.Experts, c.TopK, c.VocabSize, c.TieWordEmbeddings);
        try
        {
            return new RefMixtral(cfg, name => IsLinear(name) ? linear(name, ck) : ck.ReadFloat32(name));
        }
        finally
        {
            ck.Dispose();
        }
    }

    public static IEnumerable<string> Schemes => QuantSpec.Names.Skip(1);

    // Every scheme under both kernel policies: the quantized GEMV / GEMM / grouped kernels are the same under both,
    // attention (V1 or flash / split-K) and the dense router and lm_head (V1 or tiled / GEMV) are not.
    public static IEnumerable<TestCaseData> SchemesAndPolicies() =>
        Schemes.SelectMany(s => RuntimeTests.Policies.Select(p => new TestCaseData(s, p)));

    [TestCaseSource(nameof(SchemesAndPolicies))]
    public void QuantizedRuntimeEqualsOracleOnDequantizedWeights(string scheme, KernelPolicy policy)
    {
        var spec = QuantSpec.Parse(scheme)!;
        var oracle = Oracle(ModelDir, (name, ck) =>
        {
            var info = ck.Get(name);
            return Dequantize(spec.Quantize(ck.ReadFloat32(name), (int)info.Shape[0], (int)info.Shape[1]));
        });

        // 11 prompt tokens: the tiled quant GEMM and grouped V2 passes; then one decode step: GEMV and grouped GEMV.
        int[] tokens = Data.Ints(5, 12, 0, Tiny.Vocab);
        var session0 = oracle.NewSession();
        float[] want = [.. session0.Step(tokens.AsSpan(0, 11)), .. session0.Step(tokens.AsSpan(11, 1))];

        using var model = MoeModel.Load(TestDevice.Accelerator, ModelDir, new ModelLoadOptions { MaxSeq = 16, Quant = spec, Kernels = policy });
        Assert.That(model.DeviceWeightBytes, Is.EqualTo(model.Plan.WeightBytes), "memory plan counts the packed bytes");
        using (var ck = Checkpoint.Open(ModelDir))
            Assert.That(model.DeviceWeightBytes, Is.LessThan(ck.Tensors.Sum(t => t.ByteLength)), "packed weights are smaller than BF16");
        using var session = model.NewSession();
        float[] got = [.. session.Prefill(tokens.AsSpan(0, 11), allLogits: true), .. session.Decode(tokens[11])];
        Assert.That(want.Max(Math.Abs), Is.GreaterThan(0.1f), "logits should not be near zero");
        RuntimeTests.CloseLogged(want, got, rtol: 1e-4, atol: 1e-4, what: $"{policy}: --quant {scheme} vs RefMixtral on dequantized weights");
        RuntimeTests.AssertArgmaxEqual(want, got, Tiny.Vocab, scheme);
    }

    // --quant-lm-head alone: float linear weights, lm_head packed; the oracle reads lm_head dequantized. Tied: the packed
    // copy of the embedding is lm_head, while the embedding rows the step gathers stay exact.
    public static IEnumerable<TestCaseData> LmHeadCases() =>
        Schemes.SelectMany(s => RuntimeTests.Policies.Select(p => new TestCaseData(s, p, false)))
            .Concat(RuntimeTests.Policies.Select(p => new TestCaseData("int8", p, true)));

    [TestCaseSource(nameof(LmHeadCases))]
    public void QuantizedLmHeadEqualsOracleOnDequantizedLmHead(string scheme, KernelPolicy policy, bool tied)
    {
        var spec = QuantSpec.Parse(scheme)!;
        string dir = ModelDir;
        if (tied)
        {
            dir = Path.Combine(_dir, "tied");
            if (!Directory.Exists(dir))
                RandomMixtral.Write(dir, Tiny with { TieEmbeddings = true, Seed = 73 });
        }

        var c = ModelConfig.Load(dir);
        float[] lmHead;
        RefMixtral oracle;
        using (var ck = Checkpoint.Open(dir))
        {
            lmHead = Dequantize(spec.Quantize(ck.ReadFloat32(tied ? "model.embed_tokens.weight" : "lm_head.weight"), c.VocabSize, c.HiddenSize));
            // Untied in the oracle: its lm_head is the dequantized matrix, its embedding the exact rows.
            var cfg = new RefMixtralConfig(c.HiddenSize, c.IntermediateSize, c.Layers, c.Heads, c.KvHeads, c.HeadDim, (float)c.RmsNormEps,
                (float)c.RopeTheta, c.SlidingWindow ?? 0, c.Experts, c.TopK, c.VocabSize, TieEmbeddings: false);
            oracle = new RefMixtral(cfg, name => name == "lm_head.weight" ? lmHead : ck.ReadFloat32(name));
        }

        int[] tokens = Data.Ints(15, 9, 0, Tiny.Vocab);
        var session0 = oracle.NewSession();
        float[] want = [.. session0.Step(tokens.AsSpan(0, 8)), .. session0.Step(tokens.AsSpan(8, 1))];

        var options = new ModelLoadOptions { MaxSeq = 16, LmHeadQuant = spec, Kernels = policy };
        using var model = MoeModel.Load(TestDevice.Accelerator, dir, options);
        Assert.That(model.DeviceWeightBytes, Is.EqualTo(model.Plan.WeightBytes), "memory plan counts the packed lm_head");
        long floatHead = tied ? 0 : (long)c.VocabSize * c.HiddenSize * 2; // BF16, replaced; a tied one stays as the embedding
        Assert.That(model.Plan.WeightBytes, Is.EqualTo(MoeModel.PlanFor(dir, options with { LmHeadQuant = null }).WeightBytes - floatHead + spec.Bytes(c.VocabSize, c.HiddenSize)));
        using var session = model.NewSession();
        float[] got = [.. session.Prefill(tokens.AsSpan(0, 8), allLogits: true), .. session.Decode(tokens[8])];
        Assert.That(want.Max(Math.Abs), Is.GreaterThan(0.1f), "logits should not be near zero");
        RuntimeTests.CloseLogged(want, got, rtol: 1e-4, atol: 1e-4, what: $"{policy}: --quant-lm-head {scheme}{(tied ? " (tied)" : "")} vs the oracle with the dequantized lm_head");
        RuntimeTests.AssertArgmaxEqual(want, got, Tiny.Vocab, scheme);
    }

    [Test]
    public void LmHeadSchemeThatCannotPackItIsOneLineUsageError()
    {
        string dir = Path.Combine(_dir, "odd-lm");
        RandomMixtral.Write(dir, Tiny with { Hidden = 96, Ffn = 96, Seed = 74 });
        var line = CliRun.Of("logits", "--model", dir, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu",
            "--quant-lm-head", "int4-g64").AssertBadInput();
        Assert.That(line, Does.Contain("--quant-lm-head").And.Contain("lm_head"));
        CliRun.Of("logits", "--model", dir, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu",
            "--quant-lm-head", "int9").AssertBadInput();
    }

    [Test]
    public void GenerateWithQuantAndQuantLmHeadRuns()
    {
        var run = CliRun.Of("generate", "--model", ModelDir, "--prompt", "hello", "-n", "3", "--temperature", "0", "--device", "cpu", "--quant", "int4-g32",
            "--quant-lm-head", "int8");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Err, Does.Contain("tokens generated"));
    }

    [Test]
    public void CliLogitsInt8StayCloseToFloat()
    {
        var (tokens, _) = RuntimeTests.Expected();
        string ids = string.Join(",", tokens), f = Path.Combine(_dir, "f.safetensors"), q = Path.Combine(_dir, "q.safetensors");
        var a = CliRun.Of("logits", "--model", RuntimeTests.FixtureDir, "--tokens", ids, "--out", f, "--device", "cpu");
        Assert.That(a.ExitCode, Is.EqualTo(0), a.Err);
        var b = CliRun.Of("logits", "--model", RuntimeTests.FixtureDir, "--tokens", ids, "--out", q, "--device", "cpu", "--quant", "int8");
        Assert.That(b.ExitCode, Is.EqualTo(0), b.Err);
        using var fa = SafeTensorsFile.Open(f);
        using var fb = SafeTensorsFile.Open(q);
        float[] x = fa.ReadFloat32("logits"), y = fb.ReadFloat32("logits");
        Assert.That(y.All(float.IsFinite), "int8 logits are finite");
        double maxDiff = x.Zip(y, (p, r) => Math.Abs(p - (double)r)).Max(), scale = x.Max(Math.Abs);
        TestContext.Out.WriteLine($"fixture logits, int8 vs float: max |diff| = {maxDiff:G4} (max |logit| {scale:G4})");
        Assert.That(maxDiff, Is.GreaterThan(0), "int8 changes the weights, so the logits must move");
        Assert.That(maxDiff, Is.LessThan(0.05 * scale), "int8 per-row weights keep logits within 5% of their range");
    }

    [Test]
    public void GenerateWithQuantRuns()
    {
        var run = CliRun.Of("generate", "--model", ModelDir, "--prompt", "hello", "-n", "3", "--temperature", "0", "--device", "cpu", "--quant", "int4-g64");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Err, Does.Contain("tokens generated"));
    }

    [Test]
    public void UnknownSchemeIsOneLineUsageError()
    {
        var line = CliRun.Of("logits", "--model", ModelDir, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu",
            "--quant", "int3").AssertBadInput();
        Assert.That(line, Does.Contain("int3").And.Contain("int4-g128"));
    }

    [TestCase("int4-g256", 256, true)]
    [TestCase("INT4-G64-ASYM", 64, false)]
    [TestCase("int4-per-row", 0, true)]
    [TestCase("int4-per-row-asym", 0, false)]
    public void Int4TakesAnyGroupSizeThatIsAMultipleOf32(string name, int group, bool symmetric)
    {
        var spec = (Int4Spec)QuantSpec.Parse(name)!;
        Assert.That((spec.Layout, spec.GroupSize, spec.Symmetric, spec.Name), Is.EqualTo((ILGpuMoE.Kernels.Quant.QuantScheme.Q4, group, symmetric, name.ToLowerInvariant())));
        Assert.That(spec.GroupFor(4096), Is.EqualTo(group > 0 ? group : 4096));
        // Bytes: half a byte per weight plus, per (row, group), an f16 scale and (asym) a zero byte.
        long groups = 4096 / spec.GroupFor(4096);
        Assert.That(spec.Bytes(10, 4096), Is.EqualTo(10 * 2048 + 10 * groups * (symmetric ? 2 : 3)));
    }

    [TestCase("int4-g48")]
    [TestCase("int4-g16")]
    [TestCase("int4-g")]
    [TestCase("int4-gx")]
    [TestCase("int4-g-64")]
    [TestCase("int4-per-col")]
    public void Int4GroupNamesThatCannotWorkAreRefused(string name) =>
        Assert.That(() => QuantSpec.Parse(name), Throws.ArgumentException.With.Message.Contains(name));

    [Test]
    public void GroupNotDividingADimensionNamesTheTensor()
    {
        string dir = Path.Combine(_dir, "odd");
        RandomMixtral.Write(dir, Tiny with { Hidden = 96, Ffn = 96, Seed = 72 });
        var line = CliRun.Of("logits", "--model", dir, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu",
            "--quant", "int4-g64").AssertBadInput();
        Assert.That(line, Does.Contain("model.layers.0.").And.Contain("64"));
    }
}
