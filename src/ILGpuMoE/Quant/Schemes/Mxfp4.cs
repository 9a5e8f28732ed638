// MXFP4 (OCP microscaling: FP4 E2M1 codes, one E8M0 scale byte per block of 32 along K; kernels/ILGpuMoE.Kernels/Quant/
// Mxfp4.cs): gpt-oss's experts exactly as the Hub stores them (quant_method "mxfp4"), our checkpoint form, and --quant
// mxfp4 for any model.
//
// gpt-oss keeps all experts of a layer in one tensor per projection (ExpertStorage.StackedGateUp):
//   mlp.experts.gate_up_proj_blocks  U8 [E, 2F, D/32, 16]   rows 2f = gate f, 2f + 1 = up f (interleaved)
//   mlp.experts.gate_up_proj_scales  U8 [E, 2F, D/32]
//   mlp.experts.down_proj_blocks     U8 [E, D, F/32, 16]
//   mlp.experts.down_proj_scales     U8 [E, D, F/32]
// Row r's block g holds its values 32g..32g+31 (byte j: value 2j in the low nibble, 2j + 1 in the high one), value =
// E2M1[nibble] * 2^(scale - 127) (src/ILGpuMoE.Reference/Quant/RefMxfp4.cs). Expert e's gate, up or down matrix is a run
// of whole rows, moved as bytes (Mxfp4Host.SplitGateUp): nothing is decoded or re-rounded on the way to the device.
// Everything the quantization_config's modules_to_not_convert names (attention, router, embeddings, lm_head) is BF16.
//
// --quant mxfp4 (a float checkpoint packed at load): per block, the shared exponent is floor(log2(max |w|)) - 2 (E2M1's
// largest exponent), each value rounds to the nearest E2M1 code (ties to even) of w / 2^shared, saturating at 6: the
// OCP specification's conversion.
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Model;

namespace ILGpuMoE.Quant;

/// <summary>--quant mxfp4, and gpt-oss's MXFP4 checkpoints.</summary>
public sealed record Mxfp4Spec() : QuantSpec("mxfp4")
{
    public static readonly QuantSchemeInfo Info = new(["mxfp4"], (n, _) => n == "mxfp4" ? new Mxfp4Spec() : null,
        CheckpointMethods: ["mxfp4"], FromCheckpoint: _ => new Mxfp4Source());

    public override QuantScheme Layout => QuantScheme.Mxfp4;

    public override int RowWords(int cols) => cols / 8;

    /// <summary>Whole blocks of 32 along K.</summary>
    public override bool Fits(long cols) => cols % Mxfp4.BlockValues == 0;

    public override void Check(string tensor, long rows, long cols)
    {
        base.Check(tensor, rows, cols);
        if (!Fits(cols))
            throw new ArgumentException($"--quant mxfp4: {tensor} has {cols} input columns, not whole blocks of {Mxfp4.BlockValues}");
    }

    public override QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols) => Mxfp4Matrix.Quantize(w, rows, cols);

    private protected override long BytesOfOne(long rows, long cols) => rows * cols / 2 + rows * (cols / Mxfp4.BlockValues);

    public override IReadOnlyList<(string Suffix, DType DType, long[] Shape)> ScaleTensors(long rows, long cols) =>
        [(".scales", DType.U8, [rows, cols / Mxfp4.BlockValues])];

    internal override QuantizedMatrix ReadPacked(Checkpoint checkpoint, string baseName, int rows, int cols, uint[] words, int[]? inputPermutation) =>
        new Mxfp4Matrix(rows, cols, words, checkpoint.GetBytes(baseName + ".scales").ToArray());

    /// <summary>gpt-oss's form: stacked *_blocks / *_scales per layer and projection (header).</summary>
    private sealed class Mxfp4Source() : QuantSource("mxfp4", new Mxfp4Spec())
    {
        private protected override QuantizedMatrix ReadBase(Checkpoint checkpoint, string baseName, int rows, int cols) =>
            throw new ArgumentException("only gpt-oss's stacked experts are MXFP4 in a quant_method 'mxfp4' checkpoint; this weight must be F32, F16 or BF16");

        public override QuantizedMatrix ReadStacked(Checkpoint checkpoint, string stackedName, int expert, StackedPart part, int rows, int cols)
        {
            string blocksName = stackedName + "_blocks", scalesName = stackedName + "_scales";
            try
            {
                var blocks = checkpoint.Get(blocksName);
                var scales = checkpoint.Get(scalesName);
                int groups = cols / Mxfp4.BlockValues;
                bool gateUp = part != StackedPart.Down;
                long stackedRows = gateUp ? 2L * rows : rows;
                if (cols % Mxfp4.BlockValues != 0 || blocks.DType != DType.U8 || scales.DType != DType.U8
                    || blocks.Shape.Length != 4 || blocks.Shape[1] != stackedRows || blocks.Shape[2] != groups || blocks.Shape[3] != Mxfp4.BlockBytes
                    || scales.Shape.Length != 3 || scales.Shape[0] != blocks.Shape[0] || scales.Shape[1] != stackedRows || scales.Shape[2] != groups
                    || expert >= blocks.Shape[0])
                {
                    throw new ArgumentException($"{DTypes.ToName(blocks.DType)} {ModelValidator.Shape(blocks.Shape)} / {DTypes.ToName(scales.DType)} {ModelValidator.Shape(scales.Shape)} " +
                                                $"is not U8 [E, {stackedRows}, {groups}, 16] / U8 [E, {stackedRows}, {groups}] with expert {expert}");
                }

                long rowBytes = (long)groups * Mxfp4.BlockBytes;
                var b = checkpoint.GetBytes(blocksName).Slice(checked((int)(expert * stackedRows * rowBytes)), checked((int)(stackedRows * rowBytes)));
                var s = checkpoint.GetBytes(scalesName).Slice(checked((int)(expert * stackedRows * groups)), checked((int)(stackedRows * groups)));
                if (!gateUp)
                    return new Mxfp4Matrix(rows, cols, Mxfp4Host.Words(b, rows, groups).ToArray(), s.ToArray());
                var (gb, gs, ub, us) = Mxfp4Host.SplitGateUp(b, s, 1, rows, groups);
                return part == StackedPart.Gate
                    ? new Mxfp4Matrix(rows, cols, Mxfp4Host.Words(gb, rows, groups).ToArray(), gs)
                    : new Mxfp4Matrix(rows, cols, Mxfp4Host.Words(ub, rows, groups).ToArray(), us);
            }
            catch (Exception e) when (e is ArgumentException or SafeTensorsException or KeyNotFoundException)
            {
                throw new InvalidDataException($"{checkpoint.Directory}: {stackedName} (MXFP4, expert {expert}): {e.Message}");
            }
        }
    }
}

