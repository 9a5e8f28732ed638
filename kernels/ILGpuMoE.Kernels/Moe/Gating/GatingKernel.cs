// moe/gating: router logits [T, E] -> top-k expert ids [T, K] and weights [T, K], one fused pass per token row.
//
// Versions:
//   V1  one thread per token. The E selection scores live in a per-thread local array; K passes of a serial arg-max.
//       Simplest correct form; on a GPU its loads are uncoalesced (lanes read rows E floats apart), it keeps 2 KB of
//       local memory per thread (scores and DeepSeek group scores) and one thread serialises K x E compares.
//   V2  one warp per token (up to 8 tokens per group). Lane l holds experts l, l+32, ... (E/32 values, at most
//       8 for E = 256) in the warp's slice of shared memory; each of the K passes is a lane-local arg-max over those
//       values plus a 5-step xor-shuffle arg-max (one 64-bit shuffle per step) across the warp. Loads of a logits row are coalesced. This is the
//       version the launcher uses by default. No local memory (ptxas: 0 B stack, 38 registers at sm_90): the NoisyTopK noise
//       uses DeviceMath's register-only f64 log/exp/cos, not ILGPU's CORDIC Math.Log/Cos (80 B of .local).
//   Switch capacity V1  a second, tiny kernel after V1/V2 for RouterKind.Switch: one thread per expert walks the T
//       top-1 ids in token order and drops what exceeds the capacity; the drop count is summed in expert order.
//
// Selection order (both versions, every mode): descending score, ties toward the lower expert id, packed into one
// 64-bit key per (score, id) (OrderKey). Pass k takes the largest key below pass k-1's pick, so no "already taken"
// set is kept and the result does not depend on reduction order (max of keys is exact on every lane).
// The score selected on is the logit for the softmax modes (softmax is monotone, and equal logits give equal
// probabilities, so this is the same order without rounding noise), h for NoisyTopK, sigmoid(l) + bias for DeepSeekV3.
//
// Weights: pass k records raw_k; weight_k = raw_k / denom * scale, where
//   Mixtral, NoisyTopK : raw_k = exp(score_k - score_0), denom = sum of the K raws (softmax over E, then renormalise,
//                        is the same number: the full softmax's denominator cancels);
//   SoftmaxTopK, Switch: raw_k = exp(l_k - max l), denom = sum over all E of exp(l_e - max l);
//   DeepSeekV3         : raw_k = sigmoid(l_k) (unbiased), denom = sum of the K raws if NormTopK else 1, scale = ScalingFactor.
// NaN logits are not checked on the device (the oracle rejects them): a NaN score sorts above +inf here.
//
// Shared-expert slots (RouterSpec.SharedSlots = m > 0; DeepSeekV3's ungated shared experts: rows stay E wide, every
// shared slot weighs 1, the rest as below). Mixtral and SoftmaxTopK (Qwen2-MoE): a logits row is E + 1
// wide, its last entry the shared-expert gate's logit. The mode runs over the first E exactly as above; then slots
// K..K+m-1 of the token's ids / weights row (K + m wide) get experts E..E+m-1, every one with weight sigmoid(logit[E])
// in F32 (Hugging Face's F.sigmoid on the F32 gate logit). The runtime stacks the shared SwiGLU MLP of width Fs as m =
// ceil(Fs / F) zero-padded F-wide experts after the E routed ones, so permutation, grouped GEMM and combine see E + m
// experts and K + m slots and compute sigmoid(gate) * shared_expert(x) exactly (a padded hidden unit gives silu(0) * 0).
//
// Lane-dependent values: V1's scores live in per-thread local memory, which ILGPU's uniformity analysis takes for
// uniform (the address is the same on every lane), so an `if` on a score became a `bra.uni` whose lanes disagree
// (the PTX lint, src/ILGpuMoE/Ptx/PtxLint.cs, found 7). The selections over scores are therefore written as selects
// and non-short-circuit & / |, which ILGPU turns into selp instead of branches.
//
// Launcher (GatingKernel, below): loads the kernels once; Launch validates shapes and runs the gating kernel, then,
// for Switch, the capacity kernel, on the caller's stream.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe.Gating;

/// <summary>moe/gating-capacity's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("moe/gating-capacity")]
public enum GatingCapacityVersion
{
    /// <summary>Switch capacity: one thread per expert, in-order scan over T.</summary>
    V1 = 1,
}

