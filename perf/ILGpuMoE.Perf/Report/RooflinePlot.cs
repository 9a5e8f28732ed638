// roofline.png: every timed kernel as a point (arithmetic intensity = FLOPs / minimum bytes, achieved FLOP/s) under
// the two ceilings measured in the same run: bandwidth x intensity (the copy ceiling) and the best matmul throughput.
// Log-log axes (ScottPlot has no log axis type: values are plotted as log10 with power-of-ten tick labels).
// Kernels without FLOPs (copies) have no place on a roofline and are left out.
using System.Globalization;
using ILGpuMoE.Perf.Suite;
using ScottPlot;

namespace ILGpuMoE.Perf.Report;

public static class RooflinePlot
{
    public static void Save(BenchReport r, string path)
    {
        var points = r.Cases.Where(c => c.Timing is { } t && c.Flops > 0 && c.MinBytes > 0 && t.MedianSeconds > 0).ToList();
        var plot = new Plot();
        plot.Title($"Roofline: {r.Preset} on {r.Machine.Device}");
        plot.XLabel("arithmetic intensity (FLOP / byte, log10)");
        plot.YLabel("achieved GFLOP/s (log10)");

        double xmin = -2, xmax = 3;
        if (points.Count > 0)
        {
            xmin = Math.Floor(Math.Log10(points.Min(p => p.ArithmeticIntensity))) - 0.5;
            xmax = Math.Ceiling(Math.Log10(points.Max(p => p.ArithmeticIntensity))) + 0.5;
        }

        if (r.Ceilings is { } c && double.IsFinite(c.CopyGBPerSecond) && c.CopyGBPerSecond > 0)
        {
            double peak = c.MatmulTFlopPerSecond * 1e3; // GFLOP/s
            var xs = new List<double>();
            var ys = new List<double>();
            for (double lx = xmin; lx <= xmax + 1e-9; lx += 0.05)
            {
                double bw = c.CopyGBPerSecond * Math.Pow(10, lx);
                xs.Add(lx);
                ys.Add(Math.Log10(peak > 0 ? Math.Min(bw, peak) : bw));
            }

            var roof = plot.Add.Scatter(xs.ToArray(), ys.ToArray());
            roof.MarkerSize = 0;
            roof.LineWidth = 2;
            roof.Color = Colors.Black;
            roof.LegendText = $"ceilings: copy {c.CopyGBPerSecond:G3} GB/s, best matmul {c.MatmulTFlopPerSecond * 1e3:G3} GFLOP/s";
        }

        var palette = new ScottPlot.Palettes.Category20();
        MarkerShape[] shapes = [MarkerShape.FilledCircle, MarkerShape.FilledSquare, MarkerShape.FilledTriangleUp, MarkerShape.FilledDiamond];
        int i = 0;
        foreach (var group in points.GroupBy(p => $"{p.Family} {p.Version}"))
        {
            var xs = group.Select(p => Math.Log10(p.ArithmeticIntensity)).ToArray();
            var ys = group.Select(p => Math.Log10(p.Timing!.TFlopPerSecond * 1e3)).ToArray();
            var s = plot.Add.ScatterPoints(xs, ys);
            s.Color = palette.GetColor(i);
            s.MarkerShape = shapes[i / 20 % shapes.Length];
            i++;
            s.MarkerSize = 8;
            s.LegendText = group.Key;
        }

        plot.Axes.Bottom.TickGenerator = LogTicks();
        plot.Axes.Left.TickGenerator = LogTicks();
        plot.ShowLegend(Edge.Right);
        plot.SavePng(path, 1500, 850);
    }

    private static ScottPlot.TickGenerators.NumericAutomatic LogTicks() => new()
    {
        LabelFormatter = v => Math.Abs(v - Math.Round(v)) < 1e-9 ? Math.Pow(10, Math.Round(v)).ToString("G3", CultureInfo.InvariantCulture) : "",
        MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
        IntegerTicksOnly = true,
    };
}
