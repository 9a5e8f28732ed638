using System.Text.Json;
using ILGpuMoE.IO;
using ILGpuMoE.Reference;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Reference;

/// <summary>The gpt-oss and DeepSeek-V3 parts of the oracle: MXFP4 from hand-worked bytes, YaRN's correction range,
/// the config reader, and the fixtures (TestData/gpt-oss-tiny-mxfp4, TestData/deepseek-v3-tiny) re-run with one detail
/// wrong, which must move the logits by what each PROVENANCE.md measured with its own float64 reference.</summary>
public class RefGptOssDeepSeekTests
{
    private const string GptOss = "gpt-oss-tiny-mxfp4", DeepSeek = "deepseek-v3-tiny";

    [Test]
    public void Mxfp4DequantizesHandWorkedBytes()
    {
        // Two rows of two 32-value blocks. E2M1 codes (sign, 2-bit exponent with bias 1, 1-bit mantissa):
        // 1 = 0.5, 2 = 1, 3 = 1.5, 5 = 3, 6 = 4, 7 = 6, 8 = -0, 9 = -0.5, 11 = -1.5, 12 = -2, 14 = -4, 15 = -6.
        // Byte j of a block: element 2j = low nibble, element 2j + 1 = high nibble. Scale s: factor 2^(s - 127).
        var blocks = new byte[2 * 2 * 16];
        byte[] scales = [128, 125, 127, 130];
        blocks[0] = 0x21;       // row 0 block 0 (x2):    e0 = 0.5 * 2 = 1,  e1 = 1 * 2 = 2
        blocks[1] = 0xF8;       //                        e2 = -0 * 2 = -0, e3 = -6 * 2 = -12
        blocks[2] = 0x7E;       //                        e4 = -4 * 2 = -8, e5 = 6 * 2 = 12
        blocks[16 + 15] = 0x5C; // row 0 block 1 (x1/4):  e62 = -2 / 4 = -0.5, e63 = 3 / 4 = 0.75
        blocks[32] = 0x96;      // row 1 block 0 (x1):    e0 = 4, e1 = -0.5
        blocks[48] = 0x01;      // row 1 block 1 (x8):    e32 = 0.5 * 8 = 4, e33 = 0 * 8 = 0
        blocks[48 + 1] = 0xB3;  //                        e34 = 1.5 * 8 = 12, e35 = -1.5 * 8 = -12
        var w = RefMxfp4.Dequantize(blocks, scales, rows: 2, groups: 2);
        var want = new float[2 * 64];
        (want[0], want[1], want[2], want[3], want[4], want[5], want[62], want[63]) = (1, 2, -0f, -12, -8, 12, -0.5f, 0.75f);
        (want[64], want[65], want[96], want[97], want[98], want[99]) = (4, -0.5f, 4, 0, 12, -12);
        Check.BitEqual(want, w, "MXFP4 hand-worked bytes");
        Assert.That(float.IsNegative(w[2]), "code 8 is -0");
        Assert.That(() => RefMxfp4.Dequantize(blocks, scales, 2, 3), Throws.ArgumentException.With.Message.Contains("blocks"));
    }

    [Test]
    public void TransposeEachTransposesEveryMatrix()
    {
        // Two [2, 3] matrices [[1 2 3] [4 5 6]] and [[7 8 9] [10 11 12]] become [[1 4] [2 5] [3 6]] and
        // [[7 10] [8 11] [9 12]]: the step between gpt-oss' input-major experts and [out, in] rows.
        float[] w = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        Check.BitEqual([1, 4, 2, 5, 3, 6, 7, 10, 8, 11, 9, 12], RefOps.TransposeEach(w, 2, 2, 3), "TransposeEach");
    }