public static class GatingKernels
{
    /// <summary>The largest E the kernels take (DeepSeek-V3 has 256): V1's local arrays are this long.</summary>
    public const int MaxExperts = 256;

    /// <summary>Tokens per thread group in V1.</summary>
    public const int V1GroupSize = 64;

    /// <summary>Warps (tokens) per thread group in V2 on a GPU (the launcher may use fewer, see GatingKernel.Create).</summary>
    public const int V2WarpsPerGroup = 8;

    /// <summary>Most dynamic shared memory V2 asks for: V2WarpsPerGroup warps x (E + Groups) floats at E = Groups =
    /// MaxExperts (groups divide E, so Groups &lt;= E). Declared on V2's [KernelInfo] for the PTX gate's shared memory
    /// check; GatingKernel's launch configuration refuses to request more.</summary>
    public const int V2MaxDynamicSharedBytes = V2WarpsPerGroup * 2 * MaxExperts * sizeof(float);

    /// <summary>Threads of the Switch capacity kernel's single group.</summary>
    public const int CapacityGroupSize = 256;

    // ---- shared device helpers -------------------------------------------------------------------------------

    /// <summary>True when (va, ia) comes before (vb, ib): higher score first, then lower expert id.</summary>
    // (Non-short-circuit & and |: no branch, see "Lane-dependent values" in the header.)
    internal static bool Before(float va, int ia, float vb, int ib) => (va > vb) | ((va == vb) & (ia < ib));

    /// <summary>
    /// The selection order as one integer: key(a) &gt; key(b) iff a comes first (higher score, then lower id).
    /// High word: the float's bits mapped so unsigned order is numeric order (negatives flipped, positives with the sign
    /// bit set; -0 is folded into +0 first so they tie as floats do). Low word: ~id, so a lower id is a larger key.
    /// Key 0 is below every real (score, id) and means "none". One 64-bit max per step then replaces a
    /// compare of (score, id) pairs, and the warp arg-max is one 64-bit shuffle per step instead of two.
    /// </summary>
    internal static ulong OrderKey(float score, int id)
    {
        uint bits = (uint)Interop.FloatAsInt(score == 0f ? 0f : score);
        uint ordered = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
        return ((ulong)ordered << 32) | ~(uint)id;
    }

    internal static int KeyId(ulong key) => (int)~(uint)key;

    internal static float KeyScore(ulong key)
    {
        uint ordered = (uint)(key >> 32);
        uint bits = (ordered & 0x80000000u) != 0 ? ordered & 0x7FFFFFFFu : ~ordered;
        return Interop.IntAsFloat(bits);
    }

    /// <summary>The largest key below <paramref name="below"/> among scores[e] for e = start, start + stride, ... &lt; count
    /// (0 when there is none): one selection pass over the elements a thread (V1) or lane (V2) holds.</summary>
    internal static ulong BestKeyBelow(ArrayView<float> scores, int start, int stride, int count, ulong below)
    {
        ulong bestKey = 0;
        for (int e = start; e < count; e += stride)
        {
            ulong key = OrderKey(scores[e], e);
            bestKey = (key < below) & (key > bestKey) ? key : bestKey;
        }

        return bestKey;
    }

    /// <summary>Sum of exp(scores[e] - max) over e = start, start + stride, ... &lt; count (a softmax denominator part).</summary>
    internal static float ExpSum(ArrayView<float> scores, int start, int stride, int count, float max)
    {
        float sum = 0f;
        for (int e = start; e < count; e += stride)
            sum += MathF.Exp(scores[e] - max);
        return sum;
    }

