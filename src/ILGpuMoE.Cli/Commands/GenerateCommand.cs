// ilgpumoe generate --model DIR --prompt TEXT [-n 128] [--temperature 0.7] [--top-k 50] [--top-p 0.9] [--seed 1] [--chat]
//                   [--max-seq S] [--routing-stats] [--cuda-graph true|false] [--router switch|noisy-topk] [--capacity-factor C] [--noise-seed S]
//                   [--stats-json FILE]
// Streams the generated text, and only the text, to stdout as it comes (so `> out.txt` holds the answer). On stderr: a
// status line once the model is loaded, then prefill tokens/s, decode tokens/s and time to first token, and the kernel
// launches per decode step (and, with --routing-stats, per layer: the tokens each expert received, dropped tokens, the
// load's coefficient of variation and the Switch auxiliary loss); --stats-json FILE writes them as JSON instead. A rate
// with nothing to measure (-n 0: no forward pass) is printed as "not run", never as 0, NaN or Infinity. Ctrl+C stops
// after the current step, still prints the statistics (on stderr; the JSON file is not written) and exits 130.
using System.Diagnostics;
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ILGpuMoE.Kernels;
using ILGpuMoE.Model;
using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;
using ILGpuMoE.Tokenizer;
using Spectre.Console;

namespace ILGpuMoE.Cli.Commands;

public static class GenerateCommand
{
    public sealed record Args(string Model, string Prompt, int MaxNewTokens, float Temperature, int TopK, float TopP, ulong Seed,
        bool Chat, bool RoutingStats, int? MaxSeq, string? Quant = null, bool CudaGraph = true, RouterChoice? Router = null, string? Kernels = null,
        string? StatsJson = null, int? Threads = null, string? QuantLmHead = null);

    public static Command Create(CliIo io, Option<DeviceChoice> device, Option<int?>? threads = null)
    {
        var model = new Option<string>("--model", "-m") { Description = "Hugging Face model folder (config.json, safetensors, tokenizer.json or tokenizer.model)", Required = true };
        var prompt = new Option<string>("--prompt", "-p") { Description = "Prompt text", Required = true };
        var n = new Option<int>("-n", "--max-new-tokens") { Description = "Most new tokens (EOS stops earlier)", DefaultValueFactory = _ => 128 };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature; 0 = greedy", DefaultValueFactory = _ => 0.7f };
        var topK = new Option<int>("--top-k") { Description = "Keep the k most likely tokens; 0 = off", DefaultValueFactory = _ => 50 };
        var topP = new Option<float>("--top-p") { Description = "Nucleus: keep the smallest set with this much probability; 1 = off", DefaultValueFactory = _ => 0.9f };
        var seed = new Option<ulong>("--seed") { Description = "Sampling seed (same seed, same text)", DefaultValueFactory = _ => 1UL };
        var chat = new Option<bool>("--chat") { Description = "Wrap the prompt in the family's instruct format (Mixtral [INST] ... [/INST], Qwen ChatML, OLMoE <|user|>)" };
        var stats = new Option<bool>("--routing-stats") { Description = "Print how many tokens each expert of each layer received" };
        var maxSeq = new Option<int?>("--max-seq") { Description = $"KV cache length (default min(max_position_embeddings, {ModelLoadOptions.DefaultMaxSeqCap}))" };
        var quant = QuantOption.Create();
        var quantLmHead = QuantOption.CreateLmHead();
        var graph = new Option<bool>("--cuda-graph")
        {
            Description = "On CUDA, capture the decode step once as a CUDA graph and replay it per token (default on; --cuda-graph false launches it kernel by kernel)",
            DefaultValueFactory = _ => true,
        };
        var kernels = KernelsOption.Create();
        var statsJson = new Option<string?>("--stats-json") { Description = "Write the statistics (and --routing-stats) to this JSON file instead of stderr" };
        var command = new Command("generate", "Generate text from a prompt, streaming tokens as they come (text on stdout, statistics on stderr)")
        {
            model, prompt, n, temperature, topK, topP, seed, chat, stats, maxSeq, quant, quantLmHead, graph, kernels, statsJson,
        };
        var router = new RouterOption();
        router.AddTo(command);
        command.SetAction(p => Run(io, p.GetValue(device), new Args(p.GetValue(model)!, p.GetValue(prompt)!, p.GetValue(n), p.GetValue(temperature),
            p.GetValue(topK), p.GetValue(topP), p.GetValue(seed), p.GetValue(chat), p.GetValue(stats), p.GetValue(maxSeq), p.GetValue(quant), p.GetValue(graph), router.Parse(p), p.GetValue(kernels),
            p.GetValue(statsJson), threads is null ? null : p.GetValue(threads), p.GetValue(quantLmHead))));
        return command;
    }

