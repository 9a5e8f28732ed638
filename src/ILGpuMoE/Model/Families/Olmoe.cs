// OLMoE (model_type "olmoe", OlmoeForCausalLM), as Hugging Face's modeling_olmoe.py computes it:
// - q_norm / k_norm: an RMSNorm over the whole q ([H*Dh]) and k ([Hkv*Dh]) projection, before the split into heads
//   and before RoPE;
// - clip_qkv: when set, q, k and v are clamped to [-clip_qkv, clip_qkv] after the q/k norm, before RoPE;
// - q/k/v/o biases only when attention_bias;
// - router: softmax over all E, top-k, renormalised only when norm_topk_prob (false in the released checkpoints);
//   every layer MoE; experts have intermediate_size; no sliding window.
namespace ILGpuMoE.Model;

public sealed class OlmoeFamily : ModelFamily
{
    public override string ModelType => "olmoe";

    public override string Architecture => "OlmoeForCausalLM";

    /// <summary>
    /// OLMoE-Instruct (Tülu format): "&lt;|endoftext|&gt;" (its BOS, which the template writes itself), then
    /// "&lt;|system|&gt;\ntext\n", "&lt;|user|&gt;\ntext\n", "&lt;|assistant|&gt;\ntext&lt;|endoftext|&gt;" (+ "\n" unless last) per
    /// turn, then "&lt;|assistant|&gt;\n". One user turn: "&lt;|endoftext|&gt;&lt;|user|&gt;\nprompt\n&lt;|assistant|&gt;\n".
    /// </summary>
    public override (string Text, bool AddBos) ChatPrompt(IReadOnlyList<ChatMessage> messages)
    {
        ChatMessage.Check(messages);
        var text = new System.Text.StringBuilder("<|endoftext|>");
        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i];
            text.Append(m.Role switch
            {
                ChatRole.System => $"<|system|>\n{m.Content}\n",
                ChatRole.User => $"<|user|>\n{m.Content}\n",
                ChatRole.Assistant => $"<|assistant|>\n{m.Content}<|endoftext|>" + (i == messages.Count - 1 ? "" : "\n"),
                _ => throw new ArgumentException($"chat role {m.Role}"),
            });
        }

        return (text.Append("<|assistant|>\n").ToString(), false);
    }

    internal override FamilyConfig Read(ConfigReader c, int layers)
    {
        var (experts, topK) = ReadExperts(c, "num_experts", "num_experts_per_tok");
        var clip = c.OptionalDouble("clip_qkv");
        if (clip is <= 0)
            throw c.Error("clip_qkv", $"must be null or positive, got {clip}");
        bool bias = c.OptionalBool("attention_bias") ?? false;
        return new FamilyConfig(SoftmaxRouter(c, experts, topK), c.PositiveInt("intermediate_size"), new BlockOptions
        {
            QkvBias = bias,
            OutputBias = bias,
            QkNorm = QkNormKind.Whole,
            ClipQkv = clip,
        });
    }
}
