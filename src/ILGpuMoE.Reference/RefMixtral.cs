// A whole Mixtral forward pass built from the oracle's ops, in Hugging Face MixtralForCausalLM order:
//   x = embed(tokens); per layer: x += o_proj(attn(rope(q), rope(k), v)) of rmsnorm(x);
//   x += moe(rmsnorm(x)) with the Mixtral router; logits = lm_head(rmsnorm(x)).
// Every op rounds its output to float (as the F32 model does); inside an op the sums are double.
using System.Runtime.InteropServices;

namespace ILGpuMoE.Reference;

/// <summary>Mixtral hyper-parameters (Hugging Face config.json names in brackets): Hidden [hidden_size] D,
/// Intermediate [intermediate_size] F, Layers [num_hidden_layers], Heads [num_attention_heads] H,
/// KvHeads [num_key_value_heads] Hkv, HeadDim [head_dim, else hidden_size / heads] Dh, RmsEps [rms_norm_eps],
/// RopeTheta [rope_theta], SlidingWindow [sliding_window, 0 = none], Experts [num_local_experts] E,
/// TopK [num_experts_per_tok] K, Vocab [vocab_size] V, TieEmbeddings [tie_word_embeddings].</summary>
public sealed record RefMixtralConfig(
    int Hidden,
    int Intermediate,
    int Layers,
    int Heads,
    int KvHeads,
    int HeadDim,
    float RmsEps,
    float RopeTheta,
    int SlidingWindow,
    int Experts,
    int TopK,
    int Vocab,
    bool TieEmbeddings)
{
    /// <summary>Throws ArgumentException naming the first inconsistent field.</summary>
    public void Validate()
    {
        Require.Positive((Hidden, nameof(Hidden)), (Intermediate, nameof(Intermediate)), (Layers, nameof(Layers)),
            (Heads, nameof(Heads)), (KvHeads, nameof(KvHeads)), (HeadDim, nameof(HeadDim)), (Experts, nameof(Experts)),
            (Vocab, nameof(Vocab)));
        Require.NonNegative(SlidingWindow, nameof(SlidingWindow));
        Require.MultipleOf(Heads, KvHeads, "Mixtral config", nameof(Heads), nameof(KvHeads));
        if (HeadDim % 2 != 0)
            throw new ArgumentException($"Mixtral config: HeadDim = {HeadDim} must be even for RoPE.", nameof(HeadDim));
        if (TopK < 1 || TopK > Experts)
            throw new ArgumentException($"Mixtral config: TopK = {TopK} must be in [1, Experts = {Experts}].", nameof(TopK));
        if (!(RmsEps > 0) || !(RopeTheta > 0))
            throw new ArgumentException($"Mixtral config: RmsEps = {RmsEps} and RopeTheta = {RopeTheta} must be positive.", nameof(RmsEps));
    }
}

/// <summary>The oracle's Mixtral model. Weights are read once, by Hugging Face tensor name, at construction.</summary>
public sealed class RefMixtral
{
    internal sealed record Layer(float[] InputNorm, float[] Wq, float[] Wk, float[] Wv, float[] Wo, float[] PostNorm,
        float[] Gate, float[][] W1, float[][] W3, float[][] W2);

    private RefMixtralSession? _last;

    /// <param name="config">The model's shape and options (config.json's fields).</param>
    /// <param name="weights">Returns the F32 values of a tensor by name (model.embed_tokens.weight,
    /// model.layers.N.self_attn.q_proj.weight, ..., lm_head.weight); lengths are checked against the config.</param>
    /// <param name="router">Another router mode on the same router weights (Switch, NoisyTopK with zero noise logits:
    /// the checkpoint has no noise weights); null: Mixtral's.</param>
    public RefMixtral(RefMixtralConfig config, Func<string, float[]> weights, RefRouterSpec? router = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        config.Validate();
        Config = config;
        Router = router ?? new RefRouterSpec(RouterKind.Mixtral, config.Experts, config.TopK);
        if (Router.Experts != config.Experts)
            throw new ArgumentException($"Mixtral router: spec.Experts = {Router.Experts}, the config has {config.Experts}.", nameof(router));
        int d = config.Hidden, f = config.Intermediate, q = config.Heads * config.HeadDim, kv = config.KvHeads * config.HeadDim;

        float[] Read(string name, long length, string shape)
        {
            var a = weights(name) ?? throw new ArgumentException($"Mixtral weights: tensor {name} is missing.", nameof(weights));
            if (a.Length != length)
                throw new ArgumentException($"Mixtral weights: tensor {name} has {a.Length} elements, expected {length} for {shape}.", nameof(weights));
            return a;
        }

        Embed = Read("model.embed_tokens.weight", (long)config.Vocab * d, "[V, D]");
        var layers = new Layer[config.Layers];
        for (int l = 0; l < config.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            string m = p + "block_sparse_moe.experts.";
            layers[l] = new Layer(
                Read(p + "input_layernorm.weight", d, "[D]"),
                Read(p + "self_attn.q_proj.weight", (long)q * d, "[H*Dh, D]"),
                Read(p + "self_attn.k_proj.weight", (long)kv * d, "[Hkv*Dh, D]"),
                Read(p + "self_attn.v_proj.weight", (long)kv * d, "[Hkv*Dh, D]"),
                Read(p + "self_attn.o_proj.weight", (long)d * q, "[D, H*Dh]"),
                Read(p + "post_attention_layernorm.weight", d, "[D]"),
                Read(p + "block_sparse_moe.gate.weight", (long)config.Experts * d, "[E, D]"),
                Enumerable.Range(0, config.Experts).Select(e => Read($"{m}{e}.w1.weight", (long)f * d, "[F, D]")).ToArray(),
                Enumerable.Range(0, config.Experts).Select(e => Read($"{m}{e}.w3.weight", (long)f * d, "[F, D]")).ToArray(),
                Enumerable.Range(0, config.Experts).Select(e => Read($"{m}{e}.w2.weight", (long)d * f, "[D, F]")).ToArray());
        }

        Layers = layers;
        Norm = Read("model.norm.weight", d, "[D]");
        LmHead = config.TieEmbeddings ? Embed : Read("lm_head.weight", (long)config.Vocab * d, "[V, D]");
    }

