// Random device data without a host round trip: value i of a buffer is a pure function of (seed, i), computed on the
// device (filling Mixtral's 2.8 GB of expert weights from the host would take longer than the benchmark). The checks
// download what they compare (device values, exactly what the kernel read), so the host never needs to recompute them.
// Values are uniform in [-scale, scale), never all zero. 16-bit types are rounded to nearest even from the f32 value.
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;

namespace ILGpuMoE.Perf.Suite;

public sealed class DeviceFill : IDisposable
{
    // A fixed grid with a grid-stride loop: buffers may exceed 2^31 elements (DeepSeek-V3's stacked experts).
    private const int Threads = 1 << 18;
    private const int GroupSize = 256;

    private readonly Accelerator accelerator;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ulong, float> f32;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ulong, float> bf16;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ulong, float> f16;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, ulong, int> ints;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ulong, float> positiveF32;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<ushort>, ulong, float> positiveF16;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<uint>, ulong, int, int, int> codes;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<byte>, ulong, int, int> exponents;
    private ulong nextSeed = 0x5EED_0000_0000_0001UL;

    public DeviceFill(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        f32 = accelerator.LoadKernel<ArrayView<float>, ulong, float>(FillF32);
        bf16 = accelerator.LoadKernel<ArrayView<ushort>, ulong, float>(FillBF16);
        f16 = accelerator.LoadKernel<ArrayView<ushort>, ulong, float>(FillF16);
        ints = accelerator.LoadKernel<ArrayView<int>, ulong, int>(FillInts);
        positiveF32 = accelerator.LoadKernel<ArrayView<float>, ulong, float>(FillPositiveF32);
        positiveF16 = accelerator.LoadKernel<ArrayView<ushort>, ulong, float>(FillPositiveF16);
        codes = accelerator.LoadKernel<ArrayView<uint>, ulong, int, int, int>(FillCodes);
        exponents = accelerator.LoadKernel<ArrayView<byte>, ulong, int, int>(FillExponents);
    }

    /// <summary>A fresh seed per call: two buffers never hold the same values.</summary>
    public ulong NextSeed() => nextSeed = Mix(nextSeed);

    public MemoryBuffer1D<float, Stride1D.Dense> Floats(AcceleratorStream stream, long n, float scale = 1f)
    {
        var b = accelerator.Allocate1D<float>(Math.Max(1, n));
        f32(stream, Config(n), b.View, NextSeed(), scale);
        return b;
    }

    /// <summary>Weights of the given type as raw storage: F32 as float bits, F16/BF16 as 16-bit words.</summary>
    public WeightBuffer Weights(AcceleratorStream stream, WeightType type, long n, float scale)
    {
        if (type == WeightType.F32)
            return new WeightBuffer(type, Floats(stream, n, scale), null, n);
        var b = accelerator.Allocate1D<ushort>(Math.Max(1, n));
        (type == WeightType.BF16 ? bf16 : f16)(stream, Config(n), b.View, NextSeed(), scale);
        return new WeightBuffer(type, null, b, n);
    }

    /// <summary>Ints uniform in [0, modulo).</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> Ints(AcceleratorStream stream, long n, int modulo)
    {
        var b = accelerator.Allocate1D<int>(Math.Max(1, n));
        ints(stream, Config(n), b.View, NextSeed(), modulo);
        return b;
    }

    /// <summary>Floats uniform in [0.5, 1.5) x scale (quantization scales: positive, never zero).</summary>
    public MemoryBuffer1D<float, Stride1D.Dense> PositiveFloats(AcceleratorStream stream, long n, float scale)
    {
        var b = accelerator.Allocate1D<float>(Math.Max(1, n));
        positiveF32(stream, Config(n), b.View, NextSeed(), scale);
        return b;
    }

    /// <summary>F16 bits of values uniform in [0.5, 1.5) x scale.</summary>
    public MemoryBuffer1D<ushort, Stride1D.Dense> PositiveHalves(AcceleratorStream stream, long n, float scale)
    {
        var b = accelerator.Allocate1D<ushort>(Math.Max(1, n));
        positiveF16(stream, Config(n), b.View, NextSeed(), scale);
        return b;
    }

    /// <summary>
    /// E8M0 scale bytes (MXFP4's block factor 2^(s - 127)) uniform in [center - spread, center + spread]: the blocks'
    /// factors differ (a kernel that applied one block's scale to another fails the check) and stay finite.
    /// </summary>
    public MemoryBuffer1D<byte, Stride1D.Dense> Exponents(AcceleratorStream stream, long n, int center, int spread)
    {
        if (center - spread < 0 || center + spread > 254)
            throw new ArgumentOutOfRangeException(nameof(center), $"E8M0 scales {center} +- {spread} leave 0..254");
        var b = accelerator.Allocate1D<byte>(Math.Max(1, n));
        exponents(stream, Config(n), b.View, NextSeed(), center, spread);
        return b;
    }

    /// <summary>
    /// Packed code words [rows, rowWords] of a quantized matrix (DeviceQuant.cs): random bytes, int8 without -128,
    /// FP8 without its NaN codes, zero past <paramref name="cols"/> in each row (int8/FP8); int4 and MXFP4 words are all
    /// random (every nibble is a valid int4 or E2M1 code; MXFP4 rows are whole blocks, no padding).
    /// </summary>
    public MemoryBuffer1D<uint, Stride1D.Dense> PackedCodes(AcceleratorStream stream, Kernels.Quant.QuantScheme scheme, long rows, int rowWords, int cols)
    {
        long n = rows * rowWords;
        int mode = scheme switch
        {
            Kernels.Quant.QuantScheme.Q8 => CodesQ8,
            Kernels.Quant.QuantScheme.Fp8 => CodesFp8,
            Kernels.Quant.QuantScheme.Q4 or Kernels.Quant.QuantScheme.Mxfp4 => CodesNibbles,
            _ => throw new ArgumentOutOfRangeException(nameof(scheme), scheme, "unknown quant scheme"),
        };
        var b = accelerator.Allocate1D<uint>(Math.Max(1, n));
        codes(stream, Config(n), b.View, NextSeed(), rowWords, cols, mode);
        return b;
    }

