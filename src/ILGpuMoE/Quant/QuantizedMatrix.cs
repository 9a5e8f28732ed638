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
    /// gathers x through it before the matmul. Null when columns are in input order.
    /// </summary>
    public int[]? InputPermutation { get; }

    /// <summary>Bytes of the packed weights plus scales and zeros (what a kernel reads once per pass).</summary>
    public long ByteSize => Words.LongLength * 4 + Scales32.LongLength * 4 + Scales16.LongLength * 2 + Zeros.LongLength;

    /// <summary>Stacks expert matrices (same scheme, columns and parameters) into [sum rows, Cols].</summary>
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
            if (p.InputPermutation is not null)
                throw new ArgumentException("QuantizedMatrix.Stack: act-order (permuted) matrices cannot be stacked");
        }

        return new QuantizedMatrix(a.Scheme, a.Rows * parts.Count, a.Cols, parts.SelectMany(p => p.Words).ToArray(),
            parts.SelectMany(p => p.Scales32).ToArray(), parts.SelectMany(p => p.Scales16).ToArray(), parts.SelectMany(p => p.Zeros).ToArray(),
            a.GroupSize, a.Rows, a.BlockN, a.BlockK);
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
    }

    public QuantizedMatrix Host { get; }

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
    }
}
