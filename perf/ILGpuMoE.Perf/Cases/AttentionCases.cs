// Attention cases (kernels/ILGpuMoE.Kernels/Attention): V1 for every T; V2 decode (split-K) at T = 1 with S = the
// preset's KvLength cached keys; V3 decode (one launch, pos from the device) at T = 1 with S = KvLength and S = 512
// in a cache of KvLength rows (the graph-captured decode step keeps maxSeq fixed: splits past pos exit early); V2
// prefill (flash style) at T > 1 from an empty cache; gpt-oss' attention (per-head sinks, sliding window 128) in the
// versions it runs (V2Decode and V3Decode at T = 1, V2Prefill above); the KV-cache append; RoPE fused with the append.
// FLOPs: 4 * H * Dh per visible (query, key) pair (QK^T and PV, multiply-add = 2). Minimum bytes: q and out once,
// K and V rows 0..S-1 once (perf/notes/attention.md).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class AttentionFamily : IBenchFamily
{
    public string Name => "attention";

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        if (tokens == 1)
        {
            yield return new AttentionCase(p, tokens, AttentionVersion.V1, p.KvLength - 1);
            yield return new AttentionCase(p, tokens, AttentionVersion.V2Decode, p.KvLength - 1);
            yield return new AttentionCase(p, tokens, AttentionVersion.V2Decode, p.KvLength - 1, sinks: true, window: GptOssWindow);
            if (p.HeadDim % 4 == 0 && p.HeadDim <= AttentionKernels.MaxHeadDim)
            {
                yield return new AttentionCase(p, tokens, AttentionVersion.V3Decode, p.KvLength - 1);
                yield return new AttentionCase(p, tokens, AttentionVersion.V3Decode, p.KvLength - 1, sinks: true, window: GptOssWindow);
                if (p.KvLength > ShortContext)
                {
                    yield return new AttentionCase(p, tokens, AttentionVersion.V2Decode, ShortContext - 1);
                    yield return new AttentionCase(p, tokens, AttentionVersion.V3Decode, ShortContext - 1, p.KvLength);
                    // The split size is the one free choice of V3 (more groups at short contexts, a longer combine).
                    yield return new AttentionCase(p, tokens, AttentionVersion.V3Decode, p.KvLength - 1, keysPerSplit: 128);
                    yield return new AttentionCase(p, tokens, AttentionVersion.V3Decode, ShortContext - 1, p.KvLength, keysPerSplit: 128);
                }
            }
        }
        else
        {
            yield return new AttentionCase(p, tokens, AttentionVersion.V1, 0);
            yield return new AttentionCase(p, tokens, AttentionVersion.V2Prefill, 0);
            yield return new AttentionCase(p, tokens, AttentionVersion.V2Prefill, 0, sinks: true, window: GptOssWindow);
        }

        yield return new KvAppendCase(p, tokens);
        if (p.HeadDim <= AttentionKernels.MaxHeadDim)
        {
            yield return new RopeAppendCase(p, tokens, RopeAppendVersion.V1);
            yield return new RopeAppendCase(p, tokens, RopeAppendVersion.V2HeadNorm);
            yield return new RopeAppendCase(p, tokens, RopeAppendVersion.V3WarpNorm);
        }
    }

    /// <summary>The short decode context of the V3 cases (keys 0..511).</summary>
    private const int ShortContext = 512;

    /// <summary>gpt-oss' sliding window (its sliding_attention layers; the others attend to the whole cache).</summary>
    private const int GptOssWindow = 128;
}

