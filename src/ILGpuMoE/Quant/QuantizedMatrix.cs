// A weight matrix in one of our packed layouts (kernels/ILGpuMoE.Kernels/Quant/QuantLayout.cs), on the host, and its
// device copy. Built by a scheme's quantizer (from F32) or a checkpoint reader (AWQ / GPTQ / FP8 / ours).
//
// This file holds what every layout shares (packed words, shape, stacking of experts, act-order permutation); each
// scheme's own file under Schemes/ adds its scales (and zero points), its device view and the kernel entries that
// read it, so a new layout is one new file there (QuantSchemes.cs registers it).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

/// <summary>
/// W [Rows, Cols] packed per <see cref="Scheme"/>: [Rows, RowWords] words plus the scheme's scales. Experts stack as
/// [E*N, K] (<see cref="Stack"/>). The subclasses (Q8Matrix, Q4Matrix, Fp8Matrix) hold the scales.
/// </summary>
public abstract class QuantizedMatrix
{
    private protected QuantizedMatrix(int rows, int cols, uint[] words, int matrixRows, int[]? inputPermutation)
    {
        Rows = rows;
        Cols = cols;
        Words = words;
        MatrixRows = matrixRows == 0 ? rows : matrixRows;
        InputPermutation = inputPermutation;
    }

    /// <summary>The kernel-level layout tag.</summary>
    public abstract QuantScheme Scheme { get; }

    public int Rows { get; }

    public int Cols { get; }

    public abstract int RowWords { get; }

    /// <summary>[Rows, RowWords] packed words.</summary>
    public uint[] Words { get; }

    /// <summary>Rows of one stacked matrix (N); Rows when not stacked.</summary>
    public int MatrixRows { get; }

    /// <summary>
    /// GPTQ act-order only: packed column j is input column InputPermutation[j], so y = x[:, perm] Wp^T; the caller
    /// gathers x through it before the matmul. Null when columns are in input order. Stacked experts: [E, Cols], one
    /// permutation per expert (the identity for an expert without act-order).
    /// </summary>
    public int[]? InputPermutation { get; }

    /// <summary>"Q8", "Q4 g128", "Q4 g128 asym", "Fp8 128x128": the layout with its parameters.</summary>
    public abstract string TypeName { get; }

    /// <summary>Bytes of the packed weights plus scales, zeros and the input permutation (what a pass reads once).</summary>
    public long ByteSize => Words.LongLength * 4 + ScaleBytes + (InputPermutation?.LongLength ?? 0) * 4;

    /// <summary>Bytes of the scales and zero points.</summary>
    private protected abstract long ScaleBytes { get; }

    /// <summary>The same packed values without the input permutation: for a matrix whose input already arrives in
    /// packed column order (w2 after its permutation was folded into w1/w3's rows; w3 sharing w1's gather).</summary>
    public QuantizedMatrix WithoutInputPermutation() => InputPermutation is null ? this : WithLayout(Rows, Words, MatrixRows, null, RowScales.Keep);

    /// <summary>
    /// Rows reordered: row i of the result is row order[i] of this matrix, moved with its scales and zero points, so it
    /// dequantizes to exactly those rows. Per-row scaled layouts, one (unstacked) matrix; order must be a permutation of
    /// 0..Rows-1. Used to fold a following act-order matrix's input permutation into this one's outputs (ActOrder.cs).
    /// </summary>
    public QuantizedMatrix PermuteRows(ReadOnlySpan<int> order)
    {
        if (WhyRowsCannotMove is { } why)
            throw new ArgumentException($"QuantizedMatrix.PermuteRows: {why}");
        if (MatrixRows != Rows)
            throw new ArgumentException("QuantizedMatrix.PermuteRows: the matrix is stacked; permute the experts before stacking");
        ActOrder.CheckPermutation("QuantizedMatrix.PermuteRows", order, Rows);
        return WithLayout(Rows, PermuteRowsOf(Words, order, RowWords), 0, InputPermutation, new RowScales(order.ToArray()));
    }

    /// <summary>Null when every row owns its scales (rows can move one by one); otherwise why not.</summary>
    private protected virtual string? WhyRowsCannotMove => null;

