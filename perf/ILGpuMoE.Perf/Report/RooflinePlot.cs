// roofline.png: every timed kernel as a point (arithmetic intensity = FLOPs / minimum bytes, achieved FLOP/s) under
// the two ceilings measured in the same run: bandwidth x intensity (the copy ceiling) and the best matmul throughput.
// Log-log axes (ScottPlot has no log axis type: values are plotted as log10 with power-of-ten tick labels).
// Kernels without FLOPs (copies) have no place on a roofline and are left out.
// The intensity axis always spans the ridge point (compute ceiling / bandwidth) with a decade on each side, so both the
// bandwidth slope and the compute ceiling show: on the CPU accelerator the ridge sits far left of every case (its
// emulated matmul is slow next to its copy rate), and an axis fitted to the cases alone drew only the flat ceiling. A
// report with no timed case or no ceilings says so on the figure instead of leaving it blank.
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

        var (xmin, xmax) = XRange(points.Select(p => p.ArithmeticIntensity), r.Ceilings);
        if (r.Ceilings is { } c && double.IsFinite(c.CopyGBPerSecond) && c.CopyGBPerSecond > 0)
        {
            double peak = c.MatmulTFlopPerSecond * 1e3; // GFLOP/s
            bool hasPeak = double.IsFinite(peak) && peak > 0;
            double ridge = hasPeak ? Math.Log10(peak / c.CopyGBPerSecond) : xmax;
            double bwAt(double lx) => Math.Log10(c.CopyGBPerSecond) + lx;
            var slope = plot.Add.Line(xmin, bwAt(xmin), Math.Min(ridge, xmax), bwAt(Math.Min(ridge, xmax)));
            slope.LineWidth = 2;
            slope.Color = Colors.Black;
            slope.LegendText = $"bandwidth: copy {c.CopyGBPerSecond:G3} GB/s x intensity";
            if (hasPeak)
            {
                var roof = plot.Add.Line(ridge, Math.Log10(peak), xmax, Math.Log10(peak));
                roof.LineWidth = 2;
                roof.Color = Colors.DarkRed;
                roof.LegendText = $"compute: best matmul {peak:G3} GFLOP/s (ridge at {Math.Pow(10, ridge):G3} FLOP/byte)";
            }
        }

        // Limits set, not autoscaled: a figure with nothing to scale to would come out blank.
        var yValues = points.Select(p => Math.Log10(p.Timing!.TFlopPerSecond * 1e3)).Where(double.IsFinite).ToList();
        if (r.Ceilings is { } cy && cy.CopyGBPerSecond > 0 && double.IsFinite(cy.CopyGBPerSecond))
        {
            yValues.Add(Math.Log10(cy.CopyGBPerSecond) + xmin);
            if (cy.MatmulTFlopPerSecond > 0 && double.IsFinite(cy.MatmulTFlopPerSecond))
                yValues.Add(Math.Log10(cy.MatmulTFlopPerSecond * 1e3));
        }

        double ymin = yValues.Count > 0 ? Math.Floor(yValues.Min()) - 0.5 : -3;
        double ymax = yValues.Count > 0 ? Math.Ceiling(yValues.Max()) + 0.5 : 4;
        if (points.Count == 0 || r.Ceilings is null)
        {
            string why = points.Count == 0 ? "no timed case with FLOPs in this report (a --check-only run?)" : "no ceilings measured in this run";
            var note = plot.Add.Text(why, xmin + 0.2, (ymin + ymax) / 2);
            note.LabelFontSize = 18;
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

        plot.Axes.SetLimits(xmin, xmax, ymin, ymax);
        plot.Axes.Bottom.TickGenerator = LogTicks();
        plot.Axes.Left.TickGenerator = LogTicks();
        if (points.Count > 0 || r.Ceilings is not null)
            plot.ShowLegend(Edge.Right);
        plot.SavePng(path, 1500, 850);
    }

    /// <summary>
    /// The log10 intensity range: the cases' (half a decade of margin, whole decades), widened to a decade either side
    /// of the ridge point when ceilings are known; -2..3 with neither.
    /// </summary>
    public static (double Min, double Max) XRange(IEnumerable<double> intensities, Ceilings? ceilings)
    {
        var logs = intensities.Where(i => i > 0 && double.IsFinite(i)).Select(Math.Log10).ToList();
        double min = logs.Count > 0 ? Math.Floor(logs.Min()) - 0.5 : double.PositiveInfinity;
        double max = logs.Count > 0 ? Math.Ceiling(logs.Max()) + 0.5 : double.NegativeInfinity;
        if (ceilings is { } c && c.CopyGBPerSecond > 0 && c.MatmulTFlopPerSecond > 0
            && double.IsFinite(c.CopyGBPerSecond) && double.IsFinite(c.MatmulTFlopPerSecond))
        {
            double ridge = Math.Log10(c.MatmulTFlopPerSecond * 1e3 / c.CopyGBPerSecond);
            min = Math.Min(min, Math.Floor(ridge) - 1);
            max = Math.Max(max, Math.Ceiling(ridge) + 1);
        }

        return double.IsFinite(min) && double.IsFinite(max) ? (min, max) : (-2, 3);
    }

    private static ScottPlot.TickGenerators.NumericAutomatic LogTicks() => new()
    {
        LabelFormatter = v => Math.Abs(v - Math.Round(v)) < 1e-9 ? Math.Pow(10, Math.Round(v)).ToString("G3", CultureInfo.InvariantCulture) : "",
        MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
        IntegerTicksOnly = true,
    };
}
