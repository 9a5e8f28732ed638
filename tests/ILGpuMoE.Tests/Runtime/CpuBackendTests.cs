using ILGpuMoE.Cli;
using ILGpuMoE.Kernels;
using ILGpuMoE.Runtime;
using ILGpuMoE.Tests.Cli;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Runtime;

/// <summary>
/// The CPU backend (KernelPolicy.Cpu, src/ILGpuMoE/Cpu) as a whole: no ILGPU launch, the same bits for any thread count,
/// the emulated kernels' logits on the shipped BF16 demo model, and the CLI's --device cpu / cpu-emulator / --threads.
/// (Its parity with llama.cpp and the oracle is RuntimeTests.Policies' third policy.)
/// </summary>
public class CpuBackendTests
{
    private static string Demo => Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", "mixtral-demo");

    private static readonly int[] Prompt = [1, 17, 300, 42, 999, 5, 5, 123, 7];

    private static (float[] Prefill, float[][] Decode, long Launches) Run(KernelPolicy policy, int? threads)
    {
        using var model = MoeModel.Load(TestDevice.Accelerator, Demo, new ModelLoadOptions { MaxSeq = 32, Kernels = policy, Threads = threads });
        using var session = model.NewSession();
        long before = KernelLaunches.Count;
        var prefill = session.Prefill(Prompt, allLogits: true);
        var decode = new[] { 4, 800, 61 }.Select(session.Decode).ToArray();
        return (prefill, decode, KernelLaunches.Count - before);
    }

    [Test]
    public void AForwardPassLaunchesNoKernel()
    {
        var (_, _, launches) = Run(KernelPolicy.Cpu, threads: 2);
        Assert.That(launches, Is.Zero, "prefill and decode on the CPU backend launched ILGPU kernels");
    }

    [Test]
    public void FloatWeightsAreReadInPlaceFromTheMemoryMap()
    {
        using (var model = MoeModel.Load(TestDevice.Accelerator, RuntimeTests.FixtureDir, new ModelLoadOptions { MaxSeq = 32, Kernels = KernelPolicy.Cpu }))
        {
            // Mixtral's experts are separate tensors: they are read where they lie too (one address per expert).
            Assert.That(model.MappedWeightBytes, Is.EqualTo(model.DeviceWeightBytes), "every float weight of the F32 fixture is mapped");
        }

        using var emulated = MoeModel.Load(TestDevice.Accelerator, RuntimeTests.FixtureDir, new ModelLoadOptions { MaxSeq = 32 });
        Assert.That(emulated.MappedWeightBytes, Is.Zero, "the ILGPU kernels read device buffers");
    }

    [Test]
    public void PackedWeightsAreHeldOnceInHostMemory()
    {
        var options = new ModelLoadOptions { MaxSeq = 32, Kernels = KernelPolicy.Cpu, Quant = ILGpuMoE.Quant.QuantSpec.Parse("int4-g32"),
            LmHeadQuant = ILGpuMoE.Quant.QuantSpec.Parse("int8") };
        using (var model = MoeModel.Load(TestDevice.Accelerator, RuntimeTests.FixtureDir, options))
        {
            // Everything is either mapped (embedding, norms, router) or packed in host memory (q/k/v/o, experts, lm_head).
            Assert.That(model.HostPackedWeightBytes, Is.GreaterThan(0));
            Assert.That(model.HostPackedWeightBytes + model.MappedWeightBytes, Is.EqualTo(model.DeviceWeightBytes), "no weight copied into ILGPU buffers");
            using var session = model.NewSession();
            Assert.That(session.Prefill([1, 2, 3], allLogits: false).All(float.IsFinite), Is.True);
        }

        using var emulated = MoeModel.Load(TestDevice.Accelerator, RuntimeTests.FixtureDir, options with { Kernels = KernelPolicy.Simple });
        Assert.That(emulated.HostPackedWeightBytes, Is.Zero, "the ILGPU kernels read device buffers");
    }

