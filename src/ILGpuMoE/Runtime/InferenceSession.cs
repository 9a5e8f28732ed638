// One sequence being processed: its KV cache, its position, and the forward pass (prefill of T tokens and decode of
// one token go through the same kernels; only the kernel versions the launchers pick differ with T).
//
// Per layer, on one stream (glossary: T tokens, D model dim, H/Hkv heads, Dh head dim, E experts, K per token):
//   h = rmsnorm(x)                                   [T, D]
//   q, k, v = h Wq^T, h Wk^T, h Wv^T                 [T, H*Dh], [T, Hkv*Dh] x2
//     (+ bias, q/k rmsnorm per head or over the whole projection, clamp to [-clip, clip]: the family's choices)
//   rope(q, k) at positions pos0..pos0+T-1           (rotate-half, as Hugging Face)
//   append k, v to the cache rows pos0..             cache [Hkv, S, Dh] per layer
//   a = attention(q, cache)                          [T, H*Dh], causal (+ the layer's sliding window)
//   x += a Wo^T (+ bias)                             (the matmul accumulates into x: no separate add)
//   h = rmsnorm(x); logits_r = h Wg^T                [T, E] (+ the shared expert's gate logit: [T, E+1])
//   ids, weights = gate(logits_r)                    [T, K'] each (softmax, top-k, renormalise or not; shared slots)
//   x = x + sum_k weights * expert_k(h)              (permute, grouped GEMMs, combine with the residual)
// A dense layer skips the router: its MLP is stacked as experts every token visits at weight 1 (MoeModel.cs).
// DeepSeek's MLA layers replace the q/k/v block and the K/V cache with the compressed latent cache and the absorbed
// attention (MlaAttention below); gpt-oss adds the sinks to the attention, its router bias after the router matmul and
// the clamped GLU with expert biases inside the MoE kernels (LayerWeights.Glu).
// then logits = rmsnorm(x) Wlm^T for every row (prefill with all logits) or only the last row (generation).
//
// Paged (BatchSession.cs): the same step over the tokens of several sequences at once. The caches are then a pool of
// blocks ([NumBlocks, Hkv, BS, Dh] per layer, MLA [NumBlocks * BS, latent + rope]); each token carries its position, the
// slot its K/V row goes to and the block-table row of its sequence, and attention reads through the tables
// (kernels/ILGpuMoE.Kernels/Attention/PagedAttentionKernel.cs). Every other op is per token already.
//
// Host syncs: none inside a step; the step ends by reading the logits back (and the routing ids when stats are on).
//
// Decode (T = 1) with the tuned kernels runs a DecodePlan instead: the same math in 8 launches per layer (fused norms,
// q/k/v in one launch, RoPE with the cache append, one-launch attention, no permutation, the combine in the down
// projection). On CUDA (SessionOptions.CudaGraph, on by default), the plan is captured once as a CUDA graph (the second
// decode step) and replayed after that; any failure to capture falls back to launching the plan.
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
    /// stream: the legacy default stream cannot be captured). On by default: the H200 run of 2026-12-04 gave the same
    /// logits from the graph as from the plain plan (perf/gpu/fixtures.sh), and replays spend less per launch than
    /// launching the step's 6-9 kernels per layer one by one (perf/NOTES.md, "Decode at the roofline"). A capture that
    /// fails falls back to the plain plan (CudaGraphStatus says why); off CUDA it is not used.
    /// </summary>
    public bool CudaGraph { get; init; } = true;
}

