// Dense cases (kernels/ILGpuMoE.Kernels/Dense): matmul V1/V2 (T > 1), GEMV V1/V2 (T = 1) at the q_proj shape
// [H*Dh, D] and the lm_head shape [V, D]; rmsnorm, rope (V1; V2HeadNorm and V3WarpNorm with Qwen3's per-head q/k norm),
// bias-clip on the q_proj output, swiglu (V1 split, V2 fused), softmax over V, embedding, add.
// FLOPs count a multiply-add as 2; elementwise kernels count their arithmetic (an exp as 1). Minimum bytes: inputs read
// once, outputs written once (perf/notes/dense.md has the same counts at Mixtral shapes).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class DenseFamily : IBenchFamily
{
    public string Name => "dense";

    /// <summary>Weight types timed for the matmuls: f32 and bf16 (the checkpoint type of real models).</summary>
    public static readonly WeightType[] MatMulTypes = [WeightType.F32, WeightType.BF16];

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        foreach (var type in MatMulTypes)
        {
            foreach (var v in tokens == 1 ? new[] { MatMulVersion.V1, MatMulVersion.GemvV1, MatMulVersion.GemvV2 } : [MatMulVersion.V1, MatMulVersion.V2])
            {
                yield return new MatMulCase(p, tokens, type, v, "q_proj", p.QDim, p.Dim);
                // lm_head runs on the last token of a step (sampling); at T > 1 only the tiled kernel is worth timing.
                if (tokens == 1 || v == MatMulVersion.V2)
                    yield return new MatMulCase(p, tokens, type, v, "lm_head", p.Vocab, p.Dim);
            }
        }

        yield return new RmsNormCase(p, tokens, WeightType.BF16);
        yield return new RopeCase(p, tokens, RopeVersion.V1);
        yield return new RopeCase(p, tokens, RopeVersion.V2HeadNorm);
        yield return new RopeCase(p, tokens, RopeVersion.V3WarpNorm);
        yield return new RopeCase(p, tokens, RopeVersion.V1, yarn: true);
        yield return new BiasClipCase(p, tokens);
        yield return new SwiGluCase(p, tokens, fused: false);
        yield return new SwiGluCase(p, tokens, fused: true);
        // Softmax over the vocabulary is for sampling: a few rows per step, never thousands.
        if (tokens <= 64 || p.IsSmall)
            yield return new SoftmaxCase(p, tokens);
        yield return new EmbeddingCase(p, tokens, WeightType.BF16);
        yield return new AddCase(p, tokens);
    }

    /// <summary>GPU only: a square f32 V2 matmul large enough to reach the kernel's best throughput (the compute ceiling).</summary>
    public IBenchCase? CeilingCase(ShapePreset p, BenchDevice device) =>
        device.IsGpu ? new MatMulCase(p, 4096, WeightType.F32, MatMulVersion.V2, "square", 4096, 4096) : null;
}

