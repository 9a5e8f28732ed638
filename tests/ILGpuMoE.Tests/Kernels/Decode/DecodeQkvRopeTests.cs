using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Decode;

/// <summary>
/// decode/qkv-rope V1 against RefDecode.QkvRope (the oracle: RefDecode.Linear, RefRope.Apply, the cache row written) and,
/// bit for bit, against the two launches it replaces (decode/linear V2, then attention/rope-append V1) on the CPU
/// accelerator. q starts as NaN (every element must be written); the caches hold random earlier rows and NaN elsewhere,
/// and every row but the token's must keep its exact bits. Grids capped at 2 groups, so each group loops over blocks of
/// q, k and v; the row counts end a 16-row block part-way.
/// </summary>
public class DecodeQkvRopeTests
{
    private const float Eps = 1e-5f;
    private const float Theta = 10_000f;
    private const int MaxSeq = 12;

    private static DecodeQkvRopeKernel<TU> Kernel<TU>()
        where TU : struct, IRowUnits => DecodeTestUnits.Cached(() => DecodeQkvRopeKernel.Create<TU>(TestDevice.Accelerator));

    /// <summary>One launch's shape: heads, head dim, the rotary dims [offset, offset + rotary), the token's position,
    /// biases (F32, F16, BF16 for q, k, v), a clip that about a third of the outputs reach, YaRN's frequencies and factor.</summary>
    public sealed record Shape(string Kind, int Heads, int KvHeads, int HeadDim, int Rotary, int Offset, int Pos, bool Bias, bool Clip, bool Yarn = false)
    {
        public override string ToString() =>
            $"{Kind} H{Heads}/{KvHeads} Dh{HeadDim} rot{Rotary}@{Offset} pos{Pos}{(Bias ? " bias" : "")}{(Clip ? " clip" : "")}{(Yarn ? " yarn" : "")}";
    }

    private static readonly Shape[] ReferenceShapes =
    [
        new("bf16", 3, 1, 12, 12, 0, 0, Bias: false, Clip: false),           // GQA 3:1, Dh 12, position 0
        new("q4-sym-g32", 4, 2, 8, 8, 0, 5, Bias: true, Clip: true),         // packed reader, biases and clip, Dh 8
        new("q8", 6, 2, 12, 8, 0, 9, Bias: true, Clip: false),               // partial rotary (8 of 12 dims)
        new("scalar-bf16", 2, 2, 8, 6, 2, 11, Bias: false, Clip: true),      // rotary at an offset, the scalar reader, last row
    ];

    private static readonly Shape[] CompositionShapes =
    [
        new("bf16", 3, 1, 12, 12, 0, 4, Bias: true, Clip: true, Yarn: true),
        new("q4-sym-g32", 4, 2, 8, 6, 2, 0, Bias: false, Clip: false),
        new("f32", 2, 1, 8, 8, 0, MaxSeq, Bias: true, Clip: false),         // past the cache: q unrotated, cache untouched
    ];

    [TestCaseSource(nameof(ReferenceShapes))]
    public void MatchesReference(Shape s) => Run(s, against: "reference");

    [TestCaseSource(nameof(CompositionShapes))]
    public void SameBitsAsLinearThenRopeAppend(Shape s) => Run(s, against: "composition");

    private static void Run(Shape s, string against)
    {
        int d = DecodeTestUnits.Cols(s.Kind);
        int seed = s.HeadDim + 10 * s.Heads + s.Pos;
        int[] rows = [s.Heads * s.HeadDim, s.KvHeads * s.HeadDim, s.KvHeads * s.HeadDim];
        var mats = rows.Select((r, m) => new TestMatrix(Data.Gaussian(seed + m, (long)r * d, 0.3), r, d)).ToList();
        var (norm, g, gb) = DecodeLinearTests.Norm(WeightType.BF16, Data.Uniform(seed + 5, d, 1.5f));
        var biases = rows.Select((r, m) => Bias(s.Bias, (WeightType)m, Data.Uniform(seed + 6 + m, r, 0.5f))).ToArray();
        try
        {
            DecodeTestUnits.With(s.Kind, mats, new Body(s, against, Data.Uniform(seed + 9, d, 2f), norm, g, biases.Select(b => (b.Norm, b.Seen)).ToArray()));
        }
        finally
        {
            gb.Dispose();
            foreach (var b in biases)
                b.Buffer?.Dispose();
        }
    }

    // A bias of a dtype on the device and the values the kernel sees, or none.
    private static (NormWeights Norm, float[] Seen, IDisposable? Buffer) Bias(bool on, WeightType type, float[] values) =>
        on ? DecodeLinearTests.Norm(type, values) : (NormWeights.None, [], null);

