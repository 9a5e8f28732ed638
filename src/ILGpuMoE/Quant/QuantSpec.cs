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

    /// <summary>
    /// "none" (or null / empty) -> null; a known name -> its spec; anything else -> ArgumentException listing the names.
    /// Besides <see cref="Names"/>, int4 takes any group size that is a multiple of 32, with or without zero points:
    /// int4-gG, int4-gG-asym, and int4-per-row(-asym) for one group per row (what GPTQ's group_size -1 stores).
    /// </summary>
    public static QuantSpec? Parse(string? name)
    {
        string n = name?.Trim().ToLowerInvariant() ?? "";
        switch (n)
        {
            case "" or "none": return null;
            case "int8": return new("int8", QuantScheme.Q8);
            case "fp8-block128": return new("fp8-block128", QuantScheme.Fp8);
            case "fp8-tensor": return new("fp8-tensor", QuantScheme.Fp8, PerTensor: true);
        }

        if (n.StartsWith("int4-", StringComparison.Ordinal))
        {
            bool asym = n.EndsWith("-asym", StringComparison.Ordinal);
            string g = n["int4-".Length..^(asym ? "-asym".Length : 0)];
            if (g == "per-row")
                return new(n, QuantScheme.Q4, 0, Symmetric: !asym);
            if (g.Length > 1 && g[0] == 'g' && int.TryParse(g.AsSpan(1), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int size))
            {
                if (size < 32 || size % 32 != 0)
                    throw new ArgumentException($"--quant {name}: int4 group size {size} must be a multiple of 32 (a 16-byte unit of 32 values never straddles a group)");
                return new(n, QuantScheme.Q4, size, Symmetric: !asym);
            }
        }

        throw new ArgumentException($"--quant {name}: unknown scheme (expected one of {string.Join(", ", Names)}; int4 also as int4-gG[-asym] " +
                                    "for G a multiple of 32, or int4-per-row[-asym])");
    }

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
