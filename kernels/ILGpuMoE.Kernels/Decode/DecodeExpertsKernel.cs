// decode/experts: the MoE block of a T = 1 decode step as two launches, no permutation (the K expert ids of the one
// token are read directly; id -1 is a dropped pair and is skipped):
//   up-gate  h [K, F]:  h[k, f] = silu(W1[e_k*F + f] . xs) * (W3[e_k*F + f] . xs),  xs = rmsnorm(x) * g,  e_k = ids[k]
//   down     out [D]:   out[d] = residual[d] + sum over k with e_k >= 0, in k order, of weight[k] * (W2[e_k*D + d] . h[k, :])
// = Mixtral's expert w2(silu(w1 x) * w3 x), weighted and summed over the token's experts (RefMoe.MoeBlock), plus the
// residual (the combine and the residual add are the down projection's epilogue).
// Both launches take an ExpertGlu (Moe/GroupedGemm/ExpertGlu.cs): gpt-oss's clamped GLU with gate/up biases in the
// up-gate epilogue, its down bias b2[e_k] added to pair k's product (weighted with it) in the down pass; the default
// is the SiLU above with no bias, the same code path as before the option.
//
// Versions:
//   V1  up-gate: grid K * ceil(F / 8), group 256; warp w of group (k, j) owns f = 8j + w and streams the gate row
//       (W1) and the up row (W3) of the same f as its two rows (R = 2), 16-byte units, xs staged once per group in
//       padded shared memory (DecodeStaging.cs). A group of a dropped pair writes its 8 h values as 0 (never read by
//       down, but defined) and returns before any barrier (the condition is uniform per group).
//       down: grid ceil(D / 16), group 256; warp w owns rows d, d + 1 and loops over the K pairs in k order: h[k, :]
//       is staged tile by tile (F = 14,336 is four tiles), each lane accumulates weight[k] * its partial dot products
//       in registers, the lanes' sums are added once at the end (fixed order), and lanes 0/1 write residual + sum:
//       deterministic, no atomics. residual may alias out (each element is read and written by the same lane).
//   Ids outside [-1, E) would index outside the stacked weights: the kernels treat them like -1 (the gating kernels
//   never produce them; the reference rejects them).
//
// Shapes: T = 1; E experts, K pairs (top-k), D model dim, F expert hidden; W1, W3 [E*F, D]; W2 [E*D, F]; G and V unused.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;

namespace ILGpuMoE.Kernels.Decode;

/// <summary>decode/experts's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("decode/experts")]
public enum DecodeExpertsVersion
{
    /// <summary>Up-gate (norm prologue, gate and up rows per warp) and down (+ combine + residual), ids read directly.</summary>
    V1 = 1,
}

public static class DecodeExpertsKernels
{
    [KernelInfo(DecodeExpertsVersion.V1, "grid K*ceil(F/8), group 256 (8 warps: gate and up row of one f each)", Entry = "up-gate",
        Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["w1.Data:16", "w3.Data:16"],
        Summary = "T = 1 experts up-gate: rmsnorm prologue, h = silu(W1 xs) * (W3 xs) for the token's K experts, 16-byte units")]
    public static void UpGateV1<TU>(TU w1, TU w3, ArrayView<int> ids, ArrayView<float> x, NormWeights g, float eps,
        ArrayView<float> h, int hidden, int groupsPerPair, ExpertGlu glu)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        int k = Grid.IdxX / groupsPerPair;
        int f = (Grid.IdxX - k * groupsPerPair) * DecodeStaging.Warps + Warp.WarpIdx;
        int e = ids[k];
        long hi = (long)k * hidden + f;
        bool live = f < hidden;
        if (e < 0 || (long)(e + 1) * hidden > w1.Rows)
        {
            if (live && Warp.IsFirstLane)
                h[hi] = 0f;
            return;
        }

