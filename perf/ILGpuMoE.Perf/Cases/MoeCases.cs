// MoE cases (kernels/ILGpuMoE.Kernels/Moe): the permute (expert-sorted order of the T*K pairs) and the whole MoE block
// (permute + grouped up/gate GEMM + grouped down GEMM + weighted combine) in each grouped-GEMM version, named by it
// (moe/grouped-gemm v1-simple: one thread per output, v2-tiled: 32x32 tiles (prefill), v3-gemv: warp per weight row
// (decode); KernelId makes the names from the GroupedGemmVersion member).
// Routing: K distinct random experts per token (seeded, host-made), random positive weights summing to 1.
// FLOPs: 6 * T * K * F * D (up, gate, down; multiply-add = 2). Minimum bytes: the experts the routing actually hits
// (3 * F * D each, read once) plus x, out, ids and weights: at T = 1 that is K experts, at large T all E.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class MoeFamily : IBenchFamily
{
    public string Name => "moe";

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        yield return new MoePermuteCase(p, tokens);
        var versions = new List<GroupedGemmVersion>();
        // V1 is the correctness baseline: at large T on real shapes it costs seconds per run, so it stops at 512.
        if (tokens <= 512 || p.IsSmall)
            versions.Add(GroupedGemmVersion.V1Simple);
        if (tokens > 1)
            versions.Add(GroupedGemmVersion.V2Tiled);
        if (tokens <= 64)
            versions.Add(GroupedGemmVersion.V3Gemv);
        foreach (var v in versions)
            yield return new MoeBlockCase(p, tokens, WeightType.BF16, v);
        // f32 experts once per sweep point that matters (decode and the tiled prefill), for the dtype comparison.
        if (!p.IsTiny && tokens is 1 or 64)
            yield return new MoeBlockCase(p, tokens, WeightType.F32, tokens == 1 ? GroupedGemmVersion.V3Gemv : GroupedGemmVersion.V2Tiled);
    }

    /// <summary>
    /// The routing of the sampled tokens only, with the experts they use renumbered 0..m-1 (used[i] is expert i's
    /// original number): the reference then needs just those experts' weights and routes the same rows through them.
    /// </summary>
    public static (int[] Used, RefRouting Routing) SampledRouting((int[] Ids, float[] Weights) routing, int[] sample, int k)
    {
        var used = sample.SelectMany(t => routing.Ids.AsSpan(t * k, k).ToArray()).Distinct().Order().ToArray();
        var index = used.Select((e, i) => (e, i)).ToDictionary(x => x.e, x => x.i);
        var ids = new int[sample.Length * k];
        var weights = new float[sample.Length * k];
        for (int i = 0; i < sample.Length; i++)
        {
            for (int j = 0; j < k; j++)
            {
                ids[i * k + j] = index[routing.Ids[sample[i] * k + j]];
                weights[i * k + j] = routing.Weights[sample[i] * k + j];
            }
        }

        return (used, new RefRouting(ids, weights, sample.Length, k, 0));
    }

    /// <summary>K distinct experts per token and weights summing to 1, from a seeded generator (same for every version).</summary>
    public static (int[] Ids, float[] Weights) Routing(int tokens, int experts, int topK, int seed)
    {
        var rng = new Random(seed);
        var ids = new int[tokens * topK];
        var weights = new float[tokens * topK];
        var pick = Enumerable.Range(0, experts).ToArray();
        for (int t = 0; t < tokens; t++)
        {
            rng.Shuffle(pick);
            double sum = 0;
            for (int k = 0; k < topK; k++)
            {
                ids[t * topK + k] = pick[k];
                weights[t * topK + k] = (float)(0.1 + rng.NextDouble());
                sum += weights[t * topK + k];
            }

            for (int k = 0; k < topK; k++)
                weights[t * topK + k] = (float)(weights[t * topK + k] / sum);
        }

        return (ids, weights);
    }
}

