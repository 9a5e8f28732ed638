// A whole MoE decoder forward pass for every family the project serves, built from the oracle's ops, transcribing
// Hugging Face transformers' modeling code (the newest version: the @strict dataclass configs and the modular files
// modular_qwen3_moe.py, modular_qwen2_moe.py, modular_olmoe.py; older releases differ only where noted).
// Every op rounds its output to float (as an F32 model does); inside an op the sums are double.
// gpt-oss and DeepSeek-V3 (MLA) have their own layer, described in RefModelFamilies.cs; the rest of this header is
// about the four older families.
//
// The decoder layer is the same for all four families:
//   x = embed(tokens)
//   per layer l: h = rmsnorm(x, input_layernorm)
//     q, k, v = q_proj h (+ bias), k_proj h (+ bias), v_proj h (+ bias)
//     q, k = qk-norm(q), qk-norm(k)        (Qwen3-MoE per head, OLMoE whole projection, else none)
//     q, k, v = clamp(q, k, v, +-clip_qkv) (OLMoE only, when clip_qkv is set; after the norm)
//     q, k = rope(q), rope(k)              (rotate-half over the full head_dim; rope_theta)
//     x += o_proj(attention(q, k, v))      (causal, GQA, scale head_dim^-0.5, sliding window per layer)
//     h = rmsnorm(x, post_attention_layernorm)
//     x += moe(h) on MoE layers, else the dense SwiGLU MLP down(silu(gate h) * up h) of intermediate_size
//   logits = lm_head(rmsnorm(x, norm))     (lm_head = embed_tokens when tie_word_embeddings)
//
// The options, where each applies (Hugging Face config key in brackets):
// - RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, computed in F32 [rms_norm_eps; defaults 1e-6 Qwen2/3-MoE, 1e-5 OLMoE].
// - q_norm / k_norm: Qwen3-MoE: RMSNorm weights of head_dim entries, applied to each head's q and k vector
//   separately, before RoPE (q_proj(x).view(..., head_dim) then the norm). OLMoE: RMSNorm over the whole q
//   projection (weight of hidden_size = heads * head_dim entries) and the whole k projection (weight of
//   (hidden_size / heads) * kv_heads entries), before the split into heads and before RoPE. Qwen2-MoE and Mixtral: none.
// - clip_qkv: OLMoE only: q, k, v clamped to [-clip_qkv, clip_qkv] after the projections and after q_norm / k_norm,
//   before RoPE [clip_qkv, default null = none].
// - Attention biases: Qwen2-MoE: q_proj, k_proj, v_proj have biases, o_proj never [qkv_bias, default true; releases
//   before the key existed always had them]. Qwen3-MoE and OLMoE: attention_bias (default false) would put biases on
//   all four projections, o_proj included; no released checkpoint sets it and this oracle does not model it.
// - Shared expert: Qwen2-MoE only: every token also goes through mlp.shared_expert.{gate,up,down}_proj, a SwiGLU MLP
//   of shared_expert_intermediate_size, scaled by sigmoid(mlp.shared_expert_gate(h)) (one scalar per token,
//   shared_expert_gate is [1, D]) and added to the routed output.
// - Router: logits = mlp.gate h (Mixtral: block_sparse_moe.gate); softmax over all E experts in F32; top-k; divided by
//   the sum of the k kept probabilities only when norm_topk_prob [default false in all three configs; Qwen3 checkpoints
//   set it true; Mixtral always renormalises]. Expert: down(silu(gate h) * up h) of moe_intermediate_size (OLMoE:
//   intermediate_size is the expert size and there is no dense MLP). Routed outputs are summed weighted.
// - MoE layers: Qwen2/3-MoE: layer i is MoE iff i is not in mlp_only_layers and num_experts > 0 and
//   (i + 1) % decoder_sparse_step == 0; a dense Qwen2MoeMLP / Qwen3MoeMLP (mlp.{gate,up,down}_proj of
//   intermediate_size) elsewhere. OLMoE and Mixtral: every layer is MoE.
// - Sliding window (key j visible to query i iff j <= i and i - j < W):
//   Qwen3-MoE: config.sliding_window = sliding_window if use_sliding_window else None, and then EVERY layer gets the
//     window (the model builds one sliding mask; Qwen3MoeAttention drops layer_type); max_window_layers and
//     layer_types are ignored.
//   Qwen2-MoE: per layer_types; when config.json has no layer_types, layer i slides iff use_sliding_window and
//     i is even ((i + 1) % 2 != 0) and i < max_window_layers.
//   OLMoE: never (the model builds the plain causal mask).
//   Mixtral: sliding_window on every layer when set.
//   Releases before the layer_types refactor (4.5x) windowed the layers i >= max_window_layers instead; this oracle
//   takes the per-layer window from RefModelConfig, so only the config reader (HfReferenceConfig) follows a version.
// - RoPE: rotate-half pairs (i, i + head_dim / 2), inv_freq = theta^(-2i / head_dim), over the whole head_dim
//   [rope_theta, or rope_parameters.rope_theta in newer configs; default 10000 in all three configs].
// - head_dim: Qwen2/3-MoE read an explicit head_dim (Qwen3-30B-A3B: 128 with hidden 2048 and 32 heads), else
//   hidden / heads; OLMoE sizes q_norm by hidden_size, so only head_dim = hidden / heads fits its weights.
// - Tied embeddings: lm_head.weight absent and embed_tokens reused when tie_word_embeddings [default false].
// Tensor names: model.embed_tokens.weight, model.layers.L.{input_layernorm, post_attention_layernorm}.weight,
// model.layers.L.self_attn.{q,k,v,o}_proj.weight, .{q,k,v}_proj.bias, .{q,k}_norm.weight, model.layers.L.mlp.gate.weight,
// model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight, model.layers.L.mlp.shared_expert.{gate,up,down}_proj.weight,
// model.layers.L.mlp.shared_expert_gate.weight, model.layers.L.mlp.{gate,up,down}_proj.weight (dense layers),
// model.norm.weight, lm_head.weight; Mixtral: model.layers.L.block_sparse_moe.{gate, experts.E.w1/w2/w3}.weight.
using System.Runtime.InteropServices;

