// Decode cases (kernels/ILGpuMoE.Kernels/Decode), T = 1 only: decode/linear as the fused q, k, v projection with its
// RMSNorm prologue ([H*Dh + 2*Hkv*Dh, D] in one launch), decode/qkv-rope (the same with RoPE and the KV append in its
// epilogue, V1 after decode/linear V2), and decode/experts as the MoE block of one token (up-gate
// with the norm prologue, then down + combine + residual) over E stacked experts of which the token's K are read. Both
// versions of each, V2 (persistent groups, the runtime's) first, then V1 beside it in the same run; before them
// decode/router (the router split over D with the gating in its last group, BF16 as checkpoints keep it).
// Weight types: bf16 (the checkpoint type), int8, int4 (G = 128, else the largest of 64, 32 dividing D and F; no
// int4 case when none does) and mxfp4 (gpt-oss's experts: E2M1 codes, an E8M0 scale per 32 values; only where D and F
// are whole blocks of 32). gpt-oss presets (Family GptOss) run decode/experts with the clamped GLU and expert biases
// (ExpertGlu.GptOss, checked against RefExpertGlu). Minimum bytes: every weight byte the step needs read once (packed codes plus scales; the
// experts: only the K routed experts), x and the norm weights read once, outputs written once (the experts' h [K, F]
// written and read once). The check recomputes a sample of output rows with RefOps / RefDecode on the host (the rows'
// weights downloaded and widened or dequantized).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class DecodeFamily : IBenchFamily
{
    public string Name => "decode";

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        if (tokens != 1)
            yield break;
        yield return new DecodeRouterCase(p);
        foreach (var type in DecodeWeights.Types)
        {
            if (!DecodeWeights.Fits(type, p.Dim, p.Hidden))
                continue;
            yield return new DecodeQkvCase(p, type, DecodeLinearVersion.V2);
            yield return new DecodeQkvRopeCase(p, type);
            yield return new DecodeExpertsCase(p, type, DecodeExpertsVersion.V2);
            yield return new DecodeQkvCase(p, type, DecodeLinearVersion.V1);
            yield return new DecodeExpertsCase(p, type, DecodeExpertsVersion.V1);
        }
    }
}

/// <summary>Binds a case's launch to the reader of its weight type (one generic body per case, no switch per case).</summary>
internal interface IReaderBinder
{
    Action<AcceleratorStream, int> Bind<TU>(Func<DecodeWeights, TU> reader)
        where TU : struct, IRowUnits;
}

/// <summary>A stack of matrices [Rows, Cols] on the device in a decode weight type, with host access to some rows.</summary>
internal sealed class DecodeWeights : IDisposable
{
    private const int Int4Group = 128;

    public static readonly string[] Types = ["bf16", "int8", "int4", "mxfp4"];

    private readonly WeightBuffer? floats;
    private readonly DeviceQuantWeights? packed;

    public DecodeWeights(BenchDevice d, string type, int matrices, int rows, int cols, int groupSize)
    {
        Type = type;
        Matrices = matrices;
        Rows = rows;
        Cols = cols;
        if (type == "bf16")
            floats = d.Fill.Weights(d.Stream, WeightType.BF16, (long)matrices * rows * cols, 1f / MathF.Sqrt(cols));
        else
            packed = new DeviceQuantWeights(d, new QuantShape(SchemeOf(type), matrices, rows, cols, groupSize));
    }

    public string Type { get; }

    public int Matrices { get; }

    public int Rows { get; }

    public int Cols { get; }

    /// <summary>Bytes of one matrix: what a pass over it reads.</summary>
    public long BytesPerMatrix => packed?.Shape.BytesPerMatrix ?? 2L * Rows * Cols;

    private static QuantScheme SchemeOf(string type) => type switch
    {
        "int8" => QuantScheme.Q8,
        "int4" => QuantScheme.Q4,
        "mxfp4" => QuantScheme.Mxfp4,
        _ => throw new ArgumentException($"DecodeWeights: '{type}' is not a packed type"),
    };