    [Test]
    public void LogitsAreTheSameBitsForAnyThreadCountAndRerun()
    {
        var one = Run(KernelPolicy.Cpu, threads: 1);
        var three = Run(KernelPolicy.Cpu, threads: 3);
        var again = Run(KernelPolicy.Cpu, threads: 3);
        Assert.That(one.Prefill.All(float.IsFinite), Is.True);
        Assert.That(three.Prefill, Is.EqualTo(one.Prefill).AsCollection, "prefill: 1 vs 3 threads");
        Assert.That(again.Prefill, Is.EqualTo(three.Prefill).AsCollection, "prefill: rerun at 3 threads");
        for (int i = 0; i < one.Decode.Length; i++)
        {
            Assert.That(three.Decode[i], Is.EqualTo(one.Decode[i]).AsCollection, $"decode step {i}: 1 vs 3 threads");
            Assert.That(again.Decode[i], Is.EqualTo(three.Decode[i]).AsCollection, $"decode step {i}: rerun");
        }
    }

    [Test]
    public void TheShippedBf16ModelGivesTheEmulatedKernelsLogits()
    {
        var cpu = Run(KernelPolicy.Cpu, threads: null);
        var emulated = Run(KernelPolicy.Simple, threads: null);
        // Both widen BF16 to F32 and sum in F32, in different orders: F32 rounding apart.
        RuntimeTests.CloseLogged(emulated.Prefill, cpu.Prefill, rtol: 1e-4, atol: 1e-5, what: "demo prefill: CPU backend vs emulated V1 kernels");
        for (int i = 0; i < cpu.Decode.Length; i++)
            RuntimeTests.CloseLogged(emulated.Decode[i], cpu.Decode[i], rtol: 1e-4, atol: 1e-5, what: $"demo decode step {i}");
        RuntimeTests.AssertArgmaxEqual(emulated.Prefill, cpu.Prefill, 1000, "demo prefill");
    }

    [Test]
    public void GenerateOnDeviceCpuSaysSoAndPrintsItsRates()
    {
        var run = CliRun.Of("--device", "cpu", "--threads", "2", "generate", "--model", Demo, "--prompt", "Once upon a time", "-n", "4", "--temperature", "0");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Err, Does.Contain("on CPU backend: cpu (2 threads)"));
        Assert.That(run.Err, Does.Match(@"prefill: [0-9.]+ tokens/s \| decode: [0-9.]+ tokens/s"));
        Assert.That(run.Err, Does.Contain("decode step: plain: the CPU backend"));
        Assert.That(run.Err, Does.Not.Contain("launches per token").And.Not.Contain("cuda graph"));
    }

    [Test]
    public void TheEmulatorIsStillThereByName()
    {
        var run = CliRun.Of("--device", "cpu-emulator", "generate", "--model", Demo, "--prompt", "Once", "-n", "1", "--temperature", "0");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Err, Does.Contain("on CPU    CPUAccelerator"));
        Assert.That(run.Err, Does.Contain("launches per token").Or.Contain("decode: no steps"));
    }

    [TestCase(new[] { "--device", "cpu", "generate", "--kernels", "tuned" }, "--kernels tuned")]
    [TestCase(new[] { "--device", "cpu-emulator", "--threads", "2", "generate" }, "--threads")]
    [TestCase(new[] { "--device", "cpu", "--threads", "0", "generate" }, "--threads must be in [1, 4096], got 0")]
    [TestCase(new[] { "--device", "cpu", "--threads", "many", "generate" }, "--threads")]
    public void BadCombinationsAreUsageErrors(string[] head, string message)
    {
        var run = CliRun.Of([.. head, "--model", Demo, "--prompt", "x", "-n", "1"]);
        Assert.That(run.AssertBadInput(), Does.Contain(message));
    }

    [Test]
    public void DevicesListsTheBackendAndTheEmulator()
    {
        var run = CliRun.Of("devices", "--device", "cpu-emulator");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Out, Does.Contain("CPU backend: cpu (").And.Contain("cpu-emulator"));
        Assert.That(run.Out, Does.Contain("--device cpu-emulator picks: CPU    CPUAccelerator"));
        Assert.That(LoadedModel.PolicyFor(DeviceChoice.Auto, cpuPicked: true, KernelPolicy.Auto, threads: null), Is.EqualTo(KernelPolicy.Cpu),
            "auto on a machine without a GPU runs the CPU backend");
        Assert.That(LoadedModel.PolicyFor(DeviceChoice.Auto, cpuPicked: true, KernelPolicy.Tuned, threads: null), Is.EqualTo(KernelPolicy.Tuned),
            "asking for ILGPU kernel versions keeps the emulator");
        Assert.That(LoadedModel.PolicyFor(DeviceChoice.CpuEmulator, cpuPicked: true, KernelPolicy.Auto, threads: null), Is.EqualTo(KernelPolicy.Auto));
    }
}
