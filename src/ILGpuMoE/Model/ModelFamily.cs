// The family seam. A model family is one Hugging Face model_type: how its config.json maps onto ModelConfig, what its
// tensors are called, and the choices its decoder layer makes (norms, biases, router, shared expert, which layers are
// MoE). Each family is one file under Model/Families/ (llama.cpp's habit: one file per architecture on shared
// building blocks); attention, the MoE block, the norms and the kernels stay one implementation for all of them.
//
// Adding a family: write Families/<Name>.cs (a ModelFamily: ModelType, Architecture, Read, and Names when its tensors
// are not named like Llama's), add it to ModelFamilies.All, give its options to the oracle
// (src/ILGpuMoE.Reference/RefModel.cs) and add its tests. README.md, "Adding a model family", says the same for users.
namespace ILGpuMoE.Model;

/// <summary>Where q and k are RMS-normalised (before RoPE), if at all.</summary>
public enum QkNormKind
{
    /// <summary>No q/k norm (Mixtral, Qwen2-MoE).</summary>
    None,

    /// <summary>Qwen3-MoE: an RMSNorm over head_dim, applied to each head's vector; weights [Dh] shared by all heads.</summary>
    PerHead,

    /// <summary>OLMoE: an RMSNorm over the whole q ([H*Dh]) and k ([Hkv*Dh]) projection, before the split into heads.</summary>
    Whole,
}

/// <summary>The three projections of a SwiGLU MLP: down(silu(gate(x)) * up(x)). Mixtral calls them w1, w3 and w2.</summary>
public enum MlpProjection
{
    Gate,
    Up,
    Down,
}

/// <summary>How a family's checkpoints store the routed experts.</summary>
public enum ExpertStorage
{
    /// <summary>One tensor per expert and projection, [out, in] (Mixtral, Qwen, OLMoE, DeepSeek).</summary>
    PerExpert,

    /// <summary>
    /// gpt-oss: one tensor per layer for all experts, mlp.experts.gate_up_proj [E, D, 2F] with gate and up interleaved on
    /// the last axis (gate = even, up = odd) and down_proj [E, F, D], input-major as transformers' parameters; or, MXFP4,
    /// gate_up_proj_blocks / _scales [E, 2F, D/32, 16] / [E, 2F, D/32] and down_proj_blocks / _scales, output-major.
    /// </summary>
    StackedGateUp,
}

/// <summary>Which part of a stacked gpt-oss expert tensor an expert slot takes (ExpertStorage.StackedGateUp).</summary>
public enum StackedPart
{
    /// <summary>gate_up_proj's gate half: columns (BF16) or rows (MXFP4) 0, 2, 4, ...</summary>
    Gate,

    /// <summary>gate_up_proj's up half: columns or rows 1, 3, 5, ...</summary>
    Up,

    /// <summary>down_proj.</summary>
    Down,
}

/// <summary>
/// DeepSeek's Multi-head Latent Attention: q through a low-rank pair (q_a_proj, q_a_layernorm, q_b_proj) or a direct
/// q_proj (<see cref="QLoraRank"/> 0), keys and values through one shared latent of KvLoraRank values plus one
/// QkRopeHeadDim rope part per token (kv_a_proj_with_mqa, kv_a_layernorm), expanded per head by kv_b_proj into
/// QkNopeHeadDim key and VHeadDim value dims. RoPE turns the rope parts only, in interleaved pairs when RopeInterleave.
/// </summary>
public sealed record MlaOptions(int QLoraRank, int KvLoraRank, int QkNopeHeadDim, int QkRopeHeadDim, int VHeadDim, bool RopeInterleave)
{
    /// <summary>A query's / key's dims per head: nope then rope.</summary>
    public int QkHeadDim => QkNopeHeadDim + QkRopeHeadDim;

    /// <summary>Floats per token per layer in the compressed cache: the latent and the rope part (576 for V3).</summary>
    public int CacheWidth => KvLoraRank + QkRopeHeadDim;
}

/// <summary>The choices a family's decoder layer makes beyond the shared sizes (defaults: Mixtral's).</summary>
public sealed record BlockOptions
{
    /// <summary>q_proj, k_proj and v_proj carry a bias [out] (Qwen2-MoE; Qwen3-MoE and OLMoE with attention_bias).</summary>
    public bool QkvBias { get; init; }

    /// <summary>o_proj carries a bias [D] (attention_bias in Qwen3-MoE and OLMoE).</summary>
    public bool OutputBias { get; init; }

    public QkNormKind QkNorm { get; init; }

    /// <summary>OLMoE's clip_qkv: q, k and v are clamped to [-c, c] after their projection; null for none.</summary>
    public double? ClipQkv { get; init; }

