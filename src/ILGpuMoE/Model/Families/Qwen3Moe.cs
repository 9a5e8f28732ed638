// Qwen3-MoE (model_type "qwen3_moe", Qwen3MoeForCausalLM; Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder), as Hugging
// Face's modeling_qwen3_moe.py computes it:
// - explicit head_dim (differs from hidden / heads in the real models);
// - q_norm / k_norm: an RMSNorm over head_dim applied to each head's q and k (weights [Dh]), before RoPE;
// - q/k/v/o biases only when attention_bias (false in the released checkpoints);
// - router: softmax over all E (F32), top-k, divided by their sum only when norm_topk_prob;
// - layer i is MoE iff i is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0; else a dense SwiGLU MLP of
//   intermediate_size; experts have moe_intermediate_size;
// - sliding window: every layer when use_sliding_window (the config drops sliding_window otherwise), or the layers
//   layer_types marks "sliding_attention".
namespace ILGpuMoE.Model;

public sealed class Qwen3MoeFamily : ModelFamily
{
    public override string ModelType => "qwen3_moe";

    public override string Architecture => "Qwen3MoeForCausalLM";

    /// <summary>ChatML, as Qwen's chat templates render the messages with the generation prompt (no BOS; Qwen2MoeFamily.ChatMl).</summary>
    public override (string Text, bool AddBos) ChatPrompt(IReadOnlyList<ChatMessage> messages) => Qwen2MoeFamily.ChatMl(messages);

    internal override FamilyConfig Read(ConfigReader c, int layers)
    {
        var (experts, topK) = ReadExperts(c, "num_experts", "num_experts_per_tok");
        var moe = QwenMoeLayers(c, layers);
        bool bias = c.OptionalBool("attention_bias") ?? false;
        return new FamilyConfig(SoftmaxRouter(c, experts, topK), c.PositiveInt("moe_intermediate_size"), new BlockOptions
        {
            QkvBias = bias,
            OutputBias = bias,
            QkNorm = QkNormKind.PerHead,
            DenseIntermediateSize = DenseWidth(c, moe),
            MoeLayers = moe,
            LayerWindows = Windows(c, layers, byDefault: _ => true),
        });
    }
}
