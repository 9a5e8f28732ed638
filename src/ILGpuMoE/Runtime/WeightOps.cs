// The kernels the forward pass launches, with the weight type dispatched per tensor: a checkpoint may mix dtypes
// (e.g. F32 norms next to BF16 matrices), so each call picks the launcher specialised for that tensor's dtype. The
// per-dtype launchers are loaded on first use only (a BF16 model never compiles the F16 kernels).
//
// Kernel versions: on a GPU the launchers pick (tiled matmul for T > 1, GEMV for T = 1, flash/split-K attention,
// tiled or GEMV grouped GEMMs). On ILGPU's CPU accelerator every emulated group of 256 threads, barrier and warp
// shuffle costs real time (a decode step took ~5 s on a 64-dim model through GEMV/V2), so there the runtime uses
// the V1 kernels (one thread per output, no barriers, no shuffles): same math, a few times faster to emulate.
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Attention.Mla;
using ILGpuMoE.Model;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Quant;

namespace ILGpuMoE.Runtime;

/// <summary>Which kernel versions the forward pass launches.</summary>
public enum KernelPolicy
{
    /// <summary>Simple (V1) kernels on the CPU accelerator; on CUDA the launchers' tuned picks, with the tensor-core
    /// kernels for prefill and batched steps on devices that have mma.sync (sm_80 and later); Tuned elsewhere.</summary>
    Auto,

    /// <summary>Always the V1 kernels.</summary>
    Simple,

    /// <summary>Always the GPU's SIMT picks (tiled / GEMV / flash / split-K / grouped V2-V3), also on the CPU accelerator (tests).</summary>
    Tuned,

    /// <summary>
    /// Tuned, plus the tensor-core kernels (mma.sync, BF16/F16 weights; activations rounded to the weights' 16-bit type)
    /// for every step of more than one token: the dense projections and lm_head, and the experts where the grouped GEMM
    /// takes tiles. The router and every F32 weight stay on the SIMT kernels, and so do shapes the tensor-core launchers
    /// refuse (a reduction dim not a multiple of 8, a view not 16-byte aligned). On the CPU accelerator they run emulated;
    /// a GPU without mma.sync (before sm_80, OpenCL) runs Tuned.
    /// </summary>
    TensorCore,

    /// <summary>
    /// The CPU backend (src/ILGpuMoE/Cpu): no ILGPU kernel at all; SIMD host code over the same buffers, which must
    /// live on ILGPU's CPU accelerator (host memory). What `--device cpu` runs; `--device cpu-emulator` runs the ILGPU
    /// kernels on the CPU accelerator instead.
    /// </summary>
    Cpu,
}

internal sealed class WeightOps : IForwardOps
{
    private readonly Accelerator _accelerator;
    private Typed<F32Weights>? _f32;
    private Typed<F16Weights>? _f16;
    private Typed<BF16Weights>? _bf16;

    private readonly bool _simple;
    private readonly GroupedGemmVersion? _moeVersion;

    public WeightOps(Accelerator accelerator, KernelPolicy policy)
    {
        _accelerator = accelerator;
        _simple = policy == KernelPolicy.Simple || (policy == KernelPolicy.Auto && accelerator.AcceleratorType == AcceleratorType.CPU);
        // Forced, they also run on the CPU accelerator (emulated: the tests); a GPU without mma.sync keeps the SIMT kernels.
        TensorCores = Devices.HasMma(accelerator)
            ? policy is KernelPolicy.TensorCore or KernelPolicy.Auto
            : policy == KernelPolicy.TensorCore && accelerator.AcceleratorType == AcceleratorType.CPU;
        _moeVersion = _simple ? GroupedGemmVersion.V1Simple : null;
        RopeKernels = RopeKernel.Create(accelerator);
        Append = KvCacheAppendKernel.Create(accelerator);
        Attention = AttentionKernel.Create(accelerator, _simple ? AttentionVersion.V1 : AttentionVersion.V2);
        Gating = GatingKernel.Create(accelerator);
    }

    /// <summary>Whether steps of more than one token run the tensor-core kernels where they apply (KernelPolicy.TensorCore).</summary>
    public bool TensorCores { get; }