/// <summary>
/// Causal GQA of T queries at positions pos0..pos0+T-1 over S = pos0 + T keys, in a cache of max(maxSeq, S) rows.
/// V3Decode reads pos0 from a device buffer (LaunchDecode); its check also repeats the launch and requires the same
/// bits every time (its split combine is done by whichever group finishes last, in a fixed order). sinks: random
/// per-head sinks [H] (gpt-oss); window: sliding window (0: none); both checked against RefOps.GeneralAttention.
/// </summary>
public sealed class AttentionCase(ShapePreset p, int tokens, AttentionVersion version, int pos0, int maxSeq = 0, int? keysPerSplit = null,
    bool sinks = false, int window = 0) : IBenchCase
{
    private readonly int keys = pos0 + tokens;
    private readonly int rows = Math.Max(maxSeq, pos0 + tokens);
    private AttentionKernel? kernel;
    private MemoryBuffer1D<int, Stride1D.Dense>? positions;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> Q, MemoryBuffer1D<float, Stride1D.Dense> K, MemoryBuffer1D<float, Stride1D.Dense> V)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? output;
    private MemoryBuffer1D<float, Stride1D.Dense>? sinkLogits;

    public string Family => KernelId.Family(version);

    public string Version => KernelId.Version(version);

    public string DType => "f32";

    public int Tokens => tokens;

    public string Shape => $"H={p.Heads} Hkv={p.KvHeads} Dh={p.HeadDim} S={keys}" + (rows != keys ? $" maxSeq={rows}" : "")
        + (keysPerSplit is int kps ? $" kps={kps}" : "") + (sinks ? " sinks" : "") + (window > 0 ? $" window={window}" : "");

    // Visible (query, key) pairs: query t at pos0 + t sees keys max(0, pos - window + 1)..pos.
    private long Pairs => window > 0
        ? Enumerable.Range(pos0, tokens).Sum(pos => (long)Math.Min(pos + 1, window))
        : (long)tokens * pos0 + (long)tokens * (tokens + 1) / 2;

    public double Flops => 4.0 * p.Heads * p.HeadDim * Pairs;

    // K and V rows any query sees (a window hides the rows before the first query's window) and q, out; sinks [H] once.
    private long KeyRows => window > 0 ? keys - Math.Max(0, pos0 - window + 1) : keys;

    public double MinBytes => 4.0 * (2.0 * p.KvHeads * KeyRows * p.HeadDim + 2.0 * tokens * p.Heads * p.HeadDim + (sinks ? p.Heads : 0));

    public bool IsMatmul => false;

    private long QElements => (long)tokens * p.Heads * p.HeadDim;

    private long CacheElements => KvCacheLayout.Elements(p.KvHeads, rows, p.HeadDim);

    public long SetBytes => 4 * (QElements + 2 * CacheElements);

    public void Setup(BenchDevice device, int setCount)
    {
        kernel = AttentionKernel.Create(device.Accelerator, version);
        kernel.KeysPerSplitOverride = keysPerSplit;
        for (int i = 0; i < setCount; i++)
            sets.Add((device.Fill.Floats(device.Stream, QElements), device.Fill.Floats(device.Stream, CacheElements), device.Fill.Floats(device.Stream, CacheElements)));
        output = device.Fill.Floats(device.Stream, QElements);
        if (sinks)
            sinkLogits = device.Fill.Floats(device.Stream, p.Heads, 2f);
        if (version == AttentionVersion.V3Decode)
            positions = device.Accelerator.Allocate1D(new[] { pos0 });
    }

    public void Run(AcceleratorStream stream, int set)
    {
        var (q, k, v) = sets[set];
        if (version == AttentionVersion.V3Decode)
            kernel!.LaunchDecode(stream, q.View, k.View, v.View, output!.View, positions!.View, p.Heads, p.KvHeads, p.HeadDim, rows, window, Sinks);
        else
            kernel!.Launch(stream, q.View, k.View, v.View, output!.View, tokens, p.Heads, p.KvHeads, p.HeadDim, rows, pos0, window, Sinks);
    }

    private ArrayView<float> Sinks => sinkLogits is null ? default : sinkLogits.View;

    public CheckResult Check(BenchDevice device)
    {
        Run(device.Stream, 0);
        device.Stream.Synchronize();
        var (qb, kb, vb) = sets[0];
        var q = qb.GetAsArray1D();
        var got = output!.GetAsArray1D();
        var k = CacheToRows(kb.GetAsArray1D());
        var v = CacheToRows(vb.GetAsArray1D());
        int width = p.Heads * p.HeadDim;
        var sample = Compare.SampleTokens(tokens, p.CheckTokens);
        var positions = sample.Select(t => pos0 + t).ToArray();
        var want = RefOps.GeneralAttention(Compare.Rows(q, width, sample), k, v, positions, sample.Length, keys, p.Heads, p.KvHeads, p.HeadDim,
            p.HeadDim, 1.0 / Math.Sqrt(p.HeadDim), window, sinkLogits is null ? ReadOnlySpan<float>.Empty : sinkLogits.GetAsArray1D());
        var result = Compare.Close(Compare.Rows(got, width, sample), want, 1e-4, 1e-5, Compare.Scope(sample, tokens));
        if (!result.Passed || version != AttentionVersion.V3Decode)
            return result;
        for (int again = 1; again <= 5; again++)
        {
            Run(device.Stream, 0);
            device.Stream.Synchronize();
            var next = output!.GetAsArray1D();
            for (int i = 0; i < got.Length; i++)
            {
                if (BitConverter.SingleToInt32Bits(next[i]) != BitConverter.SingleToInt32Bits(got[i]))
                    return CheckResult.Fail($"launch {again + 1} differs from the first at element {i}: {next[i]:R} vs {got[i]:R} (not deterministic)");
            }
        }

        return result;
    }

    // Rows 0..S-1 of the cache [Hkv, maxSeq, Dh] -> [S, Hkv, Dh] (the reference's layout).
    private float[] CacheToRows(float[] cache)
    {
        var result = new float[(long)keys * p.KvHeads * p.HeadDim];
        for (int h = 0; h < p.KvHeads; h++)
        {
            for (int s = 0; s < keys; s++)
            {
                cache.AsSpan((int)KvCacheLayout.Index(h, s, 0, rows, p.HeadDim), p.HeadDim)
                    .CopyTo(result.AsSpan(((s * p.KvHeads) + h) * p.HeadDim, p.HeadDim));
            }
        }

        return result;
    }

    public void Dispose()
    {
        kernel?.Dispose();
        foreach (var (q, k, v) in sets)
        {
            q.Dispose();
            k.Dispose();
            v.Dispose();
        }

        output?.Dispose();
        sinkLogits?.Dispose();
        positions?.Dispose();
    }
}