    /// <summary>A [Hkv, maxSeq, Dh] cache image: rows below `filled` random, the rest NaN.</summary>
    private static float[] Cache(int seed, int kvHeads, int headDim, int filled)
    {
        var c = new float[(long)kvHeads * MaxSeq * headDim];
        Array.Fill(c, float.NaN);
        var r = Data.Uniform(seed, c.Length);
        for (int h = 0; h < kvHeads; h++)
            Array.Copy(r, h * MaxSeq * headDim, c, h * MaxSeq * headDim, Math.Min(filled, MaxSeq) * headDim);
        return c;
    }

    private sealed class Body(Shape s, string against, float[] x, NormWeights norm, float[] g, (NormWeights Norm, float[] Seen)[] biases) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            int d = x.Length, hd = s.HeadDim;
            var spec = new RopeSpec(s.Rotary, Theta) { Offset = s.Offset, Yarn = s.Yarn ? new YarnScaling(4, 16) : null };
            float clip = s.Clip ? Clip(w, seen) : float.PositiveInfinity;
            var kc0 = Cache(hd + 1, s.KvHeads, hd, s.Pos);
            var vc0 = Cache(hd + 2, s.KvHeads, hd, s.Pos);
            var acc = TestDevice.Accelerator;
            using var xb = TestDevice.Upload(x);
            using var pos = TestDevice.Upload(new[] { s.Pos });
            using var q = TestDevice.PoisonedFloats(w[0].Rows);
            using var kc = TestDevice.Upload(kc0);
            using var vc = TestDevice.Upload(vc0);
            Kernel<TU>().Launch(acc.DefaultStream, xb.View, norm, Eps, new(w[0], q.View, biases[0].Norm), w[1], biases[1].Norm, w[2], biases[2].Norm,
                pos.View, kc.View, vc.View, s.Heads, s.KvHeads, hd, MaxSeq, spec, clip, maxGroups: 2);
            acc.Synchronize();
            var (gotQ, gotK, gotV) = (q.GetAsArray1D(), kc.GetAsArray1D(), vc.GetAsArray1D());
            if (against == "composition")
            {
                var (wantQ, wantK, wantV) = Composition(w, pos.View, spec, clip, kc0, vc0);
                Check.BitEqual(wantQ, gotQ, $"{s}: q");
                Check.BitEqual(wantK, gotK, $"{s}: kCache");
                Check.BitEqual(wantV, gotV, $"{s}: vCache");
                return;
            }

