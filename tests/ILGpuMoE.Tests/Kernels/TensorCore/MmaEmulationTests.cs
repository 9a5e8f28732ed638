using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.TensorCore;

/// <summary>
/// The CPU emulation of mma.sync m16n8k16, ldmatrix and cp.async (kernels/ILGpuMoE.Kernels/TensorCore/Mma.cs) against
/// plain matrix products, for every fragment layout the primitives claim. The test kernels place values in registers by
/// the PTX ISA's layouts as written out here (independently of Mma.cs): a wrong register or half anywhere in the
/// emulation changes the product, so each test can fail.
/// </summary>
public class MmaEmulationTests
{
    // A [16, 16] row-major and B [16, 8] (k x n) as 16-bit bits, C [16, 8] f32, all one warp.
    private static void MmaFromLayouts<TM>(ArrayView<ushort> a, ArrayView<ushort> b, ArrayView<float> c, ArrayView<float> d)
        where TM : struct, IMmaType
    {
        int lane = Group.IdxX;
        int g = lane >> 2, t = lane & 3;
        var fa = new Frag4(RowPair(a, g, 2 * t), RowPair(a, g + 8, 2 * t), RowPair(a, g, 2 * t + 8), RowPair(a, g + 8, 2 * t + 8));
        var fb = new Frag2(ColumnPair(b, 2 * t, g), ColumnPair(b, 2 * t + 8, g));
        var acc = new Acc4 { C0 = c[g * 8 + 2 * t], C1 = c[g * 8 + 2 * t + 1], C2 = c[(g + 8) * 8 + 2 * t], C3 = c[(g + 8) * 8 + 2 * t + 1] };
        acc = default(TM).Mma(acc, fa, fb);
        d[g * 8 + 2 * t] = acc.C0;
        d[g * 8 + 2 * t + 1] = acc.C1;
        d[(g + 8) * 8 + 2 * t] = acc.C2;
        d[(g + 8) * 8 + 2 * t + 1] = acc.C3;
    }

    /// <summary>Values (k, k+1) of row r of a row-major [16, 16] matrix, k in the low half.</summary>
    private static uint RowPair(ArrayView<ushort> m, int r, int k) => m[r * 16 + k] | ((uint)m[r * 16 + k + 1] << 16);

    /// <summary>Values (k, k+1) of column n of a row-major [16, 8] matrix, k in the low half.</summary>
    private static uint ColumnPair(ArrayView<ushort> m, int k, int n) => m[k * 8 + n] | ((uint)m[(k + 1) * 8 + n] << 16);

    // X [16, 16] and W [16, 16] (two 8-row n tiles) row-major, copied word by word into shared rows padded to `ld` words;
    // ldmatrix .x4 gives A (X) and both B fragments (W); out = the four registers of every lane (frag[lane*4 + i]),
    // d [16, 16] = X W^T + 0 through two mmas.
    private static void LdmatrixChain<TM>(ArrayView<uint> x, ArrayView<uint> w, ArrayView<uint> frag, ArrayView<float> d, int ld)
        where TM : struct, IMmaType
    {
        var s = SharedWords.Dynamic();
        int lane = Group.IdxX;
        for (int i = lane; i < 16 * 8; i += 32)
        {
            s.View[(i >> 3) * ld + (i & 7)] = x[i];
            s.View[(16 + (i >> 3)) * ld + (i & 7)] = w[i];
        }

        Group.Barrier();
        var fa = Ldmatrix.X4(s, (lane & 15) * ld + (lane >> 4) * 4);
        // W rows n0..n0+7 at k 0 / 8, then rows n0+8..n0+15 at k 0 / 8.
        int wRow = 16 + ((lane >> 4) << 3) + (lane & 7);
        var fw = Ldmatrix.X4(s, wRow * ld + ((lane >> 3) & 1) * 4);
        frag[lane * 4] = fa.R0;
        frag[lane * 4 + 1] = fa.R1;
        frag[lane * 4 + 2] = fa.R2;
        frag[lane * 4 + 3] = fa.R3;
        int g = lane >> 2, t = lane & 3;
        var lo = default(TM).Mma(default, fa, fw.Lo);
        var hi = default(TM).Mma(default, fa, fw.Hi);
        d[g * 16 + 2 * t] = lo.C0;
        d[g * 16 + 2 * t + 1] = lo.C1;
        d[(g + 8) * 16 + 2 * t] = lo.C2;
        d[(g + 8) * 16 + 2 * t + 1] = lo.C3;
        d[g * 16 + 8 + 2 * t] = hi.C0;
        d[g * 16 + 8 + 2 * t + 1] = hi.C1;
        d[(g + 8) * 16 + 8 + 2 * t] = hi.C2;
        d[(g + 8) * 16 + 8 + 2 * t + 1] = hi.C3;

        // .x2 over the first 16 rows of X's left half: R0 = rows 0-7, R1 = rows 8-15 (lanes 16-31 repeat lanes 0-15).
        var f2 = Ldmatrix.X2(s, (lane & 15) * ld);
        frag[128 + lane * 2] = f2.R0;
        frag[128 + lane * 2 + 1] = f2.R1;
    }

