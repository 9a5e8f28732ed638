// Quantized matmul cases (kernels/ILGpuMoE.Kernels/Quant): int8 (per-channel), int4 (group 32, f16 scales) and FP8
// E4M3 (128x128 blocks) weights, f32 activations; GEMV (split-K where the launcher would pick it) at T = 1 and the tiled
// GEMM at T > 1, at the o_proj shape [D, H*Dh] (K = H*Dh is a multiple of every group size in every preset).
// Weights are random packed codes and scales made on the device, one matrix per rotated set (Suite/DeviceQuant.cs: no
// host quantization in the device's time); the reference is RefOps.MatMulT on RefQuant's dequantization of the codes
// the kernel read. Minimum bytes: the packed weights and scales plus x and y.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class QuantFamily : IBenchFamily
{
    public string Name => "quant";

    public static readonly string[] Schemes = ["int8", "int4-g32", "fp8-block"];

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        foreach (var s in Schemes)
            yield return new QuantMatMulCase(p, tokens, s);
        foreach (var s in QuantMoeBlockCase.SchemesOf(p))
            yield return new QuantMoeBlockCase(p, tokens, s);
    }
}

public sealed class QuantMatMulCase(ShapePreset p, int tokens, string scheme) : CaseBase
{
    private readonly int outDim = p.Dim, inDim = p.QDim;
    private readonly QuantShape layout = new(SchemeOf(scheme), 1, p.Dim, p.QDim, GroupSize: 32);
    private QuantGemvKernel? gemv;
    private QuantGemmKernel? gemm;
    private int splits = 1;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, DeviceQuantWeights W)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? y, scratch;

    private static QuantScheme SchemeOf(string scheme) => scheme switch
    {
        "int8" => QuantScheme.Q8,
        "int4-g32" => QuantScheme.Q4,
        "fp8-block" => QuantScheme.Fp8,
        _ => throw new ArgumentException($"QuantMatMulCase: unknown scheme '{scheme}'"),
    };

    // Named by the kernel it times: quant/gemv v1 at T = 1, quant/gemm v1 otherwise.
    private Enum Kernel => tokens == 1 ? QuantGemvVersion.V1 : QuantGemmVersion.V1;

    public override string Family => KernelId.Family(Kernel);

    public override string Version => KernelId.Version(Kernel);

    public override string DType => scheme;

    public override int Tokens => tokens;

    public override string Shape => $"o_proj [{tokens}, {inDim}] x [{outDim}, {inDim}]^T" + (splits > 1 ? $" split-K {splits}" : "");

    public override double Flops => 2.0 * tokens * outDim * inDim;

    // Packed size from the layout: words (1 B per weight for int8/fp8, 0.5 B for int4) plus scales.
    public override double MinBytes => layout.Bytes + 4.0 * tokens * (inDim + outDim);

    public override bool IsMatmul => tokens > 1;

    public override long SetBytes => layout.Bytes + 4L * tokens * inDim;

    public override void Setup(BenchDevice d, int setCount)
    {
        if (tokens == 1)
        {
            gemv = QuantGemvKernel.Create(d.Accelerator);
            splits = QuantGemvKernel.ChooseSplits(d.Accelerator, outDim, layout.RowWords);
        }
        else
        {
            gemm = QuantGemmKernel.Create(d.Accelerator);
        }

        // Each rotated set has its own random packed weights, made on the device (Suite/DeviceQuant.cs).
        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, (long)tokens * inDim), Own(new DeviceQuantWeights(d, layout))));
        y = Floats(d, (long)tokens * outDim);
        scratch = Floats(d, Math.Max(1, QuantGemvKernel.ScratchLength(tokens, outDim, splits)));
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        var (x, w) = sets[set];
        var scr = splits > 1 ? scratch!.View : default;
        switch (layout.Scheme)
        {
            case QuantScheme.Q8:
                if (gemv is not null) gemv.Launch(stream, x.View, w.Q8, y!.View, tokens, splits, scr);
                else gemm!.Launch(stream, x.View, w.Q8, y!.View, tokens);
                break;
            case QuantScheme.Q4:
                if (gemv is not null) gemv.Launch(stream, x.View, w.Q4, y!.View, tokens, splits, scr);
                else gemm!.Launch(stream, x.View, w.Q4, y!.View, tokens);
                break;
            case QuantScheme.Fp8:
                if (gemv is not null) gemv.Launch(stream, x.View, w.Fp8, y!.View, tokens, splits, scr);
                else gemm!.Launch(stream, x.View, w.Fp8, y!.View, tokens);
                break;
            default:
                throw new InvalidOperationException($"QuantMatMulCase: unknown scheme {layout.Scheme}");
        }
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var dequant = sets[0].W.Dequantize(0);
        var sample = Compare.SampleTokens(tokens, p.CheckTokens);
        var x = Compare.Rows(sets[0].X.GetAsArray1D(), inDim, sample);
        var want = RefOps.MatMulT(x, dequant, sample.Length, outDim, inDim);
        var got = Compare.Rows(y!.GetAsArray1D(), outDim, sample);
        return Compare.Close(got, want, 1e-4, 2e-6 * Math.Sqrt(inDim), Compare.Scope(sample, tokens));
    }
}
