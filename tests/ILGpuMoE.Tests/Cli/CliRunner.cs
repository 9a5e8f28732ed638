using System.Diagnostics;
using ILGpuMoE.Cli;

namespace ILGpuMoE.Tests.Cli;

/// <summary>Runs the CLI's entry in-process with captured stdout/stderr.</summary>
public sealed record CliRun(int ExitCode, string Out, string Err, TimeSpan Elapsed)
{
    public static CliRun Of(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var clock = Stopwatch.StartNew();
        var code = Program.Run(args, output, error);
        return new CliRun(code, output.ToString(), error.ToString(), clock.Elapsed);
    }

    public string[] ErrLines => Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>The bad-input contract: exit 2, exactly one line on stderr, no stack trace, quick.</summary>
    public string AssertBadInput()
    {
        Assert.That(ExitCode, Is.EqualTo(2), $"stdout: {Out}\nstderr: {Err}");
        Assert.That(ErrLines, Has.Length.EqualTo(1), Err);
        Assert.That(Err, Does.StartWith("error: "));
        Assert.That(Err, Does.Not.Contain(" at ILGpuMoE").And.Not.Contain("Exception:"));
        Assert.That(Elapsed, Is.LessThan(TimeSpan.FromSeconds(10)));
        return ErrLines[0];
    }
}
