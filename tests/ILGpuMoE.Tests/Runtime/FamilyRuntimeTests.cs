using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// The runtime against the oracle (RefModel: Hugging Face's semantics per family, read through HfReferenceConfig,
/// which does not share the runtime's config reader) on random checkpoints in Hugging Face layout, for the options
/// llama.cpp cannot check (Peer/MoePeerTests covers the rest): dense and MoE layers mixed, sliding windows, clip_qkv,
/// norm_topk_prob both ways, a shared expert whose width is not a multiple of the experts' (zero-padded chunk).
/// Prefill of all tokens, then decode of the last ones after a prefill of the others, under both kernel policies.
/// </summary>
public class FamilyRuntimeTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-family-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    public static IEnumerable<TestCaseData> Cases()
    {
        var cases = new (string Name, RandomMoeOptions O)[]
        {
            ("Qwen3Moe_DenseAndMoeLayers_NoNorm_Window5", new RandomMoeOptions
            {
                Family = RefFamily.Qwen3Moe, Hidden = 40, Layers = 3, Heads = 4, KvHeads = 2, HeadDim = 12, Experts = 16, TopK = 8,
                MoeIntermediate = 16, DenseIntermediate = 40, MlpOnlyLayers = [1], NormTopK = false, UseSlidingWindow = true,
                SlidingWindow = 5, Seed = 201,
            }),
            ("Qwen2Moe_SparseStep2_Shared36_Window4_BF16", new RandomMoeOptions
            {
                Family = RefFamily.Qwen2Moe, Hidden = 48, Layers = 4, Heads = 4, KvHeads = 2, Experts = 12, TopK = 4, MoeIntermediate = 16,
                DenseIntermediate = 24, DecoderSparseStep = 2, SharedExpertIntermediate = 36, NormTopK = true, UseSlidingWindow = true,
                SlidingWindow = 4, MaxWindowLayers = 3, DType = DType.BF16, Seed = 202,
            }),
            ("Olmoe_ClipQkv_GQA_Tied", new RandomMoeOptions
            {
                Family = RefFamily.Olmoe, Hidden = 48, Layers = 2, Heads = 4, KvHeads = 4, Experts = 16, TopK = 4, MoeIntermediate = 24,
                NormTopK = true, ClipQkv = 0.6, TieEmbeddings = true, Seed = 203,
            }),
            // gpt-oss: BF16 stacked experts with a limit low enough that both clamps act; MXFP4 experts with truncated YaRN.
            ("GptOss_Bf16_Window3_Limit1.5", new RandomMoeOptions
            {
                Family = RefFamily.GptOss, Hidden = 48, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 12, Experts = 4, TopK = 2,
                MoeIntermediate = 20, UseSlidingWindow = true, SlidingWindow = 3, DType = DType.BF16, SwigluLimit = 1.5, Seed = 204,
            }),
            ("GptOss_Mxfp4_Window5_Top3of6_YarnTruncated", new RandomMoeOptions
            {
                Family = RefFamily.GptOss, Hidden = 64, Layers = 2, Heads = 4, KvHeads = 1, HeadDim = 16, Experts = 6, TopK = 3,
                MoeIntermediate = 32, UseSlidingWindow = true, SlidingWindow = 5, Mxfp4Experts = true, SwigluLimit = 2.0,
                Yarn = new RefYarn(8, 256, 32, 1, Truncate: true), Seed = 205,
            }),
            // DeepSeek-V3: q LoRA, a dense first layer, groups, score bias and a shared expert; then a direct q_proj with YaRN's mscale.
            ("DeepseekV3_QLora_DenseFirst_Groups", new RandomMoeOptions
            {
                Family = RefFamily.DeepSeekV3, Hidden = 48, Layers = 2, Heads = 3, KvHeads = 3, Experts = 8, TopK = 3, Groups = 4, TopKGroups = 2,
                MoeIntermediate = 16, DenseIntermediate = 40, QLoraRank = 20, KvLoraRank = 24, QkNopeHeadDim = 12, QkRopeHeadDim = 8,
                VHeadDim = 10, DType = DType.BF16, Seed = 206,
            }),
            ("DeepseekV3_QProj_Yarn_TwoShared", new RandomMoeOptions
            {
                Family = RefFamily.DeepSeekV3, Hidden = 40, Layers = 2, Heads = 2, KvHeads = 2, Experts = 8, TopK = 2, Groups = 2, TopKGroups = 1,
                MoeIntermediate = 12, DenseIntermediate = 24, QLoraRank = null, KvLoraRank = 16, QkNopeHeadDim = 8, QkRopeHeadDim = 4,
                VHeadDim = 8, SharedExperts = 2, FirstKDenseReplace = 0, Yarn = new RefYarn(4, 64, 32, 1, Mscale: 1, MscaleAllDim: 0.8),
                MaxPositions = 256, Seed = 207,
            }),
        };
        foreach (var (name, o) in cases)
        {
            foreach (var p in RuntimeTests.Policies)
                yield return new TestCaseData(o, p).SetName($"{name}_{p}");
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void RuntimeMatchesTheOracle(RandomMoeOptions o, KernelPolicy policy)
    {
        string dir = Path.Combine(_dir, $"m{o.Seed}");
        if (!Directory.Exists(dir))
            RandomMoe.Write(dir, o);
        var config = HfReferenceConfig.Load(dir);
        float[] want;
        using (var ck = Checkpoint.Open(dir))
            want = new RefModel(config, ck.ReadFloat32, Reference.RefModelFixtureTests.RawReader(ck)).Forward(Tokens(o));
        int[] tokens = Tokens(o);
        int v = o.Vocab;

        using var model = MoeModel.Load(TestDevice.Accelerator, dir, new ModelLoadOptions { MaxSeq = 32, Kernels = policy });
        using var session = model.NewSession();
        var got = session.Prefill(tokens, allLogits: true);
        const double tol = 1e-4; // BF16 weights widen exactly to F32 (measured 1.7e-6 at most)
        RuntimeTests.CloseLogged(want, got, rtol: 0, atol: tol, what: $"{policy}: runtime vs oracle");
        RuntimeTests.AssertArgmaxEqual(want, got, v, "runtime vs oracle");

        const int tail = 3;
        using var stepwise = model.NewSession();
        var rows = FamilyFixtureTests.DecodeTail(stepwise, tokens, tail);
        RuntimeTests.CloseLogged(want.AsSpan((tokens.Length - tail) * v).ToArray(), rows, rtol: 0, atol: tol, what: $"{policy}: decode steps vs oracle");
    }

    // DeepSeek-V3 as its FP8 release stores it: every linear weight and kv_b_proj as E4M3 + weight_scale_inv (128 x 128
    // blocks; these small matrices are one partial block), quant_method "fp8". The single shared expert (F wide) loads as
    // it is, the dense first layer's MLP is widened to F32 chunks, kv_b_proj to F32: the runtime equals the oracle on
    // the dequantized weights.
    [TestCaseSource(typeof(RuntimeTests), nameof(RuntimeTests.Policies))]
    public void DeepseekFp8ReleaseMatchesTheOracleOnItsValues(KernelPolicy policy)
    {
        var o = new RandomMoeOptions
        {
            Family = RefFamily.DeepSeekV3, Hidden = 48, Layers = 2, Heads = 2, KvHeads = 2, Experts = 8, TopK = 2, Groups = 2, TopKGroups = 1,
            MoeIntermediate = 16, DenseIntermediate = 40, QLoraRank = 20, KvLoraRank = 16, QkNopeHeadDim = 8, QkRopeHeadDim = 4, VHeadDim = 8,
            DType = DType.BF16, Seed = 208,
        };
        string bf16 = Path.Combine(_dir, "ds-fp8-src"), dir = Path.Combine(_dir, $"ds-fp8-{policy}");
        if (!Directory.Exists(bf16))
            RandomMoe.Write(bf16, o);
        var config = ModelConfig.Load(bf16);
        var packed = ModelTensors.Expected(config).Where(e => e.IsLinear || e.Role == TensorRole.LatentExpansion).Select(e => e.Name).ToHashSet();
        Directory.CreateDirectory(dir);
        using (var src = Checkpoint.Open(bf16))
        {
            var entries = new List<SafeTensorsWriter.Entry>();
            foreach (var t in src.Tensors)
            {
                if (packed.Contains(t.Name))
                    entries.AddRange(QuantCheckpointTests.Fp8(QuantSource.BaseOf(t.Name), src.ReadFloat32(t.Name), (int)t.Shape[0], (int)t.Shape[1]));
                else
                    entries.Add(new SafeTensorsWriter.Entry(t.Name, t.DType, t.Shape, src.GetBytes(t.Name).ToArray()));
            }

            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), entries);
        }

        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(bf16, "config.json")))!;
        json["quantization_config"] = System.Text.Json.Nodes.JsonNode.Parse("{\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"activation_scheme\": \"dynamic\", \"weight_block_size\": [128, 128]}");
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());

        float[] want;
        using (var ck = Checkpoint.Open(dir))
        {
            float[] Read(string name) => ck.Get(name).DType == DType.F8_E4M3
                ? RefQuant.DequantFp8Checkpoint(ck.GetBytes(name), ck.GetSpan<float>(QuantSource.BaseOf(name) + ".weight_scale_inv"), (int)ck.Get(name).Shape[0], (int)ck.Get(name).Shape[1])
                : ck.ReadFloat32(name);
            want = new RefModel(HfReferenceConfig.Load(dir), Read).Forward(Tokens(o));
        }

        using var model = MoeModel.Load(TestDevice.Accelerator, dir, new ModelLoadOptions { MaxSeq = 32, Kernels = policy });
        Assert.That(model.ExpertWeightType(1), Does.StartWith("Fp8"), "routed and shared experts stay FP8");
        Assert.That(model.ExpertWeightType(0), Is.EqualTo("F32"), "the dense first layer's FP8 MLP runs as F32 chunks");
        using var session = model.NewSession();
        var got = session.Prefill(Tokens(o), allLogits: true);
        RuntimeTests.CloseLogged(want, got, rtol: 0, atol: 1e-4, what: $"{policy}: FP8 DeepSeek vs oracle");
        RuntimeTests.AssertArgmaxEqual(want, got, o.Vocab, "FP8 DeepSeek vs oracle");
    }

    [Test]
    public void TheWindowAndTheClipChangeTheLogits()
    {
        // Guards the cases above: with the window and clip_qkv off, the same weights give other logits, so a runtime that
        // ignored either option would fail them.
        var cases = Cases().Select(c => (RandomMoeOptions)c.Arguments[0]!).DistinctBy(o => o.Seed).ToList();
        foreach (var o in cases.Where(o => o.UseSlidingWindow || o.ClipQkv is not null))
        {
            string on = Path.Combine(_dir, $"guard-on-{o.Seed}"), off = Path.Combine(_dir, $"guard-off-{o.Seed}");
            RandomMoe.Write(on, o);
            RandomMoe.Write(off, o with { UseSlidingWindow = false, ClipQkv = null });
            float[] Run(string d)
            {
                using var ck = Checkpoint.Open(d);
                return new RefModel(HfReferenceConfig.Load(d), ck.ReadFloat32, Reference.RefModelFixtureTests.RawReader(ck)).Forward(Tokens(o));
            }

            double moved = Run(on).Zip(Run(off), (a, b) => Math.Abs(a - b)).Max();
            Assert.That(moved, Is.GreaterThan(1e-2), $"seed {o.Seed}: the option must matter at this shape");
        }
    }

    private static int[] Tokens(RandomMoeOptions o) => Data.Ints((int)o.Seed, 11, 0, o.Vocab);
}
