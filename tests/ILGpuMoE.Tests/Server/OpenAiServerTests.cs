using System.Globalization;
using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using ILGpuMoE.Model;
using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;
using ILGpuMoE.Server;
using ILGpuMoE.Serving;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tokenizer;
using static ILGpuMoE.Tests.Server.ServerClient;

namespace ILGpuMoE.Tests.Server;

/// <summary>
/// The OpenAI server (src/ILGpuMoE.Server) for real: Kestrel on 127.0.0.1 at a free port, HttpClient, the shipped demo
/// model on the CPU backend behind each engine (the continuous-batching one `serve` runs, and the serial one); no mocks. Two servers share the one engine: `_server` stops on the
/// model's EOS as `serve` does; `_endless` has no stop token, so its generations run exactly max_tokens (for
/// cancellation, shutdown and load, where a length must not depend on when the random model samples EOS).
/// </summary>
[NonParallelizable]
[TestFixture("batch")]
[TestFixture("serial")]
public class OpenAiServerTests(string engineKind)
{
    private const int Context = 1024;
    private const string Model = "mixtral-demo";
    private MoeModel _model = null!;
    private ITextTokenizer _tokenizer = null!;
    private IGenerationEngine _engine = null!;
    private OpenAiServer _server = null!, _endless = null!;

    private Uri Url => _server.Address;

    private Uri Endless => _endless.Address;

    [OneTimeSetUp]
    public async Task Start()
    {
        _model = MoeModel.Load(TestDevice.Accelerator, Runtime.RuntimeCliTests.DemoDir, new ModelLoadOptions { MaxSeq = Context, Kernels = KernelPolicy.Cpu });
        _tokenizer = TextTokenizer.Load(Runtime.RuntimeCliTests.DemoDir);
        _engine = Engine(_model);
        var local = new ServerOptions { Port = 0 };
        _server = await OpenAiServer.StartAsync(_engine, ServedModel.For(Model, _model.Config, _tokenizer), local);
        _endless = await OpenAiServer.StartAsync(_engine, new ServedModel(Model, _tokenizer, _model.Config.Family, []), local);
    }

    [OneTimeTearDown]
    public async Task Stop()
    {
        await _server.DisposeAsync();
        await _endless.DisposeAsync();
        await _engine.DisposeAsync();
        _tokenizer.Dispose();
        _model.Dispose();
    }

    // The engine under test over a model; maxWaiting: its queue bound (busy beyond it).
    private IGenerationEngine Engine(MoeModel model, int? maxWaiting = null) => engineKind switch
    {
        "batch" => new BatchEngine(model, new BatchEngineOptions { MaxWaiting = maxWaiting ?? 256, MaxRunning = maxWaiting is null ? 16 : 1 }),
        "serial" => new SerialEngine(model, new SerialEngineOptions { MaxWaiting = maxWaiting ?? 256 }),
        _ => throw new ArgumentException($"unknown engine kind {engineKind}"),
    };

    private int TotalBlocks => _engine switch
    {
        BatchEngine b => b.KvPool.Blocks,
        SerialEngine s => s.KvBlocks,
        _ => throw new InvalidOperationException($"unknown engine {_engine.GetType().Name}"),
    };

