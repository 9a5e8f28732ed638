// int8, symmetric, one F32 scale per output row (QuantLayout.cs "Q8"): --quant int8, our checkpoint form only.
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

/// <summary>--quant int8.</summary>
public sealed record Int8Spec() : QuantSpec("int8")
{
    public static readonly QuantSchemeInfo Info = new(["int8"], (n, _) => n == "int8" ? new Int8Spec() : null);

    public override QuantScheme Layout => QuantScheme.Q8;

    public override int RowWords(int cols) => QuantLayout.ByteRowWords(cols);

    public override QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols) => Q8Matrix.Quantize(w, rows, cols);

    private protected override long BytesOfOne(long rows, long cols) => rows * RowWords((int)cols) * 4L + rows * 4L;

    public override IReadOnlyList<(string Suffix, DType DType, long[] Shape)> ScaleTensors(long rows, long cols) => [(".scales", DType.F32, [rows])];

    internal override QuantizedMatrix ReadPacked(Checkpoint checkpoint, string baseName, int rows, int cols, uint[] words, int[]? inputPermutation) =>
        new Q8Matrix(rows, cols, words, checkpoint.GetSpan<float>(baseName + ".scales").ToArray());
}

/// <summary>Q8 on the host: words [Rows, ceil(Cols/16)*4], scales F32 [Rows].</summary>
public sealed class Q8Matrix : QuantizedMatrix
{
    internal Q8Matrix(int rows, int cols, uint[] words, float[] scales, int matrixRows = 0)
        : base(rows, cols, words, matrixRows, null) => Scales = scales;

    /// <summary>[Rows] F32.</summary>
    public float[] Scales { get; }

    public override QuantScheme Scheme => QuantScheme.Q8;

    public override int RowWords => QuantLayout.ByteRowWords(Cols);

    public override string TypeName => "Q8";

    private protected override long ScaleBytes => Scales.LongLength * 4;

    private protected override bool SameParameters(QuantizedMatrix other) => true;

    private protected override QuantizedMatrix WithLayout(int rows, uint[] words, int matrixRows, int[]? inputPermutation, RowScales scales) =>
        new Q8Matrix(rows, Cols, words, scales.Of(this, m => m.Scales, 1), matrixRows);

    private protected override IEnumerable<byte[]> ScaleTensorBytes() => [MemoryMarshal.AsBytes(Scales.AsSpan()).ToArray()];

    public override DeviceQuantMatrix Upload(Accelerator accelerator) => new Device(accelerator, this);

    /// <summary>int8 symmetric per output row: scale = max|w| / 127, q = round(w / scale).</summary>
    public static Q8Matrix Quantize(ReadOnlySpan<float> w, int rows, int cols)
    {
        Quantizer.CheckShape("QuantizeQ8", w, rows, cols);
        int rowWords = QuantLayout.ByteRowWords(cols);
        var words = new uint[(long)rows * rowWords];
        var scales = new float[rows];
        Quantizer.ForRows(w, rows, (all, n) =>
        {
            var row = all.Slice(n * cols, cols);
            float amax = Quantizer.MaxAbs(row);
            float scale = amax / 127f;
            scales[n] = scale;
            var dst = words.AsSpan((int)((long)n * rowWords), rowWords);
            for (int k = 0; k < cols; k++)
            {
                int q = scale == 0f ? 0 : (int)Math.Clamp(Math.Round(row[k] / (double)scale, MidpointRounding.ToEven), -127, 127);
                dst[k / 4] |= (uint)(byte)(sbyte)q << (8 * (k % 4));
            }
        });
        return new Q8Matrix(rows, cols, words, scales);
    }

    private sealed class Device : DeviceQuantMatrix<Q8Weights>
    {
        private readonly ArrayView<float> scales;

        public Device(Accelerator accelerator, Q8Matrix m)
            : base(accelerator, m) => scales = Own(accelerator.Allocate1D(m.Scales)).View;

        public override Q8Weights Weights => new(WordsView, scales, Host.Rows, Host.Cols);

        internal override IRowUnits DecodeUnits() => RowUnits.Q8(Weights);

        internal override void LaunchGemv(QuantGemvKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
            kernel.Launch(stream, x, Weights, y, tokens, accumulate: accumulate);

        internal override void LaunchGemm(QuantGemmKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
            kernel.Launch(stream, x, Weights, y, tokens, accumulate);
    }
}
