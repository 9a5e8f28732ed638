// The seam between the forward pass (InferenceSession, written once) and what executes each op: WeightOps launches the
// ILGPU kernels (CUDA, OpenCL, or the CPU accelerator that emulates GPU threads); CpuOps (src/ILGpuMoE/Cpu) runs the
// CPU backend's SIMD host code on the same buffers (CPU accelerator memory is host memory). Every method is one step of
// the layer in the session's header, with the weight's dtype (or packed scheme) dispatched inside.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Model;

namespace ILGpuMoE.Runtime;

internal interface IForwardOps : IDisposable
{
    /// <summary>True when a decode step may run the fused T = 1 kernels (DecodePlan): ILGPU's tuned policy only.</summary>
    bool FusedDecode { get; }

    /// <summary>Whether steps of more than one token run tensor-core kernels where they apply.</summary>
    bool TensorCores { get; }

    /// <summary>x [T, D] = table[tokens].</summary>
    void Embedding(AcceleratorStream s, ArrayView<int> tokens, DeviceTensor table, ArrayView<float> x, int t, int v, int d);

    /// <summary>y [T, D] = rmsnorm(x) * w.</summary>
    void RmsNorm(AcceleratorStream s, ArrayView<float> x, DeviceTensor w, ArrayView<float> y, int t, int d, float eps);

    /// <summary>The same over rows D wide starting xStride (yStride) floats apart.</summary>
    void RmsNorm(AcceleratorStream s, ArrayView<float> x, int xStride, DeviceTensor w, ArrayView<float> y, int yStride, int t, int d, float eps);

    /// <summary>y [T, Out] (+)= x [T, In] W^T for a dense or packed W (WeightOps.MatMul says what gather and inputGathered mean).</summary>
    void MatMul(AcceleratorStream s, ArrayView<float> x, LinearWeight w, ArrayView<float> y, int t, int outDim, int inDim, bool accumulate = false,
        ArrayView<float> gather = default, bool inputGathered = false, bool tensorCore = true);

    /// <summary>y [T, Out] (+)= x [T, In] W^T for a dense W (the router).</summary>
    void MatMul(AcceleratorStream s, ArrayView<float> x, DeviceTensor w, ArrayView<float> y, int t, int outDim, int inDim, bool accumulate = false,
        bool tensorCore = true);

    /// <summary>x read through act-order weight w's input permutation into gather; returns the gathered rows.</summary>
    ArrayView<float> GatherInput(AcceleratorStream s, ArrayView<float> x, LinearWeight w, ArrayView<float> gather, int t, int inDim);

    /// <summary>y [T, N] = clamp(y + bias, -clip, clip).</summary>
    void BiasClip(AcceleratorStream s, ArrayView<float> y, DeviceTensor? bias, int t, int n, float clip);

    /// <summary>RoPE on q and k (with Qwen3's per-head norm when qNorm / kNorm are given).</summary>
    void Rope(AcceleratorStream s, ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, int t, int heads, int kvHeads,
        RopeSpec spec, int qStride, int kStride, DeviceTensor? qNorm, DeviceTensor? kNorm, float eps);

    /// <summary>k, v [T, Hkv, Dh] into the layer's caches at positions pos0..pos0+T-1.</summary>
    void AppendKv(AcceleratorStream s, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache, int t, int kvHeads,
        int headDim, int maxSeq, int pos0);

    /// <summary>Causal (windowed) attention of q [T, H, Dh] over the caches into o [T, H, Dh]; sinks: F32 [H] or empty.</summary>
    void Attention(AcceleratorStream s, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> o, int t, int heads,
        int kvHeads, int headDim, int maxSeq, int pos0, int window, ArrayView<float> sinks, float scale);

