// Launchers of the attention/mla-* kernels (MlaKernels.cs): load once, validate, launch. One decode step of an MLA
// layer is four launches in this order (five with V2Split's combine):
//   MlaAttentionKernel.Append     c, k_rope -> cache rows positions[t]
//   MlaAbsorbKernel<TW>.AbsorbQ   q [T, H, Dn + Dr] -> q_abs [T, H, R + Dr]
//   MlaAttentionKernel.Attention  q_abs, cache rows 0..pos -> o_lat [T, H, R]
//   MlaAbsorbKernel<TW>.AbsorbV   o_lat -> out [T, H, Dv] (o_proj's input, [T, H * Dv])
// Every argument is fixed per model and cache (positions are a device view), so a captured graph can replay the step.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Attention.Mla;

/// <summary>MLA's cache append and latent attention; owns V2Split's partial scratch (one instance per stream; dispose it).</summary>
public sealed class MlaAttentionKernel : IDisposable
{
    /// <summary>
    /// V2Split's default keys per split at T = 1 (the grid is ceil(H/4) * ceil(maxSeq / kps) groups: V3's H 128 at
    /// maxSeq 32K gives 32 * 128 = 4,096 groups, of which pos / 256 + 1 splits work; partials 4 * H * splits * (R + 2)
    /// bytes = 34 MB there). Chosen from the arithmetic (perf/notes/attention.md, MLA), not measured on a GPU.
    /// </summary>
    public const int DefaultKeysPerSplit = 256;

    private const string Name = "MlaAttentionKernel";

    private readonly Accelerator accelerator;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, MlaParams> append;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, MlaParams> v1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<MlaQuad>, ArrayView<MlaQuad>, ArrayView<int>, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, MlaParams> v2;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MlaParams> combine;
    private MemoryBuffer1D<float, Stride1D.Dense>? partO, partML;

    private MlaAttentionKernel(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        append = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, MlaParams>(MlaKernels.MlaAppendV1);
        v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, MlaParams>(MlaKernels.MlaAttentionV1);
        v2 = accelerator.LoadCounted<ArrayView<MlaQuad>, ArrayView<MlaQuad>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MlaParams>(
            MlaKernels.MlaAttentionV2Split);
        combine = accelerator.LoadCounted<ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, MlaParams>(MlaKernels.MlaAttentionV2Combine);
    }

    public static MlaAttentionKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>Tests/benchmarks: V2Split's keys per split (also splits T &gt; 1 launches); null = the default rule.</summary>
    public int? KeysPerSplitOverride { get; set; }

    /// <summary>Floats of one layer's cache [maxSeq, R + Dr].</summary>
    public static long CacheElements(int maxSeq, int rank, int ropeDim) => (long)maxSeq * (rank + ropeDim);

    /// <summary>
    /// cache[positions[t], :] = [latent[t * latentStride .. + R] | kRope[t * ropeStride .. + Dr]] for t &lt; T: c is the
    /// kv_a_layernorm'd latent, k_rope already roped (both may be slices of one [T, R + Dr] buffer: pass it twice, the
    /// second from offset R, both with stride R + Dr). The caller checks 0 &lt;= positions[t] &lt; maxSeq on the host (the
    /// kernel skips a token outside). cache [maxSeq, R + Dr].
    /// </summary>
    public void Append(AcceleratorStream stream, ArrayView<float> latent, int latentStride, ArrayView<float> kRope, int ropeStride,
        ArrayView<int> positions, ArrayView<float> cache, int tokens, int rank, int ropeDim, int maxSeq)
    {
        const string who = Name + ".Append";
        DenseShapes.Stream(who, stream);
        MlaChecks.Dims(who, tokens, 1, rank, ropeDim, maxSeq);
        if (latentStride < rank || ropeStride < ropeDim)
            throw new ArgumentException($"{who}: row strides ({latentStride}, {ropeStride}) must be at least R ({rank}) and Dr ({ropeDim})");
        MlaChecks.AtLeast(who, "latent [T, stride]", latent.Length, (long)(tokens - 1) * latentStride + rank);
        if (ropeDim > 0)
            MlaChecks.AtLeast(who, "kRope [T, stride]", kRope.Length, (long)(tokens - 1) * ropeStride + ropeDim);
        MlaChecks.AtLeast(who, "positions [T]", positions.Length, tokens);
        MlaChecks.AtLeast(who, "cache [maxSeq, R + Dr]", cache.Length, CacheElements(maxSeq, rank, ropeDim));
        var p = new MlaParams
        {
            Tokens = tokens, Rank = rank, RopeDim = ropeDim, MaxSeq = maxSeq, LatentStride = latentStride, RopeStride = ropeStride, Heads = 1,
        };
        // An empty kRope (Dr = 0) still needs a valid view argument: the kernel never reads it then.
        append(stream, DenseShapes.Elementwise((long)tokens * (rank + ropeDim)), latent, ropeDim > 0 ? kRope : latent, positions, cache, p);
    }