public sealed class MatMulCase(ShapePreset p, int tokens, WeightType type, MatMulVersion version, string what, int outDim, int inDim) : CaseBase
{
    private MatMulKernel<F32Weights>? k32;
    private MatMulKernel<F16Weights>? k16;
    private MatMulKernel<BF16Weights>? kbf;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, WeightBuffer W)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? y;

    public override string Family => KernelId.Family(version);

    public override string Version => KernelId.Version(version);

    public override string DType => WeightTypes.Label(type);

    public override int Tokens => tokens;

    public override string Shape => $"{what} [{tokens}, {inDim}] x [{outDim}, {inDim}]^T";

    public override double Flops => 2.0 * tokens * outDim * inDim;

    public override double MinBytes => (double)outDim * inDim * WeightTypes.Bytes(type) + 4.0 * tokens * (inDim + outDim);

    public override bool IsMatmul => true;

    public override long SetBytes => (long)outDim * inDim * WeightTypes.Bytes(type) + 4L * tokens * inDim;

    public override void Setup(BenchDevice d, int setCount)
    {
        switch (type)
        {
            case WeightType.F32: k32 = MatMulKernel.Create<F32Weights>(d.Accelerator); break;
            case WeightType.F16: k16 = MatMulKernel.Create<F16Weights>(d.Accelerator); break;
            case WeightType.BF16: kbf = MatMulKernel.Create<BF16Weights>(d.Accelerator); break;
            default: throw new ArgumentOutOfRangeException(nameof(d), type, "MatMulCase: unknown weight type");
        }

        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, (long)tokens * inDim), Weights(d, type, (long)outDim * inDim, 1f / MathF.Sqrt(inDim))));
        y = Floats(d, (long)tokens * outDim);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        var (x, w) = sets[set];
        switch (type)
        {
            case WeightType.F32: Launch(k32!, w.F32, stream, x.View); break;
            case WeightType.F16: Launch(k16!, w.F16, stream, x.View); break;
            case WeightType.BF16: Launch(kbf!, w.BF16, stream, x.View); break;
            default: throw new ArgumentOutOfRangeException(nameof(set), type, "MatMulCase: unknown weight type");
        }
    }

    private void Launch<TW>(MatMulKernel<TW> k, TW w, AcceleratorStream s, ArrayView<float> x)
        where TW : struct, IWeights
    {
        k.Launch(version, s, x, w, y!.View, tokens, outDim, inDim);
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var sample = Compare.SampleTokens(tokens, p.CheckTokens);
        var x = Compare.Rows(sets[0].X.GetAsArray1D(), inDim, sample);
        // V3-MMA multiplies x rounded to the weights' 16-bit type (MatMulMma.cs): the oracle rounds it the same way.
        if (version == MatMulVersion.V3Mma)
            x = type == WeightType.F16 ? RefRounding.ToF16(x) : RefRounding.ToBf16(x);
        // Large weights (lm_head at V = 129K): the reference recomputes a spread of output rows, not all of them.
        var outs = (long)outDim * inDim > (16L << 20) ? Compare.SampleTokens(outDim, 256) : Enumerable.Range(0, outDim).ToArray();
        var w = new float[(long)outs.Length * inDim];
        for (int i = 0; i < outs.Length; i++)
            sets[0].W.Download((long)outs[i] * inDim, inDim).CopyTo(w.AsSpan(i * inDim, inDim));
        var want = RefOps.MatMulT(x, w, sample.Length, outs.Length, inDim);
        var all = y!.GetAsArray1D();
        var got = new float[sample.Length * outs.Length];
        for (int t = 0; t < sample.Length; t++)
        {
            for (int i = 0; i < outs.Length; i++)
                got[t * outs.Length + i] = all[(long)sample[t] * outDim + outs[i]];
        }

        string scope = Compare.Scope(sample, tokens) + (outs.Length == outDim ? "" : $", {outs.Length} of {outDim} outputs");
        return Compare.Close(got, want, 1e-4, 2e-6 * Math.Sqrt(inDim), scope);
    }
}

public sealed class RmsNormCase(ShapePreset p, int tokens, WeightType type) : CaseBase
{
    private const float Eps = 1e-5f;
    private RmsNormKernel<BF16Weights>? kbf;
    private RmsNormKernel<F32Weights>? k32;
    private readonly List<MemoryBuffer1D<float, Stride1D.Dense>> xs = [];
    private WeightBuffer? w;
    private MemoryBuffer1D<float, Stride1D.Dense>? y;

    public override string Family => KernelId.Family(RmsNormVersion.V1);

    public override string Version => KernelId.Version(RmsNormVersion.V1);

    public override string DType => WeightTypes.Label(type);

    public override int Tokens => tokens;

    public override string Shape => $"[{tokens}, {p.Dim}]";

    public override double Flops => 4.0 * tokens * p.Dim;

