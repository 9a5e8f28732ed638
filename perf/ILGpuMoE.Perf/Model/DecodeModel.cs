// The decode model: a predicted batch-1 decode step, kernel by kernel, for the fused T = 1 path the runtime launches on
// CUDA (InferenceSession's decode step: 8 launches per layer). `ilgpumoe-bench predict` prints it; perf/NOTES.md
// ("Decode model") states the assumptions and records the predictions next to the GPU runs that check them.
//
// Per launch, the time is the largest of four bounds, plus a fixed cost:
//   bandwidth  bytes / (Efficiency * CopyGBps)       every weight byte read once, 128-bit loads, a full grid
//   issue      bytes / issue rate                    the inner loop's instructions per 16-byte unit of weights
//                                                    (SASS) at 4 warp instructions per clock per SM: a warp moves
//                                                    512 bytes per unit step, so an SM moves 4 * 512 / n bytes a clock
//   latency    Little's law: bytes / (resident groups * InFlightPerGroup / LatencyNs), resident groups = min(groups,
//                                                    SMs * GroupsPerSm): a launch with few groups (the router, a
//                                                    thin matrix) cannot keep enough bytes in flight
//   floor      SmallKernelUs                         a kernel that moves almost nothing (rope-append, gating)
//   + LaunchUs (plain stream) or GraphLaunchUs (replayed from a CUDA graph): ramp-up, drain and the gap between two
//     dependent kernels.
// Glossary: D model dim, F expert hidden dim, E experts, K per token, H / Hkv heads, Dh head dim, V vocab.
using System.Globalization;

namespace ILGpuMoE.Perf.Model;

/// <summary>A model's shape for the decode model (the real checkpoints' numbers live in <see cref="DecodeModel.Shapes"/>).</summary>
public sealed record DecodeShape(string Name, int Layers, int D, int Heads, int KvHeads, int HeadDim, int Experts, int TopK, int F, int Vocab);

/// <summary>Bytes per weight of a scheme (scales included) and its inner loop's instructions per 16-byte unit.</summary>
public sealed record DecodeScheme(string Name, double BytesPerWeight, int InstructionsPerUnit);

/// <summary>The machine and the kernels' constants (defaults: the H200 runs of 2026-12-04, see perf/NOTES.md).</summary>
public sealed record DecodeMachine
{
    /// <summary>Measured device-to-device copy rate (GB/s), the ceiling every figure is compared with.</summary>
    public double CopyGBps { get; init; } = 4200;

    /// <summary>Share of the copy rate a streaming GEMV with 128-bit loads and a full grid reaches (F32 GEMV-V2 on
    /// lm_head and the F32 grouped GEMV measured 0.91-1.0 of the copy rate).</summary>
    public double Efficiency { get; init; } = 0.9;

    public int Sms { get; init; } = 132;

    public double ClockGHz { get; init; } = 1.98;

    /// <summary>Loaded DRAM round trip (ns).</summary>
    public double LatencyNs { get; init; } = 800;

    /// <summary>Bytes one group keeps in flight: 8 warps x 2 rows x 2 units unrolled x 512 bytes.</summary>
    public double InFlightPerGroup { get; init; } = 16384;

    /// <summary>Groups of 256 threads resident per SM (registers and ~17 KB of shared memory each allow 4).</summary>
    public int GroupsPerSm { get; init; } = 4;

    public double SmallKernelUs { get; init; } = 2.5;

    public double LaunchUs { get; init; } = 2.0;

    public double GraphLaunchUs { get; init; } = 1.0;

    /// <summary>Share of the copy rate the attention decode reaches on the F32 KV cache.</summary>
    public double AttentionEfficiency { get; init; } = 0.6;
}

/// <summary>One launch of the step: what it moves and its predicted time.</summary>
public sealed record DecodeLaunch(string Kernel, double Bytes, int Groups, string Bound, double Microseconds);