public sealed class InferenceSession : IDisposable
{
    private readonly MoeModel _model;
    private readonly AcceleratorStream _stream;
    private readonly RouterSpec _spec;
    private readonly int _b, _d, _qd, _ad, _kvd, _e, _k, _v;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _tokens, _positions, _ids;
    private readonly int _slots; // K': the most experts a token visits in any layer (routed + shared chunks, or dense chunks)
    private readonly MemoryBuffer1D<int, Stride1D.Dense>? _denseIds;       // [B, m] 0..m-1 per token (dense layers)
    private readonly MemoryBuffer1D<float, Stride1D.Dense>? _denseWeights; // [B, m] ones
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _x, _h, _q, _kk, _vv, _attn, _routerLogits, _weights, _logits;
    private readonly MemoryBuffer1D<float, Stride1D.Dense>[] _kCache, _vCache;
    // MLA (DeepSeek): per layer the compressed cache [S, latent + rope]; per step q's low-rank input [T, q_lora_rank],
    // kv_a's output [T, latent + rope], the absorbed queries [T, H, latent + rope] and outputs [T, H, latent].
    private readonly MemoryBuffer1D<float, Stride1D.Dense>[] _latentCache = [];
    private readonly MemoryBuffer1D<float, Stride1D.Dense>? _qa, _ckv, _qAbs, _oLat;
    private readonly Dictionary<(int Slots, int Experts), MoeWorkspace> _moe = [];
    private readonly MemoryBuffer1D<float, Stride1D.Dense>? _gather; // act-order attention inputs [T, In]
    private readonly MemoryBuffer1D<float, Stride1D.Dense>? _noise;  // NoisyTopK's noise logits [T, E] (zero)
    private readonly LayerRoutingStats[] _routing;
    private float[] _lastLogits = [];
    private int[] _lastIds = [];
    private int _lastT;
    private readonly bool _ownStream, _graphWanted;
    private DecodePlan? _plan;
    private bool _planTried;
    private CudaGraph? _graph;
    private bool _graphTried;
    private int _decodeSteps;
    private bool _disposed;
    // Paged mode (BatchSession): the pool's layout, and per step each token's cache slot and block-table row, and the
    // block tables of the step's sequences [S, MaxBlocks].
    private readonly PagedLayout? _paged;
    private readonly MemoryBuffer1D<int, Stride1D.Dense>? _slotOf, _seqOf, _tables;
    private int _pagedSteps;

