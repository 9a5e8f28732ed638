// One sequence being processed: its KV cache, its position, and the forward pass (prefill of T tokens and decode of
// one token go through the same kernels; only the kernel versions the launchers pick differ with T).
//
// Per layer, on one stream (glossary: T tokens, D model dim, H/Hkv heads, Dh head dim, E experts, K per token):
//   h = rmsnorm(x)                                   [T, D]
//   q, k, v = h Wq^T, h Wk^T, h Wv^T                 [T, H*Dh], [T, Hkv*Dh] x2
//   rope(q, k) at positions pos0..pos0+T-1           (rotate-half, as Hugging Face)
//   append k, v to the cache rows pos0..             cache [Hkv, S, Dh] per layer
//   a = attention(q, cache)                          [T, H*Dh], causal (+ sliding window)
//   x += a Wo^T                                      (the matmul accumulates into x: no separate add)
//   h = rmsnorm(x); logits_r = h Wg^T                [T, E]
//   ids, weights = gate(logits_r)                    [T, K] each (Mixtral: softmax, top-k, renormalise)
//   x = x + sum_k weights * expert_k(h)              (permute, grouped GEMMs, combine with the residual)
// then logits = rmsnorm(x) Wlm^T for every row (prefill with all logits) or only the last row (generation).
//
// Host syncs: none inside a step; the step ends by reading the logits back (and the routing ids when stats are on).
//
// Decode (T = 1) with the tuned kernels runs a DecodePlan instead: the same math in 8 launches per layer (fused norms,
// q/k/v in one launch, RoPE with the cache append, one-launch attention, no permutation, the combine in the down
// projection). With SessionOptions.CudaGraph on CUDA, the plan is captured once as a CUDA graph (the second decode
// step) and replayed after that; any failure to capture falls back to launching the plan.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;

namespace ILGpuMoE.Runtime;

/// <summary>How a session runs its steps.</summary>
public sealed record SessionOptions
{
    /// <summary>
    /// On CUDA, capture the decode step (T = 1) once as a CUDA graph and replay it per token (the session then owns a
    /// stream: the legacy default stream cannot be captured). Off by default until a GPU run has checked it against the
    /// plain path (perf/gpu/fixtures.sh does); ignored elsewhere (CudaGraphStatus says so).
    /// </summary>
    public bool CudaGraph { get; init; }
}

public sealed class InferenceSession : IDisposable
{
    private readonly MixtralModel _model;
    private readonly AcceleratorStream _stream;
    private readonly RouterSpec _spec;
    private readonly int _b, _d, _qd, _kvd, _e, _k, _v;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _tokens, _positions, _ids;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _x, _h, _q, _kk, _vv, _attn, _routerLogits, _weights, _logits;
    private readonly MemoryBuffer1D<float, Stride1D.Dense>[] _kCache, _vCache;
    private readonly MoeWorkspace _moe;
    private readonly MemoryBuffer1D<float, Stride1D.Dense>? _gather; // act-order attention inputs [T, In]
    private readonly long[][] _expertCounts;
    private int[] _lastIds = [];
    private int _lastT;
    private readonly bool _ownStream, _graphWanted;
    private DecodePlan? _plan;
    private bool _planTried;
    private CudaGraph? _graph;
    private bool _graphTried;
    private int _decodeSteps;

