// decode/linear: the T = 1 projections of a decode step, one pass over up to three weight matrices in one launch:
//   y_m [Rows_m] (+)= clamp(xs [D] . W_m^T + b_m, -c, c),   xs = rmsnorm(x) * g (norm prologue) or x,   m = 0..2
// (q, k, v from the attention norm in one launch; o accumulating into the residual; the router logits from the MoE norm).
// The epilogue is dense/bias-clip's (Dense/BiasClip/BiasClipKernel.cs): b_m [Rows_m] an optional bias per matrix in any
// float dtype (Qwen2-MoE's q/k/v biases), c one clip for the launch, +inf for none (OLMoE's clip_qkv); both default to
// off, so q/k/v stay one launch for these families. With accumulate the clipped value is what is added.
//
// Versions:
//   V1  warp per 2 output rows (R = 2), 8 warps per group: 16 rows per group, the grid covers each matrix's rows in
//       turn (ceil(Rows_m / 16) groups for matrix m, so a group's rows belong to one matrix and every weight load has
//       one origin). x (normalised when asked) is staged in shared memory once per group, padded against bank
//       conflicts (DecodeStaging.cs); lanes stream the rows' 16-byte units (RowUnits.cs), four loads in flight per
//       lane, then the lanes' partials are added through shared memory (DecodeStaging.RowTotals). Every weight byte is read once; the norm prologue costs each group one read
//       of x and g from L2 and one block reduction (RmsNormKernel V1's order: the same scale).
//   V2  persistent groups (DecodePersistent.cs): the grid is at most the groups the device holds at once, each group
//       loops over the launch's 16-row blocks (matrix 0's, then 1's, then 2's) with x normalised and staged once; 8
//       loads in flight per lane (packed readers: pipelined); lane partials added per warp, no group barrier between blocks. Same epilogue.
//
// Shapes: T = 1; D = Cols of every matrix (model dim); Rows_m: q H*Dh, k/v Hkv*Dh, o D, router E; V, F, G, K unused.
// y_m must not overlap x (other groups still read x while a group writes y).
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Decode;

/// <summary>decode/linear's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("decode/linear")]
public enum DecodeLinearVersion
{
    /// <summary>Warp per two rows, x staged in padded shared memory, up to three matrices per launch.</summary>
    V1 = 1,

    /// <summary>V1's work in persistent groups: x staged once per group, 8 loads in flight per lane (packed: pipelined), per-warp totals.</summary>
    V2 = 2,
}

/// <summary>One matrix of a decode/linear launch, the view its rows go to: y [W.Rows], and an optional bias [W.Rows]
/// added before the launch's clip (F32/F16/BF16 through <see cref="NormWeights.Of(F32Weights)"/>; None: no bias).</summary>
public readonly struct DecodeTarget<TU>(TU w, ArrayView<float> y, NormWeights bias = default)
    where TU : struct, IRowUnits
{
    public readonly TU W = w;
    public readonly ArrayView<float> Y = y;
    public readonly NormWeights Bias = bias;
}

/// <summary>The kernel parameter: up to three targets and the groups each one's rows take (Groups2 is the rest).</summary>
public readonly struct DecodeTargets<TU>(DecodeTarget<TU> t0, DecodeTarget<TU> t1, DecodeTarget<TU> t2, int groups0, int groups1)
    where TU : struct, IRowUnits
{
    public readonly TU W0 = t0.W;
    public readonly TU W1 = t1.W;
    public readonly TU W2 = t2.W;
    public readonly ArrayView<float> Y0 = t0.Y;
    public readonly ArrayView<float> Y1 = t1.Y;
    public readonly ArrayView<float> Y2 = t2.Y;
    public readonly NormWeights Bias0 = t0.Bias;
    public readonly NormWeights Bias1 = t1.Bias;
    public readonly NormWeights Bias2 = t2.Bias;
    public readonly int Groups0 = groups0;
    public readonly int Groups1 = groups1;
}