    /// <summary>int4's group: 128 where it divides both dims, else 64 or 32; 0 when none does (no int4 case).</summary>
    public static int GroupFor(int dim, int hidden) =>
        new[] { Int4Group, 64, 32 }.FirstOrDefault(g => dim % g == 0 && hidden % g == 0);

    /// <summary>Whether a type reads [*, dim] and [*, hidden] rows: bf16 needs whole 16-byte units, int4 a group.</summary>
    public static bool Fits(string type, int dim, int hidden) => type switch
    {
        "bf16" => dim % 8 == 0 && hidden % 8 == 0,
        "int8" => true,
        "int4" => GroupFor(dim, hidden) > 0,
        "mxfp4" => dim % RefMxfp4.BlockSize == 0 && hidden % RefMxfp4.BlockSize == 0,
        _ => throw new ArgumentException($"DecodeWeights: unknown type '{type}'"),
    };

    /// <summary>One [rows_m, D] matrix of a type per entry of rows (a q, k, v case's weights; the caller owns them).</summary>
    public static DecodeWeights[] Qkv(BenchDevice d, string type, ShapePreset p, int[] rows) =>
        rows.Select(r => new DecodeWeights(d, type, 1, r, p.Dim, GroupFor(p.Dim, p.Hidden))).ToArray();

    /// <summary>Bytes a pass over those matrices reads.</summary>
    public static double Bytes(string type, ShapePreset p, int[] rows) => rows.Sum(r => (double)MatrixBytes(type, r, p.Dim, GroupFor(p.Dim, p.Hidden)));

    /// <summary>The case's dtype label: "bf16", "int8", "int4-g128".</summary>
    public static string Label(string type, int dim, int hidden) => type == "int4" ? $"int4-g{GroupFor(dim, hidden)}" : type;

    /// <summary>Bytes a pass over one [rows, cols] matrix of a type reads (packed codes and scales).</summary>
    public static long MatrixBytes(string type, int rows, int cols, int groupSize) => type switch
    {
        "bf16" => 2L * rows * cols,
        "int8" => new QuantShape(QuantScheme.Q8, 1, rows, cols).BytesPerMatrix,
        "int4" => new QuantShape(QuantScheme.Q4, 1, rows, cols, groupSize).BytesPerMatrix,
        "mxfp4" => new QuantShape(QuantScheme.Mxfp4, 1, rows, cols).BytesPerMatrix,
        _ => throw new ArgumentException($"DecodeWeights: unknown type '{type}'"),
    };

    /// <summary>The case's launch with the reader of <paramref name="type"/>.</summary>
    public static Action<AcceleratorStream, int> Bind(string type, IReaderBinder binder) => type switch
    {
        "bf16" => binder.Bind(w => w.BF16),
        "int8" => binder.Bind(w => w.Q8),
        "int4" => binder.Bind(w => w.Q4),
        "mxfp4" => binder.Bind(w => w.Mxfp4),
        _ => throw new ArgumentException($"DecodeWeights: unknown type '{type}'"),
    };

    public BF16Units BF16 => RowUnits.BF16(floats!.BF16, Matrices * Rows, Cols);

    public Q8Units Q8 => RowUnits.Q8(packed!.Q8);

    public Q4Units Q4 => RowUnits.Q4(packed!.Q4);

    public Mxfp4Units Mxfp4 => RowUnits.Mxfp4(packed!.Mxfp4);

    /// <summary>Rows of matrix m as the kernel reads them (bf16 widened, packed codes dequantized by RefQuant).</summary>
    public float[] HostRows(int m, int[] rows)
    {
        var w = new float[(long)rows.Length * Cols];
        if (floats is not null)
        {
            for (int i = 0; i < rows.Length; i++)
                floats.Download(((long)m * Rows + rows[i]) * Cols, Cols).CopyTo(w.AsSpan(i * Cols, Cols));
            return w;
        }

        var all = packed!.Dequantize(m);
        for (int i = 0; i < rows.Length; i++)
            all.AsSpan(rows[i] * Cols, Cols).CopyTo(w.AsSpan(i * Cols, Cols));
        return w;
    }

    public void Dispose()
    {
        floats?.Dispose();
        packed?.Dispose();
    }
}

