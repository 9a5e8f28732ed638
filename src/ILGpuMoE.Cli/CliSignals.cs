// Ctrl-C (SIGINT) and SIGTERM for the real process (Program.Main; in-process tests pass their own token).
// The first signal only cancels CliIo.Cancel: the command stops at its next check, its temporary outputs are removed
// (CliOutput), CliErrors prints one "cancelled" line and the exit code is 130 (128 + SIGINT, what shells report for
// Ctrl-C). A second signal is the forced stop: pending temporaries are removed and the runtime's default handling ends
// the process at once, for a step that does not check the token (a long device call).
using System.Runtime.InteropServices;

namespace ILGpuMoE.Cli;

public sealed class CliSignals : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly PosixSignalRegistration[] _registrations;
    private int _signals;

    public CliSignals()
    {
        _registrations = [PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal), PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal)];
    }

    public CancellationToken Token => _cts.Token;

    private void OnSignal(PosixSignalContext context)
    {
        if (Interlocked.Increment(ref _signals) == 1)
        {
            context.Cancel = true;
            _cts.Cancel();
            return;
        }

        CliOutput.DeleteAllPending();
        context.Cancel = false;
    }

    public void Dispose()
    {
        foreach (var r in _registrations)
            r.Dispose();
        _cts.Dispose();
    }
}