    public override double MinBytes => 8.0 * tokens * p.Dim + (double)p.Dim * WeightTypes.Bytes(type);

    public override long SetBytes => 4L * tokens * p.Dim;

    public override void Setup(BenchDevice d, int setCount)
    {
        if (type == WeightType.F32)
            k32 = RmsNormKernel.Create<F32Weights>(d.Accelerator);
        else
            kbf = RmsNormKernel.Create<BF16Weights>(d.Accelerator);
        for (int i = 0; i < setCount; i++)
            xs.Add(Floats(d, (long)tokens * p.Dim));
        w = Weights(d, type, p.Dim, 1f);
        y = Floats(d, (long)tokens * p.Dim);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        if (type == WeightType.F32)
            k32!.Launch(stream, xs[set].View, w!.F32, y!.View, tokens, p.Dim, Eps);
        else
            kbf!.Launch(stream, xs[set].View, w!.BF16, y!.View, tokens, p.Dim, Eps);
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var want = RefOps.RmsNorm(xs[0].GetAsArray1D(), w!.Download(), tokens, p.Dim, Eps);
        return Compare.Close(y!.GetAsArray1D(), want, 1e-5, 1e-6, $"all {tokens} tokens");
    }
}

/// <summary>RoPE in place on q and k: each timed run rotates the set again (same work, data stays random). V2HeadNorm and
/// V3WarpNorm run with the per-head q/k norm (F32 weights [Dh]), checked against RefOps.HeadNormRope. yarn: V1 with
/// gpt-oss' YaRN spec over Dh (factor 32, original 4096, beta 32 / 1, truncate false; the preset's theta), checked
/// against RefRope.Apply.</summary>
public sealed class RopeCase(ShapePreset p, int tokens, RopeVersion version, bool yarn = false) : CaseBase
{
    private const float NormEps = 1e-6f;
    private static readonly YarnScaling GptOssYarn = new(32, 4096, 32, 1, Truncate: false);
    private readonly bool norm = version != RopeVersion.V1;
    private readonly RopeSpec? spec = yarn ? new RopeSpec(p.HeadDim, p.RopeTheta) { Yarn = GptOssYarn } : null;
    private RopeKernel? kernel;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> Q, MemoryBuffer1D<float, Stride1D.Dense> K, MemoryBuffer1D<int, Stride1D.Dense> Pos)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? qw, kw;

    public override string Family => KernelId.Family(version);

    public override string Version => KernelId.Version(version);

    public override int Tokens => tokens;

    public override string Shape => $"q [{tokens}, {p.Heads}, {p.HeadDim}] k [{tokens}, {p.KvHeads}, {p.HeadDim}]" + (yarn ? " yarn" : "");

    private long Elements => (long)tokens * (p.Heads + p.KvHeads) * p.HeadDim;

    // The norm adds a square-add, the scale and the weight per element.
    public override double Flops => (norm ? 6.0 : 3.0) * Elements;

    public override double MinBytes => 8.0 * Elements + 4.0 * tokens + (norm ? 8.0 * p.HeadDim : 0);

    public override long SetBytes => 4 * Elements + 4L * tokens;

    public override void Setup(BenchDevice d, int setCount)
    {
        kernel = Own(RopeKernel.Create(d.Accelerator));
        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, (long)tokens * p.QDim), Floats(d, (long)tokens * p.KvDim), Ints(d, tokens, Math.Max(p.KvLength, 2))));
        qw = Floats(d, p.HeadDim);
        kw = Floats(d, p.HeadDim);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        if (spec is not null)
            kernel!.Launch(stream, sets[set].Q.View, sets[set].K.View, sets[set].Pos.View, tokens, p.Heads, p.KvHeads, spec, p.HeadDim, p.HeadDim, version: version);
        else
            kernel!.Launch(stream, sets[set].Q.View, sets[set].K.View, sets[set].Pos.View, tokens, p.Heads, p.KvHeads, p.HeadDim, p.RopeTheta,
                norm ? qw!.View : default, norm ? kw!.View : default, NormEps, version);
    }

    private float[] Expected(float[] x, int[] pos, int heads, MemoryBuffer1D<float, Stride1D.Dense> w)
    {
        if (spec is not null)
        {
            var y = (float[])x.Clone();
            var y0 = spec.Yarn!;
            var inv = RefRope.InvFreq(spec.RotaryDim, spec.Theta, new RefYarn(y0.Factor, y0.OriginalMaxPositions, y0.BetaFast, y0.BetaSlow, y0.Truncate));
            RefRope.Apply(y, pos, tokens, heads, p.HeadDim, 0, inv, spec.CosSinFactor, interleaved: false);
            return y;
        }

        return norm
            ? RefOps.HeadNormRope(x, w.GetAsArray1D(), pos, tokens, heads, p.HeadDim, NormEps, p.RopeTheta)
            : RefOps.Rope(x, pos, tokens, heads, p.HeadDim, p.RopeTheta);
    }

    public override CheckResult Check(BenchDevice d)
    {
        d.Stream.Synchronize();
        var q = sets[0].Q.GetAsArray1D();
        var k = sets[0].K.GetAsArray1D();
        var pos = sets[0].Pos.GetAsArray1D();
        RunOnce(d);
        // Normalised heads are O(1) times the weights: a few ulp more absolute room than the plain rotation of |x| <= 1.
        double atol = norm ? 2e-6 : yarn ? 5e-7 : 3e-7; // YaRN's cos/sin factor 1.35 scales the rotation's rounding
        var rq = Compare.Close(sets[0].Q.GetAsArray1D(), Expected(q, pos, p.Heads, qw!), 1e-5, atol, $"q, all {tokens} tokens");
        if (!rq.Passed)
            return rq;
        return Compare.Close(sets[0].K.GetAsArray1D(), Expected(k, pos, p.KvHeads, kw!), 1e-5, atol, $"q and k, all {tokens} tokens");
    }
}

