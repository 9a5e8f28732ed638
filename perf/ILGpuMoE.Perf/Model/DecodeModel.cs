// The decode model: a predicted batch-1 decode step, kernel by kernel, for the fused T = 1 path the runtime launches on
// CUDA (InferenceSession's decode step: DecodePlan.cs, 6 launches per layer for Mixtral). `ilgpumoe-bench predict` prints it;
// perf/NOTES.md ("Decode at the roofline") states the assumptions, the H200 measurements the constants were fitted to,
// and how far each prediction was from them.
//
// Per launch, the time is the largest of three bounds, plus a launch cost:
//   bandwidth  bytes / (Efficiency * CopyGBps)        every weight byte read once, 128-bit loads, a full grid
//   issue      bytes / issue rate                     the SASS inner loop's instructions per 16-byte unit of weights
//                                                     at 4 warp instructions per clock per SM: a warp moves 512 bytes
//                                                     per unit step, so an SM moves 4 * 512 / n bytes a clock
//   groups     waves * (GroupOverheadUs + bytes per group / GroupStreamKBPerUs)
//                                                     waves = groups / (SMs * groups resident per SM), at least 1: each
//                                                     group pays its prologue (x staged, the norm reduced) and then
//                                                     streams its rows at what its warps keep in flight
//   small kernels (rope-append, gating, the embedding) take SmallKernelUs; attention decode AttentionFixedUs plus
//   its K/V bytes at AttentionGBps.
//   + LaunchUs per launch (ramp-up, drain, the gap to the next kernel: the floor the bench's single-launch timings
//   show beyond a kernel's work, 7-9 us for kernels that move nothing), and HostUs per step (the token and position
//   uploads, the logits download, the synchronisation).
// The first version of this model (before any decode kernel ran) had no group bound and 2 us launches; it predicted
// 131 tok/s for Mixtral BF16. The H200 run of 2026-12-04 measured the kernels 1.4-7x slower than their bandwidth
// bound, and the group bound with GroupOverheadUs and GroupStreamKBPerUs fitted to those six cases reproduces them
// within 15 %, and the 1-layer end-to-end decode within 5 %: the constants below are that fit (decode kernels V1).
//
// The V2 kernels (kernels/ILGpuMoE.Kernels/Decode/DecodePersistent.cs) change the group bound's terms, each from a
// reading of V1's SASS rather than a new fit (no V2 kernel has run on a GPU yet):
//   - persistent grids: groups = min(blocks, SMs x resident groups), one wave; down: chunks x K*C slices sized to fill
//     the device once (the launcher's split), plus CombineUs for the last group's pass over the partials;
//   - the prologue: V1's 6.8 us is 32 dependent L2 round trips (its norm and staging loops load one value per
//     iteration), about 0.21 us each; V2 loads x and g at once: V2PrologueUs (one trip, the block reduction, the
//     staging barrier and a drain step), an assumption to measure;
//   - the stream rate: the fit says a group's 16 KB in flight come back every 16 / 6.5 = 2.46 us; V2's f32/16-bit
//     readers keep 8 loads in flight per lane (32 KB per group), the packed ones too since they load a step ahead, on
//     rows of two steps or more (DecodeScheme.LoadsPerLane; 4 loads, 16 KB, on shorter rows), at the same 2.46 us;
//   - the SASS of V2: instructions per unit and groups resident per SM per scheme (DecodeScheme's V2 fields).
// The V3 step (the runtime's default since 2026-12-05) launches V2's weight kernels and fuses two pairs of launches:
//   - decode/router (kernels/ILGpuMoE.Kernels/Decode/DecodeRouterKernel.cs): the router split over D across about one
//     group per SM (chunks of 32 units x 16-row blocks), the last group's combine (CombineUs) and its routing with
//     gating V2's warp code (GateUs, assumed): the router and moe/gating in one launch;
//   - decode/qkv-rope (DecodeQkvRopeKernel.cs), for families without a q/k norm (Qwen3's per-head norm keeps
//     attention/rope-append): the rotation and the KV append in the q/k/v launch's epilogue (RopeUs, assumed).
// A captured CUDA graph replays the step with GraphLaunchUs per launch (2 us, the first version's launch cost: an
// assumption until a run measures replays).
// Glossary: D model dim, F expert hidden dim, E experts, K per token, H / Hkv heads, Dh head dim, V vocab.
using System.Globalization;

namespace ILGpuMoE.Perf.Model;