    /// <summary>True when a decode step may run the fused T = 1 kernels (DecodePlan): the tuned policy.</summary>
    public bool FusedDecode => !_simple;

    // The decode plan's kernels per reader type (kernels/ILGpuMoE.Kernels/Decode/RowUnits.cs), loaded on first use.
    private readonly Dictionary<Type, object> _decodeLinear = [], _decodeExperts = [], _decodeRouter = [], _decodeQkvRope = [];
    private RopeAppendKernel? _ropeAppend;

    public RopeAppendKernel RopeAppend => _ropeAppend ??= RopeAppendKernel.Create(_accelerator);

    // One launcher per reader type TU in cache, made on first use.
    private T PerReader<TU, T>(Dictionary<Type, object> cache, Func<Accelerator, T> create)
        where TU : struct, IRowUnits
        where T : class
    {
        if (!cache.TryGetValue(typeof(TU), out var k))
            cache[typeof(TU)] = k = create(_accelerator);
        return (T)k;
    }

    public DecodeLinearKernel<TU> DecodeLinear<TU>()
        where TU : struct, IRowUnits => PerReader<TU, DecodeLinearKernel<TU>>(_decodeLinear, DecodeLinearKernel.Create<TU>);

    public DecodeExpertsKernel<TU> DecodeExperts<TU>()
        where TU : struct, IRowUnits => PerReader<TU, DecodeExpertsKernel<TU>>(_decodeExperts, DecodeExpertsKernel.Create<TU>);

    public DecodeRouterKernel<TU> DecodeRouter<TU>()
        where TU : struct, IRowUnits => PerReader<TU, DecodeRouterKernel<TU>>(_decodeRouter, DecodeRouterKernel.Create<TU>);

    public DecodeQkvRopeKernel<TU> DecodeQkvRope<TU>()
        where TU : struct, IRowUnits => PerReader<TU, DecodeQkvRopeKernel<TU>>(_decodeQkvRope, DecodeQkvRopeKernel.Create<TU>);

    public RopeKernel RopeKernels { get; }

    // MLA (DeepSeek), loaded on first use: the latent cache append and attention, and per kv_b_proj dtype the absorption.
    private MlaAttentionKernel? _mla;
    private readonly Dictionary<WeightType, object> _mlaAbsorb = [];

    public MlaAttentionKernel Mla => _mla ??= MlaAttentionKernel.Create(_accelerator);

    private MlaAbsorbKernel<TW> Absorb<TW>(WeightType type)
        where TW : struct, IWeights
    {
        if (!_mlaAbsorb.TryGetValue(type, out var k))
            _mlaAbsorb[type] = k = MlaAbsorbKernel.Create<TW>(_accelerator);
        return (MlaAbsorbKernel<TW>)k;
    }

    /// <summary>q_abs [T, H, R + Dr] = per head [W_UK^T q_nope | q_rope] from q [T, H, Dn + Dr] and kv_b_proj [H * (Dn + Dv), R].</summary>
    public void MlaAbsorbQ(AcceleratorStream s, ArrayView<float> q, DeviceTensor kvB, ArrayView<float> qAbs, int t, int heads, MlaOptions o)
    {
        switch (kvB.Type)
        {
            case WeightType.F32: Absorb<F32Weights>(kvB.Type).AbsorbQ(s, q, new(kvB.F32), qAbs, t, heads, o.KvLoraRank, o.QkRopeHeadDim, o.QkNopeHeadDim, o.VHeadDim); break;
            case WeightType.F16: Absorb<F16Weights>(kvB.Type).AbsorbQ(s, q, new(kvB.F16), qAbs, t, heads, o.KvLoraRank, o.QkRopeHeadDim, o.QkNopeHeadDim, o.VHeadDim); break;
            case WeightType.BF16: Absorb<BF16Weights>(kvB.Type).AbsorbQ(s, q, new(kvB.BF16), qAbs, t, heads, o.KvLoraRank, o.QkRopeHeadDim, o.QkNopeHeadDim, o.VHeadDim); break;
            default: throw Unnamed(kvB.Type);
        }
    }