/// <summary>decode/linear (V1 or V2): q, k, v = rmsnorm(x) * g . W^T in one launch.</summary>
public sealed class DecodeQkvCase(ShapePreset p, string type, DecodeLinearVersion version) : CaseBase, IReaderBinder
{
    private BenchDevice? device;
    private const float Eps = 1e-5f;
    private readonly int[] rows = [p.QDim, p.KvDim, p.KvDim];
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, DecodeWeights[] W)> sets = [];
    private readonly MemoryBuffer1D<float, Stride1D.Dense>[] ys = new MemoryBuffer1D<float, Stride1D.Dense>[3];
    private WeightBuffer? g;
    private Action<AcceleratorStream, int>? run;

    public override string Family => KernelId.Family(version);

    public override string Version => KernelId.Version(version);

    public override string DType => DecodeWeights.Label(type, p.Dim, p.Hidden);

    public override int Tokens => 1;

    public override string Shape => $"rmsnorm + q,k,v [1, {p.Dim}] x [{p.QDim}+{p.KvDim}+{p.KvDim}, {p.Dim}]^T";

    public override double Flops => 2.0 * rows.Sum() * p.Dim;

    public override double MinBytes => WeightBytes + 4.0 * p.Dim + 2.0 * p.Dim + 4.0 * rows.Sum();

    private double WeightBytes => DecodeWeights.Bytes(type, p, rows);

    public override long SetBytes => (long)WeightBytes + 4L * p.Dim;

    public override void Setup(BenchDevice d, int setCount)
    {
        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, p.Dim), DecodeWeights.Qkv(d, type, p, rows).Select(Own).ToArray()));
        for (int m = 0; m < 3; m++)
            ys[m] = Floats(d, rows[m]);
        g = Weights(d, WeightType.BF16, p.Dim, 1f);
        device = d;
        run = DecodeWeights.Bind(type, this);
    }

    // Readers built once per set (their host checks stay out of the timed launches).
    Action<AcceleratorStream, int> IReaderBinder.Bind<TU>(Func<DecodeWeights, TU> reader)
    {
        var k = DecodeLinearKernel.Create<TU>(device!.Accelerator);
        var readers = sets.Select(s => s.W.Select(reader).ToArray()).ToArray();
        var norm = NormWeights.Of(g!.BF16);
        return (stream, set) => k.Launch(stream, sets[set].X.View, norm, Eps, new(readers[set][0], ys[0].View),
            new DecodeTarget<TU>(readers[set][1], ys[1].View), new DecodeTarget<TU>(readers[set][2], ys[2].View), version: version);
    }

    public override void Run(AcceleratorStream stream, int set) => run!(stream, set);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var xs = RefOps.RmsNorm(sets[0].X.GetAsArray1D(), g!.Download(), 1, p.Dim, Eps);
        var got = new List<float>();
        var want = new List<float>();
        for (int m = 0; m < 3; m++)
        {
            var sample = Compare.SampleTokens(rows[m], 128);
            want.AddRange(RefOps.MatMulT(xs, sets[0].W[m].HostRows(0, sample), 1, sample.Length, p.Dim));
            var y = ys[m].GetAsArray1D();
            got.AddRange(sample.Select(r => y[r]));
        }

        return Compare.Close(got.ToArray(), want.ToArray(), 1e-4, 2e-6 * Math.Sqrt(p.Dim), $"{got.Count} of {rows.Sum()} q,k,v rows");
    }
}

