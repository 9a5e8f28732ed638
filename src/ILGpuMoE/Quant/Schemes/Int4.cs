// int4, G values per group along K, F16 scales, optional zero points (QuantLayout.cs "Q4"): --quant int4-gG[-asym] and
// int4-per-row[-asym] (one group per row), our checkpoint form, and the AWQ (GEMM) and GPTQ (v1) checkpoint forms
// (read by CheckpointRepack, values moved, never re-quantized). GPTQ act-order matrices carry an input permutation.
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

/// <summary>int4 with group size G (<paramref name="GroupSize"/> 0: one group per row, G = the matrix's input dim,
/// GPTQ's group_size -1), symmetric (z = 8) or with a zero point per group.</summary>
public sealed record Int4Spec(string Name, int GroupSize, bool Symmetric) : QuantSpec(Name)
{
    public static readonly QuantSchemeInfo Info = new(
        ["int4-g32", "int4-g64", "int4-g128", "int4-g128-asym"],
        TryParse,
        "int4 also as int4-gG[-asym] for G a multiple of 32, or int4-per-row[-asym]",
        ["awq", "gptq"],
        FromCheckpoint);

    public override QuantScheme Layout => QuantScheme.Q4;

    public override int RowWords(int cols) => QuantLayout.NibbleRowWords(cols);

    /// <summary>G for a matrix with <paramref name="cols"/> input columns.</summary>
    public int GroupFor(long cols) => GroupSize > 0 ? GroupSize : (int)cols;

    public override void Check(string tensor, long rows, long cols)
    {
        if (cols % GroupFor(cols) != 0 || GroupFor(cols) % 32 != 0)
            throw new ArgumentException($"--quant {Name}: tensor {tensor} has input dim {cols}, not a multiple of the group size {GroupFor(cols)} (and of 32)");
        base.Check(tensor, rows, cols);
    }

    public override bool Fits(long cols) => cols % GroupFor(cols) == 0;

