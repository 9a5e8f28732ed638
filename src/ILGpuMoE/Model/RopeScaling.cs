// Scaled RoPE as config.json's rope_scaling (older writers) or rope_parameters (newer) block describes it. Only YaRN is
// run, and only for the families whose oracle models it (gpt-oss always, DeepSeek-V3 when its config says so:
// ModelFamily.RunsYarn); linear, dynamic, llama3 and longrope, and YaRN elsewhere, are refused with the key named, so a
// model is never run with frequencies it was not trained on.
//
// The keys and their defaults, as Hugging Face's modeling_rope_utils.py reads them (_compute_yarn_parameters):
//   factor                            required (older writers: max_position_embeddings / original when absent)
//   original_max_position_embeddings  default max_position_embeddings
//   beta_fast, beta_slow              default 32 and 1 (read with `or`, so 0 also means the default)
//   truncate                          default true: floor/ceil the correction range (gpt-oss sets false)
//   attention_factor                  default mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are set
//                                     and non-zero, else mscale(factor, 1); cos and sin are both multiplied by it
//   mscale, mscale_all_dim            DeepSeek's: mscale_all_dim also scales the attention softmax by mscale^2
// with mscale(s, m) = 1 if s <= 1 else 0.1 m ln(s) + 1. The frequencies themselves are computed where RoPE runs
// (kernels/ILGpuMoE.Kernels/Dense/Rope/RopeSpec.cs, which also holds YarnScaling's factors), from these numbers.
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Model;

/// <summary>config.json's scaled-RoPE block, read into the kernels' YaRN description.</summary>
public static class RopeScaling
{
    /// <summary>The real gpt-oss checkpoints' block, which GptOssConfig fills in when config.json has none.</summary>
    public static readonly YarnScaling GptOssDefault = new(32, 4096, 32, 1, Truncate: false);

    /// <summary>
    /// Reads rope_scaling / rope_parameters: null for plain RoPE (no block, or rope_type "default"), YaRN's numbers for
    /// rope_type "yarn", a one-line error naming the key otherwise. <paramref name="family"/> picks what the family's
    /// config class fills in when neither block is present (gpt-oss: <see cref="GptOssDefault"/>).
    /// </summary>
    internal static YarnScaling? Read(ConfigReader c, int maxPositions, ModelFamily family)
    {
        var y = ReadBlock(c, maxPositions, family.DefaultRopeScaling);
        if (y is not null && !family.RunsYarn)
            throw c.Error(c.Has("rope_scaling") ? "rope_scaling" : "rope_parameters", $"YaRN is run for gpt_oss and deepseek_v3 only, not {family.ModelType}");
        return y;
    }

    private static YarnScaling? ReadBlock(ConfigReader c, int maxPositions, YarnScaling? familyDefault)
    {
        string? block = c.Has("rope_scaling") ? "rope_scaling" : c.Has("rope_parameters") ? "rope_parameters" : null;
        if (block is null)
            return familyDefault;
        string typeKey = c.Has(block + ".rope_type") ? block + ".rope_type" : block + ".type";
        var type = c.OptionalString(typeKey);
        switch (type)
        {
            case null when block == "rope_parameters":
            case "default":
                return null;
            case null:
                throw c.Error(block, "has no rope_type (or type); scaled RoPE needs one (only 'yarn' is supported)");
            case "yarn":
                break;
            default:
                throw c.Error(typeKey, $"'{type}' is not supported (plain RoPE 'default' and 'yarn' are)");
        }

        var original = c.OptionalInt(block + ".original_max_position_embeddings") ?? maxPositions;
        if (original < 1)
            throw c.Error(block + ".original_max_position_embeddings", $"must be positive, got {original}");
        var factor = c.OptionalDouble(block + ".factor") ?? (double)maxPositions / original;
        if (!(factor > 0) || !double.IsFinite(factor))
            throw c.Error(block + ".factor", $"must be positive, got {factor}");
        double betaFast = c.OptionalDouble(block + ".beta_fast") is { } bf and not 0 ? bf : 32;
        double betaSlow = c.OptionalDouble(block + ".beta_slow") is { } bs and not 0 ? bs : 1;
        if (!(betaFast > 0) || !(betaSlow > 0) || !double.IsFinite(betaFast) || !double.IsFinite(betaSlow))
            throw c.Error(block + ".beta_fast", $"and beta_slow must be positive, got {betaFast} and {betaSlow}");
        var attention = c.OptionalDouble(block + ".attention_factor");
        if (attention is { } a && !(a > 0 && double.IsFinite(a)))
            throw c.Error(block + ".attention_factor", $"must be positive, got {a}");
        var y = new YarnScaling(factor, original, betaFast, betaSlow, c.OptionalBool(block + ".truncate") ?? true, attention,
            c.OptionalDouble(block + ".mscale") ?? 0, c.OptionalDouble(block + ".mscale_all_dim") ?? 0);
        if (!double.IsFinite(y.CosSinFactor) || !double.IsFinite(y.SoftmaxScaleFactor))
            throw c.Error(block + ".mscale", "and mscale_all_dim must be finite");
        return y;
    }
}
