// The decode step (T = 1) on a GPU as a fixed list of launches, built once per session.
//
// Per layer, 7 launches, or 6 (below; InferenceSession's plain step launches 18 at T = 1):
//   1. decode/linear        h = rmsnorm(x) * g staged in shared memory; q, k, v = h Wq^T, h Wk^T, h Wv^T (one launch)
//   2. attention/rope-append rotate q and k at positions[0], write k and v into the cache row
//   (1 + 2 as one launch of decode/qkv-rope, 6 per layer, where no q/k norm comes between them: Mixtral, Qwen2-MoE,
//   gpt-oss; its epilogue adds the biases, clips, rotates q and k and writes q and the cache rows)
//   3. attention v3-decode  one launch, split-K over the cache with the combine done by the last group of a kv head
//   4. decode/linear        x += a Wo^T
//   5. decode/router        logits_r = rmsnorm(x) * g2 Wg^T split over D, then ids, weights [K] routed by its last group
//   6. decode/experts up-gate  hk = silu(W1[e_k] h2) * (W3[e_k] h2), h2 = rmsnorm(x) * g2 recomputed in the prologue
//   7. decode/experts down     x += sum_k weights[k] * W2[e_k] hk (the combine and the residual in the epilogue)
// At T = 1 there is no permutation: the one token's K expert ids are read directly (kernels/ILGpuMoE.Kernels/Decode).
// decode/linear and decode/experts run their V2 (persistent groups, DecodePersistent.cs); down's split scratch is
// reserved when the plan is built.
// Around the layers: the embedding, and decode/linear with the final norm for the logits.
//
// Every launch argument is fixed when the plan is built (buffers, weights, shapes); what changes per token, the token id
// and its position, is read from device memory the session writes before the step. So the plan is what a CUDA graph
// captures once and replays (SessionOptions.CudaGraph).
//
// The families' choices ride on these launches: q/k/v biases and clip_qkv in launch 1's epilogue (o's bias in launch
// 4's), Qwen3's per-head q/k norm in launch 2, OLMoE's norm over the whole q / k projection as two rmsnorm launches
// after launch 1 (then clip_qkv as its own launches, since it follows the norm), a shared expert's chunks as extra
// slots of launches 5-7, and a dense layer as launches 6-7 alone, over its MLP's chunks with fixed ids and weights.
//
// A model the fused kernels cannot read (GPTQ act-order weights, whose inputs are gathered first) or a router the plan
// does not run (--router switch / noisy-topk) gets no plan: the session runs its plain step at T = 1 too, and Fallback
// says why.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Model;

namespace ILGpuMoE.Runtime;

/// <summary>The session's buffers a decode plan launches on (views of the first row of each).</summary>
internal sealed record DecodeBuffers(ArrayView<int> Token, ArrayView<int> Position, ArrayView<float> X, ArrayView<float> Q, ArrayView<float> K,
    ArrayView<float> V, ArrayView<float> Attention, Func<int, ArrayView<float>> RouterLogits, ArrayView<float> Weights, ArrayView<float> H,
    ArrayView<float> Logits, IReadOnlyList<ArrayView<float>> KCache, IReadOnlyList<ArrayView<float>> VCache, Func<int, ArrayView<int>> Ids,
    ArrayView<int> DenseIds, ArrayView<float> DenseWeights);

internal sealed class DecodePlan
{
    private readonly List<Action> launches = [];
    private int layerStart, layerEnd;

    private DecodePlan()
    {
    }

    /// <summary>Launches inside the decoder layers, per layer.</summary>
    public double LaunchesPerLayer { get; private set; }

    /// <summary>Enqueues the step's launches on the stream the plan was built for.</summary>
    public void Run()
    {
        foreach (var launch in launches)
            launch();
    }

