using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;
using ILGpuMoE.Serving;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tokenizer;

namespace ILGpuMoE.Tests.Serving;

/// <summary>
/// SerialEngine (src/ILGpuMoE/Serving/SerialEngine.cs) on the shipped demo model on the CPU backend: the tokens it gives
/// are Generator.Run's, requests queue and cancel (waiting or running), refusals name their field, stats count what ran,
/// disposal ends everything.
/// </summary>
public class SerialEngineTests
{
    private const int Context = 128;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private MoeModel _model = null!;
    private ITextTokenizer _tokenizer = null!;
    private HashSet<int> _eos = null!;

    [OneTimeSetUp]
    public void Load()
    {
        _model = MoeModel.Load(TestDevice.Accelerator, Runtime.RuntimeCliTests.DemoDir, new ModelLoadOptions { MaxSeq = Context, Kernels = KernelPolicy.Cpu });
        _tokenizer = TextTokenizer.Load(Runtime.RuntimeCliTests.DemoDir);
        _eos = new HashSet<int>(_model.Config.EosTokenIds) { _tokenizer.EosId };
    }

    [OneTimeTearDown]
    public void Free()
    {
        _tokenizer.Dispose();
        _model.Dispose();
    }

    private static readonly SamplingOptions Greedy = new(Temperature: 0);

    private IReadOnlyList<int> Prompt(string text) => _tokenizer.Encode(text, addBos: true);

    private static async Task<(List<int> Tokens, FinishReason Reason)> Collect(IGeneration g)
    {
        var tokens = new List<int>();
        using var timeout = new CancellationTokenSource(Timeout);
        await foreach (int t in g.Tokens.WithCancellation(timeout.Token))
            tokens.Add(t);
        return (tokens, await g.Finished.WaitAsync(timeout.Token));
    }

    // An endless request: no stop token, so it runs for MaxTokens steps unless cancelled.
    private GenerationRequest Long(int maxTokens = 100) => new(Prompt("a long one"), maxTokens, Greedy, new HashSet<int>());