/// <summary>A model's shape for the decode model (the real checkpoints' numbers live in <see cref="DecodeModel.Shapes"/>).</summary>
/// <summary>A model's shape for the decode model; HeadQkNorm: a per-head q/k norm before the rotation (Qwen3), which
/// keeps RoPE and the KV append in their own launch.</summary>
public sealed record DecodeShape(string Name, int Layers, int D, int Heads, int KvHeads, int HeadDim, int Experts, int TopK, int F, int Vocab,
    bool HeadQkNorm = false);

/// <summary>
/// A weight scheme: bytes per weight (scales included), the SASS inner loop's instructions per 16-byte unit, and the
/// groups of 256 threads resident per SM at the decode kernels' registers (ptxas -v, sm_90), for V1 and for V2 (the
/// fewest of decode/linear's and decode/experts' kernels), and V2's 16-byte loads in flight per lane (8 or 4).
/// </summary>
public sealed record DecodeScheme(string Name, double BytesPerWeight, double InstructionsPerUnit, int GroupsPerSm,
    double InstructionsPerUnitV2, int GroupsPerSmV2, int LoadsPerLaneV2, int UnitValues)
{
    /// <summary>
    /// V2's 16-byte loads in flight per lane on rows of <paramref name="cols"/> columns. The packed readers (more than 8
    /// values a unit) load a step ahead (DecodePersistent.PackedUnits: a step is 2 units of each of the warp's 2 rows per
    /// lane, 64 units of a row per warp), so they keep LoadsPerLaneV2 in flight only on rows of 2 steps or more; a row of
    /// one step (Qwen3-30B-A3B's q4 up-gate at D = 2048, its down at F = 768) has no next step to load: 4.
    /// </summary>
    public int LoadsPerLane(long cols)
    {
        if (UnitValues <= 8)
            return LoadsPerLaneV2;
        long units = (cols + UnitValues - 1) / UnitValues;
        return units > 64 ? LoadsPerLaneV2 : 4;
    }
}

/// <summary>Which decode kernels the step launches: V1 (what the H200 runs measured), V2 (persistent groups, 8 launches
/// per layer) or V3 (V2 with decode/router and decode/qkv-rope: 6 launches per layer, 7 with a per-head q/k norm; the
/// runtime's default).</summary>
public enum DecodeKernels
{
    V1 = 1,
    V2 = 2,
    V3 = 3,
}

/// <summary>The machine and the kernels' constants (defaults: the H200 runs of 2026-12-04, see perf/NOTES.md).</summary>
public sealed record DecodeMachine
{
    /// <summary>Measured device-to-device copy rate (GB/s), the ceiling every figure is compared with.</summary>
    public double CopyGBps { get; init; } = 4227;

    /// <summary>Share of the copy rate a streaming GEMV with 128-bit loads and a full grid reaches (F32 GEMV-V2 on
    /// lm_head and the F32 grouped GEMM measured 0.91-1.0 of the copy rate).</summary>
    public double Efficiency { get; init; } = 0.9;

    public int Sms { get; init; } = 132;

    public double ClockGHz { get; init; } = 1.98;

    /// <summary>Fixed time of one group of 256 before and after its rows (fitted: 6.8 us).</summary>
    public double GroupOverheadUs { get; init; } = 6.8;

    /// <summary>Bytes one group streams per microsecond once running (fitted: 6.5 KB/us, i.e. its 16 KB in flight
    /// come back every ~2.5 us).</summary>
    public double GroupStreamKBPerUs { get; init; } = 6.5;

    /// <summary>A kernel that moves almost nothing (rope-append, gating, the embedding), without its launch.</summary>
    public double SmallKernelUs { get; init; } = 3;

    /// <summary>Per launch: ramp-up, drain, the gap to the next kernel (the floor of the bench's single-launch figures).</summary>
    public double LaunchUs { get; init; } = 6;

    /// <summary>Per step: token and position uploads, the logits download, the synchronisation.</summary>
    public double HostUs { get; init; } = 80;

    /// <summary>V2's group prologue: x and g loaded at once (one L2 trip), the norm's reduction, the staging barrier and
    /// the drain of the last step (assumed, not yet measured; V1's 32 dependent trips fitted 6.8 us).</summary>
    public double V2PrologueUs { get; init; } = 1.5;

    /// <summary>V2 down's combine: the fence, the chunk counter's atomic and the last group's read of the partials.</summary>
    public double CombineUs { get; init; } = 1.0;

    /// <summary>decode/router's routing in its last group: one warp's K arg-max passes over E scores (gating V2's code,
    /// a few hundred instructions) after the combine (assumed).</summary>
    public double GateUs { get; init; } = 1.0;

    /// <summary>decode/qkv-rope's epilogue: the position read and the rotation table's row, one dependent L2 trip after
    /// the dots (assumed).</summary>
    public double RopeUs { get; init; } = 0.5;