namespace ILGpuMoE.Reference;

/// <summary>The checkpoint layout and block choices the oracle follows (Hugging Face model_type in brackets).</summary>
public enum RefFamily
{
    /// <summary>[mixtral] block_sparse_moe.* names, router always renormalised.</summary>
    Mixtral,

    /// <summary>[qwen3_moe] mlp.* names, per-head q/k norm.</summary>
    Qwen3Moe,

    /// <summary>[qwen2_moe] mlp.* names, q/k/v biases, shared expert.</summary>
    Qwen2Moe,

    /// <summary>[olmoe] mlp.* names, whole-projection q/k norm, clip_qkv.</summary>
    Olmoe,

    /// <summary>[gpt_oss] q/k/v/o biases, attention sinks, YaRN, mlp.router with bias and a softmax over the top-k,
    /// stacked experts with biases and the clamped SwiGLU (BF16 or MXFP4).</summary>
    GptOss,

    /// <summary>[deepseek_v3] MLA attention, grouped sigmoid router with correction bias, shared experts, dense first
    /// layers.</summary>
    DeepSeekV3,
}

/// <summary>DeepSeek-V3's multi-head latent attention sizes (Hugging Face keys in brackets).</summary>
/// <param name="QLoraRank">[q_lora_rank] 0 = a direct q_proj (V2-Lite), else q_a_proj / q_a_layernorm / q_b_proj.</param>
/// <param name="KvLoraRank">[kv_lora_rank] the compressed latent per token.</param>
/// <param name="QkNopeHeadDim">[qk_nope_head_dim] per-head q/k dims without RoPE.</param>
/// <param name="QkRopeHeadDim">[qk_rope_head_dim] per-head q dims with RoPE; k's are one vector per token, shared by all heads.</param>
/// <param name="VHeadDim">[v_head_dim] per-head value dims.</param>
public sealed record RefMla(int QLoraRank, int KvLoraRank, int QkNopeHeadDim, int QkRopeHeadDim, int VHeadDim)
{
    public int QkHeadDim => QkNopeHeadDim + QkRopeHeadDim;
}

