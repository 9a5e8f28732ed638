// ilgpumoe serve --model DIR [--host 127.0.0.1] [--port 8000] [--max-batch N] [--max-context S] [--kv-blocks B]
//                [--quant Q] [--kernels K] [--cuda-graph true|false] [--router ...] (and the global --device, --threads)
// Loads the model as `generate` does, puts a generation engine over it (CreateEngine: the one place that picks it) and
// serves it over HTTP with the OpenAI API (src/ILGpuMoE.Server/OpenAiServer.cs). One startup line on stderr: the
// address, the model, the device, the memory plan and the engine. SIGINT / SIGTERM (CliSignals): the running requests
// are cancelled (their streams end with an error event and [DONE]), Kestrel stops, the engine and the model are freed,
// "stopped" on stderr, and the exit code is 130 as for every command a signal ends (CliErrors).
//
// --max-context is the context of one sequence (prompt + completion): the KV cache length the model is loaded with
// (generate's --max-seq). --max-batch and --kv-blocks size the continuous-batching engine (sequences decoded together,
// blocks of 16 positions in the paged KV cache); --max-batch 1 serves one request at a time on the single-sequence path
// (the fused decode plan and, on CUDA, its graph: --cuda-graph).
using System.CommandLine;
using ILGpuMoE.Kernels;
using ILGpuMoE.Model;
using ILGpuMoE.Runtime;
using ILGpuMoE.Server;
using ILGpuMoE.Serving;
using ILGpuMoE.Tokenizer;

namespace ILGpuMoE.Cli.Commands;

/// <summary>The engine's sizes from the command line; null: the engine's default.</summary>
public sealed record ServeOptions(int? MaxBatch = null, int? MaxContext = null, int? KvBlocks = null, bool CudaGraph = true)
{
    /// <summary>Throws CliUsageException naming the bad option.</summary>
    public void Validate()
    {
        if (MaxBatch is < 1 or > 4096)
            throw new CliUsageException($"--max-batch must be in [1, 4096], got {MaxBatch}");
        if (MaxContext is < 2)
            throw new CliUsageException($"--max-context must be >= 2 (a prompt token and a generated one), got {MaxContext}");
        if (KvBlocks is < 1)
            throw new CliUsageException($"--kv-blocks must be >= 1, got {KvBlocks}");
    }
}

public static class ServeCommand
{
    public sealed record Args(string Model, string Host, int Port, ServeOptions Serve, string? Quant = null, RouterChoice? Router = null,
        string? Kernels = null, int? Threads = null);

    /// <summary>Positions per block of the serve engine's KV pool.</summary>
    public const int KvBlockSize = 16;

    /// <summary>Sequences decoded together when --max-batch is not given.</summary>
    public const int DefaultMaxBatch = 16;

    /// <summary>
    /// The one place the server's engine is made: the continuous-batching engine (src/ILGpuMoE/Serving/BatchEngine.cs),
    /// --max-batch sequences at once over a pool of --kv-blocks blocks; by default enough blocks for every running
    /// sequence at the full context, or what the device has left beside the weights and the workspace (90% of it) when
    /// that is less. --max-batch 1 is the serial engine instead (Serving/SerialEngine.cs): one sequence in a contiguous
    /// cache, whose decode step is the fused plan, replayed from a CUDA graph on CUDA (--cuda-graph), the lowest
    /// latency for one stream.
    /// </summary>
    public static IGenerationEngine CreateEngine(MoeModel model, ServeOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        int running = options.MaxBatch ?? DefaultMaxBatch;
        if (running == 1)
        {
            if (options.KvBlocks is not null)
                throw new CliUsageException("--kv-blocks sizes the paged pool of --max-batch 2 and up; --max-batch 1 runs one sequence in a contiguous cache");
            return new SerialEngine(model, new SerialEngineOptions { Session = new SessionOptions { CudaGraph = options.CudaGraph } });
        }

        if (running > model.MaxBatch)
            throw new CliUsageException($"--max-batch {running}: a step holds at most {model.MaxBatch} tokens (one per running sequence); give at most that");
        long perBlock = MemoryPlan.PagedCacheBytes(model.Config, 1, KvBlockSize);
        long full = (long)running * ((model.MaxSeq + KvBlockSize - 1) / KvBlockSize);
        long room = model.IsCpuBackend ? long.MaxValue : (model.Accelerator.MemorySize - model.DeviceWeightBytes - model.Plan.WorkspaceBytes) / 10 * 9;
        long blocks = options.KvBlocks ?? Math.Clamp(Math.Min(full, room / perBlock), 1, int.MaxValue / 2 / KvBlockSize);
        try
        {
            return new BatchEngine(model, new BatchEngineOptions { MaxRunning = running, Kv = new BatchOptions { BlockSize = KvBlockSize, Blocks = (int)blocks } });
        }
        catch (Exception e) when (e is RuntimeInputException or InsufficientDeviceMemoryException)
        {
            throw new CliUsageException($"--kv-blocks {blocks}: {e.Message}");
        }
    }