    /// <summary>output [T, H * Dv] = per head W_UV o_lat from o_lat [T, H, R] and kv_b_proj.</summary>
    public void MlaAbsorbV(AcceleratorStream s, ArrayView<float> oLat, DeviceTensor kvB, ArrayView<float> output, int t, int heads, MlaOptions o)
    {
        switch (kvB.Type)
        {
            case WeightType.F32: Absorb<F32Weights>(kvB.Type).AbsorbV(s, oLat, new(kvB.F32), output, t, heads, o.KvLoraRank, o.QkRopeHeadDim, o.QkNopeHeadDim, o.VHeadDim); break;
            case WeightType.F16: Absorb<F16Weights>(kvB.Type).AbsorbV(s, oLat, new(kvB.F16), output, t, heads, o.KvLoraRank, o.QkRopeHeadDim, o.QkNopeHeadDim, o.VHeadDim); break;
            case WeightType.BF16: Absorb<BF16Weights>(kvB.Type).AbsorbV(s, oLat, new(kvB.BF16), output, t, heads, o.KvLoraRank, o.QkRopeHeadDim, o.QkNopeHeadDim, o.VHeadDim); break;
            default: throw Unnamed(kvB.Type);
        }
    }

    /// <summary>o_lat [T, H, R] from q_abs over the latent cache rows 0..pos of each token (V1 under the simple policy).</summary>
    public void MlaAttention(AcceleratorStream s, ArrayView<float> qAbs, ArrayView<float> cache, ArrayView<int> positions, ArrayView<float> oLat,
        int t, int heads, MlaOptions o, int maxSeq, float scale) =>
        Mla.Attention(s, qAbs, cache, positions, oLat, t, heads, o.KvLoraRank, o.QkRopeHeadDim, maxSeq, scale, _simple ? MlaAttentionVersion.V1 : null);

    public KvCacheAppendKernel Append { get; }

    public void AppendKv(AcceleratorStream s, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache, int t, int kvHeads,
        int headDim, int maxSeq, int pos0) =>
        Append.Launch(s, k, v, kCache, vCache, t, kvHeads, headDim, maxSeq, pos0);

    void IForwardOps.Attention(AcceleratorStream s, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> o, int t, int heads,
        int kvHeads, int headDim, int maxSeq, int pos0, int window, ArrayView<float> sinks, float scale) =>
        Attention.Launch(s, q, kCache, vCache, o, t, heads, kvHeads, headDim, maxSeq, pos0, window, sinks, scale);

    void IForwardOps.Gating(AcceleratorStream s, RouterSpec spec, ArrayView<float> logits, ArrayView<int> ids, ArrayView<float> weights, int t,
        ArrayView<float> noiseLogits, ArrayView<float> bias) =>
        Gating.Launch(s, spec, logits, ids, weights, t, noiseLogits: noiseLogits, bias: bias);

    public void MlaAppend(AcceleratorStream s, ArrayView<float> latent, int latentStride, ArrayView<float> kRope, int ropeStride, ArrayView<int> positions,
        ArrayView<float> cache, int t, int rank, int ropeDim, int maxSeq) =>
        Mla.Append(s, latent, latentStride, kRope, ropeStride, positions, cache, t, rank, ropeDim, maxSeq);

    // The paged cache (continuous batching), loaded on first use: V1 under the simple policy, else the warp-per-row decode kernel.
    private PagedAttentionKernel? _paged;
    private PagedMlaKernel? _pagedMla;

    public PagedAttentionKernel Paged => _paged ??= PagedAttentionKernel.Create(_accelerator, _simple ? PagedAttentionVersion.V1 : PagedAttentionVersion.V2Decode);

    public PagedMlaKernel PagedMla => _pagedMla ??= PagedMlaKernel.Create(_accelerator);

    public void PagedAppendKv(AcceleratorStream s, ArrayView<float> k, ArrayView<float> v, ArrayView<float> kCache, ArrayView<float> vCache,
        ArrayView<int> slots, int t, int kvHeads, int headDim, int blockSize) =>
        Paged.Append(s, k, v, kCache, vCache, slots, t, kvHeads, headDim, blockSize);

