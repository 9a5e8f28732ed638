// The CPU backend's kernels: the same families as the ILGPU kernels (kernels/ILGpuMoE.Kernels), one host function each,
// on raw pointers (the runtime's buffers are CPU accelerator memory, or a memory-mapped checkpoint). Each is checked
// against the oracle (src/ILGpuMoE.Reference) by tests/ILGpuMoE.Tests/Cpu. Shapes: T tokens, D model dim, H / Hkv
// heads, Dh head dim, S cache positions, E experts, K' slots per token, F expert hidden dim, V vocab.
//
//   cpu/matmul       y [T, Out] (+)= x [T, In] W^T: row blocks of W over the workers (CpuMatrix.Dot: several tokens
//                    share each weight load); every matmul of the model, the router and lm_head included.
//   cpu/rmsnorm      y = x * rsqrt(mean(x^2) + eps) * w per row; rows over the workers.
//   cpu/rope         rotate-half or interleaved pairs at each token's position, YaRN's frequencies and factor; with
//                    Qwen3's per-head RMSNorm first. Angles in double (Math.SinCos), rounded once to float.
//   cpu/kv-append    k, v [T, Hkv, Dh] into the cache [Hkv, S, Dh] at rows pos0..pos0+T-1.
//   cpu/attention    per (token, kv head), for its G query heads at once: scores over the visible keys (causal, sliding
//                    window), each K row read once for the G heads; softmax in float with the max subtracted (and
//                    gpt-oss's sink logit in max and denominator); then the weighted sum of V rows, each read once for the
//                    G heads. Two passes over the scores (no online rescaling: G x S floats of scratch per worker).
//   cpu/gating       every router mode of moe/gating (RouterSpec) with its selection order: descending score, ties to
//                    the lower id; Switch's capacity drops in token order.
//   cpu/experts      the MoE block: pairs (token, slot) sorted by expert (counting sort, token order kept), each
//                    expert's inputs gathered into contiguous rows, up and gate as two matmuls over the expert's rows,
//                    the activation (SiLU, or gpt-oss's clamped GLU with biases), down, then the combine
//                    out = residual + sum_k w_k y_k in slot order. Tasks are (expert, block of rows).
//   cpu/mla-*        DeepSeek's absorbed MLA: latent-cache append, q absorption, attention over the latent rows,
//                    value absorption (the formulas of kernels/ILGpuMoE.Kernels/Attention/Mla/MlaKernels.cs).
// Determinism: each output is computed by one task in a fixed order (CpuThreads), so reruns give the same bits.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe.Gating;

namespace ILGpuMoE.Cpu;

/// <summary>
/// The activation and optional biases of the experts (cpu/experts): what ExpertGlu is to the GPU kernels. Biases are
/// F32 at host addresses the caller keeps alive: gate and up [E, F] (both or neither), down [E, D]; null for none.
/// </summary>
public sealed unsafe class CpuGlu(bool gptOss = false, float alpha = 1f, float limit = 0f, float* gateBias = null, float* upBias = null, float* downBias = null)
{
    public static readonly CpuGlu SiLU = new();

    public bool GptOss { get; } = gptOss;

    public float Alpha { get; } = alpha;

    public float Limit { get; } = limit;

    public float* GateBias { get; } = gateBias;

    public float* UpBias { get; } = upBias;

    public float* DownBias { get; } = downBias;

    /// <summary>h = act(g + bg, u + bu) for hidden unit i = e * F + f.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float UpGate(float g, float u, long i)
    {
        if (GateBias != null)
        {
            g += GateBias[i];
            u += UpBias[i];
        }

        if (GptOss)
        {
            // Compares, not Math.Min/Max, so that NaN stays NaN (torch.clamp propagates it).
            g = g > Limit ? Limit : g;
            u = u > Limit ? Limit : (u < -Limit ? -Limit : u);
            return (u + 1f) * (g / (1f + MathF.Exp(-Alpha * g)));
        }

        return g / (1f + MathF.Exp(-g)) * u;
    }
}

