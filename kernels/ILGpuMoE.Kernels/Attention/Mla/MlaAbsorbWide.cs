// attention/mla-absorb-q V2Wide and attention/mla-absorb-v V2Wide: the decode versions of MLA's weight absorption,
// reading kv_b_proj [H * (Dn + Dv), R] as 16-byte words (4 f32 or 8 f16/bf16 per ld.global.v4). At V3's shapes the
// two absorptions read W_UK and W_UV once per step: 2 * 128 * 128 * 512 bf16 = 33.5 MB per layer, more than the
// latent cache at 4K context (9.4 MB), so their load width matters as much as the attention's.
//   absorb-q V2Wide  thread per (token, head, 16-byte unit of R): walks the Dn rows of W_UK[h] at the same unit
//                    (consecutive threads read consecutive units of a row: 512 contiguous bytes per warp load) and
//                    accumulates unit-width outputs of W_UK^T q_nope in registers (q[t, h, i] is the same address
//                    for every thread of the head: a broadcast). The Dr rope floats are copied by Dr more threads.
//   absorb-v V2Wide  warp per (token, head, output dim d): lanes over the row's units (MatMul GEMV-V2's loop), each
//                    unit dotted with o_lat read as 16-byte quads too (scalar o_lat loads were two thirds of the
//                    loop's bytes at bf16), then a shuffle butterfly.
// Needs R * sizeof(weight) a multiple of 16 bytes and kv_b_proj's view on a 16-byte boundary
// (MatMulKernel<TW>.TryGetWide), and for absorb-v o_lat on a 16-byte boundary; the launcher falls back to V1 otherwise.
using ILGPU;
using ILGpuMoE.Kernels.Dense;

namespace ILGpuMoE.Kernels.Attention.Mla;

/// <summary>Up to 8 outputs of one 16-byte weight unit (4 used for f32).</summary>
public struct MlaUnitAcc
{
    public float V0, V1, V2, V3, V4, V5, V6, V7;
}

/// <summary>
/// One 16-byte word of weights (memory order: element 0 is the low half of A): acc[v] += w[v] * x (absorb-q), or the
/// dot with x[4 * quad ..] read as 16-byte quads (absorb-v: the activations load as wide as the weights).
/// </summary>
internal interface IWideAxpy
{
    int Elements { get; }

    void Axpy(Wide16 w, float x, ref MlaUnitAcc acc);

    float Dot(Wide16 w, ArrayView<MlaQuad> x, int quad);
}

internal readonly struct F32Axpy : IWideAxpy
{
    public int Elements => 4;

    public void Axpy(Wide16 w, float x, ref MlaUnitAcc acc)
    {
        acc.V0 += Interop.IntAsFloat(w.A) * x;
        acc.V1 += Interop.IntAsFloat(w.B) * x;
        acc.V2 += Interop.IntAsFloat(w.C) * x;
        acc.V3 += Interop.IntAsFloat(w.D) * x;
    }

    public float Dot(Wide16 w, ArrayView<MlaQuad> x, int quad)
    {
        var a = x[quad];
        return Interop.IntAsFloat(w.A) * a.X + Interop.IntAsFloat(w.B) * a.Y + Interop.IntAsFloat(w.C) * a.Z + Interop.IntAsFloat(w.D) * a.W;
    }
}

internal readonly struct BF16Axpy : IWideAxpy
{
    public int Elements => 8;

    // bf16 is the top half of an f32: the low value of a word after a shift, the high one after a mask.
    public void Axpy(Wide16 w, float x, ref MlaUnitAcc acc)
    {
        acc.V0 += Interop.IntAsFloat(w.A << 16) * x;
        acc.V1 += Interop.IntAsFloat(w.A & 0xFFFF0000u) * x;
        acc.V2 += Interop.IntAsFloat(w.B << 16) * x;
        acc.V3 += Interop.IntAsFloat(w.B & 0xFFFF0000u) * x;
        acc.V4 += Interop.IntAsFloat(w.C << 16) * x;
        acc.V5 += Interop.IntAsFloat(w.C & 0xFFFF0000u) * x;
        acc.V6 += Interop.IntAsFloat(w.D << 16) * x;
        acc.V7 += Interop.IntAsFloat(w.D & 0xFFFF0000u) * x;
    }

    public float Dot(Wide16 w, ArrayView<MlaQuad> x, int quad)
    {
        MlaQuad a = x[quad], b = x[quad + 1];
        return Interop.IntAsFloat(w.A << 16) * a.X + Interop.IntAsFloat(w.A & 0xFFFF0000u) * a.Y
            + Interop.IntAsFloat(w.B << 16) * a.Z + Interop.IntAsFloat(w.B & 0xFFFF0000u) * a.W
            + (Interop.IntAsFloat(w.C << 16) * b.X + Interop.IntAsFloat(w.C & 0xFFFF0000u) * b.Y
               + Interop.IntAsFloat(w.D << 16) * b.Z + Interop.IntAsFloat(w.D & 0xFFFF0000u) * b.W);
    }
}