    /// <summary>Why <paramref name="model"/> has no decode plan, or null when it can have one.</summary>
    public static string? Fallback(MoeModel model)
    {
        if (model.Ops is not WeightOps)
            return "the CPU backend (host code: no kernel launches to fuse)";
        if (!model.Ops.FusedDecode)
            return "the simple (V1) kernels are in use (KernelPolicy.Simple)";
        var block = model.Config.Block;
        if (block.Mla is not null)
            return "MLA attention (DeepSeek) runs the plain step";
        if (model.Config.Router.Kind is not (RouterKind.Mixtral or RouterKind.SoftmaxTopK))
            return $"--router {model.Config.Router} runs the plain step";
        foreach (var l in model.Layers)
        {
            foreach (var w in new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.W1, l.W3, l.W2 })
            {
                if (w.Quant is { } q && q.InputPermutation.Length > 0)
                    return "GPTQ act-order weights (their inputs are gathered first)";
            }
        }

        return null;
    }

    /// <summary>The plan for one session's buffers on <paramref name="s"/>; call only when <see cref="Fallback"/> is null.</summary>
    public static DecodePlan Build(MoeModel model, AcceleratorStream s, RouterSpec spec, DecodeBuffers b)
    {
        var c = model.Config;
        var ops = (WeightOps)model.Ops;
        int d = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, e = c.Experts, f = c.IntermediateSize, v = c.VocabSize;
        int hd = c.HeadDim, seq = model.MaxSeq;
        float eps = (float)c.RmsNormEps, scale = model.AttentionScale;
        var rope = model.Rope;
        float clip = c.Block.ClipQkv is { } cq ? (float)cq : float.PositiveInfinity;
        bool wholeNorm = c.Block.QkNorm == QkNormKind.Whole;
        var p = new DecodePlan();
        var x = b.X.SubView(0, d);
        var q = b.Q.SubView(0, qd);
        var kk = b.K.SubView(0, kvd);
        var vv = b.V.SubView(0, kvd);
        var a = b.Attention.SubView(0, qd);
        var pos = b.Position.SubView(0, 1);
        // No allocation once a graph captures the plan: the attention scratch and the RoPE table are made now.
        ops.Attention.ReserveDecode(s, c.Heads, c.KvHeads, hd, seq);
        ops.RopeAppend.Prepare(rope);

        p.launches.Add(() => ops.Embedding(s, b.Token.SubView(0, 1), model.Embedding, x, 1, v, d));
        p.layerStart = p.launches.Count;
        for (int l = 0; l < c.Layers; l++)
        {
            var lw = model.Layers[l];
            var kc = b.KCache[l];
            var vc = b.VCache[l];
            var ex = lw.Extras;
            int k = lw.Slots;
            var h = b.H.SubView(0, (long)k * f);
            // q, k, v, their biases and clip_qkv, the rotation and the append in one decode/qkv-rope launch where no q/k norm
            // comes between (null where it does not apply); else q, k, v with their biases, clip_qkv here only when no
            // whole-projection norm must come first, and rope-append below.
            IRowUnits uq = Units(lw.Wq, qd, d), uk = Units(lw.Wk, kvd, d), uv = Units(lw.Wv, kvd, d);
            var qkvRope = ex.QNorm is null && !wholeNorm ? DecodeLaunches.QkvRope(ops, s, x, Norm(lw.InputNorm), eps, clip, (uq, q, Bias(ex.BiasQ)),
                (uk, Bias(ex.BiasK)), (uv, Bias(ex.BiasV)), pos, kc, vc, c.Heads, c.KvHeads, hd, seq, rope) : null;
            p.launches.AddRange(qkvRope is not null ? [qkvRope] : DecodeLaunches.Linear(ops, s, x, Norm(lw.InputNorm), eps, accumulate: false,
                wholeNorm ? float.PositiveInfinity : clip, (uq, q, Bias(ex.BiasQ)), (uk, kk, Bias(ex.BiasK)), (uv, vv, Bias(ex.BiasV))));
            if (wholeNorm)
            {
                p.launches.Add(() => ops.RmsNorm(s, q, ex.QNorm!, q, 1, qd, eps));
                p.launches.Add(() => ops.RmsNorm(s, kk, ex.KNorm!, kk, 1, kvd, eps));
                if (!float.IsPositiveInfinity(clip))
                {
                    p.launches.Add(() => ops.BiasClip(s, q, null, 1, qd, clip));
                    p.launches.Add(() => ops.BiasClip(s, kk, null, 1, kvd, clip));
                    p.launches.Add(() => ops.BiasClip(s, vv, null, 1, kvd, clip));
                }
            }

            // Qwen3's per-head q/k norm (F32 [Dh]) fused into the rotation.
            var (qn, kn) = wholeNorm || ex.QNorm is null ? (default(ArrayView<float>), default(ArrayView<float>)) : (ex.QNorm.F32, ex.KNorm!.F32);
            var ropeVersion = qn.IsValid ? RopeAppendVersion.V3WarpNorm : (RopeAppendVersion?)null;
            if (qkvRope is null)
                p.launches.Add(() => ops.RopeAppend.Launch(s, q, kk, vv, pos, kc, vc, 1, c.Heads, c.KvHeads, hd, seq, rope, qn, kn, eps, ropeVersion));
            int window = c.WindowOf(l);
            var sinks = ex.Sinks is { } sk ? sk.F32 : default;
            p.launches.Add(() => ops.Attention.LaunchDecode(s, q, kc, vc, a, pos, c.Heads, c.KvHeads, hd, seq, window, sinks, scale));
            p.launches.AddRange(DecodeLaunches.Linear(ops, s, a, NormWeights.None, eps, accumulate: true, float.PositiveInfinity,
                (Units(lw.Wo, d, qd), x, Bias(ex.BiasO))));

            ArrayView<int> ids;
            ArrayView<float> w;
            if (lw.Dense)
            {
                // Every chunk of the dense MLP at weight 1: no router, no gating.
                ids = b.DenseIds.SubView(0, k);
                w = b.DenseWeights.SubView(0, k);
            }
            else
            {
                ids = b.Ids(l).SubView(0, k);
                w = b.Weights.SubView(0, k);
                var layerSpec = lw.SharedSlots > 0 ? spec.WithSharedSlots(lw.SharedSlots) : spec;
                int logits = layerSpec.LogitsPerToken;
                var rl = b.RouterLogits(l).SubView(0, logits);
                var router = Units(lw.Gate!, logits, d);
                if (DecodeRouterKernel.Routes(layerSpec))
                {
                    p.launches.AddRange(DecodeLaunches.Router(ops, s, x, Norm(lw.PostNorm), eps, router, Bias(lw.Moe.RouterBias), layerSpec, rl, ids, w));
                }
                else
                {
                    p.launches.AddRange(DecodeLaunches.Linear(ops, s, x, Norm(lw.PostNorm), eps, accumulate: false, float.PositiveInfinity,
                        (router, rl, Bias(lw.Moe.RouterBias))));
                    p.launches.Add(() => ops.Gating.Launch(s, layerSpec, rl, ids, w, 1));
                }
            }

            var (u1, u3, u2) = ExpertUnits(lw, d, f);
            p.launches.AddRange(DecodeLaunches.Experts(ops, s, x, Norm(lw.PostNorm), eps, u1, u3, u2, ids, w, k, d, f, h, lw.Glu));
        }

        p.layerEnd = p.launches.Count;
        p.LaunchesPerLayer = c.Layers > 0 ? (p.layerEnd - p.layerStart) / (double)c.Layers : 0;
        p.launches.AddRange(DecodeLaunches.Linear(ops, s, x, Norm(model.FinalNorm), eps, accumulate: false, float.PositiveInfinity,
            (Units(model.LmHead, v, d), b.Logits.SubView(0, v), NormWeights.None)));
        return p;
    }

    private static NormWeights Bias(DeviceTensor? bias) => bias is null ? NormWeights.None : Norm(bias);

    private static NormWeights Norm(DeviceTensor g) => g.Type switch
    {
        WeightType.F32 => NormWeights.Of(new F32Weights(g.F32)),
        WeightType.F16 => NormWeights.Of(new F16Weights(g.F16)),
        WeightType.BF16 => NormWeights.Of(new BF16Weights(g.BF16)),
        _ => throw new InvalidOperationException($"DecodePlan: no norm weights of type {g.Type}"),
    };

    /// <summary>The experts' readers, one type for the three (one kernel instance reads them): float experts whose rows are
    /// 16-byte units in up/gate (D wide) but not in down (F wide, e.g. F = 20 in BF16) are all read element by element.</summary>
    private static (IRowUnits W1, IRowUnits W3, IRowUnits W2) ExpertUnits(LayerWeights lw, int d, int f)
    {
        IRowUnits u1 = Units(lw.W1, lw.Experts * f, d), u3 = Units(lw.W3, lw.Experts * f, d), u2 = Units(lw.W2, lw.Experts * d, f);
        if ((u1.GetType() == u3.GetType() && u1.GetType() == u2.GetType()) || lw.W1.Dense is null || lw.W3.Dense is null || lw.W2.Dense is null)
            return (u1, u3, u2);
        return (Scalar(lw.W1.Dense, lw.Experts * f, d), Scalar(lw.W3.Dense, lw.Experts * f, d), Scalar(lw.W2.Dense, lw.Experts * d, f));
    }

    private static IRowUnits Scalar(DeviceTensor t, int rows, int cols) => t.Type switch
    {
        WeightType.F32 => RowUnits.Scalar(new F32Weights(t.F32), rows, cols),
        WeightType.F16 => RowUnits.Scalar(new F16Weights(t.F16), rows, cols),
        WeightType.BF16 => RowUnits.Scalar(new BF16Weights(t.BF16), rows, cols),
        _ => throw new InvalidOperationException($"DecodePlan: no reader for weight type {t.Type}"),
    };

    /// <summary>The 16-byte-unit reader of a linear weight [rows, cols]: its packed scheme's, or a float one.</summary>
    private static IRowUnits Units(LinearWeight w, int rows, int cols) => w.Quant is { } q ? q.DecodeUnits() : Units(w.Dense!, rows, cols);

    /// <summary>A float matrix as 16-byte units where its rows and start allow it, else element by element (odd widths).</summary>
    private static IRowUnits Units(DeviceTensor t, int rows, int cols) => t.Type switch
    {
        WeightType.F32 => RowUnits.CanReadWide(t.F32, cols) ? RowUnits.F32(new F32Weights(t.F32), rows, cols) : RowUnits.Scalar(new F32Weights(t.F32), rows, cols),
        WeightType.F16 => RowUnits.CanReadWide(t.F16, cols) ? RowUnits.F16(new F16Weights(t.F16), rows, cols) : RowUnits.Scalar(new F16Weights(t.F16), rows, cols),
        WeightType.BF16 => RowUnits.CanReadWide(t.BF16, cols) ? RowUnits.BF16(new BF16Weights(t.BF16), rows, cols) : RowUnits.Scalar(new BF16Weights(t.BF16), rows, cols),
        _ => throw new InvalidOperationException($"DecodePlan: no reader for weight type {t.Type}"),
    };
}