public static unsafe class CpuKernels
{
    /// <summary>cpu/matmul: y [T, Out] (+)= x [T, In] W^T, W [Out, In] (In = w.Cols; x in W's column order).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MatMul(CpuThreads threads, CpuMatrix w, float* x, float* y, int t, int outDim, bool accumulate)
    {
        if (outDim > w.Rows)
            throw new ArgumentException($"cpu/matmul: {outDim} outputs from a matrix of {w.Rows} rows");
        MatMulRows(threads, w, 0, outDim, x, w.Cols, t, y, outDim, accumulate);
    }

    /// <summary>Rows [row0, row0 + n) of w against T rows of x (xStride apart) into y (yStride apart), blocks over the workers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MatMulRows(CpuThreads threads, CpuMatrix w, int row0, int n, float* x, int xStride, int t, float* y, int yStride, bool accumulate)
    {
        if (t == 0 || n == 0)
            return;
        threads.Blocks(n, (long)w.Cols * t, 16, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) => w.Dot(row0 + a, b - a, x, xStride, t, y + a, yStride, accumulate));
    }

    /// <summary>cpu/embedding: x [T, D] = table[tokens] (ids checked by the caller).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Embedding(DenseRows table, int* tokens, int t, float* x)
    {
        int d = table.Cols;
        for (int i = 0; i < t; i++)
        {
            int id = tokens[i];
            if ((uint)id >= (uint)table.Rows)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"cpu/embedding: token id {id} outside [0, {table.Rows})");
            table.ReadRow(id, new Span<float>(x + (long)i * d, d));
        }
    }

    /// <summary>cpu/rmsnorm: y = x * rsqrt(mean(x^2) + eps) * w over rows of D (x and y rows xStride / yStride apart; y may be x).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RmsNorm(CpuThreads threads, float* x, int xStride, float* w, float* y, int yStride, int t, int d, float eps)
    {
        threads.Blocks(t, 4L * d, 1, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
        {
            for (int i = a; i < b; i++)
            {
                var row = new ReadOnlySpan<float>(x + (long)i * xStride, d);
                float scale = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(row) / d + eps);
                var dst = new Span<float>(y + (long)i * yStride, d);
                TensorPrimitives.Multiply(row, scale, dst);
                TensorPrimitives.Multiply(dst, new ReadOnlySpan<float>(w, d), dst);
            }
        });
    }

    /// <summary>cpu/bias-clip: y [T, N] = clamp(y + bias, -clip, clip) (bias null for none, clip +inf for none).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void BiasClip(float* y, int t, int n, float* bias, float clip)
    {
        for (int i = 0; i < t; i++)
        {
            var row = new Span<float>(y + (long)i * n, n);
            if (bias != null)
                TensorPrimitives.Add(row, new ReadOnlySpan<float>(bias, n), row);
            if (!float.IsPositiveInfinity(clip))
            {
                for (int j = 0; j < n; j++)
                {
                    float v = row[j];
                    row[j] = v > clip ? clip : (v < -clip ? -clip : v); // NaN stays NaN
                }
            }
        }
    }

    /// <summary>
    /// cpu/rope: rotates in place the dims [Offset, Offset + d) of every head of q (H per token, qStride apart) and k
    /// (Hkv, kStride apart) at positions[t]; with qNorm / kNorm (F32 [Dh], Qwen3) each head is RMS-normalised first.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Rope(float* q, float* k, int* positions, int t, int heads, int kvHeads, RopeSpec spec, double[] invFreq,
        int qStride, int kStride, float* qNorm, float* kNorm, float eps)
    {
        var g = new Pairs(spec.RotaryDim / 2, spec.Offset, spec.Interleaved, (float)spec.CosSinFactor);
        int half = g.Half;
        if (invFreq.Length != half)
            throw new ArgumentException($"cpu/rope: {invFreq.Length} frequencies for {half} pairs");
        Span<float> cos = half <= 512 ? stackalloc float[half] : new float[half];
        Span<float> sin = half <= 512 ? stackalloc float[half] : new float[half];
        for (int i = 0; i < t; i++)
        {
            int pos = positions[i];
            for (int p = 0; p < half; p++)
            {
                var (s, c) = Math.SinCos(pos * invFreq[p]);
                sin[p] = (float)s * g.Factor;
                cos[p] = (float)c * g.Factor;
            }

            for (int h = 0; h < heads; h++)
                RotateHead(q + ((long)i * heads + h) * qStride, g, cos, sin, qNorm, qStride, eps);
            for (int h = 0; h < kvHeads; h++)
                RotateHead(k + ((long)i * kvHeads + h) * kStride, g, cos, sin, kNorm, kStride, eps);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RotateHead(float* x, Pairs g, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin, float* norm, int headDim, float eps)
    {
        if (norm != null)
        {
            // The per-head norm covers the whole head (Qwen3: RopeSpec is the full rotate-half rotation, checked by the runtime).
            var head = new Span<float>(x, headDim);
            float scale = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(head) / headDim + eps);
            for (int j = 0; j < headDim; j++)
                head[j] = head[j] * scale * norm[j];
        }

        for (int p = 0; p < g.Half; p++)
        {
            int lo = g.Lo(p), hi = g.Hi(p);
            float a = x[lo], b = x[hi];
            x[lo] = a * cos[p] - b * sin[p];
            x[hi] = b * cos[p] + a * sin[p];
        }
    }

    // Pair p of a head: (Offset + p, Offset + p + Half) rotate-half, or (Offset + 2p, Offset + 2p + 1) interleaved.
    private readonly record struct Pairs(int Half, int Offset, bool Interleaved, float Factor)
    {
        public int Lo(int p) => Offset + (Interleaved ? 2 * p : p);

        public int Hi(int p) => Offset + (Interleaved ? 2 * p + 1 : p + Half);
    }

    /// <summary>cpu/kv-append: k, v [T, Hkv, Dh] into kCache, vCache [Hkv, S, Dh] at positions pos0..pos0+T-1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AppendKv(float* k, float* v, float* kCache, float* vCache, int t, int kvHeads, int headDim, int maxSeq, int pos0)
    {
        if (pos0 < 0 || (long)pos0 + t > maxSeq)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"cpu/kv-append: positions [{pos0}, {(long)pos0 + t}) outside the cache of {maxSeq}");
        long bytes = (long)headDim * sizeof(float);
        for (int i = 0; i < t; i++)
        {
            for (int h = 0; h < kvHeads; h++)
            {
                long src = ((long)i * kvHeads + h) * headDim, dst = ((long)h * maxSeq + pos0 + i) * headDim;
                Buffer.MemoryCopy(k + src, kCache + dst, bytes, bytes);
                Buffer.MemoryCopy(v + src, vCache + dst, bytes, bytes);
            }
        }
    }

    [ThreadStatic]
    private static float[]? scoresScratch;

    private static float[] Scores(int n)
    {
        if (scoresScratch is null || scoresScratch.Length < n)
            scoresScratch = new float[Math.Max(n, 256)];
        return scoresScratch;
    }

    /// <summary>
    /// cpu/attention: o [T, H, Dh] for queries q [T, H, Dh] at positions pos0 + t over the cache [Hkv, S, Dh] (key j
    /// visible iff j &lt;= pos and (window &lt;= 0 or pos - j &lt; window)); sinks: null or F32 [H]. One task per (token, kv
    /// head): the G = H / Hkv query heads that share a kv head read each K and V row once, for all G (GQA's point).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Attention(CpuThreads threads, float* q, float* kCache, float* vCache, float* o, int t, int heads, int kvHeads, int headDim,
        int maxSeq, int pos0, int window, float* sinks, float scale)
    {
        if (kvHeads < 1 || heads % kvHeads != 0)
            throw new ArgumentException($"cpu/attention: {heads} heads do not divide into {kvHeads} kv heads");
        if (pos0 < 0 || (long)pos0 + t > maxSeq)
            throw new ArgumentOutOfRangeException(nameof(pos0), $"cpu/attention: positions [{pos0}, {(long)pos0 + t}) outside the cache of {maxSeq}");
        int group = heads / kvHeads;
        threads.For(t * kvHeads, (long)(pos0 + t) * headDim * 2 * group, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (task) =>
        {
            int i = task / kvHeads, kvh = task % kvHeads;
            int pos = pos0 + i;
            int first = window > 0 ? Math.Max(0, pos - window + 1) : 0;
            int n = pos - first + 1;
            float* q0 = q + ((long)i * heads + kvh * group) * headDim; // the group's G query heads, consecutive
            float* o0 = o + ((long)i * heads + kvh * group) * headDim;
            var offsets = Rows(n);
            for (int j = 0; j < n; j++)
                offsets[j] = ((long)kvh * maxSeq + first + j) * headDim;
            fixed (long* r = offsets)
                AttendGroup(q0, o0, kCache, vCache, r, n, group, headDim, scale, sinks == null ? null : sinks + kvh * group);
        });
    }

    [ThreadStatic]
    private static long[]? rowsScratch;

    /// <summary>This worker's scratch for n row offsets.</summary>
    internal static long[] Rows(int n)
    {
        if (rowsScratch is null || rowsScratch.Length < n)
            rowsScratch = new long[Math.Max(n, 64)];
        return rowsScratch;
    }

    /// <summary>
    /// The attention of one (token, kv head): the G query heads at q0 [G, Dh] over the n visible keys, K row j at
    /// kCache + rows[j] and V row j at vCache + rows[j] (a contiguous cache or a paged pool: only the offsets differ, so
    /// both give the same bits), into o0 [G, Dh]; sinksG: null or the G heads' sink logits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void AttendGroup(float* q0, float* o0, float* kCache, float* vCache, long* rows, int n, int group, int headDim, float scale, float* sinksG)
    {
        var all = Scores(n * group);
        fixed (float* sc = all)
        {
            // Scores: s[g, j] = q_g . k_j * scale, each K row loaded once for the G heads.
            for (int j = 0; j < n; j++)
            {
                float* kj = kCache + rows[j];
                for (int g = 0; g < group; g++)
                    sc[(long)g * n + j] = Dot(q0 + (long)g * headDim, kj, headDim) * scale;
            }

            // Softmax per head, in float with the max subtracted; the sink logit joins max and denominator.
            Span<float> inv = group <= 256 ? stackalloc float[group] : new float[group];
            for (int g = 0; g < group; g++)
            {
                var s = new Span<float>(sc + (long)g * n, n);
                float max = TensorPrimitives.Max(s);
                float sink = sinksG == null ? float.NegativeInfinity : sinksG[g];
                float m = Math.Max(max, sink);
                // MathF.Exp per score: TensorPrimitives.Exp (System.Numerics.Tensors 10.0.12) took 6x longer on these
                // rows of normal-range scores (a tiny model's prefill attention: 3.1 ms against 0.49 ms).
                float sum = 0f;
                for (int j = 0; j < n; j++)
                {
                    float e = MathF.Exp(s[j] - m);
                    s[j] = e;
                    sum += e;
                }

                inv[g] = 1f / (sum + (sinksG == null ? 0f : MathF.Exp(sink - m)));
                new Span<float>(o0 + (long)g * headDim, headDim).Clear();
            }

            // o_g = sum_j p[g, j] v_j, each V row loaded once for the G heads; then the 1 / denominator.
            for (int j = 0; j < n; j++)
            {
                float* vj = vCache + rows[j];
                for (int g = 0; g < group; g++)
                    Axpy(sc[(long)g * n + j], vj, o0 + (long)g * headDim, headDim);
            }

            for (int g = 0; g < group; g++)
            {
                var og = new Span<float>(o0 + (long)g * headDim, headDim);
                TensorPrimitives.Multiply(og, inv[g], og);
            }
        }
    }

    /// <summary>a . b over n floats: Vector256 FMAs and a scalar tail (short rows: no library call overhead).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Dot(float* a, float* b, int n)
    {
        var acc = Vector256<float>.Zero;
        int c = 0;
        for (; c + 8 <= n; c += 8)
            acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + c), Vector256.Load(b + c), acc);
        float s = Vector256.Sum(acc);
        for (; c < n; c++)
            s += a[c] * b[c];
        return s;
    }

    /// <summary>y += a * x over n floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Axpy(float a, float* x, float* y, int n)
    {
        var av = Vector256.Create(a);
        int c = 0;
        for (; c + 8 <= n; c += 8)
            Vector256.FusedMultiplyAdd(av, Vector256.Load(x + c), Vector256.Load(y + c)).Store(y + c);
        for (; c < n; c++)
            y[c] += a * x[c];
    }

    /// <summary>
    /// cpu/gating: logits [T, LogitsPerToken] -> ids, weights [T, SlotsPerToken] for every RouterKind (see the selection
    /// order and weights in kernels/ILGpuMoE.Kernels/Moe/Gating/GatingKernel.cs); noise [T, E] for NoisyTopK, bias [E] for
    /// DeepSeekV3. Returns the tokens Switch's capacity dropped (0 for the other modes).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int Gating(RouterSpec spec, float* logits, float* noise, float* bias, int* ids, float* weights, int t)
    {
        // The spec checks of the GPU launcher (and the oracle): a Switch with K > 1, DeepSeek groups that do not divide
        // E or keep fewer than K experts, shared slots on Switch / NoisyTopK would otherwise route into something.
        GatingKernel.ValidateSpec(spec);
        int experts = spec.Experts, k = spec.TopK, stride = spec.LogitsPerToken, slots = spec.SlotsPerToken;
        if (spec.Kind == RouterKind.NoisyTopK && noise == null)
            throw new ArgumentException("cpu/gating: NoisyTopK needs its noise logits");
        if (spec.Kind == RouterKind.DeepSeekV3 && bias == null)
            throw new ArgumentException("cpu/gating: DeepSeekV3 needs the score-correction bias");
        Span<float> scores = stackalloc float[experts];
        Span<float> groupScores = stackalloc float[Math.Max(1, spec.Groups)];
        for (int i = 0; i < t; i++)
        {
            float* l = logits + (long)i * stride;
            for (int e = 0; e < experts; e++)
                scores[e] = Score(spec, l, noise == null ? null : noise + (long)i * stride, bias, i, e);
            if (spec.Kind == RouterKind.DeepSeekV3)
                MaskGroups(spec, scores, groupScores);

            int* row = ids + (long)i * slots;
            float* wr = weights + (long)i * slots;
            float first = 0f, sum = 0f;
            int prevId = -1;
            float prev = float.PositiveInfinity;
            for (int pass = 0; pass < k; pass++)
            {
                // The best (score, id) after the previous pick in the order: higher score first, then lower id.
                int best = -1;
                for (int e = 0; e < experts; e++)
                {
                    bool after = Before(prev, prevId, scores[e], e);
                    if (after && (best < 0 || Before(scores[e], e, scores[best], best)))
                        best = e;
                }

                float score = scores[best];
                if (pass == 0)
                    first = score;
                float raw = spec.Kind == RouterKind.DeepSeekV3 ? Sigmoid(l[best]) : MathF.Exp(score - first);
                row[pass] = best;
                wr[pass] = raw;
                sum += raw;
                (prev, prevId) = (score, best);
            }

            float denom = 1f;
            if (spec.Kind is RouterKind.Mixtral or RouterKind.NoisyTopK || (spec.Kind == RouterKind.DeepSeekV3 && spec.NormTopK))
            {
                denom = sum;
            }
            else if (spec.Kind is RouterKind.SoftmaxTopK or RouterKind.Switch)
            {
                denom = 0f;
                for (int e = 0; e < experts; e++)
                    denom += MathF.Exp(scores[e] - first);
            }

            float factor = spec.Kind == RouterKind.DeepSeekV3 ? (float)spec.ScalingFactor : 1f;
            for (int pass = 0; pass < k; pass++)
                wr[pass] = wr[pass] / denom * factor;
            if (spec.SharedSlots > 0)
            {
                float gate = spec.Kind == RouterKind.DeepSeekV3 ? 1f : Sigmoid(l[experts]);
                for (int j = 0; j < spec.SharedSlots; j++)
                {
                    row[k + j] = experts + j;
                    wr[k + j] = gate;
                }
            }
        }

        if (spec.Kind != RouterKind.Switch)
            return 0;
        // Capacity: each expert keeps its first `capacity` tokens in token order; later ones are dropped (id -1, weight 0).
        int capacity = spec.SwitchCapacity(t), dropped = 0;
        Span<int> count = stackalloc int[experts];
        for (int i = 0; i < t; i++)
        {
            int e = ids[(long)i * slots];
            if (++count[e] > capacity)
            {
                ids[(long)i * slots] = -1;
                weights[(long)i * slots] = 0f;
                dropped++;
            }
        }

        return dropped;
    }

    // (va, ia) comes before (vb, ib): higher score first, then lower id. -0 and +0 tie as floats do.
    private static bool Before(float va, int ia, float vb, int ib) => va > vb || (va == vb && ia < ib);

    private static float Sigmoid(float x) => 1f / (1f + MathF.Exp(-x));

    private static float Score(RouterSpec spec, float* l, float* noise, float* bias, int token, int e) => spec.Kind switch
    {
        // The gating kernel's own counter-based normal (host-callable), so the CPU backend draws the GPU's noise.
        RouterKind.NoisyTopK => (float)(l[e] + GatingKernels.Normal(spec.NoiseSeed, token, e) * Softplus(noise[e])),
        RouterKind.DeepSeekV3 => Sigmoid(l[e]) + bias[e],
        RouterKind.Mixtral or RouterKind.SoftmaxTopK or RouterKind.Switch => l[e],
        _ => throw new ArgumentException($"cpu/gating: router {spec.Kind} is not known"),
    };

    // softplus(x) = max(x, 0) + log(1 + exp(-|x|)), in double as the GPU kernel computes it.
    private static double Softplus(double x) => Math.Max(x, 0.0) + Math.Log(1.0 + Math.Exp(-Math.Abs(x)));

    // DeepSeek-V3: experts outside the TopKGroups best groups (group score: sum of its two best) get -inf.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MaskGroups(RouterSpec spec, Span<float> scores, Span<float> groupScores)
    {
        int groups = spec.Groups, size = scores.Length / groups;
        for (int g = 0; g < groups; g++)
        {
            float best = float.NegativeInfinity, second = float.NegativeInfinity;
            for (int i = 0; i < size; i++)
            {
                float v = scores[g * size + i];
                if (v > best)
                    (second, best) = (best, v);
                else if (v > second)
                    second = v;
            }

            groupScores[g] = size == 1 ? best : best + second;
        }

        for (int g = 0; g < groups; g++)
        {
            int rank = 0;
            for (int h = 0; h < groups; h++)
                rank += Before(groupScores[h], h, groupScores[g], g) ? 1 : 0;
            if (rank >= spec.TopKGroups)
                scores.Slice(g * size, size).Fill(float.NegativeInfinity);
        }
    }

    /// <summary>cpu/gather: xp [T, In] = x[:, perm] (act-order inputs: packed column c is input column perm[c]).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Gather(float* x, int* perm, float* xp, int t, int inDim)
    {
        for (int i = 0; i < t; i++)
        {
            float* src = x + (long)i * inDim, dst = xp + (long)i * inDim;
            for (int c = 0; c < inDim; c++)
                dst[c] = src[perm[c]];
        }
    }
}
