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
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Suite;

/// <summary>The shape of <paramref name="Matrices"/> stacked matrices [Rows, Cols] in one scheme, and their packed sizes.</summary>
public sealed record QuantShape(QuantScheme Scheme, int Matrices, int Rows, int Cols, int GroupSize = 0, int BlockN = 128, int BlockK = 128)
{
    public int RowWords => Scheme == QuantScheme.Q4 ? QuantLayout.NibbleRowWords(Cols) : QuantLayout.ByteRowWords(Cols);

    public long TotalRows => (long)Matrices * Rows;

    /// <summary>Scales of one matrix: per row (Q8), per (row, group) (Q4), per block (FP8).</summary>
    public long ScalesPerMatrix => Scheme switch
    {
        QuantScheme.Q8 => Rows,
        QuantScheme.Q4 => (long)Rows * (Cols / GroupSize),
        QuantScheme.Fp8 => (long)((Rows + BlockN - 1) / BlockN) * ((Cols + BlockK - 1) / BlockK),
        _ => throw new ArgumentOutOfRangeException(nameof(Scheme), Scheme, "unknown quant scheme"),
    };

    private int ScaleBytes => Scheme == QuantScheme.Q4 ? 2 : 4;

    /// <summary>Packed words plus scales of one matrix: what a pass over it reads once.</summary>
    public long BytesPerMatrix => 4L * Rows * RowWords + ScalesPerMatrix * ScaleBytes;

    public long Bytes => Matrices * BytesPerMatrix;

    /// <summary>The nominal largest |code|: int8 127, int4 8 (symmetric), FP8 448.</summary>
    public float MaxCode => Scheme switch
    {
        QuantScheme.Q8 => 127f,
        QuantScheme.Q4 => 8f,
        QuantScheme.Fp8 => Fp8.MaxE4M3,
        _ => throw new ArgumentOutOfRangeException(nameof(Scheme), Scheme, "unknown quant scheme"),
    };
}

/// <summary>Device buffers of random packed weights (<see cref="QuantShape"/>) and the views the kernels take.</summary>
public sealed class DeviceQuantWeights : IDisposable
{
    private readonly MemoryBuffer1D<uint, Stride1D.Dense> words;
    private readonly MemoryBuffer1D<float, Stride1D.Dense>? scales32;
    private readonly MemoryBuffer1D<ushort, Stride1D.Dense>? scales16;

    public DeviceQuantWeights(BenchDevice device, QuantShape shape)
    {
        Shape = shape;
        var fill = device.Fill;
        long scales = shape.Matrices * shape.ScalesPerMatrix;
        float scale = 1f / (shape.MaxCode * MathF.Sqrt(shape.Cols));
        words = fill.PackedCodes(device.Stream, shape.Scheme, shape.TotalRows, shape.RowWords, shape.Cols);
        if (shape.Scheme == QuantScheme.Q4)
            scales16 = fill.PositiveHalves(device.Stream, scales, scale);
        else
            scales32 = fill.PositiveFloats(device.Stream, scales, scale);
    }

    public QuantShape Shape { get; }

    private int TotalRows => checked((int)Shape.TotalRows);

    public Q8Weights Q8 => new(words.View, scales32!.View, TotalRows, Shape.Cols);

    public Q4Weights Q4 => new(words.View, ((ArrayView<ushort>)scales16!.View).Cast<ILGPU.Half>(), default, TotalRows, Shape.Cols, Shape.GroupSize);

    public Fp8Weights Fp8 => new(words.View, scales32!.View, TotalRows, Shape.Cols, Shape.Rows, Shape.BlockN, Shape.BlockK);

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
    }
}
