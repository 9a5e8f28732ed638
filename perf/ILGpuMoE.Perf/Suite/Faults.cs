// CUDA faults in the suite: how one is recognised, and the switch that injects one for tests.
//
// ILGPU 1.5.3 reports a failed driver call as ILGPU.Runtime.Cuda.CudaException: its Message is the driver's
// cuGetErrorString text ("an illegal memory access was encountered") and its Error property the CudaError enum's name
// ("CUDA_ERROR_ILLEGAL_ADDRESS"). A kernel's own fault (illegal address, launch failure, misaligned address) surfaces at
// the next synchronize, and it is sticky: every later call in that CUDA context fails too, so the suite records the
// case, throws the accelerator and its context away and opens a fresh one.
//
// ILGPUMOE_INJECT_FAULT=<family>/<version>[=<CudaError name>|=hang][,...]  (family/version as in bench.json, e.g.
// moe/gating/v2): every case with that family and version (every dtype and token count) throws InjectedCudaFaultException
// after its Setup, where a real fault would surface, naming CUDA_ERROR_ILLEGAL_ADDRESS unless another CudaError is
// named; `hang` makes the case block instead, as a kernel that never ends would (for --case-timeout-s).
using ILGPU.Runtime.Cuda;

namespace ILGpuMoE.Perf.Suite;

/// <summary>A CUDA fault that ILGPUMOE_INJECT_FAULT raised: handled exactly as a CudaException with that error.</summary>
public sealed class InjectedCudaFaultException(string errorName, string target)
    : Exception($"{errorName} injected by {FaultInjection.Variable}={target}")
{
    public string ErrorName { get; } = errorName;
}

public static class CudaFaults
{
    /// <summary>Error name of the case that ran past --case-timeout-s.</summary>
    public const string CaseTimeout = "CASE_TIMEOUT";

    /// <summary>Error name of the case in flight when the process received SIGTERM (the runner's `timeout`).</summary>
    public const string Terminated = "SIGTERM";

    /// <summary>The CUDA error name (CUDA_ERROR_...) if <paramref name="e"/> or an exception inside it is a CUDA fault, else null.</summary>
    public static string? NameOf(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
        {
            switch (e)
            {
                case CudaException cuda:
                    return string.IsNullOrEmpty(cuda.Error) || cuda.Error == "N/A" ? "CUDA_ERROR (unnamed)" : cuda.Error;
                case InjectedCudaFaultException injected:
                    return injected.ErrorName;
                case AggregateException aggregate:
                    foreach (var inner in aggregate.InnerExceptions)
                    {
                        if (NameOf(inner) is { } name)
                            return name;
                    }

                    break;
            }
        }

        return null;
    }

    /// <summary>One line naming the exception: "CudaException CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access ...".</summary>
    public static string Describe(Exception e)
    {
        string name = NameOf(e) is { } n && e is not InjectedCudaFaultException ? $" {n}" : "";
        return $"{e.GetType().Name}{name}: {e.Message.ReplaceLineEndings(" ")}";
    }
}

/// <summary>The parsed ILGPUMOE_INJECT_FAULT switch.</summary>
public sealed class FaultInjection
{
    public const string Variable = "ILGPUMOE_INJECT_FAULT";

    private const string Hang = "hang";

    private readonly Dictionary<string, string> targets;
    private readonly HashSet<string> hit = new(StringComparer.Ordinal);

    private FaultInjection(Dictionary<string, string> targets) => this.targets = targets;

    public static FaultInjection None { get; } = new([]);

    public bool IsEmpty => targets.Count == 0;

    /// <summary>Targets that matched no case of the run (a typo would otherwise pass silently).</summary>
    public IEnumerable<string> Unused => targets.Keys.Where(t => !hit.Contains(t));

    /// <summary>Parses the switch; ArgumentException naming the bad entry.</summary>
    public static FaultInjection Parse(string? spec)
    {
        if (string.IsNullOrWhiteSpace(spec))
            return None;
        var targets = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = entry.IndexOf('=', StringComparison.Ordinal);
            string target = eq < 0 ? entry : entry[..eq];
            string what = eq < 0 ? nameof(CudaError.CUDA_ERROR_ILLEGAL_ADDRESS) : entry[(eq + 1)..];
            if (target.Count(ch => ch == '/') < 1 || target.StartsWith('/') || target.EndsWith('/'))
                throw new ArgumentException($"{Variable}: '{entry}' is not <family>/<version> as in bench.json (e.g. moe/gating/v2)");
            if (what != Hang && (!Enum.TryParse<CudaError>(what, ignoreCase: false, out var error) || error == CudaError.CUDA_SUCCESS || !what.StartsWith("CUDA_ERROR_", StringComparison.Ordinal)))
                throw new ArgumentException($"{Variable}: '{what}' is neither a CUDA_ERROR_* name ILGPU knows nor 'hang'");
            targets[target] = what;
        }

        return new FaultInjection(targets);
    }

    /// <summary>Called inside a case after its Setup: throws (or blocks) when the case is a target.</summary>
    public void Strike(string key)
    {
        if (!targets.TryGetValue(key, out var what))
            return;
        hit.Add(key);
        if (what == Hang)
            Thread.Sleep(Timeout.Infinite); // a kernel that never returns: only --case-timeout-s or a kill ends this
        throw new InjectedCudaFaultException(what, key);
    }
}
