// SerialEngine: the first IGenerationEngine, over the single-sequence runtime. One background thread owns one
// InferenceSession and runs the requests one at a time, in arrival order: reset the cache, prefill the prompt, then one
// decode step per sampled token (what Generator.Run does for `generate`), until a stop token, MaxTokens, a full context,
// a cancellation or engine disposal. Requests that arrive meanwhile wait in a FIFO queue of bounded length; past it a
// Submit is refused as busy (EngineRejectedException.Retryable, HTTP 503).
//
// Why one thread owns the session: the session (its cache, its stream, a captured CUDA graph) is single-threaded state,
// and a device context is bound per thread; every forward step therefore runs on the loop thread, which also creates
// and disposes the session. Submit, cancellation callbacks and Stats only touch the queue and counters, under one lock.
//
// Cancellation: a request cancelled while it waits is taken out of the queue and completed at once (Cancelled); one
// cancelled while it runs stops after the step in flight. Disposal refuses new requests, cancels the waiting and the
// running ones, and waits for the loop to end.
//
// Stats: the serial engine has no paged cache; it reports its one contiguous cache of ContextLength positions in
// blocks of SerialEngineOptions.BlockSize positions (used = the running sequence's positions, rounded up), so that
// /metrics reads alike for this engine and the batching one. Tokens per expert come from the session's routing
// statistics (one extra read of the routing ids per step), copied out at most every 100 ms and at each request's end.
using System.Diagnostics;
using System.Threading.Channels;
using ILGpuMoE.Runtime;
using ILGpuMoE.Sampling;

namespace ILGpuMoE.Serving;

/// <summary>Options of <see cref="SerialEngine"/>.</summary>
public sealed record SerialEngineOptions
{
    /// <summary>Most requests waiting behind the running one; a Submit past it is refused as busy (retryable).</summary>
    public int MaxWaiting { get; init; } = 256;

    /// <summary>Count the tokens each expert receives (EngineStats.TokensPerExpert); one extra read per step.</summary>
    public bool RoutingStats { get; init; } = true;

    /// <summary>How the session runs its steps (CUDA graph or not).</summary>
    public SessionOptions Session { get; init; } = new();

    /// <summary>Positions per reported KV block (the cache is one contiguous sequence; see the file header).</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>Throws ArgumentException naming the bad option.</summary>
    public void Validate()
    {
        if (MaxWaiting < 0)
            throw new ArgumentException($"MaxWaiting must be >= 0, got {MaxWaiting}");
        if (BlockSize < 1)
            throw new ArgumentException($"BlockSize must be >= 1, got {BlockSize}");
    }
}

/// <summary>One request at a time over one <see cref="InferenceSession"/> of <see cref="MoeModel"/> (the file header says how).
/// The model stays the caller's: dispose the engine first, then the model.</summary>
public sealed class SerialEngine : IGenerationEngine
{
    private static readonly TimeSpan ExpertSnapshotInterval = TimeSpan.FromMilliseconds(100);

    private readonly MoeModel _model;
    private readonly SerialEngineOptions _options;
    private readonly object _lock = new();
    private readonly LinkedList<Item> _queue = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Task _loop;
    private readonly int _vocab;
    private Item? _running;
    private bool _disposed;
    private int _position;
    private long _promptTokens, _generatedTokens;
    private IReadOnlyList<IReadOnlyList<long>> _experts = [];
    private long _lastSnapshot;