/// <summary>The q projection's epilogue in place: y [T, H*Dh] + bias (BF16) clipped to [-1, 1] (Qwen2-MoE bias, OLMoE clip).</summary>
public sealed class BiasClipCase(ShapePreset p, int tokens) : CaseBase
{
    private const float Clip = 1f;
    private BiasClipKernel<BF16Weights>? kernel;
    private readonly List<MemoryBuffer1D<float, Stride1D.Dense>> ys = [];
    private WeightBuffer? bias;

    public override string Family => KernelId.Family(BiasClipVersion.V1);

    public override string Version => KernelId.Version(BiasClipVersion.V1);

    public override string DType => WeightTypes.Label(WeightType.BF16);

    public override int Tokens => tokens;

    public override string Shape => $"[{tokens}, {p.QDim}]";

    public override double Flops => 3.0 * tokens * p.QDim;

    public override double MinBytes => 8.0 * tokens * p.QDim + 2.0 * p.QDim;

    public override long SetBytes => 4L * tokens * p.QDim;

    public override void Setup(BenchDevice d, int setCount)
    {
        kernel = BiasClipKernel.Create<BF16Weights>(d.Accelerator);
        for (int i = 0; i < setCount; i++)
            ys.Add(Floats(d, (long)tokens * p.QDim, 2f));
        bias = Weights(d, WeightType.BF16, p.QDim, 0.5f);
    }

    public override void Run(AcceleratorStream stream, int set) => kernel!.Launch(stream, ys[set].View, tokens, p.QDim, bias!.BF16, Clip);

    public override CheckResult Check(BenchDevice d)
    {
        d.Stream.Synchronize();
        var y = ys[0].GetAsArray1D();
        RunOnce(d);
        return Compare.Close(ys[0].GetAsArray1D(), RefOps.BiasClip(y, bias!.Download(), tokens, p.QDim, Clip), 1e-6, 1e-7, $"all {tokens} tokens");
    }
}