/// <summary>
/// decode/qkv-rope V1: decode/linear V2's q, k, v with RoPE and the KV append in the epilogue, at position KvLength / 2 of
/// a cache of KvLength rows (the decode step's layer with no q/k norm: what decode/linear V2 + attention/rope-append V1
/// do in two launches, timed beside it in the same run). The check recomputes the first and last q head and kv head.
/// </summary>
public sealed class DecodeQkvRopeCase(ShapePreset p, string type) : CaseBase, IReaderBinder
{
    private const float Eps = 1e-5f;
    private readonly int[] rows = [p.QDim, p.KvDim, p.KvDim];
    private readonly int position = p.KvLength / 2;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, DecodeWeights[] W)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? q, kCache, vCache;
    private MemoryBuffer1D<int, Stride1D.Dense>? positions;
    private WeightBuffer? g;
    private BenchDevice? device;
    private Action<AcceleratorStream, int>? run;

    public override string Family => KernelId.Family(DecodeQkvRopeVersion.V1);

    public override string Version => KernelId.Version(DecodeQkvRopeVersion.V1);

    public override string DType => DecodeWeights.Label(type, p.Dim, p.Hidden);

    public override int Tokens => 1;

    public override string Shape => $"rmsnorm + q,k,v [1, {p.Dim}] x [{p.QDim}+{p.KvDim}+{p.KvDim}, {p.Dim}]^T + rope + append at {position} of {p.KvLength}";

    public override double Flops => 2.0 * rows.Sum() * p.Dim;

    // The weights once, x and g, q and the two cache rows written, the position and the inv_freq table.
    public override double MinBytes => WeightBytes + 4.0 * p.Dim + 2.0 * p.Dim + 4.0 * rows.Sum() + 4 + 4.0 * p.HeadDim;

    private double WeightBytes => DecodeWeights.Bytes(type, p, rows);

    public override long SetBytes => (long)WeightBytes + 4L * p.Dim;

    public override void Setup(BenchDevice d, int setCount)
    {
        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, p.Dim), DecodeWeights.Qkv(d, type, p, rows).Select(Own).ToArray()));
        q = Floats(d, p.QDim);
        long cache = KvCacheLayout.Elements(p.KvHeads, p.KvLength, p.HeadDim);
        kCache = Floats(d, cache);
        vCache = Floats(d, cache);
        positions = Own(d.Accelerator.Allocate1D(new[] { position }));
        g = Weights(d, WeightType.BF16, p.Dim, 1f);
        device = d;
        run = DecodeWeights.Bind(type, this);
    }

    Action<AcceleratorStream, int> IReaderBinder.Bind<TU>(Func<DecodeWeights, TU> reader)
    {
        var k = Own(DecodeQkvRopeKernel.Create<TU>(device!.Accelerator));
        var spec = RopeSpec.Full(p.HeadDim, p.RopeTheta);
        // The table uploaded and the kernel loaded here, outside the timed launches.
        k.Prepare(spec);
        var readers = sets.Select(s => s.W.Select(reader).ToArray()).ToArray();
        var norm = NormWeights.Of(g!.BF16);
        return (stream, set) => k.Launch(stream, sets[set].X.View, norm, Eps, new(readers[set][0], q!.View), readers[set][1], NormWeights.None,
            readers[set][2], NormWeights.None, positions!.View, kCache!.View, vCache!.View, p.Heads, p.KvHeads, p.HeadDim, p.KvLength, spec);
    }

    public override void Run(AcceleratorStream stream, int set) => run!(stream, set);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var xs = RefOps.RmsNorm(sets[0].X.GetAsArray1D(), g!.Download(), 1, p.Dim, Eps);
        var inv = RefRope.InvFreq(p.HeadDim, p.RopeTheta, null);
        var (gotQ, gotK, gotV) = (q!.GetAsArray1D(), kCache!.GetAsArray1D(), vCache!.GetAsArray1D());
        var got = new List<float>();
        var want = new List<float>();
        // Head h of matrix m: its Dh rows, rotated unless v, against the kernel's q or cache row.
        void Head(int m, int h, float[] from, long at)
        {
            var r = Enumerable.Range(h * p.HeadDim, p.HeadDim).ToArray();
            var y = RefOps.MatMulT(xs, sets[0].W[m].HostRows(0, r), 1, p.HeadDim, p.Dim);
            if (m < 2)
                RefRope.Apply(y, [position], 1, 1, p.HeadDim, 0, inv, 1.0, interleaved: false);
            want.AddRange(y);
            got.AddRange(from.AsSpan((int)at, p.HeadDim).ToArray());
        }

        foreach (int h in new[] { 0, p.Heads - 1 }.Distinct())
            Head(0, h, gotQ, (long)h * p.HeadDim);
        foreach (int h in new[] { 0, p.KvHeads - 1 }.Distinct())
        {
            long row = KvCacheLayout.Index(h, position, 0, p.KvLength, p.HeadDim);
            Head(1, h, gotK, row);
            Head(2, h, gotV, row);
        }

        return Compare.Close(got.ToArray(), want.ToArray(), 1e-4, 2e-6 * Math.Sqrt(p.Dim), $"{got.Count} of {rows.Sum()} q, k, v rows (first and last heads)");
    }
}