    /// <summary>
    /// Paged cache (continuous batching; layout kernels/ILGpuMoE.Kernels/Attention/PagedAttentionKernel.cs): k, v
    /// [T, Hkv, Dh] into kCache, vCache [NumBlocks, Hkv, BS, Dh] at slots[t] = block * BS + offset.
    /// </summary>
    void PagedAppendKv(AcceleratorStream s, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache,
        ArrayView<int> slots, int t, int kvHeads, int headDim, int blockSize);

    /// <summary>
    /// Paged attention of q [T, H, Dh] into o [T, H, Dh]: token t attends to the keys 0..positions[t] (window) of its
    /// sequence, found through blockTables [S, maxBlocks] row seqOfToken[t]; sinks: F32 [H] or empty. Append first.
    /// </summary>
    void PagedAttention(AcceleratorStream s, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> o,
        ArrayView<int> positions, ArrayView<int> seqOfToken, ArrayView<int> blockTables, int t, int heads, int kvHeads, int headDim, int blockSize,
        int maxBlocks, int window, ArrayView<float> sinks, float scale);

    /// <summary>Router logits -> ids, weights [T, K'] (noise for NoisyTopK, bias for DeepSeekV3; empty otherwise).</summary>
    void Gating(AcceleratorStream s, RouterSpec spec, ArrayView<float> logits, ArrayView<int> ids, ArrayView<float> weights, int t,
        ArrayView<float> noiseLogits, ArrayView<float> bias);

    /// <summary>output [T, D] = residual + MoE(x) for stacked experts (dense or packed, one kind for w1, w3, w2).</summary>
    void Moe(AcceleratorStream s, MoeWorkspace ws, ArrayView<float> x, ArrayView<int> ids, ArrayView<float> weights, int t,
        LinearWeight w1, LinearWeight w3, LinearWeight w2, ArrayView<float> output, ArrayView<float> residual, ExpertGlu glu = default);

    /// <summary>MLA: the latent rows and k_rope into the compressed cache at positions[t].</summary>
    void MlaAppend(AcceleratorStream s, ArrayView<float> latent, int latentStride, ArrayView<float> kRope, int ropeStride, ArrayView<int> positions,
        ArrayView<float> cache, int t, int rank, int ropeDim, int maxSeq);

    /// <summary>Paged MLA: the latent rows and k_rope into the pool [NumBlocks * BS, R + Dr] at rows slots[t].</summary>
    void PagedMlaAppend(AcceleratorStream s, ArrayView<float> latent, int latentStride, ArrayView<float> kRope, int ropeStride, ArrayView<int> slots,
        ArrayView<float> cache, int t, int rank, int ropeDim);

    /// <summary>Paged MLA: o_lat [T, H, R] over each token's sequence rows 0..positions[t], found through blockTables [S, maxBlocks].</summary>
    void PagedMlaAttention(AcceleratorStream s, ArrayView<float> qAbs, ArrayView<float> cache, ArrayView<int> positions, ArrayView<int> seqOfToken,
        ArrayView<int> blockTables, ArrayView<float> oLat, int t, int heads, MlaOptions o, int blockSize, int maxBlocks, float scale);

    /// <summary>MLA: q_abs [T, H, R + Dr] from q and kv_b_proj.</summary>
    void MlaAbsorbQ(AcceleratorStream s, ArrayView<float> q, DeviceTensor kvB, ArrayView<float> qAbs, int t, int heads, MlaOptions o);

    /// <summary>MLA: o_lat [T, H, R] over the latent cache.</summary>
    void MlaAttention(AcceleratorStream s, ArrayView<float> qAbs, ArrayView<float> cache, ArrayView<int> positions, ArrayView<float> oLat,
        int t, int heads, MlaOptions o, int maxSeq, float scale);

    /// <summary>MLA: output [T, H * Dv] from o_lat and kv_b_proj.</summary>
    void MlaAbsorbV(AcceleratorStream s, ArrayView<float> oLat, DeviceTensor kvB, ArrayView<float> output, int t, int heads, MlaOptions o);
}
