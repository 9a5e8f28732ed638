// Loads a model folder onto the chosen device for a command, with a progress bar on stderr while the weights stream
// to the device (only on a terminal: redirected stderr, logs and tests get no bar).
// Which engine runs it: --device cpu, or auto on a machine without a GPU (and no --kernels), is the CPU backend
// (KernelPolicy.Cpu, --threads workers); --device cpu-emulator runs the ILGPU kernels on ILGPU's CPU accelerator.
using ILGpuMoE.Kernels;
using ILGpuMoE.Quant;
using ILGpuMoE.Runtime;
using ILGpuMoE.Tokenizer;
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

    /// <summary>What runs the model, in one line: the CPU backend and its threads, or the ILGPU device.</summary>
    public string Description => Model.IsCpuBackend ? CpuBackendLine(Model.Backend) : Devices.Describe(Device.Device);

    /// <summary>"CPU backend (N threads; Vector512 ...)": the line `devices` and `generate` print for --device cpu.</summary>
    public static string CpuBackendLine(string backend) =>
        $"CPU backend: {backend}, {Cpu.CpuFeatures.Describe()} | host memory {Devices.HostMemory() / (1024.0 * 1024 * 1024):F1} GiB";

    /// <summary>The kernel policy a command runs with: the CPU backend for --device cpu (and auto on a CPU-only machine
    /// when --kernels was not given); --kernels other than auto with --device cpu, or --threads off the CPU backend,
    /// are usage errors.</summary>
    public static KernelPolicy PolicyFor(DeviceChoice choice, bool cpuPicked, KernelPolicy kernels, int? threads)
    {
        bool backend = choice == DeviceChoice.Cpu || (choice == DeviceChoice.Auto && cpuPicked && kernels == KernelPolicy.Auto);
        if (choice == DeviceChoice.Cpu && kernels != KernelPolicy.Auto)
            throw new CliUsageException($"--kernels {kernels.ToString().ToLowerInvariant()} picks ILGPU kernel versions, which --device cpu (the CPU backend) does not run; use --device cpu-emulator to run them on the CPU");
        if (!backend && threads is not null)
            throw new CliUsageException("--threads sets the CPU backend's workers: it needs --device cpu (or auto on a machine without a GPU, without --kernels)");
        if (threads is < 1 or > 4096)
            throw new CliUsageException($"--threads must be in [1, 4096], got {threads}");
        return backend ? KernelPolicy.Cpu : kernels;
    }

    /// <summary>The model folder's tokenizer; a missing folder or a bad tokenizer is a usage error (one line, exit 2).</summary>
    public static ITextTokenizer Tokenizer(string modelDir)
    {
        try
        {
            return Directory.Exists(modelDir)
                ? TextTokenizer.Load(modelDir)
                : throw new CliUsageException($"--model {modelDir}: no such model folder");
        }
        catch (TokenizerException e)
        {
            throw new CliUsageException(e.Message);
        }
    }

    /// <summary>Checks the folder, opens the device, plans memory and uploads the weights.</summary>
    public static LoadedModel Open(CliIo io, DeviceChoice choice, string modelDir, int? maxSeq, QuantSpec? quant = null, Model.RouterChoice? router = null,
        KernelPolicy kernels = KernelPolicy.Auto, int? threads = null, QuantSpec? lmHeadQuant = null)
    {
        if (threads is < 1 or > 4096)
            throw new CliUsageException($"--threads must be in [1, 4096], got {threads}");
        if (!Directory.Exists(modelDir))
        {
            throw new CliUsageException(File.Exists(modelDir)
                ? $"--model {modelDir}: is a file; give the model folder (the one holding config.json)"
                : $"--model {modelDir}: no such model folder");
        }

        if (maxSeq is < 1)
            throw new CliUsageException($"--max-seq must be >= 1, got {maxSeq}");

        // Plan before touching the device: a wrong folder fails fast, without a context.
        MoeModel.PlanFor(modelDir, new ModelLoadOptions { MaxSeq = maxSeq, Quant = quant, Router = router, LmHeadQuant = lmHeadQuant });
        var device = DeviceSession.Open(choice, io.Err, announce: false);
        try
        {
            var policy = PolicyFor(choice, device.Accelerator.AcceleratorType == ILGPU.Runtime.AcceleratorType.CPU, kernels, threads);
            if (choice == DeviceChoice.Auto)
                io.Err.WriteLine($"device (auto): {(policy == KernelPolicy.Cpu ? CpuBackendLine($"cpu ({threads ?? Cpu.CpuThreads.DefaultCount} threads)") : device.Description)}");
            var options = new ModelLoadOptions
            {
                MaxSeq = maxSeq, Quant = quant, Router = router, Kernels = policy, Threads = policy == KernelPolicy.Cpu ? threads : null, LmHeadQuant = lmHeadQuant,
            };
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