    public override QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols) => Q4Matrix.Quantize(w, rows, cols, GroupFor(cols), Symmetric);

    private protected override long BytesOfOne(long rows, long cols) => rows * RowWords((int)cols) * 4L + rows * (cols / GroupFor(cols)) * (Symmetric ? 2L : 3L);

    public override IReadOnlyList<(string Suffix, DType DType, long[] Shape)> ScaleTensors(long rows, long cols)
    {
        long groups = cols / GroupFor(cols);
        return Symmetric ? [(".scales", DType.F16, [rows, groups])] : [(".scales", DType.F16, [rows, groups]), (".zeros", DType.U8, [rows, groups])];
    }

    internal override QuantizedMatrix ReadPacked(Checkpoint checkpoint, string baseName, int rows, int cols, uint[] words, int[]? inputPermutation) =>
        new Q4Matrix(rows, cols, words, checkpoint.GetSpan<ushort>(baseName + ".scales").ToArray(),
            Symmetric ? [] : checkpoint.GetBytes(baseName + ".zeros").ToArray(), GroupFor(cols), inputPermutation: inputPermutation);

    public override bool TakesInputPermutation => true;

    public override void Describe(JsonObject config)
    {
        config["group_size"] = GroupSize > 0 ? GroupSize : -1; // -1: one group per row, as GPTQ writes it
        config["symmetric"] = Symmetric;
    }

    private static Int4Spec? TryParse(string n, string name)
    {
        if (!n.StartsWith("int4-", StringComparison.Ordinal))
            return null;
        bool asym = n.EndsWith("-asym", StringComparison.Ordinal);
        string g = n["int4-".Length..^(asym ? "-asym".Length : 0)];
        if (g == "per-row")
            return new(n, 0, Symmetric: !asym);
        if (g.Length > 1 && g[0] == 'g' && int.TryParse(g.AsSpan(1), NumberStyles.None, CultureInfo.InvariantCulture, out int size))
        {
            if (size < 32 || size % 32 != 0)
                throw new ArgumentException($"--quant {name}: int4 group size {size} must be a multiple of 32 (a 16-byte unit of 32 values never straddles a group)");
            return new(n, size, Symmetric: !asym);
        }

        return null;
    }

    // AWQ (GEMM version, zero points) and GPTQ (v1 zeros), 4 bits; group_size a multiple of 32 or -1 (one group per row).
    private static QuantSource FromCheckpoint(QuantConfigJson q)
    {
        string method = q.Method;
        int bits = q.Int("bits") ?? q.Int("w_bit") ?? 4;
        if (bits != 4)
            throw q.Error("bits", $"{method} with {bits} bits is not supported (4 only)");
        // -1: one group per row (per output channel); otherwise G must keep a 16-byte unit inside one group.
        int g = q.Int("group_size") ?? q.Int("q_group_size") ?? 128;
        if (g != -1 && (g < 32 || g % 32 != 0))
            throw q.Error("group_size", $"{method} group size {g} is not supported (a multiple of 32, or -1)");
        string? version = q.Str("version");
        if (method == "awq" && version is not null && !version.Equals("gemm", StringComparison.OrdinalIgnoreCase))
            throw q.Error("version", $"AWQ version '{version}' is not supported (GEMM only)");
        string? format = q.Str("checkpoint_format");
        if (method == "gptq" && format is not null && !format.Equals("gptq", StringComparison.OrdinalIgnoreCase))
            throw q.Error("checkpoint_format", $"GPTQ format '{format}' is not supported (gptq v1 zeros only)");
        if (method == "awq" && q.Element.TryGetProperty("zero_point", out var zp) && zp.ValueKind == JsonValueKind.False)
            throw q.Error("zero_point", "AWQ without zero points is not supported");
        int group = Math.Max(g, 0); // 0 = the matrix's whole input dim
        var plan = new Int4Spec(g > 0 ? $"{method}-g{g}" : $"{method}-per-row", group, Symmetric: false);
        return method == "awq" ? new AwqSource(plan) : new GptqSource(plan);
    }

    /// <summary>ilgpumoe quantize repacks AWQ / GPTQ into the same values in our int4 asym layout.</summary>
    private static QuantSpec RepackOf(Int4Spec plan) => QuantSpec.Parse(plan.GroupSize > 0 ? $"int4-g{plan.GroupSize}-asym" : "int4-per-row-asym")!;

    /// <summary>AWQ: BASE.qweight / .qzeros / .scales (CheckpointRepack.ReadAwq).</summary>
    private sealed class AwqSource(Int4Spec plan) : QuantSource("awq", plan)
    {
        public override QuantSpec RepackSpec => RepackOf(plan);

        private protected override QuantizedMatrix ReadBase(Checkpoint checkpoint, string baseName, int rows, int cols) =>
            CheckpointRepack.ReadAwq(checkpoint, baseName, plan.GroupSize);
    }

    /// <summary>GPTQ: BASE.qweight / .qzeros / .scales (+ .g_idx) (CheckpointRepack.ReadGptq); an act-order g_idx gives
    /// the matrix an input permutation.</summary>
    private sealed class GptqSource(Int4Spec plan) : QuantSource("gptq", plan)
    {
        public override QuantSpec RepackSpec => RepackOf(plan);

        private protected override QuantizedMatrix ReadBase(Checkpoint checkpoint, string baseName, int rows, int cols) =>
            CheckpointRepack.ReadGptq(checkpoint, baseName, plan.GroupSize);

        public override bool IsActOrder(Checkpoint checkpoint, string weightName, long cols)
        {
            ArgumentNullException.ThrowIfNull(checkpoint);
            string b = BaseOf(weightName);
            if (!checkpoint.Contains(b + ".g_idx"))
                return false;
            var info = checkpoint.Get(b + ".g_idx");
            return info.DType == DType.I32 && info.Shape.Length == 1
                   && ActOrder.IsActOrder(checkpoint.GetSpan<int>(b + ".g_idx"), plan.GroupFor(cols));
        }
    }
}

/// <summary>Q4 on the host: words [Rows, Cols/8], scales (f16 bits) [Rows, Cols/G], zeros [Rows, Cols/G] (empty = symmetric, z = 8).</summary>
public sealed class Q4Matrix : QuantizedMatrix
{
    internal Q4Matrix(int rows, int cols, uint[] words, ushort[] scales, byte[] zeros, int groupSize, int matrixRows = 0, int[]? inputPermutation = null)
        : base(rows, cols, words, matrixRows, inputPermutation)
    {
        Scales = scales;
        Zeros = zeros;
        GroupSize = groupSize;
    }

    /// <summary>[Rows, Cols/G] f16 bits.</summary>
    public ushort[] Scales { get; }

    /// <summary>[Rows, Cols/G], 0..15 (16 where repacked GPTQ stores it); empty when symmetric (z = 8).</summary>
    public byte[] Zeros { get; }

    /// <summary>G.</summary>
    public int GroupSize { get; }

    public override QuantScheme Scheme => QuantScheme.Q4;

    public override int RowWords => QuantLayout.NibbleRowWords(Cols);

    public override string TypeName => $"Q4 g{GroupSize}{(Zeros.Length > 0 ? " asym" : "")}";

    private protected override long ScaleBytes => Scales.LongLength * 2 + Zeros.LongLength;

