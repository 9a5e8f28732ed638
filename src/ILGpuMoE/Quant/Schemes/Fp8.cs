// FP8 E4M3FN with F32 scales per block of rows x columns (QuantLayout.cs "FP8"): --quant fp8-block128 (128 x 128
// blocks, the DeepSeek-V3 / FP8 Mixtral checkpoint layout) and fp8-tensor (one scale), our checkpoint form, and the
// "fp8" checkpoint form (E4M3 BASE.weight + weight_scale_inv or weight_scale, read by CheckpointRepack.ReadFp8).
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

/// <summary>--quant fp8-block128 (<paramref name="PerTensor"/> false) or fp8-tensor.</summary>
public sealed record Fp8Spec(string Name, bool PerTensor) : QuantSpec(Name)
{
    private const int Block = Quantizer.Fp8Block;

    public static readonly QuantSchemeInfo Info = new(
        ["fp8-block128", "fp8-tensor"],
        (n, _) => n switch
        {
            "fp8-block128" => new Fp8Spec(n, PerTensor: false),
            "fp8-tensor" => new Fp8Spec(n, PerTensor: true),
            _ => null,
        },
        CheckpointMethods: ["fp8"],
        FromCheckpoint: FromCheckpoint);

    public override QuantScheme Layout => QuantScheme.Fp8;

    public override int RowWords(int cols) => QuantLayout.ByteRowWords(cols);

    public override QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols) =>
        PerTensor ? Fp8Matrix.QuantizePerTensor(w, rows, cols) : Fp8Matrix.Quantize(w, rows, cols);

    private protected override long BytesOfOne(long rows, long cols) => rows * RowWords((int)cols) * 4L + ScaleCount(rows, cols) * 4L;

    private long ScaleCount(long rows, long cols) => PerTensor ? 1 : (rows + Block - 1) / Block * ((cols + Block - 1) / Block);

    public override IReadOnlyList<(string Suffix, DType DType, long[] Shape)> ScaleTensors(long rows, long cols) =>
        [(".scales", DType.F32, PerTensor ? [1, 1] : [(rows + Block - 1) / Block, (cols + Block - 1) / Block])];

    internal override QuantizedMatrix ReadPacked(Checkpoint checkpoint, string baseName, int rows, int cols, uint[] words, int[]? inputPermutation) =>
        new Fp8Matrix(rows, cols, words, checkpoint.GetSpan<float>(baseName + ".scales").ToArray(), PerTensor ? rows : Block, PerTensor ? cols : Block);

    public override void Describe(JsonObject config) => config["weight_block_size"] = PerTensor ? null : new JsonArray(Block, Block);

    // Activations stay F32 (any static input_scale is not used).
    private static QuantSource FromCheckpoint(QuantConfigJson q)
    {
        if (q.Element.TryGetProperty("weight_block_size", out var b) && b.ValueKind == JsonValueKind.Array)
        {
            var dims = b.EnumerateArray().Select(e => e.TryGetInt32(out int v) ? v : -1).ToArray();
            if (dims.Length != 2 || dims[0] != Block || dims[1] != Block)
                throw q.Error("weight_block_size", $"[{string.Join(", ", dims)}] is not supported ([128, 128] only)");
            return new Fp8Source(new Fp8Spec("fp8-block128", PerTensor: false));
        }

        return new Fp8Source(new Fp8Spec("fp8-tensor", PerTensor: true));
    }

    /// <summary>FP8 checkpoints: BASE.weight + weight_scale_inv (128 x 128 blocks) or weight_scale (per tensor).</summary>
    private sealed class Fp8Source(Fp8Spec plan) : QuantSource("fp8", plan)
    {
        private protected override QuantizedMatrix ReadBase(Checkpoint checkpoint, string baseName, int rows, int cols) =>
            CheckpointRepack.ReadFp8(checkpoint, baseName);
    }
}

/// <summary>FP8 on the host: bytes as Q8, scales F32 [Rows/MatrixRows, ceil(MatrixRows/BlockN), ceil(Cols/BlockK)].</summary>
public sealed class Fp8Matrix : QuantizedMatrix
{
    internal Fp8Matrix(int rows, int cols, uint[] words, float[] scales, int blockN, int blockK, int matrixRows = 0)
        : base(rows, cols, words, matrixRows, null)
    {
        Scales = scales;
        BlockN = blockN;
        BlockK = blockK;
    }

    /// <summary>[Rows/MatrixRows, ceil(MatrixRows/BlockN), ceil(Cols/BlockK)] F32.</summary>
    public float[] Scales { get; }

    /// <summary>Scale block (rows, columns); per-tensor scaling is (MatrixRows, Cols).</summary>
    public int BlockN { get; }

    public int BlockK { get; }

    public override QuantScheme Scheme => QuantScheme.Fp8;

    public override int RowWords => QuantLayout.ByteRowWords(Cols);

    public override string TypeName => $"Fp8 {BlockN}x{BlockK}";

    private protected override long ScaleBytes => Scales.LongLength * 4;