/// <summary>SwiGLU on the expert hidden dim: V1 gate [T*F], up [T*F]; V2 fused gu [T, 2F] (the stacked w1|w3 matmul's output).</summary>
public sealed class SwiGluCase(ShapePreset p, int tokens, bool fused) : CaseBase
{
    private SwiGluKernel? kernel;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> A, MemoryBuffer1D<float, Stride1D.Dense>? B)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? y;

    private SwiGluVersion Kernel => fused ? SwiGluVersion.V2Fused : SwiGluVersion.V1;

    public override string Family => KernelId.Family(Kernel);

    public override string Version => KernelId.Version(Kernel);

    public override int Tokens => tokens;

    public override string Shape => $"[{tokens}, {p.Hidden}]";

    private long N => (long)tokens * p.Hidden;

    public override double Flops => 4.0 * N;

    public override double MinBytes => 12.0 * N;

    public override long SetBytes => 8 * N;

    public override void Setup(BenchDevice d, int setCount)
    {
        kernel = SwiGluKernel.Create(d.Accelerator);
        for (int i = 0; i < setCount; i++)
            sets.Add(fused ? (Floats(d, 2 * N, 4f), null) : (Floats(d, N, 4f), Floats(d, N, 4f)));
        y = Floats(d, N);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        if (fused)
            kernel!.LaunchFused(stream, sets[set].A.View, y!.View, tokens, p.Hidden);
        else
            kernel!.Launch(stream, sets[set].A.View, sets[set].B!.View, y!.View);
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        float[] gate, up;
        if (fused)
        {
            var gu = sets[0].A.GetAsArray1D();
            gate = new float[N];
            up = new float[N];
            for (int t = 0; t < tokens; t++)
            {
                gu.AsSpan(2 * t * p.Hidden, p.Hidden).CopyTo(gate.AsSpan(t * p.Hidden));
                gu.AsSpan((2 * t + 1) * p.Hidden, p.Hidden).CopyTo(up.AsSpan(t * p.Hidden));
            }
        }
        else
        {
            gate = sets[0].A.GetAsArray1D();
            up = sets[0].B!.GetAsArray1D();
        }

        return Compare.Close(y!.GetAsArray1D(), RefOps.SwiGlu(gate, up), 1e-5, 1e-7, $"all {tokens} tokens");
    }
}

/// <summary>Row softmax over the vocabulary (sampling's probabilities).</summary>
public sealed class SoftmaxCase(ShapePreset p, int tokens) : CaseBase
{
    private SoftmaxKernel? kernel;
    private readonly List<MemoryBuffer1D<float, Stride1D.Dense>> xs = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? y;

    public override string Family => KernelId.Family(SoftmaxVersion.V1);

    public override string Version => KernelId.Version(SoftmaxVersion.V1);

    public override int Tokens => tokens;

    public override string Shape => $"[{tokens}, {p.Vocab}]";

    private long N => (long)tokens * p.Vocab;

    public override double Flops => 4.0 * N;

    public override double MinBytes => 8.0 * N;

    public override long SetBytes => 4 * N;

    public override void Setup(BenchDevice d, int setCount)
    {
        kernel = SoftmaxKernel.Create(d.Accelerator);
        for (int i = 0; i < setCount; i++)
            xs.Add(Floats(d, N, 8f));
        y = Floats(d, N);
    }

    public override void Run(AcceleratorStream stream, int set) => kernel!.Launch(stream, xs[set].View, y!.View, tokens, p.Vocab);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        return Compare.Close(y!.GetAsArray1D(), RefOps.Softmax(xs[0].GetAsArray1D(), tokens, p.Vocab), 1e-5, 1e-7, $"all {tokens} tokens");
    }
}

