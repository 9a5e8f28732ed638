// DeepSeek-V3 (model_type "deepseek_v3", DeepseekV3ForCausalLM; DeepSeek-V3, R1 and Kimi-K2 share the architecture), as
// Hugging Face's modeling_deepseek_v3.py computes it:
// - Multi-head Latent Attention (BlockOptions.Mla): q = q_b_proj(rmsnorm(q_a_proj x)) or q_proj x when q_lora_rank is
//   null; [latent | k_rope] = kv_a_proj_with_mqa x; [k_nope | v] per head = kv_b_proj(rmsnorm(latent)); RoPE on the
//   rope parts in interleaved pairs (rope_interleave, true by default), YaRN when rope_scaling says so; softmax scale
//   qk_head_dim^-0.5 times YaRN's mscale(factor, mscale_all_dim)^2. num_key_value_heads must equal the heads.
// - router: sigmoid scores; e_score_correction_bias added for the selection only; n_group groups ranked by the sum of
//   their two best biased scores, topk_group kept, top-k among them; weights the unbiased scores, divided by their sum
//   when norm_topk_prob, times routed_scaling_factor (RouterKind.DeepSeekV3). topk_method and scoring_func are not
//   read: Hugging Face's module always routes this way.
// - n_shared_experts shared experts as one SwiGLU MLP of n_shared_experts * moe_intermediate_size, added unweighted;
// - layers below first_k_dense_replace: a dense SwiGLU MLP of intermediate_size (moe_layer_freq is not read, as in
//   Hugging Face's decoder layer); the multi-token-prediction layers (num_nextn_predict_layers) sit after the last
//   layer in the checkpoint and are not loaded.
// The experts' width F is moe_intermediate_size; the shared MLP and the dense MLPs run as F-wide chunks (MoeModel.cs).
namespace ILGpuMoE.Model;

public sealed class DeepseekV3Family : ModelFamily
{
    public override string ModelType => "deepseek_v3";

    public override string Architecture => "DeepseekV3ForCausalLM";

    internal override bool RunsYarn => true;

    public override TensorNames Names => DeepseekNames.Instance;

    /// <summary>
    /// DeepSeek-V3's chat template with the generation prompt: BOS, the system turns' text (joined by "\n\n") first, as
    /// the template gathers them, then "&lt;｜User｜&gt;text" and "&lt;｜Assistant｜&gt;text&lt;｜end▁of▁sentence｜&gt;" per turn,
    /// then "&lt;｜Assistant｜&gt;" (the full-width bars are part of the special tokens). One user turn:
    /// "&lt;｜User｜&gt;prompt&lt;｜Assistant｜&gt;".
    /// </summary>
    public override (string Text, bool AddBos) ChatPrompt(IReadOnlyList<ChatMessage> messages)
    {
        ChatMessage.Check(messages);
        var text = new System.Text.StringBuilder(string.Join("\n\n", messages.Where(m => m.Role == ChatRole.System).Select(m => m.Content)));
        foreach (var m in messages)
        {
            text.Append(m.Role switch
            {
                ChatRole.System => "",
                ChatRole.User => $"<｜User｜>{m.Content}",
                ChatRole.Assistant => $"<｜Assistant｜>{m.Content}<｜end▁of▁sentence｜>",
                _ => throw new ArgumentException($"chat role {m.Role}"),
            });
        }

        return (text.Append("<｜Assistant｜>").ToString(), true);
    }

    internal override FamilyConfig Read(ConfigReader c, int layers)
    {
        var (experts, topK) = ReadExperts(c, "n_routed_experts", "num_experts_per_tok");
        var groups = c.OptionalInt("n_group") ?? 1;
        if (groups < 1 || experts % groups != 0)
            throw c.Error("n_group", $"({groups}) must be positive and divide 'n_routed_experts' ({experts})");
        var keep = c.OptionalInt("topk_group") ?? 1;
        if (keep < 1 || keep > groups)
            throw c.Error("topk_group", $"({keep}) must be between 1 and 'n_group' ({groups})");
        if (topK > keep * (experts / groups))
            throw c.Error("num_experts_per_tok", $"({topK}) exceeds the {keep * (experts / groups)} experts of the {keep} kept groups");
        var scaling = c.OptionalDouble("routed_scaling_factor") ?? 1.0;
        if (!(scaling > 0) || !double.IsFinite(scaling))
            throw c.Error("routed_scaling_factor", $"must be positive, got {scaling}");
        var router = new RouterConfig(RouterKind.DeepSeekV3, experts, topK)
        {
            Groups = groups,
            TopKGroups = keep,
            NormTopK = c.OptionalBool("norm_topk_prob") ?? true,
            RoutedScaling = scaling,
        };

        int f = c.PositiveInt("moe_intermediate_size");
        var firstDense = c.OptionalInt("first_k_dense_replace") ?? 0;
        if (firstDense < 0 || firstDense > layers)
            throw c.Error("first_k_dense_replace", $"must be in [0, {layers}], got {firstDense}");
        var moe = Enumerable.Range(0, layers).Select(i => i >= firstDense).ToArray();
        var shared = c.OptionalInt("n_shared_experts") ?? 0;
        if (shared < 0)
            throw c.Error("n_shared_experts", $"must be >= 0, got {shared}");

        var mla = new MlaOptions(c.IsNull("q_lora_rank") ? 0 : c.PositiveInt("q_lora_rank"), c.PositiveInt("kv_lora_rank"),
            c.PositiveInt("qk_nope_head_dim"), c.PositiveInt("qk_rope_head_dim"), c.PositiveInt("v_head_dim"), c.OptionalBool("rope_interleave") ?? true);
        if (mla.QkRopeHeadDim % 2 != 0)
            throw c.Error("qk_rope_head_dim", $"({mla.QkRopeHeadDim}) must be even: RoPE turns pairs");
        int heads = c.PositiveInt("num_attention_heads");
        if ((c.OptionalInt("num_key_value_heads") ?? heads) != heads)
            throw c.Error("num_key_value_heads", $"must equal 'num_attention_heads' ({heads}): MLA expands one latent per head");

        return new FamilyConfig(router, f, new BlockOptions
        {
            SharedExpertSize = shared * f,
            SharedExpertUngated = true,
            ScoreCorrectionBias = true,
            DenseIntermediateSize = DenseWidth(c, moe),
            MoeLayers = moe,
            Mla = mla,
        })
        {
            HeadDim = mla.QkHeadDim,
            ValueHeadDim = mla.VHeadDim,
        };
    }

    private sealed class DeepseekNames : TensorNames
    {
        public static readonly DeepseekNames Instance = new();

        public override string SharedExpert(int layer, MlpProjection p) => $"{Layer(layer)}.mlp.shared_experts.{Proj(p)}.weight";
    }
}
