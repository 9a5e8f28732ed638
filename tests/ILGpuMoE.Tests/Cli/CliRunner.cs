using System.Diagnostics;
using ILGpuMoE.Cli;

namespace ILGpuMoE.Tests.Cli;

/// <summary>Runs the CLI's entry in-process with captured stdout/stderr (Of), or the built CLI in a child process (InChild).</summary>
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

    /// <summary>Runs the built CLI (ilgpumoe.dll, copied next to the tests) in a child process, for what is fixed once per
    /// process, such as the CUDA driver library ILGPU binds. The child inherits this environment except the ILGPUMOE_
    /// variables, which it gets only from <paramref name="environment"/>.</summary>
    public static CliRun InChild(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var clock = Stopwatch.StartNew();
        using var child = Process.Start(ChildStart(environment, args)) ?? throw new InvalidOperationException("could not start the CLI");
        var output = child.StandardOutput.ReadToEndAsync();
        var error = child.StandardError.ReadToEndAsync();
        if (!child.WaitForExit(TimeSpan.FromSeconds(120)))
        {
            child.Kill(entireProcessTree: true);
            Assert.Fail($"ilgpumoe {string.Join(' ', args)} did not finish in 120 s");
        }

        return new CliRun(child.ExitCode, output.Result, error.Result, clock.Elapsed);
    }

    /// <summary>How InChild starts the built CLI (stdout and stderr redirected), for a test that drives the process itself.</summary>
    public static ProcessStartInfo ChildStart(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var start = new ProcessStartInfo(DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "ilgpumoe.dll"));
        foreach (var a in args)
            start.ArgumentList.Add(a);
        foreach (var name in start.Environment.Keys.Where(k => k.StartsWith("ILGPUMOE_", StringComparison.Ordinal)).ToList())
            start.Environment.Remove(name);
        foreach (var (name, value) in environment)
            start.Environment[name] = value;
        return start;
    }

    /// <summary>The dotnet host running these tests (the test host is `dotnet testhost.dll`), else the one on PATH.</summary>
    private static string DotnetHost()
    {
        var self = Environment.ProcessPath;
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet")
            return self;
        return Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet";
    }

    public string[] OutLines => Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);

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
