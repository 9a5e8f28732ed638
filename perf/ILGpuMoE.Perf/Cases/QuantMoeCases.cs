// Quantized MoE block case (kernels/ILGpuMoE.Kernels/Quant, QuantMoeBlockKernels<TQ>): permute + grouped up/gate +
// grouped down over int8 (per channel), int4 (G = 128, f16 scales, symmetric), FP8 E4M3 (128x128 blocks) or MXFP4
// (gpt-oss: E2M1 codes, an E8M0 scale per 32 values, 4.25 bits per value; Quant/Mxfp4.cs) experts +
// weighted combine, f32 activations; V4 (packed decode GEMV) at T = 1, V2 tiled at T > 1 (V1 and V3 exist only for
// float experts). Routing as in the float MoE block case (MoeFamily.Routing).
// int4-g128-act: the same int4 experts as GPTQ act-order leaves them (w1/w3 columns in a per-expert random order,
// [E, D] permutation), so the block runs its per-pair input gather first: side by side with int4-g128 it measures
// what act-order costs (w2's order is folded into w1/w3's rows at load and costs nothing, so it is not modelled).
// FLOPs: 6 * T * K * F * D. Minimum bytes: the packed bytes (weights + scales) of the experts the routing hits, read
// once, plus x, out, ids and weights. Reference: RefMoe.MoeBlock on RefQuant's dequantization of the same packed experts.
// int4 needs D and F to be multiples of G = 128 (MXFP4: of its block, 32): where a preset's are not (tiny, smoke), the
// case pads both up to the next multiple and says so in its shape, rather than silently changing the group size.
// gpt-oss presets (Family GptOss): the experts' clamped GLU (alpha 1.702, limit 7) with random gate/up [E, F] and down
// [E, D] biases, ExpertGlu.GptOss, checked against RefExpertGlu.MoeBlock; every other preset runs SiLU without biases.
// Experts are random packed codes and scales made on the device (Suite/DeviceQuant.cs): quantizing Mixtral's 1.4 G
// expert weights per scheme on the host took tens of seconds of the GPU machine's window. The check downloads and
// dequantizes only the experts its sampled tokens use.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class QuantMoeBlockCase(ShapePreset p, int tokens, string scheme) : CaseBase
{
    public static readonly string[] Schemes = ["int8", "int4-g128", "int4-g128-act", "fp8-block", "mxfp4"];

    /// <summary>The preset's schemes: its QuantMoeSchemes, else every scheme.</summary>
    public static IReadOnlyList<string> SchemesOf(ShapePreset p) => p.QuantMoeSchemes ?? Schemes;

    private const int Q4Group = 128;

    // gpt-oss's swiglu_alpha and swiglu_limit (its config.json).
    private const float GptOssAlpha = 1.702f, GptOssLimit = 7f;

    private readonly (int[] Ids, float[] Weights) routing = MoeFamily.Routing(tokens, p.Experts, p.TopK, 4321 + tokens);
    private readonly int dim = Pad(p.Dim, scheme), hidden = Pad(p.Hidden, scheme);
    private DeviceQuantWeights? d1, d3, d2;
    private MoeWorkspace? workspace;
    private QuantMoeBlockKernels<Q8Weights>? k8;
    private QuantMoeBlockKernels<Q4Weights>? k4;
    private QuantMoeBlockKernels<Fp8Weights>? kf;
    private QuantMoeBlockKernels<Mxfp4Weights>? kx;
    private MemoryBuffer1D<float, Stride1D.Dense>? gateBias, upBias, downBias;
    private ExpertGlu glu;
    private readonly List<MemoryBuffer1D<float, Stride1D.Dense>> xs = [];
    private MemoryBuffer1D<int, Stride1D.Dense>? ids, perm;
    private int[] perms = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? weights, output;

    private static int Pad(int n, string scheme) => scheme.StartsWith("int4", StringComparison.Ordinal) ? RoundUp(n, Q4Group)
        : scheme == "mxfp4" ? RoundUp(n, RefMxfp4.BlockSize) : n;

    private static int RoundUp(int n, int multiple) => (n + multiple - 1) / multiple * multiple;

    private bool GptOss => p.Family == RefFamily.GptOss;

    private QuantScheme Scheme => scheme switch
    {
        "int8" => QuantScheme.Q8,
        "int4-g128" or "int4-g128-act" => QuantScheme.Q4,
        "fp8-block" => QuantScheme.Fp8,
        "mxfp4" => QuantScheme.Mxfp4,
        _ => throw new ArgumentException($"QuantMoeBlockCase: unknown scheme '{scheme}'"),
    };

    // w1/w3 [E*F, D], w2 [E*D, F], stacked per expert.
    private QuantShape UpShape => new(Scheme, p.Experts, hidden, dim, GroupSize: Q4Group);

    private QuantShape DownShape => new(Scheme, p.Experts, dim, hidden, GroupSize: Q4Group);

    private GroupedGemmVersion GemmVersion => tokens == 1 ? GroupedGemmVersion.V4PackedGemv : GroupedGemmVersion.V2Tiled;

    // Named by the grouped GEMM version it runs, the scheme as its dtype (moe/grouped-gemm v4-packed-gemv int8).
    public override string Family => KernelId.Family(GemmVersion);

    public override string Version => KernelId.Version(GemmVersion);

    public override string DType => scheme;

    public override int Tokens => tokens;

    public override string Shape => $"E={p.Experts} K={p.TopK} D={dim} F={hidden}" + (dim != p.Dim || hidden != p.Hidden ? " (padded to G)" : "")
        + $" ({HitExperts} experts hit)" + (GptOss ? ", gpt-oss GLU + biases" : "");

    private int HitExperts => routing.Ids.Distinct().Count();

    public override double Flops => 6.0 * tokens * p.TopK * hidden * dim;

    // Every expert packs to the same size, so the hit experts' bytes are HitExperts times one expert's three matrices.
    private double ExpertBytes => 2.0 * UpShape.BytesPerMatrix + DownShape.BytesPerMatrix;

    // Act-order adds each hit expert's D permutation entries (the gathered rows could be fused away; they are not counted);
    // gpt-oss each hit expert's biases (2F + D floats).
    public override double MinBytes => HitExperts * (ExpertBytes + (ActOrder ? 4.0 * dim : 0) + (GptOss ? 4.0 * (2 * hidden + dim) : 0))
        + 8.0 * tokens * dim + 8.0 * tokens * p.TopK;

    private bool ActOrder => scheme.EndsWith("-act", StringComparison.Ordinal);

    public override bool IsMatmul => tokens > 1;

    public override long SetBytes => (long)(p.Experts * ExpertBytes) + 4L * tokens * dim;

    public override void Setup(BenchDevice d, int setCount)
    {
        var acc = d.Accelerator;
        d1 = Own(new DeviceQuantWeights(d, UpShape));
        d3 = Own(new DeviceQuantWeights(d, UpShape));
        d2 = Own(new DeviceQuantWeights(d, DownShape));
        switch (Scheme)
        {
            case QuantScheme.Q8: k8 = QuantMoeBlockKernels<Q8Weights>.Create(acc); break;
            case QuantScheme.Q4: k4 = QuantMoeBlockKernels<Q4Weights>.Create(acc); break;
            case QuantScheme.Fp8: kf = QuantMoeBlockKernels<Fp8Weights>.Create(acc); break;
            case QuantScheme.Mxfp4: kx = QuantMoeBlockKernels<Mxfp4Weights>.Create(acc); break;
            default: throw new InvalidOperationException($"QuantMoeBlockCase: unknown scheme {Scheme}");
        }

        if (GptOss)
        {
            // Gate/up biases in [-8, 8): about one pre-activation in 16 passes a clamp at +-7, so the check sees the
            // clamped and the plain branch of both (x . W alone is O(1) and would never reach 7).
            gateBias = Floats(d, (long)p.Experts * hidden, 8f);
            upBias = Floats(d, (long)p.Experts * hidden, 8f);
            downBias = Floats(d, (long)p.Experts * dim);
            glu = ExpertGlu.GptOss(GptOssAlpha, GptOssLimit, gateBias.View, upBias.View, downBias.View);
        }

        workspace = Own(new MoeWorkspace(acc, tokens, p.TopK, p.Experts, dim, hidden, permutedInput: ActOrder));
        if (ActOrder)
        {
            perms = new int[p.Experts * dim];
            for (int e = 0; e < p.Experts; e++)
            {
                var rng = new Random(77 + e);
                Enumerable.Range(0, dim).OrderBy(_ => rng.Next()).ToArray().CopyTo(perms, e * dim);
            }

            perm = Own(acc.Allocate1D(perms));
        }

        // The packed experts are one set (they dominate); only x rotates.
        for (int i = 0; i < setCount; i++)
            xs.Add(Floats(d, (long)tokens * dim));
        ids = Own(acc.Allocate1D(routing.Ids));
        weights = Own(acc.Allocate1D(routing.Weights));
        output = Floats(d, (long)tokens * dim);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        var x = xs[set].View;
        if (k8 is not null)
            k8.Launch(stream, workspace!, x, ids!.View, weights!.View, tokens, d1!.Q8, d3!.Q8, d2!.Q8, output!.View, version: GemmVersion, glu: glu);
        else if (k4 is not null)
            k4.Launch(stream, workspace!, x, ids!.View, weights!.View, tokens, d1!.Q4, d3!.Q4, d2!.Q4, output!.View, version: GemmVersion,
                inputPermutation: perm is null ? default : perm.View, glu: glu);
        else if (kx is not null)
            kx.Launch(stream, workspace!, x, ids!.View, weights!.View, tokens, d1!.Mxfp4, d3!.Mxfp4, d2!.Mxfp4, output!.View, version: GemmVersion, glu: glu);
        else
            kf!.Launch(stream, workspace!, x, ids!.View, weights!.View, tokens, d1!.Fp8, d3!.Fp8, d2!.Fp8, output!.View, version: GemmVersion, glu: glu);
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var sample = Compare.SampleTokens(tokens, p.CheckTokens);
        int k = p.TopK;
        // As in the float MoE block case: only the experts the sampled tokens use are dequantized, renumbered 0..m-1.
        var (used, sampled) = MoeFamily.SampledRouting(routing, sample, k);

        var q1 = used.Select(e => InputOrder(d1!.Dequantize(e), e)).ToList();
        var q3 = used.Select(e => InputOrder(d3!.Dequantize(e), e)).ToList();
        var q2 = used.Select(e => d2!.Dequantize(e)).ToList();
        var x = Compare.Rows(xs[0].GetAsArray1D(), dim, sample);
        var want = GptOss
            ? RefExpertGlu.MoeBlock(x, sampled, q1, q3, q2, BiasRows(gateBias!, used, hidden), BiasRows(upBias!, used, hidden),
                BiasRows(downBias!, used, dim), sample.Length, dim, hidden, GptOssAlpha, GptOssLimit)
            : RefMoe.MoeBlock(x, sampled, q1, q3, q2, sample.Length, dim, hidden);
        var got = Compare.Rows(output!.GetAsArray1D(), dim, sample);
        return Compare.Close(got, want, 1e-4, 1e-5 + 2e-7 * Math.Sqrt((double)dim * hidden), Compare.Scope(sample, tokens));
    }

    // The used experts' rows of an [E, n] bias, in the renumbered order of the sampled routing.
    private static float[][] BiasRows(MemoryBuffer1D<float, Stride1D.Dense> bias, IEnumerable<int> used, int n)
    {
        var all = bias.GetAsArray1D();
        return used.Select(e => all.AsSpan(e * n, n).ToArray()).ToArray();
    }

    // Act-order: packed column j of expert e is input column perms[e, j]; the reference wants W in input order.
    private float[] InputOrder(float[] packed, int e)
    {
        if (!ActOrder)
            return packed;
        var w = new float[packed.Length];
        for (int n = 0; n < hidden; n++)
        {
            for (int j = 0; j < dim; j++)
                w[(long)n * dim + perms[e * dim + j]] = packed[(long)n * dim + j];
        }

        return w;
    }
}