/// <summary>Where the q / k RMSNorm applies.</summary>
public enum RefQkNorm
{
    None,

    /// <summary>Over each head's Dh values (Qwen3-MoE); q_norm and k_norm hold Dh weights.</summary>
    PerHead,

    /// <summary>Over the whole q (H*Dh) and k (Hkv*Dh) projection of a token (OLMoE).</summary>
    Whole,
}

/// <summary>Hyper-parameters of an MoE decoder (shape glossary: D = Hidden, H = Heads, Hkv = KvHeads, Dh = HeadDim,
/// E = Experts, K = TopK, F = MoeIntermediate, V = Vocab). Per-layer arrays have Layers entries.</summary>
public sealed record RefModelConfig
{
    public RefFamily Family { get; init; }
    public int Hidden { get; init; }
    public int Layers { get; init; }
    public int Heads { get; init; }
    public int KvHeads { get; init; }
    public int HeadDim { get; init; }
    public float RmsEps { get; init; }
    public float RopeTheta { get; init; }
    public int Vocab { get; init; }
    public bool TieEmbeddings { get; init; }
    public int Experts { get; init; }
    public int TopK { get; init; }

    /// <summary>F, the routed experts' hidden size.</summary>
    public int MoeIntermediate { get; init; }

    /// <summary>Divide the k kept router probabilities by their sum.</summary>
    public bool NormTopK { get; init; }

    /// <summary>Hidden size of the dense SwiGLU MLP of non-MoE layers (unused when every layer is MoE).</summary>
    public int DenseIntermediate { get; init; }

    /// <summary>[Layers] true where the layer is MoE, false where it is the dense MLP.</summary>
    public bool[] MoeLayers { get; init; } = [];

    /// <summary>[Layers] attention window W of each layer (key j visible to query i iff i - j &lt; W); 0 = full.</summary>
    public int[] SlidingWindow { get; init; } = [];

    /// <summary>q_proj, k_proj, v_proj carry biases (o_proj never).</summary>
    public bool QkvBias { get; init; }
    public RefQkNorm QkNorm { get; init; }

    /// <summary>Clamp q, k, v to [-ClipQkv, ClipQkv] after the q/k norm; 0 = none.</summary>
    public float ClipQkv { get; init; }

    /// <summary>Hidden size of the shared expert (Qwen2-MoE: with its sigmoid gate; DeepSeek-V3: moe_intermediate_size
    /// x n_shared_experts, ungated); 0 = none.</summary>
    public int SharedExpertIntermediate { get; init; }

    /// <summary>gpt-oss attention_bias: q_proj, k_proj, v_proj AND o_proj carry biases.</summary>
    public bool AttentionBias { get; init; }

    /// <summary>gpt-oss: self_attn.sinks [H], one extra softmax logit per head.</summary>
    public bool AttentionSinks { get; init; }

    /// <summary>YaRN RoPE scaling (gpt-oss, DeepSeek-V3 when rope_scaling is set); null = plain RoPE.</summary>
    public RefYarn? Yarn { get; init; }

    /// <summary>RoPE pairs (2i, 2i + 1) instead of rotate-half (DeepSeek-V3 rope_interleave).</summary>
    public bool RopeInterleave { get; init; }

    /// <summary>gpt-oss swiglu_limit (gate clamped above, up clamped to [-limit, limit]).</summary>
    public float SwigluLimit { get; init; }

    /// <summary>gpt-oss swiglu_alpha: out = (up + 1) * gate * sigmoid(alpha * gate).</summary>
    public float SwigluAlpha { get; init; }

    /// <summary>gpt-oss experts stored as MXFP4 *_blocks / *_scales (quantization_config quant_method mxfp4), else
    /// BF16/F32 gate_up_proj / down_proj.</summary>
    public bool Mxfp4Experts { get; init; }

    /// <summary>DeepSeek-V3 MLA sizes (then HeadDim = QkHeadDim and KvHeads = Heads); null for every other family.</summary>
    public RefMla? Mla { get; init; }