    private const int CodesQ8 = 0, CodesFp8 = 1, CodesNibbles = 2;

    private static KernelConfig Config(long n) =>
        new((int)Math.Max(1, Math.Min(Threads, n + GroupSize - 1) / GroupSize), GroupSize);

    public static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    // Uniform in [-1, 1) from the top 24 bits (exact in f32).
    private static float Unit(ulong seed, long i) => (int)(Mix(seed ^ (ulong)i) >> 40) * (1f / (1 << 23)) - 1f;

    private static void FillF32(ArrayView<float> data, ulong seed, float scale)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < data.Length; i += stride)
            data[i] = Unit(seed, i) * scale;
    }

    private static void FillBF16(ArrayView<ushort> data, ulong seed, float scale)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < data.Length; i += stride)
        {
            uint bits = Interop.FloatAsInt(Unit(seed, i) * scale);
            data[i] = (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
        }
    }

    private static void FillF16(ArrayView<ushort> data, ulong seed, float scale)
    {
        var halves = data.Cast<ILGPU.Half>();
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < data.Length; i += stride)
            halves[i] = (ILGPU.Half)(Unit(seed, i) * scale);
    }

    private static void FillInts(ArrayView<int> data, ulong seed, int modulo)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < data.Length; i += stride)
            data[i] = (int)(Mix(seed ^ (ulong)i) % (ulong)modulo);
    }

    private static void FillPositiveF32(ArrayView<float> data, ulong seed, float scale)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < data.Length; i += stride)
            data[i] = (1f + 0.5f * Unit(seed, i)) * scale;
    }

    private static void FillPositiveF16(ArrayView<ushort> data, ulong seed, float scale)
    {
        var halves = data.Cast<ILGPU.Half>();
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < data.Length; i += stride)
            halves[i] = (ILGPU.Half)((1f + 0.5f * Unit(seed, i)) * scale);
    }

    private static void FillExponents(ArrayView<byte> data, ulong seed, int center, int spread)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < data.Length; i += stride)
            data[i] = (byte)(center - spread + (int)(Mix(seed ^ (ulong)i) % (ulong)(2 * spread + 1)));
    }

    private static void FillCodes(ArrayView<uint> data, ulong seed, int rowWords, int cols, int mode)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < data.Length; i += stride)
        {
            uint bits = (uint)Mix(seed ^ (ulong)i);
            if (mode != CodesNibbles)
            {
                int k0 = (int)(i % rowWords) * 4;
                uint word = 0;
                for (int b = 0; b < 4; b++)
                {
                    uint v = (bits >> (8 * b)) & 0xFFu;
                    if (mode == CodesQ8 && v == 0x80u)
                        v = 0x81u; // -128 -> -127
                    if (mode == CodesFp8 && (v & 0x7Fu) == 0x7Fu)
                        v -= 1u; // NaN -> +-448
                    if (k0 + b < cols)
                        word |= v << (8 * b);
                }

                bits = word;
            }

            data[i] = bits;
        }
    }

    public void Dispose()
    {
    }
}

/// <summary>Device weights in their storage type, with the IWeights readers the kernels take.</summary>
public sealed class WeightBuffer(WeightType type, MemoryBuffer1D<float, Stride1D.Dense>? floats, MemoryBuffer1D<ushort, Stride1D.Dense>? words, long length) : IDisposable
{
    public WeightType Type { get; } = type;

    public long Length { get; } = length;

    public int ElementBytes => Type == WeightType.F32 ? 4 : 2;

    public long Bytes => Length * ElementBytes;

    public F32Weights F32 => new(((ArrayView<float>)floats!.View).SubView(0, Length));

    public F16Weights F16 => new(((ArrayView<ushort>)words!.View).SubView(0, Length).Cast<ILGPU.Half>());

    public BF16Weights BF16 => new(((ArrayView<ushort>)words!.View).SubView(0, Length));

    /// <summary>Elements [offset, offset + count) widened to float, exactly as the kernels read them.</summary>
    public float[] Download(long offset, long count)
    {
        var result = new float[count];
        if (Type == WeightType.F32)
        {
            ((ArrayView<float>)floats!.View).SubView(offset, count).CopyToCPU(result);
            return result;
        }

        var raw = new ushort[count];
        ((ArrayView<ushort>)words!.View).SubView(offset, count).CopyToCPU(raw);
        for (long i = 0; i < count; i++)
        {
            result[i] = Type == WeightType.BF16
                ? BitConverter.Int32BitsToSingle(raw[i] << 16)
                : (float)BitConverter.UInt16BitsToHalf(raw[i]);
        }

        return result;
    }

    public float[] Download() => Download(0, Length);

    public void Dispose()
    {
        floats?.Dispose();
        words?.Dispose();
    }
}

public static class WeightTypes
{
    public static string Label(WeightType t) => t switch
    {
        WeightType.F32 => "f32",
        WeightType.F16 => "f16",
        WeightType.BF16 => "bf16",
        _ => throw new UnreachableException($"weight type {(int)t}"),
    };

    public static int Bytes(WeightType t) => t == WeightType.F32 ? 4 : 2;
}