    private static async Task WaitUntil(Func<bool> condition, string what)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > Timeout)
                Assert.Fail($"timed out waiting until {what}");
            await Task.Delay(5);
        }
    }

    [Test]
    public async Task GreedyTokensAreGeneratorRunsTokens()
    {
        const string prompt = "Once upon a time";
        using var session = _model.NewSession();
        var expected = Generator.Run(session, _tokenizer, prompt, new GenerationOptions { MaxNewTokens = 24, Sampling = Greedy });
        await using var engine = new SerialEngine(_model);
        var (tokens, reason) = await Collect(engine.Submit(new GenerationRequest(Prompt(prompt), 24, Greedy, _eos), default));
        Assert.That(tokens, Is.EqualTo(expected.Tokens), "the engine's greedy tokens vs Generator.Run's");
        Assert.That(reason, Is.EqualTo(expected.Stop == StopReason.Eos ? FinishReason.Stop : FinishReason.Length));
    }

    [Test]
    public async Task ASeedGivesTheSameTokensAgainAndAnotherSeedOthers()
    {
        await using var engine = new SerialEngine(_model);
        GenerationRequest Sampled(ulong seed) => new(Prompt("The seed"), 32, new SamplingOptions(Temperature: 1.5f, TopK: 0, TopP: 1, Seed: seed), new HashSet<int>());
        var a = await Collect(engine.Submit(Sampled(7), default));
        var again = await Collect(engine.Submit(Sampled(7), default));
        var other = await Collect(engine.Submit(Sampled(8), default));
        Assert.That(a.Tokens, Has.Count.EqualTo(32));
        Assert.That(again.Tokens, Is.EqualTo(a.Tokens), "same seed, same tokens");
        Assert.That(other.Tokens, Is.Not.EqualTo(a.Tokens), "another seed, other tokens");
    }

    [Test]
    public async Task ConcurrentSubmissionsEachGetTheirSoloTokens()
    {
        await using var engine = new SerialEngine(_model);
        var prompts = Enumerable.Range(0, 8).Select(i => $"prompt number {i} says {new string('x', i)}").ToArray();
        var solo = new List<List<int>>();
        foreach (var p in prompts)
            solo.Add((await Collect(engine.Submit(new GenerationRequest(Prompt(p), 12, Greedy, _eos), default))).Tokens);
        var together = await Task.WhenAll(prompts.Select(p => Task.Run(() => Collect(engine.Submit(new GenerationRequest(Prompt(p), 12, Greedy, _eos), default)))));
        for (int i = 0; i < prompts.Length; i++)
            Assert.That(together[i].Tokens, Is.EqualTo(solo[i]), $"prompt {i}: submitted with 7 others vs alone");
    }

    [Test]
    public async Task AMaxTokensRequestEndsWithLengthAndOneFillingTheContextToo()
    {
        await using var engine = new SerialEngine(_model);
        var (tokens, reason) = await Collect(engine.Submit(Long(5), default));
        Assert.That((tokens.Count, reason), Is.EqualTo((5, FinishReason.Length)));
        // prompt + max_tokens = the whole context: allowed, and every token comes.
        var prompt = Enumerable.Range(0, Context - 6).Select(i => 3 + i % 900).ToArray();
        var full = await Collect(engine.Submit(new GenerationRequest(prompt, 6, Greedy, new HashSet<int>()), default));
        Assert.That((full.Tokens.Count, full.Reason), Is.EqualTo((6, FinishReason.Length)));
    }

    [Test]
    public async Task AStopTokenEndsTheGenerationAndIsNotReturned()
    {
        await using var engine = new SerialEngine(_model);
        var (free, _) = await Collect(engine.Submit(Long(10), default));
        // Make the 4th token a stop token: the generation ends before it, with Stop.
        int stop = free[3];
        int first = free.IndexOf(stop);
        var (tokens, reason) = await Collect(engine.Submit(Long(10) with { StopTokenIds = new HashSet<int> { stop } }, default));
        Assert.That(reason, Is.EqualTo(FinishReason.Stop));
        Assert.That(tokens, Is.EqualTo(free.Take(first)), "the tokens before the first stop token");
    }

    [Test]
    public async Task CancellingAWaitingRequestCompletesItAtOnceAndARunningOneAfterItsStep()
    {
        await using var engine = new SerialEngine(_model);
        using var cancelRunning = new CancellationTokenSource();
        using var cancelWaiting = new CancellationTokenSource();
        var running = engine.Submit(Long(Context - 10), cancelRunning.Token);
        var waiting = engine.Submit(Long(5), cancelWaiting.Token);
        await WaitUntil(() => engine.Stats() is { Running: 1, Waiting: 1 }, "one runs and one waits");
        cancelWaiting.Cancel();
        var w = await Collect(waiting);
        Assert.That((w.Tokens.Count, w.Reason), Is.EqualTo((0, FinishReason.Cancelled)), "cancelled while waiting");
        Assert.That(engine.Stats().Waiting, Is.Zero, "taken out of the queue");
        cancelRunning.Cancel();
        var r = await Collect(running);
        Assert.That(r.Reason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(r.Tokens.Count, Is.LessThan(Context - 10), "stopped before its max_tokens");
        // The engine is free: the next request runs to its end.
        var next = await Collect(engine.Submit(Long(3), default));
        Assert.That((next.Tokens.Count, next.Reason), Is.EqualTo((3, FinishReason.Length)));
        Assert.That(engine.Stats() is { Running: 0, Waiting: 0, KvBlocksUsed: 0 }, Is.True, $"idle: {engine.Stats()}");
    }

    [Test]
    public async Task ARequestCancelledBeforeItIsSubmittedNeverRuns()
    {
        await using var engine = new SerialEngine(_model);
        long before = engine.Stats().PromptTokens;
        var g = engine.Submit(Long(), new CancellationToken(canceled: true));
        var (tokens, reason) = await Collect(g);
        Assert.That((tokens.Count, reason), Is.EqualTo((0, FinishReason.Cancelled)));
        Assert.That(engine.Stats().PromptTokens, Is.EqualTo(before), "no prefill ran");
    }

    private static IEnumerable<TestCaseData> Refusals()
    {
        yield return new TestCaseData(0, 4, "prompt").SetName("{m}(empty prompt)");
        yield return new TestCaseData(Context, 1, "prompt").SetName("{m}(prompt fills the context)");
        yield return new TestCaseData(Context + 50, 1, "prompt").SetName("{m}(prompt longer than the context)");
        yield return new TestCaseData(4, 0, "max_tokens").SetName("{m}(max_tokens 0)");
        yield return new TestCaseData(4, -3, "max_tokens").SetName("{m}(max_tokens negative)");
        yield return new TestCaseData(10, Context - 9, "max_tokens").SetName("{m}(prompt + max_tokens past the context)");
    }

    [TestCaseSource(nameof(Refusals))]
    public async Task ARequestThatCannotRunIsRefusedNamingItsField(int promptTokens, int maxTokens, string param)
    {
        await using var engine = new SerialEngine(_model);
        var prompt = Enumerable.Range(0, promptTokens).Select(i => 5 + i % 900).ToArray();
        var e = Assert.Throws<EngineRejectedException>(() => engine.Submit(new GenerationRequest(prompt, maxTokens, Greedy, _eos), default))!;
        Assert.That((e.Param, e.Retryable), Is.EqualTo((param, false)), e.Message);
        Assert.That(engine.Stats() is { Running: 0, Waiting: 0 }, Is.True);
    }

    [Test]
    public async Task ATokenOutsideTheVocabularyIsRefusedAsThePrompts()
    {
        await using var engine = new SerialEngine(_model);
        var e = Assert.Throws<EngineRejectedException>(() => engine.Submit(new GenerationRequest([1, _model.Config.VocabSize], 2, Greedy, _eos), default))!;
        Assert.That(e.Param, Is.EqualTo("prompt"));
        Assert.That(e.Message, Does.Contain(_model.Config.VocabSize.ToString(System.Globalization.CultureInfo.InvariantCulture)));
    }

    [Test]
    public async Task PastMaxWaitingASubmitIsRefusedAsBusy()
    {
        await using var engine = new SerialEngine(_model, new SerialEngineOptions { MaxWaiting = 1 });
        using var cancel = new CancellationTokenSource();
        var running = engine.Submit(Long(Context - 10), cancel.Token);
        await WaitUntil(() => engine.Stats().Running == 1, "the first runs");
        var waiting = engine.Submit(Long(2), cancel.Token);
        var e = Assert.Throws<EngineRejectedException>(() => engine.Submit(Long(2), default))!;
        Assert.That(e.Retryable, Is.True, e.Message);
        cancel.Cancel();
        Assert.That((await Collect(running)).Reason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That((await Collect(waiting)).Reason, Is.EqualTo(FinishReason.Cancelled));
    }

    [Test]
    public async Task StatsCountPromptGeneratedAndExpertTokensAndFreeEverythingAtIdle()
    {
        await using var engine = new SerialEngine(_model);
        var idle = engine.Stats();
        Assert.That(idle.KvBlocksUsed + idle.KvBlocksFree, Is.EqualTo((Context + 15) / 16), "the cache in blocks of 16 positions");
        var prompt = Prompt("count the experts");
        var (tokens, _) = await Collect(engine.Submit(new GenerationRequest(prompt, 9, Greedy, new HashSet<int>()), default));
        var stats = engine.Stats();
        Assert.That(stats.PromptTokens, Is.EqualTo(prompt.Count));
        Assert.That(stats.GeneratedTokens, Is.EqualTo(tokens.Count));
        Assert.That(stats.TokensPerExpert, Has.Count.EqualTo(_model.Config.Layers));
        // Every forwarded token (the prompt and every sampled token but the last) visits K experts in every layer.
        long forwarded = prompt.Count + tokens.Count - 1;
        foreach (var layer in stats.TokensPerExpert)
        {
            Assert.That(layer, Has.Count.EqualTo(_model.Config.Router.Experts));
            Assert.That(layer.Sum(), Is.EqualTo(forwarded * _model.Config.Router.TopK));
        }

        Assert.That(stats is { Running: 0, Waiting: 0, KvBlocksUsed: 0 }, Is.True, $"idle: {stats}");
    }

    [Test]
    public async Task DisposalCancelsTheRunningAndTheWaitingAndRefusesNewRequests()
    {
        var engine = new SerialEngine(_model);
        var running = engine.Submit(Long(Context - 10), default);
        var waiting = engine.Submit(Long(5), default);
        await WaitUntil(() => engine.Stats().Running == 1, "the first runs");
        await engine.DisposeAsync().AsTask().WaitAsync(Timeout);
        Assert.That((await Collect(running)).Reason, Is.EqualTo(FinishReason.Cancelled));
        var w = await Collect(waiting);
        Assert.That((w.Tokens.Count, w.Reason), Is.EqualTo((0, FinishReason.Cancelled)), "cancelled while waiting");
        var e = Assert.Throws<EngineRejectedException>(() => engine.Submit(Long(2), default))!;
        Assert.That(e.Retryable, Is.True);
        await engine.DisposeAsync(); // twice is fine
    }

    [Test]
    public void ManyThreadsSubmittingAndCancellingLeaveTheEngineIdle()
    {
        var engine = new SerialEngine(_model);
        try
        {
            var rng = new Random(15);
            var plans = Enumerable.Range(0, 60).Select(i => (Tokens: 1 + rng.Next(6), CancelAfterMs: rng.Next(4) == 0 ? rng.Next(3) : -1)).ToArray();
            var results = plans.AsParallel().WithDegreeOfParallelism(6).Select(plan =>
            {
                using var cancel = new CancellationTokenSource();
                var g = engine.Submit(Long(plan.Tokens), cancel.Token);
                if (plan.CancelAfterMs >= 0)
                    cancel.CancelAfter(plan.CancelAfterMs);
                return Collect(g).GetAwaiter().GetResult();
            }).ToArray();
            foreach (var (tokens, reason) in results)
                Assert.That(reason == FinishReason.Cancelled || (reason == FinishReason.Length && tokens.Count > 0), Is.True, $"{reason} after {tokens.Count} tokens");
            Assert.That(engine.Stats() is { Running: 0, Waiting: 0, KvBlocksUsed: 0 }, Is.True, $"idle: {engine.Stats()}");
        }
        finally
        {
            engine.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }
}
