// Tensor-core primitives for ILGPU kernels: mma.sync m16n8k16 (BF16 / F16 in, F32 accumulate), ldmatrix, cp.async,
// each with a fragment-exact emulation that runs on ILGPU's CPU accelerator.
//
// ILGPU has no tensor-core API: on CUDA these are inline PTX (CudaAsm), guarded by CudaAsm.IsSupported; everywhere
// else the same call runs the emulation, in which each lane holds exactly the registers PTX's documented fragment
// layouts give it and gets the others' values only through warp shuffles. So a kernel's tiling, pipeline indexing,
// bounds and epilogue are tested on the CPU against the oracle with the very data movement the GPU will do; only the
// matrix instruction itself is replaced. The PTX keeps both paths (ptxas drops the dead one: the PTX backend folds
// IsSupported to true).
//
// Fragment layouts of mma.sync.aligned.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), for lane l of the warp,
// g = l >> 2 (the group id), t = l & 3 (the thread in the group). Each register holds two 16-bit values, the lower
// column (A, C) or row (B) in the low half:
//   A  16 x 16, row-major  (Frag4): R0 = A[g][2t..2t+1],     R1 = A[g+8][2t..2t+1],
//                                  R2 = A[g][2t+8..2t+9],   R3 = A[g+8][2t+8..2t+9]
//   B  16 x 8 (k x n), "col" (Frag2): R0 = B[2t..2t+1][g],   R1 = B[2t+8..2t+9][g]
//   C, D  16 x 8 f32       (Acc4): C0 = D[g][2t], C1 = D[g][2t+1], C2 = D[g+8][2t], C3 = D[g+8][2t+1]
// A GEMM C = X W^T with X [M, K] and W [N, K] both row-major (HF's [out, in] weights) reads X tiles as A and W tiles
// as B without transposes: B's "column" n is W's row n.
//
// ldmatrix.sync.aligned.m8n8.x4 (x2): lanes 8i..8i+7 (i < 4; i < 2 for x2) give the shared addresses of the 8 rows
// (16 bytes each) of matrix i; lane l receives register Ri = matrix i's row l >> 2, 16-bit columns 2t..2t+1. With lane
// l pointing at row (l & 15), column 8 (l >> 4) of a 16 x 16 tile, .x4 yields that tile's A fragment; pointing lanes
// 0-7 / 8-15 / 16-23 / 24-31 at rows n0..n0+7 of W columns k0, k0+8 and rows n0+8..n0+15 columns k0, k0+8 yields the B
// fragments of two 8-wide n tiles (R0, R1 and R2, R3).
//
// Shared memory: ILGPU gives no address of a shared view, so the tensor-core kernels use the dynamic shared array only
// (ILGPU always names it __dyn_shared_alloca) seen as 32-bit words, and SharedWords.Dynamic() reads its base address
// with one mov. Global addresses for cp.async come from the host (GlobalWords.Of: the view's device address), since
// ILGPU cannot take an address inside a kernel either.
//
// ILGPU passes every inline-asm operand through a .local slot; kernels/ILGpuMoE.Kernels/TensorCore's loader turns
// those slots back into registers before the PTX is loaded (and the PTX export does the same), so the SASS gate can
// demand 0 bytes of local memory of every tensor-core kernel.
//
// The emulation's arithmetic: the products of two BF16 or two F16 values are exact in F32; each output sums its 16
// products in k order in F32 and then adds C. The hardware's order within the 16 is not specified; the difference is
// a rounding of the 16-term sum.
//
// cp.async's emulation copies at once: a kernel that read a stage before waiting for it would pass on the CPU and fail
// on the GPU, so kernels keep the usual discipline (commit, wait_group, then Group.Barrier before reading a stage).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace ILGpuMoE.Kernels.TensorCore;

/// <summary>Four 32-bit registers of a lane: an A fragment (16 x 16) or two B fragments (ldmatrix .x4).</summary>
public struct Frag4
{
    public uint R0, R1, R2, R3;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Frag4(uint r0, uint r1, uint r2, uint r3)
    {
        R0 = r0;
        R1 = r1;
        R2 = r2;
        R3 = r3;
    }

    /// <summary>R0, R1: the first 8-wide B fragment of an .x4 load over 16 W rows.</summary>
    public readonly Frag2 Lo => new(R0, R1);

