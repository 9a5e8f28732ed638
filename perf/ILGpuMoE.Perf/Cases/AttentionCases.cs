// Attention cases (kernels/ILGpuMoE.Kernels/Attention): V1 for every T; V2 decode (split-K) at T = 1 with S = the
// preset's KvLength cached keys; V2 prefill (flash style) at T > 1 from an empty cache; the KV-cache append.
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
        }
        else
        {
            yield return new AttentionCase(p, tokens, AttentionVersion.V1, 0);
            yield return new AttentionCase(p, tokens, AttentionVersion.V2Prefill, 0);
        }

        yield return new KvAppendCase(p, tokens);
    }
}

/// <summary>Causal GQA of T queries at positions pos0..pos0+T-1 over a cache of S = pos0 + T keys.</summary>
public sealed class AttentionCase(ShapePreset p, int tokens, AttentionVersion version, int pos0) : IBenchCase
{
    private readonly int keys = pos0 + tokens;
    private AttentionKernel? kernel;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> Q, MemoryBuffer1D<float, Stride1D.Dense> K, MemoryBuffer1D<float, Stride1D.Dense> V)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? output;

    public string Family => KernelId.Family(version);

    public string Version => KernelId.Version(version);

    public string DType => "f32";

    public int Tokens => tokens;

    public string Shape => $"H={p.Heads} Hkv={p.KvHeads} Dh={p.HeadDim} S={keys}";

    private long Pairs => (long)tokens * pos0 + (long)tokens * (tokens + 1) / 2;

    public double Flops => 4.0 * p.Heads * p.HeadDim * Pairs;

    public double MinBytes => 4.0 * (2.0 * p.KvHeads * keys * p.HeadDim + 2.0 * tokens * p.Heads * p.HeadDim);

    public bool IsMatmul => false;

    private long QElements => (long)tokens * p.Heads * p.HeadDim;

    private long CacheElements => KvCacheLayout.Elements(p.KvHeads, keys, p.HeadDim);

    public long SetBytes => 4 * (QElements + 2 * CacheElements);

    public void Setup(BenchDevice device, int setCount)
    {
        kernel = AttentionKernel.Create(device.Accelerator, version);
        for (int i = 0; i < setCount; i++)
            sets.Add((device.Fill.Floats(device.Stream, QElements), device.Fill.Floats(device.Stream, CacheElements), device.Fill.Floats(device.Stream, CacheElements)));
        output = device.Fill.Floats(device.Stream, QElements);
    }

    public void Run(AcceleratorStream stream, int set)
    {
        var (q, k, v) = sets[set];
        kernel!.Launch(stream, q.View, k.View, v.View, output!.View, tokens, p.Heads, p.KvHeads, p.HeadDim, keys, pos0);
    }

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
        var want = RefOps.Attention(Compare.Rows(q, width, sample), k, v, positions, sample.Length, keys, p.Heads, p.KvHeads, p.HeadDim, 0);
        return Compare.Close(Compare.Rows(got, width, sample), want, 1e-4, 1e-5, Compare.Scope(sample, tokens));
    }

    // [Hkv, S, Dh] (the cache) -> [S, Hkv, Dh] (the reference's layout).
    private float[] CacheToRows(float[] cache)
    {
        var rows = new float[cache.Length];
        for (int h = 0; h < p.KvHeads; h++)
        {
            for (int s = 0; s < keys; s++)
            {
                cache.AsSpan((int)KvCacheLayout.Index(h, s, 0, keys, p.HeadDim), p.HeadDim)
                    .CopyTo(rows.AsSpan(((s * p.KvHeads) + h) * p.HeadDim, p.HeadDim));
            }
        }

        return rows;
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
