// The CPU backend behind the runtime's seam (Runtime/IForwardOps.cs): the session's forward pass, written once, calls
// these ops; each takes the buffers' host addresses (the session and model allocate on ILGPU's CPU accelerator, whose
// memory is host memory, so nothing is copied) and runs a CPU kernel (CpuKernels.cs, CpuExperts.cs, CpuMla.cs). No
// ILGPU kernel is launched or compiled: the tests hold a whole forward pass to zero launches.
//
// Per weight, the reader is made once and cached: a dense tensor's rows in its dtype (CpuMatrix.cs), a packed matrix's
// codes (CpuQuantRows.cs); norm and bias vectors are widened to F32 once (they are small and read every step).
// Steps are synchronous: when an op returns, its outputs are written (the session's stream copies run on the same
// thread afterwards).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Model;
using ILGpuMoE.Runtime;

namespace ILGpuMoE.Cpu;

internal sealed unsafe class CpuOps(CpuThreads threads) : IForwardOps
{
    private readonly ConditionalWeakTable<object, CpuMatrix> _matrices = [];
    private readonly ConditionalWeakTable<DeviceTensor, float[]> _vectors = [];
    private readonly Dictionary<(int, double, YarnScaling?, int), double[]> _invFreq = [];
    private readonly CpuExpertScratch _experts = new();
    private readonly Dictionary<(nint, nint, nint), CpuGlu> _glu = [];

    public CpuThreads Threads { get; } = threads;

    public bool FusedDecode => false;

    public bool TensorCores => false;

    private static float* P(ArrayView<float> v) => v.Length == 0 ? null : (float*)v.LoadEffectiveAddressAsPtr();

    private static int* P(ArrayView<int> v) => v.Length == 0 ? null : (int*)v.LoadEffectiveAddressAsPtr();

    private DenseRows Rows(DeviceTensor w)
    {
        if (w.Shape.Length < 1)
            throw new ArgumentException("CpuOps: a scalar weight");
        return (DenseRows)_matrices.GetValue(w, key =>
        {
            var t = (DeviceTensor)key;
            long cols = t.Shape[^1], rows = t.Length / Math.Max(1, cols);
            if (t.MappedParts is { Count: > 1 } parts)
            {
                // Experts stored as separate tensors, read where the checkpoint's map has them.
                int each = checked((int)(rows / parts.Count));
                return new StackedRows(parts.Select(p => DenseRows.Of(t.Type, p, each, checked((int)cols))).ToArray());
            }

            return DenseRows.Of(t.Type, t.HostAddress, checked((int)rows), checked((int)cols));
        });
    }

    private CpuMatrix Matrix(LinearWeight w) => w.Dense is { } d
        ? Rows(d)
        : _matrices.GetValue(w, key => Packed(((LinearWeight)key).Quant!.Host));

    // Packed weights: read in place by the quantized readers (CpuQuantRows.cs).
    private static CpuMatrix Packed(ILGpuMoE.Quant.QuantizedMatrix m) => CpuQuantRows.Of(m);

    // Norm weights, biases, sinks: F32 copies, pinned (their addresses are handed to the kernels).
    private float* Vector(DeviceTensor w)
    {
        var v = _vectors.GetValue(w, t =>
        {
            var a = GC.AllocateUninitializedArray<float>(checked((int)t.Length), pinned: true);
            Rows(t).ReadRowsInto(a);
            return a;
        });
        return (float*)Unsafe.AsPointer(ref v[0]);
    }

    public void Embedding(AcceleratorStream s, ArrayView<int> tokens, DeviceTensor table, ArrayView<float> x, int t, int v, int d) =>
        CpuKernels.Embedding(Rows(table), P(tokens), t, P(x));

    public void RmsNorm(AcceleratorStream s, ArrayView<float> x, DeviceTensor w, ArrayView<float> y, int t, int d, float eps) =>
        RmsNorm(s, x, d, w, y, d, t, d, eps);

    public void RmsNorm(AcceleratorStream s, ArrayView<float> x, int xStride, DeviceTensor w, ArrayView<float> y, int yStride, int t, int d, float eps)
    {
        if (w.Length != d)
            throw new ArgumentException($"cpu/rmsnorm: {w.Length} weights for rows of {d}");
        CpuKernels.RmsNorm(Threads, P(x), xStride, Vector(w), P(y), yStride, t, d, eps);
    }

