// gpt-oss (model_type "gpt_oss", GptOssForCausalLM; openai/gpt-oss-20b and -120b), as Hugging Face's
// modeling_gpt_oss.py computes it:
// - q/k/v/o biases (attention_bias, true in the released checkpoints), explicit head_dim (64);
// - self_attn.sinks [H]: one learned logit per head joins every softmax row (after the mask) and is dropped after it;
// - layer_types alternate sliding_attention (window sliding_window, 128) and full_attention, starting with sliding;
// - YaRN RoPE (rope_scaling; GptOssConfig's own block when config.json has none), rotate-half pairs;
// - router mlp.router [E, D] with a bias; the top-k logits, softmax over those k only (= Mixtral's renormalised softmax:
//   the full softmax's denominator cancels);
// - experts stored stacked (ExpertStorage.StackedGateUp) in BF16 or MXFP4, with biases; gate and up interleaved;
//   h = (clamp(up, -limit, limit) + 1) * min(gate, limit) * sigmoid(1.702 min(gate, limit)), limit = swiglu_limit (7);
// - every layer is MoE; intermediate_size is the experts' width F; no shared expert, no q/k norm.
namespace ILGpuMoE.Model;

public sealed class GptOssFamily : ModelFamily
{
    public override string ModelType => "gpt_oss";

    public override string Architecture => "GptOssForCausalLM";

    internal override bool RunsYarn => true;

    public override TensorNames Names => GptOssNames.Instance;

    public override ExpertStorage ExpertStorage => ExpertStorage.StackedGateUp;

    internal override Kernels.Dense.YarnScaling? DefaultRopeScaling => RopeScaling.GptOssDefault;

    /// <summary>
    /// The harmony format, as gpt-oss's chat template renders the messages with the generation prompt: the system
    /// message it writes (identity, knowledge cutoff, today's date in UTC, reasoning effort medium, the channels); the
    /// system turns' text, joined by "\n\n", as one developer message "# Instructions\n\ntext" (the template's place for
    /// them); then "&lt;|start|&gt;user&lt;|message|&gt;text&lt;|end|&gt;" and
    /// "&lt;|start|&gt;assistant&lt;|channel|&gt;final&lt;|message|&gt;text&lt;|end|&gt;" per turn; then "&lt;|start|&gt;assistant". No BOS.
    /// </summary>
    public override (string Text, bool AddBos) ChatPrompt(IReadOnlyList<ChatMessage> messages)
    {
        ChatMessage.Check(messages);
        var text = new System.Text.StringBuilder(
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n" +
            $"Current date: {DateTime.UtcNow:yyyy-MM-dd}\n\nReasoning: medium\n\n" +
            "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>");
        var system = messages.Where(m => m.Role == ChatRole.System).Select(m => m.Content).ToArray();
        if (system.Length > 0)
            text.Append("<|start|>developer<|message|># Instructions\n\n").Append(string.Join("\n\n", system)).Append("<|end|>");
        foreach (var m in messages)
        {
            text.Append(m.Role switch
            {
                ChatRole.System => "",
                ChatRole.User => $"<|start|>user<|message|>{m.Content}<|end|>",
                ChatRole.Assistant => $"<|start|>assistant<|channel|>final<|message|>{m.Content}<|end|>",
                _ => throw new ArgumentException($"chat role {m.Role}"),
            });
        }

        return (text.Append("<|start|>assistant").ToString(), false);
    }

    internal override FamilyConfig Read(ConfigReader c, int layers)
    {
        // GptOssConfig's defaults are the 120b's (128 experts, top-4, width 2880).
        var experts = c.OptionalInt("num_local_experts") ?? 128;
        if (experts < 1)
            throw c.Error("num_local_experts", $"must be positive, got {experts}");
        string topKKey = c.Has("num_experts_per_tok") || !c.Has("experts_per_token") ? "num_experts_per_tok" : "experts_per_token";
        var topK = c.OptionalInt(topKKey) ?? 4;
        if (topK < 1 || topK > experts)
            throw c.Error(topKKey, $"({topK}) must be between 1 and 'num_local_experts' ({experts})");
        var limit = c.OptionalDouble("swiglu_limit") ?? 7.0;
        if (!(limit > 0) || !double.IsFinite(limit))
            throw c.Error("swiglu_limit", $"must be positive, got {limit}");
        bool bias = c.OptionalBool("attention_bias") ?? true;
        return new FamilyConfig(RouterConfig.Mixtral(experts, topK), c.Has("intermediate_size") ? c.PositiveInt("intermediate_size") : 2880, new BlockOptions
        {
            QkvBias = bias,
            OutputBias = bias,
            LayerWindows = LayerWindows(c, layers),
            AttentionSinks = true,
            RouterBias = true,
            ExpertBias = true,
            SwigluLimit = limit,
        });
    }

    // layer_types (GptOssConfig's default: sliding on even layers, full on odd ones); the sliding layers attend through
    // sliding_window tokens (default 128; an explicit null gives them full attention, as GptOssAttention's window None).
    private static int[] LayerWindows(ConfigReader c, int layers)
    {
        int width = c.IsNull("sliding_window") ? 0 : c.Has("sliding_window") ? c.PositiveInt("sliding_window") : 128;
        if (!c.Has("layer_types"))
            return Enumerable.Range(0, layers).Select(i => i % 2 == 0 ? width : 0).ToArray();
        var types = c.OptionalStringList("layer_types");
        if (types.Count != layers)
            throw c.Error("layer_types", $"has {types.Count} entries for {layers} layers");
        return types.Select((t, i) => t switch
        {
            "sliding_attention" => width,
            "full_attention" => 0,
            _ => throw c.Error("layer_types", $"entry {i} is '{t}' (known: sliding_attention, full_attention)"),
        }).ToArray();
    }

    private sealed class GptOssNames : TensorNames
    {
        public static readonly GptOssNames Instance = new();

        public override string Router(int layer) => $"{Layer(layer)}.mlp.router.weight";

        public override string Expert(int layer, int expert, MlpProjection p) =>
            $"{StackedExperts(layer, p)} (expert {expert}{(p == MlpProjection.Down ? "" : p == MlpProjection.Gate ? ", gate half" : ", up half")})";

        public override string Experts(int layer, MlpProjection p) => StackedExperts(layer, p);
    }
}