    /// <summary>
    /// o_lat [T, H, R] for q_abs [T, H, R + Dr] (MlaAbsorbKernel.AbsorbQ's output): query t at positions[t] (device data,
    /// checked by the caller: 0 &lt;= pos &lt; maxSeq) attends to cache rows 0..pos of cache [maxSeq, R + Dr] with
    /// softmax(q_abs . row * scale); scale = qk_head_dim^-0.5 times YaRN's mscale^2 where rope_scaling sets it.
    /// version: null picks V2Split when R and Dr are multiples of 4, R + Dr &lt;= 640 and qAbs, cache start on 16
    /// bytes, else V1. V2Split splits the keys at T = 1 (ceil(maxSeq / 256) splits plus the combine launch; the grid
    /// depends only on maxSeq) and runs one split per (token, head tile) at T &gt; 1. Its scratch is allocated at the
    /// first launch or by <see cref="Reserve"/> and only grows: reserve before capturing a graph.
    /// </summary>
    public void Attention(AcceleratorStream stream, ArrayView<float> qAbs, ArrayView<float> cache, ArrayView<int> positions, ArrayView<float> oLat,
        int tokens, int heads, int rank, int ropeDim, int maxSeq, float scale, MlaAttentionVersion? version = null)
    {
        const string who = Name + ".Attention";
        DenseShapes.Stream(who, stream);
        MlaChecks.Dims(who, tokens, heads, rank, ropeDim, maxSeq);
        if (!float.IsFinite(scale) || scale <= 0f)
            throw new ArgumentException($"{who}: scale must be a positive finite number, got {scale}", nameof(scale));
        int row = rank + ropeDim;
        MlaChecks.AtLeast(who, "qAbs [T, H, R + Dr]", qAbs.Length, (long)tokens * heads * row);
        MlaChecks.AtLeast(who, "oLat [T, H, R]", oLat.Length, (long)tokens * heads * rank);
        MlaChecks.AtLeast(who, "positions [T]", positions.Length, tokens);
        long cacheElements = CacheElements(maxSeq, rank, ropeDim);
        MlaChecks.AtLeast(who, "cache [maxSeq, R + Dr]", cache.Length, cacheElements);
        var p = new MlaParams { Tokens = tokens, Heads = heads, Rank = rank, RopeDim = ropeDim, MaxSeq = maxSeq, Scale = scale };
        var chosen = version ?? (SplitEligible(rank, ropeDim) && WideAccess.IsAligned(qAbs, 16) && WideAccess.IsAligned(cache, 16)
            ? MlaAttentionVersion.V2Split : MlaAttentionVersion.V1);
        switch (chosen)
        {
            case MlaAttentionVersion.V1:
                v1(stream, DenseShapes.Elementwise((long)tokens * heads * rank), qAbs, cache, positions, oLat, p);
                break;
            case MlaAttentionVersion.V2Split:
            {
                if (!SplitEligible(rank, ropeDim))
                    throw new ArgumentException($"{who}: V2Split needs R ({rank}) and Dr ({ropeDim}) multiples of 4 and R + Dr <= {MlaKernels.MaxRow}; use V1", nameof(version));
                WideAccess.RequireAligned(who, "qAbs", qAbs, 16);
                WideAccess.RequireAligned(who, "cache", cache, 16);
                (p.Splits, p.KeysPerSplit) = Splits(tokens, maxSeq);
                long parts = (long)tokens * heads * p.Splits;
                EnsureScratch(stream, p.Splits > 1 ? parts * rank : 1, p.Splits > 1 ? parts * 2 : 2);
                long groups = (long)tokens * ((heads + MlaKernels.HeadsPerGroup - 1) / MlaKernels.HeadsPerGroup) * p.Splits;
                Index64.CheckInt(who, "groups T * ceil(H/4) * splits", groups);
                v2(stream, new KernelConfig((int)groups, MlaKernels.Threads), qAbs.SubView(0, (long)tokens * heads * row).Cast<MlaQuad>(),
                    cache.SubView(0, cacheElements).Cast<MlaQuad>(), positions, oLat, partO!.View, partML!.View, p);
                if (p.Splits > 1)
                    combine(stream, new KernelConfig(tokens * heads, MlaKernels.Threads), positions, partO.View, partML.View, oLat, p);
                break;
            }

            default:
                throw new ArgumentException($"{who}: unknown version {chosen}", nameof(version));
        }
    }

