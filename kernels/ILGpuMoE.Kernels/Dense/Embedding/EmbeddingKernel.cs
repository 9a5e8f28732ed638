// Embedding gather: tokens [T] (int) + table [V, D] (TW) -> x [T, D] f32.
//
// Versions:
//   V1  one group per token row, threads stride D (consecutive threads read consecutive columns: coalesced).
//
// Bad ids: the launcher cannot check token ids without copying device data back, so the kernel checks them.
// An id outside [0, V) is never used as an index (no out-of-bounds read); its whole output row is written as NaN
// ("clamp-and-flag") so the bad id poisons every downstream value instead of passing silently.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>dense/embedding's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("dense/embedding")]
public enum EmbeddingVersion
{
    /// <summary>One group per token.</summary>
    V1 = 1,
}

/// <summary>Kernel bodies (generic over the weight type, for the PTX gate) and the factory.</summary>
public static class EmbeddingKernel
{
    public static EmbeddingKernel<TW> Create<TW>(Accelerator accelerator)
        where TW : struct, IWeights => new(accelerator);

    [KernelInfo(EmbeddingVersion.V1, "grid T, group min(256, D rounded up to 32)", Decode = DecodeUse.Activations,
        Summary = "one group per token row, threads stride D; NaN row for an id outside [0, V)")]
    public static void GatherV1<TW>(ArrayView<int> tokens, TW table, ArrayView<float> x, int vocab, int dim)
        where TW : struct, IWeights
    {
        int t = Grid.IdxX;
        int id = tokens[t];
        bool valid = id >= 0 && id < vocab;
        long src = Index64.At(valid ? id : 0, dim, 0);
        long dst = Index64.At(t, dim, 0);
        for (int d = Group.IdxX; d < dim; d += Group.DimX)
            x[dst + d] = valid ? table.Get(src + d) : float.NaN;
    }
}

/// <summary>Launcher for one weight type: <c>EmbeddingKernel.Create&lt;BF16Weights&gt;(accelerator)</c>.</summary>
public sealed class EmbeddingKernel<TW>
    where TW : struct, IWeights
{
    private const string Name = "Embedding";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, TW, ArrayView<float>, int, int> _v1;

    internal EmbeddingKernel(Accelerator accelerator)
    {
        _v1 = accelerator.LoadCounted<ArrayView<int>, TW, ArrayView<float>, int, int>(EmbeddingKernel.GatherV1);
    }

    /// <summary>x[t, :] = table[tokens[t], :] widened to f32; rows of ids outside [0, vocab) become NaN.</summary>
    public void Launch(AcceleratorStream stream, ArrayView<int> tokens, TW table, ArrayView<float> x, int tokenCount, int vocab, int dim)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokenCount), tokenCount);
        DenseShapes.Positive(Name, nameof(vocab), vocab);
        DenseShapes.Positive(Name, nameof(dim), dim);
        DenseShapes.Length(Name, nameof(tokens), tokens, tokenCount, "[T]");
        DenseShapes.Weights(Name, nameof(table), table, (long)vocab * dim, "[V, D]");
        DenseShapes.Length(Name, nameof(x), x, (long)tokenCount * dim, "[T, D]");
        _v1(stream, new KernelConfig(tokenCount, DenseShapes.RowGroupSize(dim)), tokens, table, x, vocab, dim);
    }
}
