// A weight matrix in one of our packed layouts (kernels/ILGpuMoE.Kernels/Quant/QuantLayout.cs), on the host, and its
// device copy. Built by Quantizer (from F32) or CheckpointRepack (from AWQ / GPTQ / FP8 checkpoints).
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

/// <summary>
/// W [Rows, Cols] packed per <see cref="Scheme"/>. Experts stack as [E*N, K] (<see cref="Stack"/>).
/// Q8: Scales32 [Rows]. Q4: Scales16 (f16 bits) [Rows, Cols/G], Zeros [Rows, Cols/G] (empty = symmetric, z = 8).
/// Fp8: Scales32 [Rows/MatrixRows, ceil(MatrixRows/BlockN), ceil(Cols/BlockK)].
/// </summary>
public sealed class QuantizedMatrix
{
    internal QuantizedMatrix(QuantScheme scheme, int rows, int cols, uint[] words, float[]? scales32 = null, ushort[]? scales16 = null,
        byte[]? zeros = null, int groupSize = 0, int matrixRows = 0, int blockN = 0, int blockK = 0, int[]? inputPermutation = null)
    {
        Scheme = scheme;
        Rows = rows;
        Cols = cols;
        Words = words;
        Scales32 = scales32 ?? [];
        Scales16 = scales16 ?? [];
        Zeros = zeros ?? [];
        GroupSize = groupSize;
        MatrixRows = matrixRows == 0 ? rows : matrixRows;
        BlockN = blockN;
        BlockK = blockK;
        InputPermutation = inputPermutation;
    }

    public QuantScheme Scheme { get; }

    public int Rows { get; }

    public int Cols { get; }

    public int RowWords => Scheme == QuantScheme.Q4 ? QuantLayout.NibbleRowWords(Cols) : QuantLayout.ByteRowWords(Cols);

    /// <summary>[Rows, RowWords] packed words.</summary>
    public uint[] Words { get; }

    public float[] Scales32 { get; }

    public ushort[] Scales16 { get; }

    public byte[] Zeros { get; }

    /// <summary>Q4: G.</summary>
    public int GroupSize { get; }

    /// <summary>Rows of one stacked matrix (N); Rows when not stacked.</summary>
    public int MatrixRows { get; }

    /// <summary>Fp8: scale block (rows, columns); per-tensor scaling is (MatrixRows, Cols).</summary>
    public int BlockN { get; }

    public int BlockK { get; }

    /// <summary>
    /// GPTQ act-order only: packed column j is input column InputPermutation[j], so y = x[:, perm] Wp^T; the caller
    /// gathers x through it before the matmul. Null when columns are in input order. Stacked experts: [E, Cols], one
    /// permutation per expert (the identity for an expert without act-order).
    /// </summary>
    public int[]? InputPermutation { get; }

    /// <summary>Bytes of the packed weights plus scales, zeros and the input permutation (what a pass reads once).</summary>
    public long ByteSize => Words.LongLength * 4 + Scales32.LongLength * 4 + Scales16.LongLength * 2 + Zeros.LongLength
                            + (InputPermutation?.LongLength ?? 0) * 4;

    /// <summary>The same packed values without the input permutation: for a matrix whose input already arrives in
    /// packed column order (w2 after its permutation was folded into w1/w3's rows; w3 sharing w1's gather).</summary>
    public QuantizedMatrix WithoutInputPermutation() =>
        InputPermutation is null ? this : new(Scheme, Rows, Cols, Words, Scales32, Scales16, Zeros, GroupSize, MatrixRows, BlockN, BlockK);