    public void PagedAttention(AcceleratorStream s, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache, ArrayView<float> o,
        ArrayView<int> positions, ArrayView<int> seqOfToken, ArrayView<int> blockTables, int t, int heads, int kvHeads, int headDim, int blockSize,
        int maxBlocks, int window, ArrayView<float> sinks, float scale) =>
        Paged.Launch(s, q, kCache, vCache, o, positions, seqOfToken, blockTables, t, heads, kvHeads, headDim, blockSize, maxBlocks, window, sinks, scale);

    public void PagedMlaAppend(AcceleratorStream s, ArrayView<float> latent, int latentStride, ArrayView<float> kRope, int ropeStride, ArrayView<int> slots,
        ArrayView<float> cache, int t, int rank, int ropeDim) =>
        PagedMla.Append(s, latent, latentStride, kRope, ropeStride, slots, cache, t, rank, ropeDim);

    public void PagedMlaAttention(AcceleratorStream s, ArrayView<float> qAbs, ArrayView<float> cache, ArrayView<int> positions, ArrayView<int> seqOfToken,
        ArrayView<int> blockTables, ArrayView<float> oLat, int t, int heads, MlaOptions o, int blockSize, int maxBlocks, float scale) =>
        PagedMla.Attention(s, qAbs, cache, positions, seqOfToken, blockTables, oLat, t, heads, o.KvLoraRank, o.QkRopeHeadDim, blockSize, maxBlocks, scale);

    public AttentionKernel Attention { get; }

    public GatingKernel Gating { get; }

    private sealed class Typed<TW>(Accelerator a)
        where TW : struct, IWeights
    {
        public readonly EmbeddingKernel<TW> Embedding = EmbeddingKernel.Create<TW>(a);
        public readonly RmsNormKernel<TW> RmsNorm = RmsNormKernel.Create<TW>(a);
        public readonly MatMulKernel<TW> MatMul = MatMulKernel.Create<TW>(a);
        public readonly MoeBlockKernels<TW> Moe = MoeBlockKernels<TW>.Create(a);
        public readonly BiasClipKernel<TW> BiasClip = BiasClipKernel.Create<TW>(a);
    }

    private Typed<F32Weights> F32 => _f32 ??= new(_accelerator);

    private Typed<F16Weights> F16 => _f16 ??= new(_accelerator);

    private Typed<BF16Weights> BF16 => _bf16 ??= new(_accelerator);

    // Quantized linear weights (--quant or a quantized checkpoint): loaded on first use only.
    // Each scheme's device matrix names the launcher entries that read it (Quant/Schemes/*.cs).
    private QuantGemvKernel? _qgemv;
    private QuantGemmKernel? _qgemm;
    private QuantMoeKernels? _qmoe;

    /// <summary>
    /// y [T, Out] (+)= x [T, In] W^T for a dense or quantized W [Out, In]. gather: scratch of at least T * In floats,
    /// needed only by a GPTQ act-order W (x is read through its input permutation into it first). inputGathered: x
    /// already is in W's packed column order (<see cref="GatherInput"/> with a weight of the same order); no gather.
    /// </summary>
    public void MatMul(AcceleratorStream s, ArrayView<float> x, LinearWeight w, ArrayView<float> y, int t, int outDim, int inDim, bool accumulate = false,
        ArrayView<float> gather = default, bool inputGathered = false, bool tensorCore = true)
    {
        if (w.Dense is not null)
        {
            MatMul(s, x, w.Dense, y, t, outDim, inDim, accumulate, tensorCore);
            return;
        }

        var q = w.Quant!;
        if (q.Host.Rows != outDim || q.Host.Cols != inDim)
            throw new ArgumentException($"quantized weight is [{q.Host.Rows}, {q.Host.Cols}], the step needs [{outDim}, {inDim}]");
        if (q.InputPermutation.Length > 0 && !inputGathered)
            x = GatherInput(s, x, w, gather, t, inDim);

        // Decode (T <= 8): the GEMV streams each packed row once for all tokens; prefill: the tiled GEMM. One split:
        // the runtime's output rows (>= 1024 at Mixtral shapes) already fill the device without split-K scratch.
        if (t <= QuantGemvKernels.MaxTokens)
            q.LaunchGemv(_qgemv ??= QuantGemvKernel.Create(_accelerator), s, x, y, t, accumulate);
        else
            q.LaunchGemm(_qgemm ??= QuantGemmKernel.Create(_accelerator), s, x, y, t, accumulate);
    }

