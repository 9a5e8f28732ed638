// Quantized weights for the quant cases, made on the device in our packed layouts (kernels/ILGpuMoE.Kernels/Quant/
// QuantLayout.cs): random codes and random positive scales, never quantized from floats on the host.
//
// Why: the kernels' speed does not depend on where the codes came from, and quantizing Mixtral's experts on the host
// (1.4 G weights per scheme; FP8 ~120 ns per weight on one core) took tens of seconds of the GPU machine's scarce
// window per scheme. The check stays exact: it downloads the codes and scales the kernel read (only the matrices it
// needs) and dequantizes them with the reference (RefQuant), as the float cases download their inputs.
//
// Codes: int8 bytes in [-127, 127] (0x80 = -128 is outside the layout's range and becomes -127); int4 any nibble
// (symmetric, z = 8); FP8 any E4M3FN byte but the NaN codes 0x7F/0xFF (which become +-448). The bytes past K in a row's
// last 16-byte unit are zero, as the layout requires. Scales are uniform in [0.5, 1.5) x 1/(qmax sqrt(K)), so a
// dequantized weight is O(1/sqrt(K)) like the float cases' weights and activations stay O(1).
// MXFP4 (gpt-oss, Quant/Mxfp4.cs): any nibble is an E2M1 code; the E8M0 scale bytes are uniform in c - 2 .. c + 2
// around c = 127 + round(log2(1/(6 sqrt(K)))) (the same O(1/sqrt(K)) weights; 5 different powers of two, so a kernel
// that applied the wrong block's scale fails the check). Cols must be whole blocks of 32.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Suite;

/// <summary>The shape of <paramref name="Matrices"/> stacked matrices [Rows, Cols] in one scheme, and their packed sizes.</summary>
public sealed record QuantShape(QuantScheme Scheme, int Matrices, int Rows, int Cols, int GroupSize = 0, int BlockN = 128, int BlockK = 128)
{
    public int RowWords => Scheme is QuantScheme.Q4 or QuantScheme.Mxfp4 ? QuantLayout.NibbleRowWords(Cols) : QuantLayout.ByteRowWords(Cols);

    public long TotalRows => (long)Matrices * Rows;

    /// <summary>Scales of one matrix: per row (Q8), per (row, group) (Q4), per block (FP8), per 32 values of a row (MXFP4).</summary>
    public long ScalesPerMatrix => Scheme switch
    {
        QuantScheme.Q8 => Rows,
        QuantScheme.Q4 => (long)Rows * (Cols / GroupSize),
        QuantScheme.Mxfp4 => (long)Rows * (Cols / Mxfp4.BlockValues),
        QuantScheme.Fp8 => (long)((Rows + BlockN - 1) / BlockN) * ((Cols + BlockK - 1) / BlockK),
        _ => throw new ArgumentOutOfRangeException(nameof(Scheme), Scheme, "unknown quant scheme"),
    };

    private int ScaleBytes => Scheme switch
    {
        QuantScheme.Q4 => 2,
        QuantScheme.Mxfp4 => 1,
        _ => 4,
    };

    /// <summary>Packed words plus scales of one matrix: what a pass over it reads once (MXFP4: 0.5 B per value + 1 B per 32).</summary>
    public long BytesPerMatrix => 4L * Rows * RowWords + ScalesPerMatrix * ScaleBytes;

    public long Bytes => Matrices * BytesPerMatrix;

    /// <summary>The nominal largest |code|: int8 127, int4 8 (symmetric), FP8 448, E2M1 6.</summary>
    public float MaxCode => Scheme switch
    {
        QuantScheme.Q8 => 127f,
        QuantScheme.Q4 => 8f,
        QuantScheme.Fp8 => Fp8.MaxE4M3,
        QuantScheme.Mxfp4 => 6f,
        _ => throw new ArgumentOutOfRangeException(nameof(Scheme), Scheme, "unknown quant scheme"),
    };
}

/// <summary>Device buffers of random packed weights (<see cref="QuantShape"/>) and the views the kernels take.</summary>
public sealed class DeviceQuantWeights : IDisposable
{
    private readonly MemoryBuffer1D<uint, Stride1D.Dense> words;
    private readonly MemoryBuffer1D<float, Stride1D.Dense>? scales32;
    private readonly MemoryBuffer1D<ushort, Stride1D.Dense>? scales16;
    private readonly MemoryBuffer1D<byte, Stride1D.Dense>? scales8;

