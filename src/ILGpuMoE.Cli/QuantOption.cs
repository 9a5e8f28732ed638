// --quant SCHEME of generate and logits: pack the linear weights at load time (see src/ILGpuMoE/Quant/QuantSpec.cs).
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