        int cols = w1.Cols;
        float scale = g.Kind != NormWeights.KindNone ? DecodeStaging.NormScale(x, cols, eps, slots) : 1f;
        long row = (long)e * hidden + (live ? f : 0);
        var p = DecodeStaging.RowTotals(DecodeStaging.DotRows(w1, w1.Row(row), w3, w3.Row(row), live, x, cols, g, scale, xs), xs);
        if (live && Warp.IsFirstLane)
            h[hi] = glu.UpGate(p.A, p.B, row);
    }

    [KernelInfo(DecodeExpertsVersion.V1, "grid ceil(D/16), group 256 (8 warps x 2 rows of d)", Entry = "down",
        Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["w2.Data:16"],
        Summary = "T = 1 experts down: out = residual + sum_k weight_k * W2[e_k] h_k in k order, h staged by tiles, 16-byte units")]
    public static void DownV1<TU>(TU w2, ArrayView<int> ids, ArrayView<float> weights, ArrayView<float> h,
        ArrayView<float> residual, ArrayView<float> output, int topK, int dim, ExpertGlu glu)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        int hidden = w2.Cols;
        int r0 = Grid.IdxX * DecodeStaging.RowsPerGroup + Warp.WarpIdx * DecodeStaging.RowsPerWarp;
        bool live = r0 < dim;
        int r1 = live ? IntrinsicMath.Min(r0 + 1, dim - 1) : 0;
        float s0 = 0f, s1 = 0f;
        for (int k = 0; k < topK; k++)
        {
            int e = ids[k];
            // Uniform per group (every thread reads the same id): dropped pairs skip their barriers together.
            if (e < 0 || (long)(e + 1) * dim > w2.Rows)
                continue;
            long b = (long)e * dim;
            var p = DecodeStaging.DotRows(w2, w2.Row(b + (live ? r0 : 0)), w2, w2.Row(b + r1), live,
                h.SubView((long)k * hidden, hidden), hidden, NormWeights.None, 1f, xs);
            float wk = weights[k];
            s0 += wk * p.A;
            s1 += wk * p.B;
            // The down bias joins lane 0's partial, weighted like the pair's product (uniform branch: one flag per launch).
            if (glu.HasDownBias != 0 && live && Warp.LaneIdx == 0)
            {
                s0 += wk * glu.DownBias[b + r0];
                s1 += wk * glu.DownBias[b + r1];
            }
        }

        // The pairs' weighted lane partials, added across lanes once (the sum is linear in them).
        var t = DecodeStaging.RowTotals(new DotPair(s0, s1), xs);
        int lane = Warp.LaneIdx;
        if (live && lane < 2 && r0 + lane < dim)
        {
            int r = r0 + lane;
            output[r] = residual[r] + (lane == 0 ? t.A : t.B);
        }
    }
}

/// <summary>Launcher for one reader type: <c>DecodeExpertsKernel.Create&lt;BF16Units&gt;(accelerator)</c>.</summary>
public static class DecodeExpertsKernel
{
    public static DecodeExpertsKernel<TU> Create<TU>(Accelerator accelerator)
        where TU : struct, IRowUnits => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));
}