    /// <summary>xp [T, In] = x [T, In] read through act-order weight W's input permutation, into gather (>= T * In floats).</summary>
    public ArrayView<float> GatherInput(AcceleratorStream s, ArrayView<float> x, LinearWeight w, ArrayView<float> gather, int t, int inDim)
    {
        var perm = w.Quant?.InputPermutation ?? default;
        if (perm.Length == 0)
            throw new ArgumentException("GatherInput: the weight has no input permutation (not act-order)");
        if (gather.Length < (long)t * inDim)
            throw new ArgumentException($"an act-order weight needs a gather scratch of T*In = {(long)t * inDim} floats, got {gather.Length}");
        var xp = gather.SubView(0, (long)t * inDim);
        (_qgemv ??= QuantGemvKernel.Create(_accelerator)).LaunchGather(s, x, perm, xp, t, inDim);
        return xp;
    }

    /// <summary>output [T, D] = residual + MoE(x) for dense or quantized stacked experts (w1, w3 [E*F, D], w2 [E*D, F]).</summary>
    public void Moe(AcceleratorStream s, MoeWorkspace ws, ArrayView<float> x, ArrayView<int> ids, ArrayView<float> weights, int t,
        LinearWeight w1, LinearWeight w3, LinearWeight w2, ArrayView<float> output, ArrayView<float> residual, ExpertGlu glu = default)
    {
        if (w1.Dense is not null && w3.Dense is not null && w2.Dense is not null)
        {
            Moe(s, ws, x, ids, weights, t, w1.Dense, w3.Dense, w2.Dense, output, residual, glu);
            return;
        }

        DeviceQuantMatrix q1 = w1.Quant ?? throw QuantMoeKernels.Mixed(), q3 = w3.Quant ?? throw QuantMoeKernels.Mixed(),
            q2 = w2.Quant ?? throw QuantMoeKernels.Mixed();

        // The quantized block has no V1 form: its launcher picks the tiled (prefill) or GEMV (decode) grouped passes, or
        // under the tensor-core policy V6PackedMma where the step takes tiles.
        q1.LaunchMoe(_qmoe ??= new QuantMoeKernels(_accelerator), s, ws, x, ids, weights, t, q3, q2, output, residual, glu, tensorCore: TensorCores);
    }

    /// <summary>y [T, N] = clamp(y + bias, -clip, clip) in place; bias null for none, clip +inf for none.</summary>
    public void BiasClip(AcceleratorStream s, ArrayView<float> y, DeviceTensor? bias, int t, int n, float clip)
    {
        switch (bias?.Type ?? WeightType.F32)
        {
            case WeightType.F32: F32.BiasClip.Launch(s, y, t, n, bias is null ? null : new F32Weights(bias.F32), clip); break;
            case WeightType.F16: F16.BiasClip.Launch(s, y, t, n, new F16Weights(bias!.F16), clip); break;
            case WeightType.BF16: BF16.BiasClip.Launch(s, y, t, n, new BF16Weights(bias!.BF16), clip); break;
            default: throw Unnamed(bias!.Type);
        }
    }

    /// <summary>RoPE on q and k as <paramref name="spec"/> says (heads qStride / kStride floats apart), with Qwen3's
    /// per-head RMSNorm (F32 weights [Dh]) first when qNorm / kNorm are given: the thread-per-head version under the
    /// simple policy, the warp-per-head one otherwise.</summary>
    public void Rope(AcceleratorStream s, ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, int t, int heads, int kvHeads,
        RopeSpec spec, int qStride, int kStride, DeviceTensor? qNorm, DeviceTensor? kNorm, float eps)
    {
        if (qNorm is null && kNorm is null)
        {
            RopeKernels.Launch(s, q, k, positions, t, heads, kvHeads, spec, qStride, kStride);
            return;
        }

        RopeKernels.Launch(s, q, k, positions, t, heads, kvHeads, spec, qStride, kStride, qNorm?.F32 ?? default, kNorm?.F32 ?? default, eps,
            _simple ? RopeVersion.V2HeadNorm : RopeVersion.V3WarpNorm);
    }