    public static int Run(CliIo io, DeviceChoice choice, Args a)
    {
        var statsTarget = a.StatsJson is null ? null : CliOutput.CheckFile("--stats-json", a.StatsJson);
        if (a.MaxNewTokens < 0)
            throw new CliUsageException($"-n must be >= 0, got {a.MaxNewTokens}");
        var sampling = new SamplingOptions(a.Temperature, a.TopK, a.TopP, a.Seed);
        try
        {
            sampling.Validate();
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(e.Message);
        }

        var quant = QuantOption.Parse(a.Quant);
        var lmHeadQuant = QuantOption.Parse(a.QuantLmHead, "--quant-lm-head");
        var kernels = KernelsOption.Parse(a.Kernels);
        var tokenizer = LoadedModel.Tokenizer(a.Model);

        using (tokenizer)
        {
            using var loaded = LoadedModel.Open(io, choice, a.Model, a.MaxSeq, quant, a.Router, kernels, a.Threads, lmHeadQuant);
            using var session = loaded.Model.NewSession(new SessionOptions { CudaGraph = a.CudaGraph });
            session.CollectRoutingStats = a.RoutingStats;
            // The status line, unless the prompt cannot fit the cache: then the prefill's one-line error (exit 2) stays alone.
            var config = loaded.Model.Config;
            int promptTokens = Generator.Tokenize(tokenizer, a.Prompt, a.Chat, config.VocabSize, config.Family).Count;
            if (a.MaxNewTokens == 0 || promptTokens <= loaded.Model.MaxSeq)
            {
                io.Err.WriteLine($"loaded {Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(a.Model)))} on {loaded.Description}; " +
                                 $"prompt {promptTokens} tokens, generating up to {a.MaxNewTokens} (Ctrl+C stops)");
                io.Err.Flush();
            }

            // Ctrl+C (CliSignals): finish the step in flight, stop, still print the statistics, exit 130.
            var result = Generator.Run(session, tokenizer, a.Prompt, new GenerationOptions
            {
                MaxNewTokens = a.MaxNewTokens,
                Sampling = sampling,
                Chat = a.Chat,
            }, text =>
            {
                io.Out.Write(text);
                io.Out.Flush();
            }, io.Cancel);

            io.Out.WriteLine();
            io.Out.Flush();
            bool cancelled = result.Stop == StopReason.Cancelled || io.Cancel.IsCancellationRequested;
            if (statsTarget is not null && !cancelled)
            {
                using var pending = CliOutput.BeginFile(statsTarget);
                File.WriteAllText(pending.Path, StatsJson(loaded.Model, result, session, a.RoutingStats));
                pending.Commit(io.Cancel);
                io.Err.WriteLine($"wrote statistics to {a.StatsJson}");
                return CliErrors.Ok;
            }

            PrintStats(io, loaded.Model, result, session);
            if (a.RoutingStats)
                PrintRouting(io, session);
            io.Cancel.ThrowIfCancellationRequested();
            return CliErrors.Ok;
        }
    }

    // Non-finite values (a rate over no time) never reach the output.
    private static string F(double v, string format = "F1") => double.IsFinite(v) ? v.ToString(format, CultureInfo.InvariantCulture) : "n/a";

    private static string StopName(StopReason stop) => stop switch
    {
        StopReason.Eos => "end of sequence",
        StopReason.MaxTokens => "-n reached",
        StopReason.CacheFull => "KV cache full",
        StopReason.Cancelled => "cancelled",
        _ => throw new UnreachableException($"stop reason {stop}"),
    };

    // A prefill ran when the first token was sampled (Generator sets Prefill then); decode rates need decode steps.
    private static bool PrefillRan(GenerationResult r) => r.Prefill > TimeSpan.Zero;

    private static double? Finite(double v) => double.IsFinite(v) ? v : null;

