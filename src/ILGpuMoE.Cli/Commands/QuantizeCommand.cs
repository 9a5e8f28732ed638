// ilgpumoe quantize --model IN --out OUT --scheme S: writes a checkpoint in our packed layout that generate / logits
// load like any model (src/ILGpuMoE/Quant/QuantCheckpoint.cs documents tensor names and quantization_config).
// Without --scheme, IN must be an AWQ / GPTQ / FP8 checkpoint: it is repacked into our layout (same values, no
// re-quantization), once, so that loading it no longer repacks on the host.
// OUT must be new or empty (--force: write into a non-empty one, replacing the checkpoint files and keeping the rest).
// The checkpoint is written into a temporary folder next to OUT and moved into place only when complete: an error or
// Ctrl-C leaves OUT as it was (CliOutput).
using System.CommandLine;
using ILGpuMoE.Quant;
using Spectre.Console;

namespace ILGpuMoE.Cli.Commands;

public static class QuantizeCommand
{
    public static Command Create(CliIo io)
    {
        var model = new Option<string>("--model", "-m")
        {
            Description = "Hugging Face Mixtral folder: F32/F16/BF16 weights (with --scheme), or an AWQ / GPTQ / FP8 checkpoint (without: repack)",
            Required = true,
        };
        var output = new Option<string>("--out", "-o") { Description = "Output folder (created; must be empty unless --force)", Required = true };
        var force = new Option<bool>("--force") { Description = "Write into a non-empty --out folder: replace its checkpoint, config and copied files, keep the rest" };
        var scheme = new Option<string?>("--scheme")
        {
            Description = "One of " + string.Join(", ", QuantSpec.Names.Skip(1)) + " (int4 also int4-gG[-asym], int4-per-row[-asym]); " +
                          "leave it out to repack a quantized checkpoint into our layout",
        };
        var command = new Command("quantize", "Pack the linear weights (attention, experts) of a model into a quantized checkpoint, or repack an AWQ / GPTQ / FP8 one")
        {
            model, output, scheme, force,
        };
        command.SetAction(p => Run(io, p.GetValue(model)!, p.GetValue(output)!, p.GetValue(scheme), p.GetValue(force)));
        return command;
    }

    public static int Run(CliIo io, string modelDir, string outDir, string? schemeName, bool force = false)
    {
        if (!Directory.Exists(modelDir))
            throw new CliUsageException($"--model {modelDir}: no such model folder");
        if (string.Equals(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir)), Path.TrimEndingDirectorySeparator(Path.GetFullPath(outDir)), StringComparison.Ordinal))
            throw new CliUsageException("--out must differ from --model");
        var target = CliOutput.CheckFolder("--out", outDir, refuseNonEmpty: true, force);
        QuantSpec? spec;
        if (schemeName is null)
        {
            // Repack: the scheme is the source's (AWQ/GPTQ -> int4-gG-asym, FP8 -> fp8-block128 / fp8-tensor).
            var source = QuantSource.Load(modelDir)
                         ?? throw new CliUsageException($"--model {modelDir} holds float weights: give --scheme (one of {string.Join(", ", QuantSpec.Names.Skip(1))})");
            try
            {
                spec = source.RepackSpec;
            }
            catch (ArgumentException e)
            {
                throw new CliUsageException($"--model {modelDir}: {e.Message}; nothing to repack");
            }
        }
        else
        {
            spec = QuantOption.Parse(schemeName, "--scheme") ?? throw new CliUsageException("--scheme none writes nothing; give a scheme (e.g. int8, int4-g128)");
        }

        long bytes = 0;
        using var pending = CliOutput.BeginFolder(target, merge: true);
        try
        {
            bool terminal = ReferenceEquals(io.Err, Console.Error) && !Console.IsErrorRedirected;
            if (terminal)
            {
                var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
                console.Progress()
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask($"{(schemeName is null ? "repack" : "quantize")} ({spec.Name})");
                        bytes = Write(modelDir, pending.Path, schemeName is null ? null : spec, (_, done, total) =>
                        {
                            io.Cancel.ThrowIfCancellationRequested();
                            task.MaxValue = Math.Max(1, total);
                            task.Value = done;
                        });
                    });
            }
            else
            {
                // The progress calls (one per tensor written) are where a Ctrl-C stops the quantizer.
                bytes = Write(modelDir, pending.Path, schemeName is null ? null : spec, (_, _, _) => io.Cancel.ThrowIfCancellationRequested());
            }
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(QuantOption.Rename(e.Message, schemeName is null ? "--quant" : "--scheme"));
        }

        // A checkpoint left in OUT by an earlier run (--force) must not shadow the new one: a sharded index is read first.
        io.Cancel.ThrowIfCancellationRequested();
        if (Directory.Exists(target))
        {
            foreach (string stale in Directory.EnumerateFiles(target, "model*.safetensors*"))
                File.Delete(stale);
        }

        pending.Commit(io.Cancel);
        io.Out.WriteLine($"wrote {outDir} ({spec.Name}{(schemeName is null ? ", repacked" : "")}, {bytes / 1048576.0:F1} MiB of tensors)");
        return CliErrors.Ok;
    }

    // spec null: repack the quantized checkpoint; else quantize the float one.
    private static long Write(string modelDir, string outDir, QuantSpec? spec, Action<string, long, long>? progress) =>
        spec is null ? CheckpointQuantizer.Repack(modelDir, outDir, progress).Bytes : CheckpointQuantizer.Run(modelDir, outDir, spec, progress);
}