    /// <summary>DeepSeek-V3 n_group / topk_group of the grouped router.</summary>
    public int Groups { get; init; } = 1;
    public int TopKGroups { get; init; } = 1;

    /// <summary>DeepSeek-V3 routed_scaling_factor on the routed weights.</summary>
    public float RoutedScaling { get; init; } = 1;

    /// <summary>Throws ArgumentException naming the first inconsistent field.</summary>
    public void Validate()
    {
        string what = $"{Family} config";
        Require.Positive((Hidden, nameof(Hidden)), (Layers, nameof(Layers)), (Heads, nameof(Heads)), (KvHeads, nameof(KvHeads)),
            (HeadDim, nameof(HeadDim)), (Vocab, nameof(Vocab)));
        Require.MultipleOf(Heads, KvHeads, what, nameof(Heads), nameof(KvHeads));
        if (HeadDim % 2 != 0)
            throw new ArgumentException($"{what}: HeadDim = {HeadDim} must be even for RoPE.", nameof(HeadDim));
        if (!(RmsEps > 0) || !float.IsFinite(RmsEps) || !(RopeTheta > 0) || !float.IsFinite(RopeTheta))
            throw new ArgumentException($"{what}: RmsEps = {RmsEps} and RopeTheta = {RopeTheta} must be positive and finite.", nameof(RmsEps));
        if (MoeLayers is null || MoeLayers.Length != Layers)
            throw new ArgumentException($"{what}: MoeLayers has {MoeLayers?.Length ?? 0} entries, expected Layers = {Layers}.", nameof(MoeLayers));
        if (SlidingWindow is null || SlidingWindow.Length != Layers)
            throw new ArgumentException($"{what}: SlidingWindow has {SlidingWindow?.Length ?? 0} entries, expected Layers = {Layers}.", nameof(SlidingWindow));
        for (int l = 0; l < Layers; l++)
            Require.NonNegative(SlidingWindow[l], $"SlidingWindow[{l}]");
        if (!Enum.IsDefined(Family))
            throw new ArgumentException($"{what}: unknown family.", nameof(Family));
        if (!Enum.IsDefined(QkNorm))
            throw new ArgumentException($"{what}: unknown QkNorm {QkNorm}.", nameof(QkNorm));
        if (!(ClipQkv >= 0) || !float.IsFinite(ClipQkv))
            throw new ArgumentException($"{what}: ClipQkv = {ClipQkv} must be 0 (none) or a positive finite bound.", nameof(ClipQkv));
        Require.NonNegative(SharedExpertIntermediate, nameof(SharedExpertIntermediate));
        if (MoeLayers.Any(m => m))
        {
            Require.Positive((Experts, nameof(Experts)), (MoeIntermediate, nameof(MoeIntermediate)));
            if (TopK < 1 || TopK > Experts)
                throw new ArgumentException($"{what}: TopK = {TopK} must be in [1, Experts = {Experts}].", nameof(TopK));
        }

        if (MoeLayers.Any(m => !m))
            Require.Positive(DenseIntermediate, nameof(DenseIntermediate));
        if (Family == RefFamily.Mixtral && (!NormTopK || MoeLayers.Any(m => !m) || QkvBias || QkNorm != RefQkNorm.None
            || ClipQkv != 0 || SharedExpertIntermediate != 0))
            throw new ArgumentException($"{what}: Mixtral has every layer MoE, a renormalised router (NormTopK) and no biases, q/k norm, clip or shared expert.", nameof(Family));
        bool oss = Family == RefFamily.GptOss, ds = Family == RefFamily.DeepSeekV3;
        if (!oss && (AttentionBias || AttentionSinks || Mxfp4Experts || SwigluLimit != 0 || SwigluAlpha != 0))
            throw new ArgumentException($"{what}: attention bias on o_proj, sinks, MXFP4 experts and the clamped SwiGLU are gpt-oss options.", nameof(Family));
        if (!ds && (Mla is not null || RopeInterleave || Groups != 1 || TopKGroups != 1 || RoutedScaling != 1))
            throw new ArgumentException($"{what}: MLA, interleaved RoPE and the grouped router are DeepSeek-V3 options.", nameof(Family));
        if ((oss || ds) && (QkvBias || QkNorm != RefQkNorm.None || ClipQkv != 0))
            throw new ArgumentException($"{what}: QkvBias, QkNorm and ClipQkv are not options of this family.", nameof(Family));
        if (!oss && !ds && Yarn is not null)
            throw new ArgumentException($"{what}: YaRN is modelled for gpt-oss and DeepSeek-V3 only.", nameof(Yarn));
        Yarn?.Validate();
        if (oss)
        {
            if (MoeLayers.Any(m => !m) || SharedExpertIntermediate != 0)
                throw new ArgumentException($"{what}: gpt-oss has every layer MoE and no shared expert.", nameof(MoeLayers));
            if (!(SwigluLimit > 0) || !(SwigluAlpha > 0) || !float.IsFinite(SwigluLimit) || !float.IsFinite(SwigluAlpha))
                throw new ArgumentException($"{what}: SwigluLimit = {SwigluLimit} and SwigluAlpha = {SwigluAlpha} must be positive and finite.", nameof(SwigluLimit));
            if (Mxfp4Experts && (Hidden % RefMxfp4.BlockSize != 0 || MoeIntermediate % RefMxfp4.BlockSize != 0))
                throw new ArgumentException($"{what}: MXFP4 experts need Hidden = {Hidden} and MoeIntermediate = {MoeIntermediate} divisible by {RefMxfp4.BlockSize}.", nameof(Mxfp4Experts));
        }

        if (ds)
        {
            var m = Mla ?? throw new ArgumentException($"{what}: DeepSeek-V3 needs its MLA sizes.", nameof(Mla));
            Require.NonNegative(m.QLoraRank, "Mla.QLoraRank");
            Require.NonNegative(m.QkNopeHeadDim, "Mla.QkNopeHeadDim");
            Require.Positive((m.KvLoraRank, "Mla.KvLoraRank"), (m.QkRopeHeadDim, "Mla.QkRopeHeadDim"), (m.VHeadDim, "Mla.VHeadDim"));
            if (m.QkRopeHeadDim % 2 != 0 || HeadDim != m.QkHeadDim || KvHeads != Heads)
                throw new ArgumentException($"{what}: MLA needs an even QkRopeHeadDim ({m.QkRopeHeadDim}), HeadDim = QkNope + QkRope ({HeadDim} vs {m.QkHeadDim}) and KvHeads = Heads.", nameof(Mla));
            if (Groups < 1 || Experts % Groups != 0 || TopKGroups < 1 || TopKGroups > Groups)
                throw new ArgumentException($"{what}: Groups = {Groups} must divide Experts = {Experts} and TopKGroups = {TopKGroups} be in [1, Groups].", nameof(Groups));
            if (!(RoutedScaling > 0) || !float.IsFinite(RoutedScaling))
                throw new ArgumentException($"{what}: RoutedScaling = {RoutedScaling} must be positive and finite.", nameof(RoutedScaling));
        }
    }
}

