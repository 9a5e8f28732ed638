// The decode cases: a case at T = 1 of a kernel version that the runtime launches in a CUDA decode step, as marked by
// [KernelInfo(Decode = ...)] on any entry of that family and version. `bench --decode-first` runs them before every
// other case (after the copy ceiling they are judged against), so the GPU runner's timed step measures them even when
// its time limit cuts the rest short (issue: decode at the bandwidth roofline).
using ILGpuMoE.Kernels;
using ILGpuMoE.Ptx;

namespace ILGpuMoE.Perf.Suite;

public static class DecodeCases
{
    private static readonly Lazy<IReadOnlySet<(string Family, string Version)>> Marked = new(() =>
        PtxExporter.FindKernels().Where(k => k.Info.Decode != DecodeUse.None).Select(k => (k.Info.Family, k.Info.Version)).ToHashSet());

    /// <summary>The family/version pairs of every decode-marked [KernelInfo] entry.</summary>
    public static IReadOnlySet<(string Family, string Version)> MarkedVersions => Marked.Value;

    /// <summary>Whether a case is a decode case of the marked kernels.</summary>
    public static bool IsDecode(IBenchCase c) => Of(MarkedVersions)(c);

    /// <summary>The decode test for a given set of family/version pairs (the tests name their own).</summary>
    public static Func<IBenchCase, bool> Of(IReadOnlySet<(string Family, string Version)> marked) =>
        c => c.Tokens == 1 && marked.Contains((c.Family, c.Version));
}