    private static string StatsJson(MoeModel model, GenerationResult r, InferenceSession session, bool routing)
    {
        var json = new JsonObject
        {
            ["tokens"] = r.Tokens.Count,
            ["prompt_tokens"] = r.PromptTokens.Count,
            ["stop"] = StopName(r.Stop),
            ["max_seq"] = model.MaxSeq,
            ["prefill_tokens_per_s"] = PrefillRan(r) ? Finite(r.PrefillTokensPerSecond) : null,
            ["decode_tokens_per_s"] = r.DecodeSteps > 0 ? Finite(r.DecodeTokensPerSecond) : null,
            ["decode_steps"] = r.DecodeSteps,
            ["time_to_first_token_ms"] = PrefillRan(r) ? r.TimeToFirstToken.TotalMilliseconds : null,
            ["launches_per_token"] = r.DecodeLaunches is { } l
                ? new JsonObject { ["mean"] = l.Mean, ["min"] = l.Min, ["max"] = l.Max, ["per_layer"] = l.PerLayer, ["cuda_graph_replayed"] = l.Replayed }
                : null,
            ["decode_path"] = session.DecodePath,
            ["cuda_graph"] = session.CudaGraphStatus?.ToString(),
        };
        if (routing)
        {
            json["router"] = session.Model.Config.Router.ToString();
            json["routing"] = new JsonArray(session.Routing.Select((s, layer) => (JsonNode)new JsonObject
            {
                ["layer"] = layer,
                ["tokens_per_expert"] = new JsonArray(s.TokensPerExpert.Select(c => (JsonNode)c).ToArray()),
                ["dropped"] = s.Dropped,
                ["load_cv"] = s.Tokens == 0 ? null : Finite(s.LoadCv),
                ["aux_loss"] = s.Tokens == 0 ? null : Finite(s.AuxLoss),
            }).ToArray());
        }

        return json.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static void PrintStats(CliIo io, MoeModel model, GenerationResult r, InferenceSession session)
    {
        string stop = StopName(r.Stop) + (r.Stop == StopReason.CacheFull ? $" (--max-seq {model.MaxSeq})" : "");
        io.Err.WriteLine($"--- {r.Tokens.Count} tokens generated ({stop}); prompt {r.PromptTokens.Count} tokens");
        if (!PrefillRan(r))
            io.Err.WriteLine($"prefill: not run ({(r.Stop == StopReason.Cancelled ? "cancelled before the prompt" : "-n 0")}) | decode: not run");
        else
            io.Err.WriteLine($"prefill: {F(r.PrefillTokensPerSecond)} tokens/s | " +
                             (r.DecodeSteps > 0 ? $"decode: {F(r.DecodeTokensPerSecond)} tokens/s ({r.DecodeSteps} steps)" : "decode: no steps") +
                             $" | time to first token: {F(r.TimeToFirstToken.TotalMilliseconds, "F0")} ms");
        if (r.DecodeLaunches is { } l)
        {
            string range = l.Min == l.Max ? "" : $" (min {l.Min}, max {l.Max})";
            string graph = l.Replayed ? ", replayed from a CUDA graph" : "";
            string path = session.DecodePath is { } p ? $"; decode step {p}" : "";
            io.Err.WriteLine($"launches per token: {F(l.Mean, "F0")}{range}, {F(l.PerLayer)} per layer{graph}{path}");
        }

        else if (model.IsCpuBackend && r.DecodeSteps > 0)
            io.Err.WriteLine($"decode step: {session.DecodePath}");

        if (session.CudaGraphStatus is { } status)
            io.Err.WriteLine($"cuda graph: {status}");
    }

    private static void PrintRouting(CliIo io, InferenceSession session)
    {
        var routing = session.Routing;
        int experts = routing.Count > 0 ? routing[0].TokensPerExpert.Count : 0;
        // Up to 16 experts get a column each; wider routers (Qwen3's 128) show min / max instead.
        bool columns = experts <= 16;
        var table = new Table().AddColumn("layer");
        if (columns)
        {
            for (int e = 0; e < experts; e++)
                table.AddColumn(new TableColumn($"e{e}").RightAligned());
        }
        else
        {
            table.AddColumn(new TableColumn("min").RightAligned()).AddColumn(new TableColumn("max").RightAligned());
        }

        table.AddColumn(new TableColumn("dropped").RightAligned()).AddColumn(new TableColumn("load cv").RightAligned())
            .AddColumn(new TableColumn("aux loss").RightAligned());
        if (experts <= 64)
            table.AddColumn("histogram (share of the layer's tokens)");
        for (int l = 0; l < routing.Count; l++)
        {
            var r = routing[l];
            if (r.Tokens == 0)
                continue; // a dense layer (no router)
            var row = r.TokensPerExpert;
            long total = Math.Max(1, row.Sum());
            var cells = new List<string> { l.ToString(CultureInfo.InvariantCulture) };
            if (columns)
                cells.AddRange(row.Select(c => c.ToString(CultureInfo.InvariantCulture)));
            else
                cells.AddRange([row.Min().ToString(CultureInfo.InvariantCulture), row.Max().ToString(CultureInfo.InvariantCulture)]);
            cells.AddRange([r.Dropped.ToString(CultureInfo.InvariantCulture), F(r.LoadCv, "F3"), F(r.AuxLoss, "F3")]);
            if (experts <= 64)
            {
                // One block character per expert, its height the expert's share (uniform = the middle).
                const string blocks = " ▁▂▃▄▅▆▇█";
                cells.Add(Markup.Escape(new string(row.Select(c => blocks[(int)Math.Min(blocks.Length - 1, Math.Round(c * (double)experts / total * 4))]).ToArray())));
            }

            table.AddRow(cells.ToArray());
        }

        io.Err.WriteLine($"routing ({session.Model.Config.Router}): tokens per expert and layer (prefill + decode), dropped tokens, " +
                         "coefficient of variation of the load, Switch auxiliary loss");
        io.ErrAnsi.Write(table);
    }
}
