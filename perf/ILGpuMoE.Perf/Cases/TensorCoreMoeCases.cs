// Tensor-core MoE cases (moe/grouped-gemm v5-mma, kernels/ILGpuMoE.Kernels/Moe/GroupedGemm/GroupedGemmMma.cs): the whole
// MoE block (permute + up-gate + down on mma.sync + weighted combine) with BF16 experts, at prefill token counts
// (T >= 512 on the model presets: Mixtral-8x7B's T = 4096, E = 8, K = 2, D = 4096, F = 14336 and Qwen3-30B-A3B's E = 128,
// K = 8, D = 2048, F = 768 among them; every T > 1 on the small presets, where the CPU accelerator runs the emulation
// and the case is a correctness check only). Same routing and data as MoeCases.cs's block cases, so v2-tiled beside it
// is the SIMT baseline. FLOPs: 6 * T * K * F * D, on routed rows only (the padding of each expert's last 64-row tile
// is not counted). Minimum bytes: as MoeBlockCase. The check: the sampled tokens against RefGroupedExperts with x and
// h rounded to BF16 as the kernels round them (perf/notes/tensor-cores-moe.md).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class TensorCoreMoeFamily : IBenchFamily
{
    public string Name => "moe-mma";

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        if (tokens > 1 && (tokens >= 512 || p.IsSmall) && GroupedGemmMmaKernel<Bf16Mma>.Supports(p.Dim, p.Hidden))
            yield return new TensorCoreMoeBlockCase(p, tokens);
    }
}

public sealed class TensorCoreMoeBlockCase(ShapePreset p, int tokens) : CaseBase
{
    private readonly (int[] Ids, float[] Weights) routing = MoeFamily.Routing(tokens, p.Experts, p.TopK, 1234 + tokens);
    private MoeBlock? block;
    private GroupedGemmMmaKernel<Bf16Mma>? kernel;
    private MoeWorkspace? workspace;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, WeightBuffer W1, WeightBuffer W3, WeightBuffer W2)> sets = [];
    private MemoryBuffer1D<int, Stride1D.Dense>? ids;
    private MemoryBuffer1D<float, Stride1D.Dense>? weights, output;

    public override string Family => KernelId.Family(GroupedGemmVersion.V5Mma);

    public override string Version => KernelId.Version(GroupedGemmVersion.V5Mma);

    public override string DType => WeightTypes.Label(WeightType.BF16);

    public override int Tokens => tokens;

    public override string Shape => $"E={p.Experts} K={p.TopK} D={p.Dim} F={p.Hidden} ({routing.Ids.Distinct().Count()} experts hit, tensor cores)";

    private long ExpertElements => (long)p.Hidden * p.Dim;

    public override double Flops => 6.0 * tokens * p.TopK * p.Hidden * p.Dim;

    public override double MinBytes => 3.0 * routing.Ids.Distinct().Count() * ExpertElements * 2 + 8.0 * tokens * p.Dim + 8.0 * tokens * p.TopK;

    public override long SetBytes => 3L * p.Experts * ExpertElements * 2 + 4L * tokens * p.Dim;

    public override void Setup(BenchDevice d, int setCount)
    {
        block = MoeBlock.Create(d.Accelerator);
        kernel = GroupedGemmMmaKernel<Bf16Mma>.Create(d.Accelerator);
        workspace = Own(new MoeWorkspace(d.Accelerator, tokens, p.TopK, p.Experts, p.Dim, p.Hidden));
        long w = p.Experts * ExpertElements;
        for (int i = 0; i < setCount; i++)
        {
            sets.Add((Floats(d, (long)tokens * p.Dim), Weights(d, WeightType.BF16, w, 1f / MathF.Sqrt(p.Dim)),
                Weights(d, WeightType.BF16, w, 1f / MathF.Sqrt(p.Dim)), Weights(d, WeightType.BF16, w, 1f / MathF.Sqrt(p.Hidden))));
        }

        ids = Own(d.Accelerator.Allocate1D(routing.Ids));
        weights = Own(d.Accelerator.Allocate1D(routing.Weights));
        output = Floats(d, (long)tokens * p.Dim);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        var s = sets[set];
        var experts = TensorCoreExperts.Bf16(kernel!, s.W1.BF16, s.W3.BF16, s.W2.BF16);
        block!.Launch(stream, workspace!, s.X.View, ids!.View, weights!.View, tokens, experts, output!.View);
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var sample = Compare.SampleTokens(tokens, p.CheckTokens);
        var (used, sampled) = MoeFamily.SampledRouting(routing, sample, p.TopK);
        var s = sets[0];
        var w1 = used.Select(e => s.W1.Download(e * ExpertElements, ExpertElements)).ToList();
        var w3 = used.Select(e => s.W3.Download(e * ExpertElements, ExpertElements)).ToList();
        var w2 = used.Select(e => s.W2.Download(e * ExpertElements, ExpertElements)).ToList();
        var x = Compare.Rows(s.X.GetAsArray1D(), p.Dim, sample);
        var perm = RefMoe.Permute(sampled, used.Length);
        var h = RefGroupedExperts.UpGate(x, perm, sample.Length, p.TopK, w1, w3, RefExpertActivation.SiLU, p.Dim, p.Hidden, RefRoundTo.Bf16);
        var y = RefGroupedExperts.Down(h, perm, w2, RefExpertActivation.SiLU, p.Dim, p.Hidden, RefRoundTo.Bf16);
        var want = RefGroupedExperts.Combine(y, perm, sampled, p.Dim);
        var got = Compare.Rows(output!.GetAsArray1D(), p.Dim, sample);
        // MoeBlockCase's tolerance, plus one BF16 step of h through one w2 weight (|w2| <= 1/sqrt(F), the fill's scale):
        // the oracle's h, computed in double, rounds to the other BF16 neighbour than the kernel's F32 h about once in
        // 4e4 values (tests/ILGpuMoE.Tests/Kernels/Moe/GroupedGemmMmaTests.cs checks the passes apart, at 1e-5).
        double flip = Math.Pow(2, -7) * h.Select(Math.Abs).DefaultIfEmpty(0f).Max() / Math.Sqrt(p.Hidden);
        return Compare.Close(got, want, 1e-4, 1e-5 + 2e-7 * Math.Sqrt((double)p.Dim * p.Hidden) + flip, Compare.Scope(sample, tokens));
    }
}
