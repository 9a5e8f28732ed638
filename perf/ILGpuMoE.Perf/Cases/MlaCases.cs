// MLA decode cases (kernels/ILGpuMoE.Kernels/Attention/Mla): one case is the absorbed decode attention of one layer at
// T = 1, absorb-q (W_UK^T q_nope), the latent attention over cache rows 0..S-1 and absorb-v (W_UV o_lat), with
// kv_b_proj in BF16 (the checkpoint's dtype). The deepseek-v3-moe preset runs V3's shapes (H 128, R 512, Dr 64,
// Dn 128, Dv 128, scale 192^-0.5 * mscale^2 with YaRN's mscale 0.1 ln 40 + 1) at S = 4K and 32K (maxSeq = S): the
// versions a GPU decode step launches (V2Wide absorbs, V2Split attention and its combine). The tiny and smoke presets
// run a small MLA shape with those versions and with the V1 kernels. Other presets have no MLA layer.
// FLOPs (multiply-add = 2): 2 H Dn R (absorb-q) + 2 H S (R + Dr) (scores) + 2 H S R (p c) + 2 H Dv R (absorb-v).
// Minimum bytes: the cache rows 0..S-1 read once (4 S (R + Dr)), W_UK and W_UV once (2 H (Dn + Dv) R in BF16), q and the
// output (perf/notes/attention.md, MLA).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention.Mla;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class MlaFamily : IBenchFamily
{
    public string Name => "mla";

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        if (tokens != 1)
            yield break;
        if (p.Name == Presets.DeepSeekV3Moe.Name)
        {
            var v3 = new MlaShape(p.Heads, Rank: 512, RopeDim: 64, NopeDim: 128, VDim: 128);
            double mscale = 0.1 * Math.Log(40) + 1; // YaRN factor 40, mscale_all_dim 1 (V3's config)
            double scale = mscale * mscale / Math.Sqrt(v3.QkDim);
            yield return new MlaDecodeCase(v3, 4096, scale, p.CheckTokens, MlaAttentionVersion.V2Split);
            yield return new MlaDecodeCase(v3, 32768, scale, p.CheckTokens, MlaAttentionVersion.V2Split);
        }
        else if (p.IsSmall)
        {
            // Odd widths at tiny (V1 absorbs: R 40 is whole 16-byte words only for the f32 / bf16 readers' 4 / 8 values).
            var s = p.IsTiny ? new MlaShape(p.Heads, Rank: 40, RopeDim: 8, NopeDim: 12, VDim: 10) : new MlaShape(p.Heads, 128, 32, 32, 32);
            double scale = 1 / Math.Sqrt(s.QkDim);
            yield return new MlaDecodeCase(s, p.KvLength, scale, int.MaxValue, MlaAttentionVersion.V1);
            // V2Split checks 2 heads at tiny: the head-block path the V3 preset's check takes.
            yield return new MlaDecodeCase(s, p.KvLength, scale, p.IsTiny ? 2 : int.MaxValue, MlaAttentionVersion.V2Split);
        }
    }
}