internal readonly struct F16Axpy : IWideAxpy
{
    public int Elements => 8;

    public void Axpy(Wide16 w, float x, ref MlaUnitAcc acc)
    {
        acc.V0 += Low(w.A) * x;
        acc.V1 += High(w.A) * x;
        acc.V2 += Low(w.B) * x;
        acc.V3 += High(w.B) * x;
        acc.V4 += Low(w.C) * x;
        acc.V5 += High(w.C) * x;
        acc.V6 += Low(w.D) * x;
        acc.V7 += High(w.D) * x;
    }

    public float Dot(Wide16 w, ArrayView<MlaQuad> x, int quad)
    {
        MlaQuad a = x[quad], b = x[quad + 1];
        return Low(w.A) * a.X + High(w.A) * a.Y + Low(w.B) * a.Z + High(w.B) * a.W
            + (Low(w.C) * b.X + High(w.C) * b.Y + Low(w.D) * b.Z + High(w.D) * b.W);
    }

    private static float Low(uint bits) => (float)Interop.IntAsFloat((ushort)(bits & 0xFFFFu));

    private static float High(uint bits) => (float)Interop.IntAsFloat((ushort)(bits >> 16));
}

public static class MlaAbsorbWide
{
    private const string QLaunch = "grid ceil(T*H*(R/unit+Dr)/256), group 256";
    private const string VLaunch = "grid ceil(T*H*Dv/8), group 256 (8 warps, one output each)";

    [KernelInfo(MlaAbsorbQVersion.V2Wide, QLaunch, Reader = "f32", WideViews = ["w:16"], BlockSize = Devices.MaxGroupSize, Decode = DecodeUse.Weights,
        Summary = "W_UK^T q_nope with 16-byte weight units (4 f32), thread per unit, rows walked in registers")]
    public static void AbsorbQF32(ArrayView<float> q, ArrayView<Wide16> w, ArrayView<float> qAbs, MlaParams p) => AbsorbQ<F32Axpy>(q, w, qAbs, p);

    [KernelInfo(MlaAbsorbQVersion.V2Wide, QLaunch, Reader = "f16", WideViews = ["w:16"], BlockSize = Devices.MaxGroupSize, Decode = DecodeUse.Weights,
        Summary = "W_UK^T q_nope with 16-byte weight units (8 f16), thread per unit, rows walked in registers")]
    public static void AbsorbQF16(ArrayView<float> q, ArrayView<Wide16> w, ArrayView<float> qAbs, MlaParams p) => AbsorbQ<F16Axpy>(q, w, qAbs, p);

    [KernelInfo(MlaAbsorbQVersion.V2Wide, QLaunch, Reader = "bf16", WideViews = ["w:16"], BlockSize = Devices.MaxGroupSize, Decode = DecodeUse.Weights,
        Summary = "W_UK^T q_nope with 16-byte weight units (8 bf16), thread per unit, rows walked in registers")]
    public static void AbsorbQBF16(ArrayView<float> q, ArrayView<Wide16> w, ArrayView<float> qAbs, MlaParams p) => AbsorbQ<BF16Axpy>(q, w, qAbs, p);