/// <summary>MXFP4 on the host: words [Rows, Cols/8] (the 16-byte blocks as they are), scales E8M0 [Rows, Cols/32].</summary>
public sealed class Mxfp4Matrix : QuantizedMatrix
{
    internal Mxfp4Matrix(int rows, int cols, uint[] words, byte[] scales, int matrixRows = 0)
        : base(rows, cols, words, matrixRows, null) => Scales = scales;

    /// <summary>[Rows, Cols/32] E8M0 bytes.</summary>
    public byte[] Scales { get; }

    public override QuantScheme Scheme => QuantScheme.Mxfp4;

    public override int RowWords => Cols / 8;

    public override string TypeName => "Mxfp4";

    private protected override long ScaleBytes => Scales.LongLength;

    private protected override bool SameParameters(QuantizedMatrix other) => other is Mxfp4Matrix;

    private protected override QuantizedMatrix WithLayout(int rows, uint[] words, int matrixRows, int[]? inputPermutation, RowScales scales) =>
        inputPermutation is null
            ? new Mxfp4Matrix(rows, Cols, words, scales.Of(this, m => m.Scales, Cols / Mxfp4.BlockValues), matrixRows)
            : throw new ArgumentException("MXFP4 matrices have no input permutation");

    private protected override IEnumerable<byte[]> ScaleTensorBytes() => [Scales];

    public override DeviceQuantMatrix Upload(Accelerator accelerator) => new Device(accelerator, this);

    /// <summary>The OCP conversion (header): per block a shared exponent floor(log2 max|w|) - 2, codes round to nearest even.</summary>
    public static Mxfp4Matrix Quantize(ReadOnlySpan<float> w, int rows, int cols)
    {
        Quantizer.CheckShape("QuantizeMxfp4", w, rows, cols);
        if (cols % Mxfp4.BlockValues != 0)
            throw new ArgumentException($"QuantizeMxfp4: {cols} columns are not whole blocks of {Mxfp4.BlockValues}");
        int groups = cols / Mxfp4.BlockValues, rowWords = cols / 8;
        var words = new uint[(long)rows * rowWords];
        var scales = new byte[(long)rows * groups];
        Quantizer.ForRows(w, rows, (all, n) =>
        {
            var dst = words.AsSpan((int)((long)n * rowWords), rowWords);
            for (int g = 0; g < groups; g++)
            {
                var block = all.Slice(n * cols + g * Mxfp4.BlockValues, Mxfp4.BlockValues);
                float max = Quantizer.MaxAbs(block);
                // A zero block keeps the smallest scale; every code is then 0.
                int shared = max == 0f ? -127 : Math.Clamp(Math.ILogB(max) - 2, -127, 127);
                scales[(long)n * groups + g] = (byte)(shared + 127);
                for (int i = 0; i < Mxfp4.BlockValues; i++)
                {
                    int k = g * Mxfp4.BlockValues + i;
                    dst[k / 8] |= (uint)EncodeE2M1(Math.ScaleB(block[i], -shared)) << (4 * (k % 8));
                }
            }
        });
        return new Mxfp4Matrix(rows, cols, words, scales);
    }

    // E2M1 magnitudes by code 0..7.
    private static readonly double[] Magnitudes = [0, 0.5, 1, 1.5, 2, 3, 4, 6];

    /// <summary>The nearest E2M1 code of v (ties to the even code), saturating at +-6; NaN is refused.</summary>
    internal static int EncodeE2M1(double v)
    {
        if (double.IsNaN(v))
            throw new ArgumentException("QuantizeMxfp4: NaN weight");
        double a = Math.Abs(v);
        int best = 0;
        for (int c = 1; c < Magnitudes.Length; c++)
        {
            double d = Math.Abs(a - Magnitudes[c]), bestD = Math.Abs(a - Magnitudes[best]);
            if (d < bestD || (d == bestD && c % 2 == 0))
                best = c;
        }

        return best | (v < 0 ? 8 : 0);
    }

    private sealed class Device : DeviceQuantMatrix<Mxfp4Weights>
    {
        private readonly ArrayView<byte> scales;

        public Device(Accelerator accelerator, Mxfp4Matrix m)
            : base(accelerator, m) => scales = Own(accelerator.Allocate1D(m.Scales)).View;

        public override Mxfp4Weights Weights => new(WordsView, scales, Host.Rows, Host.Cols);

        internal override IRowUnits DecodeUnits() => RowUnits.Mxfp4(Weights);

        internal override void LaunchGemv(QuantGemvKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
            kernel.Launch(stream, x, Weights, y, tokens, accumulate: accumulate);

        internal override void LaunchGemm(QuantGemmKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
            kernel.Launch(stream, x, Weights, y, tokens, accumulate);
    }
}
