using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention.Mla;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Attention;

/// <summary>
/// The attention/mla-* kernels on the CPU accelerator: each against RefMlaAttention's piece, and the whole absorbed chain
/// (append, absorb-q, latent attention, absorb-v) against Hugging Face's EXPANDED attention (RefMlaAttention.Expand's per-head
/// keys and values into RefOps.GeneralAttention): two formulas that must agree, the proof that the absorption is right.
/// Odd shapes (R 40, Dr 8, Dn 12, Dv 10, H 3) unless a case says otherwise; cache rows past the last position are NaN and
/// outputs start NaN, so a kernel that reads an invalid row or skips an output fails.
/// </summary>
public class MlaKernelTests
{
    private const double Rtol = 1e-5;
    private const double Atol = 2e-6;

    private static readonly MlaShape Odd = new(Heads: 3, Rank: 40, RopeDim: 8, NopeDim: 12, VDim: 10);

    private static MlaAttentionKernel? shared;
    private static readonly Dictionary<Type, object> Absorbs = new();

    private static MlaAttentionKernel Kernel()
    {
        lock (typeof(MlaKernelTests))
            return shared ??= MlaAttentionKernel.Create(TestDevice.Accelerator);
    }

    private static MlaAbsorbKernel<TW> Absorb<TW>()
        where TW : struct, IWeights
    {
        lock (Absorbs)
        {
            if (!Absorbs.TryGetValue(typeof(TW), out var k))
                Absorbs[typeof(TW)] = k = MlaAbsorbKernel.Create<TW>(TestDevice.Accelerator);
            return (MlaAbsorbKernel<TW>)k;
        }
    }

    /// <summary>
    /// One layer's data: kv_b_proj [H*(Dn+Dv), R], cache rows [maxSeq, R + Dr] (rows 0..Keys-1 meaningful), q of the
    /// T tokens at pos0.. [T, H, Dn + Dr], and the scale (qk_head_dim^-0.5 times an mscale^2 of 1.21, as YaRN would give).
    /// </summary>
    private sealed record Problem(MlaShape S, int Tokens, int Pos0, int MaxSeq, float[] KvB, float[] Cache, float[] Q)
    {
        public int Keys => Pos0 + Tokens;

        public double Scale => 1.21 / Math.Sqrt(S.QkDim);

        public int[] Positions => Enumerable.Range(Pos0, Tokens).ToArray();

        public static Problem Random(int seed, MlaShape s, int tokens, int pos0, int maxSeq = 0)
        {
            int rows = Math.Max(maxSeq, pos0 + tokens + 3);
            // Latent rows of unit size (kv_a_layernorm's output), weights ~ 1/sqrt(R): expanded keys of order 1.
            return new Problem(s, tokens, pos0, rows,
                Data.Gaussian(seed, (long)s.KvBRows * s.Rank, 1 / Math.Sqrt(s.Rank)),
                Data.Gaussian(seed + 1, (long)rows * s.Row),
                Data.Gaussian(seed + 2, (long)tokens * s.Heads * s.QkDim));
        }

        /// <summary>The cache with rows [0, rows) and NaN after them.</summary>
        public float[] CacheImage(int rows)
        {
            var c = new float[(long)MaxSeq * S.Row];
            Array.Fill(c, float.NaN);
            Array.Copy(Cache, c, (long)rows * S.Row);
            return c;
        }

        public float[] QAbs(float[] kvB) => RefMlaAttention.AbsorbQ(Q, kvB, Tokens, S);

        /// <summary>Hugging Face's formula: expanded keys/values of rows 0..Keys-1, GeneralAttention over them.</summary>
        public float[] Expanded(float[] kvB)
        {
            var rows = Cache.AsSpan(0, Keys * S.Row);
            var (k, v) = RefMlaAttention.Expand(rows, kvB, Keys, S);
            return RefOps.GeneralAttention(Q, k, v, Positions, Tokens, Keys, S.Heads, S.Heads, S.QkDim, S.VDim, Scale, 0, default);
        }
    }