    /// <summary>splitmix64 finaliser, one step from state z (uint64 wraparound).</summary>
    internal static ulong SplitMix64(ulong z)
    {
        unchecked
        {
            z += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }

    /// <summary>The counter-based standard normal of NoisyTopK for (seed, token, expert), Box-Muller in double
    /// (the definition in BRIEF.md / RefNoise). DeviceMath, not Math.Log / Math.Cos: ILGPU's f64 versions are CORDIC
    /// routines with ref parameters that put a stack frame in .local memory.</summary>
    public static double Normal(ulong seed, int token, int expert)
    {
        ulong c = ((ulong)(uint)token << 32) | (uint)expert;
        ulong a = SplitMix64(seed ^ SplitMix64(c));
        ulong b = SplitMix64(a);
        const double twoPowMinus53 = 1.0 / 9007199254740992.0;
        double u1 = ((a >> 11) + 1) * twoPowMinus53;
        double u2 = (b >> 11) * twoPowMinus53;
        return Math.Sqrt(-2.0 * DeviceMath.Log(u1)) * DeviceMath.CosTwoPi(u2);
    }

    internal static float Sigmoid(float x) => 1f / (1f + MathF.Exp(-x));

    /// <summary>The selection score of expert e for token t (before DeepSeek's group mask).</summary>
    internal static float Score(RouterSpec spec, ArrayView<float> logits, ArrayView<float> noiseLogits,
        ArrayView<float> bias, int t, int e)
    {
        // Rows are E + 1 wide with shared slots; NoisyTopK (noise [T, E] indexed alike) never has them.
        long i = (long)t * spec.LogitsPerToken + e;
        float l = logits[i];
        if (spec.Kind == RouterKind.NoisyTopK)
        {
            // softplus(x) = max(x, 0) + log(1 + exp(-|x|)): no overflow for large |x|.
            double x = noiseLogits[i];
            double softplus = Math.Max(x, 0.0) + DeviceMath.Log(1.0 + DeviceMath.ExpNonPositive(-Math.Abs(x)));
            return (float)(l + Normal(spec.NoiseSeed, t, e) * softplus);
        }

        if (spec.Kind == RouterKind.DeepSeekV3)
            return Sigmoid(l) + bias[e];
        return l;
    }

    /// <summary>DeepSeek-V3 group score: sum of the group's two best values (its best alone if it has one expert).</summary>
    internal static float GroupScore(ArrayView<float> scores, int start, int size)
    {
        float best = float.NegativeInfinity, second = float.NegativeInfinity;
        for (int i = 0; i < size; i++)
        {
            float v = scores[start + i];
            bool aboveBest = v > best, aboveSecond = v > second;
            float secondOrV = aboveSecond ? v : second;
            second = aboveBest ? best : secondOrV;
            best = aboveBest ? v : best;
        }

        return size == 1 ? best : best + second;
    }

    /// <summary>Whether group g is among the TopKGroups best (ties toward the lower group id): its rank is the number
    /// of groups that come before it.</summary>
    internal static bool GroupKept(ArrayView<float> groupScores, int groups, int topKGroups, int g)
    {
        float mine = groupScores[g];
        int rank = 0;
        for (int h = 0; h < groups; h++)
            rank += Before(groupScores[h], h, mine, g) ? 1 : 0;

        return rank < topKGroups;
    }

    /// <summary>raw_k for the pick (e, score) given the first pick's score (see the header).</summary>
    internal static float RawWeight(RouterSpec spec, ArrayView<float> logits, int t, int e, float score, float firstScore) =>
        spec.Kind == RouterKind.DeepSeekV3
            ? Sigmoid(logits[(long)t * spec.LogitsPerToken + e])
            : MathF.Exp(score - firstScore);

    internal static bool NormalisesByPicks(RouterSpec spec) =>
        spec.Kind == RouterKind.Mixtral || spec.Kind == RouterKind.NoisyTopK ||
        (spec.Kind == RouterKind.DeepSeekV3 && spec.NormTopKFlag != 0);

    internal static bool NormalisesBySoftmax(RouterSpec spec) =>
        spec.Kind == RouterKind.SoftmaxTopK || spec.Kind == RouterKind.Switch;

    internal static float Scale(RouterSpec spec) =>
        spec.Kind == RouterKind.DeepSeekV3 ? (float)spec.ScalingFactor : 1f;

    /// <summary>Shared slots j = start, start + stride, ... &lt; m of token t's row: expert E + j, weight
    /// sigmoid(logit[E]), or 1 for DeepSeekV3 (see the header). Nothing when m = 0.</summary>
    internal static void WriteSharedSlots(RouterSpec spec, ArrayView<float> logits, ArrayView<int> ids, ArrayView<float> weights,
        int t, long row, int start, int stride)
    {
        int m = spec.SharedSlots;
        if (m == 0)
            return;
        float gate = spec.Kind == RouterKind.DeepSeekV3 ? 1f : Sigmoid(logits[(long)t * spec.LogitsPerToken + spec.Experts]);
        for (int j = start; j < m; j += stride)
        {
            ids[row + spec.TopK + j] = spec.Experts + j;
            weights[row + spec.TopK + j] = gate;
        }
    }

    // ---- V1: one thread per token ------------------------------------------------------------------------------

    /// <summary>logits [T, E], noiseLogits [T, E] (NoisyTopK), bias [E] (DeepSeekV3) -> ids [T, K], weights [T, K].</summary>
    [KernelInfo(GatingVersion.V1, "grid ceil(T/64), group 64: one thread per token",
        Summary = "Simplest correct form: scores in a per-thread local array, K serial arg-max passes over E.")]
    public static void GatingV1(RouterSpec spec, ArrayView<float> logits, ArrayView<float> noiseLogits,
        ArrayView<float> bias, ArrayView<int> ids, ArrayView<float> weights, int tokens)
    {
        int t = Grid.GlobalIndex.X;
        if (t >= tokens)
            return;

        int experts = spec.Experts, k = spec.TopK;
        var scores = LocalMemory.Allocate<float>(MaxExperts);
        for (int e = 0; e < experts; e++)
            scores[e] = Score(spec, logits, noiseLogits, bias, t, e);

        if (spec.Kind == RouterKind.DeepSeekV3)
        {
            // Experts of groups outside the best TopKGroups can never be picked: score them -inf.
            var groupScores = LocalMemory.Allocate<float>(MaxExperts);
            int groups = spec.Groups, size = experts / groups;
            for (int g = 0; g < groups; g++)
                groupScores[g] = GroupScore(scores, g * size, size);
            for (int g = 0; g < groups; g++)
            {
                bool kept = GroupKept(groupScores, groups, spec.TopKGroups, g);
                for (int e = g * size; e < (g + 1) * size; e++)
                {
                    float score = scores[e]; // read in both cases: a load in one arm would keep the branch
                    scores[e] = kept ? score : float.NegativeInfinity;
                }
            }
        }

        long row = (long)t * spec.SlotsPerToken;
        ulong prevKey = ulong.MaxValue;
        float firstScore = 0f, sum = 0f;
        for (int pass = 0; pass < k; pass++)
        {
            ulong bestKey = BestKeyBelow(scores, 0, 1, experts, prevKey);

            int bestId = KeyId(bestKey);
            float best = KeyScore(bestKey);
            if (pass == 0)
                firstScore = best;
            float raw = RawWeight(spec, logits, t, bestId, best, firstScore);
            ids[row + pass] = bestId;
            weights[row + pass] = raw;
            sum += raw;
            prevKey = bestKey;
        }

        float denom = 1f;
        if (NormalisesByPicks(spec))
        {
            denom = sum;
        }
        else if (NormalisesBySoftmax(spec))
        {
            // firstScore is the max logit here: the softmax denominator over all E.
            denom = ExpSum(scores, 0, 1, experts, firstScore);
        }

        float scale = Scale(spec);
        for (int pass = 0; pass < k; pass++)
            weights[row + pass] = weights[row + pass] / denom * scale;
        WriteSharedSlots(spec, logits, ids, weights, t, row, 0, 1);
    }

    // ---- V2: one warp per token --------------------------------------------------------------------------------

    /// <summary>Sum across the warp; the butterfly gives every lane the same bits (each step adds the same pair).</summary>
    internal static float WarpSum(float v)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset >>= 1)
            v += Warp.ShuffleXor(v, offset);
        return v;
    }

    /// <summary>Same as <see cref="GatingV1"/>; dynamic shared memory of warpsPerGroup * (E + Groups) floats.</summary>
    [KernelInfo(GatingVersion.V2, "grid ceil(T/W), group 32*W (W = min(8, T) on GPU): one warp per token, dynamic shared W*(E+Groups) floats",
        BlockSize = V2WarpsPerGroup * 32, MaxDynamicSharedBytes = V2MaxDynamicSharedBytes, Decode = DecodeUse.Activations,
        Summary = "One warp per token: coalesced row loads, E/32 scores per lane in shared memory, K passes of a 64-bit shuffle arg-max.")]
    public static void GatingV2(RouterSpec spec, ArrayView<float> logits, ArrayView<float> noiseLogits,
        ArrayView<float> bias, ArrayView<int> ids, ArrayView<float> weights, int tokens)
    {
        int warp = Warp.WarpIdx;
        int warpsPerGroup = Group.DimX / Warp.WarpSize;
        int t = Grid.IdxX * warpsPerGroup + warp;
        int groups = spec.Kind == RouterKind.DeepSeekV3 ? spec.Groups : 0;
        var shared = SharedMemory.GetDynamic<float>();
        // A warp past the last token still reaches the warp barriers in GateWarp (DeepSeek), so no early return here.
        GateWarp(spec, logits, noiseLogits, bias, ids, weights, t, t < tokens, shared.SubView((long)warp * (spec.Experts + groups), spec.Experts + groups));
    }

    /// <summary>
    /// V2's work for token t by the calling warp (every lane calls it; active false: a warp with no token, which still
    /// takes DeepSeek's warp barriers). scratch [E + Groups] floats of shared memory the warp owns. Also the routing
    /// epilogue of decode/router (kernels/ILGpuMoE.Kernels/Decode/DecodeRouterKernel.cs), whose last group routes the
    /// token with one warp.
    /// </summary>
    internal static void GateWarp(RouterSpec spec, ArrayView<float> logits, ArrayView<float> noiseLogits,
        ArrayView<float> bias, ArrayView<int> ids, ArrayView<float> weights, int t, bool active, ArrayView<float> scratch)
    {
        int lane = Warp.LaneIdx, warpSize = Warp.WarpSize;
        int experts = spec.Experts, k = spec.TopK;
        int groups = spec.Kind == RouterKind.DeepSeekV3 ? spec.Groups : 0;
        var scores = scratch.SubView(0, experts);

        if (active)
        {
            for (int e = lane; e < experts; e += warpSize)
                scores[e] = Score(spec, logits, noiseLogits, bias, t, e);
        }

        if (groups > 0)
        {
            var groupScores = scratch.SubView(experts, groups);
            int size = experts / groups;
            Warp.Barrier();
            if (active)
            {
                for (int g = lane; g < groups; g += warpSize)
                    groupScores[g] = GroupScore(scores, g * size, size);
            }

            Warp.Barrier();
            if (active)
            {
                // Each lane masks only its own experts, which it alone reads below: no barrier after this.
                for (int e = lane; e < experts; e += warpSize)
                {
                    if (!GroupKept(groupScores, groups, spec.TopKGroups, e / size))
                        scores[e] = float.NegativeInfinity;
                }
            }
        }

        if (!active)
            return;

        long row = (long)t * spec.SlotsPerToken;
        ulong prevKey = ulong.MaxValue;
        float firstScore = 0f, sum = 0f;
        for (int pass = 0; pass < k; pass++)
        {
            ulong bestKey = BestKeyBelow(scores, lane, warpSize, experts, prevKey);

            // Max is exact, associative and commutative: every lane ends with the same key.
            for (int offset = warpSize / 2; offset > 0; offset >>= 1)
            {
                ulong other = Warp.ShuffleXor(bestKey, offset);
                if (other > bestKey)
                    bestKey = other;
            }

            int bestId = KeyId(bestKey);
            float best = KeyScore(bestKey);
            if (pass == 0)
                firstScore = best;

            // Every lane knows the pick, so every lane adds the same raw in the same order: the sum of the K raws needs
            // no shuffles and equals V1's. Slot k belongs to lane k % 32: it writes the raw weight now and rescales it
            // below (reading back its own write).
            float raw = RawWeight(spec, logits, t, bestId, best, firstScore);
            sum += raw;
            if (lane == pass % warpSize)
            {
                ids[row + pass] = bestId;
                weights[row + pass] = raw;
            }

            prevKey = bestKey;
        }

        float denom = 1f;
        if (NormalisesByPicks(spec))
        {
            denom = sum;
        }
        else if (NormalisesBySoftmax(spec))
        {
            denom = WarpSum(ExpSum(scores, lane, warpSize, experts, firstScore));
        }

        float scale = Scale(spec);
        for (int pass = lane; pass < k; pass += warpSize)
            weights[row + pass] = weights[row + pass] / denom * scale;
        WriteSharedSlots(spec, logits, ids, weights, t, row, lane, warpSize);
    }

    // ---- Switch capacity ---------------------------------------------------------------------------------------

    /// <summary>
    /// Switch: ids [T] / weights [T] (top-1, from V1 or V2) are rewritten in place: thread e walks the tokens in
    /// order and drops (id -1, weight 0) every token of expert e past the first <paramref name="capacity"/>.
    /// dropped [1] receives the number of dropped tokens, summed in expert order (no atomics: bit-stable).
    /// Another thread may read ids[t] while its owner writes -1 there; it reads e or -1, neither its own id.
    /// </summary>
    [KernelInfo(GatingCapacityVersion.V1, "grid 1, group 256: one thread per expert, in-order scan over T",
        Summary = "Switch capacity: per expert, keep the first capacity tokens in token order, drop the rest, count drops without atomics.")]
    public static void SwitchCapacityV1(ArrayView<int> ids, ArrayView<float> weights, int tokens, int experts,
        int capacity, ArrayView<int> dropped)
    {
        var perThread = SharedMemory.Allocate<int>(CapacityGroupSize);
        int tid = Group.IdxX;
        int drops = 0;
        for (int e = tid; e < experts; e += Group.DimX)
        {
            // count differs per lane (each lane counts its own expert): it is updated by a select, not under an
            // if, so that ILGPU's uniformity analysis sees it as lane-dependent and emits a plain bra for the test
            // below (the PTX lint found the if form branching with bra.uni on the per-lane count).
            int count = 0;
            for (int t = 0; t < tokens; t++)
            {
                bool mine = ids[t] == e;
                count += mine ? 1 : 0;
                if (mine & count > capacity)
                {
                    ids[t] = -1;
                    weights[t] = 0f;
                    drops++;
                }
            }
        }

        perThread[tid] = drops;
        Group.Barrier();
        if (tid == 0)
        {
            int total = 0;
            for (int i = 0; i < Group.DimX; i++)
                total += perThread[i];
            dropped[0] = total;
        }
    }
}