/// <summary>
/// The generic launches behind a plan: the readers are a closed set (RowUnits.cs) and every launch is compiled for the
/// reader it reads, so the boxed readers of the plan's builder are switched to their type here, once, at build time.
/// </summary>
internal static class DecodeLaunches
{
    /// <summary>Launches made for one reader type TU, known only once the boxed reader is switched on.</summary>
    private interface IForReader
    {
        Action[] Make<TU>()
            where TU : struct, IRowUnits;
    }

    private static Action[] ForReader(IRowUnits first, IForReader make) => first switch
    {
        F32Units => make.Make<F32Units>(),
        F16Units => make.Make<F16Units>(),
        BF16Units => make.Make<BF16Units>(),
        ScalarUnits<F32Weights> => make.Make<ScalarUnits<F32Weights>>(),
        ScalarUnits<F16Weights> => make.Make<ScalarUnits<F16Weights>>(),
        ScalarUnits<BF16Weights> => make.Make<ScalarUnits<BF16Weights>>(),
        Q8Units => make.Make<Q8Units>(),
        Q4Units => make.Make<Q4Units>(),
        Fp8Units => make.Make<Fp8Units>(),
        Mxfp4Units => make.Make<Mxfp4Units>(),
        _ => throw new InvalidOperationException($"DecodeLaunches: no decode kernels for reader {first.GetType().Name}"),
    };

