// ilgpumoe logits --model DIR --tokens 1,2,3 --out FILE: the logits of every position of one prompt processed from an
// empty cache, written as a safetensors file with `logits` F32 [T, V] (and the `tokens` I32 [T] it was given).
// This is a contract other tools rely on (fixture checks, peers): keep its options and output exactly.
// --router switch|noisy-topk runs a router of the MoE literature instead of the model's (RouterOption.cs).
// --decode-steps feeds the tokens one per forward step (what generation does after the prompt: the T = 1 decode path
// with its own kernels) instead of one prefill; the logits must be the same within F32 rounding. --cuda-graph (with
// --decode-steps, on CUDA) replays the decode step from a captured CUDA graph.
using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels;
using ILGpuMoE.Model;

namespace ILGpuMoE.Cli.Commands;

public static class LogitsCommand
{
    public static Command Create(CliIo io, Option<DeviceChoice> device, Option<int?>? threads = null)
    {
        var model = new Option<string>("--model", "-m") { Description = "Hugging Face model folder (config.json + safetensors)", Required = true };
        var tokens = new Option<string>("--tokens") { Description = "Comma-separated token ids, e.g. 1,2,3", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "Output safetensors file (tensor 'logits' F32 [T, V])", Required = true };
        var quant = QuantOption.Create();
        var quantLmHead = QuantOption.CreateLmHead();
        var steps = new Option<bool>("--decode-steps") { Description = "Process the tokens one per step (the decode kernels) instead of one prefill" };
        var graph = new Option<bool>("--cuda-graph") { Description = "With --decode-steps on CUDA: replay the decode step from a captured CUDA graph" };
        var router = new RouterOption();
        var kernels = KernelsOption.Create();
        var command = new Command("logits", "Write the logits of every position of a token sequence (one prompt, empty cache) to a safetensors file")
        {
            model, tokens, output, quant, quantLmHead, steps, graph, kernels,
        };
        router.AddTo(command);
        command.SetAction(p => Run(io, p.GetValue(device), p.GetValue(model)!, p.GetValue(tokens)!, p.GetValue(output)!, p.GetValue(quant),
            p.GetValue(steps), p.GetValue(graph), router.Parse(p), p.GetValue(kernels), threads is null ? null : p.GetValue(threads),
            p.GetValue(quantLmHead)));
        return command;
    }

    /// <summary>"1, 2,3" -> [1, 2, 3]; anything else is a usage error naming the bad item.</summary>
    public static int[] ParseTokens(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length == 0 || (parts.Length == 1 && parts[0].Length == 0))
            throw new CliUsageException("--tokens is empty (expected comma-separated token ids like 1,2,3)");
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out ids[i]))
                throw new CliUsageException($"--tokens: item {i + 1} '{parts[i]}' is not a token id (expected comma-separated non-negative integers like 1,2,3)");
        }

        return ids;
    }

    public static int Run(CliIo io, DeviceChoice choice, string modelDir, string tokenText, string outPath, string? quantName = null,
        bool decodeSteps = false, bool cudaGraph = false, RouterChoice? router = null, string? kernelsName = null, int? threads = null, string? lmHeadQuantName = null)
    {
        // The output first: a path that cannot be written fails before anything is read or computed.
        CliOutput.CheckFile("--out", outPath);
        var kernels = KernelsOption.Parse(kernelsName);
        if (cudaGraph && !decodeSteps)
            throw new CliUsageException("--cuda-graph replays the decode step: give --decode-steps too");
        var ids = ParseTokens(tokenText);
        var quant = QuantOption.Parse(quantName);
        var lmHeadQuant = QuantOption.Parse(lmHeadQuantName, "--quant-lm-head");
        if (Directory.Exists(modelDir))
        {
            // Cheap checks before any upload: the ids against the config's vocabulary.
            var config = ModelConfig.Load(modelDir);
            for (int i = 0; i < ids.Length; i++)
            {
                if (ids[i] >= config.VocabSize)
                    throw new CliUsageException($"--tokens: token id {ids[i]} (item {i + 1}) is outside the vocabulary [0, {config.VocabSize}) of {modelDir}");
            }

            if (ids.Length > config.MaxPositionEmbeddings)
                throw new CliUsageException($"--tokens: {ids.Length} tokens exceed max_position_embeddings ({config.MaxPositionEmbeddings})");
        }

        using var loaded = LoadedModel.Open(io, choice, modelDir, maxSeq: ids.Length, quant, router, kernels, threads, lmHeadQuant);
        using var session = loaded.Model.NewSession(new Runtime.SessionOptions { CudaGraph = cudaGraph });
        int v = loaded.Model.Config.VocabSize;
        float[] logits;
        if (decodeSteps)
        {
            logits = new float[(long)ids.Length * v];
            for (int i = 0; i < ids.Length; i++)
            {
                io.Cancel.ThrowIfCancellationRequested();
                session.Decode(ids[i]).CopyTo(logits.AsSpan(checked(i * v), v));
            }
        }
        else
        {
            logits = session.Prefill(ids, allLogits: true);
        }

        // A cancel during the forward pass writes nothing; SafeTensorsWriter itself writes a temporary and renames it.
        io.Cancel.ThrowIfCancellationRequested();
        SafeTensorsWriter.Write(outPath,
        [
            SafeTensorsWriter.FromFloats("logits", [ids.Length, v], logits),
            new SafeTensorsWriter.Entry("tokens", DType.I32, [ids.Length], MemoryMarshal.AsBytes(ids.AsSpan()).ToArray()),
        ]);
        io.Out.WriteLine($"wrote logits [{ids.Length}, {v}] to {outPath}");
        if (decodeSteps)
        {
            io.Out.WriteLine($"decode steps: {session.DecodePath ?? "plain"}; last step {session.LastStepLaunches} launches" +
                             (session.CudaGraphStatus is { } g ? $"; cuda graph: {g}" : ""));
        }

        return CliErrors.Ok;
    }
}
