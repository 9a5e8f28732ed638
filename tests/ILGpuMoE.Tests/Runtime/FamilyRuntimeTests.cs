using ILGpuMoE.IO;
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
            want = new RefModel(config, ck.ReadFloat32).Forward(Tokens(o));
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
                return new RefModel(HfReferenceConfig.Load(d), ck.ReadFloat32).Forward(Tokens(o));
            }

            double moved = Run(on).Zip(Run(off), (a, b) => Math.Abs(a - b)).Max();
            Assert.That(moved, Is.GreaterThan(1e-2), $"seed {o.Seed}: the option must matter at this shape");
        }
    }

    private static int[] Tokens(RandomMoeOptions o) => Data.Ints((int)o.Seed, 11, 0, o.Vocab);
}
