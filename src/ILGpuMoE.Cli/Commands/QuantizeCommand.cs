// ilgpumoe quantize --model IN --out OUT --scheme S: writes a checkpoint in our packed layout that generate / logits
// load like any model (src/ILGpuMoE/Quant/QuantCheckpoint.cs documents tensor names and quantization_config).
using System.CommandLine;
using ILGpuMoE.Quant;
using Spectre.Console;

namespace ILGpuMoE.Cli.Commands;

public static class QuantizeCommand
{
    public static Command Create(CliIo io)
    {
        var model = new Option<string>("--model", "-m") { Description = "Hugging Face Mixtral folder (F32/F16/BF16 weights)", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "Output folder (created)", Required = true };
        var scheme = new Option<string>("--scheme") { Description = "One of " + string.Join(", ", QuantSpec.Names.Skip(1)), Required = true };
        var command = new Command("quantize", "Pack the linear weights (attention, experts) of a model into a quantized checkpoint")
        {
            model, output, scheme,
        };
        command.SetAction(p => Run(io, p.GetValue(model)!, p.GetValue(output)!, p.GetValue(scheme)!));
        return command;
    }

    public static int Run(CliIo io, string modelDir, string outDir, string schemeName)
    {
        var spec = QuantOption.Parse(schemeName) ?? throw new CliUsageException("--scheme none writes nothing; give a scheme (e.g. int8, int4-g128)");
        if (!Directory.Exists(modelDir))
            throw new CliUsageException($"--model {modelDir}: no such model folder");
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
                        var task = ctx.AddTask($"quantize ({spec.Name})");
                        bytes = CheckpointQuantizer.Run(modelDir, outDir, spec, (_, done, total) =>
                        {
                            task.MaxValue = Math.Max(1, total);
                            task.Value = done;
                        });
                    });
            }
            else
            {
                bytes = CheckpointQuantizer.Run(modelDir, outDir, spec);
            }
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(e.Message);
        }

        io.Out.WriteLine($"wrote {outDir} ({spec.Name}, {bytes / 1048576.0:F1} MiB of tensors)");
        return CliErrors.Ok;
    }
}
