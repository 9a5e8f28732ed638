using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;
using ILGpuMoE.Tests.Kernels.Moe.Gating;

namespace ILGpuMoE.Tests.Kernels.Decode;

/// <summary>
/// decode/router V1 against RefDecode.Router (RefDecode.Linear, then RefMoe.Route) on the values each reader holds:
/// logits within fp32 tolerance, the same expert ids in the same order, weights within 1e-5. Rows are wide enough that
/// D splits into several chunks (the last one short), and the router runs with a split of up to 64 groups and with one
/// group; a second launch must give the same bits (the counter is back at 0, the combine's order is fixed).
/// </summary>
public class DecodeRouterTests
{
    private const float Eps = 1e-5f;

    private static DecodeRouterKernel<TU> Kernel<TU>()
        where TU : struct, IRowUnits => DecodeTestUnits.Cached(() => DecodeRouterKernel.Create<TU>(TestDevice.Accelerator));

    /// <summary>Columns per kind: 70 units of bf16 (chunks of 32, 32 and 6 at the widest split), 75 of f32, 41.5 of q8
    /// (the last unit half padding), 35 of q4-g32, and 77 values for the scalar path (20 units of 4: one chunk).</summary>
    private static int Cols(string kind) => kind switch
    {
        "bf16" => 560,
        "f32" => 300,
        "q8" => 664,
        "q4-sym-g32" => 1120,
        "scalar-bf16" => 77,
        _ => throw new ArgumentException(kind),
    };

    /// <summary>The routers the decode step meets: Mixtral's (E = 8, K = 2), Qwen2-MoE's softmax top-k with a gated shared
    /// expert (E + 1 rows, 2 shared slots) and a router bias (gpt-oss), and DeepSeek-V3's grouped sigmoid with its
    /// score bias (E = 20 rows: two 16-row blocks, the second part-way).</summary>
    public static readonly string[] Specs = ["mixtral", "softmax-shared-bias", "deepseek"];

    private static (RouterSpec Spec, bool Bias) SpecOf(string name) => name switch
    {
        "mixtral" => (RouterSpec.Mixtral(8, 2), false),
        "softmax-shared-bias" => (RouterSpec.SoftmaxTopK(12, 3).WithSharedSlots(2), true),
        "deepseek" => (RouterSpec.DeepSeekV3(20, 3, 4, 2, normTopK: true, scalingFactor: 2.5), false),
        _ => throw new ArgumentException(name),
    };

    [Test]
    public void RoutesLikeTheOracle([Values("bf16", "f32", "q8", "q4-sym-g32", "scalar-bf16")] string kind, [ValueSource(nameof(Specs))] string specName,
        [Values(0, 64)] int maxGroups)
    {
        var (spec, hasBias) = SpecOf(specName);
        int d = Cols(kind), rows = spec.LogitsPerToken;
        int seed = Array.IndexOf(Specs, specName) * 10 + d;
        var mats = new[] { new TestMatrix(Data.Gaussian(seed, (long)rows * d, 0.5), rows, d) };
        var (norm, g, gb) = DecodeLinearTests.Norm(WeightType.BF16, Data.Uniform(seed + 1, d, 1.5f));
        var (bias, b, bb) = hasBias ? DecodeLinearTests.Norm(WeightType.F32, Data.Uniform(seed + 2, rows, 0.5f)) : (NormWeights.None, [], null);
        try
        {
            DecodeTestUnits.With(kind, mats, new RouteBody(Data.Uniform(seed + 3, d, 2f), norm, g, bias, b, spec, maxGroups,
                spec.Kind == RouterKind.DeepSeekV3 ? Data.Uniform(seed + 4, spec.Experts, 0.2f) : null, $"{kind} {specName} maxGroups {maxGroups}",
                splits: kind != "scalar-bf16"));
        }
        finally
        {
            gb.Dispose();
            bb?.Dispose();
        }
    }

