// The OpenAI-compatible HTTP server: ASP.NET Core minimal APIs on Kestrel over one IGenerationEngine.
//
//   GET  /v1/models, /v1/models/{id}    the one served model
//   POST /v1/completions                 prompt -> text (OpenAI's "text_completion"; stream: "text_completion" chunks)
//   POST /v1/chat/completions            messages -> the family's chat format -> text ("chat.completion[.chunk]")
//   GET  /health                         200 {"status":"ok"}; 503 while shutting down
//   GET  /metrics                        Prometheus text (ServerMetrics.cs)
//   anything else                        404 (405: a known path with another method), as an error object
//
// The engine sees token ids only: this layer tokenizes (ServedModel), renders chats (ModelFamily.ChatPrompt), turns
// ids back into text as they come (StreamingDecoder: a UTF-8 character split over byte tokens is held until complete),
// cuts stop strings with holdback (StopMatcher) and counts usage. `stream: true` answers as server-sent events, one
// `data: {chunk}` per piece of text, a last chunk with finish_reason, the usage chunk when stream_options.include_usage,
// then `data: [DONE]`.
//
// Faults: a bad request is 400 with OpenAI's error object naming the field (OpenAiRequest.cs; the engine's own refusals,
// EngineRejectedException with Param, the same way); a busy engine is 503 with Retry-After; an engine fault is 500 (or,
// once a stream has begun, an error event and [DONE]). A client that goes away (HttpContext.RequestAborted) cancels its
// generation; so does a stop string once matched (the engine stops after its step in flight). StopAsync cancels every
// running request first (their streams end with an error event and [DONE], the others get 503), then stops Kestrel.
//
// The host handles no signal itself (NoSignalLifetime): the caller (the `serve` command, or a test) decides when to stop.
using System.Buffers;
using System.Net;
using System.Text.Encodings.Web;
using System.Text.Json;
using ILGpuMoE.Sampling;
using ILGpuMoE.Serving;
using ILGpuMoE.Tokenizer;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace ILGpuMoE.Server;

/// <summary>Where the server listens and its limits.</summary>
public sealed record ServerOptions
{
    /// <summary>An IP address, or "localhost" (the IPv4 loopback).</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>0 picks a free port (tests); <see cref="OpenAiServer.Address"/> tells which.</summary>
    public int Port { get; init; } = 8000;

    /// <summary>Largest request body; a larger one is answered 413.</summary>
    public long MaxRequestBodyBytes { get; init; } = 8 << 20;

    /// <summary>The Retry-After of a 503 (engine busy or shutting down).</summary>
    public int RetryAfterSeconds { get; init; } = 1;

    /// <summary>The address to bind; throws ArgumentException naming the bad option.</summary>
    public IPAddress Address()
    {
        if (Port is < 0 or > 65535)
            throw new ArgumentException($"--port must be in [0, 65535], got {Port}");
        if (string.Equals(Host, "localhost", StringComparison.OrdinalIgnoreCase))
            return IPAddress.Loopback;
        return IPAddress.TryParse(Host, out var ip)
            ? ip
            : throw new ArgumentException($"--host must be an IP address (127.0.0.1, 0.0.0.0, ::1) or localhost, got '{Host}'");
    }
}

