// Qwen2-MoE / Qwen1.5-MoE (model_type "qwen2_moe", Qwen2MoeForCausalLM), as Hugging Face's modeling_qwen2_moe.py
// computes it:
// - q/k/v biases (qkv_bias, true by default), no o_proj bias, no q/k norm;
// - router: softmax over all E, top-k, renormalised only when norm_topk_prob (false in the released checkpoints);
// - a shared expert: a SwiGLU MLP of shared_expert_intermediate_size scaled by sigmoid(shared_expert_gate(x)) and
//   added to the routed output;
// - layer i is MoE iff i is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0 (dense MLP of
//   intermediate_size elsewhere); experts have moe_intermediate_size;
// - sliding window, when use_sliding_window, on the layers layer_types marks; by default (Hugging Face's current
//   default layer_types) on the even layers below max_window_layers (default 28). Releases before 4.53 windowed the
//   layers from max_window_layers on instead; we follow the current code.
namespace ILGpuMoE.Model;

public sealed class Qwen2MoeFamily : ModelFamily
{
    public override string ModelType => "qwen2_moe";

    public override string Architecture => "Qwen2MoeForCausalLM";

    /// <summary>ChatML, as Qwen's chat templates render the messages with the generation prompt (no BOS).</summary>
    public override (string Text, bool AddBos) ChatPrompt(IReadOnlyList<ChatMessage> messages) => ChatMl(messages);

    /// <summary>ChatML: "&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n" per turn, then "&lt;|im_start|&gt;assistant\n". No default
    /// system turn is added (Qwen2.5's templates add one; the MoE checkpoints' do not).</summary>
    internal static (string Text, bool AddBos) ChatMl(IReadOnlyList<ChatMessage> messages)
    {
        ChatMessage.Check(messages);
        var text = new System.Text.StringBuilder();
        foreach (var m in messages)
        {
            string role = m.Role switch
            {
                ChatRole.System => "system",
                ChatRole.User => "user",
                ChatRole.Assistant => "assistant",
                _ => throw new ArgumentException($"chat role {m.Role}"),
            };
            text.Append("<|im_start|>").Append(role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        }

        return (text.Append("<|im_start|>assistant\n").ToString(), false);
    }

    internal override FamilyConfig Read(ConfigReader c, int layers)
    {
        var (experts, topK) = ReadExperts(c, "num_experts", "num_experts_per_tok");
        var moe = QwenMoeLayers(c, layers);
        // Hugging Face's default when the key is absent is a shared expert of 5632 (Qwen1.5-MoE-A2.7B's); 0 means none.
        var shared = c.OptionalInt("shared_expert_intermediate_size") ?? 5632;
        if (shared < 0)
            throw c.Error("shared_expert_intermediate_size", $"must be >= 0, got {shared}");
        var maxWindowLayers = c.OptionalInt("max_window_layers") ?? 28;
        return new FamilyConfig(SoftmaxRouter(c, experts, topK), c.PositiveInt("moe_intermediate_size"), new BlockOptions
        {
            QkvBias = c.OptionalBool("qkv_bias") ?? true,
            SharedExpertSize = shared,
            DenseIntermediateSize = DenseWidth(c, moe),
            MoeLayers = moe,
            LayerWindows = Windows(c, layers, byDefault: i => i % 2 == 0 && i < maxWindowLayers),
        });
    }
}