    [Test]
    public void YarnCorrectionRangeAndFrequencies()
    {
        // gpt-oss-tiny's rotary dim 16, theta 150000, original 4096, betas 32 / 1: corr(r) = 16 ln(4096 / (2 pi r)) /
        // (2 ln 150000): corr(32) = 16 * 3.01418 / 23.83657 = 2.0232, corr(1) = 16 * 6.47992 / 23.83657 = 4.3495
        // (the PROVENANCE.md's unrounded range); truncate rounds them outwards to 2 and 5.
        var yarn = new RefYarn(32, 4096, 32, 1, Truncate: false);
        var (low, high) = yarn.CorrectionRange(16, 150000);
        Assert.That(low, Is.EqualTo(2.0232).Within(1e-4));
        Assert.That(high, Is.EqualTo(4.3495).Within(1e-4));
        Assert.That((yarn with { Truncate = true }).CorrectionRange(16, 150000), Is.EqualTo((2.0, 5.0)));
        // attention_factor = 0.1 ln 32 + 1 = 1.346574; mscale = mscale_all_dim cancels to 1 (DeepSeek-V3's block),
        // whose softmax factor is then (0.1 ln 40 + 1)^2 = 1.368888^2 = 1.873855.
        Assert.That(yarn.CosSinFactor, Is.EqualTo(1.346574).Within(1e-6));
        var ds = new RefYarn(40, 4096, Mscale: 1, MscaleAllDim: 1);
        Assert.That(ds.CosSinFactor, Is.EqualTo(1.0));
        Assert.That(ds.SoftmaxScale, Is.EqualTo(1.873855).Within(1e-5));
        // Below the range pure extrapolation (theta^(-2i/d)), above it pure interpolation (divided by factor).
        var inv = RefRope.InvFreq(16, 150000, yarn);
        Assert.That(inv[0], Is.EqualTo(1.0));
        Assert.That(inv[2], Is.EqualTo(Math.Pow(150000, -4.0 / 16)).Within(1e-15));
        Assert.That(inv[7], Is.EqualTo(Math.Pow(150000, -14.0 / 16) / 32).Within(1e-18));
        // i = 3 sits at ramp (3 - 2.0232) / (4.3495 - 2.0232) = 0.41994: 58% extrapolation.
        double e3 = 1 - (3 - low) / (high - low), p3 = Math.Pow(150000, -6.0 / 16);
        Assert.That(inv[3], Is.EqualTo(p3 / 32 * (1 - e3) + p3 * e3).Within(1e-15));
        Assert.That(e3, Is.EqualTo(0.58006).Within(1e-4));
    }

    [Test]
    public void FixtureConfigsReadAsTheirProvenanceSays()
    {
        var o = HfReferenceConfig.Load(RefModelFixtureTests.FixtureDir(GptOss));
        Assert.That((o.Family, o.Hidden, o.Layers, o.Heads, o.KvHeads, o.HeadDim, o.Vocab, o.Experts, o.TopK, o.MoeIntermediate),
            Is.EqualTo((RefFamily.GptOss, 64, 2, 4, 2, 16, 520, 4, 2, 32)));
        Assert.That(o.SlidingWindow, Is.EqualTo(new[] { 4, 0 }));
        Assert.That((o.AttentionBias, o.AttentionSinks, o.Mxfp4Experts, o.SwigluLimit, o.SwigluAlpha, o.RopeTheta, o.RmsEps),
            Is.EqualTo((true, true, true, 7f, 1.702f, 150000f, 1e-5f)));
        Assert.That(o.Yarn, Is.EqualTo(new RefYarn(32, 4096, 32, 1, Truncate: false)));
        var d = HfReferenceConfig.Load(RefModelFixtureTests.FixtureDir(DeepSeek));
        Assert.That((d.Family, d.Hidden, d.Heads, d.KvHeads, d.HeadDim, d.Experts, d.TopK, d.MoeIntermediate, d.DenseIntermediate, d.SharedExpertIntermediate),
            Is.EqualTo((RefFamily.DeepSeekV3, 48, 4, 4, 24, 8, 2, 32, 96, 32)));
        Assert.That(d.Mla, Is.EqualTo(new RefMla(24, 24, 16, 8, 16)));
        Assert.That(d.MoeLayers, Is.EqualTo(new[] { false, true }));
        Assert.That((d.Groups, d.TopKGroups, d.NormTopK, d.RoutedScaling, d.RopeInterleave, d.Yarn, d.RmsEps),
            Is.EqualTo((4, 2, true, 2.5f, true, (RefYarn?)null, 1e-6f)));
    }