    /// <summary>
    /// Stacks expert matrices (same scheme, columns and parameters) into [sum rows, Cols]. If any expert carries an input
    /// permutation, the result carries [E, Cols] of them (the identity for the others).
    /// </summary>
    public static QuantizedMatrix Stack(IReadOnlyList<QuantizedMatrix> parts)
    {
        ArgumentNullException.ThrowIfNull(parts);
        if (parts.Count == 0)
            throw new ArgumentException("QuantizedMatrix.Stack: no matrices");
        var a = parts[0];
        foreach (var p in parts)
        {
            if (p.GetType() != a.GetType() || p.Cols != a.Cols || !a.SameParameters(p) || p.Rows != a.Rows || p.MatrixRows != p.Rows)
                throw new ArgumentException($"QuantizedMatrix.Stack: matrices differ ({p.Scheme} [{p.Rows}, {p.Cols}] vs {a.Scheme} [{a.Rows}, {a.Cols}]) or are already stacked");
        }

        int[]? perm = null;
        if (parts.Any(p => p.InputPermutation is not null))
        {
            perm = new int[(long)parts.Count * a.Cols];
            for (int e = 0; e < parts.Count; e++)
            {
                var dst = perm.AsSpan(e * a.Cols, a.Cols);
                if (parts[e].InputPermutation is { } pe)
                    pe.CopyTo(dst);
                else
                    for (int j = 0; j < a.Cols; j++)
                        dst[j] = j;
            }
        }

        return a.WithLayout(a.Rows * parts.Count, Concat(parts, p => p.Words), a.Rows, perm, new RowScales(null, parts));
    }

    /// <summary>True when <paramref name="other"/> (same type) has the same scheme parameters (group size, zeros, blocks).</summary>
    private protected abstract bool SameParameters(QuantizedMatrix other);

    /// <summary>How <see cref="WithLayout"/> gets its scales: kept, rows reordered, or the stacked parts' concatenated.</summary>
    private protected readonly record struct RowScales(int[]? Order, IReadOnlyList<QuantizedMatrix>? Stacked = null)
    {
        public static readonly RowScales Keep = new(null);

        /// <summary>This matrix's per-row array <paramref name="a"/> (<paramref name="perRow"/> entries a row) as the new matrix needs it.</summary>
        public T[] Of<T, TM>(TM self, Func<TM, T[]> a, int perRow)
            where TM : QuantizedMatrix
        {
            if (Stacked is not null)
                return Concat(Stacked, p => a((TM)p));
            return Order is null ? a(self) : PermuteRowsOf(a(self), Order, perRow);
        }
    }

    /// <summary>A copy of this matrix's type and parameters with new words, stacking, permutation and scales.</summary>
    private protected abstract QuantizedMatrix WithLayout(int rows, uint[] words, int matrixRows, int[]? inputPermutation, RowScales scales);

    /// <summary>The scale (and zero) tensors of our checkpoint form, after qweight, in QuantSpec.PackedTensors order.</summary>
    private protected abstract IEnumerable<byte[]> ScaleTensorBytes();

    /// <summary>The bytes of QuantSource.Tensors in order (qweight, scales, zeros, perm): what ilgpumoe quantize writes.</summary>
    public IReadOnlyList<byte[]> PackedBytes()
    {
        var list = new List<byte[]> { System.Runtime.InteropServices.MemoryMarshal.AsBytes(Words.AsSpan()).ToArray() };
        list.AddRange(ScaleTensorBytes());
        if (InputPermutation is { } perm)
            list.Add(System.Runtime.InteropServices.MemoryMarshal.AsBytes(perm.AsSpan()).ToArray());
        return list;
    }

    /// <summary>Copies the matrix to the device.</summary>
    public abstract DeviceQuantMatrix Upload(Accelerator accelerator);

    /// <summary>W [Rows, Cols] as F32 (MLA's kv_b_proj, which the absorbed attention reads in float); a scheme without a
    /// host decoder refuses with one line.</summary>
    public virtual float[] ToFloat32() => throw new NotSupportedException($"{TypeName}: no host decoder (only FP8 matrices are widened at load)");

