using ILGpuMoE.Perf.Model;

namespace ILGpuMoE.Tests.Perf;

/// <summary>The decode model's arithmetic on launches worked out by hand (perf/ILGpuMoE.Perf/Model/DecodeModel.cs).</summary>
public class DecodeModelTests
{
    private static readonly DecodeMachine H200 = new();

    [Test]
    public void AWideMatrixIsBandwidthBound()
    {
        // Mixtral o_proj in BF16: 4096 x 4096 x 2 B = 33,554,432 B over 4096 / 16 = 256 groups.
        //   bandwidth: 33,554,432 / (0.9 x 4200e3 B/us) = 8.8768 us
        //   issue:     4 x 512 / 32 = 64 B per clock per SM x 1.98 GHz x 132 SMs = 16,727 B/ns -> 2.006 us
        //   latency:   min(256, 132 x 4) = 256 groups x 16,384 B / 0.8 us = 5,242,880 B/us -> 6.400 us
        // -> 8.8768 + 2.0 us of launch = 10.8768 us.
        var o = DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512, graph: false).Layer.Single(l => l.Kernel.StartsWith("o ", StringComparison.Ordinal));
        Assert.That(o.Groups, Is.EqualTo(256));
        Assert.That(o.Bound, Is.EqualTo("bandwidth"));
        Assert.That(o.Microseconds, Is.EqualTo(10.8768).Within(1e-3));
    }

    [Test]
    public void AFewRowMatrixIsLatencyBound()
    {
        // Mixtral router: 8 x 4096 x 2 B = 65,536 B in one group of 16 rows: 65,536 / (16,384 B / 0.8 us) = 3.2 us,
        // plus 1.0 us of graph launch = 4.2 us.
        var router = DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 512, graph: true).Layer.Single(l => l.Kernel.Contains("router", StringComparison.Ordinal));
        Assert.That(router.Groups, Is.EqualTo(1));
        Assert.That(router.Bound, Is.EqualTo("latency"));
        Assert.That(router.Microseconds, Is.EqualTo(4.2).Within(1e-9));
    }

    [Test]
    public void TheStepAddsItsLaunches()
    {
        var p = DecodeModel.Predict(DecodeModel.Qwen3A3B, DecodeModel.Int4, H200, 4096, graph: false);
        double want = p.Layer.Sum(l => l.Microseconds) * 48 + p.Outside.Sum(l => l.Microseconds);
        Assert.That(p.StepMicroseconds, Is.EqualTo(want).Within(1e-9));
        Assert.That(p.LaunchesPerLayer, Is.EqualTo(8));
        // Weight bytes per token: layers' weights (attention excluded: it reads the cache) plus the lm_head.
        Assert.That(p.WeightBytes, Is.EqualTo(p.Layer.Where(l => l.Kernel != "attention decode").Sum(l => l.Bytes) * 48 + p.Outside.Sum(l => l.Bytes)).Within(1));
    }

    [Test]
    public void ABadContextIsRefused() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => DecodeModel.Predict(DecodeModel.Mixtral8x7B, DecodeModel.Bf16, H200, 0, graph: false));
}