            var r = RefDecode.QkvRope(x, g, Eps, d, (seen[0], biases[0].Seen), (seen[1], biases[1].Seen), (seen[2], biases[2].Seen), clip,
                s.Heads, s.KvHeads, hd, s.Pos, RefRope.InvFreq(s.Rotary, Theta, null), s.Offset, 1.0, kc0, vc0, MaxSeq);
            double atol = DecodeTestUnits.DotAtol(d);
            Check.Close(r.Q, gotQ, 1e-5, atol, $"{s}: q");
            Rows(r.KCache, gotK, kc0, atol, "kCache");
            Rows(r.VCache, gotV, vc0, atol, "vCache");
        }

        // The token's row of each kv head close to the oracle's, every other row with the bits it had.
        private void Rows(float[] want, float[] got, float[] before, double atol, string what)
        {
            var expect = (float[])before.Clone();
            for (int h = 0; h < s.KvHeads; h++)
            {
                int row = (h * MaxSeq + s.Pos) * s.HeadDim;
                Check.Close(want.AsSpan(row, s.HeadDim), got.AsSpan(row, s.HeadDim), 1e-5, atol, $"{s}: {what} head {h} row {s.Pos}");
                Array.Copy(got, row, expect, row, s.HeadDim);
            }

            Check.BitEqual(expect, got, $"{s}: {what} rows other than the token's");
        }

        // The 70th percentile of |q, k, v| before the clip, so that a third of them clip.
        private float Clip<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            var all = Enumerable.Range(0, 3)
                .SelectMany(m => RefDecode.Linear(x, g, Eps, seen[m], w[m].Rows, x.Length, biases[m].Seen, float.PositiveInfinity))
                .Select(MathF.Abs).Order().ToArray();
            float clip = all[all.Length * 7 / 10];
            Assert.That(all.Count(v => v > clip * 1.01f), Is.GreaterThan(5), "enough outputs clip");
            return clip;
        }

        // decode/linear V2 into q, k, v, then attention/rope-append V1: the launches the fused kernel replaces.
        private (float[] Q, float[] K, float[] V) Composition<TU>(TU[] w, ArrayView<int> pos, RopeSpec spec, float clip, float[] kc0, float[] vc0)
            where TU : struct, IRowUnits
        {
            var acc = TestDevice.Accelerator;
            using var xb = TestDevice.Upload(x);
            using var q = TestDevice.PoisonedFloats(w[0].Rows);
            using var k = TestDevice.PoisonedFloats(w[1].Rows);
            using var v = TestDevice.PoisonedFloats(w[2].Rows);
            using var kc = TestDevice.Upload(kc0);
            using var vc = TestDevice.Upload(vc0);
            DecodeLinearTests.Kernel<TU>().Launch(acc.DefaultStream, xb.View, norm, Eps, new(w[0], q.View, biases[0].Norm),
                new DecodeTarget<TU>(w[1], k.View, biases[1].Norm), new DecodeTarget<TU>(w[2], v.View, biases[2].Norm), clip: clip, maxGroups: 2);
            RopeAppend().Launch(acc.DefaultStream, q.View, k.View, v.View, pos, kc.View, vc.View, 1, s.Heads, s.KvHeads, s.HeadDim, MaxSeq, spec,
                version: RopeAppendVersion.V1);
            acc.Synchronize();
            return (q.GetAsArray1D(), kc.GetAsArray1D(), vc.GetAsArray1D());
        }
    }

    private static RopeAppendKernel RopeAppend() => DecodeTestUnits.Cached(() => RopeAppendKernel.Create(TestDevice.Accelerator));

    /// <summary>The launcher's one-line refusals: odd Dh, interleaved pairs, rows that are not heads x Dh, short caches, no
    /// position, a bad grid cap or clip.</summary>
    [Test]
    public void RejectsBadShapes()
    {
        int d = DecodeTestUnits.Cols("bf16");
        const int heads = 2, kvHeads = 1, hd = 8;
        int[] rows = [heads * hd, kvHeads * hd, kvHeads * hd];
        var mats = rows.Select((r, m) => new TestMatrix(Data.Gaussian(70 + m, (long)r * d, 0.3), r, d)).ToList();
        Assert.That(DecodeQkvRopeKernel.Refusal(RopeSpec.Full(hd, Theta), hd), Is.Null);
        Assert.That(DecodeQkvRopeKernel.Refusal(new RopeSpec(6, Theta) { Offset = 2 }, hd), Is.Null, "partial rotary at an offset");
        DecodeTestUnits.With("bf16", mats, new RejectBody(d));
    }

    private sealed class RejectBody(int d) : IUnitsTest
    {
        public void Run<TU>(TU[] w, float[][] seen)
            where TU : struct, IRowUnits
        {
            const int heads = 2, kvHeads = 1, hd = 8;
            var acc = TestDevice.Accelerator;
            using var x = TestDevice.Upload(Data.Uniform(74, d));
            using var pos = TestDevice.Upload(new[] { 0 });
            using var q = TestDevice.PoisonedFloats(heads * hd);
            using var kc = TestDevice.PoisonedFloats(kvHeads * MaxSeq * hd);
            using var vc = TestDevice.PoisonedFloats(kvHeads * MaxSeq * hd);
            var k = Kernel<TU>();
            var full = RopeSpec.Full(hd, Theta);

            void Throws(string message, int h, int kvh, int headDim, RopeSpec spec, ArrayView<int> positions, ArrayView<float> kCache,
                float clip = float.PositiveInfinity, int maxGroups = 0)
            {
                var e = Assert.Throws<ArgumentException>(() => k.Launch(acc.DefaultStream, x.View, NormWeights.None, Eps, new(w[0], q.View), w[1], default,
                    w[2], default, positions, kCache, vc.View, h, kvh, headDim, MaxSeq, spec, clip, maxGroups))!;
                Assert.That(e.Message, Does.Contain(message).And.Not.Contain("\n"));
            }

            Throws("headDim must be even", heads, kvHeads, 7, new RopeSpec(6, Theta), pos.View, kc.View);
            Throws("interleaved", heads, kvHeads, hd, full with { Interleaved = true }, pos.View, kc.View);
            Throws("q weights have shape [16, 40], need [24, 40]", 3, kvHeads, hd, full, pos.View, kc.View);
            Throws("kCache [Hkv, maxSeq, Dh] has 95 floats", heads, kvHeads, hd, full, pos.View, kc.View.SubView(0, kvHeads * MaxSeq * hd - 1));
            Throws("positions has no element", heads, kvHeads, hd, full, default, kc.View);
            Throws("rotary dims [4, 12) do not fit", heads, kvHeads, hd, new RopeSpec(8, Theta) { Offset = 4 }, pos.View, kc.View);
            Throws("maxGroups must be >= 0", heads, kvHeads, hd, full, pos.View, kc.View, maxGroups: -1);
            Throws("clip must be > 0", heads, kvHeads, hd, full, pos.View, kc.View, clip: 0f);
        }
    }
}