/// <summary>decode/experts (V1 or V2): up-gate (norm prologue) then down + combine + residual for one token's K experts.</summary>
public sealed class DecodeExpertsCase(ShapePreset p, string type, DecodeExpertsVersion version) : CaseBase, IReaderBinder
{
    private BenchDevice? device;
    private const float Eps = 1e-5f;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, DecodeWeights W1, DecodeWeights W3, DecodeWeights W2)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? h, residual, output, routeWeights;
    private MemoryBuffer1D<int, Stride1D.Dense>? ids;
    private WeightBuffer? g;
    private int[] chosen = [];
    private Action<AcceleratorStream, int>? run;
    private MemoryBuffer1D<float, Stride1D.Dense>? gateBias, upBias, downBias;
    private ExpertGlu glu;

    // gpt-oss's swiglu_alpha and swiglu_limit (its config.json).
    private const float GptOssAlpha = 1.702f, GptOssLimit = 7f;

    private bool GptOss => p.Family == RefFamily.GptOss;

    public override string Family => KernelId.Family(version);

    public override string Version => KernelId.Version(version);

    public override string DType => DecodeWeights.Label(type, p.Dim, p.Hidden);

    public override int Tokens => 1;

    public override string Shape => $"up-gate + down, K={p.TopK} of E={p.Experts}, [1, {p.Dim}] x [{p.Hidden}, {p.Dim}]^T x2, [{p.Dim}, {p.Hidden}]"
        + (GptOss ? ", gpt-oss GLU + biases" : "");

    public override double Flops => 2.0 * p.TopK * 3 * p.Hidden * p.Dim;

    private double ExpertBytes
    {
        get
        {
            int group = DecodeWeights.GroupFor(p.Dim, p.Hidden);
            return 2.0 * DecodeWeights.MatrixBytes(type, p.Hidden, p.Dim, group) + DecodeWeights.MatrixBytes(type, p.Dim, p.Hidden, group);
        }
    }

    // K experts' w1, w3, w2 (gpt-oss: and their biases); x and g; h written and read; residual read, output written; ids
    // and weights.
    public override double MinBytes => p.TopK * (ExpertBytes + (GptOss ? 4.0 * (2 * p.Hidden + p.Dim) : 0))
        + 6.0 * p.Dim + 8.0 * p.TopK * p.Hidden + 8.0 * p.Dim + 8.0 * p.TopK;

    public override long SetBytes => (long)(p.TopK * ExpertBytes) + 4L * p.Dim;

    public override void Setup(BenchDevice d, int setCount)
    {
        int group = DecodeWeights.GroupFor(p.Dim, p.Hidden);
        for (int i = 0; i < setCount; i++)
        {
            sets.Add((Floats(d, p.Dim), Own(new DecodeWeights(d, type, p.Experts, p.Hidden, p.Dim, group)),
                Own(new DecodeWeights(d, type, p.Experts, p.Hidden, p.Dim, group)), Own(new DecodeWeights(d, type, p.Experts, p.Dim, p.Hidden, group))));
        }

        // K distinct experts spread over E (the gating kernel's output for one token), weights summing to 1.
        chosen = Enumerable.Range(0, p.TopK).Select(k => (1 + k * p.Experts / p.TopK) % p.Experts).ToArray();
        ids = Own(d.Accelerator.Allocate1D(chosen));
        routeWeights = Own(d.Accelerator.Allocate1D(Enumerable.Range(0, p.TopK).Select(k => (k + 1f) * 2f / (p.TopK * (p.TopK + 1f))).ToArray()));
        h = Floats(d, (long)p.TopK * p.Hidden);
        residual = Floats(d, p.Dim);
        output = Floats(d, p.Dim);
        g = Weights(d, WeightType.BF16, p.Dim, 1f);
        if (GptOss)
        {
            // As in QuantMoeBlockCase: gate/up biases in [-8, 8) reach the clamps at +-7 for some f.
            gateBias = Floats(d, (long)p.Experts * p.Hidden, 8f);
            upBias = Floats(d, (long)p.Experts * p.Hidden, 8f);
            downBias = Floats(d, (long)p.Experts * p.Dim);
            glu = ExpertGlu.GptOss(GptOssAlpha, GptOssLimit, gateBias.View, upBias.View, downBias.View);
        }

        device = d;
        run = DecodeWeights.Bind(type, this);
    }

    Action<AcceleratorStream, int> IReaderBinder.Bind<TU>(Func<DecodeWeights, TU> reader)
    {
        var k = Own(DecodeExpertsKernel.Create<TU>(device!.Accelerator));
        var readers = sets.Select(s => (W1: reader(s.W1), W3: reader(s.W3), W2: reader(s.W2))).ToArray();
        // V2's down scratch made here, outside the timed launches.
        k.ReserveDown(device.Stream, p.TopK, p.Hidden, p.Dim);
        var norm = NormWeights.Of(g!.BF16);
        return (stream, set) =>
        {
            var r = readers[set];
            k.LaunchUpGate(stream, sets[set].X.View, norm, Eps, r.W1, r.W3, ids!.View, p.TopK, p.Hidden, h!.View, glu, version);
            k.LaunchDown(stream, h!.View, r.W2, ids!.View, routeWeights!.View, p.TopK, p.Dim, residual!.View, output!.View, glu, version);
        };
    }

    public override void Run(AcceleratorStream stream, int set) => run!(stream, set);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var s = sets[0];
        var xs = RefOps.RmsNorm(s.X.GetAsArray1D(), g!.Download(), 1, p.Dim, Eps);
        var hGot = h!.GetAsArray1D();
        var wk = routeWeights!.GetAsArray1D();
        var fs = Compare.SampleTokens(p.Hidden, 64);
        var ds = Compare.SampleTokens(p.Dim, 64);
        var got = new List<float>();
        var want = new List<float>();
        float[]? bg = gateBias?.GetAsArray1D(), bu = upBias?.GetAsArray1D(), b2 = downBias?.GetAsArray1D();
        // Up-gate on sampled f of each pair; down on sampled d from the kernel's own h (each launch checked alone).
        for (int k = 0; k < p.TopK; k++)
        {
            int e = chosen[k];
            var w1 = s.W1.HostRows(e, fs);
            var w3 = s.W3.HostRows(e, fs);
            want.AddRange(GptOss
                ? RefExpertGlu.UpGate(xs, w1, w3, Pick(bg!, e, p.Hidden, fs), Pick(bu!, e, p.Hidden, fs), p.Dim, fs.Length, GptOssAlpha, GptOssLimit)
                : RefOps.SwiGlu(RefOps.MatMulT(xs, w1, 1, fs.Length, p.Dim), RefOps.MatMulT(xs, w3, 1, fs.Length, p.Dim)));
            got.AddRange(fs.Select(f => hGot[k * p.Hidden + f]));
        }

        var down = new double[ds.Length];
        for (int k = 0; k < p.TopK; k++)
        {
            var part = GptOss
                ? RefExpertGlu.Down(hGot.AsSpan(k * p.Hidden, p.Hidden), s.W2.HostRows(chosen[k], ds), Pick(b2!, chosen[k], p.Dim, ds), ds.Length, p.Hidden)
                : RefOps.MatMulT(hGot.AsSpan(k * p.Hidden, p.Hidden), s.W2.HostRows(chosen[k], ds), 1, ds.Length, p.Hidden);
            for (int i = 0; i < ds.Length; i++)
                down[i] += (double)wk[k] * part[i];
        }

        var res = residual!.GetAsArray1D();
        var outGot = output!.GetAsArray1D();
        want.AddRange(ds.Select((dd, i) => (float)(res[dd] + down[i])));
        got.AddRange(ds.Select(dd => outGot[dd]));
        return Compare.Close(got.ToArray(), want.ToArray(), 1e-4, 2e-6 * Math.Sqrt(p.Hidden), $"{fs.Length} h and {ds.Length} out rows per pair");
    }

    // Entries idx of expert e's row of an [E, n] bias (the sampled rows' biases).
    private static float[] Pick(float[] bias, int e, int n, int[] idx) => idx.Select(i => bias[(long)e * n + i]).ToArray();
}

