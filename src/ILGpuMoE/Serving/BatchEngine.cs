// Continuous batching: one scheduler loop over a BatchSession (src/ILGpuMoE/Runtime/BatchSession.cs).
//
// Each step (glossary: T tokens of the step, S running sequences):
//   1. take new requests, drop cancelled ones (their blocks go back to the pool);
//   2. admit waiting requests in arrival order while fewer than MaxRunning run and the pool can reserve a request's
//      whole length (prompt + max_tokens): a running sequence never waits for a block, so nothing is ever preempted;
//      the head of the queue waits for blocks (first come, first served: a long request is not starved by short ones);
//   3. one token of every decoding sequence, then the rest of the token budget on prompt chunks of the admitted ones,
//      oldest first (chunked prefill: a long prompt does not stall the decoders for more than one budget);
//   4. one BatchSession.Step over all of them; each sequence that wanted logits samples its next token with its own
//      sampler (its own seed), so what a request gets does not depend on its neighbours.
// Policy when the pool is short: requests wait in the queue (bounded by MaxWaiting; beyond it Submit refuses with a
// retryable EngineRejectedException, HTTP 503 + Retry-After); a request that could never fit the pool or the context
// is refused at once (HTTP 400).
//
// Threads: Submit, cancellation and Stats may come from any thread; only the loop's own thread touches the session
// (binding the accelerator first, as a CUDA context must be current on the thread that launches), and frees it.
using System.Collections.Concurrent;
using System.Threading.Channels;
using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;

namespace ILGpuMoE.Serving;

/// <summary>How a <see cref="BatchEngine"/> schedules.</summary>
public sealed record BatchEngineOptions
{
    /// <summary>Most sequences running (decoding or prefilling) at once (serve --max-batch).</summary>
    public int MaxRunning { get; init; } = 16;

    /// <summary>Most requests waiting for admission; more are refused as busy.</summary>
    public int MaxWaiting { get; init; } = 256;

    /// <summary>Tokens per step (decode tokens first, then prompt chunks); null: the model's MaxBatch.</summary>
    public int? TokenBudget { get; init; }

    /// <summary>The KV pool (serve --kv-blocks).</summary>
    public BatchOptions Kv { get; init; } = new();
}

/// <summary>An <see cref="IGenerationEngine"/> that steps every running request together (continuous batching).</summary>
public sealed class BatchEngine : IGenerationEngine
{
    private readonly BatchSession _session;
    private readonly BatchEngineOptions _options;
    private readonly int _budget;
    private readonly ConcurrentQueue<Job> _incoming = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly List<Job> _waiting = [], _running = [];
    private readonly Thread _loop;
    private volatile bool _stopping;
    private int _queued; // submitted, not yet admitted or dropped (for the MaxWaiting bound)
    private long _promptTokens, _generatedTokens, _steps;
    private volatile EngineStats _stats;

    public BatchEngine(MoeModel model, BatchEngineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        _options = options ?? new();
        if (_options.MaxRunning < 1)
            throw new ArgumentException($"max running sequences must be >= 1, got {_options.MaxRunning}");
        if (_options.MaxWaiting < 0)
            throw new ArgumentException($"max waiting requests must be >= 0, got {_options.MaxWaiting}");
        _session = model.NewBatchSession(_options.Kv);
        _budget = Math.Min(_options.TokenBudget ?? _session.MaxTokensPerStep, _session.MaxTokensPerStep);
        if (_budget < _options.MaxRunning)
        {
            _session.Dispose();
            throw new ArgumentException($"a step's token budget ({_budget}) must hold one token of each of the {_options.MaxRunning} running sequences");
        }

        _session.CollectRoutingStats = true;
        _stats = Snapshot();
        _loop = new Thread(Loop) { IsBackground = true, Name = "ilgpumoe-batch-engine" };
        _loop.Start();
    }

    public int ContextLength => _session.MaxSequenceLength;

    /// <summary>Most sequences running at once.</summary>
    public int MaxRunning => _options.MaxRunning;

    /// <summary>Blocks in the KV pool and positions per block.</summary>
    public (int Blocks, int BlockSize) KvPool => (_session.Blocks, _session.BlockSize);