    /// <summary>MXFP4's E8M0 scales spread +-2 around the centre (header).</summary>
    public const int ExponentSpread = 2;

    public DeviceQuantWeights(BenchDevice device, QuantShape shape)
    {
        Shape = shape;
        var fill = device.Fill;
        long scales = shape.Matrices * shape.ScalesPerMatrix;
        float scale = 1f / (shape.MaxCode * MathF.Sqrt(shape.Cols));
        if (shape.Scheme == QuantScheme.Mxfp4 && shape.Cols % RefMxfp4.BlockSize != 0)
            throw new ArgumentException($"DeviceQuantWeights: MXFP4 needs whole blocks of {RefMxfp4.BlockSize} columns, not {shape.Cols}");
        words = fill.PackedCodes(device.Stream, shape.Scheme, shape.TotalRows, shape.RowWords, shape.Cols);
        if (shape.Scheme == QuantScheme.Q4)
            scales16 = fill.PositiveHalves(device.Stream, scales, scale);
        else if (shape.Scheme == QuantScheme.Mxfp4)
            scales8 = fill.Exponents(device.Stream, scales, ExponentCenter(shape.Cols), ExponentSpread);
        else
            scales32 = fill.PositiveFloats(device.Stream, scales, scale);
    }

    public QuantShape Shape { get; }

    /// <summary>The E8M0 byte whose factor is nearest 1/(6 sqrt(cols)): 127 + round(log2(1/(6 sqrt(cols)))).</summary>
    public static int ExponentCenter(int cols) => 127 + (int)Math.Round(-Math.Log2(6.0 * Math.Sqrt(cols)));

    private int TotalRows => checked((int)Shape.TotalRows);

    public Q8Weights Q8 => new(words.View, scales32!.View, TotalRows, Shape.Cols);

    public Q4Weights Q4 => new(words.View, ((ArrayView<ushort>)scales16!.View).Cast<ILGPU.Half>(), default, TotalRows, Shape.Cols, Shape.GroupSize);

    public Fp8Weights Fp8 => new(words.View, scales32!.View, TotalRows, Shape.Cols, Shape.Rows, Shape.BlockN, Shape.BlockK);

    public Mxfp4Weights Mxfp4 => new(words.View, scales8!.View, TotalRows, Shape.Cols);

    /// <summary>Matrix <paramref name="m"/> of the stack as the kernels read it, W [Rows, Cols] (downloads only that matrix).</summary>
    public float[] Dequantize(int m)
    {
        var s = Shape;
        var w = new uint[(long)s.Rows * s.RowWords];
        words.View.SubView((long)m * s.Rows * s.RowWords, w.LongLength).CopyToCPU(w);
        long at = m * s.ScalesPerMatrix;
        switch (s.Scheme)
        {
            case QuantScheme.Q8:
                return RefQuant.DequantQ8(w, Download(scales32!, at, s.ScalesPerMatrix), s.Rows, s.Cols);
            case QuantScheme.Q4:
                return RefQuant.DequantQ4(w, Download(scales16!, at, s.ScalesPerMatrix), [], s.Rows, s.Cols, s.GroupSize);
            case QuantScheme.Fp8:
                return RefQuant.DequantFp8(w, Download(scales32!, at, s.ScalesPerMatrix), s.Rows, s.Cols, s.Rows, s.BlockN, s.BlockK);
            case QuantScheme.Mxfp4:
                // The words are the checkpoint's [Rows, G, 16] bytes read little-endian (Quant/Mxfp4.cs).
                return RefMxfp4.Dequantize(System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.AsSpan()), Download(scales8!, at, s.ScalesPerMatrix),
                    s.Rows, s.Cols / RefMxfp4.BlockSize);
            default:
                throw new ArgumentOutOfRangeException(nameof(m), s.Scheme, "unknown quant scheme");
        }
    }

    private static T[] Download<T>(MemoryBuffer1D<T, Stride1D.Dense> buffer, long offset, long count)
        where T : unmanaged
    {
        var a = new T[count];
        buffer.View.SubView(offset, count).CopyToCPU(a);
        return a;
    }

    public void Dispose()
    {
        words.Dispose();
        scales32?.Dispose();
        scales16?.Dispose();
        scales8?.Dispose();
    }
}