/// <summary>The gating family's versions; each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("moe/gating")]
public enum GatingVersion
{
    /// <summary>One thread per token.</summary>
    V1,

    /// <summary>One warp per token (default).</summary>
    V2,
}

public sealed class GatingKernel : IDisposable
{
    private readonly Action<AcceleratorStream, KernelConfig, RouterSpec, ArrayView<float>, ArrayView<float>,
        ArrayView<float>, ArrayView<int>, ArrayView<float>, int> _gating;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, ArrayView<float>, int, int, int,
        ArrayView<int>> _capacity;

    // Stand-ins for the optional inputs a mode does not read and for an absent dropped counter: every kernel
    // parameter gets a real (1-element) view on every backend.
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _dummyFloats;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _dummyInt;

    private GatingKernel(Accelerator accelerator, GatingVersion version, int warpsPerGroup)
    {
        Accelerator = accelerator;
        Version = version;
        WarpsPerGroup = warpsPerGroup;
        _gating = version == GatingVersion.V1
            ? accelerator.LoadCounted<RouterSpec, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                ArrayView<int>, ArrayView<float>, int>(GatingKernels.GatingV1)
            : accelerator.LoadCounted<RouterSpec, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                ArrayView<int>, ArrayView<float>, int>(GatingKernels.GatingV2);
        _capacity = accelerator.LoadCounted<ArrayView<int>, ArrayView<float>, int, int, int, ArrayView<int>>(
            GatingKernels.SwitchCapacityV1);
        _dummyFloats = accelerator.Allocate1D<float>(1);
        _dummyInt = accelerator.Allocate1D<int>(1);
    }