    /// <summary>Forward steps run so far.</summary>
    public long Steps => Interlocked.Read(ref _steps);

    public EngineStats Stats() => _stats;

    public IGeneration Submit(GenerationRequest request, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(_stopping, this);
        int prompt = request.PromptTokens.Count, v = _session.Model.Config.VocabSize;
        if (prompt == 0)
            throw new EngineRejectedException("the prompt has no tokens", "prompt");
        foreach (int id in request.PromptTokens)
        {
            if ((uint)id >= (uint)v)
                throw new EngineRejectedException($"prompt token id {id} is outside the vocabulary [0, {v})", "prompt");
        }

        if (request.MaxTokens < 1)
            throw new EngineRejectedException($"max_tokens must be >= 1, got {request.MaxTokens}", "max_tokens");
        if (prompt >= ContextLength)
            throw new EngineRejectedException($"the prompt has {prompt} tokens; the context holds {ContextLength}", "prompt");
        if ((long)prompt + request.MaxTokens > ContextLength)
            throw new EngineRejectedException($"prompt ({prompt} tokens) + max_tokens ({request.MaxTokens}) pass the context of {ContextLength}", "max_tokens");
        if (_session.BlocksFor(prompt + request.MaxTokens) > _session.Blocks)
            throw new EngineRejectedException($"prompt + max_tokens need {_session.BlocksFor(prompt + request.MaxTokens)} KV blocks; the pool has {_session.Blocks}", "max_tokens");
        try
        {
            request.Sampling.Validate();
        }
        catch (ArgumentException e)
        {
            throw new EngineRejectedException(e.Message, e.Message.Contains("top-p", StringComparison.Ordinal) ? "top_p" : "temperature");
        }

        if (Interlocked.Increment(ref _queued) > _options.MaxWaiting + _options.MaxRunning)
        {
            Interlocked.Decrement(ref _queued);
            throw new EngineRejectedException($"{_options.MaxWaiting} requests are already waiting; try again later", retryable: true);
        }

        var job = new Job(request);
        if (cancel.CanBeCanceled)
            job.Registration = cancel.Register(() =>
            {
                job.Cancelled = true;
                _wake.Release();
            });
        _incoming.Enqueue(job);
        _wake.Release();
        return job;
    }

    private void Loop()
    {
        // CUDA: the model's context current on this thread, which steps (and at the end frees) the session.
        _session.Model.Accelerator.Bind();
        while (!_stopping)
        {
            try
            {
                Take();
                Drop();
                Admit();
                if (_running.Count == 0)
                {
                    _stats = Snapshot();
                    _wake.Wait(200);
                    continue;
                }

                StepOnce();
                _stats = Snapshot();
            }
            catch (Exception e)
            {
                // A bug of ours must not leave streams open forever: fail what runs, keep serving.
                foreach (var job in _running.ToList())
                    Fail(job, e);
            }
        }

        // Shutdown: every request still here ends as cancelled, its stream completed.
        Take();
        foreach (var job in _waiting.Concat(_running))
            Finish(job, FinishReason.Cancelled);
        _waiting.Clear();
        _running.Clear();
        _session.Dispose();
    }

    private void Take()
    {
        while (_incoming.TryDequeue(out var job))
            _waiting.Add(job);
    }

    private void Drop()
    {
        foreach (var job in _waiting.Where(j => j.Cancelled).ToList())
        {
            _waiting.Remove(job);
            Interlocked.Decrement(ref _queued);
            Finish(job, FinishReason.Cancelled);
        }

        foreach (var job in _running.Where(j => j.Cancelled).ToList())
            Finish(job, FinishReason.Cancelled);
    }

    private void Admit()
    {
        while (_running.Count < _options.MaxRunning && _waiting.Count > 0)
        {
            var job = _waiting[0];
            int seq = _session.Open();
            if (!_session.Reserve(seq, job.Request.PromptTokens.Count + job.Request.MaxTokens))
            {
                _session.Close(seq);
                return; // the head waits for blocks
            }

            job.Sequence = seq;
            _waiting.RemoveAt(0);
            _running.Add(job);
        }
    }