    public RefMixtralConfig Config { get; }

    /// <summary>The router mode every layer runs.</summary>
    public RefRouterSpec Router { get; }

    internal float[] Embed { get; }

    internal Layer[] Layers { get; }

    internal float[] Norm { get; }

    internal float[] LmHead { get; }

    /// <summary>Routing of every layer (ids and weights [T, K] in selection order) from the last Forward.</summary>
    public IReadOnlyList<RefRouting> LastRouting => _last?.LastRouting ?? [];

    /// <summary>Logits [T, V] of tokens processed from an empty cache at positions 0..T-1.</summary>
    public float[] Forward(ReadOnlySpan<int> tokens)
    {
        _last = NewSession();
        return _last.Step(tokens);
    }

    /// <summary>A fresh incremental session with an empty KV cache.</summary>
    public RefMixtralSession NewSession() => new(this);
}

/// <summary>Incremental decoding with a KV cache: each Step appends its tokens at the next positions.</summary>
public sealed class RefMixtralSession
{
    private readonly RefMixtral _model;
    private readonly List<float>[] _k, _v;  // per layer [S, Hkv, Dh]
    private RefRouting[] _routing = [];

    internal RefMixtralSession(RefMixtral model)
    {
        _model = model;
        _k = Enumerable.Range(0, model.Config.Layers).Select(_ => new List<float>()).ToArray();
        _v = Enumerable.Range(0, model.Config.Layers).Select(_ => new List<float>()).ToArray();
    }

    /// <summary>Tokens in the KV cache (the position the next token gets).</summary>
    public int Position { get; private set; }

    /// <summary>Routing of every layer (ids and weights [T, K]) for the tokens of the last Step.</summary>
    public IReadOnlyList<RefRouting> LastRouting => _routing;

    /// <summary>Appends tokens to the cache and returns their logits [T, V].</summary>
    public float[] Step(ReadOnlySpan<int> tokens)
    {
        var c = _model.Config;
        if (tokens.IsEmpty)
            throw new ArgumentException("Mixtral Step: no tokens given.", nameof(tokens));
        int t = tokens.Length, d = c.Hidden, qDim = c.Heads * c.HeadDim, kvDim = c.KvHeads * c.HeadDim;
        var positions = new int[t];
        for (int i = 0; i < t; i++)
            positions[i] = Position + i;

        var x = RefOps.Embedding(_model.Embed, tokens, c.Vocab, d);
        var routing = new RefRouting[c.Layers];
        var spec = _model.Router;
        var noise = spec.Kind == RouterKind.NoisyTopK ? new float[t * c.Experts] : [];
        for (int l = 0; l < c.Layers; l++)
        {
            var w = _model.Layers[l];
            var h = RefOps.RmsNorm(x, w.InputNorm, t, d, c.RmsEps);
            var q = RefOps.Rope(RefOps.MatMulT(h, w.Wq, t, qDim, d), positions, t, c.Heads, c.HeadDim, c.RopeTheta);
            var k = RefOps.Rope(RefOps.MatMulT(h, w.Wk, t, kvDim, d), positions, t, c.KvHeads, c.HeadDim, c.RopeTheta);
            _k[l].AddRange(k);
            _v[l].AddRange(RefOps.MatMulT(h, w.Wv, t, kvDim, d));
            int keys = Position + t;
            var a = RefOps.Attention(q, CollectionsMarshal.AsSpan(_k[l]), CollectionsMarshal.AsSpan(_v[l]), positions,
                t, keys, c.Heads, c.KvHeads, c.HeadDim, c.SlidingWindow);
            x = RefOps.Add(x, RefOps.MatMulT(a, w.Wo, t, d, qDim));

            h = RefOps.RmsNorm(x, w.PostNorm, t, d, c.RmsEps);
            routing[l] = RefMoe.Route(spec, RefOps.MatMulT(h, w.Gate, t, c.Experts, d), t, noise, []);
            x = RefOps.Add(x, RefMoe.MoeBlock(h, routing[l], w.W1, w.W3, w.W2, t, d, c.Intermediate));
        }

        Position += t;
        _routing = routing;
        var n = RefOps.RmsNorm(x, _model.Norm, t, d, c.RmsEps);
        return RefOps.MatMulT(n, _model.LmHead, t, c.Vocab, d);
    }
}