/// <summary>decode/router V1: logits = rmsnorm(x) * g . Wg^T (BF16 [E, D]) split over D, then the token routed (the
/// Mixtral router: softmax over the top K, renormalised) by the last group, in one launch.</summary>
public sealed class DecodeRouterCase(ShapePreset p) : CaseBase
{
    private const float Eps = 1e-5f;
    private readonly List<(MemoryBuffer1D<float, Stride1D.Dense> X, WeightBuffer W)> sets = [];
    private MemoryBuffer1D<float, Stride1D.Dense>? logits, weights;
    private MemoryBuffer1D<int, Stride1D.Dense>? ids;
    private WeightBuffer? g;
    private DecodeRouterKernel<BF16Units>? kernel;
    private BF16Units[] readers = [];
    private NormWeights norm;

    private RouterSpec Spec => RouterSpec.Mixtral(p.Experts, p.TopK);

    public override string Family => KernelId.Family(DecodeRouterVersion.V1);

    public override string Version => KernelId.Version(DecodeRouterVersion.V1);

    public override string DType => "bf16";

    public override int Tokens => 1;

    public override string Shape => $"rmsnorm + router [1, {p.Dim}] x [{p.Experts}, {p.Dim}]^T + top-{p.TopK} of {p.Experts}";

    public override double Flops => 2.0 * p.Experts * p.Dim;