    private void StepOnce()
    {
        var inputs = new List<BatchInput>();
        var jobs = new List<(Job Job, int Tokens)>();
        int budget = _budget;
        foreach (var job in _running.Where(j => j.Prefilled == j.Request.PromptTokens.Count))
        {
            inputs.Add(new BatchInput(job.Sequence, new[] { job.Last }, Logits: true));
            jobs.Add((job, 1));
            budget--;
        }

        foreach (var job in _running.Where(j => j.Prefilled < j.Request.PromptTokens.Count))
        {
            if (budget <= 0)
                break;
            int n = Math.Min(budget, job.Request.PromptTokens.Count - job.Prefilled);
            var chunk = job.Request.PromptTokens.Skip(job.Prefilled).Take(n).ToArray();
            bool last = job.Prefilled + n == job.Request.PromptTokens.Count;
            inputs.Add(new BatchInput(job.Sequence, chunk, last));
            jobs.Add((job, n));
            budget -= n;
        }

        float[]?[] logits;
        try
        {
            logits = _session.Step(inputs);
        }
        catch (Exception e)
        {
            // A failed step leaves no sequence in a known state: fail every request of the step, free their blocks.
            foreach (var (job, _) in jobs)
                Fail(job, e);
            return;
        }

        Interlocked.Increment(ref _steps);
        for (int i = 0; i < jobs.Count; i++)
        {
            var (job, n) = jobs[i];
            if (job.Prefilled < job.Request.PromptTokens.Count)
            {
                job.Prefilled += n;
                Interlocked.Add(ref _promptTokens, n);
            }

            if (logits[i] is not { } row)
                continue;
            int next;
            try
            {
                next = job.Sampler.Next(row);
            }
            catch (InvalidOperationException e)
            {
                Fail(job, e); // NaN logits: an error, never a token
                continue;
            }

            if (job.Request.StopTokenIds.Contains(next))
            {
                Finish(job, FinishReason.Stop);
                continue;
            }

            job.Generated++;
            Interlocked.Increment(ref _generatedTokens);
            job.Output.Writer.TryWrite(next);
            if (job.Generated >= job.Request.MaxTokens || _session.Length(job.Sequence) + 1 >= ContextLength)
                Finish(job, FinishReason.Length);
            else
                job.Last = next;
        }
    }

    private void Finish(Job job, FinishReason reason)
    {
        Release(job);
        job.Output.Writer.TryComplete();
        job.Done.TrySetResult(reason);
    }

    private void Fail(Job job, Exception e)
    {
        Release(job);
        job.Output.Writer.TryComplete(e);
        job.Done.TrySetException(e);
    }

    private void Release(Job job)
    {
        if (job.Sequence >= 0)
        {
            _session.Close(job.Sequence);
            job.Sequence = -1;
            if (_running.Remove(job))
                Interlocked.Decrement(ref _queued);
        }

        job.Registration.Dispose();
    }

    private EngineStats Snapshot() => new(_running.Count, _waiting.Count + _incoming.Count, Interlocked.Read(ref _promptTokens),
        Interlocked.Read(ref _generatedTokens), _session.Blocks - _session.FreeBlocks, _session.FreeBlocks,
        _session.ExpertCounts.Select(l => (IReadOnlyList<long>)l.ToArray()).ToArray());

    public ValueTask DisposeAsync()
    {
        if (!_stopping)
        {
            _stopping = true;
            _wake.Release();
            _loop.Join();
            // A request submitted while the loop was ending.
            while (_incoming.TryDequeue(out var late))
                Finish(late, FinishReason.Cancelled);
            _wake.Dispose();
        }

        return ValueTask.CompletedTask;
    }

    private sealed class Job(GenerationRequest request) : IGeneration
    {
        public GenerationRequest Request { get; } = request;

        public Sampler Sampler { get; } = new(request.Sampling);

        public Channel<int> Output { get; } = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });

        public TaskCompletionSource<FinishReason> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public CancellationTokenRegistration Registration { get; set; }

        public volatile bool Cancelled;

        public int Sequence = -1, Prefilled, Generated, Last;

        public IAsyncEnumerable<int> Tokens => Output.Reader.ReadAllAsync();

        public Task<FinishReason> Finished => Done.Task;
    }
}
