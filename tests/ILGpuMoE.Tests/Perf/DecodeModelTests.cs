using ILGpuMoE.Perf.Model;

namespace ILGpuMoE.Tests.Perf;

/// <summary>The decode model's arithmetic on launches worked out by hand (perf/ILGpuMoE.Perf/Model/DecodeModel.cs), for the
/// V1 kernels (what the constants were fitted to), the V2 kernels (persistent groups) and the V3 step (V2 with
/// decode/router and decode/qkv-rope, the runtime's default).</summary>
public class DecodeModelTests
{
    private static readonly DecodeMachine H200 = new();

    private static DecodeLaunch Launch(DecodePrediction p, string startsWith) =>
        p.Layer.Concat(p.Outside).Single(l => l.Kernel.StartsWith(startsWith, StringComparison.Ordinal));

    [Test]
    public void AGroupBoundLaunch()
    {
        // Mixtral o_proj in BF16: 4096 x 4096 x 2 B = 33,554,432 B in 4096 / 16 = 256 groups.
        //   bandwidth: 33,554,432 / (0.9 x 4227e3 B/us) = 8.820 us
        //   issue:     4 x 512 / (113 / 4) = 72.50 B per clock per SM x 1.98 GHz x 132 SMs = 18,947 B/ns -> 1.771 us
        //   groups:    256 / (132 x 5) < 1 wave -> 1 x (6.8 + 131,072 B / 6,500 B/us) = 6.8 + 20.165 = 26.965 us
        // -> 26.965 + 6.0 us of launch = 32.965 us.
        var o = Launch(DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512, DecodeKernels.V1), "o ");
        Assert.That(o.Groups, Is.EqualTo(256));
        Assert.That(o.Bound, Is.EqualTo("groups"));
        Assert.That(o.Microseconds, Is.EqualTo(32.965).Within(1e-3));
    }

    [Test]
    public void WithoutGroupCostsTheSameLaunchIsBandwidthBound()
    {
        // The same launch on a machine whose groups cost nothing: 8.820 + 6.0 = 14.820 us.
        var free = H200 with { GroupOverheadUs = 0, GroupStreamKBPerUs = 1e9 };
        var o = Launch(DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, free, 512, DecodeKernels.V1), "o ");
        Assert.That(o.Bound, Is.EqualTo("bandwidth"));
        Assert.That(o.Microseconds, Is.EqualTo(14.820).Within(1e-3));
    }

    [Test]
    public void AManyWaveLaunchPaysEachWave()
    {
        // Mixtral experts up-gate in int4-g128: K=2 x F=14336 / 8 = 3584 groups, 2 resident per SM -> 3584 / 264 =
        // 13.576 waves; each group streams 16 rows x 4096 x 0.5234375 B = 34,304 B: 6.8 + 34,304 / 6,500 = 12.078 us;
        // 13.576 x 12.078 = 163.96 us, + 6.0 = 169.96 us.
        var up = Launch(DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Int4, H200, 512, DecodeKernels.V1), "experts up-gate");
        Assert.That(up.Groups, Is.EqualTo(3584));
        Assert.That(up.Microseconds, Is.EqualTo(169.96).Within(0.01));
    }

    [Test]
    public void TheStepAddsItsLaunchesAndTheHost()
    {
        var p = DecodeModel.Predict(DecodeModel.Qwen3A3B, DecodeModel.Int4, H200, 4096, DecodeKernels.V2);
        double want = p.Layer.Sum(l => l.Microseconds) * 48 + p.Outside.Sum(l => l.Microseconds) + H200.HostUs;
        Assert.That(p.StepMicroseconds, Is.EqualTo(want).Within(1e-9));
        Assert.That(p.LaunchesPerLayer, Is.EqualTo(8));
        // Attention at S = 4096: 2 x 4 kv heads x 4096 x 128 x 4 B = 16,777,216 B: 4 + 16,777,216 / 2,200e3 + 6 = 17.626 us.
        Assert.That(Launch(p, "attention").Microseconds, Is.EqualTo(17.626).Within(1e-3));
        // Weight bytes per token: layers' weights (attention excluded: it reads the cache) plus the lm_head.
        Assert.That(p.WeightBytes, Is.EqualTo(p.Layer.Where(l => l.Kernel != "attention decode").Sum(l => l.Bytes) * 48 + p.Outside.Sum(l => l.Bytes)).Within(1));
    }

    [Test]
    public void V2PaysOnePrologueAndStreamsTwiceTheBytesInFlight()
    {
        // Mixtral o_proj in BF16 on V2: 256 blocks of 16 rows, 132 x 4 = 528 resident -> 256 groups, one wave; 32 KB in
        // flight per group return every 16 / 6.5 = 2.4615 us -> 13.0 KB/us: 131,072 B / 13,000 B/us = 10.0825 us, plus
        // the 1.5 us prologue = 11.5825 us (bandwidth 8.820 us; issue 4 x 512 / 27.5 = 74.47 B per clock per SM ->
        // 1.724 us) -> + 6.0 us of launch = 17.5825 us; replayed from a graph, + 2.0 us = 13.5825 us.
        var o = Launch(DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512, DecodeKernels.V2), "o ");
        Assert.That((o.Groups, o.Bound), Is.EqualTo((256, "groups")));
        Assert.That(o.Microseconds, Is.EqualTo(17.5825).Within(1e-3));
        var g = Launch(DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512, DecodeKernels.V2, graph: true), "o ");
        Assert.That(g.Microseconds, Is.EqualTo(13.5825).Within(1e-3));
    }

    [Test]
    public void V2DownSplitsFIntoTilesAndDIntoChunks()
    {
        // Mixtral down in BF16 on V2: K = 2 pairs x ceil(14336 / 4096) = 4 tiles = 8 slices; 528 resident / 8 = 66
        // chunks wanted -> ceil(4096 / 66) = 63 rows -> 64 (a multiple of 32) -> 64 chunks: 512 groups of
        // 234,881,024 / 512 = 458,752 B: 458,752 / 13,000 + 1.5 = 36.79 us, under the bandwidth bound
        // 234,881,024 / (0.9 x 4227e3) = 61.741 us; the combine's 1.0 us comes after it -> + 6.0 = 68.741 us.
        var down = Launch(DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512, DecodeKernels.V2), "experts down");
        Assert.That((down.Groups, down.Bound), Is.EqualTo((512, "bandwidth")));
        Assert.That(down.Microseconds, Is.EqualTo(68.741).Within(1e-3));
        // V1: 256 groups of 16 rows, 2 x 14336 x 16 x 2 B = 917,504 B each: 6.8 + 917,504 / 6,500 = 147.954 us + 6.0.
        var v1 = Launch(DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512, DecodeKernels.V1), "experts down");
        Assert.That(v1.Microseconds, Is.EqualTo(153.954).Within(1e-3));
    }

    [Test]
    public void V3RoutesInTheRouterLaunchAndRotatesInTheQkvLaunch()
    {
        // Mixtral's router in BF16: 8 x 4096 x 2 B = 65,536 B; one 16-row block x min(132 / 1, 4096 / 8 / 32 = 16) = 16
        // chunks = 16 groups of 4,096 B: 1.5 + 4,096 / 13,000 = 1.815 us (bandwidth 0.017 us), then the combine 1.0 and the
        // routing 1.0 -> 3.815 + 6.0 = 9.815 us, where V2 spent 12.5 us on the router and 9.0 on gating.
        var v3 = DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512);
        var router = Launch(v3, "rmsnorm + router + gating");
        Assert.That((router.Groups, router.Bound), Is.EqualTo((16, "groups")));
        Assert.That(router.Microseconds, Is.EqualTo(9.815).Within(1e-3));
        // q/k/v with the rotation: 6144 x 4096 x 2 B = 50,331,648 B at the bandwidth bound 13.230 us + 0.5 + 6.0 = 19.730 us.
        var qkv = Launch(v3, "rmsnorm + q/k/v + rope");
        Assert.That(qkv.Microseconds, Is.EqualTo(19.730).Within(1e-3));
        Assert.That(v3.LaunchesPerLayer, Is.EqualTo(6));
        Assert.That(v3.Layer.Select(l => l.Kernel), Has.None.EqualTo("gating").And.None.EqualTo("rope + kv append"));
        // Qwen3's per-head q/k norm keeps the rotation in its own launch: 7 per layer.
        var qwen = DecodeModel.Predict(DecodeModel.Qwen3A3B, DecodeModel.Bf16, H200, 512);
        Assert.That(qwen.LaunchesPerLayer, Is.EqualTo(7));
        Assert.That(qwen.Layer.Select(l => l.Kernel), Has.Some.EqualTo("rope + kv append"));
    }

    [Test]
    public void PackedReadersKeepTwiceTheLoadsInFlightOnlyOnRowsOfTwoSteps()
    {
        // A step of the packed readers' loop is 64 units of a row per warp: q4 (32 values a unit) at D = 4096 has 128
        // units, 2 steps: 8 loads per lane; at D = 2048 (Qwen3-30B-A3B's up-gate) 64 units, one step: 4. q8 (16 a
        // unit) at 2048: 128 units, 8. BF16 keeps 8 whatever the row.
        Assert.That(DecodeModel.Int4.LoadsPerLane(4096), Is.EqualTo(8));
        Assert.That(DecodeModel.Int4.LoadsPerLane(2048), Is.EqualTo(4));
        Assert.That(DecodeModel.Int8.LoadsPerLane(2048), Is.EqualTo(8));
        Assert.That(DecodeModel.Bf16.LoadsPerLane(64), Is.EqualTo(8));
        // Mixtral up-gate in int4 on V2: 3584 blocks, 132 x 2 = 264 groups, 122,945,536 B / 264 = 465,703 B each at 32 KB
        // per 2.4615 us = 13,000 B/us: 1.5 + 35.823 = 37.323 us (issue bound 122,945,536 / (4 x 512 / 157 x 1.98 x 132
        // B/ns) = 36.06 us; bandwidth 32.32 us) -> + 6.0 = 43.323 us.
        var up = Launch(DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Int4, H200, 512, DecodeKernels.V2), "experts up-gate");
        Assert.That((up.Groups, up.Bound), Is.EqualTo((264, "groups")));
        Assert.That(up.Microseconds, Is.EqualTo(43.323).Within(1e-3));
    }

    [Test]
    public void ABadContextIsRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512, (DecodeKernels)4));
    }
}