    /// <summary>
    /// y_m (+)= xs W_m^T for the targets: one launch for consecutive targets of one reader type (q, k and v of one dtype
    /// are one launch), more where their types differ.
    /// </summary>
    public static IEnumerable<Action> Linear(WeightOps ops, AcceleratorStream s, ArrayView<float> x, NormWeights norm, float eps, bool accumulate,
        float clip, params (IRowUnits W, ArrayView<float> Y, NormWeights Bias)[] targets)
    {
        var result = new List<Action>();
        for (int i = 0; i < targets.Length;)
        {
            int n = 1;
            while (n < 3 && i + n < targets.Length && targets[i + n].W.GetType() == targets[i].W.GetType())
                n++;
            result.AddRange(ForReader(targets[i].W, new LinearLaunch(ops, s, x, norm, eps, accumulate, clip, targets.AsSpan(i, n).ToArray())));
            i += n;
        }

        return result;
    }

    /// <summary>The router and its gating in one launch (decode/router): logits, then the token's ids and weights.</summary>
    public static IEnumerable<Action> Router(WeightOps ops, AcceleratorStream s, ArrayView<float> x, NormWeights norm, float eps, IRowUnits w,
        NormWeights bias, RouterSpec spec, ArrayView<float> logits, ArrayView<int> ids, ArrayView<float> weights) =>
        ForReader(w, new RouterLaunch(ops, s, x, norm, eps, w, bias, spec, logits, ids, weights));

