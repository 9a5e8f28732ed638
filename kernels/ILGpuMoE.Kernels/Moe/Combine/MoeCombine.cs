// MoE combine: gather the expert outputs back to token order and mix them with the routing weights.
//
// out[t, d] = (residual[t, d] +) sum_{k = 0..K-1, pair kept} weight[t, k] * y[pos[t*K + k], d]
//
// Versions:
//   V1  one thread per output element; the K terms are summed in slot order k = 0..K-1 (no float atomics, so the
//       result is bit-identical run to run); dropped pairs (pos -1) add nothing, so a fully dropped token gets 0
//       (or its residual). The residual is added after the MoE sum.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe;

/// <summary>moe/combine's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("moe/combine")]
public enum MoeCombineVersion
{
    /// <summary>Gather + weighted sum in fixed slot order, optional residual add.</summary>
    V1 = 1,
}

public static class MoeCombineKernels
{
    public const int GroupSize = 256;

    [KernelInfo(MoeCombineVersion.V1, "grid ceil(T*D/256), group 256", Summary = "gather + weighted sum in fixed slot order, optional residual add")]
    public static void CombineV1(ArrayView<float> y, ArrayView<int> pos, ArrayView<float> weights, ArrayView<float> residual,
        ArrayView<float> output, int tokens, int topK, int dim, int hasResidual)
    {
        long i = (long)Grid.IdxX * Group.DimX + Group.IdxX;
        if (i >= (long)tokens * dim)
            return;
        long t = i / dim;
        long d = i - t * dim;
        float acc = 0f;
        for (int k = 0; k < topK; k++)
        {
            long pk = t * topK + k;
            int row = pos[pk];
            if (row >= 0)
                acc += weights[pk] * y[(long)row * dim + d];
        }

        output[i] = hasResidual != 0 ? residual[i] + acc : acc;
    }
}

/// <summary>Launcher of the MoE combine (MoeCombine.cs).</summary>
public sealed class MoeCombineKernel
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int> combine;

    private MoeCombineKernel(Accelerator accelerator)
    {
        combine = accelerator.LoadCounted<ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int>(MoeCombineKernels.CombineV1);
    }

    public static MoeCombineKernel Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    /// <summary>
    /// output [T, D] = (residual +) sum_k weights[t, k] * y[sorted row of (t, k)]. y [T*K, D] in the permutation's
    /// sorted order; weights [T, K]. Pass an empty view (default) as residual for none; residual may alias output.
    /// </summary>
    public void Launch(AcceleratorStream stream, MoePermutation permutation, ArrayView<float> y, ArrayView<float> weights,
        int tokens, int topK, int dim, ArrayView<float> output, ArrayView<float> residual = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(permutation);
        if (tokens < 1 || topK < 1 || dim < 1)
            throw new ArgumentException($"MoeCombine: tokens ({tokens}), topK ({topK}) and dim ({dim}) must be >= 1");
        long pairs = (long)tokens * topK;
        long elements = (long)tokens * dim;
        if (pairs > permutation.MaxPairs)
            throw new ArgumentException($"MoeCombine: tokens*topK = {pairs} exceeds the permutation's capacity {permutation.MaxPairs}");
        if (y.Length < pairs * dim)
            throw new ArgumentException($"MoeCombine: y has {y.Length} elements, needs tokens*topK*dim = {pairs * dim}");
        if (weights.Length < pairs)
            throw new ArgumentException($"MoeCombine: weights has {weights.Length} elements, needs tokens*topK = {pairs}");
        if (output.Length < elements)
            throw new ArgumentException($"MoeCombine: output has {output.Length} elements, needs tokens*dim = {elements}");
        bool hasResidual = residual.Length > 0;
        if (hasResidual && residual.Length < elements)
            throw new ArgumentException($"MoeCombine: residual has {residual.Length} elements, needs tokens*dim = {elements} (or pass none)");
        long groups = (elements + MoeCombineKernels.GroupSize - 1) / MoeCombineKernels.GroupSize;
        if (groups > int.MaxValue)
            throw new ArgumentException($"MoeCombine: tokens*dim = {elements} is too large for one launch");
        combine(stream, new KernelConfig((int)groups, MoeCombineKernels.GroupSize), y, permutation.PairPositions.View, weights,
            hasResidual ? residual : output, output, tokens, topK, dim, hasResidual ? 1 : 0);
    }
}