    [KernelInfo(MlaAbsorbVVersion.V2Wide, VLaunch, Reader = "f32", WideViews = ["w:16", "oLat:16"], BlockSize = Devices.MaxGroupSize, Decode = DecodeUse.Weights,
        Summary = "W_UV o_lat: warp per output, 16-byte weight loads (4 f32 per lane per step)")]
    public static void AbsorbVF32(ArrayView<MlaQuad> oLat, ArrayView<Wide16> w, ArrayView<float> output, MlaParams p) => AbsorbV<F32Axpy>(oLat, w, output, p);

    [KernelInfo(MlaAbsorbVVersion.V2Wide, VLaunch, Reader = "f16", WideViews = ["w:16", "oLat:16"], BlockSize = Devices.MaxGroupSize, Decode = DecodeUse.Weights,
        Summary = "W_UV o_lat: warp per output, 16-byte weight loads (8 f16 per lane per step)")]
    public static void AbsorbVF16(ArrayView<MlaQuad> oLat, ArrayView<Wide16> w, ArrayView<float> output, MlaParams p) => AbsorbV<F16Axpy>(oLat, w, output, p);

    [KernelInfo(MlaAbsorbVVersion.V2Wide, VLaunch, Reader = "bf16", WideViews = ["w:16", "oLat:16"], BlockSize = Devices.MaxGroupSize, Decode = DecodeUse.Weights,
        Summary = "W_UV o_lat: warp per output, 16-byte weight loads (8 bf16 per lane per step)")]
    public static void AbsorbVBF16(ArrayView<MlaQuad> oLat, ArrayView<Wide16> w, ArrayView<float> output, MlaParams p) => AbsorbV<BF16Axpy>(oLat, w, output, p);

    private static void AbsorbQ<TDec>(ArrayView<float> q, ArrayView<Wide16> w, ArrayView<float> qAbs, MlaParams p)
        where TDec : struct, IWideAxpy
    {
        var dec = default(TDec);
        int ev = dec.Elements;
        int units = p.Rank / ev;
        int per = units + p.RopeDim; // threads per (token, head)
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)p.Tokens * p.Heads * per)
            return;
        long th = index / per;
        int u = (int)(index - th * per);
        int h = (int)(th % p.Heads);
        long qBase = th * (p.NopeDim + p.RopeDim);
        long oBase = th * (p.Rank + p.RopeDim);
        if (u >= units)
        {
            int i = u - units;
            qAbs[oBase + p.Rank + i] = q[qBase + p.NopeDim + i];
            return;
        }

        // W_UK[h] [Dn, R] as [Dn, units] words: this thread's column of words, one row step = `units` words.
        var rows = w.SubView((long)h * (p.NopeDim + p.VDim) * units, (long)p.NopeDim * units);
        var acc = default(MlaUnitAcc);
        int at = u;
        for (int i = 0; i < p.NopeDim; i++)
        {
            dec.Axpy(rows[at], q[qBase + i], ref acc);
            at += units;
        }

        long o = oBase + (long)u * ev;
        qAbs[o] = acc.V0;
        qAbs[o + 1] = acc.V1;
        qAbs[o + 2] = acc.V2;
        qAbs[o + 3] = acc.V3;
        if (ev == 8)
        {
            qAbs[o + 4] = acc.V4;
            qAbs[o + 5] = acc.V5;
            qAbs[o + 6] = acc.V6;
            qAbs[o + 7] = acc.V7;
        }
    }

    private static void AbsorbV<TDec>(ArrayView<MlaQuad> oLat, ArrayView<Wide16> w, ArrayView<float> output, MlaParams p)
        where TDec : struct, IWideAxpy
    {
        var dec = default(TDec);
        int ev = dec.Elements;
        int units = p.Rank / ev;
        if (!MlaKernels.AbsorbVRow(p, out long index, out long th, out long wRow))
            return; // a whole warp: the shuffles below see every lane
        var row = w.SubView(wRow * units, units);
        var x = oLat.SubView(th * (p.Rank >> 2), p.Rank >> 2);
        int quadsPerUnit = ev >> 2;
        float acc = 0f;
        for (int j = Warp.LaneIdx; j < units; j += Warp.WarpSize)
            acc += dec.Dot(row[j], x, j * quadsPerUnit);
        MlaKernels.WarpSumStore(acc, output, index);
    }
}