    /// <summary>Allocates V2Split's scratch for a decode step of this shape now (before a graph capture).</summary>
    public void Reserve(AcceleratorStream stream, int heads, int rank, int maxSeq)
    {
        var (splits, _) = Splits(1, maxSeq);
        EnsureScratch(stream, (long)heads * splits * rank, (long)heads * splits * 2);
    }

    /// <summary>V2Split's decode scratch: 4 * H * splits * (R + 2) bytes, splits = ceil(maxSeq / keysPerSplit).</summary>
    public static long DecodeScratchBytes(int heads, int rank, int maxSeq, int keysPerSplit = DefaultKeysPerSplit) =>
        4L * heads * (((long)maxSeq + keysPerSplit - 1) / keysPerSplit) * (rank + 2);

    public void Dispose()
    {
        partO?.Dispose();
        partML?.Dispose();
        partO = partML = null;
    }

    private static bool SplitEligible(int rank, int ropeDim) => rank % 4 == 0 && ropeDim % 4 == 0 && rank + ropeDim <= MlaKernels.MaxRow;

    private (int Splits, int KeysPerSplit) Splits(int tokens, int maxSeq)
    {
        if (tokens > 1 && KeysPerSplitOverride is null)
            return (1, maxSeq);
        int kps = KeysPerSplitOverride ?? DefaultKeysPerSplit;
        if (kps < 1)
            throw new ArgumentException($"{Name}: keys per split must be positive, got {kps}");
        return ((maxSeq + kps - 1) / kps, kps);
    }

    private void EnsureScratch(AcceleratorStream stream, long oFloats, long mlFloats)
    {
        if (partO != null && partO.Length >= oFloats && partML!.Length >= mlFloats)
            return;
        stream.Synchronize(); // earlier launches on this stream may still use the old buffers
        long o = Math.Max(oFloats, partO?.Length ?? 1);
        long ml = Math.Max(mlFloats, partML?.Length ?? 2);
        partO?.Dispose();
        partML?.Dispose();
        partO = accelerator.Allocate1D<float>(o);
        partML = accelerator.Allocate1D<float>(ml);
    }
}