/// <summary>The oracle's model for every family. Weights are read once, by Hugging Face tensor name, at construction.</summary>
public sealed partial class RefModel
{
    // Extra is null for the four older families (see RefModelFamilies.cs for what gpt-oss and DeepSeek-V3 keep where).
    internal sealed record Layer(float[] InputNorm, float[] Wq, float[] Wk, float[] Wv, float[] Wo,
        float[]? Bq, float[]? Bk, float[]? Bv, float[]? QNorm, float[]? KNorm, float[] PostNorm,
        float[]? Gate, float[][] Gates, float[][] Ups, float[][] Downs,
        float[]? SharedGate, float[][] SharedGateUpDown, LayerExtra? Extra = null);

    private RefModelSession? _last;

    /// <param name="config">The model's shape, family and options (config.json's fields).</param>
    /// <param name="weights">Returns the F32 values of a tensor by its Hugging Face name (see the file header);
    /// lengths are checked against the config, a null return is a missing tensor.</param>
    /// <param name="raw">Returns a tensor's stored bytes (null when missing); needed only for gpt-oss MXFP4 experts
    /// (the uint8 *_blocks / *_scales tensors).</param>
    public RefModel(RefModelConfig config, Func<string, float[]> weights, Func<string, byte[]?>? raw = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        config.Validate();
        Config = config;
        var c = config;
        long d = c.Hidden, q = c.Heads * c.HeadDim, kv = c.KvHeads * c.HeadDim;

        float[] Read(string name, long length, string shape)
        {
            var a = weights(name) ?? throw new ArgumentException($"{c.Family} weights: tensor {name} is missing.", nameof(weights));
            if (a.Length != length)
                throw new ArgumentException($"{c.Family} weights: tensor {name} has {a.Length} elements, expected {length} for {shape}.", nameof(weights));
            return a;
        }

        float[][] Mlp(string prefix, string gate, string up, string down, long f) =>
            [Read(prefix + gate, f * d, "[F, D]"), Read(prefix + up, f * d, "[F, D]"), Read(prefix + down, d * f, "[D, F]")];

        Embed = Read("model.embed_tokens.weight", c.Vocab * d, "[V, D]");
        bool mixtral = c.Family == RefFamily.Mixtral;
        var layers = new Layer[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            if (c.Family is RefFamily.GptOss or RefFamily.DeepSeekV3)
            {
                layers[l] = c.Family == RefFamily.GptOss ? ReadGptOssLayer(c, l, Read, raw) : ReadDeepSeekLayer(c, l, Read);
                continue;
            }

            string p = $"model.layers.{l}.", a = p + "self_attn.";
            float[]? Bias(string n, long len) => c.QkvBias ? Read(a + n + ".bias", len, "[Out]") : null;
            long qn = c.QkNorm == RefQkNorm.PerHead ? c.HeadDim : q, kn = c.QkNorm == RefQkNorm.PerHead ? c.HeadDim : kv;
            float[]? gate = null, sharedGate = null;
            float[][] gates = [], ups = [], downs = [], shared = [];
            if (c.MoeLayers[l])
            {
                string m = p + (mixtral ? "block_sparse_moe." : "mlp.");
                gate = Read(m + "gate.weight", c.Experts * d, "[E, D]");
                var experts = Enumerable.Range(0, c.Experts)
                    .Select(e => mixtral
                        ? Mlp($"{m}experts.{e}.", "w1.weight", "w3.weight", "w2.weight", c.MoeIntermediate)
                        : Mlp($"{m}experts.{e}.", "gate_proj.weight", "up_proj.weight", "down_proj.weight", c.MoeIntermediate))
                    .ToArray();
                gates = experts.Select(x => x[0]).ToArray();
                ups = experts.Select(x => x[1]).ToArray();
                downs = experts.Select(x => x[2]).ToArray();
                if (c.SharedExpertIntermediate > 0)
                {
                    shared = Mlp(m + "shared_expert.", "gate_proj.weight", "up_proj.weight", "down_proj.weight", c.SharedExpertIntermediate);
                    sharedGate = Read(m + "shared_expert_gate.weight", d, "[1, D]");
                }
            }
            else
            {
                var dense = Mlp(p + "mlp.", "gate_proj.weight", "up_proj.weight", "down_proj.weight", c.DenseIntermediate);
                (gates, ups, downs) = ([dense[0]], [dense[1]], [dense[2]]);
            }

            layers[l] = new Layer(
                Read(p + "input_layernorm.weight", d, "[D]"),
                Read(a + "q_proj.weight", q * d, "[H*Dh, D]"),
                Read(a + "k_proj.weight", kv * d, "[Hkv*Dh, D]"),
                Read(a + "v_proj.weight", kv * d, "[Hkv*Dh, D]"),
                Read(a + "o_proj.weight", d * q, "[D, H*Dh]"),
                Bias("q_proj", q), Bias("k_proj", kv), Bias("v_proj", kv),
                c.QkNorm == RefQkNorm.None ? null : Read(a + "q_norm.weight", qn, "[q norm]"),
                c.QkNorm == RefQkNorm.None ? null : Read(a + "k_norm.weight", kn, "[k norm]"),
                Read(p + "post_attention_layernorm.weight", d, "[D]"),
                gate, gates, ups, downs, sharedGate, shared);
        }

        Layers = layers;
        Norm = Read("model.norm.weight", d, "[D]");
        LmHead = c.TieEmbeddings ? Embed : Read("lm_head.weight", c.Vocab * d, "[V, D]");
    }

