using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Quant;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Quant;

/// <summary>The schemes the kernel tests run: name -> how to quantize an F32 matrix.</summary>
public static class QuantTestData
{
    // q4-row: one group per row (G = K, GPTQ's group_size -1), at K = 96: a G that is no power of two.
    // q4-spread-g32: several groups per row whose scales differ by 4x to 64x (SpreadGroups), so a scale looked up with
    // a wrong group or row index is far off, not within an error bound.
    public static readonly string[] Schemes = ["q8", "q4-sym-g32", "q4-zero-g64", "q4-row", "q4-spread-g32", "fp8-block", "fp8-tensor"];

    private static readonly Lazy<QuantGemvKernel> GemvKernel = new(() => QuantGemvKernel.Create(TestDevice.Accelerator));
    private static readonly Lazy<QuantGemmKernel> GemmKernel = new(() => QuantGemmKernel.Create(TestDevice.Accelerator));
    private static readonly Lazy<Action<KernelConfig, ArrayView<float>, Q8Weights, int>> GetQ8 = new(() => Load<Q8Weights>());
    private static readonly Lazy<Action<KernelConfig, ArrayView<float>, Q4Weights, int>> GetQ4 = new(() => Load<Q4Weights>());
    private static readonly Lazy<Action<KernelConfig, ArrayView<float>, Fp8Weights, int>> GetFp8 = new(() => Load<Fp8Weights>());

    public static QuantGemvKernel Gemv => GemvKernel.Value;

    public static QuantGemmKernel Gemm => GemmKernel.Value;

    /// <summary>Input dim used with a scheme: a multiple of G for Q4, deliberately not a multiple of 16 otherwise.</summary>
    public static int InDim(string scheme) => scheme switch
    {
        "q4-sym-g32" => 96,
        "q4-zero-g64" => 128,
        "q4-row" => 96,
        "q4-spread-g32" => 128, // four groups per row
        _ => 72,
    };

    /// <summary>W with group g of row n scaled by 4^((g + n) % 4) / 64: neighbouring groups of a row, and the same group
    /// of neighbouring rows, get scales 4x to 64x apart.</summary>
    public static float[] SpreadGroups(float[] w, int rows, int cols, int groupSize)
    {
        var s = new float[w.Length];
        for (int n = 0; n < rows; n++)
        {
            for (int k = 0; k < cols; k++)
                s[(long)n * cols + k] = w[(long)n * cols + k] * MathF.ScaleB(1, 2 * ((k / groupSize + n) % 4) - 6);
        }

        return s;
    }

    /// <summary>Quantizes W [rows, cols]; fp8-block uses 16 x 32 blocks so small test matrices span several blocks.</summary>
    public static QuantizedMatrix Quantize(string scheme, float[] w, int rows, int cols) => scheme switch
    {
        "q8" => Q8Matrix.Quantize(w, rows, cols),
        "q4-sym-g32" => Q4Matrix.Quantize(w, rows, cols, 32, symmetric: true),
        "q4-zero-g64" => Q4Matrix.Quantize(w, rows, cols, 64, symmetric: false),
        "q4-row" => Q4Matrix.Quantize(w, rows, cols, cols, symmetric: false),
        "q4-spread-g32" => Q4Matrix.Quantize(SpreadGroups(w, rows, cols, 32), rows, cols, 32, symmetric: false),
        "q4-zero-g128" => Q4Matrix.Quantize(w, rows, cols, 128, symmetric: false),
        "q4-sym-g128" => Q4Matrix.Quantize(w, rows, cols, 128, symmetric: true),
        "fp8-block" => Fp8Matrix.Quantize(w, rows, cols, 16, 32),
        "fp8-block128" => Fp8Matrix.Quantize(w, rows, cols),
        "fp8-tensor" => Fp8Matrix.QuantizePerTensor(w, rows, cols),
        _ => throw new ArgumentException(scheme),
    };

    /// <summary>The reference's dequantization of a packed matrix (from the layout's definition, not the kernels' code).</summary>
    public static float[] RefDequant(QuantizedMatrix m) => m switch
    {
        Q8Matrix q => RefQuant.DequantQ8(q.Words, q.Scales, q.Rows, q.Cols),
        Q4Matrix q => RefQuant.DequantQ4(q.Words, q.Scales, q.Zeros, q.Rows, q.Cols, q.GroupSize),
        Fp8Matrix f => RefQuant.DequantFp8(f.Words, f.Scales, f.Rows, f.Cols, f.MatrixRows, f.BlockN, f.BlockK),
        // The words are the checkpoint's 16-byte blocks as they are: the Hub layout RefMxfp4 dequantizes.
        Mxfp4Matrix x => RefMxfp4.Dequantize(System.Runtime.InteropServices.MemoryMarshal.AsBytes(x.Words.AsSpan()), x.Scales, x.Rows, x.Cols / RefMxfp4.BlockSize),
        _ => throw new System.Diagnostics.UnreachableException($"RefDequant: no reference for {m.GetType().Name}"),
    };

    /// <summary>Runs the device's element reader (IWeights.Get) over every element: the kernels' dequantized W.</summary>
    public static float[] DeviceDequant(QuantizedMatrix m)
    {
        var acc = TestDevice.Accelerator;
        using var d = m.Upload(acc);
        long n = (long)m.Rows * m.Cols;
        using var y = TestDevice.PoisonedFloats(n);
        var cfg = new KernelConfig((int)((n + 255) / 256), 256);
        switch (m.Scheme)
        {
            case QuantScheme.Q8: GetQ8.Value(cfg, y.View, d.View<Q8Weights>(), (int)n); break;
            case QuantScheme.Q4: GetQ4.Value(cfg, y.View, d.View<Q4Weights>(), (int)n); break;
            case QuantScheme.Fp8: GetFp8.Value(cfg, y.View, d.View<Fp8Weights>(), (int)n); break;
            default: throw new System.Diagnostics.UnreachableException($"DeviceDequant: {m.Scheme}");
        }

        acc.Synchronize();
        return y.GetAsArray1D();
    }

    private static void ReadAll<TW>(ArrayView<float> y, TW w, int n)
        where TW : struct, IQuantWeights
    {
        int i = Grid.GlobalIndex.X;
        if (i < n)
            y[i] = w.Get(i);
    }

    private static Action<KernelConfig, ArrayView<float>, TW, int> Load<TW>()
        where TW : struct, IQuantWeights
    {
        var k = TestDevice.Accelerator.LoadKernel<ArrayView<float>, TW, int>(ReadAll);
        return (c, y, w, n) => k(TestDevice.Accelerator.DefaultStream, c, y, w, n);
    }

    public static void Run(DeviceQuantMatrix d, Action<Q8Weights> q8, Action<Q4Weights> q4, Action<Fp8Weights> fp8)
    {
        switch (d.Host.Scheme)
        {
            case QuantScheme.Q8: q8(d.View<Q8Weights>()); break;
            case QuantScheme.Q4: q4(d.View<Q4Weights>()); break;
            case QuantScheme.Fp8: fp8(d.View<Fp8Weights>()); break;
            default: throw new System.Diagnostics.UnreachableException($"Run: {d.Host.Scheme}");
        }
    }
}