    private protected override bool SameParameters(QuantizedMatrix other) =>
        other is Q4Matrix q && q.GroupSize == GroupSize && q.Zeros.Length > 0 == Zeros.Length > 0;

    private protected override QuantizedMatrix WithLayout(int rows, uint[] words, int matrixRows, int[]? inputPermutation, RowScales scales) =>
        new Q4Matrix(rows, Cols, words, scales.Of(this, m => m.Scales, Cols / GroupSize), scales.Of(this, m => m.Zeros, Cols / GroupSize), GroupSize, matrixRows,
            inputPermutation);

    private protected override IEnumerable<byte[]> ScaleTensorBytes() =>
        Zeros.Length > 0 ? [MemoryMarshal.AsBytes(Scales.AsSpan()).ToArray(), Zeros] : [MemoryMarshal.AsBytes(Scales.AsSpan()).ToArray()];

    public override DeviceQuantMatrix Upload(Accelerator accelerator) => new Device(accelerator, this);

    /// <summary>
    /// int4 per group of G along K with F16 scales. Symmetric: scale = max|w| / 7, q in [-8, 7] stored as q + 8.
    /// Asymmetric: the group's [min, max] (widened to include 0) maps onto [0, 15], z = round(-min / scale).
    /// The scale is rounded to f16 before q is computed, so the rounding of q sees the scale the kernel uses.
    /// </summary>
    public static Q4Matrix Quantize(ReadOnlySpan<float> w, int rows, int cols, int groupSize, bool symmetric)
    {
        Quantizer.CheckShape("QuantizeQ4", w, rows, cols);
        Quantizer.CheckGroup("QuantizeQ4", cols, groupSize);
        int groups = cols / groupSize, rowWords = QuantLayout.NibbleRowWords(cols);
        var words = new uint[(long)rows * rowWords];
        var scales = new ushort[(long)rows * groups];
        var zeros = symmetric ? [] : new byte[(long)rows * groups];
        Quantizer.ForRows(w, rows, (all, n) =>
        {
            for (int g = 0; g < groups; g++)
            {
                var grp = all.Slice(n * cols + g * groupSize, groupSize);
                float lo = 0f, hi = 0f;
                foreach (float v in grp)
                {
                    lo = Math.Min(lo, v);
                    hi = Math.Max(hi, v);
                }

                float scale = symmetric ? Math.Max(-lo, hi) / 7f : (hi - lo) / 15f;
                System.Half h = (System.Half)scale;
                if (System.Half.IsInfinity(h))
                    throw new ArgumentException($"QuantizeQ4: row {n} group {g} needs scale {scale}, beyond f16");
                float s = (float)h;
                int z = symmetric ? 8 : (s == 0f ? 0 : (int)Math.Clamp(Math.Round(-lo / (double)s, MidpointRounding.ToEven), 0, 15));
                long gi = (long)n * groups + g;
                scales[gi] = BitConverter.HalfToUInt16Bits(h);
                if (!symmetric)
                    zeros[gi] = (byte)z;
                var dst = words.AsSpan((int)((long)n * rowWords), rowWords);
                for (int i = 0; i < groupSize; i++)
                {
                    int k = g * groupSize + i;
                    int q = s == 0f ? z : (int)Math.Clamp(Math.Round(grp[i] / (double)s, MidpointRounding.ToEven) + z, 0, 15);
                    dst[k / 8] |= (uint)q << (4 * (k % 8));
                }
            }
        });
        return new Q4Matrix(rows, cols, words, scales, zeros, groupSize);
    }

    private sealed class Device : DeviceQuantMatrix<Q4Weights>
    {
        private readonly ArrayView<ILGPU.Half> scales;
        private readonly ArrayView<byte> zeros;

        public Device(Accelerator accelerator, Q4Matrix m)
            : base(accelerator, m)
        {
            scales = Own(accelerator.Allocate1D(MemoryMarshal.Cast<ushort, ILGPU.Half>(m.Scales).ToArray())).View;
            if (m.Zeros.Length > 0)
                zeros = Own(accelerator.Allocate1D(m.Zeros)).View;
        }

        public override Q4Weights Weights => new(WordsView, scales, zeros, Host.Rows, Host.Cols, ((Q4Matrix)Host).GroupSize);

        internal override IRowUnits DecodeUnits() => RowUnits.Q4(Weights);

        internal override void LaunchGemv(QuantGemvKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
            kernel.Launch(stream, x, Weights, y, tokens, accumulate: accumulate);

        internal override void LaunchGemm(QuantGemmKernel kernel, AcceleratorStream stream, ArrayView<float> x, ArrayView<float> y, int tokens, bool accumulate) =>
            kernel.Launch(stream, x, Weights, y, tokens, accumulate);
    }
}