    /// <summary>R2, R3: the second 8-wide B fragment.</summary>
    public readonly Frag2 Hi => new(R2, R3);
}

/// <summary>Two 32-bit registers of a lane: a B fragment (16 x 8).</summary>
public struct Frag2
{
    public uint R0, R1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Frag2(uint r0, uint r1)
    {
        R0 = r0;
        R1 = r1;
    }
}

/// <summary>A lane's four F32 accumulators of a 16 x 8 C/D tile.</summary>
public struct Acc4
{
    public float C0, C1, C2, C3;
}

/// <summary>The 16-bit input type of an mma: a kernel generic over it gets one copy per type.</summary>
public interface IMmaType
{
    /// <summary>d = a b + c for one m16n8k16 tile.</summary>
    Acc4 Mma(Acc4 c, Frag4 a, Frag2 b);

    /// <summary>Two floats rounded to nearest-even 16-bit values, packed (first in the low half).</summary>
    uint Pack(float lo, float hi);

    /// <summary>The low (0) or high (1) 16-bit value of a packed register, widened.</summary>
    float Widen(uint packed, int half);
}

/// <summary>BF16 inputs (mma .bf16).</summary>
public readonly struct Bf16Mma : IMmaType
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Acc4 Mma(Acc4 c, Frag4 a, Frag2 b) => TensorCore.Mma.Bf16(c, a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public uint Pack(float lo, float hi) => Half16.PackBf16(lo, hi);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Widen(uint packed, int half) => Half16.WidenBf16(packed, half);
}

/// <summary>F16 inputs (mma .f16).</summary>
public readonly struct F16Mma : IMmaType
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Acc4 Mma(Acc4 c, Frag4 a, Frag2 b) => TensorCore.Mma.F16(c, a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public uint Pack(float lo, float hi) => Half16.PackF16(lo, hi);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Widen(uint packed, int half) => Half16.WidenF16(packed, half);
}

/// <summary>16-bit values in 32-bit registers: rounding F32 to BF16 / F16 and widening back, on device and host alike.</summary>
public static class Half16
{
    /// <summary>F32 to BF16 bits, round to nearest even; NaN stays NaN (quiet), infinities stay infinite.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Bf16Bits(float x)
    {
        uint u = Interop.FloatAsInt(x);
        if ((u & 0x7FFFFFFFu) > 0x7F800000u)
            return (u >> 16) | 0x40u;
        return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    }

    /// <summary>
    /// F32 to F16 bits, round to nearest even: on CUDA the conversion instruction (cvt.rn.f16.f32); elsewhere by hand,
    /// because ILGPU's software conversion on the CPU rounds 65520 (the tie between 65504 and infinity) down to 65504
    /// where IEEE and the GPU give infinity.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint F16Bits(float x) =>
        CudaAsm.IsSupported ? Interop.FloatAsInt((ILGPU.Half)x) : F16BitsByHand(Interop.FloatAsInt(x));

    private static uint F16BitsByHand(uint u)
    {
        uint sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
        if (a > 0x7F800000u)
            return sign | 0x7E00u | ((a >> 13) & 0x3FFu); // NaN, kept quiet
        if (a >= 0x477FF000u)
            return sign | 0x7C00u; // >= 65520 (or infinity): infinity
        if (a >= 0x38800000u)
        {
            uint r = a - 0x38000000u; // rebias the exponent (127 -> 15); a carry out of the mantissa bumps it
            return sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13);
        }