    /// <summary>Qwen2-MoE's shared expert: a SwiGLU MLP of this width that every token visits, scaled by
    /// sigmoid(shared_expert_gate(x)) and added to the routed output; DeepSeek's shared experts (n_shared_experts of
    /// moe_intermediate_size, as one MLP) added unweighted (<see cref="SharedExpertUngated"/>); 0 for none.</summary>
    public int SharedExpertSize { get; init; }

    /// <summary>DeepSeek: the shared experts have no gate (weight 1); Qwen2-MoE's has shared_expert_gate.</summary>
    public bool SharedExpertUngated { get; init; }

    /// <summary>DeepSeek-V3: mlp.gate.e_score_correction_bias [E], added to the scores for selection only.</summary>
    public bool ScoreCorrectionBias { get; init; }

    /// <summary>DeepSeek's MLA in place of q/k/v projections; null for grouped-query attention.</summary>
    public MlaOptions? Mla { get; init; }

    /// <summary>Width of the dense SwiGLU MLP on layers that are not MoE (intermediate_size in Qwen); 0 when every
    /// layer is MoE.</summary>
    public int DenseIntermediateSize { get; init; }

    /// <summary>[L]: whether layer l has the MoE block (else the dense MLP); empty means every layer.</summary>
    public IReadOnlyList<bool> MoeLayers { get; init; } = [];

    /// <summary>[L]: the attention window of layer l in tokens, 0 for full causal attention; empty means no window anywhere.</summary>
    public IReadOnlyList<int> LayerWindows { get; init; } = [];

    /// <summary>gpt-oss: self_attn.sinks [H], one learned logit per head in every softmax denominator (no value).</summary>
    public bool AttentionSinks { get; init; }

    /// <summary>gpt-oss: the router carries a bias [E] (mlp.router.bias).</summary>
    public bool RouterBias { get; init; }

    /// <summary>gpt-oss: the experts' projections carry biases (gate_up_proj_bias [E, 2F], down_proj_bias [E, D]).</summary>
    public bool ExpertBias { get; init; }

    /// <summary>
    /// gpt-oss's clamped GLU: gate = min(gate, limit), up = clamp(up, -limit, limit), h = (up + 1) * gate *
    /// sigmoid(alpha * gate) (swiglu_limit, alpha 1.702); null for the plain SwiGLU silu(gate) * up.
    /// </summary>
    public double? SwigluLimit { get; init; }

    /// <summary>alpha of the clamped GLU (<see cref="SwigluLimit"/>).</summary>
    public double SwigluAlpha { get; init; } = 1.702;
}

/// <summary>What a family's config reader gives back: the router, the experts' width F, the block's choices, and (MLA)
/// the query/key and value head dims when they are not config.json's head_dim.</summary>
public sealed record FamilyConfig(RouterConfig Router, int ExpertHidden, BlockOptions Block)
{
    public int? HeadDim { get; init; }

    public int? ValueHeadDim { get; init; }
}

/// <summary>One architecture (a Hugging Face model_type).</summary>
public abstract class ModelFamily
{
    /// <summary>config.json's model_type.</summary>
    public abstract string ModelType { get; }

    /// <summary>The architectures[] entry of its causal-LM class.</summary>
    public abstract string Architecture { get; }

    /// <summary>Its tensors' names (Llama's, unless the family overrides some).</summary>
    public virtual TensorNames Names => TensorNames.Llama;

    /// <summary>How its checkpoints store the routed experts.</summary>
    public virtual ExpertStorage ExpertStorage => ExpertStorage.PerExpert;

    /// <summary>The scaled RoPE its config class fills in when config.json has no rope_scaling (gpt-oss's YaRN); null: plain.</summary>
    internal virtual Kernels.Dense.YarnScaling? DefaultRopeScaling => null;

    /// <summary>Whether the runtime runs this family with YaRN (gpt-oss, DeepSeek-V3: what the oracle and the fixtures
    /// check); the others refuse a rope_scaling block.</summary>
    internal virtual bool RunsYarn => false;

    /// <summary>Reads the router, the experts' width and the block's choices from config.json.</summary>
    internal abstract FamilyConfig Read(ConfigReader c, int layers);

    /// <summary>
    /// generate --chat: one user turn in the family's instruct format, ready for the assistant's reply, and whether the
    /// tokenizer adds BOS in front (the chat templates of the instruct checkpoints, rendered for one message).
    /// </summary>
    public (string Text, bool AddBos) ChatPrompt(string prompt) => ChatPrompt([new ChatMessage(ChatRole.User, prompt)]);