    public Accelerator Accelerator { get; }

    public GatingVersion Version { get; }

    /// <summary>V2: tokens (warps) per thread group, at most; fewer when T is smaller.</summary>
    public int WarpsPerGroup { get; }

    /// <summary>
    /// Loads the gating kernels (V2 unless asked) for the accelerator. Dispose frees two 1-element buffers.
    /// warpsPerGroup (V2; 0 = automatic): 8 on a GPU, so that the per-SM limit on resident groups does not cap
    /// occupancy; 1 on the CPU accelerator, whose emulated shuffles synchronise every OS thread of the group and
    /// cost ~3x more with 8 warps per group than with 1 (measured: T=69, E=8, K=2 takes 6.6 s vs 2.2 s).
    /// </summary>
    public static GatingKernel Create(Accelerator accelerator, GatingVersion version = GatingVersion.V2, int warpsPerGroup = 0)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        if (version == GatingVersion.V2 && accelerator.WarpSize < 2)
            throw new ArgumentException($"gating V2 needs a warp of at least 2 lanes; accelerator '{accelerator.Name}' has {accelerator.WarpSize}", nameof(version));
        int maxWarps = Math.Max(1, Devices.MaxGroupSize / Math.Max(1, accelerator.WarpSize));
        if (warpsPerGroup < 0 || warpsPerGroup > maxWarps)
            throw new ArgumentException($"gating: warpsPerGroup must be in [0, {maxWarps}] (0 = automatic), got {warpsPerGroup}", nameof(warpsPerGroup));
        if (warpsPerGroup == 0)
            warpsPerGroup = accelerator.AcceleratorType == AcceleratorType.CPU ? 1 : Math.Min(GatingKernels.V2WarpsPerGroup, maxWarps);
        return new GatingKernel(accelerator, version, warpsPerGroup);
    }

    /// <summary>
    /// Routes T tokens. logits [T, E] f32 -> ids [T, K] (expert id, -1 = dropped by Switch capacity) and weights [T, K]
    /// f32, in selection order. With spec.SharedSlots = m &gt; 0: logits [T, E + 1] (the shared-expert gate's logit
    /// last), ids / weights [T, K + m] (slots K.. hold experts E..E+m-1 with weight sigmoid(logit[E])). noiseLogits [T, E] is required for NoisyTopK, bias [E] for DeepSeekV3; pass default
    /// otherwise. droppedCount [1], when given, receives the number of tokens Switch dropped (0 for other modes).
    /// Views may be longer than needed; only the leading elements are read or written.
    /// </summary>
    public void Launch(AcceleratorStream stream, RouterSpec spec, ArrayView<float> logits, ArrayView<int> ids,
        ArrayView<float> weights, int tokens, ArrayView<float> noiseLogits = default, ArrayView<float> bias = default,
        ArrayView<int> droppedCount = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Validate(spec, tokens, logits, ids, weights, noiseLogits, bias, droppedCount);

        bool hasDropped = Present(droppedCount);
        if (tokens == 0)
        {
            if (hasDropped)
                droppedCount.SubView(0, 1).MemSetToZero(stream);
            return;
        }

        var noise = spec.Kind == RouterKind.NoisyTopK ? noiseLogits : (ArrayView<float>)_dummyFloats.View;
        var biasView = spec.Kind == RouterKind.DeepSeekV3 ? bias : (ArrayView<float>)_dummyFloats.View;
        _gating(stream, Config(spec, tokens), spec, logits, noise, biasView, ids, weights, tokens);

        if (spec.Kind == RouterKind.Switch)
        {
            _capacity(stream, new KernelConfig(1, GatingKernels.CapacityGroupSize), ids, weights, tokens, spec.Experts,
                spec.SwitchCapacity(tokens), hasDropped ? droppedCount : (ArrayView<int>)_dummyInt.View);
        }
        else if (hasDropped)
        {
            droppedCount.SubView(0, 1).MemSetToZero(stream);
        }
    }

    private KernelConfig Config(RouterSpec spec, int tokens)
    {
        if (Version == GatingVersion.V1)
            return new KernelConfig((tokens + GatingKernels.V1GroupSize - 1) / GatingKernels.V1GroupSize, GatingKernels.V1GroupSize);

        int warpSize = Accelerator.WarpSize;
        int warps = Math.Min(WarpsPerGroup, tokens);
        int groups = spec.Kind == RouterKind.DeepSeekV3 ? spec.Groups : 0;
        int floats = warps * (spec.Experts + groups);
        // The PTX gate checks shared memory at the declared maximum; a request above it would go unchecked.
        if (floats * sizeof(float) > GatingKernels.V2MaxDynamicSharedBytes)
            throw new ArgumentException($"gating {spec}: {floats * sizeof(float)} B of dynamic shared memory exceeds the declared {GatingKernels.V2MaxDynamicSharedBytes} B");
        return new KernelConfig((tokens + warps - 1) / warps, warps * warpSize, SharedMemoryConfig.RequestDynamic<float>(floats));
    }

    private static bool Present<T>(ArrayView<T> view)
        where T : unmanaged => view.IsValid && view.Length > 0;

    /// <summary>Checks the spec and the view lengths; throws ArgumentException naming the offending value.</summary>
    public static void Validate(RouterSpec spec, int tokens, ArrayView<float> logits, ArrayView<int> ids,
        ArrayView<float> weights, ArrayView<float> noiseLogits = default, ArrayView<float> bias = default,
        ArrayView<int> droppedCount = default)
    {
        ValidateSpec(spec);
        if (tokens < 0)
            throw new ArgumentException($"gating: tokens must be >= 0, got {tokens}", nameof(tokens));
        long e = spec.Experts, k = spec.SlotsPerToken;
        bool shared = spec.SharedSlots > 0;
        RequireLength(logits, tokens * (long)spec.LogitsPerToken, spec.LogitsPerToken > spec.Experts ? "logits [T, E + 1]" : "logits [T, E]", nameof(logits));
        RequireLength(ids, tokens * k, shared ? "ids [T, K + m]" : "ids [T, K]", nameof(ids));
        RequireLength(weights, tokens * k, shared ? "weights [T, K + m]" : "weights [T, K]", nameof(weights));
        if (spec.Kind == RouterKind.NoisyTopK)
            RequireLength(noiseLogits, tokens * e, "noiseLogits [T, E] (NoisyTopK)", nameof(noiseLogits));
        if (spec.Kind == RouterKind.DeepSeekV3)
            RequireLength(bias, e, "bias [E] (DeepSeekV3)", nameof(bias));
        if (droppedCount.IsValid && droppedCount.Length == 0)
            throw new ArgumentException("gating: droppedCount must hold at least 1 int when given", nameof(droppedCount));
    }

    /// <summary>Checks a spec alone (E, K and the mode's parameters).</summary>
    public static void ValidateSpec(RouterSpec spec)
    {
        if (!Enum.IsDefined(spec.Kind))
            throw new ArgumentException($"gating: unknown router kind {(int)spec.Kind}", nameof(spec));
        if (spec.Experts < 1 || spec.Experts > GatingKernels.MaxExperts)
            throw new ArgumentException($"gating {spec}: experts must be in [1, {GatingKernels.MaxExperts}], got {spec.Experts}", nameof(spec));
        if (spec.TopK < 1 || spec.TopK > spec.Experts)
            throw new ArgumentException($"gating {spec}: topK must be in [1, E={spec.Experts}], got {spec.TopK}", nameof(spec));
        if (spec.SharedSlots < 0 || spec.SharedSlots > GatingKernels.MaxExperts)
            throw new ArgumentException($"gating {spec}: shared slots must be in [0, {GatingKernels.MaxExperts}], got {spec.SharedSlots}", nameof(spec));
        if (spec.SharedSlots > 0 && spec.Kind != RouterKind.Mixtral && spec.Kind != RouterKind.SoftmaxTopK && spec.Kind != RouterKind.DeepSeekV3)
            throw new ArgumentException($"gating {spec}: shared-expert slots are defined for the Mixtral, SoftmaxTopK and DeepSeekV3 routers only, not {spec.Kind}", nameof(spec));
        switch (spec.Kind)
        {
            case RouterKind.Switch:
                if (spec.TopK != 1)
                    throw new ArgumentException($"gating {spec}: Switch routes top-1, got topK {spec.TopK}", nameof(spec));
                if (!double.IsFinite(spec.CapacityFactor) || spec.CapacityFactor <= 0)
                    throw new ArgumentException($"gating {spec}: capacity factor must be finite and > 0, got {spec.CapacityFactor}", nameof(spec));
                break;
            case RouterKind.DeepSeekV3:
                if (spec.Groups < 1 || spec.Experts % spec.Groups != 0)
                    throw new ArgumentException($"gating {spec}: groups must divide E={spec.Experts}, got {spec.Groups}", nameof(spec));
                if (spec.TopKGroups < 1 || spec.TopKGroups > spec.Groups)
                    throw new ArgumentException($"gating {spec}: topKGroups must be in [1, groups={spec.Groups}], got {spec.TopKGroups}", nameof(spec));
                if (spec.TopK > spec.TopKGroups * (spec.Experts / spec.Groups))
                    throw new ArgumentException($"gating {spec}: topK {spec.TopK} exceeds the {spec.TopKGroups * (spec.Experts / spec.Groups)} experts of the kept groups", nameof(spec));
                if (!double.IsFinite(spec.ScalingFactor))
                    throw new ArgumentException($"gating {spec}: scaling factor must be finite, got {spec.ScalingFactor}", nameof(spec));
                break;
        }
    }

    private static void RequireLength<T>(ArrayView<T> view, long needed, string what, string name)
        where T : unmanaged
    {
        long have = view.IsValid ? view.Length : 0;
        if (have < needed)
            throw new ArgumentException($"gating: {what} needs {needed} elements, the view has {have}", name);
    }

    public void Dispose()
    {
        _dummyFloats.Dispose();
        _dummyInt.Dispose();
    }
}