    /// <summary>
    /// decode/qkv-rope's one launch (q rotated into q, k rotated and v into the cache rows at pos), with its table uploaded
    /// and its kernel loaded now; null where it does not apply (the readers of q, k, v differ, or the kernel refuses the
    /// rotation: DecodeQkvRopeKernel.Refusal) and the caller keeps decode/linear + attention/rope-append.
    /// </summary>
    public static Action? QkvRope(WeightOps ops, AcceleratorStream s, ArrayView<float> x, NormWeights norm, float eps, float clip,
        (IRowUnits W, ArrayView<float> Y, NormWeights Bias) q, (IRowUnits W, NormWeights Bias) k, (IRowUnits W, NormWeights Bias) v,
        ArrayView<int> pos, ArrayView<float> kCache, ArrayView<float> vCache, int heads, int kvHeads, int headDim, int maxSeq, RopeSpec rope)
    {
        if (q.W.GetType() != k.W.GetType() || q.W.GetType() != v.W.GetType() || DecodeQkvRopeKernel.Refusal(rope, headDim) is not null)
            return null;
        return ForReader(q.W, new QkvRopeLaunch(ops, s, x, norm, eps, clip, q, k, v, pos, kCache, vCache, heads, kvHeads, headDim, maxSeq, rope))[0];
    }

    /// <summary>The up-gate and down launches of the T = 1 MoE block (w1, w3 and w2 must share a reader type).</summary>
    public static IEnumerable<Action> Experts(WeightOps ops, AcceleratorStream s, ArrayView<float> x, NormWeights norm, float eps,
        IRowUnits w1, IRowUnits w3, IRowUnits w2, ArrayView<int> ids, ArrayView<float> weights, int k, int d, int f, ArrayView<float> h, ExpertGlu glu)
    {
        if (w1.GetType() != w3.GetType() || w1.GetType() != w2.GetType())
            throw new InvalidOperationException($"DecodeLaunches: the experts' readers differ (w1 {w1.GetType().Name}, w3 {w3.GetType().Name}, w2 {w2.GetType().Name})");
        return ForReader(w1, new ExpertsLaunch(ops, s, x, norm, eps, w1, w3, w2, ids, weights, k, d, f, h, glu));
    }

