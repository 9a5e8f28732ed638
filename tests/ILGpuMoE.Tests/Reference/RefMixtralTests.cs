using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Reference;

/// <summary>The oracle's whole Mixtral forward pass on a random tiny model.</summary>
public class RefMixtralTests
{
    private static readonly RefMixtralConfig Tiny = new(Hidden: 16, Intermediate: 24, Layers: 2, Heads: 4, KvHeads: 2,
        HeadDim: 6, RmsEps: 1e-5f, RopeTheta: 10000f, SlidingWindow: 0, Experts: 4, TopK: 2, Vocab: 37, TieEmbeddings: false);

    /// <summary>Random weights under Hugging Face names, sized from the config.</summary>
    internal static Dictionary<string, float[]> RandomWeights(RefMixtralConfig c, int seed)
    {
        int d = c.Hidden, q = c.Heads * c.HeadDim, kv = c.KvHeads * c.HeadDim, f = c.Intermediate;
        var w = new Dictionary<string, float[]>();
        void Add(string name, int n, double std) => w[name] = Data.Gaussian(seed + w.Count, n, std);
        Add("model.embed_tokens.weight", c.Vocab * d, 1);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            w[p + "input_layernorm.weight"] = Data.Uniform(seed + 100 + l, d).Select(v => 1 + 0.2f * v).ToArray();
            w[p + "post_attention_layernorm.weight"] = Data.Uniform(seed + 200 + l, d).Select(v => 1 + 0.2f * v).ToArray();
            Add(p + "self_attn.q_proj.weight", q * d, 0.3);
            Add(p + "self_attn.k_proj.weight", kv * d, 0.3);
            Add(p + "self_attn.v_proj.weight", kv * d, 0.3);
            Add(p + "self_attn.o_proj.weight", d * q, 0.3);
            Add(p + "block_sparse_moe.gate.weight", c.Experts * d, 0.5);
            for (int e = 0; e < c.Experts; e++)
            {
                Add($"{p}block_sparse_moe.experts.{e}.w1.weight", f * d, 0.25);
                Add($"{p}block_sparse_moe.experts.{e}.w3.weight", f * d, 0.25);
                Add($"{p}block_sparse_moe.experts.{e}.w2.weight", d * f, 0.25);
            }
        }

        w["model.norm.weight"] = Data.Uniform(seed + 300, d).Select(v => 1 + 0.2f * v).ToArray();
        Add("lm_head.weight", c.Vocab * d, 0.3);
        return w;
    }

    private static RefMixtral Model(RefMixtralConfig c, int seed = 1)
    {
        var w = RandomWeights(c, seed);
        return new RefMixtral(c, name => w[name]);
    }

    [Test]
    public void IncrementalEqualsBatched()
    {
        var model = Model(Tiny);
        int[] tokens = [3, 17, 0, 36, 5, 5, 22, 9, 1];
        var batched = model.Forward(tokens);
        Assert.That(batched, Has.Length.EqualTo(tokens.Length * Tiny.Vocab));

        var session = model.NewSession();
        var pieces = new List<float>();
        pieces.AddRange(session.Step(tokens.AsSpan(0, 5)));
        pieces.AddRange(session.Step(tokens.AsSpan(5, 1)));
        pieces.AddRange(session.Step(tokens.AsSpan(6, 3)));
        Assert.That(session.Position, Is.EqualTo(9));
        // Every row is computed by the same arithmetic whatever the batch: bit-identical.
        Check.BitEqual(batched, pieces.ToArray(), "prefill 5 + decode 1 + prefill 3 vs one prefill of 9");
    }

    [Test]
    public void ExposesRoutingOfEveryLayer()
    {
        var model = Model(Tiny);
        int[] tokens = [4, 8, 15, 16, 23, 2];
        model.Forward(tokens);
        Assert.That(model.LastRouting, Has.Count.EqualTo(Tiny.Layers));
        foreach (var r in model.LastRouting)
        {
            Assert.That(r.Tokens, Is.EqualTo(tokens.Length));
            Assert.That(r.TopK, Is.EqualTo(Tiny.TopK));
            Assert.That(r.ExpertIds, Has.All.InRange(0, Tiny.Experts - 1));
            for (int t = 0; t < tokens.Length; t++)
            {
                Assert.That(r.ExpertIds[t * 2], Is.Not.EqualTo(r.ExpertIds[t * 2 + 1]));
                Assert.That(r.Weights[t * 2] + r.Weights[t * 2 + 1], Is.EqualTo(1f).Within(1e-6));
                Assert.That(r.Weights[t * 2], Is.GreaterThanOrEqualTo(r.Weights[t * 2 + 1]));
            }
        }

        var session = model.NewSession();
        session.Step(tokens.AsSpan(0, 4));
        session.Step(tokens.AsSpan(4));
        Assert.That(session.LastRouting[1].ExpertIds, Is.EqualTo(model.LastRouting[1].ExpertIds[(4 * 2)..]));
    }

    [Test]
    public void SlidingWindowMasksOldKeys()
    {
        int[] tokens = [3, 1, 4, 1, 5, 9, 2, 6];
        var full = Model(Tiny).Forward(tokens);
        // A window as long as the sequence masks nothing; a shorter one changes the later tokens only.
        Check.BitEqual(full, Model(Tiny with { SlidingWindow = 8 }).Forward(tokens));
        var windowed = Model(Tiny with { SlidingWindow = 3 }).Forward(tokens);
        int v = Tiny.Vocab;
        Check.BitEqual(full.AsSpan(0, 3 * v), windowed.AsSpan(0, 3 * v), "tokens within the window");
        Assert.That(windowed.AsSpan(7 * v, v).SequenceEqual(full.AsSpan(7 * v, v)), Is.False);
    }

    [Test]
    public void TiedEmbeddingsUseTheEmbeddingAsHead()
    {
        var c = Tiny with { TieEmbeddings = true };
        var w = RandomWeights(c, 5);
        w.Remove("lm_head.weight");
        var tied = new RefMixtral(c, name => w[name]);
        w["lm_head.weight"] = w["model.embed_tokens.weight"];
        var untied = new RefMixtral(Tiny, name => w[name]);
        Check.BitEqual(untied.Forward([1, 2, 3]), tied.Forward([1, 2, 3]));
    }

    [Test]
    public void RejectsBadWeightsConfigAndTokens()
    {
        var w = RandomWeights(Tiny, 1);
        w["model.layers.1.block_sparse_moe.experts.2.w2.weight"] = new float[5];
        var ex = Assert.Throws<ArgumentException>(() => new RefMixtral(Tiny, name => w[name]));
        Assert.That(ex!.Message, Does.Contain("experts.2.w2"));
        Assert.Throws<ArgumentException>(() => new RefMixtral(Tiny with { KvHeads = 3 }, name => w[name]));
        Assert.Throws<ArgumentException>(() => new RefMixtral(Tiny with { TopK = 5 }, name => w[name]));
        var model = Model(Tiny);
        Assert.Throws<ArgumentException>(() => model.Forward([1, 37]));
        Assert.Throws<ArgumentException>(() => model.Forward([]));
        var session = model.NewSession();
        Assert.Throws<ArgumentException>(() => session.Step([-1]));
        Assert.That(session.Position, Is.Zero);
    }
}