    /// <summary>kv_b_proj on the device in a dtype, and the float values a kernel reads from it.</summary>
    private static (TW Weights, float[] Values, IDisposable Buffer) UploadWeights<TW>(float[] w)
        where TW : struct, IWeights
    {
        if (typeof(TW) == typeof(F32Weights))
        {
            var b = TestDevice.Upload(w);
            return ((TW)(object)new F32Weights(b.View), w, b);
        }

        if (typeof(TW) == typeof(F16Weights))
        {
            var b = TestDevice.Upload(w.Select(x => BitConverter.HalfToUInt16Bits((System.Half)x)).ToArray());
            return ((TW)(object)new F16Weights(((ArrayView<ushort>)b.View).Cast<ILGPU.Half>()), Data.RoundToHalf(w), b);
        }

        var bb = TestDevice.Upload(w.Select(BF16.FromFloat).ToArray());
        return ((TW)(object)new BF16Weights(bb.View), Data.RoundToBf16(w), bb);
    }

    private static float[] RunAttention(Problem p, float[] qAbs, MlaAttentionVersion version, int? kps, int[]? positions = null, int rows = -1)
    {
        var acc = TestDevice.Accelerator;
        positions ??= p.Positions;
        using var cache = TestDevice.Upload(p.CacheImage(rows < 0 ? p.Keys : rows));
        using var q = TestDevice.Upload(qAbs);
        using var pos = TestDevice.Upload(positions);
        using var o = TestDevice.PoisonedFloats((long)positions.Length * p.S.Heads * p.S.Rank);
        var kernel = Kernel();
        lock (kernel)
        {
            kernel.KeysPerSplitOverride = kps;
            try
            {
                kernel.Attention(acc.DefaultStream, q.View, cache.View, pos.View, o.View, positions.Length, p.S.Heads, p.S.Rank, p.S.RopeDim, p.MaxSeq,
                    (float)p.Scale, version);
                acc.Synchronize();
            }
            finally
            {
                kernel.KeysPerSplitOverride = null;
            }
        }

        return o.GetAsArray1D();
    }

    // ---------------------------------------------------------------------------------------------------------
    [Test]
    public void AppendWritesTheRowsAtTheDevicePositionsAndNothingElse()
    {
        // ckv [T, R + Dr] as kv_a_proj_with_mqa gives it (after the norm and RoPE in place): passed twice with strides.
        var s = Odd;
        int tokens = 3, maxSeq = 12;
        var ckv = Data.Gaussian(5, (long)tokens * s.Row);
        int[] positions = [7, 2, 11];
        using var src = TestDevice.Upload(ckv);
        using var pos = TestDevice.Upload(positions);
        using var cache = TestDevice.PoisonedFloats((long)maxSeq * s.Row);
        Kernel().Append(TestDevice.Accelerator.DefaultStream, src.View, s.Row, src.View.SubView(s.Rank, src.Length - s.Rank), s.Row, pos.View, cache.View,
            tokens, s.Rank, s.RopeDim, maxSeq);
        TestDevice.Accelerator.Synchronize();
        var got = cache.GetAsArray1D();
        for (int j = 0; j < maxSeq; j++)
        {
            int t = Array.IndexOf(positions, j);
            var row = got.AsSpan(j * s.Row, s.Row);
            if (t < 0)
                Assert.That(row.ToArray().All(float.IsNaN), Is.True, $"row {j} was written");
            else
                Check.BitEqual(ckv.AsSpan(t * s.Row, s.Row), row, $"row {j} (token {t})");
        }
    }

    [Test]
    public void AppendSkipsPositionsOutsideTheCache()
    {
        var s = Odd;
        var c = Data.Gaussian(6, 2L * s.Rank);
        var r = Data.Gaussian(7, 2L * s.RopeDim);
        using var cb = TestDevice.Upload(c);
        using var rb = TestDevice.Upload(r);
        using var pos = TestDevice.Upload(new[] { -1, 4 });
        using var cache = TestDevice.PoisonedFloats(4L * s.Row);
        Kernel().Append(TestDevice.Accelerator.DefaultStream, cb.View, s.Rank, rb.View, s.RopeDim, pos.View, cache.View, 2, s.Rank, s.RopeDim, 4);
        TestDevice.Accelerator.Synchronize();
        Assert.That(cache.GetAsArray1D().All(float.IsNaN), Is.True, "positions -1 and 4 (maxSeq 4) must write nothing");
    }