    /// <summary>Per launch when a CUDA graph replays the step (assumed: the first version's 2 us).</summary>
    public double GraphLaunchUs { get; init; } = 2;

    /// <summary>V1's 16 KB in flight per group (8 warps x 32 lanes x 4 loads of 16 bytes) return every this long.</summary>
    public double GroupStepUs => 16 / GroupStreamKBPerUs;

    /// <summary>Attention decode (v3-decode): fixed part and the rate of its K/V reads (fitted at S = 512 and 4096).</summary>
    public double AttentionFixedUs { get; init; } = 4;

    public double AttentionGBps { get; init; } = 2200;
}

/// <summary>One launch of the step: what it moves and its predicted time.</summary>
public sealed record DecodeLaunch(string Kernel, double Bytes, int Groups, string Bound, double Microseconds);

/// <summary>A predicted step: the launches of one layer, the ones outside the layers, the totals.</summary>
public sealed record DecodePrediction(DecodeShape Shape, DecodeScheme Scheme, DecodeKernels Kernels, bool Graph, int Context, IReadOnlyList<DecodeLaunch> Layer,
    IReadOnlyList<DecodeLaunch> Outside, double StepMicroseconds, double WeightBytes)
{
    public double TokensPerSecond => 1e6 / StepMicroseconds;

    public int LaunchesPerLayer => Layer.Count;

    /// <summary>Tokens/s if every weight byte streamed at the copy rate and nothing else cost time.</summary>
    public double RooflineTokensPerSecond(DecodeMachine m) => m.CopyGBps * 1e9 / WeightBytes;
}

public static class DecodeModel
{
    public static readonly DecodeShape Mixtral8x7B = new("Mixtral-8x7B", 32, 4096, 32, 8, 128, 8, 2, 14336, 32000);

    public static readonly DecodeShape Qwen3A3B = new("Qwen3-30B-A3B", 48, 2048, 32, 4, 128, 128, 8, 768, 151936, HeadQkNorm: true);

    public static readonly IReadOnlyList<DecodeShape> Shapes = [Mixtral8x7B, Qwen3A3B];

    // Instructions per 16-byte unit: the hot loop of decode/linear's instance per reader in the SASS report
    // (`ilgpumoe ptx --sass`: 113, 324, 609 and 695 instructions per 4 units); groups per SM from its occupancy
    // (bf16 40 of 64 warps, q8 32-40, q4 16, fp8 24-32). V2, the largest inner unit loop of its three kernels: bf16 220
    // per 8 units; since the packed readers load a step ahead (8 loads per lane), q8 79, q4 157 and fp8 150 per unit;
    // occupancy, the fewest of the three: bf16 32 of 64 warps (53-54 registers), q8 24 (64-67), q4 16 (96), fp8 24 (68-80).
    public static readonly DecodeScheme Bf16 = new("bf16", 2, 113 / 4.0, 5, 220 / 8.0, 4, 8, 8);
    public static readonly DecodeScheme Int8 = new("int8", 1 + 4.0 / 4096, 324 / 4.0, 4, 79, 3, 8, 16);
    public static readonly DecodeScheme Fp8 = new("fp8-block128", 1 + 4.0 / (128 * 128), 695 / 4.0, 3, 150, 3, 8, 16);
    public static readonly DecodeScheme Int4 = new("int4-g128", 0.5 + 2.0 / 128 + 1.0 / 128, 609 / 4.0, 2, 157, 2, 8, 32);

    public static readonly IReadOnlyList<DecodeScheme> Schemes = [Bf16, Int8, Int4, Fp8];