    internal InferenceSession(MoeModel model, SessionOptions? options = null, PagedLayout? paged = null)
    {
        _model = model;
        _paged = paged;
        var c = model.Config;
        var a = model.Accelerator;
        options ??= new();
        // A graph cannot capture CUDA's legacy default stream (ILGPU's DefaultStream): such a session owns a stream.
        _graphWanted = options.CudaGraph && paged is null;
        _ownStream = _graphWanted && a.AcceleratorType == AcceleratorType.Cuda;
        _stream = _ownStream ? a.CreateStream() : a.DefaultStream;
        if (options.CudaGraph && !_ownStream && !model.IsCpuBackend)
            CudaGraphStatus = $"not used: {a.AcceleratorType} is not a CUDA device";
        else if (!options.CudaGraph && a.AcceleratorType == AcceleratorType.Cuda)
            CudaGraphStatus = "off (SessionOptions.CudaGraph = false): the plan is launched kernel by kernel";
        _spec = c.Router.Kind switch
        {
            RouterKind.Mixtral => RouterSpec.Mixtral(c.Experts, c.TopK),
            RouterKind.SoftmaxTopK => RouterSpec.SoftmaxTopK(c.Experts, c.TopK),
            RouterKind.Switch => RouterSpec.Switch(c.Experts, c.Router.CapacityFactor),
            RouterKind.NoisyTopK => RouterSpec.NoisyTopK(c.Experts, c.TopK, c.Router.NoiseSeed),
            RouterKind.DeepSeekV3 => RouterSpec.DeepSeekV3(c.Experts, c.TopK, c.Router.Groups, c.Router.TopKGroups, c.Router.NormTopK, c.Router.RoutedScaling),
            _ => throw new NotSupportedException($"router {c.Router.Kind} is not wired into the runtime yet"),
        };
        _b = model.MaxBatch;
        _d = c.HiddenSize;
        _qd = c.QueryDim;
        _ad = c.AttentionDim;
        _kvd = c.KvDim;
        _e = c.Experts;
        _k = c.TopK;
        _v = c.VocabSize;
        _tokens = a.Allocate1D<int>(_b);
        _positions = a.Allocate1D<int>(_b);
        _slots = model.Layers.Count > 0 ? model.Layers.Max(l => l.Slots) : _k;
        _ids = a.Allocate1D<int>((long)c.Layers * _b * _slots);
        _x = a.Allocate1D<float>((long)_b * _d);
        _h = a.Allocate1D<float>((long)_b * _d);
        _q = a.Allocate1D<float>((long)_b * _qd);
        _kk = a.Allocate1D<float>((long)_b * _kvd);
        _vv = a.Allocate1D<float>((long)_b * _kvd);
        _attn = a.Allocate1D<float>((long)_b * _ad);
        // Per layer, so that routing statistics can read every layer's logits after the step.
        _routerLogits = a.Allocate1D<float>((long)c.Layers * _b * (_e + 1));
        if (c.Router.Kind == RouterKind.NoisyTopK)
        {
            // The checkpoints have no W_noise: zero noise logits, noise std softplus(0) = ln 2 (RouterChoice.Apply).
            _noise = a.Allocate1D<float>((long)_b * _e);
            _noise.MemSetToZero();
        }

        _weights = a.Allocate1D<float>((long)_b * _slots);
        _logits = a.Allocate1D<float>((long)_b * _v);
        if (c.Block.Mla is { } mla)
        {
            // The latent cache replaces K and V (MemoryPlan.CacheBytes counts the same floats).
            _kCache = _vCache = [];
            long rows = paged is null ? model.MaxSeq : (long)paged.Blocks * paged.BlockSize;
            _latentCache = Enumerable.Range(0, c.Layers).Select(_ => a.Allocate1D<float>(rows * mla.CacheWidth)).ToArray();
            if (mla.QLoraRank > 0)
                _qa = a.Allocate1D<float>((long)_b * mla.QLoraRank);
            _ckv = a.Allocate1D<float>((long)_b * mla.CacheWidth);
            _qAbs = a.Allocate1D<float>((long)_b * c.Heads * mla.CacheWidth);
            _oLat = a.Allocate1D<float>((long)_b * c.Heads * mla.KvLoraRank);
        }
        else
        {
            long cache = paged is null ? KvCacheLayout.Elements(c.KvHeads, model.MaxSeq, c.HeadDim) : paged.CacheElements(c.KvHeads, c.HeadDim);
            _kCache = new MemoryBuffer1D<float, Stride1D.Dense>[c.Layers];
            _vCache = new MemoryBuffer1D<float, Stride1D.Dense>[c.Layers];
            for (int l = 0; l < c.Layers; l++)
            {
                _kCache[l] = a.Allocate1D<float>(cache);
                _vCache[l] = a.Allocate1D<float>(cache);
            }
        }

        foreach (var l in model.Layers)
        {
            if (!_moe.ContainsKey((l.Slots, l.Experts)))
                _moe[(l.Slots, l.Experts)] = new MoeWorkspace(a, _b, l.Slots, l.Experts, _d, c.IntermediateSize, permutedInput: model.PermutedExperts);
        }

        if (model.Layers.FirstOrDefault(l => l.Dense) is { } dense)
        {
            // Every token visits every chunk of a dense layer's MLP at weight 1: fixed for the session's life.
            int m = dense.Slots;
            _denseIds = a.Allocate1D(Enumerable.Range(0, _b * m).Select(i => i % m).ToArray());
            _denseWeights = a.Allocate1D(Enumerable.Repeat(1f, _b * m).ToArray());
        }

        if (paged is not null)
        {
            _slotOf = a.Allocate1D<int>(_b);
            _seqOf = a.Allocate1D<int>(_b);
            _tables = a.Allocate1D<int>((long)_b * paged.MaxBlocks);
        }

        if (model.GatherColumns > 0)
            _gather = a.Allocate1D<float>((long)_b * model.GatherColumns);
        _routing = Enumerable.Range(0, c.Layers).Select(_ => new LayerRoutingStats(_e)).ToArray();
        if (_ownStream)
            a.Synchronize(); // the session's own stream does not wait for work queued on the default one
    }

