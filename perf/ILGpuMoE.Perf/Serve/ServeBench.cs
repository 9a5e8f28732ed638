// ilgpumoe-bench serve: the continuous-batching engine (src/ILGpuMoE/Serving/BatchEngine.cs) under closed-loop load.
//   ilgpumoe-bench serve (--model DIR | --preset P [--cache DIR]) --out DIR [--device auto|cuda|cpu|cpu-emulator]
//       [--concurrency 1,4,16,32] [--requests N] [--prompt-tokens N] [--max-tokens N]
// At each concurrency C, C clients each send requests one after another (random prompt ids of --prompt-tokens, greedy,
// --max-tokens new tokens, no stop token so every request is the same work) until N requests are done; measured:
//   throughput  generated tokens / wall time of the level (and requests/s);
//   TTFT        submit -> first token, per request (queueing + prefill; p50 / p90 / p99);
//   ITL         gap between consecutive tokens of a request (one step of the batch; p50 / p90 / p99).
// Measured at the engine's API (IGenerationEngine), in process: HTTP adds a JSON encode and a socket write per token on
// top (ilgpumoe serve, src/ILGpuMoE.Server), which this leaves out so that the figure is the engine's.
// One warm-up request per level (kernels compiled, pool touched) is not counted. Writes DIR/serve.json and DIR/serve.md.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ILGpuMoE.Kernels;
using ILGpuMoE.Perf.EndToEnd;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;
using ILGpuMoE.Serving;
using ILGpuMoE.Testing;

namespace ILGpuMoE.Perf.Serve;

/// <summary>One concurrency level's figures.</summary>
public sealed record ServeRow(int Concurrency, int Requests, long Tokens, double Seconds, double TokensPerSecond, double RequestsPerSecond,
    double TtftP50Ms, double TtftP90Ms, double TtftP99Ms, double ItlP50Ms, double ItlP90Ms, double ItlP99Ms, long Steps);

public static class ServeBench
{
    public const string Usage =
        "usage: ilgpumoe-bench serve (--model DIR | --preset P [--cache DIR]) --out DIR [--device auto|cuda|cpu|cpu-emulator] " +
        "[--concurrency 1,4,16,32] [--requests N] [--prompt-tokens N] [--max-tokens N]";

