using System.Diagnostics;
using System.Text.Json;
using ILGpuMoE.Perf;
using ILGpuMoE.Perf.Suite;
using Spectre.Console;

namespace ILGpuMoE.Tests.Perf;

/// <summary>
/// Keep every result: a CUDA fault in one case (injected with ILGPUMOE_INJECT_FAULT, handled exactly as ILGPU's
/// CudaException) is recorded by name and the run goes on with a fresh accelerator; a case that hangs past
/// --case-timeout-s leaves the report on disk and exit code 3. Tiny preset, one family, CPU accelerator; what is checked
/// is bench.json as the run left it on disk. Speed is not asserted.
/// </summary>
[TestFixture]
[NonParallelizable] // sets ILGPUMOE_INJECT_FAULT for the process while the in-process run parses its arguments
public class BenchFaultTests
{
    private string dir = "";

    [SetUp]
    public void SetUp() => dir = Directory.CreateTempSubdirectory("ilgpumoe-bench-fault-").FullName;

    [TearDown]
    public void TearDown()
    {
        Environment.SetEnvironmentVariable(FaultInjection.Variable, null);
        Directory.Delete(dir, recursive: true);
    }

    [Test]
    public void InjectedFault_IsRecordedByName_AndTheOtherCasesKeepTheirFigures()
    {
        Environment.SetEnvironmentVariable(FaultInjection.Variable, "moe/gating/v2");
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(new StringWriter()) });
        var err = new StringWriter();
        int rc = BenchCommand.Run(["--preset", "tiny", "--device", "cpu-emulator", "--family", "gating", "--tokens", "1,5", "--no-e2e", "--out", dir], console, err);

        Assert.That(rc, Is.EqualTo(1), err.ToString());
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "bench.json")));
        var root = json.RootElement;
        var cases = root.GetProperty("cases").EnumerateArray().ToList();
        var faulted = cases.Where(c => c.GetProperty("version").GetString() == "v2").ToList();
        var others = cases.Where(c => c.GetProperty("version").GetString() == "v1").ToList();
        Assert.That(faulted.Select(c => c.GetProperty("tokens").GetInt32()), Is.EqualTo(new[] { 1, 5 }), "both token counts of the target ran and failed");
        foreach (var c in faulted)
        {
            Assert.That(c.GetProperty("family").GetString(), Is.EqualTo("moe/gating"));
            Assert.That(c.GetProperty("status").GetString(), Is.EqualTo("fault"));
            Assert.That(c.GetProperty("errorName").GetString(), Is.EqualTo("CUDA_ERROR_ILLEGAL_ADDRESS"));
            Assert.That(c.GetProperty("shape").GetString(), Is.Not.Empty, "the case's parameters are kept");
            Assert.That(c.GetProperty("timing").ValueKind, Is.EqualTo(JsonValueKind.Null));
        }

        Assert.That(others, Has.Count.EqualTo(2));
        foreach (var c in others)
        {
            // Each v1 case ran after a fault (T=5 after T=1's v2): on the fresh accelerator it still checks and times.
            Assert.That(c.GetProperty("status").GetString(), Is.EqualTo("ok"), c.ToString());
            Assert.That(c.GetProperty("timing").GetProperty("medianSeconds").GetDouble(), Is.GreaterThan(0));
        }

        Assert.That(root.GetProperty("deviceRestarts").GetInt32(), Is.EqualTo(2), "one fresh accelerator per fault");
        Assert.That(root.GetProperty("state").GetString(), Is.EqualTo("complete"));
        Assert.That(File.ReadAllText(Path.Combine(dir, "bench.md")), Does.Contain("CUDA_ERROR_ILLEGAL_ADDRESS"));
        Assert.That(Directory.GetFiles(dir, "*.tmp"), Is.Empty, "every write was renamed into place");
    }

    [Test]
    public void HangPastCaseTimeout_WritesTheReportAndExits3()
    {
        // A hang cannot be interrupted in-process (the watchdog ends the process), so this one runs the bench as a child.
        string bench = Path.Combine(AppContext.BaseDirectory, OperatingSystem.IsWindows() ? "ilgpumoe-bench.exe" : "ilgpumoe-bench");
        if (!File.Exists(bench))
            Assert.Ignore($"no {bench} next to the tests (the perf project's apphost)");
        var start = new ProcessStartInfo(bench)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            Environment = { [FaultInjection.Variable] = "moe/gating/v2=hang" },
        };
        foreach (var a in new[] { "bench", "--preset", "tiny", "--device", "cpu-emulator", "--family", "gating", "--tokens", "1", "--check-only", "--case-timeout-s", "2", "--out", dir })
            start.ArgumentList.Add(a);
        using var p = Process.Start(start)!;
        var stderr = p.StandardError.ReadToEndAsync();
        _ = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("the watchdog did not end the process within 120 s");
        }

        Assert.That(p.ExitCode, Is.EqualTo(BenchRun.TimeoutExitCode), stderr.Result);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "bench.json")));
        var root = json.RootElement;
        Assert.That(root.GetProperty("state").GetString(), Is.EqualTo("timeout"));
        var cases = root.GetProperty("cases").EnumerateArray().ToList();
        Assert.That(cases.Select(c => (c.GetProperty("version").GetString(), c.GetProperty("status").GetString())),
            Is.EqualTo(new[] { ("v1", "checked"), ("v2", "timeout") }), "the case before the hang is kept; the hung one is named");
        Assert.That(cases[1].GetProperty("errorName").GetString(), Is.EqualTo(CudaFaults.CaseTimeout));
    }

    [Test]
    public void Report_IsSavedAfterEveryCase()
    {
        var saved = new List<(int Cases, string State)>();
        var args = BenchArgs.Parse(["--preset", "tiny", "--device", "cpu-emulator", "--family", "gating", "--tokens", "1,5", "--check-only"]);
        var report = BenchCommand.Execute(args, _ => { }, r => saved.Add((r.Cases.Count, r.State)));

        Assert.That(report.Cases, Has.Count.EqualTo(4));
        // Once before the first case, once after each of the 4, once at the end: a kill after case i leaves i cases.
        Assert.That(saved.Select(x => x.Cases), Is.EqualTo(new[] { 0, 1, 2, 3, 4, 4 }));
        Assert.That(saved.Take(5).Select(x => x.State), Is.All.EqualTo("running"));
        Assert.That(saved[^1].State, Is.EqualTo("complete"));
    }

    [TestCase("moe/gating/v2", "moe/gating/v2", "CUDA_ERROR_ILLEGAL_ADDRESS")]
    [TestCase("quant/gemv/v1=CUDA_ERROR_LAUNCH_FAILED", "quant/gemv/v1", "CUDA_ERROR_LAUNCH_FAILED")]
    public void Injection_ThrowsTheNamedErrorOnlyForItsTarget(string spec, string target, string error)
    {
        var faults = FaultInjection.Parse(spec);
        Assert.DoesNotThrow(() => faults.Strike("moe/gating/v1"));
        var e = Assert.Throws<InjectedCudaFaultException>(() => faults.Strike(target));
        Assert.That(CudaFaults.NameOf(e), Is.EqualTo(error));
        Assert.That(CudaFaults.NameOf(new AggregateException(new InvalidOperationException("x", e))), Is.EqualTo(error), "found inside wrappers");
        Assert.That(CudaFaults.NameOf(new InvalidOperationException("not CUDA")), Is.Null);
        Assert.That(faults.Unused, Is.Empty);
    }

    [TestCase("moe")]
    [TestCase("moe/gating/v2=CUDA_ERROR_NOT_A_THING")]
    [TestCase("moe/gating/v2=CUDA_SUCCESS")]
    public void BadInjectionSwitch_IsAOneLineUsageError(string spec)
    {
        Environment.SetEnvironmentVariable(FaultInjection.Variable, spec);
        var e = Assert.Throws<BenchUsageException>(() => BenchArgs.Parse(["--preset", "tiny"]));
        Assert.That(e!.Message, Does.Contain(FaultInjection.Variable).And.Not.Contain("\n"));
    }
}
