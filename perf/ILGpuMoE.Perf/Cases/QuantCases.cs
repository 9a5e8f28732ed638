// Quantized matmul cases (kernels/ILGpuMoE.Kernels/Quant): int8 (per-channel), int4 (group 32, f16 scales) and FP8
// E4M3 (128x128 blocks) weights, f32 activations; GEMV (split-K where the launcher would pick it) at T = 1 and the tiled
// GEMM at T > 1, at the o_proj shape [D, H*Dh] (K = H*Dh is a multiple of every group size in every preset).
// Weights are quantized on the host (Quantizer) from random floats and uploaded once per rotated set; the reference
// is RefOps.MatMulT on RefQuant's dequantization of the same matrix. Minimum bytes: the packed weights and scales
// (QuantizedMatrix.ByteSize) plus x and y.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Quant;
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
        foreach (var s in QuantMoeBlockCase.Schemes)
            yield return new QuantMoeBlockCase(p, tokens, s);
    }
}

public sealed class QuantMatMulCase(ShapePreset p, int tokens, string scheme) : CaseBase
{
    private readonly int outDim = p.Dim, inDim = p.QDim;
    private QuantizedMatrix? host;
    private QuantGemvKernel? gemv;
    private QuantGemmKernel? gemm;
    private int splits = 1;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, DeviceQuantMatrix W)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? y, scratch;

    public override string Family => "quant/matmul";

    public override string Version => tokens == 1 ? "gemv" : "gemm";

    public override string DType => scheme;

    public override int Tokens => tokens;

    public override string Shape => $"o_proj [{tokens}, {inDim}] x [{outDim}, {inDim}]^T" + (splits > 1 ? $" split-K {splits}" : "");

    public override double Flops => 2.0 * tokens * outDim * inDim;

    // Packed size from the layout: words (1 B per weight for int8/fp8, 0.5 B for int4) plus scales, as the host matrix reports.
    public override double MinBytes => (host?.ByteSize ?? (long)outDim * inDim) + 4.0 * tokens * (inDim + outDim);

    public override bool IsMatmul => tokens > 1;

    public override long SetBytes => (long)outDim * inDim + 4L * tokens * inDim;

    public override void Setup(BenchDevice d, int setCount)
    {
        var rng = new Random(4242 + tokens);
        var w = new float[(long)outDim * inDim];
        float scale = 1f / MathF.Sqrt(inDim);
        for (long i = 0; i < w.Length; i++)
            w[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        host = scheme switch
        {
            "int8" => Quantizer.QuantizeQ8(w, outDim, inDim),
            "int4-g32" => Quantizer.QuantizeQ4(w, outDim, inDim, 32, symmetric: true),
            _ => Quantizer.QuantizeFp8(w, outDim, inDim),
        };
        if (tokens == 1)
        {
            gemv = QuantGemvKernel.Create(d.Accelerator);
            splits = QuantGemvKernel.ChooseSplits(d.Accelerator, outDim, host.RowWords);
        }
        else
        {
            gemm = QuantGemmKernel.Create(d.Accelerator);
        }

        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, (long)tokens * inDim), Own(host.Upload(d.Accelerator))));
        y = Floats(d, (long)tokens * outDim);
        scratch = Floats(d, Math.Max(1, QuantGemvKernel.ScratchLength(tokens, outDim, splits)));
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        var (x, w) = sets[set];
        var scr = splits > 1 ? scratch!.View : default;
        switch (host!.Scheme)
        {
            case QuantScheme.Q8:
                if (gemv is not null) gemv.Launch(stream, x.View, w.Q8, y!.View, tokens, splits, scr);
                else gemm!.Launch(stream, x.View, w.Q8, y!.View, tokens);
                break;
            case QuantScheme.Q4:
                if (gemv is not null) gemv.Launch(stream, x.View, w.Q4, y!.View, tokens, splits, scr);
                else gemm!.Launch(stream, x.View, w.Q4, y!.View, tokens);
                break;
            default:
                if (gemv is not null) gemv.Launch(stream, x.View, w.Fp8, y!.View, tokens, splits, scr);
                else gemm!.Launch(stream, x.View, w.Fp8, y!.View, tokens);
                break;
        }
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var m = host!;
        var dequant = m.Scheme switch
        {
            QuantScheme.Q8 => RefQuant.DequantQ8(m.Words, m.Scales32, m.Rows, m.Cols),
            QuantScheme.Q4 => RefQuant.DequantQ4(m.Words, m.Scales16, m.Zeros, m.Rows, m.Cols, m.GroupSize),
            _ => RefQuant.DequantFp8(m.Words, m.Scales32, m.Rows, m.Cols, m.MatrixRows, m.BlockN, m.BlockK),
        };
        var sample = Compare.SampleTokens(tokens, p.CheckTokens);
        var x = Compare.Rows(sets[0].X.GetAsArray1D(), inDim, sample);
        var want = RefOps.MatMulT(x, dequant, sample.Length, outDim, inDim);
        var got = Compare.Rows(y!.GetAsArray1D(), outDim, sample);
        return Compare.Close(got, want, 1e-4, 2e-6 * Math.Sqrt(inDim), Compare.Scope(sample, tokens));
    }
}