    // Each lane copies 16 bytes (words 4*lane .. 4*lane+3) of src into shared at a 16-byte rotated slot, every third
    // lane as the zero-fill form; out = shared, read back after wait + barrier.
    private static void CopyAsync(ArrayView<uint> dummy, GlobalWords src, ArrayView<uint> outWords)
    {
        var s = SharedWords.Dynamic();
        int lane = Group.IdxX;
        int slot = (lane + 5) & 31;
        CpAsync.Copy16(s, slot * 4, src, lane * 4L, lane % 3 != 2);
        CpAsync.Commit();
        CpAsync.Wait(0);
        Group.Barrier();
        for (int i = 0; i < 4; i++)
            outWords[slot * 4 + i] = s.View[slot * 4 + i];
    }

    private static ushort[] Bits(float[] v, bool bf16) =>
        v.Select(x => bf16 ? BF16.FromFloat(x) : BitConverter.HalfToUInt16Bits((System.Half)x)).ToArray();

    private static float Widen(ushort bits, bool bf16) => bf16 ? BF16.ToFloat(bits) : (float)BitConverter.UInt16BitsToHalf(bits);

    private static void Run<TM>(bool bf16, int seed)
        where TM : struct, IMmaType
    {
        var acc = TestDevice.Accelerator;
        var a = Bits(Data.Uniform(seed, 256), bf16);
        var b = Bits(Data.Uniform(seed + 1, 128), bf16);
        var c = Data.Uniform(seed + 2, 128);
        using var aBuf = TestDevice.Upload(a);
        using var bBuf = TestDevice.Upload(b);
        using var cBuf = TestDevice.Upload(c);
        using var dBuf = TestDevice.PoisonedFloats(128);
        var kernel = acc.LoadStreamKernel<ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>>(MmaFromLayouts<TM>);
        kernel(new KernelConfig(1, 32), aBuf.View, bBuf.View, cBuf.View, dBuf.View);
        acc.Synchronize();
        var got = dBuf.GetAsArray1D();

        var expected = new float[128];
        for (int r = 0; r < 16; r++)
        {
            for (int n = 0; n < 8; n++)
            {
                double sum = c[r * 8 + n];
                for (int k = 0; k < 16; k++)
                    sum += (double)Widen(a[r * 16 + k], bf16) * Widen(b[k * 8 + n], bf16);
                expected[r * 8 + n] = (float)sum;
            }
        }

        // 16 exact products summed in f32: a few ulps of the magnitudes involved.
        Check.Close(expected, got, 1e-6, 4e-6, $"mma {(bf16 ? "bf16" : "f16")}");
    }

    [Test]
    public void Bf16MmaMatchesAPlainProductThroughTheDocumentedLayouts() => Run<Bf16Mma>(bf16: true, seed: 31);

    [Test]
    public void F16MmaMatchesAPlainProductThroughTheDocumentedLayouts() => Run<F16Mma>(bf16: false, seed: 37);