    public SerialEngine(MoeModel model, SerialEngineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        _options = options ?? new SerialEngineOptions();
        _options.Validate();
        _model = model;
        _vocab = model.Config.VocabSize;
        ContextLength = model.MaxSeq;
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _loop = Task.Factory.StartNew(() => Loop(ready), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        // The session is made on the loop thread; a failure there (a model already disposed) surfaces here.
        ready.Task.GetAwaiter().GetResult();
    }

    public int ContextLength { get; }

    /// <summary>Blocks of <see cref="SerialEngineOptions.BlockSize"/> positions in the one sequence's cache.</summary>
    public int KvBlocks => (ContextLength + _options.BlockSize - 1) / _options.BlockSize;

    public IGeneration Submit(GenerationRequest request, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(request.PromptTokens);
        ArgumentNullException.ThrowIfNull(request.Sampling);
        ArgumentNullException.ThrowIfNull(request.StopTokenIds);
        Check(request);
        var item = new Item(request);
        if (cancel.IsCancellationRequested)
        {
            item.Complete(FinishReason.Cancelled);
            return item;
        }

        // Registered before the item is queued, so that no cancellation goes unseen; a callback that runs now (the token
        // was cancelled in between) only marks the item, which the enqueue below then completes instead of queueing.
        item.Registration = cancel.Register(static state => { var (engine, it) = ((SerialEngine, Item))state!; engine.OnCancel(it); }, (this, item));
        bool cancelledAlready;
        lock (_lock)
        {
            if (_disposed)
            {
                item.Registration.Unregister();
                throw new EngineRejectedException("the engine is shutting down", retryable: true);
            }

            cancelledAlready = item.Cancelled;
            if (!cancelledAlready)
            {
                if (_queue.Count - (_running is null ? 1 : 0) >= _options.MaxWaiting) // with none running, the first queued is about to run
                {
                    item.Registration.Unregister();
                    throw new EngineRejectedException($"the engine is busy ({_queue.Count} requests waiting, at most {_options.MaxWaiting})", retryable: true);
                }

                item.Node = _queue.AddLast(item);
            }
        }

        if (cancelledAlready)
            item.Complete(FinishReason.Cancelled);
        else
            _wake.Release();
        return item;
    }

    // The request's own faults: refused before it is queued, with the field the HTTP layer names.
    private void Check(GenerationRequest request)
    {
        int prompt = request.PromptTokens.Count;
        if (prompt == 0)
            throw new EngineRejectedException("the prompt is empty (no tokens)", "prompt");
        if (prompt >= ContextLength)
            throw new EngineRejectedException($"the prompt is {prompt} tokens; the context holds {ContextLength} tokens, prompt and completion together", "prompt");
        if (request.MaxTokens <= 0)
            throw new EngineRejectedException($"max_tokens must be >= 1, got {request.MaxTokens}", "max_tokens");
        if ((long)prompt + request.MaxTokens > ContextLength)
            throw new EngineRejectedException($"the prompt ({prompt} tokens) plus max_tokens ({request.MaxTokens}) exceeds the context of {ContextLength} tokens; " +
                                              $"ask for at most {ContextLength - prompt}", "max_tokens");
        for (int i = 0; i < prompt; i++)
        {
            if ((uint)request.PromptTokens[i] >= (uint)_vocab)
                throw new EngineRejectedException($"token id {request.PromptTokens[i]} at position {i} is outside the vocabulary [0, {_vocab})", "prompt");
        }

        try
        {
            request.Sampling.Validate();
        }
        catch (ArgumentException e)
        {
            throw new EngineRejectedException(e.Message);
        }
    }

    private void OnCancel(Item item)
    {
        bool dequeued = false;
        lock (_lock)
        {
            item.Cancelled = true;
            if (item.Node is not null)
            {
                _queue.Remove(item.Node);
                item.Node = null;
                dequeued = true;
            }
        }

        if (dequeued)
            item.Complete(FinishReason.Cancelled);
    }

    public EngineStats Stats()
    {
        int running, waiting, position;
        IReadOnlyList<IReadOnlyList<long>> experts;
        lock (_lock)
        {
            running = _running is null ? 0 : 1;
            waiting = _queue.Count;
            position = _position;
            experts = _experts;
        }

        int used = (position + _options.BlockSize - 1) / _options.BlockSize;
        return new EngineStats(running, waiting, Interlocked.Read(ref _promptTokens), Interlocked.Read(ref _generatedTokens), used, KvBlocks - used, experts);
    }

    public async ValueTask DisposeAsync()
    {
        List<Item> waiting;
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            waiting = [.. _queue];
            foreach (var item in waiting)
                item.Node = null;
            _queue.Clear();
            if (_running is not null)
                _running.Cancelled = true;
        }

        foreach (var item in waiting)
            item.Complete(FinishReason.Cancelled);
        _wake.Release();
        await _loop.ConfigureAwait(false);
        _wake.Dispose();
    }

