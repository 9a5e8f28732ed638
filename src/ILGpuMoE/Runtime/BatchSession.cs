// Many sequences, one forward step: the batch API a continuous-batching scheduler drives (src/ILGpuMoE/Serving/
// BatchEngine.cs is ours; an engine that links the library can drive its own).
//
// A step takes, per sequence, the tokens it appends this step (a decoding sequence's one sampled token, or a chunk of a
// prompt) and whether it wants the logits of the last of them. Their T tokens run as one step (glossary: T tokens,
// S sequences of the step, BS tokens per block): the router, the permutation and the grouped expert GEMMs see the tokens
// of every sequence together, which is where a MoE layer gets rows to work with.
//
// KV cache: a pool of NumBlocks blocks of BS positions per layer (InferenceSession's paged mode); a sequence owns a list
// of blocks, its block table, grown as it grows and returned to the pool when it is closed. Block b, offset o is slot
// b * BS + o. A sequence's positions are 0..Length-1 in its own table, so its logits do not depend on which blocks it got
// or which other sequences share the step (batch invariance up to the summation order of kernels picked by T).
//
// Host side only: the free list, the tables and the per-token metadata are built here each step and uploaded with the
// tokens (a few KB); the device never allocates.
namespace ILGpuMoE.Runtime;

/// <summary>The KV pool of a batch session: <paramref name="Blocks"/> blocks of <paramref name="BlockSize"/> positions; a
/// sequence holds at most <paramref name="MaxBlocks"/> (the model's MaxSeq).</summary>
internal sealed record PagedLayout(int Blocks, int BlockSize, int MaxBlocks)
{
    /// <summary>Floats of one layer's K (or V) pool: [Blocks, Hkv, BS, Dh].</summary>
    public long CacheElements(int kvHeads, int headDim) => (long)Blocks * kvHeads * BlockSize * headDim;
}

/// <summary>How a batch session's KV pool is cut.</summary>
public sealed record BatchOptions
{
    /// <summary>Positions per block (BS). 16 by default: small enough that a short sequence wastes little, large enough
    /// that a block of one kv head (16 x Dh floats) is a few whole cache lines.</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>Blocks in the pool; null: enough for 8 sequences of the model's MaxSeq.</summary>
    public int? Blocks { get; init; }
}

/// <summary>One sequence's part of a step: <paramref name="Tokens"/> appended at its next positions; <paramref name="Logits"/>:
/// return the logits of the last of them.</summary>
public readonly record struct BatchInput(int Sequence, ReadOnlyMemory<int> Tokens, bool Logits);

/// <summary>Sequences sharing one model and one paged KV pool, stepped together. Not thread-safe: one caller steps it.</summary>
public sealed class BatchSession : IDisposable
{
    private readonly InferenceSession _core;
    private readonly PagedLayout _layout;
    private readonly Stack<int> _free;
    private readonly Dictionary<int, List<int>> _blocks = [];
    private readonly Dictionary<int, int> _length = [];
    private readonly int _v;
    private int _nextId;

    internal BatchSession(MoeModel model, BatchOptions? options)
    {
        options ??= new();
        int bs = options.BlockSize;
        if (bs < 1 || bs > 1024)
            throw new RuntimeInputException($"block size must be in [1, 1024], got {bs}");
        int maxBlocks = (model.MaxSeq + bs - 1) / bs;
        long blocks = options.Blocks ?? 8L * maxBlocks;
        if (blocks < 1 || blocks * bs > int.MaxValue / 2)
            throw new RuntimeInputException($"KV blocks must be in [1, {int.MaxValue / 2 / bs}] for blocks of {bs}, got {blocks}");
        long bytes = MemoryPlan.PagedCacheBytes(model.Config, (int)blocks, bs);
        long room = model.Accelerator.MemorySize - model.DeviceWeightBytes;
        if (!model.IsCpuBackend && bytes > room)
            throw new InsufficientDeviceMemoryException($"{blocks} KV blocks of {bs} positions need {bytes / (1024.0 * 1024 * 1024):F2} GiB; the device has {room / (1024.0 * 1024 * 1024):F2} GiB beside the weights");
        _layout = new PagedLayout((int)blocks, bs, maxBlocks);
        _core = new InferenceSession(model, new SessionOptions { CudaGraph = false }, _layout);
        _free = new Stack<int>(Enumerable.Range(0, _layout.Blocks).Reverse());
        _v = model.Config.VocabSize;
    }

    public MoeModel Model => _core.Model;

    /// <summary>Positions per block.</summary>
    public int BlockSize => _layout.BlockSize;

    /// <summary>Blocks in the pool.</summary>
    public int Blocks => _layout.Blocks;

    /// <summary>Blocks no sequence holds.</summary>
    public int FreeBlocks => _free.Count;

    /// <summary>Most tokens of one step (the model's MaxBatch: its workspace).</summary>
    public int MaxTokensPerStep => _core.Model.MaxBatch;

    /// <summary>Most positions of one sequence (the model's MaxSeq).</summary>
    public int MaxSequenceLength => _core.Model.MaxSeq;

    /// <summary>Open sequences.</summary>
    public int Sequences => _length.Count;

    /// <summary>Device bytes of the KV pool.</summary>
    public long CacheBytes => _core.CacheBytes;

    /// <summary>Kernels launched by the last step.</summary>
    public long LastStepLaunches => _core.LastStepLaunches;

    /// <summary>Read the routing of every step (RoutingStats): see InferenceSession.CollectRoutingStats.</summary>
    public bool CollectRoutingStats
    {
        get => _core.CollectRoutingStats;
        set => _core.CollectRoutingStats = value;
    }

