// The CUDA driver search (kernels/ILGpuMoE.Kernels/Common/CudaDriver.cs) against a stub libcuda.so.1 built here with the
// C compiler. The driver library ILGPU binds is fixed once per process, so everything that loads a driver runs the
// built CLI in a child process (CliRun.InChild) and this process's ILGPU state stays as it was.
using System.Diagnostics;
using System.Runtime.InteropServices;
using ILGpuMoE.Kernels;
using ILGpuMoE.Runtime;

namespace ILGpuMoE.Tests.Cli;

[NonParallelizable]
public class CudaDriverTests
{
    // The stub answers like a driver on a machine without a GPU: cuInit returns STUB_CUINIT (default 100,
    // CUDA_ERROR_NO_DEVICE); cuDeviceGetCount says CUDA_ERROR_NOT_INITIALIZED (3) unless cuInit succeeded, then 0
    // devices; cuDriverGetVersion says 12040 (12.4). Each cuInit call appends a line to STUB_LOG, so a test can see that
    // ILGPU itself, not only our probe, called into the stub.
    private const string StubSource = """
        #include <stdio.h>
        #include <stdlib.h>
        static int initialized;
        int cuInit(unsigned int flags) {
            const char* log = getenv("STUB_LOG");
            if (log) { FILE* f = fopen(log, "a"); if (f) { fputs("cuInit\n", f); fclose(f); } }
            const char* answer = getenv("STUB_CUINIT");
            int r = answer ? atoi(answer) : 100;
            initialized = r == 0;
            return r;
        }
        int cuDriverGetVersion(int* version) { *version = 12040; return 0; }
        int cuDeviceGetCount(int* count) { *count = 0; return initialized ? 0 : 3; }
        """;

    private string _dir = null!;
    private string? _stub;

