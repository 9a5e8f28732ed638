using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;
using ILGpuMoE.Serving;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Runtime;

namespace ILGpuMoE.Tests.Serving;

/// <summary>
/// The continuous-batching engine on the shipped demo model (CPU backend): a request gets the same tokens beside 15 others
/// as alone (greedy and seeded sampling), cancellation and finishing free every block, refusals name the field, the
/// queue bound answers busy, and a bounded load of mixed requests leaves the engine idle with an empty pool.
/// </summary>
[NonParallelizable]
public class BatchEngineTests
{
    private MoeModel _model = null!;

    [OneTimeSetUp]
    public void Setup() => _model = MoeModel.Load(TestDevice.Accelerator, RuntimeCliTests.DemoDir,
        new ModelLoadOptions { MaxSeq = 96, MaxBatch = 64, Kernels = KernelPolicy.Cpu, Threads = 2 });

    [OneTimeTearDown]
    public void Clean() => _model.Dispose();

    private static readonly IReadOnlySet<int> NoStop = new HashSet<int>();

    private GenerationRequest Request(int i, float temperature = 0) =>
        new(Data.Ints(100 + i, 1 + i * 5 % 23, 1, _model.Config.VocabSize), 3 + i % 9, new SamplingOptions(temperature, 0, 1, (ulong)i), NoStop);

    private static async Task<(List<int> Tokens, FinishReason Why)> Collect(IGeneration g)
    {
        var tokens = new List<int>();
        await foreach (int t in g.Tokens)
            tokens.Add(t);
        return (tokens, await g.Finished);
    }

    private static async Task Idle(BatchEngine engine)
    {
        // The loop publishes its counters after each step; give it a moment to see the last request gone.
        for (int i = 0; i < 100 && engine.Stats() is not { Running: 0, Waiting: 0 }; i++)
            await Task.Delay(20);
        var s = engine.Stats();
        Assert.That((s.Running, s.Waiting, s.KvBlocksUsed), Is.EqualTo((0, 0, 0)), "idle: nothing running, every block free");
    }