public static class DecodeLinearKernels
{
    [KernelInfo(DecodeLinearVersion.V1, "grid sum of ceil(Rows_m/16) over m <= 3, group 256 (8 warps x 2 rows)",
        Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["t.W0.Data:16", "t.W1.Data:16", "t.W2.Data:16"],
        Summary = "T = 1 GEMV over up to 3 matrices, optional rmsnorm prologue and bias/clip epilogue, x staged in padded shared memory, 2 rows per warp, 16-byte units")]
    public static void LinearV1<TU>(DecodeTargets<TU> t, ArrayView<float> x, NormWeights g, float eps, int accumulate, float clip)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        int group = Grid.IdxX;
        // The branch is uniform per group; each arm reads one matrix, so each weight load has one origin.
        if (group < t.Groups0)
            Rows(t.W0, t.Y0, t.Bias0, group, x, g, eps, accumulate, clip, xs, slots);
        else if (group < t.Groups0 + t.Groups1)
            Rows(t.W1, t.Y1, t.Bias1, group - t.Groups0, x, g, eps, accumulate, clip, xs, slots);
        else
            Rows(t.W2, t.Y2, t.Bias2, group - t.Groups0 - t.Groups1, x, g, eps, accumulate, clip, xs, slots);
    }

    [KernelInfo(DecodeLinearVersion.V2, "grid min(blocks, SMs x resident groups), group 256 (8 warps x 2 rows), blocks of 16 rows over m <= 3",
        Decode = DecodeUse.Weights, BlockSize = DecodeStaging.GroupSize, WideViews = ["t.W0.Data:16", "t.W1.Data:16", "t.W2.Data:16"],
        Summary = "T = 1 GEMV over up to 3 matrices in persistent groups: norm and staging once per group, 8 loads in flight per lane (packed: pipelined), per-warp totals")]
    public static void LinearV2<TU>(DecodeTargets<TU> t, ArrayView<float> x, NormWeights g, float eps, int accumulate, float clip, int blocks)
        where TU : struct, IRowUnits
    {
        var xs = SharedMemory.Allocate<float>(DecodeStaging.TileSlots);
        var slots = SharedMemory.Allocate<float>(BlockReduce.MaxWarps);
        var red = SharedMemory.Allocate<float>(DecodeStaging.RedSlots);
        // The matrices share x and their column count: matrix 0's reader stages it for all three.
        float scale = DecodePersistent.Prologue(t.W0, x, g, eps, xs, slots);
        for (int b = Grid.IdxX; b < blocks; b += Grid.DimX)
        {
            // Uniform per group: each arm reads one matrix, so each weight load has one origin.
            if (b < t.Groups0)
                RowsV2(t.W0, t.Y0, t.Bias0, b, x, g, scale, accumulate, clip, xs, red);
            else if (b < t.Groups0 + t.Groups1)
                RowsV2(t.W1, t.Y1, t.Bias1, b - t.Groups0, x, g, scale, accumulate, clip, xs, red);
            else
                RowsV2(t.W2, t.Y2, t.Bias2, b - t.Groups0 - t.Groups1, x, g, scale, accumulate, clip, xs, red);
        }
    }

    private static void RowsV2<TU>(TU w, ArrayView<float> y, NormWeights bias, int block, ArrayView<float> x, NormWeights g, float scale,
        int accumulate, float clip, ArrayView<float> xs, ArrayView<float> red)
        where TU : struct, IRowUnits
    {
        int rows = w.Rows;
        int r0 = block * DecodeStaging.RowsPerGroup + Warp.WarpIdx * DecodeStaging.RowsPerWarp;
        bool live = r0 < rows;
        int r1 = live ? IntrinsicMath.Min(r0 + 1, rows - 1) : 0;
        var p = DecodeStaging.RowTotals(DecodePersistent.Dot(w, w.Row(live ? r0 : 0), w, w.Row(r1), live, x, g, scale, xs), red);
        Store(y, bias, rows, r0, live, p, accumulate, clip);
    }

    private static void Rows<TU>(TU w, ArrayView<float> y, NormWeights bias, int group, ArrayView<float> x, NormWeights g, float eps,
        int accumulate, float clip, ArrayView<float> xs, ArrayView<float> slots)
        where TU : struct, IRowUnits
    {
        int rows = w.Rows, cols = w.Cols;
        int r0 = group * DecodeStaging.RowsPerGroup + Warp.WarpIdx * DecodeStaging.RowsPerWarp;
        bool live = r0 < rows;
        // An odd last row: the warp's second stream rereads it and drops the result.
        int r1 = live ? IntrinsicMath.Min(r0 + 1, rows - 1) : 0;
        float scale = g.Kind != NormWeights.KindNone ? DecodeStaging.NormScale(x, cols, eps, slots) : 1f;
        var p = DecodeStaging.RowTotals(DecodeStaging.DotRows(w, w.Row(live ? r0 : 0), w, w.Row(r1), live, x, cols, g, scale, xs), xs);
        Store(y, bias, rows, r0, live, p, accumulate, clip);
    }

    // Lanes 0 and 1 write the warp's rows r0 and r0 + 1: bias, clip, then store or accumulate.
    private static void Store(ArrayView<float> y, NormWeights bias, int rows, int r0, bool live, DotPair p, int accumulate, float clip)
    {
        int lane = Warp.LaneIdx;
        if (live && lane < 2 && r0 + lane < rows)
        {
            int r = r0 + lane;
            float v = lane == 0 ? p.A : p.B;
            if (bias.Kind != NormWeights.KindNone)
                v += bias.Get(r);
            v = BiasClipKernel.Clip(v, clip);
            y[r] = accumulate != 0 ? y[r] + v : v;
        }
    }
}