    public void MatMul(AcceleratorStream s, ArrayView<float> x, LinearWeight w, ArrayView<float> y, int t, int outDim, int inDim, bool accumulate = false,
        ArrayView<float> gather = default, bool inputGathered = false, bool tensorCore = true)
    {
        var m = Matrix(w);
        Check(m, outDim, inDim);
        if (m.InputPermutation is not null && !inputGathered)
            x = GatherInput(s, x, w, gather, t, inDim);
        CpuKernels.MatMul(Threads, m, P(x), P(y), t, outDim, accumulate);
    }

    public void MatMul(AcceleratorStream s, ArrayView<float> x, DeviceTensor w, ArrayView<float> y, int t, int outDim, int inDim, bool accumulate = false,
        bool tensorCore = true)
    {
        var m = Rows(w);
        Check(m, outDim, inDim);
        CpuKernels.MatMul(Threads, m, P(x), P(y), t, outDim, accumulate);
    }

    private static void Check(CpuMatrix m, int outDim, int inDim)
    {
        if (m.Rows != outDim || m.Cols != inDim)
            throw new ArgumentException($"cpu/matmul: the weight is [{m.Rows}, {m.Cols}], the step needs [{outDim}, {inDim}]");
    }

    public ArrayView<float> GatherInput(AcceleratorStream s, ArrayView<float> x, LinearWeight w, ArrayView<float> gather, int t, int inDim)
    {
        var perm = Matrix(w).InputPermutation ?? throw new ArgumentException("GatherInput: the weight has no input permutation (not act-order)");
        if (gather.Length < (long)t * inDim)
            throw new ArgumentException($"an act-order weight needs a gather scratch of T*In = {(long)t * inDim} floats, got {gather.Length}");
        var xp = gather.SubView(0, (long)t * inDim);
        fixed (int* p = perm)
            CpuKernels.Gather(P(x), p, P(xp), t, inDim);
        return xp;
    }

    public void BiasClip(AcceleratorStream s, ArrayView<float> y, DeviceTensor? bias, int t, int n, float clip) =>
        CpuKernels.BiasClip(P(y), t, n, bias is null ? null : Vector(bias), clip);

    public void Rope(AcceleratorStream s, ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, int t, int heads, int kvHeads,
        RopeSpec spec, int qStride, int kStride, DeviceTensor? qNorm, DeviceTensor? kNorm, float eps)
    {
        var key = (spec.RotaryDim, spec.Theta, spec.Yarn, 0);
        if (!_invFreq.TryGetValue(key, out var inv))
            _invFreq[key] = inv = spec.InverseFrequencies();
        CpuKernels.Rope(P(q), P(k), P(positions), t, heads, kvHeads, spec, inv, qStride, kStride,
            qNorm is null ? null : Vector(qNorm), kNorm is null ? null : Vector(kNorm), eps);
    }

    public void AppendKv(AcceleratorStream s, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache, int t, int kvHeads,
        int headDim, int maxSeq, int pos0) =>
        CpuKernels.AppendKv(P(k), P(v), P(kCache), P(vCache), t, kvHeads, headDim, maxSeq, pos0);

    public void Attention(AcceleratorStream s, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> o, int t, int heads,
        int kvHeads, int headDim, int maxSeq, int pos0, int window, ArrayView<float> sinks, float scale) =>
        CpuKernels.Attention(Threads, P(q), P(kCache), P(vCache), P(o), t, heads, kvHeads, headDim, maxSeq, pos0, window, P(sinks), scale);

    public void Gating(AcceleratorStream s, RouterSpec spec, ArrayView<float> logits, ArrayView<int> ids, ArrayView<float> weights, int t,
        ArrayView<float> noiseLogits, ArrayView<float> bias) =>
        CpuKernels.Gating(spec, P(logits), P(noiseLogits), P(bias), P(ids), P(weights), t);

    public void Moe(AcceleratorStream s, MoeWorkspace ws, ArrayView<float> x, ArrayView<int> ids, ArrayView<float> weights, int t,
        LinearWeight w1, LinearWeight w3, LinearWeight w2, ArrayView<float> output, ArrayView<float> residual, ExpertGlu glu = default)
    {
        if ((w1.Dense is null) != (w2.Dense is null) || (w1.Dense is null) != (w3.Dense is null))
            throw new ArgumentException("cpu/experts: gate, up and down mix dense and packed weights");
        int experts = ws.Experts, slots = ws.TopK;
        CpuExperts.Run(Threads, _experts, P(x), P(ids), P(weights), t, slots, experts, Matrix(w1), Matrix(w3), Matrix(w2), Glu(glu), P(output), P(residual));
    }

