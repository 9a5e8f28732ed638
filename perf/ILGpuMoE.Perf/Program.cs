// ilgpumoe-bench: the benchmark executable. `ilgpumoe bench ...` forwards here (perf/NOTES.md says why it is a
// separate executable). The first argument may be the verb: bench (default) or host (BenchmarkDotNet host paths).
using Spectre.Console;

namespace ILGpuMoE.Perf;

public static class Program
{
    public static int Main(string[] args)
    {
        var rest = args.AsSpan();
        string verb = rest.Length > 0 && !rest[0].StartsWith('-') ? rest[0] : "bench";
        if (rest.Length > 0 && !rest[0].StartsWith('-'))
            rest = rest[1..];
        try
        {
            return verb switch
            {
                "bench" => BenchCommand.Run(rest.ToArray(), CreateConsole(), Console.Error),
                _ => Usage($"unknown command '{verb}'"),
            };
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"error: unexpected {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
            if (Environment.GetEnvironmentVariable("ILGPUMOE_DEBUG") is "1" or "true")
                Console.Error.WriteLine(e);
            return 1;
        }
    }

    /// <summary>Stdout console; when redirected (CI, the GPU runner's log) it is 200 columns wide instead of 80.</summary>
    public static IAnsiConsole CreateConsole()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out) });
        if (Console.IsOutputRedirected)
            console.Profile.Width = 200;
        return console;
    }

    private static int Usage(string why)
    {
        Console.Error.WriteLine($"error: {why} (commands: bench, host; {BenchArgs.Usage})");
        return 2;
    }
}
