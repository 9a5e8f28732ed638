using Spectre.Console;

namespace ILGpuMoE.Cli;

/// <summary>
/// Where a command writes: plain writers for stdout/stderr and a Spectre console over stdout for tables.
/// Tests pass StringWriters; colours and ANSI codes appear only on a real terminal.
/// </summary>
public sealed class CliIo
{
    public CliIo(TextWriter output, TextWriter error)
    {
        Out = output;
        Err = error;
        var terminal = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected;
        Ansi = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        // Redirected output (files, tests, CI logs) gets a width wide enough that table rows never wrap.
        if (!terminal)
            Ansi.Profile.Width = 160;
    }

    public TextWriter Out { get; }

    public TextWriter Err { get; }

    /// <summary>Spectre console writing to <see cref="Out"/>.</summary>
    public IAnsiConsole Ansi { get; }

    public static CliIo Standard() => new(Console.Out, Console.Error);
}
