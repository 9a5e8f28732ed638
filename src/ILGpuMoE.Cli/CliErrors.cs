// The CLI's one error policy, applied around every command by Program:
//   exit 0  success;
//   exit 2  bad input (a file, a config, a checkpoint, a device, a CLI argument): exactly one line on stderr
//           naming what and where, no stack trace;
//   exit 1  anything unexpected (a bug): one line on stderr, plus the stack trace when ILGPUMOE_DEBUG=1;
//   exit 130 cancelled (Ctrl-C / SIGTERM, CliSignals): the command threw OperationCanceledException; one line "cancelled".
// Commands only throw typed exceptions; a new kind of bad input joins by being listed in IsBadInput.
using System.Reflection;
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Cli;

/// <summary>A bad command line or environment (unknown device, a device that is not there): exit code 2.</summary>
public sealed class CliUsageException(string message) : Exception(message);

public static class CliErrors
{
    public const int Ok = 0;
    public const int Unexpected = 1;
    public const int BadInput = 2;
    public const int Cancelled = 130;
    public const string CancelledMessage = "cancelled";
    public const string DebugVariable = "ILGPUMOE_DEBUG";

    /// <summary>Runs <paramref name="body"/> under the policy above, writing errors to <paramref name="err"/> (stderr by default).</summary>
    public static int Run(Func<int> body, TextWriter? err = null)
    {
        ArgumentNullException.ThrowIfNull(body);
        err ??= Console.Error;
        try
        {
            return body();
        }
        catch (Exception thrown)
        {
            var e = Unwrap(thrown);
            if (e is OperationCanceledException)
            {
                err.WriteLine(CancelledMessage);
                return Cancelled;
            }

            if (IsBadInput(e))
            {
                err.WriteLine($"error: {OneLine(e.Message)}");
                return BadInput;
            }

            err.WriteLine($"error: unexpected {e.GetType().Name}: {OneLine(e.Message)}" +
                          (Debug ? "" : $" (set {DebugVariable}=1 for the stack trace)"));
            if (Debug)
                err.WriteLine(e.ToString());
            return Unexpected;
        }
    }

    /// <summary>Exceptions that mean "the input is wrong", not "the program is wrong".</summary>
    public static bool IsBadInput(Exception e) => e is
        CliUsageException or
        ModelConfigException or
        ModelValidationException or
        ILGpuMoE.Runtime.RuntimeInputException or
        ILGpuMoE.Tokenizer.TokenizerException or
        SafeTensorsException or
        InvalidDataException or
        FileNotFoundException or
        DirectoryNotFoundException or
        UnauthorizedAccessException;

    private static bool Debug => Environment.GetEnvironmentVariable(DebugVariable) is "1" or "true";

    private static Exception Unwrap(Exception e)
    {
        while (true)
        {
            switch (e)
            {
                case TargetInvocationException { InnerException: { } inner }:
                    e = inner;
                    continue;
                case AggregateException { InnerExceptions.Count: 1 } agg:
                    e = agg.InnerExceptions[0];
                    continue;
                default:
                    return e;
            }
        }
    }

    /// <summary>Messages must stay on one line: newlines become spaces.</summary>
    public static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();
}
