// The --quant schemes of generate / logits / quantize: which packed layout (kernels/ILGpuMoE.Kernels/Quant/QuantLayout.cs)
// the linear weights get at load time, and how many bytes that makes.
//
// Quantized: attention q/k/v/o and the experts w1/w2/w3 (the bulk of a Mixtral: ~96% of its bytes at 8x7B).
// Kept in their checkpoint dtype: embeddings, RMSNorm weights, the router (gate: tiny, and its top-k decision is
// sensitive to rounding) and lm_head (V x D, read once per token; quantizing it moves logits the most per byte saved).
//
// A scheme is one object: a sealed subclass in Schemes/ (Int8Spec, Int4Spec, Fp8Spec) owns its names, quantizer,
// bytes per weight, our checkpoint form of it, its host matrix and device view; QuantSchemes.cs lists them.
using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Model;

namespace ILGpuMoE.Quant;

/// <summary>One --quant scheme. Build with <see cref="Parse"/>; null ("none") keeps the checkpoint's dtype.</summary>
public abstract record QuantSpec(string Name)
{
    /// <summary>The packed layout its matrices have (the kernel-level tag; "layout" in our quantization_config).</summary>
    public abstract QuantScheme Layout { get; }

    /// <summary>The scheme names --quant accepts, "none" first.</summary>
    public static string[] Names => QuantSchemes.Names;

    /// <summary>
    /// "none" (or null / empty) -> null; a known name -> its spec; anything else -> ArgumentException listing the names.
    /// Besides <see cref="Names"/>, a scheme may take more spellings (int4: int4-gG[-asym], int4-per-row[-asym]).
    /// </summary>
    public static QuantSpec? Parse(string? name) => QuantSchemes.Parse(name);

    /// <summary>Every scheme in <see cref="Names"/> except none.</summary>
    public static IEnumerable<QuantSpec> All => Names.Skip(1).Select(n => Parse(n)!);

    /// <summary>32-bit words per packed row of <paramref name="cols"/> values (BASE.qweight's second dim).</summary>
    public abstract int RowWords(int cols);

    /// <summary>Throws ArgumentException naming <paramref name="tensor"/> when the scheme cannot pack a [rows, cols] matrix.</summary>
    public virtual void Check(string tensor, long rows, long cols)
    {
        if (rows > int.MaxValue || cols > int.MaxValue)
            throw new ArgumentException($"--quant {Name}: tensor {tensor} [{rows}, {cols}] is too large");
    }

    /// <summary><see cref="Check"/> over every linear weight of a model (attention q/k/v/o, experts w1/w2/w3).</summary>
    public void CheckLinearWeights(ModelConfig config)
    {
        foreach (var e in ModelTensors.Expected(config).Where(QuantSource.IsLinear))
        {
            var (_, rows, cols) = e.Packed(config);
            Check(e.Name, rows, cols);
        }
    }

    /// <summary>True when the scheme can pack a matrix with <paramref name="cols"/> input columns (int4: G divides it).</summary>
    public virtual bool Fits(long cols) => true;

    /// <summary>Packs one matrix W [rows, cols] (the caller checked it with <see cref="Check"/>).</summary>
    public abstract QuantizedMatrix Quantize(ReadOnlySpan<float> w, int rows, int cols);

    /// <summary>Bytes of <paramref name="matrices"/> packed [rows, cols] matrices (words + scales + zeros), as uploaded.</summary>
    public long Bytes(long rows, long cols, long matrices = 1) => BytesOfOne(rows, cols) * matrices;

    private protected abstract long BytesOfOne(long rows, long cols);

    /// <summary>Our checkpoint form: the tensors after BASE.qweight, as suffixes (".scales", ".zeros") with dtype and shape.</summary>
    public abstract IReadOnlyList<(string Suffix, DType DType, long[] Shape)> ScaleTensors(long rows, long cols);

    /// <summary>Our checkpoint form: builds the matrix from BASE.qweight's words and the checked <see cref="ScaleTensors"/>.</summary>
    internal abstract QuantizedMatrix ReadPacked(Checkpoint checkpoint, string baseName, int rows, int cols, uint[] words, int[]? inputPermutation);

    /// <summary>True when its matrices may carry an act-order input permutation (BASE.perm).</summary>
    public virtual bool TakesInputPermutation => false;

    /// <summary>Adds the scheme's parameters to the quantization_config ilgpumoe quantize writes.</summary>
    public virtual void Describe(JsonObject config)
    {
    }

    public sealed override string ToString() => Name;
}