    /// <summary>[layer][expert]: tokens routed to each expert since the session began.</summary>
    public IReadOnlyList<IReadOnlyList<long>> ExpertCounts => _core.ExpertCounts;

    /// <summary>Blocks a sequence of <paramref name="tokens"/> positions holds.</summary>
    public int BlocksFor(int tokens) => (tokens + _layout.BlockSize - 1) / _layout.BlockSize;

    /// <summary>A new, empty sequence; its id.</summary>
    public int Open()
    {
        int id = _nextId++;
        _blocks[id] = [];
        _length[id] = 0;
        return id;
    }

    /// <summary>Ends <paramref name="sequence"/> and returns its blocks to the pool.</summary>
    public void Close(int sequence)
    {
        var blocks = Blocks_(sequence);
        foreach (int b in blocks)
            _free.Push(b);
        _blocks.Remove(sequence);
        _length.Remove(sequence);
    }

    /// <summary>Positions <paramref name="sequence"/> holds.</summary>
    public int Length(int sequence)
    {
        Blocks_(sequence);
        return _length[sequence];
    }

    /// <summary>Takes the blocks <paramref name="sequence"/> needs to hold <paramref name="tokens"/> positions in all, now; false
    /// (and nothing taken) when the pool has too few free or the length passes MaxSequenceLength. A scheduler reserves a
    /// request's whole length at admission so that no running sequence ever waits for a block.</summary>
    public bool Reserve(int sequence, int tokens)
    {
        var blocks = Blocks_(sequence);
        if (tokens > MaxSequenceLength)
            return false;
        int need = BlocksFor(tokens) - blocks.Count;
        if (need > _free.Count)
            return false;
        for (int i = 0; i < need; i++)
            blocks.Add(_free.Pop());
        return true;
    }

    /// <summary>
    /// One forward step over <paramref name="inputs"/> (each sequence at most once, T = all their tokens &lt;= MaxTokensPerStep).
    /// Returns, per input, the logits [V] of its last token when asked, else null. Blocks beyond a sequence's reservation
    /// are taken from the pool; RuntimeInputException when the pool runs dry (nothing is appended then).
    /// </summary>
    public float[]?[] Step(IReadOnlyList<BatchInput> inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        int t = 0, wanted = 0;
        var seen = new HashSet<int>();
        foreach (var input in inputs)
        {
            Blocks_(input.Sequence);
            if (!seen.Add(input.Sequence))
                throw new ArgumentException($"sequence {input.Sequence} appears twice in one step");
            if (input.Tokens.IsEmpty)
                throw new ArgumentException($"sequence {input.Sequence}: no tokens in its step input");
            foreach (int id in input.Tokens.Span)
            {
                if ((uint)id >= (uint)_v)
                    throw new RuntimeInputException($"sequence {input.Sequence}: token id {id} is outside the vocabulary [0, {_v})");
            }

            if ((long)_length[input.Sequence] + input.Tokens.Length > MaxSequenceLength)
                throw new RuntimeInputException($"sequence {input.Sequence}: {_length[input.Sequence] + (long)input.Tokens.Length} positions pass the model's {MaxSequenceLength} (--max-seq)");
            t += input.Tokens.Length;
            if (t > MaxTokensPerStep)
                throw new ArgumentException($"a step takes at most {MaxTokensPerStep} tokens (the model's MaxBatch), got more");
            wanted += input.Logits ? 1 : 0;
        }

        if (t == 0)
            return new float[inputs.Count][];
        int need = inputs.Sum(i => Math.Max(0, BlocksFor(_length[i.Sequence] + i.Tokens.Length) - _blocks[i.Sequence].Count));
        if (need > _free.Count)
            throw new RuntimeInputException($"the KV pool has {_free.Count} free blocks, the step needs {need} more: close or reserve sequences first");
        foreach (var input in inputs)
            Reserve(input.Sequence, _length[input.Sequence] + input.Tokens.Length);

        int maxBlocks = _layout.MaxBlocks, bs = _layout.BlockSize;
        var tokens = new int[t];
        var positions = new int[t];
        var slots = new int[t];
        var seqOf = new int[t];
        var tables = new int[inputs.Count * maxBlocks];
        var rows = new int[wanted];
        int at = 0, w = 0;
        for (int r = 0; r < inputs.Count; r++)
        {
            var input = inputs[r];
            var blocks = _blocks[input.Sequence];
            for (int j = 0; j < blocks.Count; j++)
                tables[r * maxBlocks + j] = blocks[j];
            int start = _length[input.Sequence];
            var span = input.Tokens.Span;
            for (int i = 0; i < span.Length; i++, at++)
            {
                int p = start + i;
                tokens[at] = span[i];
                positions[at] = p;
                slots[at] = blocks[p / bs] * bs + p % bs;
                seqOf[at] = r;
            }

            if (input.Logits)
                rows[w++] = at - 1;
        }

        var logits = new float[(long)wanted * _v];
        _core.StepPaged(tokens, positions, slots, seqOf, tables, rows, logits);
        foreach (var input in inputs)
            _length[input.Sequence] += input.Tokens.Length;

        var result = new float[]?[inputs.Count];
        w = 0;
        for (int r = 0; r < inputs.Count; r++)
        {
            if (inputs[r].Logits)
                result[r] = logits.AsSpan(w++ * _v, _v).ToArray();
        }

        return result;
    }

    private List<int> Blocks_(int sequence) =>
        _blocks.TryGetValue(sequence, out var b) ? b : throw new ArgumentException($"sequence {sequence} is not open in this batch session");

    public void Dispose() => _core.Dispose();
}