    private protected override string? WhyRowsCannotMove => "FP8 scale blocks span several rows; rows cannot be moved one by one";

    private protected override bool SameParameters(QuantizedMatrix other) => other is Fp8Matrix f && f.BlockN == BlockN && f.BlockK == BlockK;

    private protected override QuantizedMatrix WithLayout(int rows, uint[] words, int matrixRows, int[]? inputPermutation, RowScales scales) =>
        scales.Order is null
            ? new Fp8Matrix(rows, Cols, words, scales.Of(this, m => m.Scales, 0), BlockN, BlockK, matrixRows)
            : throw new UnreachableException("Fp8Matrix: rows cannot move one by one (WhyRowsCannotMove)");

    private protected override IEnumerable<byte[]> ScaleTensorBytes() => [MemoryMarshal.AsBytes(Scales.AsSpan()).ToArray()];

    public override DeviceQuantMatrix Upload(Accelerator accelerator) => new Device(accelerator, this);

    /// <summary>code * its block's scale for every element (exact in F32: a 4-bit mantissa times an F32 scale rounds once).</summary>
    public override float[] ToFloat32()
    {
        if (MatrixRows != Rows)
            throw new NotSupportedException("Fp8Matrix.ToFloat32: stacked matrices are not widened");
        int sc = (Cols + BlockK - 1) / BlockK;
        var w = new float[(long)Rows * Cols];
        for (int r = 0; r < Rows; r++)
        {
            for (int k = 0; k < Cols; k++)
            {
                uint code = (Words[(long)r * RowWords + k / 4] >> (8 * (k % 4))) & 0xFF;
                w[(long)r * Cols + k] = Fp8.DecodeE4M3(code) * Scales[(r / BlockN) * sc + k / BlockK];
            }
        }

        return w;
    }

    /// <summary>FP8 E4M3 with one F32 scale per blockN x blockK block (scale = max|w| / 448; saturating RNE encode).</summary>
    public static Fp8Matrix Quantize(ReadOnlySpan<float> w, int rows, int cols, int blockN = Quantizer.Fp8Block, int blockK = Quantizer.Fp8Block)
    {
        Quantizer.CheckShape("QuantizeFp8", w, rows, cols);
        Quantizer.CheckFp8Block("QuantizeFp8", rows, cols, blockN, blockK);
        int sr = (rows + blockN - 1) / blockN, sc = (cols + blockK - 1) / blockK;
        var scales = new float[sr * sc];
        // Pass 1, one task per block row (its scales are its own): max |w| per block.
        Quantizer.ForRows(w, sr, (all, bn) =>
        {
            for (int n = bn * blockN; n < Math.Min(rows, (bn + 1) * blockN); n++)
            {
                var row = all.Slice(n * cols, cols);
                for (int kb = 0; kb < sc; kb++)
                {
                    int k0 = kb * blockK;
                    float m = Quantizer.MaxAbs(row.Slice(k0, Math.Min(cols, k0 + blockK) - k0));
                    scales[bn * sc + kb] = Math.Max(scales[bn * sc + kb], m);
                }
            }

            for (int kb = 0; kb < sc; kb++)
                scales[bn * sc + kb] /= Fp8.MaxE4M3;
        });

        int rowWords = QuantLayout.ByteRowWords(cols);
        var words = new uint[(long)rows * rowWords];
        Quantizer.ForRows(w, rows, (all, n) =>
        {
            var row = all.Slice(n * cols, cols);
            var dst = words.AsSpan((int)((long)n * rowWords), rowWords);
            for (int k = 0; k < cols; k++)
            {
                float s = scales[(n / blockN) * sc + k / blockK];
                byte code = s == 0f ? (byte)0 : Quantizer.EncodeE4M3(row[k] / s);
                dst[k / 4] |= (uint)code << (8 * (k % 4));
            }
        });
        return new Fp8Matrix(rows, cols, words, scales, blockN, blockK);
    }

    /// <summary>FP8 E4M3 with one scale for the whole matrix.</summary>
    public static Fp8Matrix QuantizePerTensor(ReadOnlySpan<float> w, int rows, int cols) => Quantize(w, rows, cols, rows, cols);

    private sealed class Device : DeviceQuantMatrix<Fp8Weights>
    {
        private readonly ArrayView<float> scales;

        public Device(Accelerator accelerator, Fp8Matrix m)
            : base(accelerator, m) => scales = Own(accelerator.Allocate1D(m.Scales)).View;

        public override Fp8Weights Weights
        {
            get
            {
                var h = (Fp8Matrix)Host;
                return new(WordsView, scales, h.Rows, h.Cols, h.MatrixRows, h.BlockN, h.BlockK);
            }
        }

        internal override IRowUnits DecodeUnits() => RowUnits.Fp8(Weights);

        internal override void LaunchGemv(QuantGemvKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
            kernel.Launch(stream, x, Weights, y, tokens, accumulate: accumulate);

        internal override void LaunchGemm(QuantGemmKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
            kernel.Launch(stream, x, Weights, y, tokens, accumulate);
    }
}