/// <summary>Launcher for one reader type: <c>DecodeLinearKernel.Create&lt;BF16Units&gt;(accelerator)</c>.</summary>
public static class DecodeLinearKernel
{
    public static DecodeLinearKernel<TU> Create<TU>(Accelerator accelerator)
        where TU : struct, IRowUnits => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));
}

/// <summary>decode/linear V1 and V2 for reader TU (RowUnits.cs): y_m (+)= (norm ? rmsnorm(x) * g : x) . W_m^T, m &lt; 3, one launch.</summary>
public sealed class DecodeLinearKernel<TU>
    where TU : struct, IRowUnits
{
    private const string Name = "DecodeLinear";

    private readonly Accelerator _accelerator;
    private Action<AcceleratorStream, KernelConfig, DecodeTargets<TU>, ArrayView<float>, NormWeights, float, int, float>? _v1;
    private Action<AcceleratorStream, KernelConfig, DecodeTargets<TU>, ArrayView<float>, NormWeights, float, int, float, int>? _v2;
    private int _v2Resident;

    internal DecodeLinearKernel(Accelerator accelerator) => _accelerator = accelerator;

    /// <summary>V2's grid limit on this device: multiprocessors x the groups of V2 one holds at once (loads V2).</summary>
    public int PersistentGroups
    {
        get
        {
            LoadV2();
            return _accelerator.NumMultiprocessors * _v2Resident;
        }
    }

    /// <summary>
    /// y_m [Rows_m] = clamp(xs . W_m^T + bias_m, -clip, clip) for each given target (accumulate: y_m += that), xs =
    /// rmsnorm(x) * norm with eps when norm is not <see cref="NormWeights.None"/>, else x. x [D], D = Cols of every
    /// matrix; norm [D]; bias_m [Rows_m] when the target has one; clip &gt; 0, +inf (the default) for none. y_m must not
    /// overlap x. version: V2 (the default) or V1; maxGroups caps V2's grid (0: <see cref="PersistentGroups"/>).
    /// Throws ArgumentException (one line) on a bad shape, eps, clip, version or maxGroups.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> x, NormWeights norm, float eps,
        DecodeTarget<TU> t0, DecodeTarget<TU>? t1 = null, DecodeTarget<TU>? t2 = null, bool accumulate = false,
        float clip = float.PositiveInfinity, DecodeLinearVersion version = DecodeLinearVersion.V2, int maxGroups = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        BiasClipKernel.CheckClip(Name, clip);
        if (maxGroups < 0)
            throw new ArgumentException($"{Name}: maxGroups must be >= 0 (0: the device's resident groups), got {maxGroups}", nameof(maxGroups));
        int cols = t0.W.Cols;
        Check(t0, 0, cols);
        if (t1 is { } a)
            Check(a, 1, cols);
        if (t2 is { } b)
        {
            if (t1 is null)
                throw new ArgumentException($"{Name}: target 2 given without target 1", nameof(t2));
            Check(b, 2, cols);
        }

        DecodeStaging.CheckInput(Name, x, norm, eps, cols);
        DecodeStaging.RequireDisjoint(Name, "x", x.SubView(0, cols), "output 0", t0.Y.SubView(0, t0.W.Rows));
        if (t1 is { } y1)
            DecodeStaging.RequireDisjoint(Name, "x", x.SubView(0, cols), "output 1", y1.Y.SubView(0, y1.W.Rows));
        if (t2 is { } y2)
            DecodeStaging.RequireDisjoint(Name, "x", x.SubView(0, cols), "output 2", y2.Y.SubView(0, y2.W.Rows));

        int g0 = Groups(t0), g1 = t1 is { } c ? Groups(c) : 0, g2 = t2 is { } d ? Groups(d) : 0;
        long total = (long)g0 + g1 + g2;
        if (total > int.MaxValue)
            throw new ArgumentException($"{Name}: {total} groups are too many for one launch");
        // Absent targets repeat t0 with no groups: the kernel never reaches them.
        var targets = new DecodeTargets<TU>(t0, t1 ?? t0, t2 ?? t0, g0, g1);
        switch (version)
        {
            case DecodeLinearVersion.V1:
                _v1 ??= _accelerator.LoadCounted<DecodeTargets<TU>, ArrayView<float>, NormWeights, float, int, float>(DecodeLinearKernels.LinearV1);
                _v1(stream, new KernelConfig((int)total, DecodeStaging.GroupSize), targets, x, norm, eps, accumulate ? 1 : 0, clip);
                break;
            case DecodeLinearVersion.V2:
                LoadV2();
                int grid = DecodePersistent.Groups(total, maxGroups > 0 ? maxGroups : PersistentGroups);
                _v2!(stream, new KernelConfig(grid, DecodeStaging.GroupSize), targets, x, norm, eps, accumulate ? 1 : 0, clip, (int)total);
                break;
            default:
                throw new ArgumentException($"{Name}: unknown version {version}", nameof(version));
        }
    }

    private void LoadV2() =>
        _v2 ??= _accelerator.LoadCounted<DecodeTargets<TU>, ArrayView<float>, NormWeights, float, int, float, int>(
            DecodeLinearKernels.LinearV2, DecodeStaging.GroupSize, out _v2Resident);

    private static int Groups(DecodeTarget<TU> t) => (t.W.Rows + DecodeStaging.RowsPerGroup - 1) / DecodeStaging.RowsPerGroup;

    private static void Check(DecodeTarget<TU> t, int m, int cols)
    {
        if (t.W.Rows < 1 || t.W.Cols < 1)
            throw new ArgumentException($"{Name}: matrix {m} has shape [{t.W.Rows}, {t.W.Cols}]");
        if (t.W.Cols != cols)
            throw new ArgumentException($"{Name}: matrix {m} has {t.W.Cols} columns, matrix 0 has {cols} (one x for all)");
        if (t.Y.Length < t.W.Rows)
            throw new ArgumentException($"{Name}: output {m} has {t.Y.Length} elements, needs Rows = {t.W.Rows}");
        if (!t.Bias.IsNone && t.Bias.Length < t.W.Rows)
            throw new ArgumentException($"{Name}: bias {m} has {t.Bias.Length} elements, needs Rows = {t.W.Rows}");
    }
}
