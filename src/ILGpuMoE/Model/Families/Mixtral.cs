// Mixtral (model_type "mixtral", MixtralForCausalLM): every layer MoE; router softmax over all E experts, top-k,
// renormalised; experts w1 (gate), w3 (up), w2 (down) of width intermediate_size; no biases, no q/k norm; one
// sliding_window (or none) for every layer.
namespace ILGpuMoE.Model;

public sealed class MixtralFamily : ModelFamily
{
    public override string ModelType => "mixtral";

    public override string Architecture => "MixtralForCausalLM";

    public override TensorNames Names => MixtralNames.Instance;

    /// <summary>
    /// Mistral-Instruct (the template of Mixtral-8x7B-Instruct and of models/mixtral-demo): BOS, then per user turn
    /// "[INST] text [/INST]", per assistant turn "text&lt;/s&gt;". The template has no system turn: system text is joined
    /// to the next user turn (ChatMessage.FoldSystemIntoUser). One user turn: BOS + "[INST] prompt [/INST]".
    /// </summary>
    public override (string Text, bool AddBos) ChatPrompt(IReadOnlyList<ChatMessage> messages)
    {
        ChatMessage.Check(messages);
        var text = new System.Text.StringBuilder();
        foreach (var m in ChatMessage.FoldSystemIntoUser(messages))
        {
            text.Append(m.Role switch
            {
                ChatRole.User => Tokenizer.MistralChat.WrapText(m.Content),
                ChatRole.Assistant => m.Content + "</s>",
                _ => throw new ArgumentException($"chat role {m.Role} after folding the system turns"),
            });
        }

        return (text.ToString(), true);
    }

    internal override FamilyConfig Read(ConfigReader c, int layers)
    {
        var (experts, topK) = ReadExperts(c, "num_local_experts", "num_experts_per_tok");
        var window = c.OptionalInt("sliding_window");
        if (window is <= 0)
            throw c.Error("sliding_window", $"must be null or positive, got {window}");
        return new FamilyConfig(RouterConfig.Mixtral(experts, topK), c.PositiveInt("intermediate_size"), new BlockOptions
        {
            LayerWindows = window is { } w ? Enumerable.Repeat(w, layers).ToArray() : [],
        });
    }

    private sealed class MixtralNames : TensorNames
    {
        public static readonly MixtralNames Instance = new();

        public override string Router(int layer) => $"{Layer(layer)}.block_sparse_moe.gate.weight";

        public override string Expert(int layer, int expert, MlpProjection p) => $"{Layer(layer)}.block_sparse_moe.experts.{expert}.{W(p)}.weight";

        public override string Experts(int layer, MlpProjection p) => $"{Layer(layer)}.block_sparse_moe.experts.*.{W(p)}.weight";

        private static string W(MlpProjection p) => p switch
        {
            MlpProjection.Gate => "w1",
            MlpProjection.Down => "w2",
            MlpProjection.Up => "w3",
            _ => throw new ArgumentOutOfRangeException(nameof(p), p, "an MLP has gate, up and down projections"),
        };
    }
}