    /// <summary>x [T, D] = table[tokens] (ids outside [0, V) give NaN rows: the caller checks ids first).</summary>
    public void Embedding(AcceleratorStream s, ArrayView<int> tokens, DeviceTensor table, ArrayView<float> x, int t, int v, int d)
    {
        switch (table.Type)
        {
            case WeightType.F32: F32.Embedding.Launch(s, tokens, new F32Weights(table.F32), x, t, v, d); break;
            case WeightType.F16: F16.Embedding.Launch(s, tokens, new F16Weights(table.F16), x, t, v, d); break;
            case WeightType.BF16: BF16.Embedding.Launch(s, tokens, new BF16Weights(table.BF16), x, t, v, d); break;
            default: throw Unnamed(table.Type);
        }
    }

    /// <summary>y [T, D] = rmsnorm(x) * w.</summary>
    public void RmsNorm(AcceleratorStream s, ArrayView<float> x, DeviceTensor w, ArrayView<float> y, int t, int d, float eps) =>
        RmsNorm(s, x, d, w, y, d, t, d, eps);

    /// <summary>The same over rows D wide starting xStride (yStride) floats apart (MLA's latent inside kv_a's rows).</summary>
    public void RmsNorm(AcceleratorStream s, ArrayView<float> x, int xStride, DeviceTensor w, ArrayView<float> y, int yStride, int t, int d, float eps)
    {
        switch (w.Type)
        {
            case WeightType.F32: F32.RmsNorm.Launch(s, x, xStride, new F32Weights(w.F32), y, yStride, t, d, eps); break;
            case WeightType.F16: F16.RmsNorm.Launch(s, x, xStride, new F16Weights(w.F16), y, yStride, t, d, eps); break;
            case WeightType.BF16: BF16.RmsNorm.Launch(s, x, xStride, new BF16Weights(w.BF16), y, yStride, t, d, eps); break;
            default: throw Unnamed(w.Type);
        }
    }

    /// <summary>
    /// y [T, Out] (+)= x [T, In] W^T for W [Out, In] (GEMV at T = 1, tiled otherwise; under <see cref="TensorCores"/> the
    /// tensor-core GEMM for T &gt; 1 and 16-bit W where its launcher takes the shape). tensorCore: false keeps this product
    /// on the SIMT kernels whatever the policy (the router: rounding its input could flip an expert choice).
    /// </summary>
    public void MatMul(AcceleratorStream s, ArrayView<float> x, DeviceTensor w, ArrayView<float> y, int t, int outDim, int inDim, bool accumulate = false,
        bool tensorCore = true)
    {
        bool mma = tensorCore && TensorCores && t > 1;
        switch (w.Type)
        {
            case WeightType.F32: MatMul(F32.MatMul, s, x, new F32Weights(w.F32), y, t, outDim, inDim, accumulate, mma: false); break;
            case WeightType.F16: MatMul(F16.MatMul, s, x, new F16Weights(w.F16), y, t, outDim, inDim, accumulate, mma); break;
            case WeightType.BF16: MatMul(BF16.MatMul, s, x, new BF16Weights(w.BF16), y, t, outDim, inDim, accumulate, mma); break;
            default: throw Unnamed(w.Type);
        }
    }

    private void MatMul<TW>(MatMulKernel<TW> k, AcceleratorStream s, ArrayView<float> x, TW w, ArrayView<float> y, int t, int outDim, int inDim, bool accumulate,
        bool mma)
        where TW : struct, IWeights
    {
        if (mma && k.SupportsMma(w, inDim))
            k.Launch(MatMulVersion.V3Mma, s, x, w, y, t, outDim, inDim, accumulate);
        else if (_simple)
            k.Launch(MatMulVersion.V1, s, x, w, y, t, outDim, inDim, accumulate);
        else
            k.Launch(s, x, w, y, t, outDim, inDim, accumulate);
    }