    private CpuGlu Glu(ExpertGlu g)
    {
        if (g.Activation == ExpertActivation.SiLU && g.HasUpGateBias == 0 && g.HasDownBias == 0)
            return CpuGlu.SiLU;
        var key = ((nint)P(g.GateBias), (nint)P(g.UpBias), (nint)P(g.DownBias));
        if (!_glu.TryGetValue(key, out var c))
        {
            bool gptOss = g.Activation switch
            {
                ExpertActivation.SiLU => false,
                ExpertActivation.GptOssClamped => true,
                _ => throw new ArgumentException($"cpu/experts: activation {g.Activation} is not known"),
            };
            _glu[key] = c = new CpuGlu(gptOss, g.Alpha, g.Limit, P(g.GateBias), P(g.UpBias), P(g.DownBias));
        }

        return c;
    }

    public void PagedAppendKv(AcceleratorStream s, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache,
        ArrayView<int> slots, int t, int kvHeads, int headDim, int blockSize)
    {
        const string who = "CpuOps.PagedAppendKv";
        int blocks = PoolBlocks(who, kCache, vCache, kvHeads, headDim, blockSize);
        Need(who, "k [T, Hkv, Dh]", k.Length, (long)t * kvHeads * headDim);
        Need(who, "v [T, Hkv, Dh]", v.Length, (long)t * kvHeads * headDim);
        Need(who, "slots [T]", slots.Length, t);
        CpuPaged.AppendKv(P(k), P(v), P(kCache), P(vCache), P(slots), t, kvHeads, headDim, blockSize, blocks);
    }

    public void PagedAttention(AcceleratorStream s, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> o,
        ArrayView<int> positions, ArrayView<int> seqOfToken, ArrayView<int> blockTables, int t, int heads, int kvHeads, int headDim, int blockSize,
        int maxBlocks, int window, ArrayView<float> sinks, float scale)
    {
        const string who = "CpuOps.PagedAttention";
        int blocks = PoolBlocks(who, kCache, vCache, kvHeads, headDim, blockSize);
        Need(who, "q [T, H, Dh]", q.Length, (long)t * heads * headDim);
        Need(who, "o [T, H, Dh]", o.Length, (long)t * heads * headDim);
        int sequences = TableRows(who, positions, seqOfToken, blockTables, t, maxBlocks);
        if (sinks.Length != 0 && sinks.Length != heads)
            throw new ArgumentException($"{who}: sinks [H] has {sinks.Length} floats, needs {heads}", nameof(sinks));
        CpuPaged.Attention(Threads, P(q), P(kCache), P(vCache), P(o), P(positions), P(seqOfToken), P(blockTables), t, heads, kvHeads, headDim, blockSize,
            maxBlocks, sequences, blocks, window, P(sinks), scale);
    }

    public void PagedMlaAppend(AcceleratorStream s, ArrayView<float> latent, int latentStride, ArrayView<float> kRope, int ropeStride, ArrayView<int> slots,
        ArrayView<float> cache, int t, int rank, int ropeDim)
    {
        const string who = "CpuOps.PagedMlaAppend";
        if (rank < 1 || ropeDim < 0 || latentStride < rank || ropeStride < ropeDim)
            throw new ArgumentException($"{who}: R ({rank}) must be positive, Dr ({ropeDim}) non-negative, the strides ({latentStride}, {ropeStride}) at least R and Dr");
        if (t > 0)
        {
            Need(who, "latent [T, stride]", latent.Length, (long)(t - 1) * latentStride + rank);
            Need(who, "kRope [T, stride]", kRope.Length, ropeDim > 0 ? (long)(t - 1) * ropeStride + ropeDim : 0);
        }

        Need(who, "slots [T]", slots.Length, t);
        long rows = cache.Length / (rank + ropeDim);
        if (rows < 1 || rows > int.MaxValue)
            throw new ArgumentException($"{who}: cache [rows, R + Dr] of {cache.Length} floats holds {rows} rows");
        CpuPaged.MlaAppend(P(latent), latentStride, P(kRope), ropeStride, P(slots), P(cache), t, new CpuMlaShape(rank, ropeDim, 0, 0), (int)rows);
    }