    [TestCase(0f)]
    [TestCase(0.8f)]
    public async Task SixteenTogetherEqualEachAlone(float temperature)
    {
        var alone = new List<List<int>>();
        await using (var one = new BatchEngine(_model, new BatchEngineOptions { MaxRunning = 1 }))
        {
            for (int i = 0; i < 16; i++)
                alone.Add((await Collect(one.Submit(Request(i, temperature), default))).Tokens);
        }

        await using var engine = new BatchEngine(_model, new BatchEngineOptions { MaxRunning = 16, TokenBudget = 48 });
        var together = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => Collect(engine.Submit(Request(i, temperature), default))));
        for (int i = 0; i < 16; i++)
        {
            Assert.That(together[i].Tokens, Is.EqualTo(alone[i]), $"request {i}: same tokens beside 15 others as alone");
            Assert.That(together[i].Why, Is.EqualTo(FinishReason.Length));
            Assert.That(together[i].Tokens, Has.Count.EqualTo(Request(i).MaxTokens));
        }

        Assert.That(engine.Steps, Is.LessThan(16 * 10), "the requests shared steps");
        var stats = engine.Stats();
        Assert.That(stats.GeneratedTokens, Is.EqualTo(together.Sum(r => r.Tokens.Count)));
        Assert.That(stats.PromptTokens, Is.EqualTo(Enumerable.Range(0, 16).Sum(i => Request(i).PromptTokens.Count)));
        Assert.That(stats.TokensPerExpert.SelectMany(l => l).Sum(), Is.GreaterThan(0), "expert counts per layer");
        await Idle(engine);
    }

    [Test]
    public async Task StopTokenEndsWithStopAndIsNotReturned()
    {
        await using var engine = new BatchEngine(_model);
        var first = await Collect(engine.Submit(Request(3) with { MaxTokens = 6 }, default));
        Assert.That(first.Tokens, Has.Count.EqualTo(6));
        int stopAt = first.Tokens[2];
        int firstIndex = first.Tokens.IndexOf(stopAt);
        var stopped = await Collect(engine.Submit(Request(3) with { MaxTokens = 6, StopTokenIds = new HashSet<int> { stopAt } }, default));
        Assert.That(stopped.Why, Is.EqualTo(FinishReason.Stop));
        Assert.That(stopped.Tokens, Is.EqualTo(first.Tokens.Take(firstIndex)));
        await Idle(engine);
    }

    [Test]
    public async Task CancellingFreesTheBlocksAndLaterRequestsRun()
    {
        await using var engine = new BatchEngine(_model, new BatchEngineOptions { MaxRunning = 2 });
        using var cts = new CancellationTokenSource();
        var long_ = engine.Submit(Request(1) with { MaxTokens = 80 }, cts.Token);
        var waiting = Enumerable.Range(0, 4).Select(_ => engine.Submit(Request(2) with { MaxTokens = 80 }, cts.Token)).ToList();
        await foreach (int _ in long_.Tokens)
        {
            cts.Cancel(); // after its first token
        }

        Assert.That(await long_.Finished, Is.EqualTo(FinishReason.Cancelled));
        foreach (var w in waiting)
            Assert.That((await Collect(w)).Why, Is.EqualTo(FinishReason.Cancelled));
        await Idle(engine);
        var after = await Collect(engine.Submit(Request(4), default));
        Assert.That(after.Why, Is.EqualTo(FinishReason.Length));
    }

    [Test]
    public async Task RefusalsNameTheFieldAndTheQueueBoundSaysBusy()
    {
        await using var engine = new BatchEngine(_model, new BatchEngineOptions { MaxRunning = 1, MaxWaiting = 2, Kv = new BatchOptions { BlockSize = 16, Blocks = 4 } });
        int v = _model.Config.VocabSize;
        EngineRejectedException Refused(GenerationRequest r) => Assert.Throws<EngineRejectedException>(() => engine.Submit(r, default))!;
        Assert.That(Refused(Request(0) with { PromptTokens = [] }).Param, Is.EqualTo("prompt"));
        Assert.That(Refused(Request(0) with { PromptTokens = [v] }).Param, Is.EqualTo("prompt"));
        Assert.That(Refused(Request(0) with { MaxTokens = 0 }).Param, Is.EqualTo("max_tokens"));
        Assert.That(Refused(Request(0) with { PromptTokens = Data.Ints(5, 96, 0, v) }).Param, Is.EqualTo("prompt"));
        Assert.That(Refused(Request(0) with { PromptTokens = Data.Ints(5, 90, 0, v), MaxTokens = 7 }).Param, Is.EqualTo("max_tokens"));
        Assert.That(Refused(Request(0) with { PromptTokens = Data.Ints(5, 40, 0, v), MaxTokens = 30 }).Message, Does.Contain("KV blocks"), "70 positions: 5 blocks of a 4-block pool");
        Assert.That(Refused(Request(0) with { Sampling = new SamplingOptions(-1, 0, 1, 1) }).Param, Is.EqualTo("temperature"));
        Assert.That(Refused(Request(0) with { MaxTokens = -3 }).Retryable, Is.False, "a wrong request is not retryable");

        // One running, two waiting: the fourth is refused as busy (retryable), and runs once the others are gone.
        using var cts = new CancellationTokenSource();
        var held = Enumerable.Range(0, 3).Select(i => engine.Submit(Request(i) with { MaxTokens = 20 }, cts.Token)).ToList();
        var busy = Refused(Request(3));
        Assert.That((busy.Retryable, busy.Param), Is.EqualTo((true, (string?)null)));
        cts.Cancel();
        foreach (var g in held)
            await Collect(g);
        await Idle(engine);
        Assert.That((await Collect(engine.Submit(Request(3), default))).Why, Is.EqualTo(FinishReason.Length));
    }

    [Test]
    public async Task ABoundedLoadOfMixedRequestsLeavesTheEngineIdle()
    {
        await using var engine = new BatchEngine(_model, new BatchEngineOptions { MaxRunning = 8, MaxWaiting = 64, Kv = new BatchOptions { BlockSize = 8, Blocks = 40 } });
        var rng = new Random(7);
        int busy = 0, cancelled = 0, done = 0, refused = 0;
        var tasks = new List<Task>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        for (int i = 0; i < 300; i++)
        {
            var r = Request(rng.Next(40));
            int kind = rng.Next(10);
            if (kind == 0)
                r = r with { MaxTokens = 0 };            // refused
            // At most ~40 in flight: a burst of 300 at once would mostly be refused as busy (the queue holds 64).
            while (tasks.Count(x => !x.IsCompleted) >= 40)
                await Task.Delay(5);
            var cts = kind == 1 ? new CancellationTokenSource(TimeSpan.FromMilliseconds(rng.Next(1, 30))) : new CancellationTokenSource();
            try
            {
                var g = engine.Submit(r, cts.Token);
                tasks.Add(Task.Run(async () =>
                {
                    var (_, why) = await Collect(g).WaitAsync(timeout.Token);
                    if (why == FinishReason.Cancelled)
                        Interlocked.Increment(ref cancelled);
                    else
                        Interlocked.Increment(ref done);
                    cts.Dispose();
                }));
            }
            catch (EngineRejectedException e)
            {
                if (e.Retryable)
                    busy++;
                else
                    refused++;
                cts.Dispose();
            }
        }

        await Task.WhenAll(tasks);
        TestContext.Out.WriteLine($"300 requests: {done} done, {cancelled} cancelled, {refused} refused, {busy} busy; {engine.Steps} steps");
        Assert.That(done + cancelled + refused + busy, Is.EqualTo(300));
        Assert.That(done, Is.GreaterThan(100));
        Assert.That(refused, Is.GreaterThan(0));
        await Idle(engine);
        Assert.That((await Collect(engine.Submit(Request(5), default))).Why, Is.EqualTo(FinishReason.Length), "still serving");
    }
}