/// <summary>KV-cache append of T tokens' k, v [T, Hkv, Dh] at positions 0..T-1 of a cache of T rows. Pure copy: no FLOPs.</summary>
public sealed class KvAppendCase(ShapePreset p, int tokens) : IBenchCase
{
    private KvCacheAppendKernel? kernel;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> K, MemoryBuffer1D<float, Stride1D.Dense> V)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? kCache, vCache;

    public string Family => KernelId.Family(KvAppendVersion.V1);

    public string Version => KernelId.Version(KvAppendVersion.V1);

    public string DType => "f32";

    public int Tokens => tokens;

    public string Shape => $"Hkv={p.KvHeads} Dh={p.HeadDim}";

    private long Elements => (long)tokens * p.KvHeads * p.HeadDim;

    public double Flops => 0;

    public double MinBytes => 4.0 * 4 * Elements;

    public bool IsMatmul => false;

    public long SetBytes => 8 * Elements;

    public void Setup(BenchDevice device, int setCount)
    {
        kernel = KvCacheAppendKernel.Create(device.Accelerator);
        for (int i = 0; i < setCount; i++)
            sets.Add((device.Fill.Floats(device.Stream, Elements), device.Fill.Floats(device.Stream, Elements)));
        kCache = device.Fill.Floats(device.Stream, Elements);
        vCache = device.Fill.Floats(device.Stream, Elements);
    }

    public void Run(AcceleratorStream stream, int set) =>
        kernel!.Launch(stream, sets[set].K.View, sets[set].V.View, kCache!.View, vCache!.View, tokens, p.KvHeads, p.HeadDim, tokens, 0);

    public CheckResult Check(BenchDevice device)
    {
        Run(device.Stream, 0);
        device.Stream.Synchronize();
        var k = sets[0].K.GetAsArray1D();
        var v = sets[0].V.GetAsArray1D();
        var gotK = kCache!.GetAsArray1D();
        var gotV = vCache!.GetAsArray1D();
        var wantK = new float[k.Length];
        var wantV = new float[v.Length];
        for (int t = 0; t < tokens; t++)
        {
            for (int h = 0; h < p.KvHeads; h++)
            {
                int src = (t * p.KvHeads + h) * p.HeadDim;
                int dst = (int)KvCacheLayout.Index(h, t, 0, tokens, p.HeadDim);
                k.AsSpan(src, p.HeadDim).CopyTo(wantK.AsSpan(dst));
                v.AsSpan(src, p.HeadDim).CopyTo(wantV.AsSpan(dst));
            }
        }

        var r = Compare.Close(gotK, wantK, 0, 0, $"all {tokens} tokens");
        return r.Passed ? Compare.Close(gotV, wantV, 0, 0, $"all {tokens} tokens") : r;
    }

    public void Dispose()
    {
        foreach (var (k, v) in sets)
        {
            k.Dispose();
            v.Dispose();
        }

        kCache?.Dispose();
        vCache?.Dispose();
    }
}

