using ILGpuMoE.Cli;

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
        Assert.That(run.Out, Does.Contain("--device cpu picks: CPU"));
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