    /// <summary>output [T, D] = residual + MoE(x) for stacked experts w1, w3 [E, F, D], w2 [E, D, F] of one dtype.</summary>
    public void Moe(AcceleratorStream s, MoeWorkspace ws, ArrayView<float> x, ArrayView<int> ids, ArrayView<float> weights, int t,
        DeviceTensor w1, DeviceTensor w3, DeviceTensor w2, ArrayView<float> output, ArrayView<float> residual, ExpertGlu glu = default)
    {
        switch (w1.Type)
        {
            case WeightType.F32:
                F32.Moe.Launch(s, ws, x, ids, weights, t, new(w1.F32), new(w3.F32), new(w2.F32), output, residual, _moeVersion, glu);
                break;
            case WeightType.F16 when MmaExperts(ws, t, w1.F16.Cast<ushort>(), w3.F16.Cast<ushort>(), w2.F16.Cast<ushort>()):
                MoeBlockMma.Launch(s, ws, x, ids, weights, t,
                    TensorCoreExperts.F16(_mmaF16 ??= GroupedGemmMmaKernel<F16Mma>.Create(_accelerator), new(w1.F16), new(w3.F16), new(w2.F16), glu), output, residual);
                break;
            case WeightType.BF16 when MmaExperts(ws, t, w1.BF16, w3.BF16, w2.BF16):
                MoeBlockMma.Launch(s, ws, x, ids, weights, t,
                    TensorCoreExperts.Bf16(_mmaBf16 ??= GroupedGemmMmaKernel<Bf16Mma>.Create(_accelerator), new(w1.BF16), new(w3.BF16), new(w2.BF16), glu), output, residual);
                break;
            case WeightType.F16:
                F16.Moe.Launch(s, ws, x, ids, weights, t, new(w1.F16), new(w3.F16), new(w2.F16), output, residual, _moeVersion, glu);
                break;
            case WeightType.BF16:
                BF16.Moe.Launch(s, ws, x, ids, weights, t, new(w1.BF16), new(w3.BF16), new(w2.BF16), output, residual, _moeVersion, glu);
                break;
            default:
                throw Unnamed(w1.Type);
        }
    }

    // The tensor-core experts step (moe/grouped-gemm V5Mma), loaded on first use.
    private MoeBlock? _moeBlockMma;
    private GroupedGemmMmaKernel<Bf16Mma>? _mmaBf16;
    private GroupedGemmMmaKernel<F16Mma>? _mmaF16;

    private MoeBlock MoeBlockMma => _moeBlockMma ??= MoeBlock.Create(_accelerator);

    /// <summary>Whether this MoE step runs on the tensor-core experts: the policy says so, the step takes tiles (where the
    /// SIMT path would run V2, not the T = 1 GEMV forms), D and F are multiples of 8 and every expert tensor starts on a
    /// 16-byte boundary (cp.async); otherwise the SIMT experts run, with nothing refused.</summary>
    private bool MmaExperts(MoeWorkspace ws, int t, ArrayView<ushort> w1, ArrayView<ushort> w3, ArrayView<ushort> w2) =>
        TensorCores && !GroupedGemm.IsDecode(t, ws.TopK, ws.Experts) && GroupedGemmMmaKernel<Bf16Mma>.Supports(ws.Dim, ws.Hidden)
        && GroupedGemmMmaKernel<Bf16Mma>.Aligned(w1) && GroupedGemmMmaKernel<Bf16Mma>.Aligned(w3) && GroupedGemmMmaKernel<Bf16Mma>.Aligned(w2);

    private static UnreachableException Unnamed(WeightType type) => new($"WeightOps: no kernels for weight type {type}");

    public void Dispose()
    {
        RopeKernels.Dispose();
        _ropeAppend?.Dispose();
        _mla?.Dispose();
        Attention.Dispose();
        Gating.Dispose();
        foreach (var k in _decodeExperts.Values)
            ((IDisposable)k).Dispose();
        _decodeExperts.Clear();
        foreach (var k in _decodeRouter.Values)
            ((IDisposable)k).Dispose();
        _decodeRouter.Clear();
        foreach (var k in _decodeQkvRope.Values)
            ((IDisposable)k).Dispose();
        _decodeQkvRope.Clear();
    }
}