    private static async Task WaitUntil(Func<bool> condition, string what, double seconds = 20)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed.TotalSeconds > seconds)
                Assert.Fail($"timed out waiting until {what}");
            await Task.Delay(5);
        }
    }

    private Task WaitIdle() => WaitUntil(() => _engine.Stats() is { Running: 0, Waiting: 0, KvBlocksUsed: 0 }, "the engine is idle");

    private static string Completion(string prompt, int maxTokens, string extra = "") =>
        $$"""{"model": "{{Model}}", "prompt": {{Q(prompt)}}, "max_tokens": {{maxTokens}}, "temperature": 0{{extra}}}""";

    private static string Chat(string user, int maxTokens, string extra = "") =>
        $$"""{"model": "{{Model}}", "messages": [{"role": "user", "content": {{Q(user)}}}], "max_tokens": {{maxTokens}}, "temperature": 0{{extra}}}""";

    [Test]
    public async Task ModelsListsTheServedModelAndHealthIsOk()
    {
        var models = await Get(Url, "/v1/models");
        Assert.That(models.Status, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(models.Body.GetProperty("object").GetString(), Is.EqualTo("list"));
        var data = models.Body.GetProperty("data");
        Assert.That(data.GetArrayLength(), Is.EqualTo(1));
        Assert.That(data[0].GetProperty("id").GetString(), Is.EqualTo(Model));
        Assert.That(data[0].GetProperty("object").GetString(), Is.EqualTo("model"));
        Assert.That(data[0].GetProperty("max_model_len").GetInt32(), Is.EqualTo(Context));
        Assert.That((await Get(Url, $"/v1/models/{Model}")).Body.GetProperty("id").GetString(), Is.EqualTo(Model));
        var other = await Get(Url, "/v1/models/gpt-4");
        Assert.That((other.Status, other.ErrorParam), Is.EqualTo((HttpStatusCode.NotFound, "model")));
        var health = await Get(Url, "/health");
        Assert.That((health.Status, health.Body.GetProperty("status").GetString()), Is.EqualTo((HttpStatusCode.OK, "ok")));
    }

    [Test]
    public async Task AGreedyCompletionIsTheTextGenerateWrites()
    {
        const string prompt = "Once upon a time";
        GenerationResult expected;
        using (var session = _model.NewSession())
            expected = Generator.Run(session, _tokenizer, prompt, new GenerationOptions { MaxNewTokens = 20, Sampling = new SamplingOptions(Temperature: 0) });
        var reply = await Post(Url, "/v1/completions", Completion(prompt, 20));
        Assert.That(reply.Status, Is.EqualTo(HttpStatusCode.OK), reply.Body.ToString());
        Assert.That(reply.Body.GetProperty("object").GetString(), Is.EqualTo("text_completion"));
        Assert.That(reply.Body.GetProperty("model").GetString(), Is.EqualTo(Model));
        Assert.That(reply.Body.GetProperty("id").GetString(), Does.StartWith("cmpl-"));
        Assert.That(reply.Text, Is.EqualTo(expected.Text));
        Assert.That(reply.FinishReason, Is.EqualTo(expected.Stop == StopReason.Eos ? "stop" : "length"));
        Assert.That(reply.Usage("prompt_tokens"), Is.EqualTo(expected.PromptTokens.Count));
        Assert.That(reply.Usage("completion_tokens"), Is.EqualTo(expected.Tokens.Count));
        Assert.That(reply.Usage("total_tokens"), Is.EqualTo(expected.PromptTokens.Count + expected.Tokens.Count));
    }

    [TestCase("/v1/completions")]
    [TestCase("/v1/chat/completions")]
    public async Task AStreamIsTheSameTextInChunksEndingWithDone(string path)
    {
        bool chat = path.Contains("chat", StringComparison.Ordinal);
        string body(string extra) => chat ? Chat("tell me a story", 24, extra) : Completion("tell me a story", 24, extra);
        var whole = await Post(Endless, path, body(""));
        var stream = await Stream(Endless, path, body(""", "stream": true, "stream_options": {"include_usage": true}"""));
        Assert.That((stream.Status, stream.ContentType), Is.EqualTo((HttpStatusCode.OK, "text/event-stream")));
        Assert.That(stream.Done, Is.True, "ends with data: [DONE]");
        Assert.That(stream.Text, Is.EqualTo(whole.Text), "the chunks joined are the whole response's text");
        Assert.That((stream.FinishReason, whole.FinishReason), Is.EqualTo(("length", "length")));
        string chunkObject = chat ? "chat.completion.chunk" : "text_completion";
        Assert.That(stream.Events.Select(e => e.GetProperty("object").GetString()), Is.All.EqualTo(chunkObject));
        Assert.That(stream.Events.Select(e => e.GetProperty("id").GetString()).Distinct().Count(), Is.EqualTo(1), "one id for every chunk");
        if (chat)
            Assert.That(stream.Events[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString(), Is.EqualTo("assistant"));
        Assert.That(stream.Events.SkipLast(1).Select(e => e.GetProperty("usage").ValueKind), Is.All.EqualTo(JsonValueKind.Null), "usage: null before the last chunk");
        var usage = stream.Events[^1];
        Assert.That(usage.GetProperty("choices").GetArrayLength(), Is.Zero, "the usage chunk has no choices");
        Assert.That(usage.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(24));
        Assert.That(usage.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(whole.Usage("prompt_tokens")));
    }

    [Test]
    public async Task AChatIsTheFamilysFormatOfItsMessages()
    {
        var messages = new[]
        {
            new ChatMessage(ChatRole.System, "Be brief."),
            new ChatMessage(ChatRole.User, "Hello there"),
            new ChatMessage(ChatRole.Assistant, "Hi."),
            new ChatMessage(ChatRole.User, "What now?"),
        };
        var (text, bos) = _model.Config.Family.ChatPrompt(messages);
        var ids = _tokenizer.Encode(text, bos);
        var chat = await Post(Url, "/v1/chat/completions", $$"""
            {"model": "{{Model}}", "max_tokens": 16, "temperature": 0, "messages": [
              {"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
              {"role": "assistant", "content": "Hi."},
              {"role": "user", "content": "What now?", "name": "me"}]}
            """);
        Assert.That(chat.Status, Is.EqualTo(HttpStatusCode.OK), chat.Body.ToString());
        Assert.That(chat.Body.GetProperty("object").GetString(), Is.EqualTo("chat.completion"));
        Assert.That(chat.Body.GetProperty("choices")[0].GetProperty("message").GetProperty("role").GetString(), Is.EqualTo("assistant"));
        var same = await Post(Url, "/v1/completions", $$"""{"model": "{{Model}}", "max_tokens": 16, "temperature": 0, "prompt": [{{string.Join(",", ids)}}]}""");
        Assert.That(chat.Usage("prompt_tokens"), Is.EqualTo(ids.Count), "the chat prompt is the family's rendering, tokenized");
        Assert.That(chat.Text, Is.EqualTo(same.Text), "the chat's answer is the completion of those tokens");
        Assert.That(chat.FinishReason, Is.EqualTo(same.FinishReason));
    }

    [Test]
    public async Task SixteenConcurrentRequestsEachEqualTheirSoloRun()
    {
        var requests = Enumerable.Range(0, 16).Select(i =>
        {
            string path = i % 3 == 0 ? "/v1/chat/completions" : "/v1/completions";
            string prompt = $"request {i}: {new string('z', i % 5)} go";
            int max = 6 + i % 11;
            return (Path: path, Body: path.Contains("chat", StringComparison.Ordinal) ? Chat(prompt, max) : Completion(prompt, max), Stream: i % 2 == 0);
        }).ToArray();
        async Task<(string Text, string? Finish)> Run((string Path, string Body, bool Stream) r)
        {
            if (!r.Stream)
            {
                var reply = await Post(Url, r.Path, r.Body);
                Assert.That(reply.Status, Is.EqualTo(HttpStatusCode.OK), reply.Body.ToString());
                return (reply.Text, reply.FinishReason);
            }

            var s = await Stream(Url, r.Path, r.Body.Insert(r.Body.Length - 1, ", \"stream\": true"));
            Assert.That(s.Done, Is.True);
            return (s.Text, s.FinishReason);
        }

        var solo = new List<(string, string?)>();
        foreach (var r in requests)
            solo.Add(await Run(r));
        var together = await Task.WhenAll(requests.Select(r => Task.Run(() => Run(r))));
        for (int i = 0; i < requests.Length; i++)
            Assert.That(together[i], Is.EqualTo(solo[i]), $"request {i} ({requests[i].Path}, stream {requests[i].Stream}): with 15 others vs alone");
        await WaitIdle();
    }

    [Test]
    public async Task AClientThatHangsUpMidStreamCancelsItsGenerationAndFreesTheEngine()
    {
        long before = _engine.Stats().GeneratedTokens;
        var first = await Stream(Endless, "/v1/completions", Completion("hang up", 1000, """, "stream": true"""), stopAfter: 3);
        Assert.That(first.Events, Has.Count.EqualTo(3));
        await WaitIdle();
        Assert.That(_engine.Stats().GeneratedTokens - before, Is.LessThan(1000), "the generation stopped before its max_tokens");
        var next = await Post(Endless, "/v1/completions", Completion("after", 5));
        Assert.That((next.Status, next.FinishReason, next.Usage("completion_tokens")), Is.EqualTo((HttpStatusCode.OK, "length", 5)));
        await WaitUntil(() => _endless.Metrics.Render(_engine.Stats(), Context).Contains("status=\"499\"", StringComparison.Ordinal), "the hang-up is counted as 499");
    }

    [Test]
    public async Task AStopStringCutsTheTextBeforeItWithOrWithoutStreaming()
    {
        var free = await Post(Endless, "/v1/completions", Completion("stop here", 40));
        string text = free.Text;
        Assert.That(text.Length, Is.GreaterThan(12), text);
        // A stop string from the middle of the text (it may span tokens), and one that never occurs.
        string stop = text.Substring(text.Length / 2, 3);
        int cut = text.IndexOf(stop, StringComparison.Ordinal);
        string stops = $$""", "stop": [{{Q("\u0001never")}}, {{Q(stop)}}]""";
        var whole = await Post(Endless, "/v1/completions", Completion("stop here", 40, stops));
        Assert.That((whole.Text, whole.FinishReason), Is.EqualTo((text[..cut], "stop")));
        var streamed = await Stream(Endless, "/v1/completions", Completion("stop here", 40, stops + ", \"stream\": true"));
        Assert.That((streamed.Text, streamed.FinishReason, streamed.Done), Is.EqualTo((text[..cut], "stop", true)));
        // A single string works as well, in chat too.
        var chatFree = await Post(Endless, "/v1/chat/completions", Chat("stop here", 40));
        string chatStop = chatFree.Text.Substring(chatFree.Text.Length / 2, 2);
        var chat = await Stream(Endless, "/v1/chat/completions", Chat("stop here", 40, $", \"stop\": {Q(chatStop)}, \"stream\": true"));
        Assert.That(chat.Text, Is.EqualTo(chatFree.Text[..chatFree.Text.IndexOf(chatStop, StringComparison.Ordinal)]));
        await WaitIdle();
    }

    private static IEnumerable<TestCaseData> BadRequests()
    {
        string longPrompt = string.Concat(Enumerable.Repeat("word ", 1500));
        TestCaseData Case(string name, string path, string body, string? param) => new TestCaseData(path, body, param).SetName($"{{m}}({name})");
        const string c = "/v1/completions", ch = "/v1/chat/completions";
        yield return Case("malformed JSON", c, """{"model": "mixtral-demo", "prompt": """, null);
        yield return Case("empty body", c, "", null);
        yield return Case("not an object", c, "[1, 2]", null);
        yield return Case("no model", c, """{"prompt": "a"}""", "model");
        yield return Case("model not a string", c, """{"model": 3, "prompt": "a"}""", "model");
        yield return Case("unknown model", c, """{"model": "gpt-4", "prompt": "a"}""", "model");
        yield return Case("no prompt", c, """{"model": "mixtral-demo"}""", "prompt");
        yield return Case("prompt an object", c, """{"model": "mixtral-demo", "prompt": {"a": 1}}""", "prompt");
        yield return Case("two prompts", c, """{"model": "mixtral-demo", "prompt": ["a", "b"]}""", "prompt");
        yield return Case("negative token id", c, """{"model": "mixtral-demo", "prompt": [1, -5]}""", "prompt");
        yield return Case("token id past the vocabulary", c, """{"model": "mixtral-demo", "prompt": [1, 1000]}""", "prompt");
        yield return Case("prompt too long", c, $$"""{"model": "mixtral-demo", "prompt": {{Q(longPrompt)}}}""", "prompt");
        yield return Case("chat prompt too long", ch, $$"""{"model": "mixtral-demo", "messages": [{"role": "user", "content": {{Q(longPrompt)}}}]}""", "messages");
        yield return Case("max_tokens 0", c, """{"model": "mixtral-demo", "prompt": "a", "max_tokens": 0}""", "max_tokens");
        yield return Case("max_tokens negative", ch, """{"model": "mixtral-demo", "messages": [{"role": "user", "content": "a"}], "max_tokens": -1}""", "max_tokens");
        yield return Case("max_tokens beyond the context", c, """{"model": "mixtral-demo", "prompt": "a", "max_tokens": 1024}""", "max_tokens");
        yield return Case("max_tokens a string", c, """{"model": "mixtral-demo", "prompt": "a", "max_tokens": "5"}""", "max_tokens");
        yield return Case("max_tokens fractional", c, """{"model": "mixtral-demo", "prompt": "a", "max_tokens": 2.5}""", "max_tokens");
        yield return Case("max_completion_tokens 0", ch, """{"model": "mixtral-demo", "messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0}""", "max_completion_tokens");
        yield return Case("temperature a string", c, """{"model": "mixtral-demo", "prompt": "a", "temperature": "hot"}""", "temperature");
        yield return Case("temperature above 2", c, """{"model": "mixtral-demo", "prompt": "a", "temperature": 2.5}""", "temperature");
        yield return Case("top_p 0", c, """{"model": "mixtral-demo", "prompt": "a", "top_p": 0}""", "top_p");
        yield return Case("seed fractional", c, """{"model": "mixtral-demo", "prompt": "a", "seed": 1.5}""", "seed");
        yield return Case("stream a string", c, """{"model": "mixtral-demo", "prompt": "a", "stream": "yes"}""", "stream");
        yield return Case("stop a number", c, """{"model": "mixtral-demo", "prompt": "a", "stop": 7}""", "stop");
        yield return Case("five stop strings", c, """{"model": "mixtral-demo", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}""", "stop");
        yield return Case("empty stop string", c, """{"model": "mixtral-demo", "prompt": "a", "stop": ""}""", "stop");
        yield return Case("n 2", c, """{"model": "mixtral-demo", "prompt": "a", "n": 2}""", "n");
        yield return Case("logprobs", c, """{"model": "mixtral-demo", "prompt": "a", "logprobs": 3}""", "logprobs");
        yield return Case("chat logprobs", ch, """{"model": "mixtral-demo", "messages": [{"role": "user", "content": "a"}], "logprobs": true}""", "logprobs");
        yield return Case("echo", c, """{"model": "mixtral-demo", "prompt": "a", "echo": true}""", "echo");
        yield return Case("best_of 3", c, """{"model": "mixtral-demo", "prompt": "a", "best_of": 3}""", "best_of");
        yield return Case("presence_penalty", c, """{"model": "mixtral-demo", "prompt": "a", "presence_penalty": 0.5}""", "presence_penalty");
        yield return Case("tools", ch, """{"model": "mixtral-demo", "messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]}""", "tools");
        yield return Case("json response_format", ch, """{"model": "mixtral-demo", "messages": [{"role": "user", "content": "a"}], "response_format": {"type": "json_object"}}""", "response_format");
        yield return Case("unknown field", c, """{"model": "mixtral-demo", "prompt": "a", "frobnicate": 1}""", "frobnicate");
        yield return Case("messages on completions", c, """{"model": "mixtral-demo", "prompt": "a", "messages": []}""", "messages");
        yield return Case("no messages", ch, """{"model": "mixtral-demo"}""", "messages");
        yield return Case("empty messages", ch, """{"model": "mixtral-demo", "messages": []}""", "messages");
        yield return Case("messages a string", ch, """{"model": "mixtral-demo", "messages": "hi"}""", "messages");
        yield return Case("unknown role", ch, """{"model": "mixtral-demo", "messages": [{"role": "robot", "content": "a"}]}""", "messages[0].role");
        yield return Case("tool role", ch, """{"model": "mixtral-demo", "messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}""", "messages[1].role");
        yield return Case("content a number", ch, """{"model": "mixtral-demo", "messages": [{"role": "user", "content": 5}]}""", "messages[0].content");
        yield return Case("image part", ch, """{"model": "mixtral-demo", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}""", "messages[0].content[0].type");
        yield return Case("no content", ch, """{"model": "mixtral-demo", "messages": [{"role": "user"}]}""", "messages[0].content");
    }

    [TestCaseSource(nameof(BadRequests))]
    public async Task ABadRequestIs400NamingTheField(string path, string body, string? param)
    {
        foreach (bool stream in new[] { false, true })
        {
            string sent = stream && body.StartsWith('{') && body.EndsWith('}') && body.Length > 2 ? body[..^1] + ", \"stream\": true}" : body;
            if (param == "stream" && stream)
                continue;
            var reply = await Post(Url, path, sent);
            Assert.That(reply.Status, Is.EqualTo(HttpStatusCode.BadRequest), $"{sent} -> {reply.Body}");
            Assert.That(reply.Message.Content.Headers.ContentType?.MediaType, Is.EqualTo("application/json"));
            var error = reply.Body.GetProperty("error");
            Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
            Assert.That(error.GetProperty("message").GetString(), Is.Not.Empty);
            Assert.That(error.GetProperty("param").ValueKind, Is.EqualTo(param is null ? JsonValueKind.Null : JsonValueKind.String));
            Assert.That(reply.ErrorParam, Is.EqualTo(param), error.GetProperty("message").GetString());
            Assert.That(error.GetProperty("code").ValueKind, Is.EqualTo(JsonValueKind.Null));
        }

        Assert.That(_engine.Stats() is { Running: 0, Waiting: 0 }, Is.True, "nothing reached the engine");
    }

    [Test]
    public async Task ABusyEngineIs503WithRetryAfter()
    {
        // Its own engine with no waiting room (the shared engine is idle meanwhile: one engine steps the model at a time).
        await using var engine = Engine(_model, maxWaiting: 0);
        await using var server = await OpenAiServer.StartAsync(engine, new ServedModel(Model, _tokenizer, _model.Config.Family, []), new ServerOptions { Port = 0 });
        using var hangUp = new CancellationTokenSource();
        var running = Stream(server.Address, "/v1/completions", Completion("busy", 1000, """, "stream": true"""), stopAfter: 1000, hangUp.Token);
        await WaitUntil(() => engine.Stats().Running == 1, "the first request runs");
        var busy = await Post(server.Address, "/v1/completions", Completion("me too", 4));
        Assert.That(busy.Status, Is.EqualTo(HttpStatusCode.ServiceUnavailable), busy.Body.ToString());
        Assert.That(busy.Message.Headers.RetryAfter?.Delta, Is.EqualTo(TimeSpan.FromSeconds(1)));
        Assert.That(busy.Body.GetProperty("error").GetProperty("type").GetString(), Is.EqualTo("server_error"));
        hangUp.Cancel();
        Assert.That(async () => await running, Throws.InstanceOf<OperationCanceledException>());
        await WaitUntil(() => engine.Stats() is { Running: 0, Waiting: 0 }, "the busy engine is idle");
        var after = await Post(server.Address, "/v1/completions", Completion("me too", 4));
        Assert.That(after.Status, Is.EqualTo(HttpStatusCode.OK), after.Body.ToString());
    }

    [Test]
    public async Task AnUnknownPathIs404AndAWrongMethod405WithAnErrorObject()
    {
        var missing = await Get(Url, "/v1/embeddings");
        Assert.That(missing.Status, Is.EqualTo(HttpStatusCode.NotFound));
        Assert.That(missing.Body.GetProperty("error").GetProperty("message").GetString(), Does.Contain("/v1/embeddings"));
        var wrong = await Get(Url, "/v1/completions");
        Assert.That(wrong.Status, Is.EqualTo(HttpStatusCode.MethodNotAllowed));
        Assert.That(wrong.Body.GetProperty("error").GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
    }

    [Test]
    public async Task ABodyPastTheLimitIs413()
    {
        await using var server = await OpenAiServer.StartAsync(_engine, ServedModel.For(Model, _model.Config, _tokenizer), new ServerOptions { Port = 0, MaxRequestBodyBytes = 1024 });
        var reply = await Post(server.Address, "/v1/completions", Completion(new string('a', 4000), 2));
        Assert.That(reply.Status, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge), reply.Body.ToString());
        Assert.That(reply.Body.GetProperty("error").GetProperty("message").GetString(), Is.Not.Empty);
        Assert.That((await Post(server.Address, "/v1/completions", Completion("short", 2))).Status, Is.EqualTo(HttpStatusCode.OK));
    }

    [Test]
    public async Task AnEngineFaultIs500OrAnErrorEventInAStream()
    {
        // A model of its own, disposed under its engine: every step then throws, a real fault with no mock.
        var model = MoeModel.Load(TestDevice.Accelerator, Runtime.RuntimeCliTests.DemoDir, new ModelLoadOptions { MaxSeq = 64, Kernels = KernelPolicy.Cpu });
        await using var engine = Engine(model);
        await using var server = await OpenAiServer.StartAsync(engine, ServedModel.For(Model, model.Config, _tokenizer), new ServerOptions { Port = 0 });
        model.Dispose();
        var whole = await Post(server.Address, "/v1/completions", Completion("fault", 4));
        Assert.That(whole.Status, Is.EqualTo(HttpStatusCode.InternalServerError), whole.Body.ToString());
        Assert.That(whole.Body.GetProperty("error").GetProperty("type").GetString(), Is.EqualTo("server_error"));
        var stream = await Stream(server.Address, "/v1/chat/completions", Chat("fault", 4, """, "stream": true"""));
        Assert.That(stream.Done, Is.True, "the stream still ends with [DONE]");
        Assert.That(stream.Events[^1].GetProperty("error").GetProperty("type").GetString(), Is.EqualTo("server_error"));
        Assert.That(engine.Stats() is { Running: 0, Waiting: 0 }, Is.True, "the engine goes on");
    }

    [Test]
    public async Task StoppingTheServerEndsItsRunningStreams()
    {
        var server = await OpenAiServer.StartAsync(_engine, new ServedModel(Model, _tokenizer, _model.Config.Family, []), new ServerOptions { Port = 0 });
        var path = "/v1/chat/completions";
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server.Address, path)) { Content = Json(Chat("until shutdown", 900, """, "stream": true""")) };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        Assert.That(await reader.ReadLineAsync(), Does.StartWith("data: "));
        var stop = server.DisposeAsync().AsTask();
        string rest = await reader.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(20));
        await stop.WaitAsync(TimeSpan.FromSeconds(20));
        var events = rest.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.That(events[^1], Is.EqualTo("data: [DONE]"), "the stream ends with [DONE]");
        Assert.That(events[^2], Does.Contain("\"error\"").And.Contain("shutting down"), "after an error event saying why");
        await WaitIdle();
        Assert.That((await Get(Url, "/health")).Status, Is.EqualTo(HttpStatusCode.OK), "the other servers go on");
    }

    [Test]
    public async Task MetricsAreValidPrometheusTextWithTheEnginesCounters()
    {
        await Post(Url, "/v1/completions", Completion("metrics", 3));
        await Post(Url, "/v1/completions", """{"model": "nope", "prompt": "a"}""");
        var response = await Http.GetAsync(new Uri(Url, "/metrics"));
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(response.Content.Headers.ContentType?.MediaType, Is.EqualTo("text/plain"));
        string text = await response.Content.ReadAsStringAsync();
        var types = new Dictionary<string, string>();
        var samples = new List<(string Name, Dictionary<string, string> Labels, double Value)>();
        var sample = new Regex("""^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$""");
        var label = new Regex("""([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?""");
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
            {
                var parts = line.Split(' ');
                Assert.That(parts, Has.Length.EqualTo(4), line);
                Assert.That(parts[3], Is.AnyOf("counter", "gauge"), line);
                types[parts[2]] = parts[3];
                continue;
            }

            if (line.StartsWith("# HELP ", StringComparison.Ordinal))
                continue;
            var m = sample.Match(line);
            Assert.That(m.Success, Is.True, $"not a sample line: {line}");
            Assert.That(types, Does.ContainKey(m.Groups[1].Value), $"no # TYPE before {line}");
            var labels = label.Matches(m.Groups[2].Value).ToDictionary(l => l.Groups[1].Value, l => l.Groups[2].Value);
            Assert.That(double.TryParse(m.Groups[3].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out double value), Is.True, line);
            Assert.That(double.IsFinite(value) && value >= 0, Is.True, line);
            samples.Add((m.Groups[1].Value, labels, value));
        }

        double One(string name) => samples.Single(s => s.Name == name).Value;
        var stats = _engine.Stats();
        Assert.That(samples.Single(s => s.Name == "ilgpumoe_requests_total" && s.Labels["endpoint"] == "/v1/completions" && s.Labels["status"] == "200").Value, Is.GreaterThanOrEqualTo(1));
        Assert.That(samples.Single(s => s.Name == "ilgpumoe_requests_total" && s.Labels["endpoint"] == "/v1/completions" && s.Labels["status"] == "400").Value, Is.GreaterThanOrEqualTo(1));
        Assert.That(One("ilgpumoe_prompt_tokens_total"), Is.EqualTo(stats.PromptTokens).And.GreaterThan(0));
        Assert.That(One("ilgpumoe_generation_tokens_total"), Is.EqualTo(stats.GeneratedTokens).And.GreaterThan(0));
        Assert.That(One("ilgpumoe_generation_tokens_per_second"), Is.GreaterThanOrEqualTo(0));
        Assert.That((One("ilgpumoe_requests_running"), One("ilgpumoe_requests_waiting")), Is.EqualTo((0.0, 0.0)));
        Assert.That(One("ilgpumoe_kv_blocks_used") + One("ilgpumoe_kv_blocks_free"), Is.EqualTo(TotalBlocks));
        var experts = samples.Where(s => s.Name == "ilgpumoe_expert_tokens_total").ToList();
        Assert.That(experts, Has.Count.EqualTo(_model.Config.Layers * _model.Config.Router.Experts));
        for (int layer = 0; layer < _model.Config.Layers; layer++)
        {
            string l = layer.ToString(CultureInfo.InvariantCulture);
            Assert.That(experts.Where(e => e.Labels["layer"] == l).Sum(e => e.Value), Is.EqualTo(stats.TokensPerExpert[layer].Sum()).And.GreaterThan(0), $"layer {layer}");
        }

        Assert.That(types["ilgpumoe_requests_total"], Is.EqualTo("counter"));
        Assert.That(types["ilgpumoe_requests_waiting"], Is.EqualTo("gauge"));
    }

    [Test]
    public async Task AfterABoundedLoadOfMixedRequestsTheServerIsUpAndTheEngineIdle()
    {
        const int Requests = 1000;
        var rng = new Random(1500);
        var plans = Enumerable.Range(0, Requests).Select(i => (Kind: rng.Next(10), Tokens: 1 + rng.Next(24), Stream: rng.Next(2) == 0, Chat: rng.Next(3) == 0, Words: 1 + rng.Next(40))).ToArray();
        int ok = 0, bad = 0, cancelled = 0;
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(50));
        using var gate = new SemaphoreSlim(16);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await Task.WhenAll(plans.Select(async (p, i) =>
        {
            await gate.WaitAsync(deadline.Token);
            try
            {
                string prompt = string.Join(' ', Enumerable.Repeat($"w{i}", p.Words));
                string path = p.Chat ? "/v1/chat/completions" : "/v1/completions";
                string body = p.Chat ? Chat(prompt, p.Tokens) : Completion(prompt, p.Tokens);
                if (p.Stream)
                    body = body[..^1] + ", \"stream\": true}";
                switch (p.Kind)
                {
                    case 0 or 1: // an error: a bad field, or a prompt past the context
                    {
                        string wrong = p.Kind == 0 ? body[..^1] + ", \"n\": 3}" : Completion(string.Join(' ', Enumerable.Repeat("x", 1100)), 4);
                        var reply = await Post(Endless, p.Kind == 0 ? path : "/v1/completions", wrong, deadline.Token);
                        Assert.That(reply.Status, Is.EqualTo(HttpStatusCode.BadRequest));
                        Interlocked.Increment(ref bad);
                        break;
                    }

                    case 2: // a client that hangs up: after its first events, or while it waits for the headers
                    {
                        using var hangUp = CancellationTokenSource.CreateLinkedTokenSource(deadline.Token);
                        hangUp.CancelAfter(TimeSpan.FromMilliseconds(rng.Next(1, 20)));
                        string endless = p.Chat ? Chat(prompt, 900, """, "stream": true""") : Completion(prompt, 900, """, "stream": true""");
                        try
                        {
                            await Stream(Endless, path, endless, stopAfter: 2, hangUp.Token);
                        }
                        catch (OperationCanceledException) when (!deadline.IsCancellationRequested)
                        {
                        }

                        Interlocked.Increment(ref cancelled);
                        break;
                    }

                    default:
                    {
                        if (p.Stream)
                        {
                            var s = await Stream(Endless, path, body, cancel: deadline.Token);
                            Assert.That((s.Done, s.FinishReason), Is.EqualTo((true, "length")));
                        }
                        else
                        {
                            var reply = await Post(Endless, path, body, deadline.Token);
                            Assert.That((reply.Status, reply.FinishReason, reply.Usage("completion_tokens")), Is.EqualTo((HttpStatusCode.OK, "length", p.Tokens)));
                        }

                        Interlocked.Increment(ref ok);
                        break;
                    }
                }
            }
            finally
            {
                gate.Release();
            }
        }));
        TestContext.Out.WriteLine($"{Requests} requests in {clock.Elapsed.TotalSeconds:F1} s: {ok} completed, {bad} refused, {cancelled} hung up");
        Assert.That(ok + bad + cancelled, Is.EqualTo(Requests));
        Assert.That(new[] { ok, bad, cancelled }, Is.All.GreaterThan(0), "every kind of request happened");
        await WaitIdle();
        Assert.That((await Get(Endless, "/health")).Status, Is.EqualTo(HttpStatusCode.OK));
        var after = await Post(Endless, "/v1/completions", Completion("still here", 3));
        Assert.That((after.Status, after.Usage("completion_tokens")), Is.EqualTo((HttpStatusCode.OK, 3)));
        var stats = _engine.Stats();
        Assert.That(stats is { Running: 0, Waiting: 0, KvBlocksUsed: 0 }, Is.True, $"idle: {stats}");
        Assert.That(stats.KvBlocksFree, Is.EqualTo(TotalBlocks), "every block free");
    }
}