/// <summary>A predicted step: the launches of one layer, the ones outside the layers, the totals.</summary>
public sealed record DecodePrediction(DecodeShape Shape, DecodeScheme Scheme, int Context, bool Graph, IReadOnlyList<DecodeLaunch> Layer,
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

    public static readonly DecodeShape Qwen3A3B = new("Qwen3-30B-A3B", 48, 2048, 32, 4, 128, 128, 8, 768, 151936);

    public static readonly IReadOnlyList<DecodeShape> Shapes = [Mixtral8x7B, Qwen3A3B];

    // Instructions per 16-byte unit: the inner loop of each reader counted per unit (decode, x from shared memory, FMA)
    // plus ~8 of loop and address overhead. Assumed from the readers' code; the SASS report (`ilgpumoe ptx --sass`)
    // gives the real inner-loop lengths to put here (perf/NOTES.md says which numbers came from where).
    public static readonly DecodeScheme Bf16 = new("bf16", 2, 8 * 3 + 8);
    public static readonly DecodeScheme Int8 = new("int8", 1 + 4.0 / 4096, 16 * 5 + 8);
    public static readonly DecodeScheme Fp8 = new("fp8-block128", 1 + 4.0 / (128 * 128), 16 * 8 + 8);
    public static readonly DecodeScheme Int4 = new("int4-g128", 0.5 + 2.0 / 128 + 1.0 / 128, 32 * 5 + 8);

    public static readonly IReadOnlyList<DecodeScheme> Schemes = [Bf16, Int8, Int4, Fp8];

    /// <summary>
    /// The step at <paramref name="context"/> cached positions, linear weights (attention q/k/v/o, experts) in
    /// <paramref name="scheme"/>, router, embedding and lm_head in BF16, KV cache F32.
    /// </summary>
    public static DecodePrediction Predict(DecodeShape s, DecodeScheme scheme, DecodeMachine m, int context, bool graph)
    {
        ArgumentNullException.ThrowIfNull(s);
        ArgumentNullException.ThrowIfNull(scheme);
        ArgumentNullException.ThrowIfNull(m);
        ArgumentOutOfRangeException.ThrowIfLessThan(context, 1);
        double launch = graph ? m.GraphLaunchUs : m.LaunchUs;
        double w = scheme.BytesPerWeight;
        long qkvRows = (long)(s.Heads + 2 * s.KvHeads) * s.HeadDim;
        const int RowsPerGroup = 16;
        int Groups(long rows) => (int)Math.Min(int.MaxValue, (rows + RowsPerGroup - 1) / RowsPerGroup);

        DecodeLaunch Weights(string kernel, double bytes, long rows, DecodeScheme sc)
        {
            int groups = Groups(rows);
            var bounds = new List<(string, double)>
            {
                ("bandwidth", bytes / (m.Efficiency * m.CopyGBps * 1e3)),
                ("issue", bytes / (4.0 * 512 / sc.InstructionsPerUnit * m.ClockGHz * m.Sms * 1e3)),
            };
            // Little's law: the resident groups each keep InFlightPerGroup bytes in flight per round trip.
            double resident = Math.Min(groups, (double)m.Sms * m.GroupsPerSm);
            bounds.Add(("latency", bytes / (resident * m.InFlightPerGroup / (m.LatencyNs * 1e-3))));

            var (bound, us) = bounds.MaxBy(b => b.Item2);
            return new DecodeLaunch(kernel, bytes, groups, bound, us + launch);
        }

        DecodeLaunch Small(string kernel) => new(kernel, 0, 0, "floor", m.SmallKernelUs + launch);

        double kvBytes = 2.0 * s.KvHeads * context * s.HeadDim * 4;
        double attnUs = Math.Max(kvBytes / (m.AttentionEfficiency * m.CopyGBps * 1e3), m.SmallKernelUs);
        var layer = new List<DecodeLaunch>
        {
            Weights("rmsnorm + q/k/v", qkvRows * s.D * w, qkvRows, scheme),
            Small("rope + kv append"),
            new("attention decode", kvBytes, s.KvHeads * ((context + 255) / 256), kvBytes / (m.AttentionEfficiency * m.CopyGBps * 1e3) >= m.SmallKernelUs ? "bandwidth" : "floor",
                attnUs + launch),
            Weights("o (+ residual)", (double)s.Heads * s.HeadDim * s.D * w, s.D, scheme),
            Weights("rmsnorm + router", (double)s.Experts * s.D * Bf16.BytesPerWeight, s.Experts, Bf16),
            Small("gating"),
            Weights("experts up-gate", 2.0 * s.TopK * s.F * s.D * w, 2L * s.TopK * s.F, scheme),
            Weights("experts down (+ combine)", (double)s.TopK * s.D * s.F * w, s.D, scheme),
        };
        var outside = new List<DecodeLaunch>
        {
            Small("embedding"),
            Weights("rmsnorm + lm_head", (double)s.Vocab * s.D * Bf16.BytesPerWeight, s.Vocab, Bf16),
        };
        double step = layer.Sum(l => l.Microseconds) * s.Layers + outside.Sum(l => l.Microseconds);
        double weightBytes = layer.Where(l => l.Kernel != "attention decode").Sum(l => l.Bytes) * s.Layers + outside.Sum(l => l.Bytes);
        return new DecodePrediction(s, scheme, context, graph, layer, outside, step, weightBytes);
    }

    /// <summary>The table `ilgpumoe-bench predict` prints: every shape x scheme, plain and graph, then one step in detail.</summary>
    public static string Report(DecodeMachine m, int context)
    {
        var c = CultureInfo.InvariantCulture;
        var s = new System.Text.StringBuilder();
        s.AppendLine(c, $"decode model: copy {m.CopyGBps:F0} GB/s x {m.Efficiency:F2}, {m.Sms} SMs at {m.ClockGHz:F2} GHz, latency {m.LatencyNs:F0} ns, " +
                        $"launch {m.LaunchUs:F1} us (graph {m.GraphLaunchUs:F1} us), context {context}");
        s.AppendLine("| model | scheme | GB per token | roofline tok/s | predicted tok/s | graph tok/s | % of roofline | launches per layer |");
        s.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|");
        foreach (var shape in Shapes)
        {
            foreach (var scheme in Schemes)
            {
                var plain = Predict(shape, scheme, m, context, graph: false);
                var g = Predict(shape, scheme, m, context, graph: true);
                s.AppendLine(c, $"| {shape.Name} | {scheme.Name} | {plain.WeightBytes / 1e9:F2} | {plain.RooflineTokensPerSecond(m):F0} | {plain.TokensPerSecond:F0} | " +
                                $"{g.TokensPerSecond:F0} | {100 * plain.TokensPerSecond / plain.RooflineTokensPerSecond(m):F0} | {plain.LaunchesPerLayer} |");
            }
        }

        foreach (var shape in Shapes)
        {
            foreach (var scheme in new[] { Bf16, Int4 })
            {
                var p = Predict(shape, scheme, m, context, graph: false);
                s.AppendLine();
                s.AppendLine(c, $"{shape.Name} {scheme.Name}, one layer (x {shape.Layers}) and the launches outside the layers:");
                s.AppendLine("| launch | MB | groups | bound | us |");
                s.AppendLine("|---|---:|---:|---|---:|");
                foreach (var l in p.Layer.Concat(p.Outside))
                    s.AppendLine(c, $"| {l.Kernel} | {l.Bytes / 1e6:F2} | {l.Groups} | {l.Bound} | {l.Microseconds:F1} |");
            }
        }

        return s.ToString();
    }
}