    // ---------------------------------------------------------------------------------------------------------
    [Test]
    public void AbsorbQMatchesReference([Values] WeightType type, [Values] MlaAbsorbQVersion version)
    {
        // R 40: 10 f32 or 5 f16/bf16 16-byte units per row for V2Wide.
        var p = Problem.Random(11 + (int)type, Odd, tokens: 2, pos0: 0);
        Dispatch(type, new AbsorbQRun(p, version));
    }

    [Test]
    public void AbsorbVMatchesReference([Values] WeightType type, [Values] MlaAbsorbVVersion version)
    {
        // R 40: lanes 0..7 take a second step of V1's 32-lane stride; V2Wide has 10 or 5 units, most lanes idle.
        var p = Problem.Random(21 + (int)type, Odd, tokens: 3, pos0: 0);
        Dispatch(type, new AbsorbVRun(p, version));
    }

    [Test]
    public void AbsorbV2WideAtV3Widths([Values(WeightType.F32, WeightType.BF16)] WeightType type)
    {
        // R 512: 128 f32 or 64 bf16 units per row (V2Wide's lanes take 4 or 2 units each), Dn 16, Dv 8, Dr 64.
        var p = Problem.Random(31, new MlaShape(2, 512, 64, 16, 8), tokens: 1, pos0: 0);
        Dispatch(type, new AbsorbQRun(p, MlaAbsorbQVersion.V2Wide));
        Dispatch(type, new AbsorbVRun(p, MlaAbsorbVVersion.V2Wide));
    }

    [Test]
    public void AbsorbV2WideRefusesUnalignedRows()
    {
        // R 13 f32: 52-byte rows are not whole 16-byte words; the default falls back to V1.
        var absorb = Absorb<F32Weights>();
        using var w = TestDevice.Upload(Data.Gaussian(3, 2L * 20 * 13));
        Assert.That(absorb.CanReadWide(new F32Weights(w.View), 13), Is.False);
        Assert.That(absorb.CanReadWide(new F32Weights(w.View), 12), Is.True);
        using var q = TestDevice.Upload(Data.Gaussian(4, 2L * 14));
        using var o = TestDevice.PoisonedFloats(2L * 17);
        var e = Assert.Throws<ArgumentException>(() => absorb.AbsorbQ(TestDevice.Accelerator.DefaultStream, q.View, new F32Weights(w.View), o.View,
            1, 2, 13, 4, 10, 10, MlaAbsorbQVersion.V2Wide))!;
        Assert.That(e.Message, Does.Contain("V2Wide"));
    }

    /// <summary>A check generic over the weight reader, run for one WeightType.</summary>
    private interface IWeightRun
    {
        void Run<TW>()
            where TW : struct, IWeights;
    }

