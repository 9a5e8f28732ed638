using ILGpuMoE.IO;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;
using ILGpuMoE.Testing;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// BatchSession: several sequences stepped together over a fragmented paged KV pool give each sequence the logits a
/// single-sequence session gives it (the contiguous cache, every family's attention: GQA, sliding windows, sinks, MLA),
/// under the three kernel policies; the pool's accounting; bad steps refused before anything is appended.
/// </summary>
public class BatchSessionTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Setup() => _dir = Directory.CreateTempSubdirectory("ilgpumoe-batch-").FullName;

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    // The attention variants the families bring: Mixtral GQA (the F32 llama.cpp fixture), Qwen3 per-head norm + window +
    // a dense layer, gpt-oss sinks + window with MXFP4 experts, DeepSeek-V3's MLA latent cache.
    private static readonly (string Name, RandomMoeOptions? O)[] Models =
    [
        ("MixtralFixtureF32", null),
        ("Qwen3Moe_Window5_DenseLayer", new RandomMoeOptions
        {
            Family = RefFamily.Qwen3Moe, Hidden = 40, Layers = 3, Heads = 4, KvHeads = 2, HeadDim = 12, Experts = 16, TopK = 8,
            MoeIntermediate = 16, DenseIntermediate = 40, MlpOnlyLayers = [1], NormTopK = false, UseSlidingWindow = true,
            SlidingWindow = 5, Seed = 301,
        }),
        ("GptOss_Mxfp4_Sinks_Window3", new RandomMoeOptions
        {
            Family = RefFamily.GptOss, Hidden = 64, Layers = 2, Heads = 4, KvHeads = 1, HeadDim = 16, Experts = 6, TopK = 3,
            MoeIntermediate = 32, UseSlidingWindow = true, SlidingWindow = 3, Mxfp4Experts = true, SwigluLimit = 2.0, Seed = 302,
        }),
        ("DeepseekV3_Mla", new RandomMoeOptions
        {
            Family = RefFamily.DeepSeekV3, Hidden = 40, Layers = 2, Heads = 2, KvHeads = 2, Experts = 8, TopK = 2, Groups = 2, TopKGroups = 1,
            MoeIntermediate = 12, DenseIntermediate = 24, QLoraRank = null, KvLoraRank = 16, QkNopeHeadDim = 8, QkRopeHeadDim = 4,
            VHeadDim = 8, FirstKDenseReplace = 1, MaxPositions = 256, Seed = 303,
        }),
    ];

    // Every model on the CPU backend; on the emulator (minutes per case on 2 cores) the paged kernels each policy picks
    // once: V1 under Simple (GQA, MLA), the decode version under Tuned (GQA, and sinks with a window). The kernels'
    // own tests (Kernels/Attention/PagedAttentionTests.cs) cover every version on every option.
    public static IEnumerable<TestCaseData> Cases() =>
        Models.Select(m => (m.Name, KernelPolicy.Cpu))
            .Concat([("MixtralFixtureF32", KernelPolicy.Simple), ("MixtralFixtureF32", KernelPolicy.Tuned), ("GptOss_Mxfp4_Sinks_Window3", KernelPolicy.Tuned),
                ("DeepseekV3_Mla", KernelPolicy.Simple)])
            .Select(c => new TestCaseData(c.Item1, c.Item2).SetName($"{c.Item1}_{c.Item2}"));

    private string ModelDir(string name)
    {
        var o = Models.Single(m => m.Name == name).O;
        if (o is null)
            return RuntimeTests.FixtureDir;
        string dir = Path.Combine(_dir, name);
        if (!Directory.Exists(dir))
            RandomMoe.Write(dir, o);
        return dir;
    }

    [TestCaseSource(nameof(Cases))]
    public void SequencesSteppedTogetherEqualEachAlone(string name, KernelPolicy policy)
    {
        string dir = ModelDir(name);
        using var model = MoeModel.Load(TestDevice.Accelerator, dir, new ModelLoadOptions { MaxSeq = 32, Kernels = policy });
        int v = model.Config.VocabSize;
        // Three prompts (7, 1 and 12 tokens) and the tokens each then decodes; C's prompt arrives in two chunks.
        int[] a = Data.Ints(11, 10, 0, v), b = Data.Ints(12, 4, 0, v), c = Data.Ints(13, 14, 0, v);

        // Alone: the contiguous cache, one sequence per session.
        float[][] Alone(int[] tokens, int prompt)
        {
            using var s = model.NewSession();
            var rows = new List<float[]> { s.Prefill(tokens.AsSpan(0, prompt), allLogits: false) };
            for (int i = prompt; i < tokens.Length; i++)
                rows.Add(s.Decode(tokens[i]));
            return [.. rows];
        }

        var wantA = Alone(a, 7);
        var wantB = Alone(b, 1);
        var wantC = Alone(c, 12);

        // Together, in blocks of 4 over a pool that a closed sequence left fragmented.
        using var batch = model.NewBatchSession(new BatchOptions { BlockSize = 4, Blocks = 24 });
        int x = batch.Open();
        Assert.That(batch.Reserve(x, 8), Is.True);
        int sa = batch.Open(), sb = batch.Open(), sc = batch.Open();
        var got = new Dictionary<int, List<float[]>> { [sa] = [], [sb] = [], [sc] = [] };

        void Step(params (int Seq, int[] Tokens, bool Logits)[] inputs)
        {
            var rows = batch.Step(inputs.Select(i => new BatchInput(i.Seq, i.Tokens, i.Logits)).ToArray());
            for (int i = 0; i < inputs.Length; i++)
            {
                Assert.That(rows[i] is null, Is.EqualTo(!inputs[i].Logits), "logits exactly where asked");
                if (rows[i] is { } r)
                    got[inputs[i].Seq].Add(r);
            }
        }

        Step((sa, a[..7], true), (sb, b[..1], true), (sc, c[..5], false));
        batch.Close(x); // its two blocks go back to the pool, between the others' blocks
        Step((sa, [a[7]], true), (sb, [b[1]], true), (sc, c[5..12], true));
        Step((sc, [c[12]], true), (sa, [a[8]], true), (sb, [b[2]], true));
        Step((sb, [b[3]], true), (sc, [c[13]], true), (sa, [a[9]], true));
        Assert.That((batch.Length(sa), batch.Length(sb), batch.Length(sc)), Is.EqualTo((10, 4, 14)));

        foreach (var (seq, want, what) in new[] { (sa, wantA, "A"), (sb, wantB, "B"), (sc, wantC, "C") })
        {
            Assert.That(got[seq], Has.Count.EqualTo(want.Length), what);
            for (int i = 0; i < want.Length; i++)
            {
                Assert.That(want[i].Max(Math.Abs), Is.GreaterThan(0.01f), "logits should not be near zero");
                RuntimeTests.CloseLogged(want[i], got[seq][i], rtol: 1e-5, atol: 1e-5, what: $"{name} {policy}: sequence {what} row {i}, batched vs alone");
                Assert.That(ILGpuMoE.Sampling.Sampler.Argmax(got[seq][i]), Is.EqualTo(ILGpuMoE.Sampling.Sampler.Argmax(want[i])), $"{what} row {i} argmax");
            }
        }

        foreach (int s in new[] { sa, sb, sc })
            batch.Close(s);
        Assert.That(batch.FreeBlocks, Is.EqualTo(batch.Blocks), "every block back in the pool");
    }

    [Test]
    public void PoolAccountingAndBadStepsAppendNothing()
    {
        using var model = MoeModel.Load(TestDevice.Accelerator, RuntimeTests.FixtureDir, new ModelLoadOptions { MaxSeq = 16, MaxBatch = 8, Kernels = KernelPolicy.Cpu });
        using var batch = model.NewBatchSession(new BatchOptions { BlockSize = 4, Blocks = 4 });
        Assert.That((batch.Blocks, batch.FreeBlocks, batch.MaxTokensPerStep, batch.MaxSequenceLength), Is.EqualTo((4, 4, 8, 16)));
        Assert.That(batch.CacheBytes, Is.EqualTo(MemoryPlan.PagedCacheBytes(model.Config, 4, 4)));
        int s = batch.Open(), t = batch.Open();
        Assert.That(batch.Reserve(s, 9), Is.True, "3 blocks");
        Assert.That(batch.FreeBlocks, Is.EqualTo(1));
        Assert.That(batch.Reserve(t, 8), Is.False, "2 more blocks: only 1 free");
        Assert.That(batch.FreeBlocks, Is.EqualTo(1), "a refused reservation takes nothing");
        Assert.That(batch.Reserve(t, 17), Is.False, "past MaxSeq");

        int v = model.Config.VocabSize;
        Assert.That(() => batch.Step([new BatchInput(s, Data.Ints(1, 9, 0, v), true)]), Throws.ArgumentException, "9 tokens > MaxBatch 8");
        Assert.That(() => batch.Step([new BatchInput(s, new[] { v }, true)]), Throws.TypeOf<RuntimeInputException>().With.Message.Contains("vocabulary"));
        Assert.That(() => batch.Step([new BatchInput(s, new[] { 1 }, true), new BatchInput(s, new[] { 2 }, true)]), Throws.ArgumentException.With.Message.Contains("twice"));
        Assert.That(() => batch.Step([new BatchInput(99, new[] { 1 }, true)]), Throws.ArgumentException.With.Message.Contains("not open"));
        Assert.That(() => batch.Step([new BatchInput(t, Data.Ints(2, 7, 0, v), false), new BatchInput(s, new[] { 1 }, false)]),
            Throws.TypeOf<RuntimeInputException>().With.Message.Contains("free blocks"), "t needs 2 blocks, 1 is free");
        Assert.That((batch.Length(s), batch.Length(t)), Is.EqualTo((0, 0)), "nothing appended by a refused step");

        var rows = batch.Step([new BatchInput(s, Data.Ints(3, 8, 0, v), true)]);
        Assert.That(rows[0]!.All(float.IsFinite));
        Assert.That(batch.Length(s), Is.EqualTo(8));
        batch.Close(s);
        batch.Close(t);
        Assert.That(batch.FreeBlocks, Is.EqualTo(4));
        Assert.That(() => batch.Length(s), Throws.ArgumentException);
        Assert.That(() => model.NewBatchSession(new BatchOptions { BlockSize = 0 }), Throws.TypeOf<RuntimeInputException>());
        Assert.That(() => model.NewBatchSession(new BatchOptions { Blocks = 0 }), Throws.TypeOf<RuntimeInputException>());
    }
}