    /// <summary>
    /// A conversation (system, user and assistant turns, in order) in the family's instruct format, ending with the
    /// generation prompt (ready for the assistant's reply), and whether the tokenizer adds BOS in front. The family's
    /// known format (ChatMessage.cs says why not tokenizer_config.json's Jinja template). Throws ArgumentException for
    /// an empty conversation.
    /// </summary>
    public abstract (string Text, bool AddBos) ChatPrompt(IReadOnlyList<ChatMessage> messages);

    public override string ToString() => ModelType;

    // Shared building blocks of the readers.

    /// <summary>top-k of E experts from the given keys, checked.</summary>
    internal static (int Experts, int TopK) ReadExperts(ConfigReader c, string expertsKey, string topKKey)
    {
        var experts = c.PositiveInt(expertsKey);
        var topK = c.RequiredInt(topKKey);
        if (topK < 1 || topK > experts)
            throw c.Error(topKKey, $"({topK}) must be between 1 and '{expertsKey}' ({experts})");
        return (experts, topK);
    }

    /// <summary>Softmax over E, top-k, renormalised when norm_topk_prob (Hugging Face's default for the key: false).</summary>
    internal static RouterConfig SoftmaxRouter(ConfigReader c, int experts, int topK) =>
        c.OptionalBool("norm_topk_prob") ?? false ? RouterConfig.Mixtral(experts, topK) : new RouterConfig(RouterKind.SoftmaxTopK, experts, topK);

    /// <summary>Qwen's layer plan: MoE on layer i iff i is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.</summary>
    internal static bool[] QwenMoeLayers(ConfigReader c, int layers)
    {
        var step = c.OptionalInt("decoder_sparse_step") ?? 1;
        if (step < 1)
            throw c.Error("decoder_sparse_step", $"must be >= 1, got {step}");
        var mlpOnly = c.OptionalIntList("mlp_only_layers");
        foreach (var i in mlpOnly)
        {
            if (i < 0 || i >= layers)
                throw c.Error("mlp_only_layers", $"names layer {i}, outside [0, {layers})");
        }

        var moe = new bool[layers];
        for (int i = 0; i < layers; i++)
            moe[i] = !mlpOnly.Contains(i) && (i + 1) % step == 0;
        return moe;
    }

    /// <summary>
    /// Which layers attend through a window of sliding_window tokens. With layer_types (newer writers), the layers marked
    /// "sliding_attention"; else, when use_sliding_window is true, the layers <paramref name="byDefault"/> picks (the
    /// family's default layer_types).
    /// </summary>
    internal static int[] Windows(ConfigReader c, int layers, Func<int, bool> byDefault)
    {
        var windows = new int[layers];
        var types = c.OptionalStringList("layer_types");
        bool use = c.OptionalBool("use_sliding_window") ?? false;
        if (types.Count != 0 && types.Count != layers)
            throw c.Error("layer_types", $"has {types.Count} entries for {layers} layers");
        var sliding = new bool[layers];
        for (int i = 0; i < layers; i++)
        {
            sliding[i] = types.Count == 0
                ? use && byDefault(i)
                : types[i] switch
                {
                    "sliding_attention" => true,
                    "full_attention" => false,
                    _ => throw c.Error("layer_types", $"entry {i} is '{types[i]}' (known: sliding_attention, full_attention)"),
                };
        }

        if (!sliding.Any(x => x))
            return windows;
        var width = c.OptionalInt("sliding_window") ?? throw c.Error("sliding_window", "is missing but some layers use a sliding window");
        if (width < 1)
            throw c.Error("sliding_window", $"must be positive, got {width}");
        for (int i = 0; i < layers; i++)
            windows[i] = sliding[i] ? width : 0;
        return windows;
    }

    /// <summary>The dense MLP width when some layer is dense; 0 otherwise.</summary>
    internal static int DenseWidth(ConfigReader c, bool[] moeLayers) =>
        moeLayers.All(m => m) ? 0 : c.PositiveInt("intermediate_size");
}

/// <summary>The families the runtime can run.</summary>
public static class ModelFamilies
{
    public static readonly IReadOnlyList<ModelFamily> All = [new MixtralFamily(), new Qwen3MoeFamily(), new Qwen2MoeFamily(), new OlmoeFamily(), new GptOssFamily(), new DeepseekV3Family()];

    /// <summary>"mixtral, qwen3_moe, ..." for messages.</summary>
    public static string SupportedList => string.Join(", ", All.Select(f => f.ModelType));

    public static ModelFamily? ByModelType(string modelType) => All.FirstOrDefault(f => f.ModelType == modelType);

    public static ModelFamily? ByArchitecture(string architecture) => All.FirstOrDefault(f => f.Architecture == architecture);

    public static ModelFamily Mixtral => All[0];
}
