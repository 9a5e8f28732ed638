using ILGpuMoE.Cli;
using ILGpuMoE.Kernels;

namespace ILGpuMoE.Tests.Cli;

public class CliBehaviourTests
{
    [Test]
    public void UnknownCommandIsBadInput() =>
        Assert.That(CliRun.Of("frobnicate").AssertBadInput(), Does.Contain("frobnicate"));

    [Test]
    public void NoCommandIsBadInput() => CliRun.Of().AssertBadInput();

    [Test]
    public void MissingArgumentIsBadInput() => Assert.That(CliRun.Of("inspect").AssertBadInput(), Does.Contain("inspect"));

    [Test]
    public void UnknownDeviceIsBadInput() =>
        Assert.That(CliRun.Of("--device", "tpu", "devices").AssertBadInput(), Does.Contain("--device").And.Contain("tpu"));

    [Test]
    public void HelpExitsZero()
    {
        var run = CliRun.Of("--help");
        Assert.That(run.ExitCode, Is.EqualTo(0));
        Assert.That(run.Out, Does.Contain("inspect").And.Contain("devices").And.Contain("--device"));
    }

    [Test]
    public void DevicesListsTheCpuAcceleratorAndAutosPick()
    {
        var run = CliRun.Of("devices", "--device", "cpu");
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Err);
        Assert.That(run.Out, Does.Contain("CPU").And.Contain("warp 32"));
        Assert.That(run.Out, Does.Contain("auto picks: "));
        Assert.That(run.Out, Does.Contain("--device cpu picks: CPU backend"));
    }

    [Test]
    public void AutoSaysWhichDeviceItPickedOnStderr()
    {
        var err = new StringWriter();
        using (var session = DeviceSession.Open(DeviceChoice.Auto, err))
            Assert.That(err.ToString(), Does.StartWith("device (auto): " + session.Device.AcceleratorType));

        var quiet = new StringWriter();
        using (var cpu = DeviceSession.Open(DeviceChoice.Cpu, quiet))
        {
            Assert.That(cpu.Accelerator.AcceleratorType, Is.EqualTo(ILGPU.Runtime.AcceleratorType.CPU));
            Assert.That(cpu.Accelerator.WarpSize, Is.EqualTo(32));
        }

        Assert.That(quiet.ToString(), Is.Empty, "an explicit device is not announced");
    }

    [Test]
    public void UnexpectedExceptionIsOneLineWithExitOne()
    {
        var err = new StringWriter();
        var previous = Environment.GetEnvironmentVariable(CliErrors.DebugVariable);
        try
        {
            Environment.SetEnvironmentVariable(CliErrors.DebugVariable, null);
            var code = CliErrors.Run(() => throw new InvalidOperationException("boom\nsecond line"), err);
            Assert.That(code, Is.EqualTo(1));
            Assert.That(err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(1));
            Assert.That(err.ToString(), Does.Contain("InvalidOperationException: boom second line"));

            Environment.SetEnvironmentVariable(CliErrors.DebugVariable, "1");
            var debug = new StringWriter();
            Assert.That(CliErrors.Run(() => throw new InvalidOperationException("boom"), debug), Is.EqualTo(1));
            Assert.That(debug.ToString(), Does.Contain(" at "), "the stack trace is printed under ILGPUMOE_DEBUG=1");
        }
        finally
        {
            Environment.SetEnvironmentVariable(CliErrors.DebugVariable, previous);
        }
    }

    [Test]
    public void BadInputExceptionsMapToExitTwo()
    {
        var err = new StringWriter();
        Assert.That(CliErrors.Run(() => throw new InvalidDataException("x.bin: bad"), err), Is.EqualTo(2));
        Assert.That(err.ToString().TrimEnd(), Is.EqualTo("error: x.bin: bad"));
        Assert.That(CliErrors.Run(() => 0, err), Is.EqualTo(0));
    }
}