    [TestCase(true, 8)]
    [TestCase(true, 12)]
    [TestCase(false, 12)]
    public void LdmatrixGivesTheDocumentedFragmentsAndTheChainGivesXWt(bool bf16, int ld)
    {
        var acc = TestDevice.Accelerator;
        var xh = Bits(Data.Uniform(41 + ld, 256), bf16);
        var wh = Bits(Data.Uniform(43 + ld, 256), bf16);
        uint[] Words(ushort[] h) => Enumerable.Range(0, h.Length / 2).Select(i => h[2 * i] | ((uint)h[2 * i + 1] << 16)).ToArray();
        using var xBuf = TestDevice.Upload(Words(xh));
        using var wBuf = TestDevice.Upload(Words(wh));
        using var fragBuf = TestDevice.Upload(Enumerable.Repeat(0xDEADBEEFu, 128 + 64).ToArray());
        using var dBuf = TestDevice.PoisonedFloats(256);
        var config = new KernelConfig(new Index1D(1), new Index1D(32), SharedMemoryConfig.RequestDynamic<uint>(32 * ld));
        if (bf16)
            acc.LoadStreamKernel<ArrayView<uint>, ArrayView<uint>, ArrayView<uint>, ArrayView<float>, int>(LdmatrixChain<Bf16Mma>)(config, xBuf.View, wBuf.View, fragBuf.View, dBuf.View, ld);
        else
            acc.LoadStreamKernel<ArrayView<uint>, ArrayView<uint>, ArrayView<uint>, ArrayView<float>, int>(LdmatrixChain<F16Mma>)(config, xBuf.View, wBuf.View, fragBuf.View, dBuf.View, ld);
        acc.Synchronize();
        var frag = fragBuf.GetAsArray1D();
        var d = dBuf.GetAsArray1D();

        uint Pair(ushort[] m, int r, int k) => m[r * 16 + k] | ((uint)m[r * 16 + k + 1] << 16);
        for (int lane = 0; lane < 32; lane++)
        {
            int g = lane >> 2, t = lane & 3;
            uint[] want = [Pair(xh, g, 2 * t), Pair(xh, g + 8, 2 * t), Pair(xh, g, 2 * t + 8), Pair(xh, g + 8, 2 * t + 8)];
            for (int i = 0; i < 4; i++)
                Assert.That(frag[lane * 4 + i], Is.EqualTo(want[i]), $"x4 lane {lane} R{i}");
            Assert.That(frag[128 + lane * 2], Is.EqualTo(Pair(xh, g, 2 * t)), $"x2 lane {lane} R0");
            Assert.That(frag[128 + lane * 2 + 1], Is.EqualTo(Pair(xh, g + 8, 2 * t)), $"x2 lane {lane} R1");
        }

        var expected = new float[256];
        for (int r = 0; r < 16; r++)
        {
            for (int n = 0; n < 16; n++)
            {
                double sum = 0;
                for (int k = 0; k < 16; k++)
                    sum += (double)Widen(xh[r * 16 + k], bf16) * Widen(wh[n * 16 + k], bf16);
                expected[r * 16 + n] = (float)sum;
            }
        }

        Check.Close(expected, d, 1e-6, 4e-6, $"ldmatrix + mma ld={ld}");
    }

    [Test]
    public void CpAsyncCopiesSixteenBytesAndZeroFills()
    {
        var acc = TestDevice.Accelerator;
        var src = Enumerable.Range(0, 128).Select(i => (uint)(i * 2654435761u) | 1u).ToArray();
        using var srcBuf = TestDevice.Upload(src);
        using var outBuf = TestDevice.Upload(Enumerable.Repeat(0xDEADBEEFu, 128).ToArray());
        var config = new KernelConfig(new Index1D(1), new Index1D(32), SharedMemoryConfig.RequestDynamic<uint>(128));
        acc.LoadStreamKernel<ArrayView<uint>, GlobalWords, ArrayView<uint>>(CopyAsync)(config, srcBuf.View, GlobalWords.Of(srcBuf.View), outBuf.View);
        acc.Synchronize();
        var got = outBuf.GetAsArray1D();
        for (int lane = 0; lane < 32; lane++)
        {
            int slot = (lane + 5) & 31;
            for (int i = 0; i < 4; i++)
                Assert.That(got[slot * 4 + i], Is.EqualTo(lane % 3 != 2 ? src[lane * 4 + i] : 0u), $"lane {lane} word {i}");
        }
    }

    [Test]
    public void HalfRoundingMatchesTheHostsRoundToNearestEven()
    {
        var rng = new Random(5);
        float[] special = [0f, -0f, 1f, 1.00390625f, 1.005859375f, 3.0e38f, float.PositiveInfinity, float.NegativeInfinity, 1e-40f,
            65504f, 65519f, 65520f, -65520f, 6.103515625e-05f, 6.0975552e-05f, 5.9604645e-08f, 2.9802322e-08f, 2.9802326e-08f, 8.940697e-08f];
        foreach (float x in special.Concat(Enumerable.Range(0, 40000).Select(_ => (float)((rng.NextDouble() - 0.5) * Math.Pow(2, rng.Next(-30, 30))))))
        {
            Assert.That(Half16.Bf16Bits(x), Is.EqualTo((uint)BF16.FromFloat(x)), $"bf16 {x:R}");
            Assert.That(Half16.F16Bits(x), Is.EqualTo((uint)BitConverter.HalfToUInt16Bits((System.Half)x)), $"f16 {x:R}");
            uint p = Half16.PackBf16(x, -x);
            Assert.That(Half16.WidenBf16(p, 0), Is.EqualTo(BF16.ToFloat(BF16.FromFloat(x))), $"widen bf16 {x:R}");
            Assert.That(Half16.WidenBf16(p, 1), Is.EqualTo(BF16.ToFloat(BF16.FromFloat(-x))), $"widen bf16 {-x:R}");
        }

        Assert.That(float.IsNaN(Half16.WidenBf16(Half16.PackBf16(float.NaN, 0f), 0)), "NaN stays NaN");
    }
}