    /// <summary>
    /// Rows reordered: row i of the result is row order[i] of this matrix, moved with its scales and zero points, so it
    /// dequantizes to exactly those rows. Q8 and Q4, one (unstacked) matrix; order must be a permutation of 0..Rows-1.
    /// Used to fold a following act-order matrix's input permutation into this one's outputs (ActOrder.cs).
    /// </summary>
    public QuantizedMatrix PermuteRows(ReadOnlySpan<int> order)
    {
        if (Scheme == QuantScheme.Fp8)
            throw new ArgumentException("QuantizedMatrix.PermuteRows: FP8 scale blocks span several rows; rows cannot be moved one by one");
        if (MatrixRows != Rows)
            throw new ArgumentException("QuantizedMatrix.PermuteRows: the matrix is stacked; permute the experts before stacking");
        ActOrder.CheckPermutation("QuantizedMatrix.PermuteRows", order, Rows);
        int rw = RowWords, groups = Scheme == QuantScheme.Q4 ? Cols / GroupSize : 0;
        var words = new uint[Words.Length];
        var s32 = new float[Scales32.Length];
        var s16 = new ushort[Scales16.Length];
        var zeros = new byte[Zeros.Length];
        for (int i = 0; i < Rows; i++)
        {
            int r = order[i];
            Array.Copy(Words, (long)r * rw, words, (long)i * rw, rw);
            if (Scheme == QuantScheme.Q8)
                s32[i] = Scales32[r];
            else
                Array.Copy(Scales16, (long)r * groups, s16, (long)i * groups, groups);
            if (zeros.Length > 0)
                Array.Copy(Zeros, (long)r * groups, zeros, (long)i * groups, groups);
        }

        return new QuantizedMatrix(Scheme, Rows, Cols, words, s32, s16, zeros, GroupSize, 0, BlockN, BlockK, InputPermutation);
    }

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
            if (p.Scheme != a.Scheme || p.Cols != a.Cols || p.GroupSize != a.GroupSize || p.BlockN != a.BlockN || p.BlockK != a.BlockK
                || p.Zeros.Length > 0 != a.Zeros.Length > 0 || p.Rows != a.Rows || p.MatrixRows != p.Rows)
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

        return new QuantizedMatrix(a.Scheme, a.Rows * parts.Count, a.Cols, Concat(parts, p => p.Words), Concat(parts, p => p.Scales32),
            Concat(parts, p => p.Scales16), Concat(parts, p => p.Zeros), a.GroupSize, a.Rows, a.BlockN, a.BlockK, perm);
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

    /// <summary>Copies the matrix to the device.</summary>
    public DeviceQuantMatrix Upload(Accelerator accelerator) => new(accelerator, this);
}

/// <summary>Device buffers of a <see cref="QuantizedMatrix"/>; the views the kernels take.</summary>
public sealed class DeviceQuantMatrix : IDisposable
{
    private readonly MemoryBuffer1D<uint, Stride1D.Dense> words;
    private readonly MemoryBuffer1D<float, Stride1D.Dense>? scales32;
    private readonly MemoryBuffer1D<ILGPU.Half, Stride1D.Dense>? scales16;
    private readonly MemoryBuffer1D<byte, Stride1D.Dense>? zeros;
    private readonly MemoryBuffer1D<int, Stride1D.Dense>? permutation;

    internal DeviceQuantMatrix(Accelerator accelerator, QuantizedMatrix m)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        Host = m;
        words = accelerator.Allocate1D(m.Words);
        if (m.Scales32.Length > 0)
            scales32 = accelerator.Allocate1D(m.Scales32);
        if (m.Scales16.Length > 0)
            scales16 = accelerator.Allocate1D(MemoryMarshal.Cast<ushort, ILGPU.Half>(m.Scales16).ToArray());
        if (m.Zeros.Length > 0)
            zeros = accelerator.Allocate1D(m.Zeros);
        if (m.InputPermutation is not null)
            permutation = accelerator.Allocate1D(m.InputPermutation);
    }

    public QuantizedMatrix Host { get; }

    /// <summary>The input permutation ([Cols], or [E, Cols] stacked); an empty view when columns are in input order.</summary>
    public ArrayView<int> InputPermutation => permutation is null ? default : permutation.View;

    public Q8Weights Q8 => Host.Scheme == QuantScheme.Q8
        ? new Q8Weights(words.View, scales32!.View, Host.Rows, Host.Cols)
        : throw new InvalidOperationException($"DeviceQuantMatrix: the matrix is {Host.Scheme}, not Q8");

    public Q4Weights Q4 => Host.Scheme == QuantScheme.Q4
        ? new Q4Weights(words.View, scales16!.View, zeros is null ? default : zeros.View, Host.Rows, Host.Cols, Host.GroupSize)
        : throw new InvalidOperationException($"DeviceQuantMatrix: the matrix is {Host.Scheme}, not Q4");

    public Fp8Weights Fp8 => Host.Scheme == QuantScheme.Fp8
        ? new Fp8Weights(words.View, scales32!.View, Host.Rows, Host.Cols, Host.MatrixRows, Host.BlockN, Host.BlockK)
        : throw new InvalidOperationException($"DeviceQuantMatrix: the matrix is {Host.Scheme}, not Fp8");

    public void Dispose()
    {
        words.Dispose();
        scales32?.Dispose();
        scales16?.Dispose();
        zeros?.Dispose();
        permutation?.Dispose();
    }
}