    public static int Run(string[] args, TextWriter log)
    {
        string? model = null, preset = null, outDir = null, cache = null, device = null;
        int[] levels = [1, 4, 16, 32];
        int requests = 64, promptTokens = 32, maxTokens = 32;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Value() => i + 1 < args.Length ? args[++i] : throw new BenchUsageException($"{a} needs a value ({Usage})");
            int Positive() => int.TryParse(Value(), NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n >= 1
                ? n : throw new BenchUsageException($"{a} takes a whole number >= 1 ({Usage})");
            switch (a)
            {
                case "--model" or "-m": model = Value(); break;
                case "--preset" or "-p": preset = Value(); break;
                case "--out" or "-o": outDir = Value(); break;
                case "--cache": cache = Value(); break;
                case "--device" or "-d": device = Value(); break;
                case "--requests": requests = Positive(); break;
                case "--prompt-tokens": promptTokens = Positive(); break;
                case "--max-tokens": maxTokens = Positive(); break;
                case "--concurrency":
                    levels = Value().Split(',', StringSplitOptions.TrimEntries)
                        .Select(x => int.TryParse(x, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n is >= 1 and <= 1024
                            ? n : throw new BenchUsageException($"--concurrency: '{x}' is not a whole number in [1, 1024] ({Usage})"))
                        .ToArray();
                    break;
                default: throw new BenchUsageException($"unknown argument '{a}' ({Usage})");
            }
        }

        if (outDir is null)
            throw new BenchUsageException($"--out is required ({Usage})");
        if ((model is null) == (preset is null))
            throw new BenchUsageException($"give one of --model and --preset ({Usage})");
        DeviceChoice choice;
        try
        {
            choice = Devices.Parse(device);
        }
        catch (ArgumentException e)
        {
            throw new BenchUsageException($"--device: {e.Message}");
        }

        using var dev = BenchDevice.Open(choice);
        string? name = null;
        if (preset is not null)
        {
            var p = Presets.Get(preset);
            var o = EndToEndRun.ModelFor(p, dev.IsGpu);
            // The end-to-end bench's folder for the same model: a GPU run that made it for its e2e step reuses it here.
            model = Path.Combine(EndToEndRun.ModelsFolder(o, cache), "hf");
            name = $"random {o.Family} D={o.Hidden} L={o.Layers} E={o.Experts} K={o.TopK} F={o.MoeIntermediate} ({p.Name})";
            EndToEndRun.Cached(model, d => RandomMoe.Write(d, o), log.WriteLine);
        }

        // Auto without a GPU is the CPU backend, as for `ilgpumoe generate` (the emulator only when asked for).
        bool backend = dev.Choice == DeviceChoice.Cpu || (choice == DeviceChoice.Auto && !dev.IsGpu);
        int maxSeq = promptTokens + maxTokens + 8;
        using var m = MoeModel.Load(dev.Accelerator, model!, new ModelLoadOptions
        {
            MaxSeq = maxSeq,
            MaxBatch = Math.Max(levels.Max(), Math.Min(maxSeq, 256)),
            Kernels = backend ? KernelPolicy.Cpu : KernelPolicy.Auto,
        });
        string on = backend ? $"the CPU backend ({ILGpuMoE.Cpu.CpuThreads.DefaultCount} threads)" : dev.Description;
        name ??= Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(model!)));
        string what = $"{name} on {on}; prompt {promptTokens}, " +
                      $"max_tokens {maxTokens}, {requests} requests per level";
        log.WriteLine($"serve bench: {what}");
        var rows = new List<ServeRow>();
        foreach (int c in levels)
        {
            var row = Level(m, c, Math.Max(requests, c), promptTokens, maxTokens);
            rows.Add(row);
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"concurrency {c,3}: {row.TokensPerSecond,9:F1} tok/s, {row.RequestsPerSecond,7:F2} req/s, TTFT p50/p90/p99 {row.TtftP50Ms:F1}/{row.TtftP90Ms:F1}/{row.TtftP99Ms:F1} ms, ITL {row.ItlP50Ms:F2}/{row.ItlP90Ms:F2}/{row.ItlP99Ms:F2} ms, {row.Steps} steps"));
            Write(outDir, what, rows);
        }

        return 0;
    }

    private static ServeRow Level(MoeModel model, int c, int requests, int promptTokens, int maxTokens)
    {
        int blocksPerRequest = (promptTokens + maxTokens + 15) / 16;
        var options = new BatchEngineOptions
        {
            MaxRunning = c, MaxWaiting = Math.Max(64, 2 * c), Kv = new BatchOptions { BlockSize = 16, Blocks = c * blocksPerRequest },
        };
        using var warm = new CancellationTokenSource();
        var engine = new BatchEngine(model, options);
        try
        {
            var rng = new Random(c);
            int v = model.Config.VocabSize;
            GenerationRequest Next()
            {
                lock (rng)
                    return new GenerationRequest(Enumerable.Range(0, promptTokens).Select(_ => rng.Next(3, v)).ToArray(), maxTokens,
                        new SamplingOptions(0, 0, 1, 1), new HashSet<int>());
            }

            Drain(engine.Submit(Next(), default), Stopwatch.GetTimestamp(), [], []).GetAwaiter().GetResult();
            long steps0 = engine.Steps;
            var ttft = new List<double>();
            var itl = new List<double>();
            long tokens = 0;
            int left = requests;
            var wall = Stopwatch.StartNew();
            var clients = Enumerable.Range(0, c).Select(_ => Task.Run(async () =>
            {
                var myTtft = new List<double>();
                var myItl = new List<double>();
                long mine = 0;
                while (Interlocked.Decrement(ref left) >= 0)
                {
                    long start = Stopwatch.GetTimestamp();
                    mine += await Drain(engine.Submit(Next(), default), start, myTtft, myItl);
                }

                lock (ttft)
                {
                    ttft.AddRange(myTtft);
                    itl.AddRange(myItl);
                    tokens += mine;
                }
            })).ToArray();
            Task.WaitAll(clients);
            double seconds = wall.Elapsed.TotalSeconds;
            return new ServeRow(c, requests, tokens, seconds, tokens / seconds, requests / seconds, Pct(ttft, 50), Pct(ttft, 90), Pct(ttft, 99),
                Pct(itl, 50), Pct(itl, 90), Pct(itl, 99), engine.Steps - steps0);
        }
        finally
        {
            engine.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    // Reads one generation to its end; adds its TTFT and its gaps (ms); returns its token count.
    private static async Task<long> Drain(IGeneration g, long start, List<double> ttft, List<double> itl)
    {
        long last = start, n = 0;
        await foreach (int _ in g.Tokens)
        {
            long now = Stopwatch.GetTimestamp();
            (n == 0 ? ttft : itl).Add(Stopwatch.GetElapsedTime(last, now).TotalMilliseconds);
            last = now;
            n++;
        }

        var why = await g.Finished;
        if (why != FinishReason.Length)
            throw new InvalidOperationException($"serve bench: a request ended with {why}, expected its max_tokens");
        return n;
    }

    private static double Pct(List<double> xs, double p)
    {
        if (xs.Count == 0)
            return double.NaN;
        var s = xs.Order().ToArray();
        return s[Math.Min(s.Length - 1, (int)Math.Ceiling(p / 100 * s.Length) - 1)];
    }

    private static void Write(string outDir, string what, List<ServeRow> rows)
    {
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "serve.json"), JsonSerializer.Serialize(new { what, date = DateTimeOffset.UtcNow.ToString("O"), rows },
            new JsonSerializerOptions { WriteIndented = true }));
        var md = new System.Text.StringBuilder();
        md.AppendLine($"# serve bench: {what}").AppendLine();
        md.AppendLine("| concurrency | tok/s | req/s | TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms | steps |");
        md.AppendLine("|---:|---:|---:|---|---|---:|");
        foreach (var r in rows)
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Concurrency} | {r.TokensPerSecond:F1} | {r.RequestsPerSecond:F2} | {r.TtftP50Ms:F1} / {r.TtftP90Ms:F1} / {r.TtftP99Ms:F1} | {r.ItlP50Ms:F2} / {r.ItlP90Ms:F2} / {r.ItlP99Ms:F2} | {r.Steps} |"));
        File.WriteAllText(Path.Combine(outDir, "serve.md"), md.ToString());
    }
}