    public RefModelConfig Config { get; }

    internal float[] Embed { get; }

    internal Layer[] Layers { get; }

    internal float[] Norm { get; }

    internal float[] LmHead { get; }

    /// <summary>Routing of every layer (ids and weights [T, K] in selection order; null for a dense layer) from the
    /// last Forward.</summary>
    public IReadOnlyList<RefRouting?> LastRouting => _last?.LastRouting ?? [];

    /// <summary>Logits [T, V] of tokens processed from an empty cache at positions 0..T-1.</summary>
    public float[] Forward(ReadOnlySpan<int> tokens)
    {
        _last = NewSession();
        return _last.Step(tokens);
    }

    /// <summary>A fresh incremental session with an empty KV cache.</summary>
    public RefModelSession NewSession() => new(this);

    /// <summary>The dense SwiGLU MLP down(silu(gate x) * up x) of x [T, D] as a one-expert MoE block with weight 1
    /// (so it shares the expert's arithmetic exactly); gate, up [F, D], down [D, F].</summary>
    public static float[] DenseMlp(ReadOnlySpan<float> x, float[] gate, float[] up, float[] down, int tokens, int dim, int hidden)
    {
        var routing = new RefRouting(new int[tokens], Enumerable.Repeat(1f, tokens).ToArray(), tokens, 1, 0);
        return RefMoe.MoeBlock(x, routing, [gate], [up], [down], tokens, dim, hidden);
    }
}

