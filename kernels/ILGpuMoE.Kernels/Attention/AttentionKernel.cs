// Launchers for the attention family (see AttentionKernels.cs for the versions and the KV cache layout).
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Attention;

/// <summary>Which attention kernels a launcher uses.</summary>
public enum AttentionVersion
{
    /// <summary>Simplest correct kernel for every T.</summary>
    V1,

    /// <summary>Production choice: split-K decode for T &lt;= <see cref="AttentionKernel.DecodeMaxTokens"/>, flash prefill otherwise.</summary>
    V2,

    /// <summary>Always the flash-style prefill kernel (tests, benchmarks).</summary>
    V2Prefill,

    /// <summary>Always the split-K decode kernel plus combine, for any T (tests, benchmarks).</summary>
    V2Decode,
}

/// <summary>The KV cache layout: per layer kCache and vCache are [Hkv, maxSeq, Dh] f32.</summary>
public static class KvCacheLayout
{
    /// <summary>Floats in one of kCache / vCache of one layer.</summary>
    public static long Elements(int kvHeads, int maxSeq, int headDim) => (long)kvHeads * maxSeq * headDim;

    /// <summary>Flat index of (kv head, position, dim), 64-bit: Hkv * maxSeq * Dh passes 2^31 at long contexts.</summary>
    public static long Index(int kvHead, int position, int dim, int maxSeq, int headDim) =>
        ((long)kvHead * maxSeq + position) * headDim + dim;
}

/// <summary>Appends the current tokens' k, v [T, Hkv, Dh] to a layer's cache at positions pos0..pos0+T-1.</summary>
public sealed class KvCacheAppendKernel
{
    private const int GroupSize = 256;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
        int, int, int, int, int> kernel;

    private KvCacheAppendKernel(Accelerator accelerator)
    {
        kernel = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>(
            AttentionKernels.KvAppendV1);
    }

    public static KvCacheAppendKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>kCache[kvh, pos0 + t, d] = k[t, kvh, d] (same for v). Requires pos0 + T &lt;= maxSeq.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache,
        int tokens, int kvHeads, int headDim, int maxSeq, int pos0)
    {
        AttentionKernel.CheckShape(tokens, kvHeads, kvHeads, headDim, maxSeq, pos0, "KvCacheAppendKernel");
        long n = (long)tokens * kvHeads * headDim;
        AttentionKernel.CheckLength(k, n, "k [T, Hkv, Dh]", "KvCacheAppendKernel");
        AttentionKernel.CheckLength(v, n, "v [T, Hkv, Dh]", "KvCacheAppendKernel");
        long cache = KvCacheLayout.Elements(kvHeads, maxSeq, headDim);
        AttentionKernel.CheckLength(kCache, cache, "kCache [Hkv, maxSeq, Dh]", "KvCacheAppendKernel");
        AttentionKernel.CheckLength(vCache, cache, "vCache [Hkv, maxSeq, Dh]", "KvCacheAppendKernel");
        int groups = (int)((n + GroupSize - 1) / GroupSize);
        kernel(stream, new KernelConfig(groups, GroupSize), k, v, kCache, vCache, tokens, kvHeads, headDim, maxSeq, pos0);
    }
}

/// <summary>
/// Causal grouped-query attention of T queries (positions pos0..pos0+T-1) over a layer's KV cache, whose rows
/// 0..pos0+T-1 must already hold the keys/values (append the current tokens first). T = 1 is decode; T &gt; 1 with
/// pos0 &gt; 0 is chunked prefill. Owns a small split-K scratch buffer (grown on demand, reused by every launch): use
/// one instance per stream, and dispose it.
/// </summary>
public sealed class AttentionKernel : IDisposable
{
    /// <summary>V2 uses the split-K decode kernel up to this many tokens, the tiled prefill kernel above.</summary>
    public const int DecodeMaxTokens = 2;

    // Split-K sizing: aim for this many decode groups (a few per SM on a 132-SM H200) and at least this many keys
    // per split (a split must amortise its partial write and the combine). Depends only on (T, Hkv, S), never on
    // the device, so results are the same on every device and bit-identical run to run.
    private const int DecodeTargetGroups = 1024;
    private const int MinKeysPerSplit = 32;

    private readonly Accelerator accelerator;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>? v1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>? prefill;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>? decode;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>? combine;

    private MemoryBuffer1D<float, Stride1D.Dense>? partO;
    private MemoryBuffer1D<float, Stride1D.Dense>? partML;

    private AttentionKernel(Accelerator accelerator, AttentionVersion version)
    {
        this.accelerator = accelerator;
        Version = version;
        if (version == AttentionVersion.V1)
        {
            v1 = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(
                AttentionKernels.AttentionV1);
        }

        if (version is AttentionVersion.V2 or AttentionVersion.V2Prefill)
        {
            prefill = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(
                AttentionKernels.AttentionV2Prefill);
        }

        if (version is AttentionVersion.V2 or AttentionVersion.V2Decode)
        {
            decode = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(
                AttentionKernels.AttentionV2Decode);
            combine = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(
                AttentionKernels.AttentionV2Combine);
        }
    }

    public AttentionVersion Version { get; }

    /// <summary>Tests/benchmarks: force the decode split size (keys per split); null = automatic.</summary>
    public int? KeysPerSplitOverride { get; set; }

    public static AttentionKernel Create(Accelerator accelerator, AttentionVersion version = AttentionVersion.V2) => new(accelerator, version);