/// <summary>
/// One layer's absorbed MLA decode step at pos = S - 1 over a cache of S rows: V1 launches the V1 kernels, V2Split the
/// V2Wide absorbs and V2Split (plus its combine). The check recomputes RefMlaAttention.Attention on up to checkHeads / 2
/// heads at each end (plain C#, double: the whole of V3's 128 heads at 32K would take most of a minute).
/// </summary>
public sealed class MlaDecodeCase(MlaShape s, int keys, double scale, int checkHeads, MlaAttentionVersion version) : CaseBase
{
    private const float WeightScale = 0.05f;
    private MlaAttentionKernel? attention;
    private MlaAbsorbKernel<BF16Weights>? absorb;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> Q, MemoryBuffer1D<float, Stride1D.Dense> Cache, WeightBuffer W)> sets = [];
    private MemoryBuffer1D<int, Stride1D.Dense>? positions;
    private MemoryBuffer1D<float, Stride1D.Dense>? qAbs, oLat, output;

    public override string Family => KernelId.Family(version);

    public override string Version => KernelId.Version(version);

    public override string DType => "bf16";

    public override int Tokens => 1;

    public override string Shape => $"H={s.Heads} R={s.Rank} Dr={s.RopeDim} Dn={s.NopeDim} Dv={s.VDim} S={keys} (absorb-q, latent attention, absorb-v)";

    private long CacheElements => (long)keys * s.Row;

    private long WeightElements => (long)s.KvBRows * s.Rank;

    public override double Flops => 2.0 * s.Heads * (s.NopeDim * (double)s.Rank + keys * (double)(s.Row + s.Rank) + s.VDim * (double)s.Rank);

    public override double MinBytes => 4.0 * CacheElements + 2.0 * WeightElements + 4.0 * s.Heads * (s.QkDim + s.VDim);

    public override long SetBytes => 4 * ((long)s.Heads * s.QkDim + CacheElements) + 2 * WeightElements;

    public override void Setup(BenchDevice d, int setCount)
    {
        attention = Own(MlaAttentionKernel.Create(d.Accelerator));
        absorb = MlaAbsorbKernel.Create<BF16Weights>(d.Accelerator);
        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, (long)s.Heads * s.QkDim), Floats(d, CacheElements), Weights(d, WeightType.BF16, WeightElements, WeightScale)));
        positions = Own(d.Accelerator.Allocate1D(new[] { keys - 1 }));
        qAbs = Floats(d, (long)s.Heads * s.Row);
        oLat = Floats(d, (long)s.Heads * s.Rank);
        output = Floats(d, (long)s.Heads * s.VDim);
        attention.Reserve(d.Stream, s.Heads, s.Rank, keys);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        var (q, cache, w) = sets[set];
        bool wide = version != MlaAttentionVersion.V1;
        absorb!.AbsorbQ(stream, q.View, w.BF16, qAbs!.View, 1, s.Heads, s.Rank, s.RopeDim, s.NopeDim, s.VDim,
            wide ? MlaAbsorbQVersion.V2Wide : MlaAbsorbQVersion.V1);
        attention!.Attention(stream, qAbs.View, cache.View, positions!.View, oLat!.View, 1, s.Heads, s.Rank, s.RopeDim, keys, (float)scale, version);
        absorb.AbsorbV(stream, oLat.View, w.BF16, output!.View, 1, s.Heads, s.Rank, s.RopeDim, s.NopeDim, s.VDim,
            wide ? MlaAbsorbVVersion.V2Wide : MlaAbsorbVVersion.V1);
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var (qb, cb, wb) = sets[0];
        var q = qb.GetAsArray1D();
        var cache = cb.GetAsArray1D();
        var got = output!.GetAsArray1D();
        // Heads are independent: blocks of consecutive heads are their own MLA problem (their rows of q, kv_b_proj
        // and the output are contiguous).
        int half = Math.Max(1, Math.Min(s.Heads, checkHeads) / 2);
        var blocks = half * 2 >= s.Heads ? new[] { (0, s.Heads) } : new[] { (0, half), (s.Heads - half, half) };
        CheckResult? last = null;
        foreach (var (h0, count) in blocks)
        {
            var sub = s with { Heads = count };
            int rowsPerHead = s.NopeDim + s.VDim;
            var w = wb.Download((long)h0 * rowsPerHead * s.Rank, (long)count * rowsPerHead * s.Rank);
            var want = RefMlaAttention.Attention(q.AsSpan(h0 * s.QkDim, count * s.QkDim), cache, w, [keys - 1], 1, keys, sub, scale);
            last = Compare.Close(got.AsSpan(h0 * s.VDim, count * s.VDim), want, 1e-4, 1e-5, $"heads {h0}..{h0 + count - 1} of {s.Heads}");
            if (!last.Passed)
                return last;
        }

        return last!;
    }
}