    private sealed class RouteBody(float[] x, NormWeights norm, float[] g, NormWeights bias, float[] b, RouterSpec spec, int maxGroups, float[]? scoreBias,
        string what, bool splits = true) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            int d = x.Length, rows = w[0].Rows, slots = spec.SlotsPerToken;
            var kernel = Kernel<TU>();
            int chunks = kernel.Split(w[0], maxGroups).Chunks;
            if (maxGroups > 0)
                Assert.That(chunks > 1, Is.EqualTo(splits), $"{what}: D splits into {chunks} chunks");
            var (wantLogits, routing) = RefDecode.Router(x, g, Eps, seen[0], rows, d, b, GatingTests.ToRef(spec), scoreBias ?? default);
            using var xb = TestDevice.Upload(x);
            using var logits = TestDevice.PoisonedFloats(rows);
            using var ids = TestDevice.PoisonedInts(slots);
            using var weights = TestDevice.PoisonedFloats(slots);
            using var sb = scoreBias is null ? null : TestDevice.Upload(scoreBias);
            var stream = TestDevice.Accelerator.DefaultStream;
            float[]? first = null;
            for (int run = 0; run < 2; run++)
            {
                kernel.Launch(stream, w[0], xb.View, norm, Eps, bias, spec, logits.View, ids.View, weights.View, sb?.View ?? default, maxGroups: maxGroups);
                TestDevice.Accelerator.Synchronize();
                var got = logits.GetAsArray1D();
                Check.Close(wantLogits, got, 1e-5, DecodeTestUnits.DotAtol(d), $"{what} logits");
                Assert.That(ids.GetAsArray1D(), Is.EqualTo(routing.ExpertIds), $"{what} ids");
                Check.Close(routing.Weights, weights.GetAsArray1D(), 1e-5, 1e-6, $"{what} weights");
                if (first is null)
                    first = got;
                else
                    Check.BitEqual(first, got, $"{what} second launch");
            }
        }
    }

    /// <summary>A row longer than one staged tile (4100 f32 columns) takes one chunk and decode/linear's restaging path.</summary>
    [Test]
    public void RowsLongerThanATile()
    {
        const int d = 4100;
        var spec = RouterSpec.Mixtral(4, 2);
        var mats = new[] { new TestMatrix(Data.Gaussian(71, 4L * d, 0.5), 4, d) };
        var (norm, g, gb) = DecodeLinearTests.Norm(WeightType.F32, Data.Uniform(72, d, 1.5f));
        using var _ = gb;
        DecodeTestUnits.With("f32", mats, new RouteBody(Data.Uniform(73, d, 2f), norm, g, NormWeights.None, [], spec, 64, null, "f32 D = 4100", splits: false));
    }

    [Test]
    public void RefusesWhatItCannotRoute()
    {
        var w = new TestMatrix(Data.Gaussian(81, 8L * 40, 0.5), 8, 40);
        DecodeTestUnits.With("bf16", [w], new RefuseBody());
    }

    private sealed class RefuseBody : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            using var x = TestDevice.Upload(Data.Uniform(82, 40));
            using var logits = TestDevice.PoisonedFloats(9);
            using var ids = TestDevice.PoisonedInts(4);
            using var weights = TestDevice.PoisonedFloats(4);
            var s = TestDevice.Accelerator.DefaultStream;
            void Launch(RouterSpec spec) =>
                Kernel<TU>().Launch(s, w[0], x.View, NormWeights.None, Eps, NormWeights.None, spec, logits.View, ids.View, weights.View);
            var e = Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Switch(8, 1.0)));
            Assert.That(e!.Message, Does.Contain("Switch"));
            e = Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(8, 2).WithSharedSlots(1)));
            Assert.That(e!.Message, Does.Contain("9 rows"));
            e = Assert.Throws<ArgumentException>(() => Launch(RouterSpec.Mixtral(9, 2)));
            Assert.That(e!.Message, Does.Contain("9 rows"));
            Assert.That(ids.GetAsArray1D(), Is.All.EqualTo(int.MinValue), "nothing launched");
        }
    }
}
