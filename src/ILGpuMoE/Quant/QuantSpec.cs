// The --quant schemes of generate / logits / quantize: which packed layout (kernels/ILGpuMoE.Kernels/Quant/QuantLayout.cs)
// the linear weights get at load time, and how many bytes that makes.
//
// Quantized: attention q/k/v/o and the experts w1/w2/w3 (the bulk of a Mixtral: ~96% of its bytes at 8x7B).
// Kept in their checkpoint dtype: embeddings, RMSNorm weights, the router (gate: tiny, and its top-k decision is
// sensitive to rounding) and lm_head (V x D, read once per token; quantizing it moves logits the most per byte saved).
using ILGpuMoE.Kernels.Quant;

namespace ILGpuMoE.Quant;

/// <summary>One --quant scheme. Build with <see cref="Parse"/>; <see cref="None"/> keeps the checkpoint's dtype.</summary>
/// <param name="GroupSize">Q4: G; 0 means one group per row (G = the matrix's input dim, GPTQ's group_size -1).</param>
public sealed record QuantSpec(string Name, QuantScheme Scheme, int GroupSize = 0, bool Symmetric = true, bool PerTensor = false)
{
    /// <summary>Q4's G for a matrix with <paramref name="cols"/> input columns.</summary>
    public int GroupFor(long cols) => GroupSize > 0 ? GroupSize : (int)cols;

    /// <summary>The scheme names --quant accepts, "none" first.</summary>
    public static readonly string[] Names = ["none", "int8", "int4-g32", "int4-g64", "int4-g128", "int4-g128-asym", "fp8-block128", "fp8-tensor"];

    /// <summary>"none" (or null / empty) -> null; a known name -> its spec; anything else -> ArgumentException listing the names.</summary>
    public static QuantSpec? Parse(string? name) => name?.Trim().ToLowerInvariant() switch
    {
        null or "" or "none" => null,
        "int8" => new("int8", QuantScheme.Q8),
        "int4-g32" => new("int4-g32", QuantScheme.Q4, 32),
        "int4-g64" => new("int4-g64", QuantScheme.Q4, 64),
        "int4-g128" => new("int4-g128", QuantScheme.Q4, 128),
        "int4-g128-asym" => new("int4-g128-asym", QuantScheme.Q4, 128, Symmetric: false),
        "fp8-block128" => new("fp8-block128", QuantScheme.Fp8),
        "fp8-tensor" => new("fp8-tensor", QuantScheme.Fp8, PerTensor: true),
        _ => throw new ArgumentException($"--quant {name}: unknown scheme (expected one of {string.Join(", ", Names)})"),
    };

    /// <summary>Every scheme except none.</summary>
    public static IEnumerable<QuantSpec> All => Names.Skip(1).Select(n => Parse(n)!);

    /// <summary>Throws ArgumentException naming <paramref name="tensor"/> when the scheme cannot pack a [rows, cols] matrix.</summary>
    public void Check(string tensor, long rows, long cols)
    {
        if (Scheme == QuantScheme.Q4 && (cols % GroupFor(cols) != 0 || GroupFor(cols) % 32 != 0))
            throw new ArgumentException($"--quant {Name}: tensor {tensor} has input dim {cols}, not a multiple of the group size {GroupFor(cols)} (and of 32)");
        if (rows > int.MaxValue || cols > int.MaxValue)
            throw new ArgumentException($"--quant {Name}: tensor {tensor} [{rows}, {cols}] is too large");
    }

    /// <summary>Packs one matrix W [rows, cols] (the caller checked it with <see cref="Check"/>).</summary>
    public QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols) => Scheme switch
    {
        QuantScheme.Q8 => Quantizer.QuantizeQ8(w, rows, cols),
        QuantScheme.Q4 => Quantizer.QuantizeQ4(w, rows, cols, GroupFor(cols), Symmetric),
        _ => PerTensor ? Quantizer.QuantizeFp8PerTensor(w, rows, cols) : Quantizer.QuantizeFp8(w, rows, cols),
    };

    /// <summary>Bytes of <paramref name="matrices"/> packed [rows, cols] matrices (words + scales + zeros), as uploaded.</summary>
    public long Bytes(long rows, long cols, long matrices = 1)
    {
        long one = Scheme switch
        {
            QuantScheme.Q8 => rows * QuantLayout.ByteRowWords((int)cols) * 4L + rows * 4L,
            QuantScheme.Q4 => rows * (cols / 8) * 4L + rows * (cols / GroupFor(cols)) * (Symmetric ? 2L : 3L),
            _ => rows * QuantLayout.ByteRowWords((int)cols) * 4L
                 + (PerTensor ? 4L : (rows + Quantizer.Fp8Block - 1) / Quantizer.Fp8Block * ((cols + Quantizer.Fp8Block - 1) / Quantizer.Fp8Block) * 4L),
        };
        return one * matrices;
    }

    public override string ToString() => Name;
}