    // The router's weights, x and g read once, the logits, ids and weights written once.
    public override double MinBytes => 2.0 * p.Experts * p.Dim + 6.0 * p.Dim + 4.0 * p.Experts + 8.0 * p.TopK;

    public override long SetBytes => 2L * p.Experts * p.Dim + 4L * p.Dim;

    public override void Setup(BenchDevice d, int setCount)
    {
        for (int i = 0; i < setCount; i++)
            sets.Add((Floats(d, p.Dim), Weights(d, WeightType.BF16, (long)p.Experts * p.Dim, 1f / MathF.Sqrt(p.Dim))));
        logits = Floats(d, p.Experts);
        ids = Own(d.Accelerator.Allocate1D<int>(p.TopK));
        weights = Floats(d, p.TopK);
        g = Weights(d, WeightType.BF16, p.Dim, 1f);
        kernel = Own(DecodeRouterKernel.Create<BF16Units>(d.Accelerator));
        // Readers built once per set (their host checks stay out of the timed launches); the split's scratch made here too.
        readers = sets.Select(s => RowUnits.BF16(s.W.BF16, p.Experts, p.Dim)).ToArray();
        norm = NormWeights.Of(g.BF16);
        kernel.Reserve(d.Stream, readers[0]);
    }

    public override void Run(AcceleratorStream stream, int set) =>
        kernel!.Launch(stream, readers[set], sets[set].X.View, norm, Eps, NormWeights.None, Spec, logits!.View, ids!.View, weights!.View);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var w = sets[0].W.Download();
        var (wantLogits, routing) = RefDecode.Router(sets[0].X.GetAsArray1D(), g!.Download(), Eps, w, p.Experts, p.Dim, default,
            new RefRouterSpec(RouterKind.Mixtral, p.Experts, p.TopK));
        var got = logits!.GetAsArray1D();
        var gotIds = ids!.GetAsArray1D();
        if (!gotIds.SequenceEqual(routing.ExpertIds))
            return CheckResult.Fail($"ids [{string.Join(", ", gotIds)}], the oracle's [{string.Join(", ", routing.ExpertIds)}]");
        return Compare.Close([.. got, .. weights!.GetAsArray1D()], [.. wantLogits, .. routing.Weights], 1e-4, 2e-6 * Math.Sqrt(p.Dim),
            $"{p.Experts} logits and {p.TopK} weights");
    }
}