    internal InferenceSession(MixtralModel model, SessionOptions? options = null)
    {
        _model = model;
        var c = model.Config;
        var a = model.Accelerator;
        options ??= new();
        // A graph cannot capture CUDA's legacy default stream (ILGPU's DefaultStream): such a session owns a stream.
        _graphWanted = options.CudaGraph;
        _ownStream = options.CudaGraph && a.AcceleratorType == AcceleratorType.Cuda;
        _stream = _ownStream ? a.CreateStream() : a.DefaultStream;
        if (options.CudaGraph && !_ownStream)
            CudaGraphStatus = $"not used: {a.AcceleratorType} is not a CUDA device";
        _spec = c.Router.Kind switch
        {
            RouterKind.Mixtral => RouterSpec.Mixtral(c.Experts, c.TopK),
            RouterKind.SoftmaxTopK => RouterSpec.SoftmaxTopK(c.Experts, c.TopK),
            _ => throw new NotSupportedException($"router {c.Router.Kind} is not wired into the runtime yet"),
        };
        _b = model.MaxBatch;
        _d = c.HiddenSize;
        _qd = c.QueryDim;
        _kvd = c.KvDim;
        _e = c.Experts;
        _k = c.TopK;
        _v = c.VocabSize;
        _tokens = a.Allocate1D<int>(_b);
        _positions = a.Allocate1D<int>(_b);
        _ids = a.Allocate1D<int>((long)c.Layers * _b * _k);
        _x = a.Allocate1D<float>((long)_b * _d);
        _h = a.Allocate1D<float>((long)_b * _d);
        _q = a.Allocate1D<float>((long)_b * _qd);
        _kk = a.Allocate1D<float>((long)_b * _kvd);
        _vv = a.Allocate1D<float>((long)_b * _kvd);
        _attn = a.Allocate1D<float>((long)_b * _qd);
        _routerLogits = a.Allocate1D<float>((long)_b * _e);
        _weights = a.Allocate1D<float>((long)_b * _k);
        _logits = a.Allocate1D<float>((long)_b * _v);
        long cache = KvCacheLayout.Elements(c.KvHeads, model.MaxSeq, c.HeadDim);
        _kCache = new MemoryBuffer1D<float, Stride1D.Dense>[c.Layers];
        _vCache = new MemoryBuffer1D<float, Stride1D.Dense>[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            _kCache[l] = a.Allocate1D<float>(cache);
            _vCache[l] = a.Allocate1D<float>(cache);
        }

        _moe = new MoeWorkspace(a, _b, _k, _e, _d, c.IntermediateSize, permutedInput: model.PermutedExperts);
        if (model.GatherColumns > 0)
            _gather = a.Allocate1D<float>((long)_b * model.GatherColumns);
        _expertCounts = Enumerable.Range(0, c.Layers).Select(_ => new long[_e]).ToArray();
        if (_ownStream)
            a.Synchronize(); // the session's own stream does not wait for work queued on the default one
    }

    public MixtralModel Model => _model;

    /// <summary>Kernels launched by the last forward step (host-counted, KernelLaunches); for a step replayed from a CUDA
    /// graph, the graph's node count.</summary>
    public long LastStepLaunches { get; private set; }

    /// <summary>Launches of the last step inside its decoder layers, per layer (the embedding and the logits head excluded).</summary>
    public double LastStepLaunchesPerLayer { get; private set; }

    /// <summary>True when the last step was replayed from a captured CUDA graph.</summary>
    public bool LastStepReplayed { get; private set; }

    /// <summary>How a decode step runs: "fused (N launches per layer)" or "plain: why" (null before the first decode step).</summary>
    public string? DecodePath { get; private set; }

    /// <summary>With SessionOptions.CudaGraph: "captured: N nodes", or why no graph is used; null before it is tried.</summary>
    public string? CudaGraphStatus { get; private set; }

    /// <summary>Tokens in the KV cache: the position the next token gets.</summary>
    public int Position { get; private set; }

    /// <summary>When set, each step reads the routing back and adds it to <see cref="ExpertCounts"/> (one extra copy per step).</summary>
    public bool CollectRoutingStats { get; set; }

    /// <summary>[layer][expert]: tokens routed to each expert since the session began (or <see cref="ResetRoutingStats"/>).</summary>
    public IReadOnlyList<IReadOnlyList<long>> ExpertCounts => _expertCounts;

