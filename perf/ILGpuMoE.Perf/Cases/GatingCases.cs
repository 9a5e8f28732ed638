// Gating cases (kernels/ILGpuMoE.Kernels/Moe/Gating): router logits [T, E] -> ids [T, K], weights [T, K], V1 (thread
// per token) and V2 (warp per token), in the preset's router mode (Mixtral, softmax top-k, DeepSeek-V3 grouped).
// FLOPs: ~ (K + 3) * E per token (exp, compares of the K selection passes); it is a bandwidth and latency kernel.
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class GatingFamily : IBenchFamily
{
    public string Name => "gating";

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        yield return new GatingCase(p, tokens, GatingVersion.V1);
        yield return new GatingCase(p, tokens, GatingVersion.V2);
    }

    public static RouterSpec Spec(ShapePreset p) => p.Router switch
    {
        RouterKind.Mixtral => RouterSpec.Mixtral(p.Experts, p.TopK),
        RouterKind.SoftmaxTopK => RouterSpec.SoftmaxTopK(p.Experts, p.TopK),
        RouterKind.DeepSeekV3 => RouterSpec.DeepSeekV3(p.Experts, p.TopK, p.RouterGroups, p.RouterTopKGroups, normTopK: true, scalingFactor: 2.5),
        RouterKind.Switch or RouterKind.NoisyTopK => throw new NotSupportedException($"preset {p.Name}: no gating case for router {p.Router}"),
        _ => throw new UnreachableException($"preset {p.Name}: router kind {(int)p.Router}"),
    };

    public static RefRouterSpec ToRef(RouterSpec s) => new(s.Kind, s.Experts, s.TopK, s.CapacityFactor,
        s.NoiseSeed, s.Groups, s.TopKGroups, s.NormTopK, s.ScalingFactor, s.SharedSlots);
}

public sealed class GatingCase(ShapePreset p, int tokens, GatingVersion version) : CaseBase
{
    private readonly RouterSpec spec = GatingFamily.Spec(p);
    private GatingKernel? kernel;
    private readonly List<MemoryBuffer1D<float, Stride1D.Dense>> logits = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? bias, weights;
    private MemoryBuffer1D<int, Stride1D.Dense>? ids;

    public override string Family => KernelId.Family(version);

    public override string Version => KernelId.Version(version);

    public override int Tokens => tokens;

    public override string Shape => $"{spec} T={tokens}";

    public override double Flops => (double)tokens * p.Experts * (p.TopK + 3);

    public override double MinBytes => 4.0 * tokens * p.Experts + 8.0 * tokens * p.TopK + (p.Router == RouterKind.DeepSeekV3 ? 4.0 * p.Experts : 0);

    public override long SetBytes => 4L * tokens * p.Experts;

    public override void Setup(BenchDevice d, int setCount)
    {
        kernel = Own(GatingKernel.Create(d.Accelerator, version));
        for (int i = 0; i < setCount; i++)
            logits.Add(Floats(d, (long)tokens * p.Experts, 4f));
        bias = Floats(d, p.Experts, 0.5f);
        ids = Ints(d, (long)tokens * p.TopK, 1);
        weights = Floats(d, (long)tokens * p.TopK);
    }

    public override void Run(AcceleratorStream stream, int set) =>
        kernel!.Launch(stream, spec, logits[set].View, ids!.View, weights!.View, tokens,
            bias: p.Router == RouterKind.DeepSeekV3 ? bias!.View : default);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var want = RefMoe.Route(GatingFamily.ToRef(spec), logits[0].GetAsArray1D(), tokens,
            bias: p.Router == RouterKind.DeepSeekV3 ? bias!.GetAsArray1D() : default);
        var scope = $"all {tokens} tokens";
        var idCheck = Compare.Equal(ids!.GetAsArray1D(), want.ExpertIds, scope);
        return idCheck.Passed ? Compare.Close(weights!.GetAsArray1D(), want.Weights, 1e-5, 1e-6, scope) : idCheck;
    }
}
