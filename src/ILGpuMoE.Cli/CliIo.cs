using Spectre.Console;

namespace ILGpuMoE.Cli;

/// <summary>
/// Where a command writes: plain writers for stdout/stderr and a Spectre console over stdout for tables.
/// Tests pass StringWriters; colours and ANSI codes appear only on a real terminal. <see cref="Cancel"/> is set by
/// Ctrl-C / SIGTERM (CliSignals) in the real process; long commands check it between steps.
/// </summary>
public sealed class CliIo
{
    public CliIo(TextWriter output, TextWriter error, CancellationToken cancel = default)
    {
        Out = output;
        Err = error;
        Cancel = cancel;
        Ansi = ConsoleOver(output, ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected);
        ErrAnsi = ConsoleOver(error, ReferenceEquals(error, Console.Error) && !Console.IsErrorRedirected);
    }

    private static IAnsiConsole ConsoleOver(TextWriter writer, bool terminal)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        // Redirected output (files, tests, CI logs) gets a width wide enough that table rows never wrap.
        if (!terminal)
            console.Profile.Width = 160;
        return console;
    }

    public TextWriter Out { get; }

    public TextWriter Err { get; }

    /// <summary>Spectre console writing to <see cref="Out"/>.</summary>
    public IAnsiConsole Ansi { get; }

    /// <summary>Spectre console writing to <see cref="Err"/> (generate's statistics tables).</summary>
    public IAnsiConsole ErrAnsi { get; }

    /// <summary>Cancelled on the first SIGINT / SIGTERM.</summary>
    public CancellationToken Cancel { get; }

    public static CliIo Standard(CancellationToken cancel = default) => new(Console.Out, Console.Error, cancel);
}
