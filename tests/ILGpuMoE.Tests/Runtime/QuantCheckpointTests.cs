using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Cli;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// Quantized checkpoints: ilgpumoe quantize round trip (== --quant on the original), and AWQ / GPTQ / FP8 checkpoints
/// built here by hand from the formats' definitions, loaded through config.json's quantization_config and compared with
/// RefMixtral on the dequantized weights.
/// </summary>
public class QuantCheckpointTests
{
    private static readonly int[] AwqOrder = [0, 2, 4, 6, 1, 3, 5, 7];
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("ilgpumoe-qck-").FullName;
        RandomMixtral.Write(Src, QuantRuntimeTests.Tiny with { Seed = 81 });
    }

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    private string Src => Path.Combine(_dir, "src");

    private static readonly int[] Tokens = Data.Ints(9, 12, 0, QuantRuntimeTests.Tiny.Vocab);

    private static float[] RunModel(string dir, QuantSpec? quant, KernelPolicy policy = KernelPolicy.Auto)
    {
        using var model = MoeModel.Load(TestDevice.Accelerator, dir, new ModelLoadOptions { MaxSeq = 16, Quant = quant, Kernels = policy });
        Assert.That(model.DeviceWeightBytes, Is.EqualTo(model.Plan.WeightBytes), "memory plan counts the packed bytes");
        using var session = model.NewSession();
        return [.. session.Prefill(Tokens.AsSpan(0, 11), allLogits: true), .. session.Decode(Tokens[11])];
    }

    [TestCase("int8")]
    [TestCase("int4-g128-asym")]
    [TestCase("fp8-tensor")]
    public void QuantizeThenLogitsEqualsQuantFlagOnOriginal(string scheme)
    {
        string outDir = Path.Combine(_dir, "q-" + scheme);
        var run = CliRun.Of("quantize", "--model", Src, "--out", outDir, "--scheme", scheme);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(File.Exists(Path.Combine(outDir, "tokenizer.json")) || !File.Exists(Path.Combine(Src, "tokenizer.json")), "tokenizer copied");
        var qc = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!["quantization_config"]!;
        Assert.That((string?)qc["quant_method"], Is.EqualTo("ilgpumoe"));
        Assert.That((string?)qc["scheme"], Is.EqualTo(scheme));
        using (var ck = Checkpoint.Open(outDir))
        {
            Assert.That(ck.Contains("model.layers.0.self_attn.q_proj.qweight") && ck.Contains("model.layers.0.self_attn.q_proj.scales"));
            Assert.That(ck.Contains("model.layers.0.self_attn.q_proj.weight"), Is.False);
            Assert.That(ck.Contains("model.layers.0.block_sparse_moe.gate.weight") && ck.Contains("model.embed_tokens.weight"));
        }

        float[] want = RunModel(Src, QuantSpec.Parse(scheme));
        float[] got = RunModel(outDir, null);
        Check.BitEqual(want, got, $"quantize {scheme} then logits vs --quant {scheme}");

        var again = CliRun.Of("logits", "--model", outDir, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu",
            "--quant", "int8").AssertBadInput();
        Assert.That(again, Does.Contain("already quantized"));
    }

    [TestCase("{\"quant_method\": \"bitsandbytes\"}", "bitsandbytes")]
    [TestCase("{\"quant_method\": \"awq\", \"bits\": 3, \"group_size\": 128}", "bits")]
    [TestCase("{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 48}", "group")]
    [TestCase("{\"quant_method\": \"fp8\", \"weight_block_size\": [64, 64]}", "weight_block_size")]
    [TestCase("{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 128, \"checkpoint_format\": \"gptq_v2\"}", "gptq_v2")]
    public void UnsupportedQuantizationConfigIsOneLine(string config, string mentions)
    {
        string dir = Path.Combine(_dir, "bad" + Math.Abs(config.GetHashCode()));
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.EnumerateFiles(Src))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)), overwrite: true);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(Src, "config.json")))!.AsObject();
        json["quantization_config"] = JsonNode.Parse(config);
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
        var line = CliRun.Of("logits", "--model", dir, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu").AssertBadInput();
        Assert.That(line, Does.Contain("quantization_config").And.Contain(mentions));
    }

    [Test]
    public void InspectShowsBytesPerSchemeAndPerDecodeToken()
    {
        // Tiny, BF16, counted by hand: embed 300*128*2 = 76800; layer: norms 2*128*2 = 512, attention
        // (128*128 + 64*128)*2*2 = 98304, router 4*128*2 = 1024, experts 4*3*128*128*2 = 393216; final norm 256;
        // lm_head 76800. Per token: one embedding row (256) and K/E = 1/2 of the experts instead of all.
        var config = ModelConfig.Load(Src);
        using var ck = Checkpoint.Open(Src);
        var stored = WeightBytes.Of(config, ck.Tensors, null);
        Assert.That(stored, Is.EqualTo(new WeightBytes(646912, 256 + 512 + 98304 + 1024 + 196608 + 256 + 76800)));
        var int8 = WeightBytes.Of(config, ck.Tensors, QuantSpec.Parse("int8"));
        Assert.That(int8.Total, Is.EqualTo(MoeModel.PlanFor(Src, new ModelLoadOptions { MaxSeq = 16, Quant = QuantSpec.Parse("int8") }).WeightBytes),
            "inspect and the memory plan agree");
        // int8 rows of 128 values: 128 bytes + a 4-byte scale per row, for attention (128 + 64 + 64 + 128 rows) and experts (4*3*128 rows).
        Assert.That(int8.Total, Is.EqualTo(646912 - 98304 - 393216 + (384 + 1536) * 132));

        var run = CliRun.Of("inspect", Src);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Out, Does.Contain("646,912").And.Contain("--quant int8").And.Contain("--quant fp8-tensor").And.Contain(int8.Total.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)));
    }

    // ---- AWQ / GPTQ / FP8 checkpoints written by hand ----

    private delegate IEnumerable<SafeTensorsWriter.Entry> Packer(string b, float[] w, int rows, int cols);

    /// <summary>Asymmetric 4-bit codes of W [rows, cols] per group of G along cols: (q, z, f16 scale bits).</summary>
    private static (int[] Q, int[] Z, ushort[] S) Int4(float[] w, int rows, int cols, int g, int zMin)
    {
        int groups = cols / g;
        var q = new int[rows * cols];
        var z = new int[rows * groups];
        var s = new ushort[rows * groups];
        for (int n = 0; n < rows; n++)
        {
            for (int j = 0; j < groups; j++)
            {
                float lo = 0, hi = 0;
                for (int i = 0; i < g; i++)
                {
                    lo = Math.Min(lo, w[n * cols + j * g + i]);
                    hi = Math.Max(hi, w[n * cols + j * g + i]);
                }

                var h = (Half)((hi - lo) / 15f);
                float sc = (float)h;
                int zz = Math.Clamp((int)Math.Round(-lo / sc), zMin, 15);
                z[n * groups + j] = zz;
                s[n * groups + j] = BitConverter.HalfToUInt16Bits(h);
                for (int i = 0; i < g; i++)
                    q[n * cols + j * g + i] = Math.Clamp((int)Math.Round(w[n * cols + j * g + i] / sc) + zz, 0, 15);
            }
        }

        return (q, z, s);
    }

    private static SafeTensorsWriter.Entry Ints(string name, long[] shape, int[] a) => SafeTensorsWriter.FromSpan<int>(name, DType.I32, shape, a);

    // AWQ GEMM: qweight I32 [in, out/8], nibble i of word (k, c) = output column 8c + order[i]; qzeros I32 [in/G, out/8]
    // the same way; scales F16 [in/G, out].
    private static IEnumerable<SafeTensorsWriter.Entry> Awq(string b, float[] w, int rows, int cols)
    {
        const int g = 64;
        var (q, z, s) = Int4(w, rows, cols, g, 0);
        int cw = rows / 8, groups = cols / g;
        var qw = new int[cols * cw];
        var qz = new int[groups * cw];
        var sc = new ushort[groups * rows];
        for (int k = 0; k < cols; k++)
        {
            for (int c = 0; c < cw; c++)
            {
                for (int i = 0; i < 8; i++)
                {
                    int n = 8 * c + AwqOrder[i];
                    qw[k * cw + c] |= q[n * cols + k] << (4 * i);
                    if (k % g == 0)
                        qz[k / g * cw + c] |= z[n * groups + k / g] << (4 * i);
                }
            }
        }

        for (int j = 0; j < groups; j++)
        {
            for (int n = 0; n < rows; n++)
                sc[j * rows + n] = s[n * groups + j];
        }

        yield return Ints(b + ".qweight", [cols, cw], qw);
        yield return Ints(b + ".qzeros", [groups, cw], qz);
        yield return SafeTensorsWriter.FromSpan<ushort>(b + ".scales", DType.F16, [groups, rows], sc);
    }

    // GPTQ v1: qweight I32 [in/8, out], nibble j of word (r, n) = input row 8r + j; qzeros I32 [groups, out/8] holding
    // z - 1, nibble j = output 8c + j; scales F16 [groups, out]; g_idx I32 [in] = k / G (desc_act written, trivial order).
    private static IEnumerable<SafeTensorsWriter.Entry> Gptq(string b, float[] w, int rows, int cols) => GptqOrdered(b, w, rows, cols, null);

    // The same with act-order: GPTQ visits input columns in the order perm (perm[j] = the j-th column quantized) and
    // closes a group every G columns, so column perm[j] belongs to group j / G: g_idx[perm[j]] = j / G. qweight and
    // qzeros stay in input order.
    private static IEnumerable<SafeTensorsWriter.Entry> GptqOrdered(string b, float[] w, int rows, int cols, int[]? perm, int g = 32)
    {
        perm ??= Enumerable.Range(0, cols).ToArray();
        var wv = new float[w.Length];
        for (int n = 0; n < rows; n++)
        {
            for (int j = 0; j < cols; j++)
                wv[n * cols + j] = w[n * cols + perm[j]];
        }

        var (qv, z, s) = Int4(wv, rows, cols, g, 1);
        var q = new int[qv.Length];
        for (int n = 0; n < rows; n++)
        {
            for (int j = 0; j < cols; j++)
                q[n * cols + perm[j]] = qv[n * cols + j];
        }

        var gIdx = new int[cols];
        for (int j = 0; j < cols; j++)
            gIdx[perm[j]] = j / g;
        int groups = cols / g;
        var qw = new int[cols / 8 * rows];
        var qz = new int[groups * (rows / 8)];
        var sc = new ushort[groups * rows];
        for (int k = 0; k < cols; k++)
        {
            for (int n = 0; n < rows; n++)
                qw[k / 8 * rows + n] |= q[n * cols + k] << (4 * (k % 8));
        }

        for (int j = 0; j < groups; j++)
        {
            for (int n = 0; n < rows; n++)
            {
                qz[j * (rows / 8) + n / 8] |= (z[n * groups + j] - 1) << (4 * (n % 8));
                sc[j * rows + n] = s[n * groups + j];
            }
        }

        yield return Ints(b + ".qweight", [cols / 8, rows], qw);
        yield return Ints(b + ".qzeros", [groups, rows / 8], qz);
        yield return SafeTensorsWriter.FromSpan<ushort>(b + ".scales", DType.F16, [groups, rows], sc);
        yield return Ints(b + ".g_idx", [cols], gIdx);
    }

    // Act-order orders as GPTQ makes them: w1 and w3 of an expert share one (same inputs, same Hessian), and with
    // shareQkv so do q, k and v; every other matrix has its own. Some stay in input order (k_proj unless shareQkv,
    // expert 0's w1/w3, expert 1's w2) so the runtime also meets identity rows among permuted experts and a mix of
    // permuted and plain attention. splitUpGate gives expert 2's w3 an order of its own.
    private static int[]? ActOrderOf(string b, int cols, bool splitUpGate, bool shareQkv = false)
    {
        if ((!shareQkv && b.EndsWith(".k_proj", StringComparison.Ordinal)) || b.Contains(".experts.0.w1", StringComparison.Ordinal)
            || b.Contains(".experts.0.w3", StringComparison.Ordinal) || b.Contains(".experts.1.w2", StringComparison.Ordinal))
            return null;
        string key = splitUpGate && b.Contains(".experts.2.w3", StringComparison.Ordinal) ? b : b.Replace(".w3", ".w1", StringComparison.Ordinal);
        if (shareQkv)
            key = key.Replace(".k_proj", ".q_proj", StringComparison.Ordinal).Replace(".v_proj", ".q_proj", StringComparison.Ordinal);
        int seed = key.Aggregate(17, (h, ch) => unchecked(h * 31 + ch)); // stable across runs (string.GetHashCode is not)
        var rng = new Random(seed);
        return Enumerable.Range(0, cols).OrderBy(_ => rng.Next()).ToArray();
    }

    // FP8: weight F8_E4M3 [out, in] and weight_scale_inv F32 [ceil(out/128), ceil(in/128)], w = e4m3 * scale_inv.
    internal static IEnumerable<SafeTensorsWriter.Entry> Fp8(string b, float[] w, int rows, int cols)
    {
        const int blk = 128;
        int sr = (rows + blk - 1) / blk, sc = (cols + blk - 1) / blk;
        var scale = new float[sr * sc];
        for (int i = 0; i < w.Length; i++)
            scale[i / cols / blk * sc + i % cols / blk] = Math.Max(scale[i / cols / blk * sc + i % cols / blk], Math.Abs(w[i]) / 448f);
        var codes = new byte[w.Length];
        for (int i = 0; i < w.Length; i++)
            codes[i] = Quantizer.EncodeE4M3(w[i] / scale[i / cols / blk * sc + i % cols / blk]);
        yield return new SafeTensorsWriter.Entry(b + ".weight", DType.F8_E4M3, [rows, cols], codes);
        yield return SafeTensorsWriter.FromSpan<float>(b + ".weight_scale_inv", DType.F32, [sr, sc], scale);
    }

    private static float[] Dequant(string method, Checkpoint ck, string b, int rows, int cols, int gptqGroup = 32) => method switch
    {
        "awq" => RefQuant.DequantAwq(ck.GetSpan<int>(b + ".qweight"), ck.GetSpan<int>(b + ".qzeros"), ck.GetSpan<ushort>(b + ".scales"), cols, rows, 64),
        "gptq" => RefQuant.DequantGptq(ck.GetSpan<int>(b + ".qweight"), ck.GetSpan<int>(b + ".qzeros"), ck.GetSpan<ushort>(b + ".scales"),
            ck.GetSpan<int>(b + ".g_idx"), cols, rows, gptqGroup),
        _ => RefQuant.DequantFp8Checkpoint(ck.GetBytes(b + ".weight"), ck.GetSpan<float>(b + ".weight_scale_inv"), rows, cols),
    };

    private static readonly (string Method, string Config)[] External =
    [
        ("awq", "{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 64, \"zero_point\": true, \"version\": \"gemm\"}"),
        ("gptq", "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 32, \"desc_act\": true, \"sym\": false}"),
        ("fp8", "{\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"activation_scheme\": \"dynamic\", \"weight_block_size\": [128, 128]}"),
    ];

    public static IEnumerable<TestCaseData> ExternalCases() =>
        External.SelectMany(e => RuntimeTests.Policies.Select(p => new TestCaseData(e.Method, e.Config, p)));

    [TestCaseSource(nameof(ExternalCases))]
    public void ExternalQuantizedCheckpointEqualsOracle(string method, string quantConfig, KernelPolicy policy)
    {
        string dir = Build(method + "-" + policy, quantConfig, method switch { "awq" => Awq, "gptq" => Gptq, _ => Fp8 });
        var config = ModelConfig.Load(dir);
        var oracle = QuantRuntimeTests.Oracle(dir, (name, ck) =>
        {
            var e = ModelTensors.Expected(config).First(t => t.Name == name);
            return Dequant(method, ck, QuantSource.BaseOf(name), (int)e.Shape[0], (int)e.Shape[1]);
        });
        var session = oracle.NewSession();
        float[] want = [.. session.Step(Tokens.AsSpan(0, 11)), .. session.Step(Tokens.AsSpan(11, 1))];
        float[] got = RunModel(dir, null, policy);
        Assert.That(want.Max(Math.Abs), Is.GreaterThan(0.1f), "logits should not be near zero");
        RuntimeTests.CloseLogged(want, got, rtol: 1e-4, atol: 1e-4, what: $"{policy}: {method} checkpoint vs RefMixtral on its dequantized weights");
        RuntimeTests.AssertArgmaxEqual(want, got, QuantRuntimeTests.Tiny.Vocab, method);
    }

    [Test]
    public void GptqWithOneGroupPerRowEqualsOracle()
    {
        // group_size -1 (e.g. act-order "no group size" GPTQ releases): one scale and zero per output row, G = the
        // matrix's input dim; g_idx is all zeros, so act-order needs no permutation. Input dims differ per matrix here
        // (q/k/v and w1/w3: 128, o_proj: 192, w2: 160), so the runtime meets three G's, none of them 32/64/128-only.
        string src = PerRowSource();
        string dir = Build("gptq-per-row", "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": -1, \"desc_act\": true, \"sym\": false}",
            (b, w, rows, cols) => GptqOrdered(b, w, rows, cols, null, g: cols), src);
        var config = ModelConfig.Load(dir);
        var oracle = QuantRuntimeTests.Oracle(dir, (name, ck) =>
        {
            var e = ModelTensors.Expected(config).First(t => t.Name == name);
            return Dequant("gptq", ck, QuantSource.BaseOf(name), (int)e.Shape[0], (int)e.Shape[1], gptqGroup: (int)e.Shape[1]);
        });
        var session = oracle.NewSession();
        float[] want = [.. session.Step(Tokens.AsSpan(0, 11)), .. session.Step(Tokens.AsSpan(11, 1))];
        Check.Close(want, RunModel(dir, null), rtol: 1e-4, atol: 1e-4, what: "GPTQ group_size -1 vs RefMixtral on its dequantized weights");
    }

    [Test]
    public void AwqWithAnUnquantizedProjectionLoadsItDense()
    {
        // modules_to_not_convert: the checkpoint keeps o_proj in BF16; the runtime uploads it dense, the rest packed.
        string dir = Build("awq-partial", "{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 64, \"version\": \"gemm\", \"modules_to_not_convert\": [\"o_proj\"]}",
            (b, w, rows, cols) => b.EndsWith(".o_proj", StringComparison.Ordinal)
                ? [SafeTensorsWriter.FromFloats(b + ".weight", [rows, cols], w, DType.BF16)]
                : Awq(b, w, rows, cols));
        var config = ModelConfig.Load(dir);
        var oracle = QuantRuntimeTests.Oracle(dir, (name, ck) =>
        {
            if (name.Contains(".o_proj.", StringComparison.Ordinal))
                return ck.ReadFloat32(name);
            var e = ModelTensors.Expected(config).First(t => t.Name == name);
            return Dequant("awq", ck, QuantSource.BaseOf(name), (int)e.Shape[0], (int)e.Shape[1]);
        });
        var session = oracle.NewSession();
        float[] want = [.. session.Step(Tokens.AsSpan(0, 11)), .. session.Step(Tokens.AsSpan(11, 1))];
        Check.Close(want, RunModel(dir, null), rtol: 1e-4, atol: 1e-4, what: "partially quantized AWQ vs RefMixtral");
    }

    [Test]
    public void GptqActOrderCheckpointEqualsOracle([Values(false, true)] bool shareQkv, [ValueSource(typeof(RuntimeTests), nameof(RuntimeTests.Policies))] KernelPolicy policy)
    {
        // desc_act with real orders: attention gathers x per matrix (once for q/k/v when they share an order), experts
        // gather per (token, expert) pair for w1/w3, and w2's order is folded into w1/w3's rows at load. Prefill
        // (11 tokens: tiled GEMM, tiled grouped GEMM) and decode (GEMV, grouped GEMV) both run; RunModel also checks
        // the memory plan counted the permutations.
        const string config = "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 32, \"desc_act\": true, \"sym\": false}";
        string dir = Build("gptq-actorder" + (shareQkv ? "-qkv-" : "-") + policy, config,
            (b, w, rows, cols) => GptqOrdered(b, w, rows, cols, ActOrderOf(b, cols, splitUpGate: false, shareQkv)));
        using (var ck = Checkpoint.Open(dir))
        {
            var gIdx = ck.GetSpan<int>("model.layers.0.block_sparse_moe.experts.3.w2.g_idx");
            Assert.That(ActOrder.IsActOrder(gIdx, 32), "the test checkpoint must be act-order");
        }

        var modelConfig = ModelConfig.Load(dir);
        var oracle = QuantRuntimeTests.Oracle(dir, (name, ck) =>
        {
            var e = ModelTensors.Expected(modelConfig).First(t => t.Name == name);
            return Dequant("gptq", ck, QuantSource.BaseOf(name), (int)e.Shape[0], (int)e.Shape[1]);
        });
        var session = oracle.NewSession();
        float[] want = [.. session.Step(Tokens.AsSpan(0, 11)), .. session.Step(Tokens.AsSpan(11, 1))];
        float[] got = RunModel(dir, null, policy);
        Assert.That(want.Max(Math.Abs), Is.GreaterThan(0.1f), "logits should not be near zero");
        RuntimeTests.CloseLogged(want, got, rtol: 1e-4, atol: 1e-4, what: $"{policy}: GPTQ act-order checkpoint vs RefMixtral on its dequantized weights");
        RuntimeTests.AssertArgmaxEqual(want, got, QuantRuntimeTests.Tiny.Vocab, "gptq act-order");

        var plan = MoeModel.PlanFor(dir, new ModelLoadOptions { MaxSeq = 16 });
        var inOrder = MoeModel.PlanFor(Build("gptq-inorder", config, Gptq), new ModelLoadOptions { MaxSeq = 16 });
        // Permutations: q, (k,) v, o (128 columns each; k_proj is in order unless shared) and one [E, D] per layer for
        // w1/w3 (w2's fold away).
        int attention = shareQkv ? 4 : 3;
        Assert.That(plan.WeightBytes - inOrder.WeightBytes, Is.EqualTo(attention * 128 * 4 + 4 * 128 * 4));
        // Gather scratch: T rows of the widest act-order attention input, and T*K rows of D for the experts.
        Assert.That(plan.WorkspaceBytes - inOrder.WorkspaceBytes, Is.EqualTo(16L * (128 + 2 * 128) * 4));

        var inspect = CliRun.Of("inspect", dir);
        Assert.That(inspect.ExitCode, Is.EqualTo(0), inspect.Err);
        Assert.That(inspect.Out, Does.Contain("act-order").And.Contain($"{attention} of 4 attention matrices and 1 of 1 layers' experts")
            .And.Contain((attention * 512 + 2048).ToString("N0", System.Globalization.CultureInfo.InvariantCulture) + " bytes"));
    }

    // Malformed act-order g_idx on one expert's w2: a group with G + 1 columns, a group index past the last group, and
    // a g_idx one entry short. Each is one line naming the tensor, never a wrong answer.
    [TestCase("uneven", "act-order group")]
    [TestCase("range", "outside 0..")]
    [TestCase("short", "g_idx")]
    public void MalformedGptqGIdxIsRefusedWithOneLine(string how, string mentions)
    {
        string dir = Build("gptq-bad-gidx-" + how, "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 32, \"desc_act\": true}",
            (b, w, rows, cols) => GptqOrdered(b, w, rows, cols, ActOrderOf(b, cols, splitUpGate: false)).Select(e =>
            {
                if (!e.Name.EndsWith(".experts.3.w2.g_idx", StringComparison.Ordinal))
                    return e;
                var g = MemoryMarshal.Cast<byte, int>(e.Data.Span).ToArray();
                switch (how)
                {
                    case "uneven": g[g.ToList().IndexOf(1)] = 0; break;
                    case "range": g[7] = cols / 32; break;
                    default: return Ints(e.Name, [cols - 1], g[..^1]);
                }

                return Ints(e.Name, [cols], g);
            }));
        var line = CliRun.Of("logits", "--model", dir, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu").AssertBadInput();
        TestContext.Out.WriteLine(line);
        Assert.That(line, Does.Contain("model.layers.0.block_sparse_moe.experts.3.w2").And.Contain(mentions));
    }

    [Test]
    public void GptqActOrderWithDifferentW1AndW3OrdersIsRefusedWithOneLine()
    {
        string dir = Build("gptq-actorder-split", "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 32, \"desc_act\": true}",
            (b, w, rows, cols) => GptqOrdered(b, w, rows, cols, ActOrderOf(b, cols, splitUpGate: true)));
        var line = CliRun.Of("logits", "--model", dir, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu").AssertBadInput();
        Assert.That(line, Does.Contain("model.layers.0 expert 2").And.Contain("w1 and w3"));
    }

    // ---- ilgpumoe quantize without --scheme: repack a quantized checkpoint into our layout ----

    private const string AwqConfig = "{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 64, \"zero_point\": true, \"version\": \"gemm\"}";
    private const string GptqActConfig = "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 32, \"desc_act\": true, \"sym\": false}";
    private const string Fp8Config = "{\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"weight_block_size\": [128, 128]}";

    [TestCase("awq", "int4-g64-asym")]
    [TestCase("awq-partial", "int4-g64-asym")]
    [TestCase("gptq-act-order", "int4-g32-asym")]
    [TestCase("gptq-per-row", "int4-per-row-asym")]
    [TestCase("fp8", "fp8-block128")]
    public void RepackedCheckpointGivesItsSourcesLogitsBitForBit(string which, string scheme)
    {
        string dir = which switch
        {
            "awq" => Build("r-awq", AwqConfig, Awq),
            "awq-partial" => Build("r-awq-partial", AwqConfig.Replace("}", ", \"modules_to_not_convert\": [\"o_proj\"]}", StringComparison.Ordinal),
                (b, w, rows, cols) => b.EndsWith(".o_proj", StringComparison.Ordinal) ? [SafeTensorsWriter.FromFloats(b + ".weight", [rows, cols], w, DType.BF16)] : Awq(b, w, rows, cols)),
            "gptq-act-order" => Build("r-gptq-act", GptqActConfig, (b, w, rows, cols) => GptqOrdered(b, w, rows, cols, ActOrderOf(b, cols, splitUpGate: false, shareQkv: true))),
            "gptq-per-row" => Build("r-gptq-row", GptqActConfig.Replace("\"group_size\": 32", "\"group_size\": -1", StringComparison.Ordinal),
                (b, w, rows, cols) => GptqOrdered(b, w, rows, cols, null, g: cols), PerRowSource()),
            _ => Build("r-fp8", Fp8Config, Fp8),
        };
        string outDir = dir + "-ours";
        var run = CliRun.Of("quantize", "--model", dir, "--out", outDir);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Out, Does.Contain("repacked"));
        var qc = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!["quantization_config"]!;
        Assert.That((string?)qc["quant_method"], Is.EqualTo("ilgpumoe"));
        Assert.That((string?)qc["scheme"], Is.EqualTo(scheme));
        using (var ck = Checkpoint.Open(outDir))
        {
            string q = "model.layers.0.self_attn.q_proj", o = "model.layers.0.self_attn.o_proj", w2 = "model.layers.0.block_sparse_moe.experts.3.w2";
            Assert.That(ck.Contains(q + ".qweight") && !ck.Contains(q + ".qzeros") && !ck.Contains(q + ".g_idx"), "our tensors, not the source's");
            Assert.That(ck.Contains(w2 + ".perm"), Is.EqualTo(which == "gptq-act-order"), "act-order keeps its permutation");
            Assert.That(ck.Contains(q + ".perm"), Is.EqualTo(which == "gptq-act-order"));
            Assert.That(ck.Contains(o + ".weight"), Is.EqualTo(which == "awq-partial"), "a projection the source left in BF16 stays BF16");
        }

        Check.BitEqual(RunModel(dir, null), RunModel(outDir, null), $"{which}: repacked vs loaded from the source");
    }

    // Our layout's BASE.perm is checked as it is read: a repeated entry, or a perm on a matrix that is not int4.
    [TestCase("repeated", "repeated")]
    [TestCase("int8", "int4")]
    public void BadPermutationInOurLayoutIsOneLine(string how, string mentions)
    {
        string src = how == "repeated"
            ? Build("r-gptq-act-bad", GptqActConfig, (b, w, rows, cols) => GptqOrdered(b, w, rows, cols, ActOrderOf(b, cols, splitUpGate: false)))
            : Src;
        string ours = Path.Combine(_dir, "ours-bad-perm-" + how);
        var args = how == "repeated" ? new[] { "quantize", "--model", src, "--out", ours } : ["quantize", "--model", src, "--out", ours, "--scheme", "int8"];
        Assert.That(CliRun.Of(args).ExitCode, Is.EqualTo(0));
        const string victim = "model.layers.0.self_attn.v_proj";
        string file = Path.Combine(ours, Checkpoint.SingleFileName);
        var entries = new List<SafeTensorsWriter.Entry>();
        using (var ck = Checkpoint.Open(ours))
        {
            foreach (var t in ck.Tensors)
            {
                var bytes = ck.GetBytes(t.Name).ToArray();
                if (t.Name == victim + ".perm")
                    MemoryMarshal.Cast<byte, int>(bytes.AsSpan())[1] = MemoryMarshal.Cast<byte, int>(bytes.AsSpan())[0];
                entries.Add(new SafeTensorsWriter.Entry(t.Name, t.DType, t.Shape, bytes));
            }
        }

        if (how == "int8")
            entries.Add(Ints(victim + ".perm", [128], Enumerable.Range(0, 128).ToArray()));
        SafeTensorsWriter.Write(file, entries);
        var line = CliRun.Of("logits", "--model", ours, "--tokens", "1,2", "--out", Path.Combine(_dir, "x.safetensors"), "--device", "cpu").AssertBadInput();
        Assert.That(line, Does.Contain(victim).And.Contain(mentions));
    }

    [Test]
    public void QuantizeWithoutSchemeNeedsAQuantizedSource()
    {
        var line = CliRun.Of("quantize", "--model", Src, "--out", Path.Combine(_dir, "nothing")).AssertBadInput();
        Assert.That(line, Does.Contain("--scheme"));
        string ours = Path.Combine(_dir, "ours-int8");
        Assert.That(CliRun.Of("quantize", "--model", Src, "--out", ours, "--scheme", "int8").ExitCode, Is.EqualTo(0));
        line = CliRun.Of("quantize", "--model", ours, "--out", Path.Combine(_dir, "nothing")).AssertBadInput();
        Assert.That(line, Does.Contain("already in our packed layout"));
    }

    private string PerRowSource()
    {
        string src = Path.Combine(_dir, "src-per-row");
        if (!File.Exists(Path.Combine(src, "config.json")))
            RandomMixtral.Write(src, QuantRuntimeTests.Tiny with { Ffn = 160, HeadDim = 48, Seed = 83 });
        return src;
    }

    private string Build(string name, string quantConfig, Packer pack, string? src = null)
    {
        src ??= Src;
        string dir = Path.Combine(_dir, name);
        Directory.CreateDirectory(dir);
        var config = ModelConfig.Load(src);
        var entries = new List<SafeTensorsWriter.Entry>();
        using (var ck = Checkpoint.Open(src))
        {
            foreach (var e in ModelTensors.Expected(config))
            {
                if (QuantSource.IsLinear(e))
                    entries.AddRange(pack(QuantSource.BaseOf(e.Name), ck.ReadFloat32(e.Name), (int)e.Shape[0], (int)e.Shape[1]));
                else
                    entries.Add(new SafeTensorsWriter.Entry(e.Name, ck.Get(e.Name).DType, e.Shape, ck.GetBytes(e.Name).ToArray()));
            }
        }

        SafeTensorsWriter.Write(Path.Combine(dir, Checkpoint.SingleFileName), entries);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(src, "config.json")))!.AsObject();
        json["quantization_config"] = JsonNode.Parse(quantConfig);
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
        return dir;
    }
}