/// <summary>
/// MLA's weight absorption around the latent attention, reading kv_b_proj [H * (Dn + Dv), R] in place (TW). version:
/// null picks V2Wide (16-byte weight words, the decode choice) when <see cref="CanReadWide"/>, else V1.
/// </summary>
public sealed class MlaAbsorbKernel<TW>
    where TW : struct, IWeights
{
    private const string Name = "MlaAbsorbKernel";
    private const int RowsPerGroup = Devices.MaxGroupSize / 32;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, TW, ArrayView<float>, MlaParams> absorbQ;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, TW, ArrayView<float>, MlaParams> absorbV;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<Wide16>, ArrayView<float>, MlaParams>? wideQ;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<MlaQuad>, ArrayView<Wide16>, ArrayView<float>, MlaParams>? wideV;
    private readonly int unitValues;

    internal MlaAbsorbKernel(Accelerator accelerator)
    {
        absorbQ = accelerator.LoadCounted<ArrayView<float>, TW, ArrayView<float>, MlaParams>(MlaKernels.MlaAbsorbQV1);
        absorbV = accelerator.LoadCounted<ArrayView<float>, TW, ArrayView<float>, MlaParams>(MlaKernels.MlaAbsorbVV1);
        (Action<ArrayView<float>, ArrayView<Wide16>, ArrayView<float>, MlaParams>? q, Action<ArrayView<MlaQuad>, ArrayView<Wide16>, ArrayView<float>, MlaParams>? v, unitValues) =
            typeof(TW) == typeof(F32Weights) ? (MlaAbsorbWide.AbsorbQF32, MlaAbsorbWide.AbsorbVF32, 4)
            : typeof(TW) == typeof(F16Weights) ? (MlaAbsorbWide.AbsorbQF16, MlaAbsorbWide.AbsorbVF16, 8)
            : typeof(TW) == typeof(BF16Weights) ? (MlaAbsorbWide.AbsorbQBF16, MlaAbsorbWide.AbsorbVBF16, 8)
            : ((Action<ArrayView<float>, ArrayView<Wide16>, ArrayView<float>, MlaParams>?)null, (Action<ArrayView<MlaQuad>, ArrayView<Wide16>, ArrayView<float>, MlaParams>?)null, 0);
        if (q is not null && v is not null)
        {
            wideQ = accelerator.LoadCounted(q);
            wideV = accelerator.LoadCounted(v);
        }
    }

    /// <summary>V2Wide when kv_b_proj can be read as 16-byte words (R * sizeof(weight) a multiple of 16, the view 16-byte aligned), else V1.</summary>
    public bool CanReadWide(TW kvB, int rank) => wideQ is not null && MatMulKernel<TW>.TryGetWide(kvB, rank, out _);

    /// <summary>
    /// q_abs [T, H, R + Dr] = per head [W_UK[h]^T q_nope[t, h] | q_rope[t, h]] from q [T, H, Dn + Dr] (nope part then
    /// the roped rope part, q_b_proj's layout) and kvB = kv_b_proj.weight [H * (Dn + Dv), R].
    /// </summary>
    public void AbsorbQ(AcceleratorStream stream, ArrayView<float> q, TW kvB, ArrayView<float> qAbs, int tokens, int heads, int rank, int ropeDim,
        int nopeDim, int vDim, MlaAbsorbQVersion? version = null)
    {
        const string who = Name + ".AbsorbQ";
        var p = Params(who, stream, kvB, tokens, heads, rank, ropeDim, nopeDim, vDim);
        MlaChecks.AtLeast(who, "q [T, H, Dn + Dr]", q.Length, (long)tokens * heads * (nopeDim + ropeDim));
        MlaChecks.AtLeast(who, "qAbs [T, H, R + Dr]", qAbs.Length, (long)tokens * heads * (rank + ropeDim));
        var chosen = version ?? (CanReadWide(kvB, rank) ? MlaAbsorbQVersion.V2Wide : MlaAbsorbQVersion.V1);
        switch (chosen)
        {
            case MlaAbsorbQVersion.V1:
                absorbQ(stream, DenseShapes.Elementwise((long)tokens * heads * (rank + ropeDim)), q, kvB, qAbs, p);
                break;
            case MlaAbsorbQVersion.V2Wide:
                var words = Words(who, kvB, rank);
                wideQ!(stream, DenseShapes.Elementwise((long)tokens * heads * (rank / unitValues + ropeDim)), q, words, qAbs, p);
                break;
            default:
                throw new ArgumentException($"{who}: unknown version {chosen}", nameof(version));
        }
    }

    /// <summary>output [T, H, Dv] = per head W_UV[h] o_lat[t, h] from o_lat [T, H, R] and kvB = kv_b_proj.weight [H * (Dn + Dv), R].</summary>
    public void AbsorbV(AcceleratorStream stream, ArrayView<float> oLat, TW kvB, ArrayView<float> output, int tokens, int heads, int rank, int ropeDim,
        int nopeDim, int vDim, MlaAbsorbVVersion? version = null)
    {
        const string who = Name + ".AbsorbV";
        var p = Params(who, stream, kvB, tokens, heads, rank, ropeDim, nopeDim, vDim);
        MlaChecks.AtLeast(who, "oLat [T, H, R]", oLat.Length, (long)tokens * heads * rank);
        long rows = (long)tokens * heads * vDim;
        MlaChecks.AtLeast(who, "output [T, H, Dv]", output.Length, rows);
        long groups = (rows + RowsPerGroup - 1) / RowsPerGroup;
        Index64.CheckInt(who, "output rows T * H * Dv / 8", groups);
        var config = new KernelConfig((int)groups, Devices.MaxGroupSize);
        long lat = (long)tokens * heads * rank;
        var chosen = version ?? (CanReadWide(kvB, rank) && WideAccess.IsAligned(oLat, 16) ? MlaAbsorbVVersion.V2Wide : MlaAbsorbVVersion.V1);
        switch (chosen)
        {
            case MlaAbsorbVVersion.V1:
                absorbV(stream, config, oLat, kvB, output, p);
                break;
            case MlaAbsorbVVersion.V2Wide:
                var words = Words(who, kvB, rank);
                WideAccess.RequireAligned(who, "oLat", oLat, 16);
                wideV!(stream, config, oLat.SubView(0, lat).Cast<MlaQuad>(), words, output, p);
                break;
            default:
                throw new ArgumentException($"{who}: unknown version {chosen}", nameof(version));
        }
    }

    private ArrayView<Wide16> Words(string who, TW kvB, int rank)
    {
        if (wideQ is null || !MatMulKernel<TW>.TryGetWide(kvB, rank, out var words))
            throw new ArgumentException($"{who}: V2Wide needs R * sizeof(weight) and kvB's offset to be multiples of 16 bytes (R={rank}, {typeof(TW).Name}); use V1", nameof(kvB));
        return words;
    }

    private static MlaParams Params(string who, AcceleratorStream stream, TW kvB, int tokens, int heads, int rank, int ropeDim, int nopeDim, int vDim)
    {
        DenseShapes.Stream(who, stream);
        MlaChecks.Dims(who, tokens, heads, rank, ropeDim, 1);
        if (nopeDim < 1 || vDim < 1)
            throw new ArgumentException($"{who}: Dn ({nopeDim}) and Dv ({vDim}) must be positive");
        long weights = (long)heads * (nopeDim + vDim) * rank;
        if (kvB.Length < weights)
            throw new ArgumentException($"{who}: kvB [H * (Dn + Dv), R] has {kvB.Length} elements, needs {weights}", nameof(kvB));
        return new MlaParams { Tokens = tokens, Heads = heads, Rank = rank, RopeDim = ropeDim, NopeDim = nopeDim, VDim = vDim, MaxSeq = 1 };
    }
}

/// <summary>Factory of <see cref="MlaAbsorbKernel{TW}"/> (F32Weights, F16Weights or BF16Weights).</summary>
public static class MlaAbsorbKernel
{
    public static MlaAbsorbKernel<TW> Create<TW>(Accelerator accelerator)
        where TW : struct, IWeights => new(accelerator);
}

/// <summary>The MLA launchers' argument checks: one-line ArgumentException naming the launcher and the tensor.</summary>
internal static class MlaChecks
{
    public static void Dims(string who, int tokens, int heads, int rank, int ropeDim, int maxSeq)
    {
        if (tokens < 1 || heads < 1 || rank < 1 || ropeDim < 0 || maxSeq < 1)
            throw new ArgumentException($"{who}: T ({tokens}), H ({heads}), R ({rank}), maxSeq ({maxSeq}) must be positive and Dr ({ropeDim}) non-negative");
    }

    public static void AtLeast(string who, string tensor, long length, long needed)
    {
        if (length < needed)
            throw new ArgumentException($"{who}: {tensor} has {length} elements, needs {needed}");
    }
}
