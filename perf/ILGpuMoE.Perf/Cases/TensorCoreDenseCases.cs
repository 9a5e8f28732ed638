// Tensor-core dense cases: MatMul V3-MMA (kernels/ILGpuMoE.Kernels/Dense/MatMul/MatMulMma.cs) at the prefill shapes of
// the dense matmuls, q_proj [H*Dh, D] and lm_head [V, D] (Mixtral: 4096 x 4096 and 32000 x 4096), BF16 weights, beside
// the SIMT V2 cases of DenseFamily at the same shapes and token counts. MatMulCase does the work: FLOPs 2 T N K, minimum
// bytes W once + x read + y written, and its check rounds x to BF16 first for this version (RefRounding), as the kernel
// does. perf/notes/tensor-cores-dense.md has the counts and the predicted times on an H200.
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Perf.Suite;

namespace ILGpuMoE.Perf.Cases;

public sealed class TensorCoreDenseFamily : IBenchFamily
{
    public string Name => "dense-mma";

    /// <summary>
    /// Prefill only: T >= 512 at model shapes (the runtime keeps the SIMT kernels below; decode is a GEMV), every T > 1 at
    /// the small presets (the CPU accelerator's check of the emulated kernel). Nothing on a device without tensor cores.
    /// </summary>
    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        if (!MatMulMma.Supported(device.Accelerator) || tokens < (p.IsSmall ? 2 : 512))
            yield break;
        yield return new MatMulCase(p, tokens, WeightType.BF16, MatMulVersion.V3Mma, "q_proj", p.QDim, p.Dim);
        yield return new MatMulCase(p, tokens, WeightType.BF16, MatMulVersion.V3Mma, "lm_head", p.Vocab, p.Dim);
    }
}
