using ILGpuMoE.Kernels;
using ILGpuMoE.Perf;
using ILGpuMoE.Perf.Cases;
using ILGpuMoE.Perf.Suite;

namespace ILGpuMoE.Tests.Perf;

/// <summary>
/// `bench --decode-first` (Suite/DecodeCases.cs): the T = 1 cases of decode-marked kernels run before all others, and
/// the sweep then runs exactly the remaining cases. No kernel on main is marked yet, so the order is tested on a set
/// of marks named here; the CLI path on the real [KernelInfo] marks.
/// </summary>
[TestFixture]
public class DecodeFirstTests
{
    private static readonly int[] Tokens = [1, 5];

    private static List<CaseResult> Run(Func<IBenchCase, bool>? first)
    {
        using var device = BenchDevice.Open(DeviceChoice.CpuEmulator);
        var log = new List<string>();
        using var run = new BenchRun(device, Presets.Get("tiny"), log.Add);
        SuiteRunner.Run(run, new SuiteOptions
        {
            Preset = Presets.Get("tiny"),
            Tokens = Tokens,
            Families = ["dense"],
            CheckOnly = true,
            RunFirst = first,
        });
        return [.. run.Cases];
    }

    /// <summary>The plain sweep's order: the dense family's cases per token count, as enumerated (none run).</summary>
    private static List<string> PlainOrder()
    {
        using var device = BenchDevice.Open(DeviceChoice.CpuEmulator);
        var ids = new List<string>();
        foreach (int t in Tokens)
        {
            foreach (var c in new DenseFamily().Cases(Presets.Get("tiny"), t, device))
            {
                ids.Add($"{c.Family} {c.Version} {c.DType} T={c.Tokens}");
                c.Dispose();
            }
        }

        return ids;
    }

    private static string Id(CaseResult c) => $"{c.Family} {c.Version} {c.DType} T={c.Tokens}";

    private static bool IsMarked(string id) => id.EndsWith(" T=1", StringComparison.Ordinal) && (id.Contains(" gemv-v2 ", StringComparison.Ordinal) || id.StartsWith("dense/rmsnorm ", StringComparison.Ordinal));

    [Test]
    public void MarkedCasesAtOneTokenRunFirstAndOnlyOnce()
    {
        var marked = new HashSet<(string, string)> { ("dense/matmul", "gemv-v2"), ("dense/rmsnorm", "v1") };
        var plain = PlainOrder();
        var ordered = Run(DecodeCases.Of(marked)).Select(Id).ToList();

        // gemv-v2 at T = 1: q_proj and lm_head for f32 and bf16 (DenseFamily.MatMulTypes); rmsnorm at T = 1: one.
        // rmsnorm at T = 5 is not a decode case and keeps its place in the sweep.
        Assert.That(ordered.Take(5).All(IsMarked) && !ordered.Skip(5).Any(IsMarked), Is.True, string.Join("\n", ordered));
        Assert.That(ordered.Skip(5), Has.Some.EqualTo("dense/rmsnorm v1 bf16 T=5"));
        Assert.That(IsMarked(plain[0]), Is.False, "the plain order does not start with them");
        Assert.That(ordered.Order(), Is.EqualTo(plain.Order()), "the same cases, each once");
    }

    [Test]
    public void TheOptionUsesTheKernelInfoMarks()
    {
        var args = BenchArgs.Parse(["--preset", "tiny", "--device", "cpu-emulator", "--check-only", "--tokens", "1", "--family", "gating", "--decode-first"]);
        Assert.That(args.DecodeFirst, Is.True);
        Assert.That(BenchArgs.Parse(["--preset", "tiny"]).DecodeFirst, Is.False);
        var marks = ILGpuMoE.Ptx.PtxExporter.FindKernels().Where(k => k.Info.Decode != DecodeUse.None).Select(k => (k.Info.Family, k.Info.Version)).ToHashSet();
        var log = new List<string>();
        var report = BenchCommand.Execute(args, log.Add);
        int expected = report.Cases.Count(c => c.Tokens == 1 && marks.Contains((c.Family, c.Version)));
        Assert.That(log, Has.Some.EqualTo($"decode first: {expected} case(s) of decode-marked kernels at T = 1 ran before the rest"));
    }
}