/// <summary>Incremental decoding with a KV cache: each Step appends its tokens at the next positions.</summary>
public sealed partial class RefModelSession
{
    private readonly RefModel _model;
    private readonly List<float>[] _k, _v;  // per layer [S, Hkv, Dh]
    private RefRouting?[] _routing = [];

    internal RefModelSession(RefModel model)
    {
        _model = model;
        _k = Enumerable.Range(0, model.Config.Layers).Select(_ => new List<float>()).ToArray();
        _v = Enumerable.Range(0, model.Config.Layers).Select(_ => new List<float>()).ToArray();
    }

    /// <summary>Tokens in the KV cache (the position the next token gets).</summary>
    public int Position { get; private set; }

    /// <summary>Routing of every layer (ids and weights [T, K]; null for a dense layer) for the tokens of the last Step.</summary>
    public IReadOnlyList<RefRouting?> LastRouting => _routing;

    /// <summary>Appends tokens to the cache and returns their logits [T, V].</summary>
    public float[] Step(ReadOnlySpan<int> tokens)
    {
        var c = _model.Config;
        if (tokens.IsEmpty)
            throw new ArgumentException($"{c.Family} Step: no tokens given.", nameof(tokens));
        int t = tokens.Length, d = c.Hidden, qDim = c.Heads * c.HeadDim, kvDim = c.KvHeads * c.HeadDim;
        var positions = new int[t];
        for (int i = 0; i < t; i++)
            positions[i] = Position + i;

        var x = RefOps.Embedding(_model.Embed, tokens, c.Vocab, d);
        var routing = new RefRouting?[c.Layers];
        var spec = new RefRouterSpec(c.NormTopK ? RouterKind.Mixtral : RouterKind.SoftmaxTopK, c.Experts, c.TopK);
        for (int l = 0; l < c.Layers; l++)
        {
            var w = _model.Layers[l];
            if (c.Family is RefFamily.GptOss or RefFamily.DeepSeekV3)
            {
                x = c.Family == RefFamily.GptOss ? GptOssLayer(l, x, positions, routing) : DeepSeekLayer(l, x, positions, routing);
                continue;
            }

            var h = RefOps.RmsNorm(x, w.InputNorm, t, d, c.RmsEps);
            var q = Project(h, w.Wq, w.Bq, t, qDim, d);
            var k = Project(h, w.Wk, w.Bk, t, kvDim, d);
            var v = Project(h, w.Wv, w.Bv, t, kvDim, d);
            switch (c.QkNorm)
            {
                case RefQkNorm.None:
                    break;
                case RefQkNorm.PerHead:
                    q = RefOps.RmsNorm(q, w.QNorm!, t * c.Heads, c.HeadDim, c.RmsEps);
                    k = RefOps.RmsNorm(k, w.KNorm!, t * c.KvHeads, c.HeadDim, c.RmsEps);
                    break;
                case RefQkNorm.Whole:
                    q = RefOps.RmsNorm(q, w.QNorm!, t, qDim, c.RmsEps);
                    k = RefOps.RmsNorm(k, w.KNorm!, t, kvDim, c.RmsEps);
                    break;
                default:
                    throw new InvalidOperationException($"{c.Family} Step: unknown QkNorm {c.QkNorm}.");
            }

            if (c.ClipQkv > 0)
            {
                Clamp(q, c.ClipQkv);
                Clamp(k, c.ClipQkv);
                Clamp(v, c.ClipQkv);
            }

            q = RefOps.Rope(q, positions, t, c.Heads, c.HeadDim, c.RopeTheta);
            k = RefOps.Rope(k, positions, t, c.KvHeads, c.HeadDim, c.RopeTheta);
            _k[l].AddRange(k);
            _v[l].AddRange(v);
            int keys = Position + t;
            var a = RefOps.Attention(q, CollectionsMarshal.AsSpan(_k[l]), CollectionsMarshal.AsSpan(_v[l]), positions,
                t, keys, c.Heads, c.KvHeads, c.HeadDim, c.SlidingWindow[l]);
            x = RefOps.Add(x, RefOps.MatMulT(a, w.Wo, t, d, qDim));

            h = RefOps.RmsNorm(x, w.PostNorm, t, d, c.RmsEps);
            float[] y;
            if (c.MoeLayers[l])
            {
                var r = RefMoe.Route(spec, RefOps.MatMulT(h, w.Gate!, t, c.Experts, d), t);
                routing[l] = r;
                y = RefMoe.MoeBlock(h, r, w.Gates, w.Ups, w.Downs, t, d, c.MoeIntermediate);
                if (w.SharedGate is { } sg)
                {
                    var s = w.SharedGateUpDown;
                    var shared = RefModel.DenseMlp(h, s[0], s[1], s[2], t, d, c.SharedExpertIntermediate);
                    var g = RefOps.MatMulT(h, sg, t, 1, d);
                    for (int i = 0; i < t; i++)
                    {
                        float sig = (float)(1.0 / (1.0 + Math.Exp(-(double)g[i])));
                        for (int j = 0; j < d; j++)
                            y[i * d + j] += sig * shared[i * d + j];
                    }
                }
            }
            else
            {
                y = RefModel.DenseMlp(h, w.Gates[0], w.Ups[0], w.Downs[0], t, d, c.DenseIntermediate);
            }

            x = RefOps.Add(x, y);
        }

        Position += t;
        _routing = routing;
        var n = RefOps.RmsNorm(x, _model.Norm, t, d, c.RmsEps);
        return RefOps.MatMulT(n, _model.LmHead, t, c.Vocab, d);
    }

    // x W^T (+ b), the bias added to the double sum before the one rounding (a fused Linear).
    private static float[] Project(float[] x, float[] w, float[]? bias, int tokens, int outDim, int inDim)
    {
        if (bias is null)
            return RefOps.MatMulT(x, w, tokens, outDim, inDim);
        var y = new float[tokens * outDim];
        for (int t = 0; t < tokens; t++)
        {
            var xr = x.AsSpan(t * inDim, inDim);
            for (int o = 0; o < outDim; o++)
                y[t * outDim + o] = (float)(RefOps.Dot(xr, w.AsSpan(o * inDim, inDim)) + bias[o]);
        }

        return y;
    }

    private static void Clamp(float[] a, float bound)
    {
        for (int i = 0; i < a.Length; i++)
            a[i] = Math.Clamp(a[i], -bound, bound);
    }
}