    public void PagedMlaAttention(AcceleratorStream s, ArrayView<float> qAbs, ArrayView<float> cache, ArrayView<int> positions, ArrayView<int> seqOfToken,
        ArrayView<int> blockTables, ArrayView<float> oLat, int t, int heads, MlaOptions o, int blockSize, int maxBlocks, float scale)
    {
        const string who = "CpuOps.PagedMlaAttention";
        var m = Shape(o);
        if (blockSize < 1)
            throw new ArgumentException($"{who}: blockSize must be >= 1 (got {blockSize})");
        long blocks = cache.Length / ((long)blockSize * m.Row);
        if (blocks < 1 || blocks * blockSize > int.MaxValue)
            throw new ArgumentException($"{who}: cache [NumBlocks * BS, R + Dr] of {cache.Length} floats holds {blocks} blocks of {blockSize}");
        Need(who, "qAbs [T, H, R + Dr]", qAbs.Length, (long)t * heads * m.Row);
        Need(who, "oLat [T, H, R]", oLat.Length, (long)t * heads * m.Rank);
        int sequences = TableRows(who, positions, seqOfToken, blockTables, t, maxBlocks);
        CpuPaged.MlaAttention(Threads, P(qAbs), P(cache), P(positions), P(seqOfToken), P(blockTables), P(oLat), t, heads, m, blockSize, maxBlocks,
            sequences, (int)blocks, scale);
    }

    private static void Need(string who, string what, long length, long needed)
    {
        if (length < needed)
            throw new ArgumentException($"{who}: {what} has {length} elements, needs {needed}");
    }

    /// <summary>Blocks of the pool kCache, vCache [NumBlocks, Hkv, BS, Dh] (vCache at least as many as kCache).</summary>
    private static int PoolBlocks(string who, ArrayView<float> kCache, ArrayView<float> vCache, int kvHeads, int headDim, int blockSize)
    {
        if (kvHeads < 1 || headDim < 1 || blockSize < 1)
            throw new ArgumentException($"{who}: Hkv ({kvHeads}), Dh ({headDim}) and blockSize ({blockSize}) must be positive");
        long perBlock = (long)kvHeads * blockSize * headDim;
        long blocks = kCache.Length / perBlock;
        if (blocks < 1 || blocks * blockSize > int.MaxValue)
            throw new ArgumentException($"{who}: kCache [NumBlocks, Hkv, BS, Dh] of {kCache.Length} floats holds {blocks} blocks of {perBlock}");
        Need(who, "vCache [NumBlocks, Hkv, BS, Dh]", vCache.Length, blocks * perBlock);
        return (int)blocks;
    }

    /// <summary>Checks positions, seqOfToken [T] and blockTables [S, maxBlocks]; returns S.</summary>
    private static int TableRows(string who, ArrayView<int> positions, ArrayView<int> seqOfToken, ArrayView<int> blockTables, int t, int maxBlocks)
    {
        if (maxBlocks < 1)
            throw new ArgumentException($"{who}: maxBlocks must be >= 1 (got {maxBlocks})");
        Need(who, "positions [T]", positions.Length, t);
        Need(who, "seqOfToken [T]", seqOfToken.Length, t);
        long rows = blockTables.Length / maxBlocks;
        if (rows < 1)
            throw new ArgumentException($"{who}: blockTables [S, maxBlocks] has {blockTables.Length} ints, less than one row of {maxBlocks}");
        return (int)Math.Min(rows, int.MaxValue);
    }

    public void MlaAppend(AcceleratorStream s, ArrayView<float> latent, int latentStride, ArrayView<float> kRope, int ropeStride, ArrayView<int> positions,
        ArrayView<float> cache, int t, int rank, int ropeDim, int maxSeq) =>
        CpuMla.Append(P(latent), latentStride, P(kRope), ropeStride, P(positions), P(cache), t, new CpuMlaShape(rank, ropeDim, 0, 0), maxSeq);

    private static CpuMlaShape Shape(MlaOptions o) => new(o.KvLoraRank, o.QkRopeHeadDim, o.QkNopeHeadDim, o.VHeadDim);

    public void MlaAbsorbQ(AcceleratorStream s, ArrayView<float> q, DeviceTensor kvB, ArrayView<float> qAbs, int t, int heads, MlaOptions o) =>
        CpuMla.AbsorbQ(Threads, P(q), Rows(kvB), P(qAbs), t, heads, Shape(o));

    public void MlaAttention(AcceleratorStream s, ArrayView<float> qAbs, ArrayView<float> cache, ArrayView<int> positions, ArrayView<float> oLat,
        int t, int heads, MlaOptions o, int maxSeq, float scale) =>
        CpuMla.Attention(Threads, P(qAbs), P(cache), P(positions), P(oLat), t, heads, Shape(o), maxSeq, scale);

    public void MlaAbsorbV(AcceleratorStream s, ArrayView<float> oLat, DeviceTensor kvB, ArrayView<float> output, int t, int heads, MlaOptions o) =>
        CpuMla.AbsorbV(Threads, P(oLat), Rows(kvB), P(output), t, heads, Shape(o));

    public void Dispose()
    {
    }
}