    [OneTimeSetUp]
    public void BuildStub()
    {
        _dir = Directory.CreateTempSubdirectory("ilgpumoe-libcuda-").FullName;
        if (!OperatingSystem.IsLinux())
            return;
        var source = Path.Combine(_dir, "stub.c");
        File.WriteAllText(source, StubSource);
        var target = Path.Combine(_dir, "libcuda.so.1");
        var compiler = Environment.GetEnvironmentVariable("CC") ?? "cc";
        var start = new ProcessStartInfo(compiler) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "-shared", "-fPIC", "-o", target, source })
            start.ArgumentList.Add(a);
        try
        {
            using var cc = Process.Start(start)!;
            var err = cc.StandardError.ReadToEnd();
            cc.WaitForExit();
            Assert.That(cc.ExitCode, Is.EqualTo(0), $"{compiler} failed on the stub driver: {err}");
            _stub = target;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            // No compiler: the stub tests are ignored (Stub() says why); the others still run.
        }
    }

    [OneTimeTearDown]
    public void RemoveStub() => Directory.Delete(_dir, recursive: true);

    private string Stub()
    {
        if (!OperatingSystem.IsLinux())
            Assert.Ignore("the stub driver is a Linux shared object; this OS loads its driver differently");
        if (_stub is null)
            Assert.Ignore("no C compiler ($CC or cc on PATH): cannot build the stub libcuda.so.1 these tests load");
        return _stub;
    }

    private static string CudaLine(CliRun run)
    {
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        var lines = run.OutLines.Where(l => l.StartsWith("CUDA: ", StringComparison.Ordinal)).ToList();
        Assert.That(lines, Has.Count.EqualTo(1), run.Out);
        return lines[0];
    }

    [Test]
    public void DevicesNamesTheStubFileAndCuInitsAnswer()
    {
        var stub = Stub();
        var log = Path.Combine(_dir, "calls-no-device.log");
        var run = CliRun.InChild(new Dictionary<string, string> { [ProcessEnvironment.LibCudaVariable] = stub, ["STUB_LOG"] = log }, "devices");

        var line = CudaLine(run);
        Assert.That(line, Does.StartWith($"CUDA: {ProcessEnvironment.LibCudaVariable}={stub} loaded"));
        Assert.That(line, Does.Contain("driver API 12.4"), "12040 = 12 * 1000 + 4 * 10");
        Assert.That(line, Does.EndWith("cuInit: CUDA_ERROR_NO_DEVICE"), "cuDeviceGetCount is not asked after cuInit failed");
        Assert.That(run.Out, Does.Contain("auto picks: CPU"), "ILGPU, with the failing driver bound, still lists the CPU accelerator");

        // One cuInit is our probe's; any other is ILGPU's own, through the resolver: ILGPU bound `cuda` to the stub,
        // saw cuInit fail and listed no CUDA device instead of crashing.
        var calls = File.ReadAllLines(log);
        Assert.That(calls, Has.Length.GreaterThanOrEqualTo(2), "ILGPU did not call the stub: its `cuda` import did not reach the resolver");
        Assert.That(run.Out, Does.Not.Contain("Cuda "), "no CUDA row in the device table");
    }

    [Test]
    public void DeviceCudaWithNoDeviceIsOneLineExit2()
    {
        var stub = Stub();
        var env = new Dictionary<string, string> { [ProcessEnvironment.LibCudaVariable] = stub };

        var devices = CliRun.InChild(env, "--device", "cuda", "devices");
        var line = devices.AssertBadInput();
        Assert.That(line, Does.Contain("--device cuda: no CUDA device is visible to ILGPU"));
        Assert.That(line, Does.Contain(stub).And.Contain("cuInit: CUDA_ERROR_NO_DEVICE"));
        Assert.That(devices.Out, Is.Empty, "nothing is listed before the usage error");

        // A command that runs kernels fails the same way, before writing anything.
        var output = Path.Combine(_dir, "logits.safetensors");
        var logits = CliRun.InChild(env, "--device", "cuda", "logits",
            "--model", Path.Combine(AppContext.BaseDirectory, "TestData", "mixtral-demo"), "--tokens", "1,2,3", "--out", output);
        Assert.That(logits.AssertBadInput(), Is.EqualTo(line));
        Assert.That(File.Exists(output), Is.False);
    }

    [Test]
    public void DeviceCudaWhenTheDriverCountsNoDeviceSaysSo()
    {
        var stub = Stub();
        var run = CliRun.InChild(
            new Dictionary<string, string> { [ProcessEnvironment.LibCudaVariable] = stub, ["STUB_CUINIT"] = "0" }, "--device", "cuda", "devices");
        Assert.That(run.AssertBadInput(), Does.EndWith("cuInit: CUDA_SUCCESS; 0 device(s))"));
    }

    [Test]
    public void TheStubFoundThroughTheLoaderSearchShowsItsPath()
    {
        // No ILGPUMOE_LIBCUDA: libcuda.so is missing from the stub's folder, libcuda.so.1 is found there by the loader's
        // own search, and the line gives the file it mapped.
        var stub = Stub();
        var path = Environment.GetEnvironmentVariable("LD_LIBRARY_PATH");
        var run = CliRun.InChild(
            new Dictionary<string, string> { ["LD_LIBRARY_PATH"] = string.IsNullOrEmpty(path) ? _dir : $"{_dir}:{path}" }, "devices");
        var line = CudaLine(run);
        if (line.StartsWith("CUDA: libcuda.so (", StringComparison.Ordinal) && !line.Contains(stub, StringComparison.Ordinal))
            Assert.Ignore($"this machine has a libcuda.so, which is tried before the stub's libcuda.so.1: {line}");
        Assert.That(line, Does.StartWith($"CUDA: libcuda.so.1 ({stub}) loaded"), "the name that loaded and the file the loader mapped");
        Assert.That(line, Does.Contain("cuInit: CUDA_ERROR_NO_DEVICE"));
    }

    [Test]
    public void AMissingLibcudaIsListedWithEveryNameTried()
    {
        var missing = Path.Combine(_dir, "absent", "libcuda.so.1");
        var env = new Dictionary<string, string> { [ProcessEnvironment.LibCudaVariable] = missing };
        var line = CudaLine(CliRun.InChild(env, "devices"));

        Assert.That(line, Does.Contain($"{ProcessEnvironment.LibCudaVariable}={missing}: "), "the variable's value and the loader's reason");
        if (line.StartsWith("CUDA: no driver library", StringComparison.Ordinal))
        {
            // No driver on this machine (the CPU CI machine): all three names, in order, each with a reason.
            var tried = line.IndexOf(ProcessEnvironment.LibCudaVariable, StringComparison.Ordinal);
            var so = line.IndexOf(", libcuda.so: ", StringComparison.Ordinal);
            var so1 = line.IndexOf(", libcuda.so.1: ", StringComparison.Ordinal);
            Assert.That(tried, Is.GreaterThan(0));
            Assert.That(so, Is.GreaterThan(tried));
            Assert.That(so1, Is.GreaterThan(so));
        }
        else
        {
            // A machine with a driver: it is used, and the line says the variable's file was skipped.
            Assert.That(line, Does.Contain("loaded (skipped " + ProcessEnvironment.LibCudaVariable));
        }

        var run = CliRun.InChild(env, "--device", "cuda", "devices");
        if (run.ExitCode != 0)
            Assert.That(run.AssertBadInput(), Does.Contain(line), "the usage error carries the same CUDA line");
    }

    [Test]
    public void CuResultsAreNamedFromCudaH()
    {
        Assert.That(CudaDriver.ResultName(0), Is.EqualTo("CUDA_SUCCESS"));
        Assert.That(CudaDriver.ResultName(3), Is.EqualTo("CUDA_ERROR_NOT_INITIALIZED"));
        Assert.That(CudaDriver.ResultName(34), Is.EqualTo("CUDA_ERROR_STUB_LIBRARY"), "named by our table, not ILGPU's enum");
        Assert.That(CudaDriver.ResultName(100), Is.EqualTo("CUDA_ERROR_NO_DEVICE"));
        Assert.That(CudaDriver.ResultName(803), Is.EqualTo("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"));
        Assert.That(CudaDriver.ResultName(12345), Is.EqualTo("CUresult 12345"));
    }

    [Test]
    public void TheResolverIsInstalledOnceFromAnyThread()
    {
        // Devices.CreateContext may have installed it in this process already; more calls, concurrent ones too, are no-ops.
        Assert.DoesNotThrow(() => Parallel.For(0, 8, _ => CudaDriver.InstallResolver()));
        // .NET takes one resolver per assembly: a second one for ILGPU's is refused, so ours is the one in place.
        Assert.Throws<InvalidOperationException>(() =>
            NativeLibrary.SetDllImportResolver(typeof(ILGPU.Context).Assembly, (_, _, _) => IntPtr.Zero));
    }
}