    public MoeModel Model => _model;

    /// <summary>Bytes of KV cache this session allocated (K and V per layer, or MLA's compressed rows): the memory plan's
    /// KvCacheBytes, which the tests hold it to.</summary>
    public long CacheBytes => _kCache.Concat(_vCache).Concat(_latentCache).Sum(b => b.LengthInBytes);

    /// <summary>Kernels launched by the last forward step (host-counted, KernelLaunches); for a step replayed from a CUDA
    /// graph, the graph's node count.</summary>
    public long LastStepLaunches { get; private set; }

    /// <summary>Of <see cref="LastStepLaunches"/>, the tensor-core kernels (mma.sync; KernelPolicy.TensorCore, or Auto
    /// on sm_80+, for steps of more than one token).</summary>
    public long LastStepTensorCoreLaunches { get; private set; }

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
    public IReadOnlyList<IReadOnlyList<long>> ExpertCounts => _routing.Select(r => r.TokensPerExpert).ToArray();

    /// <summary>Per layer: tokens per expert, dropped tokens, load balance and the Switch auxiliary loss (RoutingStats.cs);
    /// a dense layer's stay empty.</summary>
    public IReadOnlyList<LayerRoutingStats> Routing => _routing;

    /// <summary>Expert ids [T, K'] of <paramref name="layer"/> in the last step (needs <see cref="CollectRoutingStats"/>): K' = K routed
    /// ids, then the shared expert's chunks (ids E and up) in a Qwen2-MoE layer; empty for a dense layer.</summary>
    public ReadOnlySpan<int> LastRoutingIds(int layer)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, _model.Config.Layers);
        return _lastT == 0 || _model.Layers[layer].Dense ? [] : _lastIds.AsSpan(layer * _b * _slots, _lastT * _model.Layers[layer].Slots);
    }

    public void ResetRoutingStats()
    {
        foreach (var r in _routing)
            r.Reset();
    }

    /// <summary>Forgets the sequence (the cache rows are overwritten by the next prefill).</summary>
    public void Reset() => Position = 0;

    /// <summary>
    /// Appends <paramref name="tokens"/> at the next positions. Returns logits [T, V] of every token when
    /// <paramref name="allLogits"/>, else only the last token's [V]. Prompts longer than the model's MaxBatch run in chunks.
    /// </summary>
    public float[] Prefill(ReadOnlySpan<int> tokens, bool allLogits)
    {
        ThrowIfUnusable();
        if (_paged is not null)
            throw new InvalidOperationException("a paged session runs BatchSession.Step, not Prefill / Decode");
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

    /// <summary>ObjectDisposedException naming what is gone: this session, its model, or their accelerator / context.</summary>
    private void ThrowIfUnusable()
    {
        if (_disposed)
            throw new ObjectDisposedException(nameof(InferenceSession), "InferenceSession: the session was disposed");
        _model.ThrowIfUnusable(nameof(InferenceSession));
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

        long before = KernelLaunches.Count, beforeMma = KernelLaunches.TensorCoreCount;
        LastStepReplayed = false;
        var plan = t == 1 && logitRows == 1 ? Plan() : null;
        if (plan is null)
        {
            StepLaunches(t, logitRows, Position);
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
        LastStepTensorCoreLaunches = KernelLaunches.TensorCoreCount - beforeMma;
        Position += t;
        if (CollectRoutingStats)
            ReadRouting(t);
    }

    /// <summary>
    /// Paged mode: one step over the T tokens of several sequences. Per token its id, position, cache slot and row of
    /// <paramref name="tables"/> ([S, MaxBlocks]); <paramref name="logitRows"/> lists the tokens whose logits are wanted,
    /// written to <paramref name="logits"/> [rows, V] in that order. The caller (BatchSession) checked every index.
    /// </summary>
    internal void StepPaged(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> slots, ReadOnlySpan<int> seqOf,
        ReadOnlySpan<int> tables, ReadOnlySpan<int> logitRows, Span<float> logits)
    {
        ThrowIfUnusable();
        int t = tokens.Length;
        CheckTokens(tokens);
        _tokens.View.SubView(0, t).CopyFromCPU(_stream, tokens);
        _positions.View.SubView(0, t).CopyFromCPU(_stream, positions);
        _slotOf!.View.SubView(0, t).CopyFromCPU(_stream, slots);
        _seqOf!.View.SubView(0, t).CopyFromCPU(_stream, seqOf);
        _tables!.View.SubView(0, tables.Length).CopyFromCPU(_stream, tables);
        long before = KernelLaunches.Count;
        StepLaunches(t, 0, _pagedSteps++);
        var m = _model;
        var x = _x.View.SubView(0, (long)t * _d);
        var hs = _h.View.SubView(0, (long)logitRows.Length * _d);
        // The wanted rows only (a prefill chunk's last token, each decoding sequence's one): one norm launch per row.
        for (int i = 0; i < logitRows.Length; i++)
            m.Ops.RmsNorm(_stream, x.SubView((long)logitRows[i] * _d, _d), m.FinalNorm, hs.SubView((long)i * _d, _d), 1, _d, (float)m.Config.RmsNormEps);
        if (logitRows.Length > 0)
        {
            m.Ops.MatMul(_stream, hs, m.LmHead, _logits.View.SubView(0, (long)logitRows.Length * _v), logitRows.Length, _v, _d);
            _logits.View.SubView(0, (long)logitRows.Length * _v).CopyToCPU(_stream, logits[..(logitRows.Length * _v)]);
        }

        _stream.Synchronize();
        LastStepLaunches = KernelLaunches.Count - before;
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
                var b = new DecodeBuffers(_tokens.View, _positions.View, _x.View, _q.View, _kk.View, _vv.View, _attn.View,
                    l => _routerLogits.View.SubView((long)l * _b * (_e + 1), _e + 1),
                    _weights.View, _moe.Values.MaxBy(w => w.TopK)!.H.View, _logits.View, _kCache.Select(k => (ArrayView<float>)k.View).ToArray(), _vCache.Select(v => (ArrayView<float>)v.View).ToArray(),
                    l => _ids.View.SubView((long)l * _b * _slots, _slots), _denseIds is null ? default : _denseIds.View,
                    _denseWeights is null ? default : _denseWeights.View);
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

    // pos0: the contiguous cache's first position of the step; in paged mode the step's count, which only seeds NoisyTopK.
    private void StepLaunches(int t, int logitRows, int pos0)
    {
        var m = _model;
        var c = m.Config;
        var ops = m.Ops;
        var s = _stream;
        float eps = (float)c.RmsNormEps;

        var tok = _tokens.View.SubView(0, t);
        var pos = _positions.View.SubView(0, t);
        var x = _x.View.SubView(0, (long)t * _d);
        var h = _h.View.SubView(0, (long)t * _d);
        var q = _q.View.SubView(0, (long)t * _qd);
        var k = _kk.View.SubView(0, (long)t * _kvd);
        var v = _vv.View.SubView(0, (long)t * _kvd);
        var a = _attn.View.SubView(0, (long)t * _ad);
        var g = _gather is null ? default : _gather.View;

        ops.Embedding(s, tok, m.Embedding, x, t, _v, _d);
        long layersStart = KernelLaunches.Count;
        for (int l = 0; l < c.Layers; l++)
        {
            var lw = m.Layers[l];
            var ex = lw.Extras;
            ops.RmsNorm(s, x, lw.InputNorm, h, t, _d, eps);
            if (lw.Mla is { } mw)
                MlaAttention(l, lw, mw, h, q, a, pos, t);
            else
                Attention(l, lw, h, q, k, v, a, pos, t, g);
            ops.MatMul(s, a, lw.Wo, x, t, _d, _ad, accumulate: true, gather: g);
            if (ex.BiasO is not null)
                ops.BiasClip(s, x, ex.BiasO, t, _d, float.PositiveInfinity);

            ops.RmsNorm(s, x, lw.PostNorm, h, t, _d, eps);
            var ws = _moe[(lw.Slots, lw.Experts)];
            if (lw.Dense)
            {
                var ids = _denseIds!.View.SubView(0, (long)t * lw.Slots);
                ops.Moe(s, ws, h, ids, _denseWeights!.View.SubView(0, (long)t * lw.Slots), t, lw.W1, lw.W3, lw.W2, x, x);
            }
            else
            {
                var spec = Spec(lw, pos0);
                int logits = spec.LogitsPerToken;
                var rl = _routerLogits.View.SubView((long)l * _b * (_e + 1), (long)t * logits);
                ops.MatMul(s, h, lw.Gate!, rl, t, logits, _d, tensorCore: false); // the router stays F32 (WeightOps.MatMul)
                if (lw.Moe.RouterBias is { } rb)
                    ops.BiasClip(s, rl, rb, t, logits, float.PositiveInfinity);
                var ids = _ids.View.SubView((long)l * _b * _slots, (long)t * lw.Slots);
                var w = _weights.View.SubView(0, (long)t * lw.Slots);
                ops.Gating(s, spec, rl, ids, w, t, _noise is null ? default : _noise.View.SubView(0, (long)t * _e),
                    lw.Moe.ScoreBias is { } sb ? sb.F32 : default);
                ops.Moe(s, ws, h, ids, w, t, lw.W1, lw.W3, lw.W2, x, x, lw.Glu);
            }
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

    // Grouped-query attention of layer l: q, k, v (+ biases, q/k norms, clip), RoPE, the cache append, attention into a.
    private void Attention(int l, LayerWeights lw, ArrayView<float> h, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
        ArrayView<float> a, ArrayView<int> pos, int t, ArrayView<float> g)
    {
        var m = _model;
        var c = m.Config;
        var ops = m.Ops;
        var s = _stream;
        var ex = lw.Extras;
        int pos0 = Position, hd = c.HeadDim, seq = m.MaxSeq;
        var sinks = ex.Sinks is { } sk ? sk.F32 : default;
        float eps = (float)c.RmsNormEps;
        float clip = c.Block.ClipQkv is { } cq ? (float)cq : float.PositiveInfinity;
        // Act-order q/k/v of one input order: gather the normed rows once for all three.
        bool shared = lw.QkvShareInputOrder;
        ArrayView<float> hq = shared ? ops.GatherInput(s, h, lw.Wq, g, t, _d) : (ArrayView<float>)h;
        ops.MatMul(s, hq, lw.Wq, q, t, _qd, _d, gather: g, inputGathered: shared);
        ops.MatMul(s, hq, lw.Wk, k, t, _kvd, _d, gather: g, inputGathered: shared);
        ops.MatMul(s, hq, lw.Wv, v, t, _kvd, _d, gather: g, inputGathered: shared);
        // Hugging Face's order: bias (in the projection), then the q/k norm, then clip_qkv, then RoPE.
        if (ex.BiasQ is not null)
        {
            ops.BiasClip(s, q, ex.BiasQ, t, _qd, float.PositiveInfinity);
            ops.BiasClip(s, k, ex.BiasK, t, _kvd, float.PositiveInfinity);
            ops.BiasClip(s, v, ex.BiasV, t, _kvd, float.PositiveInfinity);
        }

        // OLMoE's q/k norm over the whole projection, in place; Qwen3's per-head norm is fused into RoPE below.
        bool perHead = c.Block.QkNorm == ILGpuMoE.Model.QkNormKind.PerHead;
        if (ex.QNorm is not null && ex.KNorm is not null && !perHead)
        {
            ops.RmsNorm(s, q, ex.QNorm, q, t, _qd, eps);
            ops.RmsNorm(s, k, ex.KNorm, k, t, _kvd, eps);
        }

        if (!float.IsPositiveInfinity(clip))
        {
            ops.BiasClip(s, q, null, t, _qd, clip);
            ops.BiasClip(s, k, null, t, _kvd, clip);
            ops.BiasClip(s, v, null, t, _kvd, clip);
        }

        ops.Rope(s, q, k, pos, t, c.Heads, c.KvHeads, m.Rope, hd, hd, perHead ? ex.QNorm : null, perHead ? ex.KNorm : null, eps);
        if (_paged is { } pl)
        {
            ops.PagedAppendKv(s, k, v, _kCache[l].View, _vCache[l].View, _slotOf!.View.SubView(0, t), t, c.KvHeads, hd, pl.BlockSize);
            ops.PagedAttention(s, q, _kCache[l].View, _vCache[l].View, a, pos, _seqOf!.View.SubView(0, t), _tables!.View, t, c.Heads, c.KvHeads, hd,
                pl.BlockSize, pl.MaxBlocks, c.WindowOf(l), sinks, m.AttentionScale);
            return;
        }

        ops.AppendKv(s, k, v, _kCache[l].View, _vCache[l].View, t, c.KvHeads, hd, seq, pos0);
        ops.Attention(s, q, _kCache[l].View, _vCache[l].View, a, t, c.Heads, c.KvHeads, hd, seq, pos0, c.WindowOf(l), sinks, m.AttentionScale);
    }

    // DeepSeek's MLA for layer l, absorbed (kernels/ILGpuMoE.Kernels/Attention/Mla): q through q_a / q_a_layernorm / q_b
    // (or q_proj); [latent | k_rope] = kv_a_proj_with_mqa h, the latent RMS-normalised in place; RoPE on q's rope part and
    // k_rope; both appended to the layer's compressed cache; q_abs = [W_UK^T q_nope | q_rope] per head; attention over the
    // cache rows gives the latent outputs, and W_UV per head turns them into a [T, H * Dv].
    private void MlaAttention(int l, LayerWeights lw, MlaWeights mw, ArrayView<float> h, ArrayView<float> q, ArrayView<float> a,
        ArrayView<int> pos, int t)
    {
        var m = _model;
        var c = m.Config;
        var ops = m.Ops;
        var s = _stream;
        var o = c.Block.Mla!;
        float eps = (float)c.RmsNormEps;
        int rank = o.KvLoraRank, rope = o.QkRopeHeadDim, row = o.CacheWidth, qk = o.QkHeadDim;
        if (mw.Wqa is { } wqa)
        {
            var qa = _qa!.View.SubView(0, (long)t * o.QLoraRank);
            ops.MatMul(s, h, wqa, qa, t, o.QLoraRank, _d);
            ops.RmsNorm(s, qa, mw.QaNorm!, qa, t, o.QLoraRank, eps);
            ops.MatMul(s, qa, lw.Wq, q, t, _qd, o.QLoraRank);
        }
        else
        {
            ops.MatMul(s, h, lw.Wq, q, t, _qd, _d);
        }

        var ckv = _ckv!.View.SubView(0, (long)t * row);
        ops.MatMul(s, h, lw.Wk, ckv, t, row, _d);
        ops.RmsNorm(s, ckv, row, mw.KvaNorm, ckv, row, t, rank, eps);
        var kRope = ckv.SubView(rank, ckv.Length - rank);
        ops.Rope(s, q.SubView(o.QkNopeHeadDim, q.Length - o.QkNopeHeadDim), kRope, pos, t, c.Heads, 1, m.Rope, qk, row, null, null, eps);
        var cache = _latentCache[l].View;
        if (_paged is null)
            ops.MlaAppend(s, ckv, row, kRope, row, pos, cache, t, rank, rope, m.MaxSeq);
        else
            ops.PagedMlaAppend(s, ckv, row, kRope, row, _slotOf!.View.SubView(0, t), cache, t, rank, rope);
        var qAbs = _qAbs!.View.SubView(0, (long)t * c.Heads * row);
        var oLat = _oLat!.View.SubView(0, (long)t * c.Heads * rank);
        var kvB = lw.Wv.Dense!;
        ops.MlaAbsorbQ(s, q, kvB, qAbs, t, c.Heads, o);
        if (_paged is { } pl)
            ops.PagedMlaAttention(s, qAbs, cache, pos, _seqOf!.View.SubView(0, t), _tables!.View, oLat, t, c.Heads, o, pl.BlockSize, pl.MaxBlocks, m.AttentionScale);
        else
            ops.MlaAttention(s, qAbs, cache, pos, oLat, t, c.Heads, o, m.MaxSeq, m.AttentionScale);
        ops.MlaAbsorbV(s, oLat, kvB, a, t, c.Heads, o);
    }

    // The gating of a MoE layer: the model's router, with the shared expert's slots when it has them. Noisy top-k draws
    // its noise per (seed, token of the step, expert): the seed is mixed with the step's first position so that decode
    // steps (one token each) do not all draw the same noise.
    private RouterSpec Spec(LayerWeights lw, int pos0)
    {
        if (lw.SharedSlots != 0)
            return _spec.WithSharedSlots(lw.SharedSlots);
        return _spec.Kind == RouterKind.NoisyTopK
            ? RouterSpec.NoisyTopK(_spec.Experts, _spec.TopK, _spec.NoiseSeed ^ (0x9E3779B97F4A7C15UL * (ulong)(pos0 + 1)))
            : _spec;
    }

    private void ReadRouting(int t)
    {
        int layers = _model.Config.Layers, stride = _e + 1;
        if (_lastIds.Length != _ids.Length)
            _lastIds = new int[_ids.Length];
        if (_lastLogits.Length != _routerLogits.Length)
            _lastLogits = new float[_routerLogits.Length];
        // Only the step's rows of each MoE layer: the buffers hold MaxBatch rows per layer (a decode step of a large model
        // would otherwise copy megabytes to read a few ids).
        for (int l = 0; l < layers; l++)
        {
            var lw = _model.Layers[l];
            if (lw.Dense)
                continue;
            int logits = Spec(lw, 0).LogitsPerToken;
            long ids = (long)l * _b * _slots, scores = (long)l * _b * stride;
            _ids.View.SubView(ids, (long)t * lw.Slots).CopyToCPU(_stream, _lastIds.AsSpan((int)ids, t * lw.Slots));
            _routerLogits.View.SubView(scores, (long)t * logits).CopyToCPU(_stream, _lastLogits.AsSpan((int)scores, t * logits));
        }

        _stream.Synchronize();
        _lastT = t;
        for (int l = 0; l < layers; l++)
        {
            var lw = _model.Layers[l];
            if (lw.Dense)
                continue;
            int logits = Spec(lw, 0).LogitsPerToken;
            _routing[l].Add(_lastIds.AsSpan(l * _b * _slots, t * lw.Slots), lw.Slots, _k,
                _lastLogits.AsSpan(l * _b * stride, t * logits), logits, t);
        }
    }

    /// <summary>
    /// Frees the session's buffers (idempotent; also after its model was disposed). After the accelerator or its context
    /// was disposed the session only marks itself disposed: ILGPU freed its buffers with the accelerator, and
    /// synchronising a disposed stream would reach ILGPU's runtime.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        if (_model.DeviceGone)
            return;
        _stream.Synchronize();
        _graph?.Dispose();
        if (_ownStream)
            _stream.Dispose();
        foreach (var b in new MemoryBuffer[] { _tokens, _positions, _ids, _x, _h, _q, _kk, _vv, _attn, _routerLogits, _weights, _logits })
            b.Dispose();
        foreach (var b in _kCache.Concat(_vCache).Concat(_latentCache))
            b.Dispose();
        _qa?.Dispose();
        _ckv?.Dispose();
        _qAbs?.Dispose();
        _oLat?.Dispose();
        foreach (var ws in _moe.Values)
            ws.Dispose();
        _denseIds?.Dispose();
        _denseWeights?.Dispose();
        _gather?.Dispose();
        _noise?.Dispose();
        _slotOf?.Dispose();
        _seqOf?.Dispose();
        _tables?.Dispose();
    }
}