    private void Loop(TaskCompletionSource ready)
    {
        InferenceSession session;
        try
        {
            _model.Accelerator.Bind();
            session = _model.NewSession(_options.Session);
            session.CollectRoutingStats = _options.RoutingStats;
            Snapshot(session);
        }
        catch (Exception e)
        {
            ready.SetException(e);
            return;
        }

        ready.SetResult();
        using (session)
        {
            while (true)
            {
                _wake.Wait();
                Item item;
                lock (_lock)
                {
                    if (_disposed)
                        return; // the waiting requests were completed by DisposeAsync
                    if (_queue.First is not { } first)
                        continue; // a wake-up for a request cancelled while it waited
                    item = first.Value;
                    _queue.RemoveFirst();
                    item.Node = null;
                    _running = item;
                }

                FinishReason reason = FinishReason.Cancelled;
                Exception? error = null;
                try
                {
                    reason = Run(session, item);
                }
                catch (Exception e)
                {
                    error = e;
                }

                // The counters first, then the caller: whoever sees the request end sees its tokens counted and the
                // engine free of it.
                Snapshot(session);
                lock (_lock)
                {
                    _running = null;
                    _position = 0;
                }

                if (error is null)
                    item.Complete(reason);
                else
                    item.Fail(error);
            }
        }
    }

    private FinishReason Run(InferenceSession session, Item item)
    {
        var request = item.Request;
        if (item.Cancelled)
            return FinishReason.Cancelled;
        var sampler = new Sampler(request.Sampling);
        var prompt = request.PromptTokens as int[] ?? [.. request.PromptTokens];
        session.Reset();
        var logits = session.Prefill(prompt, allLogits: false);
        Interlocked.Add(ref _promptTokens, prompt.Length);
        int produced = 0;
        while (true)
        {
            Stepped(session);
            if (item.Cancelled)
                return FinishReason.Cancelled;
            int next = sampler.Next(logits);
            if (request.StopTokenIds.Contains(next))
                return FinishReason.Stop;
            item.Write(next);
            produced++;
            Interlocked.Increment(ref _generatedTokens);
            if (produced >= request.MaxTokens || session.Position >= ContextLength)
                return FinishReason.Length;
            if (item.Cancelled)
                return FinishReason.Cancelled;
            logits = session.Decode(next);
        }
    }

    // After each forward step: the running sequence's positions, and now and then the experts' counts.
    private void Stepped(InferenceSession session)
    {
        lock (_lock)
            _position = session.Position;
        if (Stopwatch.GetElapsedTime(_lastSnapshot) >= ExpertSnapshotInterval)
            Snapshot(session);
    }

    private void Snapshot(InferenceSession session)
    {
        var copy = session.Routing.Select(r => (IReadOnlyList<long>)r.TokensPerExpert.ToArray()).ToArray();
        lock (_lock)
            _experts = copy;
        _lastSnapshot = Stopwatch.GetTimestamp();
    }

    /// <summary>One request: its tokens as a channel the loop writes and the caller reads, and its end.</summary>
    private sealed class Item(GenerationRequest request) : IGeneration
    {
        private readonly Channel<int> _tokens = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = true });
        private readonly TaskCompletionSource<FinishReason> _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public GenerationRequest Request { get; } = request;

        /// <summary>Set under the engine's lock (by a cancellation or disposal); read by the loop between steps.</summary>
        public volatile bool Cancelled;

        /// <summary>Its place in the queue while it waits (under the engine's lock).</summary>
        public LinkedListNode<Item>? Node;

        public CancellationTokenRegistration Registration;

        public IAsyncEnumerable<int> Tokens => _tokens.Reader.ReadAllAsync();

        public Task<FinishReason> Finished => _finished.Task;

        public void Write(int token) => _tokens.Writer.TryWrite(token);

        public void Complete(FinishReason reason)
        {
            // Unregister, not Dispose: Dispose would wait for a callback running on another thread (which may be
            // waiting for the engine's lock).
            Registration.Unregister();
            _tokens.Writer.TryComplete();
            _finished.TrySetResult(reason);
        }

        public void Fail(Exception e)
        {
            Registration.Unregister();
            _tokens.Writer.TryComplete();
            _finished.TrySetException(e);
        }
    }
}