public sealed class EmbeddingCase(ShapePreset p, int tokens, WeightType type) : CaseBase
{
    private EmbeddingKernel<BF16Weights>? kbf;
    private EmbeddingKernel<F32Weights>? k32;
    private readonly List<MemoryBuffer1D<int, Stride1D.Dense>> ids = [];
    private WeightBuffer? table;
    private MemoryBuffer1D<float, Stride1D.Dense>? x;

    public override string Family => KernelId.Family(EmbeddingVersion.V1);

    public override string Version => KernelId.Version(EmbeddingVersion.V1);

    public override string DType => WeightTypes.Label(type);

    public override int Tokens => tokens;

    public override string Shape => $"[{p.Vocab}, {p.Dim}] gather {tokens}";

    public override double Flops => 0;

    public override double MinBytes => (double)tokens * p.Dim * (WeightTypes.Bytes(type) + 4) + 4.0 * tokens;

    public override long SetBytes => 4L * tokens;

    public override void Setup(BenchDevice d, int setCount)
    {
        if (type == WeightType.F32)
            k32 = EmbeddingKernel.Create<F32Weights>(d.Accelerator);
        else
            kbf = EmbeddingKernel.Create<BF16Weights>(d.Accelerator);
        for (int i = 0; i < setCount; i++)
            ids.Add(Ints(d, tokens, p.Vocab));
        table = Weights(d, type, (long)p.Vocab * p.Dim, 1f);
        x = Floats(d, (long)tokens * p.Dim);
    }

    public override void Run(AcceleratorStream stream, int set)
    {
        if (type == WeightType.F32)
            k32!.Launch(stream, ids[set].View, table!.F32, x!.View, tokens, p.Vocab, p.Dim);
        else
            kbf!.Launch(stream, ids[set].View, table!.BF16, x!.View, tokens, p.Vocab, p.Dim);
    }

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        // Only the gathered rows come back from the device (the table can be GBs); the reference sees them as a
        // table of T rows indexed 0..T-1, which is the same gather.
        var idList = ids[0].GetAsArray1D();
        var rows = new float[(long)tokens * p.Dim];
        for (int t = 0; t < tokens; t++)
            table!.Download((long)idList[t] * p.Dim, p.Dim).CopyTo(rows.AsSpan(t * p.Dim, p.Dim));
        var want = RefOps.Embedding(rows, Enumerable.Range(0, tokens).ToArray(), tokens, p.Dim);
        return Compare.Close(x!.GetAsArray1D(), want, 0, 0, $"all {tokens} tokens");
    }
}

/// <summary>The residual add h = h + f(h) on [T, D].</summary>
public sealed class AddCase(ShapePreset p, int tokens) : CaseBase
{
    private ElementwiseKernel? kernel;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> A, MemoryBuffer1D<float, Stride1D.Dense> B)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? y;

    public override string Family => KernelId.Family(AddVersion.V1);

    public override string Version => KernelId.Version(AddVersion.V1);

    public override int Tokens => tokens;

    public override string Shape => $"[{tokens}, {p.Dim}]";

    private long N => (long)tokens * p.Dim;

    public override double Flops => N;

    public override double MinBytes => 12.0 * N;

    public override long SetBytes => 8 * N;

    public override void Setup(BenchDevice d, int setCount)
    {
        kernel = ElementwiseKernel.Create(d.Accelerator);
        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, N), Floats(d, N)));
        y = Floats(d, N);
    }

    public override void Run(AcceleratorStream stream, int set) => kernel!.Add(stream, sets[set].A.View, sets[set].B.View, y!.View);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var a = sets[0].A.GetAsArray1D();
        var b = sets[0].B.GetAsArray1D();
        var want = new float[N];
        for (long i = 0; i < N; i++)
            want[i] = a[i] + b[i];
        return Compare.Close(y!.GetAsArray1D(), want, 0, 0, $"all {tokens} tokens");
    }
}