public sealed class MoeBlockCase(ShapePreset p, int tokens, WeightType type, GroupedGemmVersion version) : CaseBase
{
    private readonly (int[] Ids, float[] Weights) routing = MoeFamily.Routing(tokens, p.Experts, p.TopK, 1234 + tokens);
    private MoeBlockKernels<F32Weights>? k32;
    private MoeBlockKernels<BF16Weights>? kbf;
    private MoeWorkspace? workspace;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, WeightBuffer W1, WeightBuffer W3, WeightBuffer W2)> sets = [];
    private MemoryBuffer1D<int, Stride1D.Dense>? ids;
    private MemoryBuffer1D<float, Stride1D.Dense>? weights, output;

    // The case times the whole block (permute, both grouped passes, combine) and is named by its grouped GEMM version.
    public override string Family => KernelId.Family(version);

    public override string Version => KernelId.Version(version);

    public override string DType => WeightTypes.Label(type);

    public override int Tokens => tokens;

    public override string Shape => $"E={p.Experts} K={p.TopK} D={p.Dim} F={p.Hidden} ({HitExperts} experts hit)";

    private int HitExperts => routing.Ids.Distinct().Count();

    private long ExpertElements => (long)p.Hidden * p.Dim;

    public override double Flops => 6.0 * tokens * p.TopK * p.Hidden * p.Dim;

    public override double MinBytes => 3.0 * HitExperts * ExpertElements * WeightTypes.Bytes(type) + 8.0 * tokens * p.Dim + 8.0 * tokens * p.TopK;

    public override bool IsMatmul => version == GroupedGemmVersion.V2Tiled;

    public override long SetBytes => 3L * p.Experts * ExpertElements * WeightTypes.Bytes(type) + 4L * tokens * p.Dim;

    public override void Setup(BenchDevice d, int setCount)
    {
        if (type == WeightType.F32)
            k32 = MoeBlockKernels<F32Weights>.Create(d.Accelerator);
        else
            kbf = MoeBlockKernels<BF16Weights>.Create(d.Accelerator);
        workspace = Own(new MoeWorkspace(d.Accelerator, tokens, p.TopK, p.Experts, p.Dim, p.Hidden));
        long w = p.Experts * ExpertElements;
        for (int i = 0; i < setCount; i++)
        {
            sets.Add((Floats(d, (long)tokens * p.Dim), Weights(d, type, w, 1f / MathF.Sqrt(p.Dim)), Weights(d, type, w, 1f / MathF.Sqrt(p.Dim)),
                Weights(d, type, w, 1f / MathF.Sqrt(p.Hidden))));
        }

        ids = Own(d.Accelerator.Allocate1D(routing.Ids));
        weights = Own(d.Accelerator.Allocate1D(routing.Weights));
        output = Floats(d, (long)tokens * p.Dim);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        var s = sets[set];
        if (type == WeightType.F32)
            k32!.Launch(stream, workspace!, s.X.View, ids!.View, weights!.View, tokens, s.W1.F32, s.W3.F32, s.W2.F32, output!.View, version: version);
        else
            kbf!.Launch(stream, workspace!, s.X.View, ids!.View, weights!.View, tokens, s.W1.BF16, s.W3.BF16, s.W2.BF16, output!.View, version: version);
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var sample = Compare.SampleTokens(tokens, p.CheckTokens);
        int k = p.TopK;
        // Only the experts the sampled tokens use come back from the device (DeepSeek's 256 experts are 22 GB); the
        // reference sees them renumbered 0..m-1, which routes the same rows through the same weights.
        var (used, sampled) = MoeFamily.SampledRouting(routing, sample, k);

        var s = sets[0];
        var w1 = used.Select(e => s.W1.Download(e * ExpertElements, ExpertElements)).ToList();
        var w3 = used.Select(e => s.W3.Download(e * ExpertElements, ExpertElements)).ToList();
        var w2 = used.Select(e => s.W2.Download(e * ExpertElements, ExpertElements)).ToList();
        var x = Compare.Rows(s.X.GetAsArray1D(), p.Dim, sample);
        var want = RefMoe.MoeBlock(x, sampled, w1, w3, w2, sample.Length, p.Dim, p.Hidden);
        var got = Compare.Rows(output!.GetAsArray1D(), p.Dim, sample);
        return Compare.Close(got, want, 1e-4, 1e-5 + 2e-7 * Math.Sqrt((double)p.Dim * p.Hidden), Compare.Scope(sample, tokens));
    }
}

/// <summary>The expert-sorted order of the T*K (token, slot) pairs (histogram, scan, stable scatter) vs RefMoe.Permute.</summary>
public sealed class MoePermuteCase(ShapePreset p, int tokens) : CaseBase
{
    private readonly (int[] Ids, float[] Weights) routing = MoeFamily.Routing(tokens, p.Experts, p.TopK, 77 + tokens);
    private MoePermuteKernel? kernel;
    private MoePermutation? permutation;
    private MemoryBuffer1D<int, Stride1D.Dense>? ids;

    public override string Family => KernelId.Family(MoePermuteVersion.V1);

    public override string Version => KernelId.Version(MoePermuteVersion.V1);

    public override string DType => "i32";

    public override int Tokens => tokens;

    public override string Shape => $"T*K={tokens * p.TopK} E={p.Experts}";

    private long Pairs => (long)tokens * p.TopK;

    public override double Flops => 0;

    // ids read, sorted pairs and pair positions written, counts and offsets.
    public override double MinBytes => 4.0 * (3 * Pairs + 2 * p.Experts + 1);

    public override long SetBytes => 4 * Pairs;

    public override void Setup(BenchDevice d, int setCount)
    {
        kernel = MoePermuteKernel.Create(d.Accelerator);
        permutation = Own(new MoePermutation(d.Accelerator, (int)Pairs, p.Experts, GroupedGemm.TileRows(GroupedGemmVersion.V2Tiled)));
        ids = Own(d.Accelerator.Allocate1D(routing.Ids));
    }

    public override void Run(AcceleratorStream stream, int set) => kernel!.Launch(stream, ids!.View, tokens, p.TopK, permutation!);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var want = RefMoe.Permute(new RefRouting(routing.Ids, routing.Weights, tokens, p.TopK, 0), p.Experts);
        var scope = $"all {Pairs} pairs";
        var counts = Compare.Equal(permutation!.Counts.GetAsArray1D().AsSpan(0, p.Experts), want.Counts, scope);
        if (!counts.Passed)
            return counts with { Message = "counts: " + counts.Message };
        var offsets = Compare.Equal(permutation.Offsets.GetAsArray1D().AsSpan(0, p.Experts + 1), want.Offsets, scope);
        if (!offsets.Passed)
            return offsets with { Message = "offsets: " + offsets.Message };
        var sorted = Compare.Equal(permutation.SortedPairs.GetAsArray1D().AsSpan(0, want.SortedPairs.Length), want.SortedPairs, scope);
        return sorted.Passed ? sorted : sorted with { Message = "sorted pairs: " + sorted.Message };
    }
}
