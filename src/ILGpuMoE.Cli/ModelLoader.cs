// Loads a model folder onto the chosen device for a command, with a progress bar on stderr while the weights stream
// to the device (only on a terminal: redirected stderr, logs and tests get no bar).
using ILGpuMoE.Kernels;
using ILGpuMoE.Quant;
using ILGpuMoE.Runtime;
using Spectre.Console;

namespace ILGpuMoE.Cli;

/// <summary>A device session and the model on it; dispose to free both.</summary>
public sealed class LoadedModel : IDisposable
{
    private LoadedModel(DeviceSession device, MoeModel model)
    {
        Device = device;
        Model = model;
    }

    public DeviceSession Device { get; }

    public MoeModel Model { get; }

    /// <summary>Checks the folder, opens the device, plans memory and uploads the weights.</summary>
    public static LoadedModel Open(CliIo io, DeviceChoice choice, string modelDir, int? maxSeq, QuantSpec? quant = null, Model.RouterChoice? router = null,
        KernelPolicy kernels = KernelPolicy.Auto)
    {
        if (!Directory.Exists(modelDir))
        {
            throw new CliUsageException(File.Exists(modelDir)
                ? $"--model {modelDir}: is a file; give the model folder (the one holding config.json)"
                : $"--model {modelDir}: no such model folder");
        }

        if (maxSeq is < 1)
            throw new CliUsageException($"--max-seq must be >= 1, got {maxSeq}");

        // Plan before touching the device: a wrong folder fails fast, without a context.
        MoeModel.PlanFor(modelDir, new ModelLoadOptions { MaxSeq = maxSeq, Quant = quant, Router = router });
        var device = DeviceSession.Open(choice, io.Err);
        try
        {
            var options = new ModelLoadOptions { MaxSeq = maxSeq, Quant = quant, Router = router, Kernels = kernels };
            MoeModel model;
            bool terminal = ReferenceEquals(io.Err, Console.Error) && !Console.IsErrorRedirected;
            if (terminal)
            {
                var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
                MoeModel? loaded = null;
                console.Progress()
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask("weights → device");
                        loaded = MoeModel.Load(device.Accelerator, modelDir, options with
                        {
                            Progress = new SyncProgress(p =>
                            {
                                io.Cancel.ThrowIfCancellationRequested();
                                task.MaxValue = Math.Max(1, p.BytesTotal);
                                task.Value = p.BytesDone;
                            }),
                        });
                    });
                model = loaded!;
            }
            else
            {
                // The progress reports (one per tensor) are where a Ctrl-C stops a long upload.
                model = MoeModel.Load(device.Accelerator, modelDir, options with { Progress = new SyncProgress(_ => io.Cancel.ThrowIfCancellationRequested()) });
            }

            return new LoadedModel(device, model);
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Model.Dispose();
        Device.Dispose();
    }

    /// <summary>IProgress that reports on the caller's thread (Progress&lt;T&gt; would post to a context).</summary>
    private sealed class SyncProgress(Action<LoadProgress> report) : IProgress<LoadProgress>
    {
        public void Report(LoadProgress value) => report(value);
    }
}
