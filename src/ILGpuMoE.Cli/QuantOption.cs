// --quant SCHEME of generate and logits: pack the linear weights at load time (see src/ILGpuMoE/Quant/QuantSpec.cs);
// --quant-lm-head SCHEME packs lm_head as well.
using System.CommandLine;
using ILGpuMoE.Quant;

namespace ILGpuMoE.Cli;

public static class QuantOption
{
    public static Option<string?> Create() => new("--quant")
    {
        Description = "Quantize the linear weights (attention q/k/v/o, experts w1/w2/w3) at load time: " + string.Join(", ", QuantSpec.Names) +
                      ". Embeddings, norms, router and lm_head keep their dtype.",
    };

    /// <summary>--quant-lm-head SCHEME: pack lm_head too (ModelLoadOptions.LmHeadQuant).</summary>
    public static Option<string?> CreateLmHead() => new("--quant-lm-head")
    {
        Description = "Quantize lm_head [V, D] at load time with this scheme (" + string.Join(", ", QuantSpec.Names) +
                      "); it is read whole every decode step. Default none: lm_head keeps its dtype.",
    };

    /// <summary>
    /// null / "none" -> null; an unknown name is a usage error (exit 2) listing the schemes and naming
    /// <paramref name="option"/> (quantize takes the same names as --scheme).
    /// </summary>
    public static QuantSpec? Parse(string? name, string option = "--quant")
    {
        try
        {
            return QuantSpec.Parse(name);
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(Rename(e.Message, option));
        }
    }

    /// <summary>The library's scheme errors start with "--quant NAME"; under another option they name that one.</summary>
    public static string Rename(string message, string option) =>
        option != "--quant" && message.StartsWith("--quant ", StringComparison.Ordinal) ? option + message["--quant".Length..] : message;
}
