// --router NAME [--capacity-factor C] [--noise-seed S] of generate and logits: run the model with a router of the MoE
// literature instead of its own (src/ILGpuMoE/Model/RouterConfig.cs, RouterChoice, says what each one computes).
using System.CommandLine;
using ILGpuMoE.Model;

namespace ILGpuMoE.Cli;

public sealed class RouterOption
{
    public Option<string?> Router { get; } = new("--router")
    {
        Description = "The MoE router: model (the checkpoint's own, default), switch (top-1 with expert capacity; overflow tokens " +
                      "keep only the residual), noisy-topk (Shazeer's noisy top-k; noise only with --noise-seed)",
    };

    public Option<double?> CapacityFactor { get; } = new("--capacity-factor")
    {
        Description = "With --router switch: each expert takes at most ceil(C * tokens / experts) tokens per step (default 1)",
    };

    public Option<ulong?> NoiseSeed { get; } = new("--noise-seed")
    {
        Description = "With --router noisy-topk: the noise seed (no seed: no noise)",
    };

    public void AddTo(Command command)
    {
        command.Options.Add(Router);
        command.Options.Add(CapacityFactor);
        command.Options.Add(NoiseSeed);
    }

    public RouterChoice? Parse(ParseResult p) => Parse(p.GetValue(Router), p.GetValue(CapacityFactor), p.GetValue(NoiseSeed));

    /// <summary>null / "model" -> null; a bad combination is a usage error (exit 2).</summary>
    public static RouterChoice? Parse(string? name, double? capacityFactor, ulong? noiseSeed)
    {
        try
        {
            return RouterChoice.Parse(name, capacityFactor, noiseSeed);
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(e.Message);
        }
    }
}
