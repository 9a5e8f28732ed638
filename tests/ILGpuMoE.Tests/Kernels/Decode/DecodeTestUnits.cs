using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Quant;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Quant;
using ILGpuMoE.Tests.Quant;

namespace ILGpuMoE.Tests.Kernels.Decode;

/// <summary>A test body run once per reader kind: the device readers of the matrices and the values each one holds
/// (rounded to its dtype, or the reference's dequantization of the packed matrix).</summary>
internal interface IUnitsTest
{
    void Run<TU>(TU[] readers, float[][] seen)
        where TU : struct, IRowUnits;
}

/// <summary>One weight matrix [Rows, Cols] of a test (stacked experts: Parts matrices of Rows / Parts rows each).</summary>
internal sealed record TestMatrix(float[] Values, int Rows, int Cols, int Parts = 1);

internal static class DecodeTestUnits
{
    /// <summary>Every reader: the wide float ones, the scalar tail path over f32 and bf16, and the packed schemes
    /// (q4 with and without zeros, a G that is no power of two, fp8 with several blocks per row and per tensor, and
    /// gpt-oss's MXFP4 rounded from the values block by block, so its scales differ per block).</summary>
    public static readonly string[] Kinds =
        ["f32", "f16", "bf16", "scalar-f32", "scalar-bf16", "q8", "q4-sym-g32", "q4-zero-g64", "q4-row", "fp8-block", "fp8-tensor", "mxfp4"];

    /// <summary>Columns a kind reads with an odd shape: 37 for the scalar path (no whole 16-byte words), a multiple of G
    /// for q4 (96 = three groups of 32; q4-row: one group of 96), 72 for q8/fp8 (the last unit half padding), 40 for
    /// the wide float readers (not a multiple of the 32 lanes' units).</summary>
    public static int Cols(string kind) => kind switch
    {
        "scalar-f32" or "scalar-bf16" => 37,
        "q4-sym-g32" or "q4-row" or "mxfp4" => 96,
        "q4-zero-g64" => 128,
        "q8" or "fp8-block" or "fp8-tensor" => 72,
        "f32" or "f16" or "bf16" => 40,
        _ => throw new ArgumentException(kind),
    };

    public static void With(string kind, IReadOnlyList<TestMatrix> mats, IUnitsTest test)
    {
        var acc = TestDevice.Accelerator;
        var owned = new List<IDisposable>();
        try
        {
            switch (kind)
            {
                case "f32":
                    Run(mats, m => m.Values, m => RowUnits.F32(new F32Weights(Own(owned, TestDevice.Upload(m.Values)).View), m.Rows, m.Cols), test);
                    break;
                case "f16":
                    Run(mats, m => Data.RoundToHalf(m.Values), m => RowUnits.F16(F16(owned, m.Values), m.Rows, m.Cols), test);
                    break;
                case "bf16":
                    Run(mats, m => Data.RoundToBf16(m.Values), m => RowUnits.BF16(BF16(owned, m.Values), m.Rows, m.Cols), test);
                    break;
                case "scalar-f32":
                    Run(mats, m => m.Values, m => RowUnits.Scalar(new F32Weights(Own(owned, TestDevice.Upload(m.Values)).View), m.Rows, m.Cols), test);
                    break;
                case "scalar-bf16":
                    Run(mats, m => Data.RoundToBf16(m.Values), m => RowUnits.Scalar(BF16(owned, m.Values), m.Rows, m.Cols), test);
                    break;
                case "mxfp4":
                {
                    var mx = mats.Select(m => Mxfp4TestData.Quantize(m.Values, m.Rows, m.Cols)).ToArray();
                    var devices = mx.Select(m => Own(owned, m.Upload())).ToArray();
                    test.Run(devices.Select(d => RowUnits.Mxfp4(d.View)).ToArray(), mx.Select(m => m.Dequant()).ToArray());
                    break;
                }

                default:
                {
                    var packed = mats.Select(m => Pack(kind, m)).ToArray();
                    var devices = packed.Select(p => Own(owned, p.Upload(acc))).ToArray();
                    var seen = packed.Select(QuantTestData.RefDequant).ToArray();
                    switch (packed[0].Scheme)
                    {
                        case QuantScheme.Q8: test.Run(devices.Select(d => RowUnits.Q8(d.View<Q8Weights>())).ToArray(), seen); break;
                        case QuantScheme.Q4: test.Run(devices.Select(d => RowUnits.Q4(d.View<Q4Weights>())).ToArray(), seen); break;
                        case QuantScheme.Fp8: test.Run(devices.Select(d => RowUnits.Fp8(d.View<Fp8Weights>())).ToArray(), seen); break;
                        default: throw new ArgumentException(kind);
                    }

                    break;
                }
            }
        }
        finally
        {
            foreach (var d in owned)
                d.Dispose();
        }
    }

    /// <summary>Packs a matrix (stacked: each expert quantized alone, then QuantizedMatrix.Stack, as the runtime does).</summary>
    private static QuantizedMatrix Pack(string kind, TestMatrix m)
    {
        int n = m.Rows / m.Parts;
        if (m.Parts == 1)
            return QuantTestData.Quantize(kind, m.Values, m.Rows, m.Cols);
        var parts = Enumerable.Range(0, m.Parts)
            .Select(e => QuantTestData.Quantize(kind, m.Values.AsSpan(e * n * m.Cols, n * m.Cols).ToArray(), n, m.Cols)).ToArray();
        return QuantizedMatrix.Stack(parts);
    }

    private static void Run<TU>(IReadOnlyList<TestMatrix> mats, Func<TestMatrix, float[]> seen, Func<TestMatrix, TU> reader, IUnitsTest test)
        where TU : struct, IRowUnits =>
        test.Run(mats.Select(reader).ToArray(), mats.Select(seen).ToArray());

    private static T Own<T>(List<IDisposable> owned, T d)
        where T : IDisposable
    {
        owned.Add(d);
        return d;
    }

    private static F16Weights F16(List<IDisposable> owned, float[] values)
    {
        var b = Own(owned, TestDevice.Upload(values.Select(v => BitConverter.HalfToUInt16Bits((System.Half)v)).ToArray()));
        return new F16Weights(((ArrayView<ushort>)b.View).Cast<ILGPU.Half>());
    }

    private static BF16Weights BF16(List<IDisposable> owned, float[] values) =>
        new(Own(owned, TestDevice.Upload(values.Select(BF16Bits).ToArray())).View);

    private static ushort BF16Bits(float v) => Common.BF16.FromFloat(v);

    private static readonly Dictionary<Type, object> Launchers = [];

    /// <summary>One launcher per type for the whole run (loading a kernel is the slow part of a small test).</summary>
    public static T Cached<T>(Func<T> create)
        where T : class
    {
        lock (Launchers)
        {
            if (!Launchers.TryGetValue(typeof(T), out var k))
                Launchers[typeof(T)] = k = create();
            return (T)k;
        }
    }

    /// <summary>Tolerance for a dot product of length k: 1e-5 relative plus ~1e-6 * sqrt(k) absolute.</summary>
    public static double DotAtol(int k) => 1e-6 * Math.Sqrt(k);
}