/// <summary>
/// RoPE on q [T, H, Dh] and k [T, Hkv, Dh] fused with the KV append, tokens at positions 0..T-1 (a device view) of a
/// cache of max(KvLength, T) rows. Each timed run rotates q again (same work, data stays random). Bytes: q read and
/// written, k and v read, their cache rows written, the positions.
/// </summary>
public sealed class RopeAppendCase(ShapePreset p, int tokens, RopeAppendVersion version) : CaseBase
{
    private const float NormEps = 1e-6f;
    private readonly bool norm = version != RopeAppendVersion.V1;
    private readonly int maxSeq = Math.Max(p.KvLength, tokens);
    private RopeAppendKernel? kernel;
    private MemoryBuffer1D<float, Stride1D.Dense>? qw, kw;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> Q, MemoryBuffer1D<float, Stride1D.Dense> K, MemoryBuffer1D<float, Stride1D.Dense> V)> sets = [];
    private MemoryBuffer1D<int, Stride1D.Dense>? positions;
    private MemoryBuffer1D<float, Stride1D.Dense>? kCache, vCache;

    public override string Family => KernelId.Family(version);

    public override string Version => KernelId.Version(version);

    public override int Tokens => tokens;

    public override string Shape => $"q [{tokens}, {p.Heads}, {p.HeadDim}] k, v [{tokens}, {p.KvHeads}, {p.HeadDim}] maxSeq={maxSeq}";

    private long QElements => (long)tokens * p.QDim;

    private long KvElements => (long)tokens * p.KvDim;

    // The per-head norm (V2HeadNorm, V3WarpNorm) adds a square-add, the scale and the weight per q and k element.
    public override double Flops => (norm ? 6.0 : 3.0) * (QElements + KvElements);

    public override double MinBytes => 8.0 * QElements + 16.0 * KvElements + 4.0 * tokens + (norm ? 8.0 * p.HeadDim : 0);

    public override long SetBytes => 4 * (QElements + 2 * KvElements);

    public override void Setup(BenchDevice d, int setCount)
    {
        kernel = Own(RopeAppendKernel.Create(d.Accelerator));
        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, QElements), Floats(d, KvElements), Floats(d, KvElements)));
        positions = Own(d.Accelerator.Allocate1D(Enumerable.Range(0, tokens).ToArray()));
        long cache = KvCacheLayout.Elements(p.KvHeads, maxSeq, p.HeadDim);
        kCache = Floats(d, cache);
        vCache = Floats(d, cache);
        qw = Floats(d, p.HeadDim);
        kw = Floats(d, p.HeadDim);
    }

    public override void Run(AcceleratorStream stream, int set) =>
        kernel!.Launch(stream, sets[set].Q.View, sets[set].K.View, sets[set].V.View, positions!.View, kCache!.View, vCache!.View,
            tokens, p.Heads, p.KvHeads, p.HeadDim, maxSeq, p.RopeTheta, norm ? qw!.View : default, norm ? kw!.View : default, NormEps, version);

    private float[] Expected(float[] x, int[] pos, int heads, MemoryBuffer1D<float, Stride1D.Dense> w) => norm
        ? RefOps.HeadNormRope(x, w.GetAsArray1D(), pos, tokens, heads, p.HeadDim, NormEps, p.RopeTheta)
        : RefOps.Rope(x, pos, tokens, heads, p.HeadDim, p.RopeTheta);

    public override CheckResult Check(BenchDevice d)
    {
        d.Stream.Synchronize();
        var q = sets[0].Q.GetAsArray1D();
        var k = sets[0].K.GetAsArray1D();
        var v = sets[0].V.GetAsArray1D();
        var pos = positions!.GetAsArray1D();
        RunOnce(d);
        // Normalised heads are O(1) times the weights: a few ulp more absolute room than the plain rotation of |x| <= 1.
        double atol = norm ? 2e-6 : 3e-7;
        var rq = Compare.Close(sets[0].Q.GetAsArray1D(), Expected(q, pos, p.Heads, qw!), 1e-5, atol, $"q, all {tokens} tokens");
        if (!rq.Passed)
            return rq;
        // Cache rows 0..T-1 back to [T, Hkv, Dh].
        var rk = Expected(k, pos, p.KvHeads, kw!);
        var kc = kCache!.GetAsArray1D();
        var vc = vCache!.GetAsArray1D();
        var gotK = new float[KvElements];
        var gotV = new float[KvElements];
        for (int t = 0; t < tokens; t++)
        {
            for (int h = 0; h < p.KvHeads; h++)
            {
                int dst = (t * p.KvHeads + h) * p.HeadDim;
                int src = (int)KvCacheLayout.Index(h, t, 0, maxSeq, p.HeadDim);
                kc.AsSpan(src, p.HeadDim).CopyTo(gotK.AsSpan(dst));
                vc.AsSpan(src, p.HeadDim).CopyTo(gotV.AsSpan(dst));
            }
        }

        var r = Compare.Close(gotK, rk, 1e-5, atol, $"q and the k cache rows, all {tokens} tokens");
        return r.Passed ? Compare.Close(gotV, v, 0, 0, $"q, k and v cache rows, all {tokens} tokens") : r;
    }
}