    /// <summary>
    /// The step at <paramref name="context"/> cached positions, linear weights (attention q/k/v/o, experts) in
    /// <paramref name="scheme"/>, router, embedding and lm_head in BF16, KV cache F32; the decode kernels of
    /// <paramref name="kernels"/>, launched one by one or replayed from a CUDA graph.
    /// </summary>
    public static DecodePrediction Predict(DecodeShape s, DecodeScheme scheme, DecodeMachine m, int context,
        DecodeKernels kernels = DecodeKernels.V3, bool graph = false)
    {
        ArgumentNullException.ThrowIfNull(s);
        ArgumentNullException.ThrowIfNull(scheme);
        ArgumentNullException.ThrowIfNull(m);
        ArgumentOutOfRangeException.ThrowIfLessThan(context, 1);
        if (kernels is not (DecodeKernels.V1 or DecodeKernels.V2 or DecodeKernels.V3))
            throw new ArgumentOutOfRangeException(nameof(kernels), kernels, "DecodeModel: unknown decode kernels");
        bool v2 = kernels >= DecodeKernels.V2, v3 = kernels == DecodeKernels.V3;
        double w = scheme.BytesPerWeight;
        double launchUs = graph ? m.GraphLaunchUs : m.LaunchUs;
        long qkvRows = (long)(s.Heads + 2 * s.KvHeads) * s.HeadDim;
        const int RowsPerBlock = 16, KeysPerSplit = 64;

        // blocks: work blocks of 16 rows (up-gate: 8 f); V1 launches one group per block, V2 at most a resident grid.
        // bytes: what the launch streams. extraUs: a tail after the stream (V2 down's combine, V3's routing and rotation
        // epilogues), added to whichever bound wins.
        // cols: the row length a lane's unit loop walks (down: one column tile of F).
        DecodeLaunch Weights(string kernel, double bytes, long blocks, DecodeScheme sc, long cols, long fixedGroups = 0, double extraUs = 0)
        {
            int resident = v2 ? sc.GroupsPerSmV2 : sc.GroupsPerSm;
            long capacity = (long)m.Sms * resident;
            long groups = fixedGroups > 0 ? fixedGroups : v2 ? Math.Min(blocks, capacity) : blocks;
            double waves = Math.Max(1, groups / (double)capacity);
            double ipu = v2 ? sc.InstructionsPerUnitV2 : sc.InstructionsPerUnit;
            double overhead = v2 ? m.V2PrologueUs : m.GroupOverheadUs;
            double inFlightKB = v2 ? 16.0 * sc.LoadsPerLane(cols) / 4 : 16.0;
            double streamKBPerUs = inFlightKB / m.GroupStepUs;
            var bounds = new (string, double)[]
            {
                ("bandwidth", bytes / (m.Efficiency * m.CopyGBps * 1e3)),
                ("issue", bytes / (4.0 * 512 / ipu * m.ClockGHz * m.Sms * 1e3)),
                ("groups", waves * (overhead + bytes / groups / (streamKBPerUs * 1e3))),
            };
            var (bound, us) = bounds.MaxBy(b => b.Item2);
            return new DecodeLaunch(kernel, bytes, (int)Math.Min(int.MaxValue, groups), bound, us + extraUs + launchUs);
        }

        DecodeLaunch Small(string kernel) => new(kernel, 0, 0, "small", m.SmallKernelUs + launchUs);

        static long Ceil(long a, long b) => (a + b - 1) / b;

        // V2 down: K * C slices (C column tiles of 4096 per pair) x chunks of a multiple of 32 rows, about a resident grid.
        DecodeLaunch Down(double bytes)
        {
            if (!v2)
                return Weights("experts down (+ combine)", bytes, Ceil(s.D, RowsPerBlock), scheme, s.F);
            long slices = (long)s.TopK * Ceil(s.F, 4096);
            long target = (long)m.Sms * scheme.GroupsPerSmV2;
            long want = Math.Clamp(target / slices, 1, Ceil(s.D, 32));
            long chunkRows = Ceil(Ceil(s.D, want), 32) * 32;
            long chunks = Ceil(s.D, chunkRows);
            return Weights("experts down (+ combine)", bytes, 0, scheme, Math.Min(s.F, 4096), chunks * slices, m.CombineUs);
        }

        // V3's router (decode/router): 16-row blocks x column chunks of 32 units (BF16: 8 values a unit), about one
        // group per SM; the last group combines and routes.
        DecodeLaunch Router()
        {
            double bytes = (double)s.Experts * s.D * Bf16.BytesPerWeight;
            long blocks = Ceil(s.Experts, RowsPerBlock);
            if (!v3)
                return Weights("rmsnorm + router", bytes, blocks, Bf16, s.D);
            long chunks = Math.Clamp(m.Sms / blocks, 1, Ceil(Ceil(s.D, 8), 32));
            return Weights("rmsnorm + router + gating", bytes, 0, Bf16, s.D, chunks * blocks, m.CombineUs + m.GateUs);
        }

        double kvBytes = 2.0 * s.KvHeads * context * s.HeadDim * 4;
        bool ropeInQkv = v3 && !s.HeadQkNorm;
        var layer = new List<DecodeLaunch>();
        if (ropeInQkv)
        {
            layer.Add(Weights("rmsnorm + q/k/v + rope + kv append", qkvRows * s.D * w, Ceil(qkvRows, RowsPerBlock), scheme, s.D, extraUs: m.RopeUs));
        }
        else
        {
            layer.Add(Weights("rmsnorm + q/k/v", qkvRows * s.D * w, Ceil(qkvRows, RowsPerBlock), scheme, s.D));
            layer.Add(Small("rope + kv append"));
        }

        layer.Add(new("attention decode", kvBytes, s.KvHeads * ((context + KeysPerSplit - 1) / KeysPerSplit), "attention",
            m.AttentionFixedUs + kvBytes / (m.AttentionGBps * 1e3) + launchUs));
        layer.Add(Weights("o (+ residual)", (double)s.Heads * s.HeadDim * s.D * w, Ceil(s.D, RowsPerBlock), scheme, (long)s.Heads * s.HeadDim));
        layer.Add(Router());
        if (!v3)
            layer.Add(Small("gating"));
        // Blocks of 8 f (the gate and up row of each): K * F / 8.
        layer.Add(Weights("experts up-gate", 2.0 * s.TopK * s.F * s.D * w, s.TopK * Ceil(s.F, 8), scheme, s.D));
        layer.Add(Down((double)s.TopK * s.D * s.F * w));
        var outside = new List<DecodeLaunch>
        {
            Small("embedding"),
            Weights("rmsnorm + lm_head", (double)s.Vocab * s.D * Bf16.BytesPerWeight, Ceil(s.Vocab, RowsPerBlock), Bf16, s.D),
        };
        double step = layer.Sum(l => l.Microseconds) * s.Layers + outside.Sum(l => l.Microseconds) + m.HostUs;
        double weightBytes = layer.Where(l => l.Kernel != "attention decode").Sum(l => l.Bytes) * s.Layers + outside.Sum(l => l.Bytes);
        return new DecodePrediction(s, scheme, kernels, graph, context, layer, outside, step, weightBytes);
    }