        if (a <= 0x33000000u)
            return sign; // <= 2^-25: zero (2^-25 itself ties to even zero)
        // Subnormal: round(x / 2^-24) = round(m 2^(e - 126)), m with its implicit bit.
        int shift = 126 - (int)(a >> 23);
        uint m = (a & 0x7FFFFFu) | 0x800000u;
        uint q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u) != 0))
            q++;
        return sign | q;
    }

    /// <summary>Two floats as a BF16 pair, lo in the low half: on CUDA one cvt.rn.bf16x2.f32 (sm_80+; its first source
    /// goes to the upper half), elsewhere two <see cref="Bf16Bits"/> (the same rounding; a NaN may keep other payload bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint PackBf16(float lo, float hi)
    {
        if (CudaAsm.IsSupported)
        {
            Output<uint> d = default;
            Input<float> a = hi, b = lo;
            CudaAsm.EmitRef("cvt.rn.bf16x2.f32 %0, %1, %2;", ref d, ref a, ref b);
            return d.Value;
        }

        return Bf16Bits(lo) | (Bf16Bits(hi) << 16);
    }

    /// <summary>Two floats as an F16 pair, lo in the low half: on CUDA one cvt.rn.f16x2.f32, elsewhere two <see cref="F16Bits"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint PackF16(float lo, float hi)
    {
        if (CudaAsm.IsSupported)
        {
            Output<uint> d = default;
            Input<float> a = hi, b = lo;
            CudaAsm.EmitRef("cvt.rn.f16x2.f32 %0, %1, %2;", ref d, ref a, ref b);
            return d.Value;
        }

        return F16Bits(lo) | (F16Bits(hi) << 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float WidenBf16(uint packed, int half) =>
        Interop.IntAsFloat(half == 0 ? packed << 16 : packed & 0xFFFF0000u);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float WidenF16(uint packed, int half) =>
        (float)Interop.IntAsFloat((ushort)(half == 0 ? packed & 0xFFFFu : packed >> 16));
}

/// <summary>mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, or its emulation off CUDA. Warp-collective:
/// every lane of the warp must call it together.</summary>
public static class Mma
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Acc4 Bf16(Acc4 c, Frag4 a, Frag2 b)
    {
        if (CudaAsm.IsSupported)
        {
            Ref<float> d0 = c.C0, d1 = c.C1, d2 = c.C2, d3 = c.C3;
            Input<uint> a0 = a.R0, a1 = a.R1, a2 = a.R2, a3 = a.R3, b0 = b.R0, b1 = b.R1;
            CudaAsm.EmitRef("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};",
                ref d0, ref d1, ref d2, ref d3, ref a0, ref a1, ref a2, ref a3, ref b0, ref b1);
            return new Acc4 { C0 = d0.Value, C1 = d1.Value, C2 = d2.Value, C3 = d3.Value };
        }

        return Emulate(c, a, b, bf16: true);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Acc4 F16(Acc4 c, Frag4 a, Frag2 b)
    {
        if (CudaAsm.IsSupported)
        {
            Ref<float> d0 = c.C0, d1 = c.C1, d2 = c.C2, d3 = c.C3;
            Input<uint> a0 = a.R0, a1 = a.R1, a2 = a.R2, a3 = a.R3, b0 = b.R0, b1 = b.R1;
            CudaAsm.EmitRef("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};",
                ref d0, ref d1, ref d2, ref d3, ref a0, ref a1, ref a2, ref a3, ref b0, ref b1);
            return new Acc4 { C0 = d0.Value, C1 = d1.Value, C2 = d2.Value, C3 = d3.Value };
        }

        return Emulate(c, a, b, bf16: false);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Lo(uint r, bool bf16) => bf16 ? Half16.WidenBf16(r, 0) : Half16.WidenF16(r, 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Hi(uint r, bool bf16) => bf16 ? Half16.WidenBf16(r, 1) : Half16.WidenF16(r, 1);

    /// <summary>
    /// Lane (g, t) owns D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]. It needs rows g and g+8 of A, held by lanes
    /// 4g + j (j &lt; 4: R0/R2 row g, R1/R3 row g+8, columns 2j, 2j+1 and 2j+8, 2j+9), and columns 2t, 2t+1 of B, held by
    /// lanes 4n + j (R0: rows 2j, 2j+1; R1: rows 2j+8, 2j+9): 16 + 16 shuffles, every lane taking part in each.
    /// </summary>
    private static Acc4 Emulate(Acc4 c, Frag4 a, Frag2 b, bool bf16)
    {
        int lane = Warp.LaneIdx;
        int g = lane >> 2, t = lane & 3;
        int aLane = 4 * g, b0Lane = 4 * (2 * t), b1Lane = 4 * (2 * t + 1);
        float s00 = 0f, s01 = 0f, s10 = 0f, s11 = 0f; // s[row g / g+8][column 2t / 2t+1], k = 0..7
        float h00 = 0f, h01 = 0f, h10 = 0f, h11 = 0f; // the same over k = 8..15
        for (int j = 0; j < 4; j++)
        {
            uint aTopLo = Warp.Shuffle(a.R0, aLane + j), aBotLo = Warp.Shuffle(a.R1, aLane + j);
            uint aTopHi = Warp.Shuffle(a.R2, aLane + j), aBotHi = Warp.Shuffle(a.R3, aLane + j);
            uint bc0Lo = Warp.Shuffle(b.R0, b0Lane + j), bc0Hi = Warp.Shuffle(b.R1, b0Lane + j);
            uint bc1Lo = Warp.Shuffle(b.R0, b1Lane + j), bc1Hi = Warp.Shuffle(b.R1, b1Lane + j);

            // k = 2j, 2j+1 (R0 / R1 of A, R0 of B) and k = 2j+8, 2j+9 (R2 / R3 of A, R1 of B).
            s00 += Lo(aTopLo, bf16) * Lo(bc0Lo, bf16) + Hi(aTopLo, bf16) * Hi(bc0Lo, bf16);
            s01 += Lo(aTopLo, bf16) * Lo(bc1Lo, bf16) + Hi(aTopLo, bf16) * Hi(bc1Lo, bf16);
            s10 += Lo(aBotLo, bf16) * Lo(bc0Lo, bf16) + Hi(aBotLo, bf16) * Hi(bc0Lo, bf16);
            s11 += Lo(aBotLo, bf16) * Lo(bc1Lo, bf16) + Hi(aBotLo, bf16) * Hi(bc1Lo, bf16);
            h00 += Lo(aTopHi, bf16) * Lo(bc0Hi, bf16) + Hi(aTopHi, bf16) * Hi(bc0Hi, bf16);
            h01 += Lo(aTopHi, bf16) * Lo(bc1Hi, bf16) + Hi(aTopHi, bf16) * Hi(bc1Hi, bf16);
            h10 += Lo(aBotHi, bf16) * Lo(bc0Hi, bf16) + Hi(aBotHi, bf16) * Hi(bc0Hi, bf16);
            h11 += Lo(aBotHi, bf16) * Lo(bc1Hi, bf16) + Hi(aBotHi, bf16) * Hi(bc1Hi, bf16);
        }

        return new Acc4 { C0 = c.C0 + (s00 + h00), C1 = c.C1 + (s01 + h01), C2 = c.C2 + (s10 + h10), C3 = c.C3 + (s11 + h11) };
    }
}

/// <summary>
/// A kernel's dynamic shared memory as 32-bit words, with its shared-window address on CUDA (0 elsewhere). Tensor-core
/// kernels keep every shared tile in this one array (ILGPU names no other shared array the PTX could address).
/// </summary>
public readonly struct SharedWords
{
    public readonly ArrayView<uint> View;

    /// <summary>The byte address of word 0 in the shared window (CUDA); 0 off CUDA.</summary>
    public readonly uint Base;

    private SharedWords(ArrayView<uint> view, uint @base)
    {
        View = view;
        Base = @base;
    }

    /// <summary>The kernel's dynamic shared memory (KernelConfig's SharedMemoryConfig.RequestDynamic&lt;uint&gt;(words)).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static SharedWords Dynamic()
    {
        var view = SharedMemory.GetDynamic<uint>();
        uint b = 0;
        if (CudaAsm.IsSupported)
        {
            Output<uint> addr = default;
            CudaAsm.EmitRef("mov.u32 %0, __dyn_shared_alloca;", ref addr);
            b = addr.Value;
        }

        return new SharedWords(view, b);
    }
}

/// <summary>
/// A global tensor seen as 32-bit words, with its device address for cp.async (ILGPU cannot take one in a kernel).
/// Build it on the host with <see cref="Of"/>; the view serves the CPU emulation, the address the PTX.
/// </summary>
public readonly struct GlobalWords(ArrayView<uint> view, ulong address)
{
    public readonly ArrayView<uint> View = view;

    /// <summary>The device address of word 0.</summary>
    public readonly ulong Address = address;

    /// <summary>A view and its address (host side; the view must stay alive while kernels use it).</summary>
    public static GlobalWords Of(ArrayView<uint> view) => new(view, view.IsValid && view.Length > 0 ? (ulong)view.LoadEffectiveAddressAsPtr() : 0UL);

    /// <summary>Whether word 0 sits on a 16-byte boundary (cp.async of 16 bytes needs it, with every row offset a multiple of 4 words).</summary>
    public bool Aligned16 => Address % 16 == 0;
}

/// <summary>ldmatrix.sync.aligned.m8n8 from <see cref="SharedWords"/>, or its emulation. Warp-collective.</summary>
public static class Ldmatrix
{
    /// <summary>
    /// .x4: this lane supplies the word offset of row (lane &amp; 7) of matrix (lane &gt;&gt; 3) (a row is 4 words = 8
    /// 16-bit values, the offset a multiple of 4); Ri = matrix i's row lane/4, values 2t, 2t+1.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Frag4 X4(SharedWords s, int rowWord)
    {
        if (CudaAsm.IsSupported)
        {
            Output<uint> r0 = default, r1 = default, r2 = default, r3 = default;
            Input<uint> addr = s.Base + 4u * (uint)rowWord;
            CudaAsm.EmitRef("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];", ref r0, ref r1, ref r2, ref r3, ref addr);
            return new Frag4(r0.Value, r1.Value, r2.Value, r3.Value);
        }

        int lane = Warp.LaneIdx;
        int row = lane >> 2, t = lane & 3;
        int w0 = Warp.Shuffle(rowWord, row), w1 = Warp.Shuffle(rowWord, 8 + row);
        int w2 = Warp.Shuffle(rowWord, 16 + row), w3 = Warp.Shuffle(rowWord, 24 + row);
        return new Frag4(s.View[w0 + t], s.View[w1 + t], s.View[w2 + t], s.View[w3 + t]);
    }

    /// <summary>.x2: lanes 0-15 supply rows of matrices 0 and 1 (lanes 16-31's offsets are ignored but must be in range).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Frag2 X2(SharedWords s, int rowWord)
    {
        if (CudaAsm.IsSupported)
        {
            Output<uint> r0 = default, r1 = default;
            Input<uint> addr = s.Base + 4u * (uint)rowWord;
            CudaAsm.EmitRef("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];", ref r0, ref r1, ref addr);
            return new Frag2(r0.Value, r1.Value);
        }

        int lane = Warp.LaneIdx;
        int row = lane >> 2, t = lane & 3;
        int w0 = Warp.Shuffle(rowWord, row), w1 = Warp.Shuffle(rowWord, 8 + row);
        return new Frag2(s.View[w0 + t], s.View[w1 + t]);
    }
}

/// <summary>cp.async (Ampere and later): 16-byte copies global -> shared that bypass registers, grouped and awaited.</summary>
public static class CpAsync
{
    /// <summary>
    /// Copies 4 words (16 bytes) src[srcWord..+3] to s[dstWord..+3]; both offsets multiples of 4 and the source
    /// 16-byte aligned (<see cref="GlobalWords.Aligned16"/>). valid = false writes zeros and reads nothing (the
    /// zero-fill form, src-size 0): the bounds of ragged tiles.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Copy16(SharedWords s, int dstWord, GlobalWords src, long srcWord, bool valid)
    {
        long w = valid ? srcWord : 0;
        if (CudaAsm.IsSupported)
        {
            Input<uint> dst = s.Base + 4u * (uint)dstWord;
            Input<ulong> from = src.Address + 4UL * (ulong)w;
            Input<uint> size = valid ? 16u : 0u;
            CudaAsm.EmitRef("cp.async.cg.shared.global [%0], [%1], 16, %2;", ref dst, ref from, ref size);
            return;
        }

        s.View[dstWord] = valid ? src.View[w] : 0u;
        s.View[dstWord + 1] = valid ? src.View[w + 1] : 0u;
        s.View[dstWord + 2] = valid ? src.View[w + 2] : 0u;
        s.View[dstWord + 3] = valid ? src.View[w + 3] : 0u;
    }

    /// <summary>Closes the group of copies issued since the last commit.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Commit()
    {
        if (CudaAsm.IsSupported)
            CudaAsm.Emit("cp.async.commit_group;");
    }

    /// <summary>
    /// Waits until at most <paramref name="pending"/> committed groups are still in flight (0..3: PTX wants an
    /// immediate). A Group.Barrier must follow before other warps' copies are read.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Wait(int pending)
    {
        if (!CudaAsm.IsSupported)
            return;
        if (pending <= 0)
            CudaAsm.Emit("cp.async.wait_group 0;");
        else if (pending == 1)
            CudaAsm.Emit("cp.async.wait_group 1;");
        else if (pending == 2)
            CudaAsm.Emit("cp.async.wait_group 2;");
        else
            CudaAsm.Emit("cp.async.wait_group 3;");
    }
}
