using ILGpuMoE.Kernels;
using ILGpuMoE.Perf;
using ILGpuMoE.Perf.Report;
using ILGpuMoE.Perf.Suite;

namespace ILGpuMoE.Tests.Perf;

/// <summary>
/// The bench's check phase at the tiny preset on the CPU accelerator: every registered case is set up on random data
/// and compared with the reference, nothing is timed. Correctness only (speed is never asserted).
/// </summary>
[TestFixture]
public class BenchCheckTests
{
    [Test]
    public void TinyPresetCheckPhase_EveryCaseMatchesTheReference()
    {
        var log = new List<string>();
        var args = BenchArgs.Parse(["--preset", "tiny", "--device", "cpu-emulator", "--check-only", "--tokens", "1,5"]);
        var report = BenchCommand.Execute(args, log.Add);

        var families = report.Cases.Select(c => c.Family.Split('/')[0]).Distinct().ToList();
        Assert.That(families, Is.SupersetOf(new[] { "dense", "attention", "moe", "quant" }), "families registered in the suite");
        Assert.That(report.Cases, Has.Count.GreaterThan(20));
        foreach (var c in report.Cases)
        {
            Assert.That(c.Status, Is.EqualTo("checked"), $"{c.Family} {c.Version} {c.DType} T={c.Tokens}: {c.Check?.Message ?? c.Error}");
            Assert.That(c.Check!.Compared, Is.GreaterThan(0));
            Assert.That(c.Timing, Is.Null, "check-only runs time nothing");
        }

        // The JSON report round-trips (NaN figures included).
        var back = Reports.FromJson(Reports.ToJson(report));
        Assert.That(back.Cases, Has.Count.EqualTo(report.Cases.Count));
    }

    [Test]
    public void Check_CatchesAWrongKernel()
    {
        // A case whose kernel output is off by one ulp-scale error in one element must be reported wrong, not timed.
        var good = new float[] { 1f, 2f, 3f };
        var bad = new float[] { 1f, 2.001f, 3f };
        Assert.That(Compare.Close(good, good, 1e-5, 1e-6, "same").Passed, Is.True);
        var r = Compare.Close(bad, good, 1e-5, 1e-6, "one off");
        Assert.That(r.Passed, Is.False);
        Assert.That(r.Message, Does.Contain("first at 1"));
        Assert.That(Compare.Close([float.NaN], [float.NaN], 1, 1, "nan").Passed, Is.False, "NaN never passes");
    }

    [TestCase("--preset", "nope")]
    [TestCase("--preset", "tiny", "--device", "tpu")]
    [TestCase("--preset", "tiny", "--tokens", "0")]
    [TestCase("--preset", "tiny", "--family", "nonsense")]
    [TestCase("--out")]
    [TestCase("--preset", "tiny", "--frobnicate")]
    [TestCase("--preset", "tiny", "--router", "bogus")]
    [TestCase("--preset", "tiny", "--router", "switch", "--capacity-factor", "x")]
    [TestCase("--preset", "tiny", "--noise-seed", "3")]
    public void BadArguments_AreOneLineUsageErrors(params string[] args)
    {
        var e = Assert.Throws<BenchUsageException>(() => BenchArgs.Parse(args));
        Assert.That(e!.Message, Does.Not.Contain("\n"));
    }

    [Test]
    public void RouterReachesTheEndToEndRun()
    {
        var a = BenchArgs.Parse(["--preset", "tiny", "--out", "x", "--router", "switch", "--capacity-factor", "0.5"]);
        Assert.That(a.Router!.Name, Is.EqualTo("switch"));
        Assert.That(a.Router.CapacityFactor, Is.EqualTo(0.5));
        Assert.That(BenchArgs.Parse(["--preset", "tiny", "--out", "x"]).Router, Is.Null);
    }

    [Test]
    public void FamilyPresets_HaveTheHubConfigsShapes()
    {
        // Qwen3-30B-A3B, Qwen3-235B-A22B and OLMoE-1B-7B as their config.json files give them.
        var q30 = Presets.Get("qwen3-30b-a3b");
        Assert.That((q30.Dim, q30.Hidden, q30.Experts, q30.TopK, q30.Heads, q30.KvHeads, q30.HeadDim, q30.Vocab), Is.EqualTo((2048, 768, 128, 8, 32, 4, 128, 151936)));
        var q235 = Presets.Get("qwen3-235b-a22b");
        Assert.That((q235.Dim, q235.Hidden, q235.Experts, q235.TopK, q235.Heads, q235.KvHeads), Is.EqualTo((4096, 1536, 128, 8, 64, 4)));
        var olmoe = Presets.Get("olmoe-1b-7b");
        Assert.That((olmoe.Dim, olmoe.Hidden, olmoe.Experts, olmoe.TopK, olmoe.Heads, olmoe.KvHeads, olmoe.Vocab), Is.EqualTo((2048, 1024, 64, 8, 16, 16, 50304)));
        Assert.That(Presets.Get("qwen-moe-a2.7b").SharedExpert, Is.EqualTo(5632));
    }

    [Test]
    public void Presets_HaveTheIssuesShapes()
    {
        var m = Presets.Get("mixtral-8x7b");
        Assert.That((m.Dim, m.Hidden, m.Experts, m.TopK, m.Heads, m.KvHeads, m.Vocab), Is.EqualTo((4096, 14336, 8, 2, 32, 8, 32000)));
        Assert.That(m.Tokens, Is.EqualTo(new[] { 1, 8, 64, 512, 4096 }));
        Assert.That(BenchArgs.Parse(["--preset", "tiny"]).Device, Is.EqualTo(DeviceChoice.CpuEmulator), "tiny runs on the CPU accelerator by default");
    }
}