/// <summary>The running server; <see cref="StopAsync"/> or dispose to stop it. The engine and the model stay the caller's.</summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    private const string StatusItem = "ilgpumoe.status";
    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();
    private static readonly JsonWriterOptions WriterOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private readonly WebApplication _app;
    private readonly IGenerationEngine _engine;
    private readonly ServedModel _model;
    private readonly ServerOptions _options;
    private readonly CancellationTokenSource _shutdown = new();
    private int _stopping;

    private OpenAiServer(WebApplication app, IGenerationEngine engine, ServedModel model, ServerOptions options)
    {
        _app = app;
        _engine = engine;
        _model = model;
        _options = options;
    }

    /// <summary>The bound address, e.g. http://127.0.0.1:8000 (the real port when <see cref="ServerOptions.Port"/> was 0).</summary>
    public Uri Address { get; private set; } = null!;

    public ServerMetrics Metrics { get; } = new();

    /// <summary>Binds and starts serving. Throws ArgumentException for bad options, IOException when the address is taken.</summary>
    public static async Task<OpenAiServer> StartAsync(IGenerationEngine engine, ServedModel model, ServerOptions? options = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(model);
        options ??= new ServerOptions();
        var address = options.Address();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ContentRootPath = AppContext.BaseDirectory,
            EnvironmentName = Environments.Production,
        });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<IHostLifetime, NoSignalLifetime>();
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(10));
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            k.Listen(address, options.Port);
        });
        var app = builder.Build();
        var server = new OpenAiServer(app, engine, model, options);
        server.Map(app);
        await app.StartAsync(cancel).ConfigureAwait(false);
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault()
                    ?? throw new InvalidOperationException("Kestrel reported no address");
        server.Address = new Uri(bound);
        return server;
    }

    /// <summary>Cancels every running request (their streams end), then stops Kestrel. Idempotent.</summary>
    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopping, 1) == 1)
            return;
        await _shutdown.CancelAsync().ConfigureAwait(false);
        await _app.StopAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
        _shutdown.Dispose();
    }

    private bool Stopping => Volatile.Read(ref _stopping) == 1;

    private void Map(WebApplication app)
    {
        // Every request is counted by endpoint and status; an unexpected exception becomes a 500 error object.
        app.Use(async (HttpContext ctx, RequestDelegate next) =>
        {
            try
            {
                await next(ctx).ConfigureAwait(false);
            }
            catch (Exception e) when (!ctx.Response.HasStarted)
            {
                await WriteError(ctx, 500, $"internal error: {e.GetType().Name}: {e.Message}", null, "server_error").ConfigureAwait(false);
            }
            finally
            {
                int status = ctx.Items.TryGetValue(StatusItem, out var s) && s is int given ? given : ctx.Response.StatusCode;
                Metrics.Request(EndpointLabel(ctx), status);
            }
        });
        app.MapGet("/v1/models", Models);
        app.MapGet("/v1/models/{id}", Model);
        app.MapPost("/v1/completions", ctx => Complete(ctx, chat: false));
        app.MapPost("/v1/chat/completions", ctx => Complete(ctx, chat: true));
        app.MapGet("/health", Health);
        app.MapGet("/metrics", MetricsText);
        // Anything else gets an error object too: 405 for a known path with another method, else 404.
        app.MapFallback(ctx =>
        {
            string path = ctx.Request.Path.Value ?? "";
            bool known = path is "/v1/models" or "/v1/completions" or "/v1/chat/completions" or "/health" or "/metrics" || path.StartsWith("/v1/models/", StringComparison.Ordinal);
            return known
                ? WriteError(ctx, 405, $"{ctx.Request.Method} is not allowed on {path}", null)
                : WriteError(ctx, 404, $"no such endpoint: {ctx.Request.Method} {path} (see /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics)", null);
        });
    }

    // The route's pattern ("/v1/completions", "/v1/models/{id}"); "other" for the fallback and anything unrouted.
    private static string EndpointLabel(HttpContext ctx) =>
        ctx.GetEndpoint() is RouteEndpoint { RoutePattern.RawText: { } pattern } && pattern.StartsWith('/') ? pattern : "other";

    private Task Health(HttpContext ctx) => WriteJson(ctx, Stopping ? 503 : 200, w =>
    {
        w.WriteStartObject();
        w.WriteString("status", Stopping ? "shutting down" : "ok");
        w.WriteEndObject();
    });

    private Task MetricsText(HttpContext ctx)
    {
        ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        return ctx.Response.WriteAsync(Metrics.Render(_engine.Stats(), _engine.ContextLength), ctx.RequestAborted);
    }

    private void WriteModel(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("id", _model.Id);
        w.WriteString("object", "model");
        w.WriteNumber("created", _model.Created);
        w.WriteString("owned_by", "ilgpumoe");
        w.WriteNumber("max_model_len", _engine.ContextLength);
        w.WriteEndObject();
    }

    private Task Models(HttpContext ctx) => WriteJson(ctx, 200, w =>
    {
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        WriteModel(w);
        w.WriteEndArray();
        w.WriteEndObject();
    });

    private Task Model(HttpContext ctx)
    {
        string? id = ctx.Request.RouteValues["id"] as string;
        return id == _model.Id
            ? WriteJson(ctx, 200, WriteModel)
            : WriteError(ctx, 404, $"the model '{id}' does not exist; this server serves '{_model.Id}'", "model", "invalid_request_error", "model_not_found");
    }

    private async Task Complete(HttpContext ctx, bool chat)
    {
        OpenAiRequest request;
        try
        {
            using var body = await ReadJson(ctx).ConfigureAwait(false);
            request = OpenAiRequest.Parse(body.RootElement, chat);
        }
        catch (ApiException e)
        {
            await WriteError(ctx, e.Status, e.Message, e.Param, e.Type).ConfigureAwait(false);
            return;
        }

        if (request.Model != _model.Id)
        {
            await WriteError(ctx, 400, $"the model '{request.Model}' does not exist; this server serves '{_model.Id}' (GET /v1/models)", "model").ConfigureAwait(false);
            return;
        }

        string promptField = chat ? "messages" : "prompt";
        IReadOnlyList<int> prompt;
        if (chat)
        {
            var (text, bos) = _model.Family.ChatPrompt(request.Messages!);
            prompt = _model.Encode(text, bos);
        }
        else
        {
            prompt = request.Prompt!.Tokens ?? _model.Encode(request.Prompt.Text!, addBos: true);
        }

        // Without max_tokens: OpenAI's 16 for completions, the rest of the context for chat (at least 1, so that a prompt
        // too long for the context is refused for the prompt, not for a max_tokens the client never gave).
        int room = Math.Max(1, _engine.ContextLength - prompt.Count);
        int maxTokens = request.MaxTokens ?? (chat ? room : Math.Min(16, room));
        var sampling = new SamplingOptions(request.Temperature, request.TopK, request.TopP, unchecked((ulong)(request.Seed ?? Random.Shared.NextInt64())));
        if (Stopping)
        {
            await WriteError(ctx, 503, "the server is shutting down", null, "server_error").ConfigureAwait(false);
            return;
        }

        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, _shutdown.Token);
        IGeneration generation;
        try
        {
            generation = _engine.Submit(new GenerationRequest(prompt, maxTokens, sampling, _model.StopTokenIds), cancel.Token);
        }
        catch (EngineRejectedException e) when (e.Retryable)
        {
            await WriteError(ctx, 503, e.Message, null, "server_error").ConfigureAwait(false);
            return;
        }
        catch (EngineRejectedException e)
        {
            string? param = e.Param == "prompt" ? promptField : e.Param;
            if (param == "max_tokens" && request.MaxTokens is null)
                param = promptField; // the default max_tokens was refused: the prompt leaves no room
            await WriteError(ctx, 400, e.Message, param).ConfigureAwait(false);
            return;
        }

        var run = new Run(this, ctx, chat, request, prompt.Count, cancel);
        await (request.Stream ? run.StreamAsync(generation) : run.WholeAsync(generation)).ConfigureAwait(false);
    }

    /// <summary>One generation's text: decoding, stop strings, usage, and the response in either form.</summary>
    private sealed class Run(OpenAiServer server, HttpContext ctx, bool chat, OpenAiRequest request, int promptTokens, CancellationTokenSource cancel)
    {
        private readonly StreamingDecoder _decoder = new(server._model.Tokenizer);
        private readonly StopMatcher _stops = new(request.Stop);
        private readonly string _id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        private int _completionTokens;

        private string Object => chat ? "chat.completion" : "text_completion";

        /// <summary>Reads the tokens, passing each releasable piece of text to <paramref name="emit"/>; returns the
        /// finish_reason, or null when the generation was cancelled (client gone or server stopping).</summary>
        private async Task<string?> Drive(IGeneration generation, Func<string, Task> emit)
        {
            int vocab = server._model.Tokenizer.VocabSize;
            await foreach (int token in generation.Tokens.ConfigureAwait(false))
            {
                _completionTokens++;
                server.Metrics.Generated(1);
                // A model vocabulary padded past the tokenizer's gives no text (as `generate`).
                string piece = _stops.Push(token < vocab ? _decoder.Push(token) : "");
                if (piece.Length > 0)
                    await emit(piece).ConfigureAwait(false);
                if (_stops.Stopped)
                {
                    await cancel.CancelAsync().ConfigureAwait(false);
                    break;
                }
            }

            var reason = await generation.Finished.ConfigureAwait(false);
            if (_stops.Stopped)
                return "stop";
            string tail = _stops.Push(_decoder.Flush());
            tail += _stops.Flush();
            if (tail.Length > 0)
                await emit(tail).ConfigureAwait(false);
            if (_stops.Stopped)
                return "stop";
            return reason switch
            {
                FinishReason.Stop => "stop",
                FinishReason.Length => "length",
                FinishReason.Cancelled => null,
                _ => throw new System.Diagnostics.UnreachableException($"finish reason {reason}"),
            };
        }

        private void Usage(Utf8JsonWriter w)
        {
            w.WriteStartObject("usage");
            w.WriteNumber("prompt_tokens", promptTokens);
            w.WriteNumber("completion_tokens", _completionTokens);
            w.WriteNumber("total_tokens", promptTokens + _completionTokens);
            w.WriteEndObject();
        }

        private void Head(Utf8JsonWriter w, string obj)
        {
            w.WriteString("id", _id);
            w.WriteString("object", obj);
            w.WriteNumber("created", _created);
            w.WriteString("model", server._model.Id);
        }

        public async Task WholeAsync(IGeneration generation)
        {
            var text = new System.Text.StringBuilder();
            string? finish;
            try
            {
                finish = await Drive(generation, piece =>
                {
                    text.Append(piece);
                    return Task.CompletedTask;
                }).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                await server.WriteError(ctx, 500, $"the engine failed: {e.Message}", null, "server_error").ConfigureAwait(false);
                return;
            }

            if (finish is null)
            {
                if (ctx.RequestAborted.IsCancellationRequested)
                    ctx.Items[StatusItem] = 499;
                else
                    await server.WriteError(ctx, 503, "the server is shutting down; the request was cancelled", null, "server_error").ConfigureAwait(false);
                return;
            }

            await WriteJson(ctx, 200, w =>
            {
                w.WriteStartObject();
                Head(w, Object);
                w.WriteStartArray("choices");
                w.WriteStartObject();
                w.WriteNumber("index", 0);
                if (chat)
                {
                    w.WriteStartObject("message");
                    w.WriteString("role", "assistant");
                    w.WriteString("content", text.ToString());
                    w.WriteEndObject();
                }
                else
                {
                    w.WriteString("text", text.ToString());
                }

                w.WriteNull("logprobs");
                w.WriteString("finish_reason", finish);
                w.WriteEndObject();
                w.WriteEndArray();
                Usage(w);
                w.WriteEndObject();
            }).ConfigureAwait(false);
        }

        public async Task StreamAsync(IGeneration generation)
        {
            var response = ctx.Response;
            response.StatusCode = 200;
            response.ContentType = "text/event-stream; charset=utf-8";
            response.Headers.CacheControl = "no-cache";
            response.Headers["X-Accel-Buffering"] = "no";
            var aborted = ctx.RequestAborted;
            try
            {
                if (chat)
                    await Chunk(w => w.WriteString("role", "assistant"), "", null).ConfigureAwait(false);
                else
                    await response.StartAsync(aborted).ConfigureAwait(false);
                string? finish;
                try
                {
                    finish = await Drive(generation, piece => Chunk(null, piece, null)).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    await Event(w => ErrorObject(w, $"the engine failed: {e.Message}", null, "server_error", null)).ConfigureAwait(false);
                    await response.Body.WriteAsync(Done, aborted).ConfigureAwait(false);
                    return;
                }

                if (finish is null)
                {
                    if (aborted.IsCancellationRequested)
                    {
                        ctx.Items[StatusItem] = 499;
                        return;
                    }

                    await Event(w => ErrorObject(w, "the server is shutting down; the request was cancelled", null, "server_error", null)).ConfigureAwait(false);
                }
                else
                {
                    await Chunk(null, null, finish).ConfigureAwait(false);
                    if (request.IncludeUsage)
                    {
                        await Event(w =>
                        {
                            w.WriteStartObject();
                            Head(w, chat ? "chat.completion.chunk" : "text_completion");
                            w.WriteStartArray("choices");
                            w.WriteEndArray();
                            Usage(w);
                            w.WriteEndObject();
                        }).ConfigureAwait(false);
                    }
                }

                await response.Body.WriteAsync(Done, aborted).ConfigureAwait(false);
                await response.Body.FlushAsync(aborted).ConfigureAwait(false);
            }
            catch (Exception e) when ((e is OperationCanceledException or IOException) && aborted.IsCancellationRequested)
            {
                // The client went away mid-stream: its generation was cancelled through the linked token.
                await cancel.CancelAsync().ConfigureAwait(false);
                ctx.Items[StatusItem] = 499;
            }
        }

        // One chunk: chat's {"delta": {role?, content?}} or a completion's {"text"}; finish_reason on the last.
        private Task Chunk(Action<Utf8JsonWriter>? role, string? content, string? finish) => Event(w =>
        {
            w.WriteStartObject();
            Head(w, chat ? "chat.completion.chunk" : "text_completion");
            w.WriteStartArray("choices");
            w.WriteStartObject();
            w.WriteNumber("index", 0);
            if (chat)
            {
                w.WriteStartObject("delta");
                role?.Invoke(w);
                if (content is not null)
                    w.WriteString("content", content);
                w.WriteEndObject();
            }
            else
            {
                w.WriteString("text", content ?? "");
            }

            w.WriteNull("logprobs");
            if (finish is null)
                w.WriteNull("finish_reason");
            else
                w.WriteString("finish_reason", finish);
            w.WriteEndObject();
            w.WriteEndArray();
            // With include_usage every chunk carries "usage": null, and the extra last chunk the counts (as OpenAI).
            if (request.IncludeUsage)
                w.WriteNull("usage");
            w.WriteEndObject();
        });

        private async Task Event(Action<Utf8JsonWriter> write)
        {
            var body = ctx.Response.Body;
            var aborted = ctx.RequestAborted;
            await body.WriteAsync(DataPrefix, aborted).ConfigureAwait(false);
            await body.WriteAsync(Serialize(write), aborted).ConfigureAwait(false);
            await body.WriteAsync(EventEnd, aborted).ConfigureAwait(false);
            await body.FlushAsync(aborted).ConfigureAwait(false);
        }
    }

    private static async Task<JsonDocument> ReadJson(HttpContext ctx)
    {
        try
        {
            return await JsonDocument.ParseAsync(ctx.Request.Body, default, ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"the request body is not valid JSON: {e.Message}");
        }
        catch (BadHttpRequestException e)
        {
            throw new ApiException(e.StatusCode, $"the request body could not be read: {e.Message}");
        }
    }

    private static ReadOnlyMemory<byte> Serialize(Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer, WriterOptions))
            write(w);
        return buffer.WrittenMemory;
    }

    private static async Task WriteJson(HttpContext ctx, int status, Action<Utf8JsonWriter> write)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.Body.WriteAsync(Serialize(write), ctx.RequestAborted).ConfigureAwait(false);
    }

    private static void ErrorObject(Utf8JsonWriter w, string message, string? param, string type, string? code)
    {
        w.WriteStartObject();
        w.WriteStartObject("error");
        w.WriteString("message", message);
        w.WriteString("type", type);
        if (param is null)
            w.WriteNull("param");
        else
            w.WriteString("param", param);
        if (code is null)
            w.WriteNull("code");
        else
            w.WriteString("code", code);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private Task WriteError(HttpContext ctx, int status, string message, string? param, string type = "invalid_request_error", string? code = null)
    {
        if (ctx.Response.HasStarted)
            return Task.CompletedTask;
        if (status == 503)
            ctx.Response.Headers.RetryAfter = _options.RetryAfterSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return WriteJson(ctx, status, w => ErrorObject(w, message, param, type, code));
    }

    /// <summary>The host's lifetime without signal handling: whoever started the server stops it.</summary>
    private sealed class NoSignalLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
