using ILGpuMoE.Perf.Report;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Perf;

/// <summary>roofline.png's intensity axis (perf/ILGpuMoE.Perf/Report/RooflinePlot.cs) and the figure for the H200 report
/// filed in perf/results, for the same cases under CPU-like ceilings, and for a report with nothing timed.</summary>
public class RooflinePlotTests
{
    private static readonly double[] Cases = [0.3, 50];

    [Test]
    public void TheAxisSpansTheRidgeWhenItLiesLeftOfEveryCase()
    {
        // CPU-like: copy 3 GB/s, best matmul 0.05 GFLOP/s -> ridge at 0.05 / 3 = 0.0167 FLOP/byte, log10 = -1.78:
        // floor(-1.78) - 1 = -3 (a decade left of the ridge); the cases' right end ceil(log10 50 = 1.70) + 0.5 = 2.5.
        var (min, max) = RooflinePlot.XRange(Cases, new Ceilings(3, 0.05e-3, "test", 1));
        Assert.That((min, max), Is.EqualTo((-3.0, 2.5)));
    }

    [Test]
    public void TheAxisFitsTheCasesWhenTheRidgeIsAmongThem()
    {
        // H200-like: 4227 GB/s, 5910 GFLOP/s -> ridge 1.40 FLOP/byte, log10 0.146: [floor - 1, ceil + 1] = [-1, 2] lies
        // inside the cases' [floor(-0.52) - 0.5, 2.5] = [-1.5, 2.5].
        Assert.That(RooflinePlot.XRange(Cases, new Ceilings(4227, 5.91, "test", 1)), Is.EqualTo((-1.5, 2.5)));
        Assert.That(RooflinePlot.XRange(Cases, null), Is.EqualTo((-1.5, 2.5)), "no ceilings: the cases alone");
        Assert.That(RooflinePlot.XRange([], null), Is.EqualTo((-2.0, 3.0)), "nothing: a default decade range");
    }

    [Test]
    public void FiguresAreWrittenForEveryKindOfReport()
    {
        string json = Path.Combine(Repo.Root(), "perf", "results", "2026-12-04-cuda-nvidia-h200-mixtral-8x7b.json");
        var h200 = Reports.FromJson(File.ReadAllText(json));
        Assert.That(h200.Cases.Count(c => c.Timing is not null), Is.GreaterThan(20), "the filed report has timed cases");
        string dir = Path.Combine(Path.GetTempPath(), "roofline-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            foreach (var (name, report) in new[]
                     {
                         ("h200", h200),
                         ("cpu-ceilings", h200 with { Ceilings = new Ceilings(3, 0.05e-3, "test", 1) }),
                         ("nothing-timed", h200 with { Ceilings = null, Cases = [] }),
                     })
            {
                string png = Path.Combine(dir, name + ".png");
                RooflinePlot.Save(report, png);
                // A blank 1500 x 850 PNG is ~7 KB (what a report with nothing to scale to gave before); axes, labels and
                // the note or the points make it several times that.
                Assert.That(new FileInfo(png).Length, Is.GreaterThan(20_000), name);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
