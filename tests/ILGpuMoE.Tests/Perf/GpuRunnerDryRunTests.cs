using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Perf;

/// <summary>
/// The GPU runner (perf/gpu/run-device.sh) in its dry run on the CPU accelerator, under a budget too small for all its
/// steps: the steps come in order of value (devices with the CUDA line, the oracle check, the kernel benches, then end
/// to end and the rest), the runner stops before the budget, and what it ran is on disk (SUMMARY.txt closed by its
/// EXIT trap, the smoke step's bench.json complete). Speed is not asserted; only that the budget bounds the run.
/// </summary>
[TestFixture]
public class GpuRunnerDryRunTests
{
    private const int BudgetSeconds = 90;

    [Test]
    public void DryRun_RunsStepsInOrderOfValue_AndStopsWithinItsBudget()
    {
        if (OperatingSystem.IsWindows())
            Assert.Ignore("the runner is a bash script for Linux GPU machines");
        string root = Repo.Root();
        string outDir = Directory.CreateTempSubdirectory("ilgpumoe-dry-run-").FullName;
        try
        {
            var start = new ProcessStartInfo("bash")
            {
                ArgumentList = { Path.Combine(root, "perf", "gpu", "run-device.sh"), "--dry-run", "--out", outDir, "--budget-s", BudgetSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture) },
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            // The GPU bundle this test build carries (the runner's own fallback is the Release build of perf/ILGpuMoE.GpuBundle).
            start.Environment["ILGPUMOE_BENCH_BIN"] = Path.Combine(AppContext.BaseDirectory, "ilgpumoe-gpu");
            start.Environment.Remove("ILGPUMOE_INJECT_FAULT");
            start.Environment.Remove("ILGPUMOE_DEVICE");
            var clock = Stopwatch.StartNew();
            using var p = Process.Start(start)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromSeconds(BudgetSeconds + 60)))
            {
                p.Kill(entireProcessTree: true);
                Assert.Fail($"the runner ran {BudgetSeconds + 60} s on a {BudgetSeconds} s budget");
            }

            double wall = clock.Elapsed.TotalSeconds;
            string summary = File.ReadAllText(Path.Combine(outDir, "SUMMARY.txt"));
            string context = $"rc {p.ExitCode}\n{summary}\n{stdout.Result}\n{stderr.Result}";
            Assert.That(p.ExitCode, Is.EqualTo(0), context);

            // Order of value: each step's verdict line comes after the one before it.
            string[] steps = ["driver probe: CUDA:", "smoke:", "fixtures:", "mixtral-8x7b:", "e2e-mixtral-8x7b:", "torch:", "qwen-moe-a2.7b:", "deepseek-v3-moe:"];
            int at = -1;
            foreach (string step in steps)
            {
                int next = summary.IndexOf("== " + step, StringComparison.Ordinal);
                Assert.That(next, Is.GreaterThan(at), $"'{step}' missing or out of order\n{context}");
                at = next;
            }

            Assert.That(summary, Does.Contain("== smoke: ok"), context);
            Assert.That(summary, Does.Contain("SKIPPED (out of budget"), "a 90 s budget cannot hold every step: the runner must skip, not overrun\n" + context);
            var ended = Regex.Match(summary, @"runner ended after (\d+)s of a (\d+)s budget");
            Assert.That(ended.Success, Is.True, "the EXIT trap closes the summary\n" + context);
            Assert.That(int.Parse(ended.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), Is.LessThanOrEqualTo(BudgetSeconds), context);
            Assert.That(wall, Is.LessThan(BudgetSeconds + 30), "process time beyond the budget: only the summary and exit");

            // The oracle step's report is complete on disk, every case checked.
            using var smoke = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "smoke", "bench.json")));
            Assert.That(smoke.RootElement.GetProperty("state").GetString(), Is.EqualTo("complete"));
            var statuses = smoke.RootElement.GetProperty("cases").EnumerateArray().Select(c => c.GetProperty("status").GetString()).ToList();
            Assert.That(statuses, Is.Not.Empty.And.All.EqualTo("checked"), context);

            // A kernel step that started (on a slow machine it may be skipped) kept its timed cases on disk, however it
            // ended: complete, stopped by its --budget, or cut by the runner's limit.
            if (!summary.Contains("== mixtral-8x7b: SKIPPED", StringComparison.Ordinal))
            {
                using var kernels = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "mixtral-8x7b", "bench.json")));
                Assert.That(kernels.RootElement.GetProperty("cases").EnumerateArray().Count(c => c.GetProperty("status").GetString() == "ok"),
                    Is.GreaterThan(0), context);
            }
        }
        finally
        {
            Directory.Delete(outDir, recursive: true);
        }
    }
}