/// <summary>decode/experts V1 for reader TU (RowUnits.cs): the T = 1 MoE block in two launches, up-gate then down.</summary>
public sealed class DecodeExpertsKernel<TU>
    where TU : struct, IRowUnits
{
    private const string Name = "DecodeExperts";

    private readonly Action<AcceleratorStream, KernelConfig, TU, TU, ArrayView<int>, ArrayView<float>, NormWeights, float, ArrayView<float>, int, int, ExpertGlu> _upGate;
    private readonly Action<AcceleratorStream, KernelConfig, TU, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ExpertGlu> _down;

    internal DecodeExpertsKernel(Accelerator accelerator)
    {
        _upGate = accelerator.LoadCounted<TU, TU, ArrayView<int>, ArrayView<float>, NormWeights, float, ArrayView<float>, int, int, ExpertGlu>(DecodeExpertsKernels.UpGateV1);
        _down = accelerator.LoadCounted<TU, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, ExpertGlu>(DecodeExpertsKernels.DownV1);
    }

    /// <summary>
    /// h [K, F] = silu(W1[e_k] xs) * (W3[e_k] xs), xs = rmsnorm(x) * norm (eps) or x when norm is None; w1, w3 [E*F, D]
    /// stacked, ids [K] (-1 = dropped: its row of h is written as 0). h must not overlap x. glu: the activation and gate/up
    /// biases (Moe/GroupedGemm/ExpertGlu.cs; default SiLU, none).
    /// </summary>
    public void LaunchUpGate(AcceleratorStream stream, ArrayView<float> x, NormWeights norm, float eps, TU w1, TU w3,
        ArrayView<int> ids, int topK, int hidden, ArrayView<float> h, ExpertGlu glu = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (topK < 1 || hidden < 1)
            throw new ArgumentException($"{Name}: topK ({topK}) and hidden F ({hidden}) must be >= 1");
        if (w1.Rows != w3.Rows || w1.Cols != w3.Cols)
            throw new ArgumentException($"{Name}: w1 [{w1.Rows}, {w1.Cols}] and w3 [{w3.Rows}, {w3.Cols}] differ", nameof(w3));
        if (w1.Rows % hidden != 0)
            throw new ArgumentException($"{Name}: w1 has {w1.Rows} rows, not whole experts of F = {hidden}", nameof(w1));
        int dim = w1.Cols;
        DecodeStaging.CheckInput(Name, x, norm, eps, dim);
        glu.Check(Name, w1.Rows / hidden, hidden, dim);

        if (ids.Length < topK)
            throw new ArgumentException($"{Name}: ids has {ids.Length} elements, needs K = {topK}", nameof(ids));
        if (h.Length < (long)topK * hidden)
            throw new ArgumentException($"{Name}: h has {h.Length} elements, needs K*F = {(long)topK * hidden}", nameof(h));
        DecodeStaging.RequireDisjoint(Name, "x", x.SubView(0, dim), "h", h.SubView(0, (long)topK * hidden));
        int perPair = (hidden + DecodeStaging.Warps - 1) / DecodeStaging.Warps;
        if ((long)topK * perPair > int.MaxValue)
            throw new ArgumentException($"{Name}: K = {topK} x F = {hidden} is too large for one launch");
        _upGate(stream, new KernelConfig(topK * perPair, DecodeStaging.GroupSize), w1, w3, ids, x, norm, eps, h, hidden, perPair, glu);
    }

    /// <summary>
    /// output [D] = residual [D] + sum over k (e_k = ids[k] &gt;= 0, in k order) of weights[k] * W2[e_k] h[k, :];
    /// w2 [E*D, F] stacked, h [K, F], weights [K]. residual may be the same view as output; h must not overlap it.
    /// glu's down bias b2 [E, D] (if any) is added to each pair's product before its weight.
    /// </summary>
    public void LaunchDown(AcceleratorStream stream, ArrayView<float> h, TU w2, ArrayView<int> ids, ArrayView<float> weights,
        int topK, int dim, ArrayView<float> residual, ArrayView<float> output, ExpertGlu glu = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (topK < 1 || dim < 1)
            throw new ArgumentException($"{Name}: topK ({topK}) and D ({dim}) must be >= 1");
        if (w2.Rows % dim != 0)
            throw new ArgumentException($"{Name}: w2 has {w2.Rows} rows, not whole experts of D = {dim}", nameof(w2));
        int hidden = w2.Cols;
        glu.Check(Name, w2.Rows / dim, hidden, dim);
        if (h.Length < (long)topK * hidden)
            throw new ArgumentException($"{Name}: h has {h.Length} elements, needs K*F = {(long)topK * hidden}", nameof(h));
        if (ids.Length < topK || weights.Length < topK)
            throw new ArgumentException($"{Name}: ids ({ids.Length}) and weights ({weights.Length}) need K = {topK} elements");
        if (residual.Length < dim || output.Length < dim)
            throw new ArgumentException($"{Name}: residual ({residual.Length}) and output ({output.Length}) need D = {dim} elements");
        DecodeStaging.RequireDisjoint(Name, "h", h.SubView(0, (long)topK * hidden), "output", output.SubView(0, dim));
        int groups = (dim + DecodeStaging.RowsPerGroup - 1) / DecodeStaging.RowsPerGroup;
        _down(stream, new KernelConfig(groups, DecodeStaging.GroupSize), w2, ids, weights, h, residual, output, topK, dim, glu);
    }
}