    /// <summary>Expert ids [T, K] of <paramref name="layer"/> in the last step (needs <see cref="CollectRoutingStats"/>).</summary>
    public ReadOnlySpan<int> LastRoutingIds(int layer)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, _model.Config.Layers);
        return _lastT == 0 ? [] : _lastIds.AsSpan(layer * _b * _k, _lastT * _k);
    }

    public void ResetRoutingStats()
    {
        foreach (var row in _expertCounts)
            Array.Clear(row);
    }

    /// <summary>Forgets the sequence (the cache rows are overwritten by the next prefill).</summary>
    public void Reset() => Position = 0;

    /// <summary>
    /// Appends <paramref name="tokens"/> at the next positions. Returns logits [T, V] of every token when
    /// <paramref name="allLogits"/>, else only the last token's [V]. Prompts longer than the model's MaxBatch run in chunks.
    /// </summary>
    public float[] Prefill(ReadOnlySpan<int> tokens, bool allLogits)
    {
        if (tokens.IsEmpty)
            throw new RuntimeInputException("no tokens to process (the prompt is empty)");
        CheckTokens(tokens);
        if ((long)Position + tokens.Length > _model.MaxSeq)
            throw new RuntimeInputException($"{Position + (long)tokens.Length} tokens do not fit the KV cache of {_model.MaxSeq} positions (--max-seq)");

        // All logits [T, V] go to one host array: .NET arrays stop at Array.MaxLength elements (Qwen's V = 151,936
        // reaches it near T = 14,100); say so instead of failing inside the allocation.
        if (allLogits && (long)tokens.Length * _v > Array.MaxLength)
            throw new RuntimeInputException($"logits of {tokens.Length} tokens x vocabulary {_v} exceed one host array ({Array.MaxLength} floats); ask for the last token's logits or split the prompt");
        var result = new float[allLogits ? (long)tokens.Length * _v : _v];
        for (int start = 0; start < tokens.Length; start += _b)
        {
            int t = Math.Min(_b, tokens.Length - start);
            bool last = start + t == tokens.Length;
            Step(tokens.Slice(start, t), allLogits ? t : last ? 1 : 0);
            if (allLogits)
                _logits.View.SubView(0, (long)t * _v).CopyToCPU(_stream, result.AsSpan(checked((int)((long)start * _v)), checked(t * _v)));
            else if (last)
                _logits.View.SubView(0, _v).CopyToCPU(_stream, result.AsSpan());
            _stream.Synchronize();
        }

        return result;
    }

    /// <summary>Appends one token; returns its logits [V].</summary>
    public float[] Decode(int token) => Prefill([token], allLogits: false);

    private void CheckTokens(ReadOnlySpan<int> tokens)
    {
        for (int i = 0; i < tokens.Length; i++)
        {
            if ((uint)tokens[i] >= (uint)_v)
                throw new RuntimeInputException($"token id {tokens[i]} at index {i} is outside the vocabulary [0, {_v})");
        }
    }

    // One forward step of T <= MaxBatch tokens at Position; logitRows: 0 none, 1 the last row only, T all rows.
    private void Step(ReadOnlySpan<int> tokens, int logitRows)
    {
        int t = tokens.Length;
        Span<int> positions = t <= 1024 ? stackalloc int[t] : new int[t];
        for (int i = 0; i < t; i++)
            positions[i] = Position + i;
        // The token ids and positions go to the device first: the kernels (and a replayed graph) read them there.
        _tokens.View.SubView(0, t).CopyFromCPU(_stream, tokens);
        _positions.View.SubView(0, t).CopyFromCPU(_stream, positions);

        long before = KernelLaunches.Count;
        LastStepReplayed = false;
        var plan = t == 1 && logitRows == 1 ? Plan() : null;
        if (plan is null)
        {
            StepLaunches(t, logitRows);
        }
        else
        {
            _decodeSteps++;
            // The first decode step runs the plan plainly (every kernel compiles and loads outside a capture); the second
            // is captured and replayed, and later steps replay.
            if (_graphWanted && _ownStream && !_graphTried && _decodeSteps >= 2)
                CaptureGraph(plan);
            if (_graph is not null)
            {
                _graph.Launch(_stream);
                LastStepReplayed = true;
            }
            else
            {
                plan.Run();
            }

            LastStepLaunchesPerLayer = plan.LaunchesPerLayer;
        }

        LastStepLaunches = _graph is not null && LastStepReplayed ? _graph.Nodes : KernelLaunches.Count - before;
        Position += t;
        if (CollectRoutingStats)
            ReadRouting(t);
    }

    private DecodePlan? Plan()
    {
        if (!_planTried)
        {
            _planTried = true;
            var why = DecodePlan.Fallback(_model);
            if (why is null)
            {
                var b = new DecodeBuffers(_tokens.View, _positions.View, _x.View, _q.View, _kk.View, _vv.View, _attn.View, _routerLogits.View,
                    _weights.View, _moe.H.View, _logits.View, _kCache.Select(k => (ArrayView<float>)k.View).ToArray(), _vCache.Select(v => (ArrayView<float>)v.View).ToArray(),
                    l => _ids.View.SubView((long)l * _b * _k, _k));
                _plan = DecodePlan.Build(_model, _stream, _spec, b);
                DecodePath = $"fused ({_plan.LaunchesPerLayer:F0} launches per layer)";
            }
            else
            {
                DecodePath = $"plain: {why}";
            }
        }

        return _plan;
    }

    private void CaptureGraph(DecodePlan plan)
    {
        _graphTried = true;
        try
        {
            _graph = CudaGraph.Capture(_stream, plan.Run);
            CudaGraphStatus = $"captured: {_graph.Nodes} nodes";
        }
        catch (Exception e) when (e is InvalidOperationException or ILGPU.Runtime.Cuda.CudaException)
        {
            // Launching the plan plainly still works: say why the graph is not used, once.
            _graph = null;
            CudaGraphStatus = $"not used: {e.Message}";
        }
    }

    private void StepLaunches(int t, int logitRows)
    {
        var m = _model;
        var c = m.Config;
        var ops = m.Ops;
        var s = _stream;
        int pos0 = Position, hd = c.HeadDim, seq = m.MaxSeq;
        float eps = (float)c.RmsNormEps, theta = (float)c.RopeTheta;
        int window = c.SlidingWindow ?? 0;

        var tok = _tokens.View.SubView(0, t);
        var pos = _positions.View.SubView(0, t);
        var x = _x.View.SubView(0, (long)t * _d);
        var h = _h.View.SubView(0, (long)t * _d);
        var q = _q.View.SubView(0, (long)t * _qd);
        var k = _kk.View.SubView(0, (long)t * _kvd);
        var v = _vv.View.SubView(0, (long)t * _kvd);
        var a = _attn.View.SubView(0, (long)t * _qd);
        var rl = _routerLogits.View.SubView(0, (long)t * _e);
        var w = _weights.View.SubView(0, (long)t * _k);
        var g = _gather is null ? default : _gather.View;

        ops.Embedding(s, tok, m.Embedding, x, t, _v, _d);
        long layersStart = KernelLaunches.Count;
        for (int l = 0; l < c.Layers; l++)
        {
            var lw = m.Layers[l];
            ops.RmsNorm(s, x, lw.InputNorm, h, t, _d, eps);
            // Act-order q/k/v of one input order: gather the normed rows once for all three.
            bool shared = lw.QkvShareInputOrder;
            ArrayView<float> hq = shared ? ops.GatherInput(s, h, lw.Wq, g, t, _d) : (ArrayView<float>)h;
            ops.MatMul(s, hq, lw.Wq, q, t, _qd, _d, gather: g, inputGathered: shared);
            ops.MatMul(s, hq, lw.Wk, k, t, _kvd, _d, gather: g, inputGathered: shared);
            ops.MatMul(s, hq, lw.Wv, v, t, _kvd, _d, gather: g, inputGathered: shared);
            ops.Rope.Launch(s, q, k, pos, t, c.Heads, c.KvHeads, hd, theta);
            ops.Append.Launch(s, k, v, _kCache[l].View, _vCache[l].View, t, c.KvHeads, hd, seq, pos0);
            ops.Attention.Launch(s, q, _kCache[l].View, _vCache[l].View, a, t, c.Heads, c.KvHeads, hd, seq, pos0, window);
            ops.MatMul(s, a, lw.Wo, x, t, _d, _qd, accumulate: true, gather: g);

            ops.RmsNorm(s, x, lw.PostNorm, h, t, _d, eps);
            ops.MatMul(s, h, lw.Gate, rl, t, _e, _d);
            var ids = _ids.View.SubView((long)l * _b * _k, (long)t * _k);
            ops.Gating.Launch(s, _spec, rl, ids, w, t);
            ops.Moe(s, _moe, h, ids, w, t, lw.W1, lw.W3, lw.W2, x, x);
        }

        LastStepLaunchesPerLayer = c.Layers > 0 ? (KernelLaunches.Count - layersStart) / (double)c.Layers : 0;
        if (logitRows > 0)
        {
            int first = t - logitRows;
            var xs = x.SubView((long)first * _d, (long)logitRows * _d);
            var hs = h.SubView(0, (long)logitRows * _d);
            ops.RmsNorm(s, xs, m.FinalNorm, hs, logitRows, _d, eps);
            ops.MatMul(s, hs, m.LmHead, _logits.View.SubView(0, (long)logitRows * _v), logitRows, _v, _d);
        }
    }

    private void ReadRouting(int t)
    {
        int layers = _model.Config.Layers;
        if (_lastIds.Length != _ids.Length)
            _lastIds = new int[_ids.Length];
        _ids.View.CopyToCPU(_stream, _lastIds.AsSpan());
        _stream.Synchronize();
        _lastT = t;
        for (int l = 0; l < layers; l++)
        {
            var row = _expertCounts[l];
            foreach (int id in _lastIds.AsSpan(l * _b * _k, t * _k))
            {
                if (id >= 0)
                    row[id]++;
            }
        }
    }

    public void Dispose()
    {
        _stream.Synchronize();
        _graph?.Dispose();
        if (_ownStream)
            _stream.Dispose();
        foreach (var b in new MemoryBuffer[] { _tokens, _positions, _ids, _x, _h, _q, _kk, _vv, _attn, _routerLogits, _weights, _logits })
            b.Dispose();
        foreach (var b in _kCache.Concat(_vCache))
            b.Dispose();
        _moe.Dispose();
        _gather?.Dispose();
    }
}