    private protected static T[] PermuteRowsOf<T>(T[] a, ReadOnlySpan<int> order, int perRow)
    {
        if (a.Length == 0)
            return a; // a symmetric Q4's absent zeros
        var r = new T[a.Length];
        for (int i = 0; i < order.Length; i++)
            Array.Copy(a, (long)order[i] * perRow, r, (long)i * perRow, perRow);
        return r;
    }

    // Block copies (a Mixtral layer stacks 8 x 29 MB of int4 words per kind; an element-wise SelectMany took ~3 ns each).
    private static T[] Concat<T>(IReadOnlyList<QuantizedMatrix> parts, Func<QuantizedMatrix, T[]> of)
    {
        var all = new T[parts.Sum(p => (long)of(p).Length)];
        long at = 0;
        foreach (var p in parts)
        {
            var a = of(p);
            Array.Copy(a, 0, all, at, a.LongLength);
            at += a.LongLength;
        }

        return all;
    }
}

/// <summary>
/// Device buffers of a <see cref="QuantizedMatrix"/>. The subclass of each scheme (DeviceQuantMatrix&lt;TQ&gt;) builds
/// the kernels' view TQ and names the launcher entries that read it; WeightOps calls those without knowing the scheme.
/// </summary>
public abstract class DeviceQuantMatrix : IDisposable
{
    private readonly List<IDisposable> owned = [];
    private readonly MemoryBuffer1D<int, Stride1D.Dense>? permutation;

    private protected DeviceQuantMatrix(Accelerator accelerator, QuantizedMatrix host)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        Host = host;
        var words = Own(accelerator.Allocate1D(host.Words));
        WordsView = words.View;
        if (host.InputPermutation is not null)
            permutation = Own(accelerator.Allocate1D(host.InputPermutation));
    }

    /// <summary>Host only (the CPU backend reads <see cref="Host"/>): no device buffer at all.</summary>
    private protected DeviceQuantMatrix(QuantizedMatrix host) => Host = host;

    public QuantizedMatrix Host { get; }

    private protected ArrayView<uint> WordsView { get; }

    /// <summary>The input permutation ([Cols], or [E, Cols] stacked); an empty view when columns are in input order.</summary>
    public ArrayView<int> InputPermutation => permutation is null ? default : permutation.View;

    /// <summary>The kernels' view of the matrix; InvalidOperationException when it is another layout.</summary>
    public TQ View<TQ>()
        where TQ : struct, IQuantWeights =>
        this is DeviceQuantMatrix<TQ> d ? d.Weights : throw new InvalidOperationException($"DeviceQuantMatrix: the matrix is {Host.Scheme}, not {typeof(TQ).Name}");

    /// <summary>The matrix as the fused decode kernels read it: 16-byte units of its scheme (kernels/ILGpuMoE.Kernels/Decode/RowUnits.cs).</summary>
    internal abstract IRowUnits DecodeUnits();

    /// <summary>y [T, Rows] (+)= x [T, Cols] W^T through the decode GEMV (T &lt;= QuantGemvKernels.MaxTokens).</summary>
    internal abstract void LaunchGemv(QuantGemvKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate);

    /// <summary>y [T, Rows] (+)= x [T, Cols] W^T through the tiled GEMM (prefill).</summary>
    internal abstract void LaunchGemm(QuantGemmKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate);

    /// <summary>output [T, D] = residual + MoE(x) with this matrix as stacked w1 and <paramref name="w3"/>, <paramref name="w2"/>
    /// of the same layout (InvalidOperationException otherwise).</summary>
    /// <param name="tensorCore">Run the tensor-core experts (moe/grouped-gemm V6PackedMma) where the step takes tiles and
    /// the scheme's scales fold (QuantGroupedGemmMma.Supports); the SIMT choice otherwise.</param>
    internal abstract void LaunchMoe(QuantMoeKernels kernels, AcceleratorStream stream, MoeWorkspace workspace, ArrayView<float> x, ArrayView<int> ids,
        ArrayView<float> weights, int tokens, DeviceQuantMatrix w3, DeviceQuantMatrix w2, ArrayView<float> output, ArrayView<float> residual,
        ExpertGlu glu = default, bool tensorCore = false);

    private protected TBuffer Own<TBuffer>(TBuffer buffer)
        where TBuffer : IDisposable
    {
        owned.Add(buffer);
        return buffer;
    }

    public void Dispose()
    {
        foreach (var b in owned)
            b.Dispose();
        owned.Clear();
        GC.SuppressFinalize(this);
    }
}