    [Test]
    public void ConfigDefaultsAndErrors()
    {
        RefModelConfig Parse(string json) => HfReferenceConfig.FromJson(JsonDocument.Parse(json).RootElement, "test.json");

        // GptOssConfig: 36 layers alternating sliding (128) / full from layer 0, 64/8 heads of 64, 128 experts top-4,
        // the real checkpoints' YaRN block with truncate false, BF16 experts without quantization_config.
        var o = Parse("""{"model_type": "gpt_oss"}""");
        Assert.That((o.Layers, o.Heads, o.KvHeads, o.HeadDim, o.Experts, o.TopK, o.Hidden, o.Vocab, o.Mxfp4Experts),
            Is.EqualTo((36, 64, 8, 64, 128, 4, 2880, 201088, false)));
        Assert.That(o.SlidingWindow[..4], Is.EqualTo(new[] { 128, 0, 128, 0 }));
        Assert.That(o.Yarn, Is.EqualTo(new RefYarn(32, 4096, 32, 1, Truncate: false)));
        Assert.That(Parse("""{"model_type": "gpt_oss", "rope_scaling": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024}}""").Yarn,
            Is.EqualTo(new RefYarn(8, 1024)), "truncate defaults to true, betas to 32 / 1");
        // DeepseekV3Config: 61 layers, the first 3 dense, MLA 1536 / 512 / 128 + 64 / 128, 256 experts in 8 groups
        // keep 4, top-8, one shared expert of 2048, scaling 2.5, no rope scaling.
        var d = Parse("""{"model_type": "deepseek_v3"}""");
        Assert.That((d.Layers, d.MoeLayers.Count(m => !m), d.MoeLayers[3], d.Heads, d.HeadDim, d.Experts, d.TopK, d.Groups, d.TopKGroups),
            Is.EqualTo((61, 3, true, 128, 192, 256, 8, 8, 4)));
        Assert.That((d.Mla, d.SharedExpertIntermediate, d.RoutedScaling, d.NormTopK, d.Yarn),
            Is.EqualTo((new RefMla(1536, 512, 128, 64, 128), 2048, 2.5f, true, (RefYarn?)null)));
        // V3's real rope block: factor 40, mscale = mscale_all_dim = 1; q_lora_rank null = a direct q_proj.
        var v3 = Parse("""
            {"model_type": "deepseek_v3", "q_lora_rank": null, "max_position_embeddings": 163840,
             "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                              "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}
            """);
        Assert.That((v3.Mla!.QLoraRank, v3.Yarn), Is.EqualTo((0, new RefYarn(40, 4096, Mscale: 1, MscaleAllDim: 1))));

        Assert.That(() => Parse("""{"model_type": "gpt_oss", "quantization_config": {"quant_method": "fp8"}}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("quant_method"));
        Assert.That(() => Parse("""{"model_type": "gpt_oss", "rope_scaling": {"rope_type": "linear", "factor": 2.0}}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("rope_scaling"));
        Assert.That(() => Parse("""{"model_type": "gpt_oss", "layer_types": ["full_attention"]}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("layer_types"));
        Assert.That(() => Parse("""{"model_type": "deepseek_v3", "num_key_value_heads": 16}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("num_key_value_heads"));
        Assert.That(() => Parse("""{"model_type": "deepseek_v3", "attention_bias": true}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("attention_bias"));
        Assert.That(() => Parse("""{"model_type": "deepseek_v3", "n_group": 7}"""),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("Groups"));
    }

    [Test]
    public void ValidateKeepsEachFamilysOptionsToItself()
    {
        var oss = HfReferenceConfig.Load(RefModelFixtureTests.FixtureDir(GptOss));
        var ds = HfReferenceConfig.Load(RefModelFixtureTests.FixtureDir(DeepSeek));
        Assert.That((oss with { Family = RefFamily.Qwen3Moe }).Validate, Throws.ArgumentException.With.Message.Contains("gpt-oss"));
        Assert.That((ds with { Family = RefFamily.Qwen3Moe }).Validate, Throws.ArgumentException.With.Message.Contains("DeepSeek-V3"));
        Assert.That((ds with { Mla = null }).Validate, Throws.ArgumentException.With.Message.Contains("MLA"));
        Assert.That((ds with { HeadDim = 16 }).Validate, Throws.ArgumentException.With.Message.Contains("HeadDim"));
        Assert.That((oss with { SwigluLimit = float.PositiveInfinity }).Validate, Throws.ArgumentException.With.Message.Contains("SwigluLimit"));
        Assert.That((oss with { MoeIntermediate = 48 }).Validate, Throws.ArgumentException.With.Message.Contains("MXFP4"));
        Assert.That((oss with { Yarn = new RefYarn(0, 4096) }).Validate, Throws.ArgumentException.With.Message.Contains("factor"));
    }

    // Each PROVENANCE.md's "What a wrong runtime would get": max |d| from the expected logits when one detail is wrong.
    [TestCase(GptOss, "yarn-truncate", 0.00857)]
    [TestCase(GptOss, "no-sinks", 2.88)]
    [TestCase(GptOss, "no-window", 4.55)]
    [TestCase(GptOss, "no-clamp", 0.211)]
    [TestCase(DeepSeek, "rotate-half", 2.43)]
    [TestCase(DeepSeek, "no-routed-scaling", 1.71)]
    [TestCase(DeepSeek, "no-groups", 1.98)]
    public void FixturesPinEachDetail(string fixture, string wrong, double stated)
    {
        var (config, checkpoint, tokens, want) = Open(fixture);
        using var _ = checkpoint;
        var bad = wrong switch
        {
            "yarn-truncate" => config with { Yarn = config.Yarn! with { Truncate = true } },
            "no-sinks" => config with { AttentionSinks = false },
            "no-window" => config with { SlidingWindow = new int[config.Layers] },
            "no-clamp" => config with { SwigluLimit = float.MaxValue },
            "rotate-half" => config with { RopeInterleave = false },
            "no-routed-scaling" => config with { RoutedScaling = 1 },
            "no-groups" => config with { TopKGroups = config.Groups },
            _ => throw new ArgumentException($"unknown variant {wrong}"),
        };
        var got = new RefModel(bad, checkpoint.ReadFloat32, RefModelFixtureTests.RawReader(checkpoint)).Forward(tokens);
        double worst = got.Zip(want, (a, b) => Math.Abs((double)a - b)).Max();
        TestContext.Out.WriteLine($"{fixture} {wrong}: max |d| = {worst:G4} (PROVENANCE.md: {stated})");
        Assert.That(worst, Is.EqualTo(stated).Within(1).Percent);
    }

    [Test]
    public void GptOssBf16ExpertsEqualTheMxfp4Original()
    {
        // The BF16 layout (gate_up_proj [E, D, 2F] input-major, gate / up interleaved on the last axis; down_proj
        // [E, F, D]) written from the dequantized MXFP4 values must give bit-identical logits.
        var (config, checkpoint, tokens, _) = Open(GptOss);
        using var _ck = checkpoint;
        var raw = RefModelFixtureTests.RawReader(checkpoint);
        var want = new RefModel(config, checkpoint.ReadFloat32, raw).Forward(tokens);
        var bf16 = new RefModel(config with { Mxfp4Experts = false }, Bf16Twin(config, checkpoint));
        Check.BitEqual(want, bf16.Forward(tokens), "BF16-layout experts vs MXFP4");
    }

    // The tensors of an MXFP4 gpt-oss checkpoint with its experts as the BF16 form's input-major gate_up_proj /
    // down_proj holding the dequantized values.
    private static Func<string, float[]> Bf16Twin(RefModelConfig config, Checkpoint checkpoint)
    {
        var raw = RefModelFixtureTests.RawReader(checkpoint);
        int e = config.Experts, d = config.Hidden, f = config.MoeIntermediate;
        return name =>
        {
            foreach (var (proj, outDim, inDim) in new[] { ("gate_up_proj", 2 * f, d), ("down_proj", d, f) })
            {
                if (!name.EndsWith($"experts.{proj}", StringComparison.Ordinal))
                    continue;
                var w = RefMxfp4.Dequantize(raw(name + "_blocks")!, raw(name + "_scales")!, e * outDim, inDim / 32);
                return RefOps.TransposeEach(w, e, outDim, inDim);
            }

            return checkpoint.ReadFloat32(name);
        };
    }

    [Test]
    public void RandomMxfp4GptOssReadsBackAndEqualsItsBf16Twin()
    {
        var o = new RandomMoeOptions
        {
            Family = RefFamily.GptOss, Hidden = 64, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 16, Experts = 4, TopK = 2,
            MoeIntermediate = 32, Vocab = 300, UseSlidingWindow = true, SlidingWindow = 3, Seed = 23, DType = ILGpuMoE.IO.DType.BF16,
            RopeTheta = 150000, Mxfp4Experts = true,
        };
        using var tmp = new TempDir();
        RandomMoe.Write(tmp.Path, o);
        var c = HfReferenceConfig.Load(tmp.Path);
        Assert.That((c.Mxfp4Experts, c.SlidingWindow[0], c.SlidingWindow[1]), Is.EqualTo((true, 3, 0)));
        using var ck = Checkpoint.Open(tmp.Path);
        Assert.That((ck.Get("model.layers.1.mlp.experts.down_proj_blocks").DType, ck.Get("model.layers.1.mlp.experts.down_proj_scales").Shape),
            Is.EqualTo((ILGpuMoE.IO.DType.U8, new long[] { 4, 64, 1 })));
        int[] ids = Data.Ints(23, 9, 0, c.Vocab);
        var want = new RefModel(c, ck.ReadFloat32, RefModelFixtureTests.RawReader(ck)).Forward(ids);
        Assert.That(want.All(float.IsFinite), "finite logits");
        Check.BitEqual(want, new RefModel(c with { Mxfp4Experts = false }, Bf16Twin(c, ck)).Forward(ids), "random MXFP4 vs its BF16 twin");
    }

    [TestCase(GptOss, 6)]
    [TestCase(DeepSeek, 5)]
    public void DecodeAfterPrefillEqualsForward(string fixture, int prefill)
    {
        // gpt-oss: a 6-token prefill already exceeds layer 0's window of 4, the decode steps slide it further.
        var (config, checkpoint, tokens, _) = Open(fixture);
        using var _ck = checkpoint;
        var model = new RefModel(config, checkpoint.ReadFloat32, RefModelFixtureTests.RawReader(checkpoint));
        var want = model.Forward(tokens);
        var s = model.NewSession();
        var got = new List<float>(s.Step(tokens.AsSpan(0, prefill)));
        for (int i = prefill; i < tokens.Length; i++)
            got.AddRange(s.Step(tokens.AsSpan(i, 1)));
        Check.BitEqual(want, got.ToArray(), $"{fixture} prefill {prefill} + decode vs forward");
    }

    [Test]
    public void RandomGptOssCheckpointReadsBackAndRuns()
    {
        // Odd sizes: 3 layers (sliding, full, sliding) with window 3, 5 experts top-2, F = 24, BF16.
        var o = new RandomMoeOptions
        {
            Family = RefFamily.GptOss, Hidden = 40, Layers = 3, Heads = 4, KvHeads = 2, HeadDim = 10, Experts = 5, TopK = 2,
            MoeIntermediate = 24, Vocab = 300, UseSlidingWindow = true, SlidingWindow = 3, Seed = 13, DType = ILGpuMoE.IO.DType.BF16,
            RopeTheta = 150000,
        };
        using var tmp = new TempDir();
        RandomMoe.Write(tmp.Path, o);
        var c = HfReferenceConfig.Load(tmp.Path);
        Assert.That((c.Family, c.Hidden, c.Layers, c.HeadDim, c.Experts, c.TopK, c.MoeIntermediate, c.Mxfp4Experts, c.SwigluLimit),
            Is.EqualTo((RefFamily.GptOss, 40, 3, 10, 5, 2, 24, false, 7f)));
        Assert.That(c.SlidingWindow, Is.EqualTo(new[] { 3, 0, 3 }));
        Assert.That(c.Yarn, Is.EqualTo(new RefYarn(32, 4096, 32, 1, Truncate: false)));
        RunsAndDecodes(c, tmp.Path, 9, 4);
    }

    [Test]
    public void RandomDeepSeekCheckpointReadsBackAndRuns()
    {
        // No q LoRA (a direct q_proj, as V2-Lite), YaRN with mscale != mscale_all_dim (both the cos / sin factor and
        // the softmax mscale^2 differ from 1), one dense layer then two MoE layers, 2 shared experts, 12 experts in
        // 4 groups keep 2, top-3.
        var o = new RandomMoeOptions
        {
            Family = RefFamily.DeepSeekV3, Hidden = 40, Layers = 3, Heads = 3, KvHeads = 3, Experts = 12, TopK = 3, Groups = 4, TopKGroups = 2,
            MoeIntermediate = 20, DenseIntermediate = 56, SharedExperts = 2, QLoraRank = null, KvLoraRank = 20, QkNopeHeadDim = 12,
            QkRopeHeadDim = 6, VHeadDim = 10, Vocab = 300, Seed = 17, RopeTheta = 10000, MaxPositions = 256,
            Yarn = new RefYarn(4, 64, Mscale: 0.707, MscaleAllDim: 1.0),
        };
        using var tmp = new TempDir();
        RandomMoe.Write(tmp.Path, o);
        var c = HfReferenceConfig.Load(tmp.Path);
        Assert.That((c.Mla, c.MoeLayers, c.SharedExpertIntermediate, c.Groups, c.TopKGroups, c.RoutedScaling, c.NormTopK),
            Is.EqualTo((new RefMla(0, 20, 12, 6, 10), new[] { false, true, true }, 40, 4, 2, 2.5f, true)));
        Assert.That(c.Yarn, Is.EqualTo(new RefYarn(4, 64, Mscale: 0.707, MscaleAllDim: 1.0)));
        var model = RunsAndDecodes(c, tmp.Path, 9, 3);
        // Weights of the unbiased scores, renormalised, times routed_scaling_factor: each token's sum is 2.5.
        var r = model.LastRouting[1]!;
        for (int t = 0; t < r.Tokens; t++)
            Assert.That(r.Weights.Skip(t * r.TopK).Take(r.TopK).Sum(), Is.EqualTo(2.5f).Within(1e-5f), $"token {t}");
        // The correction bias changes selections on this seed (a zero bias routes differently).
        using var ck = Checkpoint.Open(tmp.Path);
        var unbiased = new RefModel(c, n => n.EndsWith("e_score_correction_bias", StringComparison.Ordinal) ? new float[c.Experts] : ck.ReadFloat32(n));
        unbiased.Forward(Data.Ints(17, 9, 0, c.Vocab));
        Assert.That(unbiased.LastRouting[1]!.ExpertIds, Is.Not.EqualTo(r.ExpertIds));
    }

    // The oracle on T tokens: finite logits, and prefill + token-by-token decode equal to the one-shot forward.
    private static RefModel RunsAndDecodes(RefModelConfig c, string dir, int tokens, int prefill)
    {
        using var ck = Checkpoint.Open(dir);
        var model = new RefModel(c, ck.ReadFloat32);
        int[] ids = Data.Ints(17, tokens, 0, c.Vocab);
        var s = model.NewSession();
        var got = new List<float>(s.Step(ids.AsSpan(0, prefill)));
        for (int i = prefill; i < tokens; i++)
            got.AddRange(s.Step(ids.AsSpan(i, 1)));
        var want = model.Forward(ids);
        Assert.That(want.All(float.IsFinite), "finite logits");
        Check.BitEqual(want, got.ToArray(), $"{c.Family} prefill {prefill} + decode vs forward");
        return model;
    }

    private sealed class TempDir : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("ilgpumoe-ref13-").FullName;

        public void Dispose() => Directory.Delete(Path, recursive: true);
    }

    private static (RefModelConfig Config, Checkpoint Checkpoint, int[] Tokens, float[] Logits) Open(string fixture)
    {
        string dir = RefModelFixtureTests.FixtureDir(fixture);
        using var expected = SafeTensorsFile.Open(Path.Combine(dir, "expected.safetensors"));
        int[] tokens = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(expected.GetBytes("tokens")).ToArray();
        return (HfReferenceConfig.Load(dir), Checkpoint.Open(dir), tokens, expected.ReadFloat32("logits"));
    }
}