    /// <summary>Split-K plan of the decode kernel for T queries, Hkv kv heads and S = pos0 + T keys.</summary>
    public static (int Splits, int KeysPerSplit) DecodeSplits(int tokens, int kvHeads, int keys, int? keysPerSplit = null)
    {
        int kps;
        if (keysPerSplit is int forced)
        {
            kps = Math.Max(1, forced);
        }
        else
        {
            int want = Math.Max(1, DecodeTargetGroups / Math.Max(1, tokens * kvHeads));
            kps = Math.Max(MinKeysPerSplit, (keys + want - 1) / want);
            kps = (kps + MinKeysPerSplit - 1) / MinKeysPerSplit * MinKeysPerSplit;
        }

        return ((keys + kps - 1) / kps, kps);
    }

    /// <summary>
    /// output[t, h, :] = softmax over visible keys j of (q[t, h] . k[j, h / (H/Hkv)]) / sqrt(Dh), times v. q, output
    /// [T, H, Dh]; kCache, vCache [Hkv, maxSeq, Dh] with rows 0..pos0+T-1 valid; key j is visible to query t iff
    /// j &lt;= pos0 + t and (window &lt;= 0 or pos0 + t - j &lt; window). Dh &lt;= 128.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> output,
        int tokens, int heads, int kvHeads, int headDim, int maxSeq, int pos0, int window = 0)
    {
        const string who = "AttentionKernel";
        CheckShape(tokens, heads, kvHeads, headDim, maxSeq, pos0, who);
        long n = (long)tokens * heads * headDim;
        CheckLength(q, n, "q [T, H, Dh]", who);
        CheckLength(output, n, "output [T, H, Dh]", who);
        long cache = KvCacheLayout.Elements(kvHeads, maxSeq, headDim);
        CheckLength(kCache, cache, "kCache [Hkv, maxSeq, Dh]", who);
        CheckLength(vCache, cache, "vCache [Hkv, maxSeq, Dh]", who);

        var p = new AttentionParams
        {
            Tokens = tokens,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            MaxSeq = maxSeq,
            Pos0 = pos0,
            Window = window,
            Scale = (float)(1.0 / Math.Sqrt(headDim)),
        };

        bool useDecode = Version == AttentionVersion.V2Decode || (Version == AttentionVersion.V2 && tokens <= DecodeMaxTokens);
        if (Version == AttentionVersion.V1)
        {
            v1!(stream, new KernelConfig(tokens * heads, headDim), q, kCache, vCache, output, p);
        }
        else if (!useDecode)
        {
            int qTiles = (tokens + AttentionKernels.PrefillQueries - 1) / AttentionKernels.PrefillQueries;
            prefill!(stream, new KernelConfig(qTiles * heads, AttentionKernels.PrefillThreads), q, kCache, vCache, output, p);
        }
        else
        {
            (p.Splits, p.KeysPerSplit) = DecodeSplits(tokens, kvHeads, pos0 + tokens, KeysPerSplitOverride);
            long parts = (long)tokens * heads * p.Splits;
            if (parts * (headDim + 2) > int.MaxValue)
                throw new ArgumentException($"{who}: {parts} split-K partials of Dh {headDim} exceed 32-bit indexing (use the prefill kernel)");
            EnsureScratch(stream, parts * headDim, parts * 2);
            int group = heads / kvHeads;
            int warps = Math.Min(group, AttentionKernels.MaxDecodeWarps);
            decode!(stream, new KernelConfig(tokens * kvHeads * p.Splits, 32 * warps), q, kCache, vCache,
                partO!.View.SubView(0, parts * headDim), partML!.View.SubView(0, parts * 2), p);
            combine!(stream, new KernelConfig(tokens * heads, 32 * ((headDim + 31) / 32)),
                partO.View.SubView(0, parts * headDim), partML.View.SubView(0, parts * 2), output, p);
        }
    }

    public void Dispose()
    {
        partO?.Dispose();
        partML?.Dispose();
        partO = partML = null;
    }

    private void EnsureScratch(AcceleratorStream stream, long oFloats, long mlFloats)
    {
        if (partO != null && partO.Length >= oFloats && partML != null && partML.Length >= mlFloats)
            return;
        // Earlier launches on this stream may still read the old buffers.
        stream.Synchronize();
        partO?.Dispose();
        partML?.Dispose();
        partO = accelerator.Allocate1D<float>(Math.Max(oFloats, 1));
        partML = accelerator.Allocate1D<float>(Math.Max(mlFloats, 2));
    }

    internal static void CheckShape(int tokens, int heads, int kvHeads, int headDim, int maxSeq, int pos0, string who)
    {
        if (tokens < 1)
            throw new ArgumentException($"{who}: tokens must be >= 1 (got {tokens})");
        if (kvHeads < 1 || heads < 1 || heads % kvHeads != 0)
            throw new ArgumentException($"{who}: heads ({heads}) must be a positive multiple of kvHeads ({kvHeads})");
        if (headDim < 1 || headDim > AttentionKernels.MaxHeadDim)
            throw new ArgumentException($"{who}: headDim must be in 1..{AttentionKernels.MaxHeadDim} (got {headDim})");
        if (pos0 < 0 || maxSeq < 1 || (long)pos0 + tokens > maxSeq)
            throw new ArgumentException($"{who}: positions {pos0}..{(long)pos0 + tokens - 1} do not fit a cache of maxSeq {maxSeq}");
        // The cache may pass 2^31 floats: each head's start is a 64-bit offset (KvCacheLayout.Index), rows inside a
        // head and q / output / the append's k, v ([T, H or Hkv, Dh]) use int offsets, checked here.
        Index64.CheckInt(who, "kCache head [maxSeq, Dh]", (long)maxSeq * headDim);
        Index64.CheckInt(who, "q/k [T, heads, Dh]", (long)tokens * heads * headDim);
    }

    internal static void CheckLength(ArrayView<float> view, long needed, string what, string who)
    {
        if (view.Length < needed)
            throw new ArgumentException($"{who}: {what} has {view.Length} floats, needs {needed}");
    }
}