    /// <summary>The table `ilgpumoe-bench predict` prints: every shape x scheme x kernels, then V2's steps launch by launch.</summary>
    public static string Report(DecodeMachine m, int context)
    {
        var c = CultureInfo.InvariantCulture;
        var s = new System.Text.StringBuilder();
        s.AppendLine(c, $"decode model: copy {m.CopyGBps:F0} GB/s x {m.Efficiency:F2}, {m.Sms} SMs at {m.ClockGHz:F2} GHz; V1 group {m.GroupOverheadUs:F1} us + " +
                        $"{m.GroupStreamKBPerUs:F1} KB/us per 16 KB in flight; V2 prologue {m.V2PrologueUs:F1} us, combine {m.CombineUs:F1} us; " +
                        $"V3 routing {m.GateUs:F1} us, rotation {m.RopeUs:F1} us; launch {m.LaunchUs:F1} us (graph {m.GraphLaunchUs:F1} us), " +
                        $"host {m.HostUs:F0} us per step, context {context}");
        s.AppendLine("| model | scheme | GB per token | roofline tok/s | V1 tok/s | V2 tok/s | V3 tok/s | V3 + graph tok/s | V3 + graph % of roofline | launches per layer (V2 / V3) |");
        s.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var shape in Shapes)
        {
            foreach (var scheme in Schemes)
            {
                var v1 = Predict(shape, scheme, m, context, DecodeKernels.V1);
                var v2 = Predict(shape, scheme, m, context, DecodeKernels.V2);
                var p = Predict(shape, scheme, m, context);
                var g = Predict(shape, scheme, m, context, graph: true);
                s.AppendLine(c, $"| {shape.Name} | {scheme.Name} | {p.WeightBytes / 1e9:F2} | {p.RooflineTokensPerSecond(m):F0} | {v1.TokensPerSecond:F0} | " +
                                $"{v2.TokensPerSecond:F0} | {p.TokensPerSecond:F0} | {g.TokensPerSecond:F0} | {100 * g.TokensPerSecond / g.RooflineTokensPerSecond(m):F0} | " +
                                $"{v2.LaunchesPerLayer} / {p.LaunchesPerLayer} |");
            }
        }

        foreach (var shape in Shapes)
        {
            foreach (var scheme in shape == Mixtral8x7B ? Schemes : [Bf16, Int4])
            {
                var p = Predict(shape, scheme, m, context);
                s.AppendLine();
                s.AppendLine(c, $"{shape.Name} {scheme.Name}, V3, one layer (x {shape.Layers}) and the launches outside the layers:");
                s.AppendLine("| launch | MB | groups | bound | us |");
                s.AppendLine("|---|---:|---:|---|---:|");
                foreach (var l in p.Layer.Concat(p.Outside))
                    s.AppendLine(c, $"| {l.Kernel} | {l.Bytes / 1e6:F2} | {l.Groups} | {l.Bound} | {l.Microseconds:F1} |");
            }
        }

        return s.ToString();
    }
}