    /// <summary>What the startup line says about the engine CreateEngine made.</summary>
    public static string DescribeEngine(IGenerationEngine engine) => engine switch
    {
        BatchEngine b => $"continuous batching (up to {b.MaxRunning} sequences; KV pool {b.KvPool.Blocks} blocks of {b.KvPool.BlockSize})",
        SerialEngine => "serial (one request at a time)",
        _ => engine.GetType().Name,
    };

    public static Command Create(CliIo io, Option<DeviceChoice> device, Option<int?>? threads = null)
    {
        var model = new Option<string>("--model", "-m") { Description = "Hugging Face model folder (config.json, safetensors, tokenizer.json or tokenizer.model)", Required = true };
        var host = new Option<string>("--host") { Description = "Address to listen on: an IP address or localhost", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0: any free port)", DefaultValueFactory = _ => 8000 };
        var maxBatch = new Option<int?>("--max-batch") { Description = "Most sequences decoded together (continuous batching engine)" };
        var maxContext = new Option<int?>("--max-context") { Description = $"Most tokens of one sequence, prompt + completion (default min(max_position_embeddings, {ModelLoadOptions.DefaultMaxSeqCap}))" };
        var kvBlocks = new Option<int?>("--kv-blocks") { Description = "Blocks of the paged KV cache (continuous batching engine; default: what the memory plan allows)" };
        var quant = QuantOption.Create();
        var kernels = KernelsOption.Create();
        var graph = new Option<bool>("--cuda-graph")
        {
            Description = "With --max-batch 1 on CUDA, capture the decode step once as a CUDA graph and replay it (default on)",
            DefaultValueFactory = _ => true,
        };
        var command = new Command("serve", "Serve a model over HTTP with the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics)")
        {
            model, host, port, maxBatch, maxContext, kvBlocks, quant, kernels, graph,
        };
        var router = new RouterOption();
        router.AddTo(command);
        command.SetAction(p => Run(io, p.GetValue(device), new Args(p.GetValue(model)!, p.GetValue(host)!, p.GetValue(port),
            new ServeOptions(p.GetValue(maxBatch), p.GetValue(maxContext), p.GetValue(kvBlocks), p.GetValue(graph)),
            p.GetValue(quant), router.Parse(p), p.GetValue(kernels), threads is null ? null : p.GetValue(threads))));
        return command;
    }

    public static int Run(CliIo io, DeviceChoice choice, Args a)
    {
        var listen = new ServerOptions { Host = a.Host, Port = a.Port };
        try
        {
            listen.Address();
        }
        catch (ArgumentException e)
        {
            throw new CliUsageException(e.Message);
        }

        a.Serve.Validate();
        var quant = QuantOption.Parse(a.Quant);
        var kernels = KernelsOption.Parse(a.Kernels);
        var tokenizer = LoadedModel.Tokenizer(a.Model);

        using (tokenizer)
        {
            using var loaded = LoadedModel.Open(io, choice, a.Model, a.Serve.MaxContext, quant, a.Router, kernels, a.Threads);
            io.Cancel.ThrowIfCancellationRequested();
            string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(a.Model)));
            var served = ServedModel.For(name, loaded.Model.Config, tokenizer);
            var engine = CreateEngine(loaded.Model, a.Serve);
            try
            {
                OpenAiServer server;
                try
                {
                    server = OpenAiServer.StartAsync(engine, served, listen, io.Cancel).GetAwaiter().GetResult();
                }
                catch (IOException e)
                {
                    throw new CliUsageException($"--host {a.Host} --port {a.Port}: cannot listen there ({e.Message})");
                }

                try
                {
                    io.Err.WriteLine($"serving {name} at {server.Address.GetLeftPart(UriPartial.Authority)} (model \"{served.Id}\") on {loaded.Description}; " +
                                     $"memory plan {loaded.Model.Plan}; context {engine.ContextLength} tokens; engine {DescribeEngine(engine)} (Ctrl+C stops)");
                    io.Err.Flush();
                    io.Cancel.WaitHandle.WaitOne();
                    io.Err.WriteLine("stopping: cancelling running requests");
                    io.Err.Flush();
                }
                finally
                {
                    server.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }
            finally
            {
                engine.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }

            io.Err.WriteLine("stopped");
            io.Err.Flush();
        }

        io.Cancel.ThrowIfCancellationRequested();
        return CliErrors.Ok;
    }
}
