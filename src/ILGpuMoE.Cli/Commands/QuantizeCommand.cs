// ilgpumoe quantize --model IN --out OUT --scheme S: writes a checkpoint in our packed layout that generate / logits
// load like any model (src/ILGpuMoE/Quant/QuantCheckpoint.cs documents tensor names and quantization_config).
// Without --scheme, IN must be an AWQ / GPTQ / FP8 checkpoint: it is repacked into our layout (same values, no
// re-quantization), once, so that loading it no longer repacks on the host.
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
        var output = new Option<string>("--out", "-o") { Description = "Output folder (created)", Required = true };
        var scheme = new Option<string?>("--scheme")
        {
            Description = "One of " + string.Join(", ", QuantSpec.Names.Skip(1)) + " (int4 also int4-gG[-asym], int4-per-row[-asym]); " +
                          "leave it out to repack a quantized checkpoint into our layout",
        };
        var command = new Command("quantize", "Pack the linear weights (attention, experts) of a model into a quantized checkpoint, or repack an AWQ / GPTQ / FP8 one")
        {
            model, output, scheme,
        };
        command.SetAction(p => Run(io, p.GetValue(model)!, p.GetValue(output)!, p.GetValue(scheme)));
        return command;
    }

    public static int Run(CliIo io, string modelDir, string outDir, string? schemeName)
    {
        if (!Directory.Exists(modelDir))
            throw new CliUsageException($"--model {modelDir}: no such model folder");
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
            spec = QuantOption.Parse(schemeName) ?? throw new CliUsageException("--scheme none writes nothing; give a scheme (e.g. int8, int4-g128)");
        }

        long bytes = 0;
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
                        bytes = Write(modelDir, outDir, schemeName is null ? null : spec, (_, done, total) =>
                        {
                            task.MaxValue = Math.Max(1, total);
                            task.Value = done;
                        });
                    });
            }
            else
            {
                bytes = Write(modelDir, outDir, schemeName is null ? null : spec, null);
            }
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(e.Message);
        }

        io.Out.WriteLine($"wrote {outDir} ({spec.Name}{(schemeName is null ? ", repacked" : "")}, {bytes / 1048576.0:F1} MiB of tensors)");
        return CliErrors.Ok;
    }

    // spec null: repack the quantized checkpoint; else quantize the float one.
    private static long Write(string modelDir, string outDir, QuantSpec? spec, Action<string, long, long>? progress) =>
        spec is null ? CheckpointQuantizer.Repack(modelDir, outDir, progress).Bytes : CheckpointQuantizer.Run(modelDir, outDir, spec, progress);
}