    private sealed record LinearLaunch(WeightOps Ops, AcceleratorStream S, ArrayView<float> X, NormWeights Norm, float Eps, bool Accumulate,
        float Clip, (IRowUnits W, ArrayView<float> Y, NormWeights Bias)[] T) : IForReader
    {
        public Action[] Make<TU>()
            where TU : struct, IRowUnits
        {
            var kernel = Ops.DecodeLinear<TU>();
            var t0 = new DecodeTarget<TU>((TU)T[0].W, T[0].Y, T[0].Bias);
            DecodeTarget<TU>? t1 = T.Length > 1 ? new DecodeTarget<TU>((TU)T[1].W, T[1].Y, T[1].Bias) : null;
            DecodeTarget<TU>? t2 = T.Length > 2 ? new DecodeTarget<TU>((TU)T[2].W, T[2].Y, T[2].Bias) : null;
            var (s, x, norm, eps, accumulate, clip) = (S, X, Norm, Eps, Accumulate, Clip);
            return [() => kernel.Launch(s, x, norm, eps, t0, t1, t2, accumulate, clip)];
        }
    }

    private sealed record QkvRopeLaunch(WeightOps Ops, AcceleratorStream S, ArrayView<float> X, NormWeights Norm, float Eps, float Clip,
        (IRowUnits W, ArrayView<float> Y, NormWeights Bias) Q, (IRowUnits W, NormWeights Bias) K, (IRowUnits W, NormWeights Bias) V,
        ArrayView<int> Pos, ArrayView<float> KCache, ArrayView<float> VCache, int Heads, int KvHeads, int HeadDim, int MaxSeq, RopeSpec Rope) : IForReader
    {
        public Action[] Make<TU>()
            where TU : struct, IRowUnits
        {
            var kernel = Ops.DecodeQkvRope<TU>();
            // No allocation or compilation once a graph captures the plan: the table and the kernel are made now.
            kernel.Prepare(Rope);
            var q = new DecodeTarget<TU>((TU)Q.W, Q.Y, Q.Bias);
            TU wk = (TU)K.W, wv = (TU)V.W;
            var (s, x, norm, eps, clip, bk, bv, pos, kc, vc) = (S, X, Norm, Eps, Clip, K.Bias, V.Bias, Pos, KCache, VCache);
            var (heads, kvHeads, hd, seq, rope) = (Heads, KvHeads, HeadDim, MaxSeq, Rope);
            return [() => kernel.Launch(s, x, norm, eps, q, wk, bk, wv, bv, pos, kc, vc, heads, kvHeads, hd, seq, rope, clip)];
        }
    }

    private sealed record RouterLaunch(WeightOps Ops, AcceleratorStream S, ArrayView<float> X, NormWeights Norm, float Eps, IRowUnits W,
        NormWeights Bias, RouterSpec Spec, ArrayView<float> Logits, ArrayView<int> Ids, ArrayView<float> Weights) : IForReader
    {
        public Action[] Make<TU>()
            where TU : struct, IRowUnits
        {
            var kernel = Ops.DecodeRouter<TU>();
            var (s, w, x, norm, eps, bias, spec, logits, ids, weights) = (S, (TU)W, X, Norm, Eps, Bias, Spec, Logits, Ids, Weights);
            // No allocation once a graph captures the plan: the split's scratch is made now.
            kernel.Reserve(s, w);
            return [() => kernel.Launch(s, w, x, norm, eps, bias, spec, logits, ids, weights)];
        }
    }

    private sealed record ExpertsLaunch(WeightOps Ops, AcceleratorStream S, ArrayView<float> X, NormWeights Norm, float Eps,
        IRowUnits W1, IRowUnits W3, IRowUnits W2, ArrayView<int> Ids, ArrayView<float> Weights, int K, int D, int F, ArrayView<float> H,
        ExpertGlu Glu) : IForReader
    {
        public Action[] Make<TU>()
            where TU : struct, IRowUnits
        {
            var kernel = Ops.DecodeExperts<TU>();
            TU u1 = (TU)W1, u3 = (TU)W3, u2 = (TU)W2;
            var (s, x, norm, eps, ids, weights, k, d, f, h, glu) = (S, X, Norm, Eps, Ids, Weights, K, D, F, H, Glu);
            // No allocation once a graph captures the plan: down's split scratch is made now.
            kernel.ReserveDown(s, k, f, d);
            return
            [
                () => kernel.LaunchUpGate(s, x, norm, eps, u1, u3, ids, k, f, h, glu),
                () => kernel.LaunchDown(s, h, u2, ids, weights, k, d, x, x, glu),
            ];
        }
    }
}
