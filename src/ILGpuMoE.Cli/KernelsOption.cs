// --kernels auto|simple|tuned|tensor-core of generate and logits: which kernel versions the forward pass launches
// (src/ILGpuMoE/Runtime/WeightOps.cs, KernelPolicy, says what each one runs). Kernel researchers compare the SIMT and
// tensor-core paths of one model with it; users leave it at auto.
using System.CommandLine;
using ILGpuMoE.Runtime;

namespace ILGpuMoE.Cli;

public static class KernelsOption
{
    private static readonly (string Name, KernelPolicy Policy)[] Names =
    [
        ("auto", KernelPolicy.Auto), ("simple", KernelPolicy.Simple), ("tuned", KernelPolicy.Tuned), ("tensor-core", KernelPolicy.TensorCore),
    ];

    public static Option<string?> Create() => new("--kernels")
    {
        Description = "Kernel versions: auto (default: simple on the CPU accelerator; tuned on a GPU, with tensor cores for prefill on sm_80+), " +
                      "simple (the V1 kernels), tuned (the GPU's SIMT picks), tensor-core (tuned + mma.sync for steps of more than one token)",
    };

    /// <summary>null -> Auto; an unknown name is a usage error listing the names.</summary>
    public static KernelPolicy Parse(string? name)
    {
        if (name is null)
            return KernelPolicy.Auto;
        foreach (var (n, policy) in Names)
        {
            if (string.Equals(n, name.Trim(), StringComparison.OrdinalIgnoreCase))
                return policy;
        }

        throw new CliUsageException($"--kernels {name}: unknown (expected {string.Join(", ", Names.Select(x => x.Name))})");
    }
}