/// <summary>
/// A packed matrix the CPU backend reads in host memory (src/ILGpuMoE/Cpu/CpuQuantRows.cs reads <see cref="DeviceQuantMatrix.Host"/>):
/// nothing is copied to ILGPU buffers, so the packed weights are held once, not twice. Any ILGPU kernel launch on it
/// is a bug of the caller and says so.
/// </summary>
public sealed class HostQuantMatrix(QuantizedMatrix host) : DeviceQuantMatrix(host)
{
    private InvalidOperationException NoDevice() =>
        new($"{Host.TypeName} [{Host.Rows}, {Host.Cols}]: held in host memory for the CPU backend; no ILGPU kernel can read it");

    internal override IRowUnits DecodeUnits() => throw NoDevice();

    internal override void LaunchGemv(QuantGemvKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
        throw NoDevice();

    internal override void LaunchGemm(QuantGemmKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
        throw NoDevice();

    internal override void LaunchMoe(QuantMoeKernels kernels, AcceleratorStream stream, MoeWorkspace workspace, ArrayView<float> x, ArrayView<int> ids,
        ArrayView<float> weights, int tokens, DeviceQuantMatrix w3, DeviceQuantMatrix w2, ArrayView<float> output, ArrayView<float> residual,
        ExpertGlu glu = default, bool tensorCore = false) => throw NoDevice();
}

/// <summary>A device matrix whose kernels' view is <typeparamref name="TQ"/>; the MoE block is generic over it.</summary>
public abstract class DeviceQuantMatrix<TQ> : DeviceQuantMatrix
    where TQ : struct, IQuantWeights
{
    private protected DeviceQuantMatrix(Accelerator accelerator, QuantizedMatrix host)
        : base(accelerator, host)
    {
    }

    /// <summary>The view the kernels take.</summary>
    public abstract TQ Weights { get; }

    internal sealed override void LaunchMoe(QuantMoeKernels kernels, AcceleratorStream stream, MoeWorkspace workspace, ArrayView<float> x, ArrayView<int> ids,
        ArrayView<float> weights, int tokens, DeviceQuantMatrix w3, DeviceQuantMatrix w2, ArrayView<float> output, ArrayView<float> residual,
        ExpertGlu glu = default, bool tensorCore = false)
    {
        if (w3 is not DeviceQuantMatrix<TQ> q3 || w2 is not DeviceQuantMatrix<TQ> q2)
            throw QuantMoeKernels.Mixed();
        bool mma = tensorCore && !GroupedGemm.IsDecode(tokens, workspace.TopK, workspace.Experts)
                   && QuantGroupedGemmMma.Supports(Weights, workspace.Dim) && QuantGroupedGemmMma.Supports(q3.Weights, workspace.Dim)
                   && QuantGroupedGemmMma.Supports(q2.Weights, workspace.Hidden);
        // GPTQ act-order experts: w1 carries the [E, D] input permutation w1 and w3 share (w2's is folded at load);
        // an empty view for every other matrix.
        kernels.For<TQ>().Launch(stream, workspace, x, ids, weights, tokens, Weights, q3.Weights, q2.Weights, output, residual,
            version: mma ? GroupedGemmVersion.V6PackedMma : null, inputPermutation: InputPermutation, glu: glu);
    }
}

/// <summary>The quantized grouped-GEMM MoE launchers, one per weight view, loaded on first use.</summary>
internal sealed class QuantMoeKernels(Accelerator accelerator)
{
    private readonly Dictionary<Type, object> loaded = [];

    public QuantMoeBlockKernels<TQ> For<TQ>()
        where TQ : struct, IQuantWeights
    {
        if (!loaded.TryGetValue(typeof(TQ), out var k))
            loaded[typeof(TQ)] = k = QuantMoeBlockKernels<TQ>.Create(accelerator);
        return (QuantMoeBlockKernels<TQ>)k;
    }

    public static InvalidOperationException Mixed() => new("experts w1, w3 and w2 of a layer must share one packed scheme");
}