    private static void Dispatch(WeightType type, IWeightRun run)
    {
        switch (type)
        {
            case WeightType.F32:
                run.Run<F32Weights>();
                break;
            case WeightType.F16:
                run.Run<F16Weights>();
                break;
            case WeightType.BF16:
                run.Run<BF16Weights>();
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "F32, F16 or BF16");
        }
    }

    private sealed record AbsorbQRun(Problem P, MlaAbsorbQVersion Version) : IWeightRun
    {
        public void Run<TW>()
            where TW : struct, IWeights
        {
            var (s, t) = (P.S, P.Tokens);
            var (w, values, buffer) = UploadWeights<TW>(P.KvB);
            using (buffer)
            {
                using var q = TestDevice.Upload(P.Q);
                using var o = TestDevice.PoisonedFloats((long)t * s.Heads * s.Row);
                Absorb<TW>().AbsorbQ(TestDevice.Accelerator.DefaultStream, q.View, w, o.View, t, s.Heads, s.Rank, s.RopeDim, s.NopeDim, s.VDim, Version);
                TestDevice.Accelerator.Synchronize();
                Check.Close(RefMlaAttention.AbsorbQ(P.Q, values, t, s), o.GetAsArray1D(), Rtol, Atol, $"absorb-q {Version} {typeof(TW).Name} R={s.Rank}");
            }
        }
    }

    private sealed record AbsorbVRun(Problem P, MlaAbsorbVVersion Version) : IWeightRun
    {
        public void Run<TW>()
            where TW : struct, IWeights
        {
            var (s, t) = (P.S, P.Tokens);
            var oLat = Data.Gaussian(s.Rank + t, (long)t * s.Heads * s.Rank);
            var (w, values, buffer) = UploadWeights<TW>(P.KvB);
            using (buffer)
            {
                using var ob = TestDevice.Upload(oLat);
                using var y = TestDevice.PoisonedFloats((long)t * s.Heads * s.VDim);
                Absorb<TW>().AbsorbV(TestDevice.Accelerator.DefaultStream, ob.View, w, y.View, t, s.Heads, s.Rank, s.RopeDim, s.NopeDim, s.VDim, Version);
                TestDevice.Accelerator.Synchronize();
                Check.Close(RefMlaAttention.AbsorbV(oLat, values, t, s), y.GetAsArray1D(), Rtol, Atol, $"absorb-v {Version} {typeof(TW).Name} R={s.Rank}");
            }
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // (version, H, R, Dr, T, pos0, keys per split; 0 = the launcher's rule)
    private static readonly object[] AttentionCases =
    [
        new object[] { MlaAttentionVersion.V1, 3, 40, 8, 1, 17, 0 },          // decode after a prefilled cache
        new object[] { MlaAttentionVersion.V1, 3, 40, 8, 4, 9, 0 },           // prefill chunk at pos0 > 0
        new object[] { MlaAttentionVersion.V1, 2, 13, 3, 2, 0, 0 },           // R, Dr not multiples of 4 (V1 only)
        new object[] { MlaAttentionVersion.V2Split, 3, 40, 8, 1, 17, 0 },     // decode: one split of 256 covers it
        new object[] { MlaAttentionVersion.V2Split, 3, 40, 8, 1, 17, 5 },     // 4 visible splits, the last of 3 keys
        new object[] { MlaAttentionVersion.V2Split, 3, 40, 8, 1, 0, 4 },      // pos 0: one key, three warps with none
        new object[] { MlaAttentionVersion.V2Split, 3, 40, 8, 4, 9, 0 },      // prefill: one split per (token, head tile)
        new object[] { MlaAttentionVersion.V2Split, 3, 40, 8, 4, 9, 3 },      // prefill with splits and the combine
        new object[] { MlaAttentionVersion.V2Split, 9, 40, 8, 1, 11, 8 },     // 3 head tiles, the last with 1 head
        new object[] { MlaAttentionVersion.V2Split, 5, 512, 64, 1, 10, 4 },   // V3's row: 144 quads, lanes 0..15 use a 5th quad
        new object[] { MlaAttentionVersion.V2Split, 4, 600, 40, 2, 6, 0 },    // the largest row, 640 floats
    ];

    [TestCaseSource(nameof(AttentionCases))]
    public void LatentAttentionMatchesReference(MlaAttentionVersion version, int heads, int rank, int ropeDim, int tokens, int pos0, int kps)
    {
        var s = new MlaShape(heads, rank, ropeDim, NopeDim: 12, VDim: 10);
        var p = Problem.Random(300 + heads * 7 + rank + pos0 * 3 + tokens, s, tokens, pos0);
        var qAbs = Data.Gaussian(77 + rank, (long)tokens * heads * s.Row);
        var want = RefMlaAttention.LatentAttention(qAbs, p.Cache.AsSpan(0, p.Keys * s.Row), p.Positions, tokens, p.Keys, s, p.Scale);
        var got = RunAttention(p, qAbs, version, kps > 0 ? kps : null);
        Check.Close(want, got, Rtol, Atol, $"{version} H={heads} R={rank} Dr={ropeDim} T={tokens} pos0={pos0} kps={kps}");
    }

    [Test]
    public void V2SplitIsBitIdenticalTwice()
    {
        var p = Problem.Random(41, Odd, tokens: 1, pos0: 20);
        var qAbs = Data.Gaussian(42, (long)Odd.Heads * Odd.Row);
        Check.BitEqual(RunAttention(p, qAbs, MlaAttentionVersion.V2Split, 6), RunAttention(p, qAbs, MlaAttentionVersion.V2Split, 6), "V2Split twice");
    }

    [TestCase(MlaAttentionVersion.V1)]
    [TestCase(MlaAttentionVersion.V2Split)]
    public void PositionsOutsideTheCacheNeverReadPastIt(MlaAttentionVersion version)
    {
        // The runtime refuses such positions on the host; the kernels clamp pos >= maxSeq to the last row (every row
        // valid here, so a read past the cache would be out of bounds) and give NaN for pos < 0 (no visible row).
        var p = Problem.Random(51, Odd, tokens: 1, pos0: 0, maxSeq: 10);
        var qAbs = Data.Gaussian(52, (long)Odd.Heads * Odd.Row);
        var want = RefMlaAttention.LatentAttention(qAbs, p.Cache, [9], 1, 10, Odd, p.Scale);
        Check.Close(want, RunAttention(p, qAbs, version, 4, [10 + 3], rows: 10), Rtol, Atol, $"{version} pos past the cache");
        Assert.That(RunAttention(p, qAbs, version, 4, [-1], rows: 10).All(float.IsNaN), Is.True, $"{version}: pos < 0 gives NaN");
    }

    // ---------------------------------------------------------------------------------------------------------
    // The absorbed chain on the device against the expanded formula: (version, weights, T, pos0)
    [TestCase(MlaAttentionVersion.V1, WeightType.F32, 1, 14)]
    [TestCase(MlaAttentionVersion.V2Split, WeightType.F32, 1, 14)]
    [TestCase(MlaAttentionVersion.V2Split, WeightType.F32, 5, 7)]
    [TestCase(MlaAttentionVersion.V1, WeightType.F32, 3, 0)]
    [TestCase(MlaAttentionVersion.V2Split, WeightType.BF16, 1, 20)]
    public void AbsorbedChainMatchesExpandedAttention(MlaAttentionVersion version, WeightType type, int tokens, int pos0)
    {
        var p = Problem.Random(900 + tokens * 31 + pos0, Odd, tokens, pos0);
        float[] values;
        float[] got = type switch
        {
            WeightType.F32 => Chain<F32Weights>(p, version, out values),
            WeightType.BF16 => Chain<BF16Weights>(p, version, out values),
            _ => throw new ArgumentOutOfRangeException(nameof(type), type, "F32 or BF16"),
        };

        // q_abs and o_lat are rounded to f32 between launches where the expanded formula has no such step, and the
        // summation orders differ (W_UK^T q then . c, against q . W_UK c): a few ulp of the dots, hence the absolute room.
        Check.Close(p.Expanded(values), got, 1e-5, 1e-5, $"{version} {type} T={tokens} pos0={pos0}: absorbed vs expanded");
    }

    /// <summary>Rows 0..pos0-1 already cached; append the T tokens' rows, absorb q, attend, absorb v.</summary>
    private static float[] Chain<TW>(Problem p, MlaAttentionVersion version, out float[] weightValues)
        where TW : struct, IWeights
    {
        var acc = TestDevice.Accelerator;
        var s = p.S;
        var (w, values, buffer) = UploadWeights<TW>(p.KvB);
        weightValues = values;
        using (buffer)
        {
            using var cache = TestDevice.Upload(p.CacheImage(p.Pos0));
            using var cur = TestDevice.Upload(p.Cache.AsSpan(p.Pos0 * s.Row, p.Tokens * s.Row).ToArray());
            using var pos = TestDevice.Upload(p.Positions);
            using var q = TestDevice.Upload(p.Q);
            using var qAbs = TestDevice.PoisonedFloats((long)p.Tokens * s.Heads * s.Row);
            using var oLat = TestDevice.PoisonedFloats((long)p.Tokens * s.Heads * s.Rank);
            using var y = TestDevice.PoisonedFloats((long)p.Tokens * s.Heads * s.VDim);
            var st = acc.DefaultStream;
            var kernel = Kernel();
            lock (kernel)
            {
                kernel.Append(st, cur.View, s.Row, cur.View.SubView(s.Rank, cur.Length - s.Rank), s.Row, pos.View, cache.View, p.Tokens, s.Rank, s.RopeDim, p.MaxSeq);
                Absorb<TW>().AbsorbQ(st, q.View, w, qAbs.View, p.Tokens, s.Heads, s.Rank, s.RopeDim, s.NopeDim, s.VDim);
                kernel.Attention(st, qAbs.View, cache.View, pos.View, oLat.View, p.Tokens, s.Heads, s.Rank, s.RopeDim, p.MaxSeq, (float)p.Scale, version);
                Absorb<TW>().AbsorbV(st, oLat.View, w, y.View, p.Tokens, s.Heads, s.Rank, s.RopeDim, s.NopeDim, s.VDim);
                acc.Synchronize();
            }

            return y.GetAsArray1D();
        }
    }

    [Test]
    public void DecodeStepsAfterAPrefillMatchTheExpandedAttention()
    {
        // The runtime's sequence on one cache: a prefill of 4 tokens, then 3 decode steps, each appending its row and
        // attending with the position read from the same device buffer (what a replayed graph does), V2Split with
        // 5-key splits (a new split starts at position 5) and the V2Wide absorbs. Every step's output is checked
        // against the expanded formula over the rows so far.
        var s = Odd;
        int prefill = 4, steps = 3;
        var all = Problem.Random(1234, s, prefill + steps, 0, maxSeq: 12);
        var acc = TestDevice.Accelerator;
        var st = acc.DefaultStream;
        using var w = TestDevice.Upload(all.KvB);
        var kvB = new F32Weights(w.View);
        using var cache = TestDevice.PoisonedFloats((long)all.MaxSeq * s.Row);
        using var pos = TestDevice.Upload(new int[prefill]);
        using var qAbs = TestDevice.PoisonedFloats((long)prefill * s.Heads * s.Row);
        using var oLat = TestDevice.PoisonedFloats((long)prefill * s.Heads * s.Rank);
        using var y = TestDevice.PoisonedFloats((long)prefill * s.Heads * s.VDim);
        var kernel = Kernel();
        lock (kernel)
        {
            kernel.KeysPerSplitOverride = 5;
            try
            {
                for (int step = 0; step <= steps; step++)
                {
                    int t0 = step == 0 ? 0 : prefill + step - 1, tokens = step == 0 ? prefill : 1;
                    pos.View.SubView(0, tokens).CopyFromCPU(Enumerable.Range(t0, tokens).ToArray());
                    using var row = TestDevice.Upload(all.Cache.AsSpan(t0 * s.Row, tokens * s.Row).ToArray());
                    using var q = TestDevice.Upload(all.Q.AsSpan(t0 * s.Heads * s.QkDim, tokens * s.Heads * s.QkDim).ToArray());
                    kernel.Append(st, row.View, s.Row, row.View.SubView(s.Rank, row.Length - s.Rank), s.Row, pos.View, cache.View, tokens, s.Rank, s.RopeDim, all.MaxSeq);
                    Absorb<F32Weights>().AbsorbQ(st, q.View, kvB, qAbs.View, tokens, s.Heads, s.Rank, s.RopeDim, s.NopeDim, s.VDim);
                    kernel.Attention(st, qAbs.View, cache.View, pos.View, oLat.View, tokens, s.Heads, s.Rank, s.RopeDim, all.MaxSeq, (float)all.Scale);
                    Absorb<F32Weights>().AbsorbV(st, oLat.View, kvB, y.View, tokens, s.Heads, s.Rank, s.RopeDim, s.NopeDim, s.VDim);
                    acc.Synchronize();
                    var want = (all with { Tokens = tokens, Pos0 = t0, Q = all.Q.AsSpan(t0 * s.Heads * s.QkDim, tokens * s.Heads * s.QkDim).ToArray() }).Expanded(all.KvB);
                    Check.Close(want, y.GetAsArray1D().AsSpan(0, tokens * s.Heads * s.VDim), 1e-5, 1e-5, $"step {step} (positions {t0}..{t0 + tokens - 1})");
                }
            }
            finally
            {
                kernel.KeysPerSplitOverride = null;
            }
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    [Test]
    public void BadArgumentsThrowArgumentException()
    {
        var acc = TestDevice.Accelerator;
        var st = acc.DefaultStream;
        using var big = acc.Allocate1D<float>(4096);
        using var pos = TestDevice.Upload(new[] { 0, 1 });
        var k = Kernel();
        var v = big.View;
        // cache too short for maxSeq 100 rows of 48
        Assert.Throws<ArgumentException>(() => k.Attention(st, v, v, pos.View, v, 1, 3, 40, 8, 100, 0.2f));
        // scale not positive
        Assert.Throws<ArgumentException>(() => k.Attention(st, v, v, pos.View, v, 1, 3, 40, 8, 10, 0f));
        // V2Split with R not a multiple of 4
        var odd = Assert.Throws<ArgumentException>(() => k.Attention(st, v, v, pos.View, v, 1, 3, 13, 3, 10, 0.2f, MlaAttentionVersion.V2Split))!;
        Assert.That(odd.Message, Does.Contain("V2Split"));
        // misaligned cache
        var mis = Assert.Throws<ArgumentException>(() =>
            k.Attention(st, v, v.SubView(1, 2000), pos.View, v, 1, 3, 40, 8, 10, 0.2f, MlaAttentionVersion.V2Split))!;
        Assert.That(mis.Message, Does.Contain("cache"));
        // positions shorter than T
        Assert.Throws<ArgumentException>(() => k.Attention(st, v, v, pos.View, v, 3, 3, 40, 8, 10, 0.2f));
        // append: a stride shorter than R
        Assert.Throws<ArgumentException>(() => k.Append(st, v, 30, v, 8, pos.View, v, 2, 40, 8, 10));
        // absorb: kv_b_proj too short for H * (Dn + Dv) rows of R
        var absorb = Absorb<F32Weights>();
        using var small = acc.Allocate1D<float>(100);
        var w = Assert.Throws<ArgumentException>(() => absorb.AbsorbQ(st, v, new F32Weights(small.View), v, 1, 3, 40, 8, 12, 10))!;
        Assert.That(w.Message, Does.Contain("kvB"));
        Assert.Throws<ArgumentException>(() => absorb.AbsorbV(st, v, new F32Weights(v), v, 1, 3, 40, 8, 0, 10));
        // V2Wide reads o_lat as 16-byte quads: a view starting at element 1 is refused (a misaligned-address fault on a GPU)
        var lat = Assert.Throws<ArgumentException>(() =>
            absorb.AbsorbV(st, v.SubView(1, 1000), new F32Weights(v), v, 1, 3, 40, 8, 12, 10, MlaAbsorbVVersion.V2Wide))!;
        Assert.That(lat.Message, Does.Contain("oLat"));
        var qa = Assert.Throws<ArgumentException>(() =>
            k.Attention(st, v.SubView(1, 2000), v, pos.View, v, 1, 3, 40, 8, 10, 0.2f, MlaAttentionVersion.V2Split))!;
        Assert.That(qa.Message, Does.Contain("qAbs"));
    }

    [Test]
    public void DecodeScratchIsSizedByMaxSeq()
    {
        // V3: H 128, R 512 at maxSeq 32768 -> 128 splits of 256 keys: 128 * 128 * 514 floats.
        Assert.That(MlaAttentionKernel.DecodeScratchBytes(128, 512, 32768), Is.EqualTo(4L * 128 * 128 * 514));
        Assert.That(MlaAttentionKernel.CacheElements(4096, 512, 64), Is.EqualTo(4096L * 576));
    }
}
