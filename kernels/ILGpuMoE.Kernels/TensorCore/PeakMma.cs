// Peak tensor-core throughput: the ceiling the tensor-core GEMMs are measured against in the same bench run
// (perf/ILGpuMoE.Perf/Cases/TensorCoreCases.cs), as the copy ceiling is for bandwidth.
//
// Versions:
//   V1Mma  every warp loads one A fragment (16 x 16) and one B fragment (16 x 8) from global memory, then runs
//          `iterations` rounds of Chains = 8 independent mma.sync m16n8k16 BF16 chains on those register fragments
//          (8 mmas in flight per warp hide the instruction's latency), and writes the sum of the 8 chains' D tiles.
//          Chain j's accumulator starts at j: the chains differ, so ptxas cannot merge them, and the written sums
//          keep every mma alive.
//
// Shapes: a = A [16, 16] BF16 row-major as 128 words (two values per word, the lower column in the low half);
// w = W [8, 16] BF16 row-major as 64 words (B = W^T: B's column n is W's row n, as in a GEMM with HF weights);
// sums [warps, 16, 8] F32, row-major per warp. What each warp writes (the reference, RefTensorCore.PeakMmaSums):
//   sums[warp][r][n] = sum_j (j + iterations * sum_k A[r][k] W[n][k]) = 28 + 8 * iterations * (A W^T)[r][n].
// FLOPs of a launch: warps * iterations * Chains * 2 * 16 * 8 * 16.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.TensorCore;

/// <summary>The peak-mma microbenchmark's versions (<see cref="KernelId"/>).</summary>
[KernelFamily("tensor-core/peak")]
public enum PeakMmaVersion
{
    /// <summary>8 independent BF16 mma.sync chains per warp on register fragments (<see cref="PeakMma.Launch"/>).</summary>
    V1Mma = 1,
}

public sealed class PeakMma
{
    /// <summary>Independent mma chains per warp.</summary>
    public const int Chains = 8;

    /// <summary>Most threads per group (8 warps, the GPU launches); the CPU accelerator's checks use fewer.</summary>
    public const int GroupSize = 256;

    /// <summary>Words of A (16 x 16 BF16) and of W (8 x 16 BF16); floats each warp writes (16 x 8).</summary>
    public const int AWords = 128, WWords = 64, SumsPerWarp = 128;

    /// <summary>FLOPs of one m16n8k16 mma: 2 * 16 * 8 * 16.</summary>
    public const double FlopsPerMma = 4096;

    private const string Name = "PeakMma";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<uint>, ArrayView<uint>, ArrayView<float>, int> _v1;

    private PeakMma(Accelerator accelerator)
    {
        if (accelerator.WarpSize != 32)
            throw new NotSupportedException($"{Name}: mma.sync fragments need 32-lane warps; {accelerator.Name} has {accelerator.WarpSize}");
        _v1 = accelerator.LoadTensorCore<ArrayView<uint>, ArrayView<uint>, ArrayView<float>, int>(PeakMmaV1);
    }

    public static PeakMma Create(Accelerator accelerator) => new(accelerator);

    /// <summary>FLOPs of a launch of <paramref name="groups"/> groups of <paramref name="warpsPerGroup"/> warps running <paramref name="iterations"/> rounds.</summary>
    public static double Flops(int groups, int iterations, int warpsPerGroup = GroupSize / 32) =>
        (double)groups * warpsPerGroup * iterations * Chains * FlopsPerMma;

    /// <summary>
    /// Runs <paramref name="groups"/> groups of <paramref name="warpsPerGroup"/> warps (1..8), each warp
    /// <paramref name="iterations"/> rounds of the 8 chains, writing sums [groups * warpsPerGroup, 16, 8].
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<uint> a, ArrayView<uint> w, ArrayView<float> sums, int groups, int iterations,
        int warpsPerGroup = GroupSize / 32)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (groups <= 0)
            throw new ArgumentOutOfRangeException(nameof(groups), groups, $"{Name}: groups must be positive");
        if (warpsPerGroup is < 1 or > GroupSize / 32)
            throw new ArgumentOutOfRangeException(nameof(warpsPerGroup), warpsPerGroup, $"{Name}: 1 to {GroupSize / 32} warps per group");
        if (iterations < 0)
            throw new ArgumentOutOfRangeException(nameof(iterations), iterations, $"{Name}: iterations must not be negative");
        if (a.Length != AWords)
            throw new ArgumentException($"{Name}: a holds {a.Length} words, A [16, 16] BF16 needs {AWords}", nameof(a));
        if (w.Length != WWords)
            throw new ArgumentException($"{Name}: w holds {w.Length} words, W [8, 16] BF16 needs {WWords}", nameof(w));
        long need = (long)groups * warpsPerGroup * SumsPerWarp;
        if (sums.Length != need)
            throw new ArgumentException($"{Name}: sums holds {sums.Length} floats, {groups} groups of {warpsPerGroup} warps write {need}", nameof(sums));
        _v1(stream, new KernelConfig(groups, 32 * warpsPerGroup), a, w, sums, iterations);
    }

    [KernelInfo(PeakMmaVersion.V1Mma, "grid G, group 32 W (W <= 8 warps, 8 on the GPU); every warp runs the same tile",
        Summary = "8 independent BF16 mma.sync m16n8k16 chains per warp on register fragments; writes the chains' sum",
        TensorCore = "HMMA", BlockSize = GroupSize)]
    public static void PeakMmaV1(ArrayView<uint> a, ArrayView<uint> w, ArrayView<float> sums, int iterations)
    {
        int lane = Warp.LaneIdx;
        int g = lane >> 2, t = lane & 3;
        // Fragment layouts (Mma.cs): A R0..R3 = A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..];
        // B R0, R1 = B[2t..][g], B[2t+8..][g] = W[g][2t..], W[g][2t+8..]. Rows are 8 words.
        var fa = new Frag4(a[g * 8 + t], a[(g + 8) * 8 + t], a[g * 8 + 4 + t], a[(g + 8) * 8 + 4 + t]);
        var fb = new Frag2(w[g * 8 + t], w[g * 8 + 4 + t]);
        Acc4 c0 = Start(0f), c1 = Start(1f), c2 = Start(2f), c3 = Start(3f);
        Acc4 c4 = Start(4f), c5 = Start(5f), c6 = Start(6f), c7 = Start(7f);
        for (int i = 0; i < iterations; i++)
        {
            c0 = Mma.Bf16(c0, fa, fb);
            c1 = Mma.Bf16(c1, fa, fb);
            c2 = Mma.Bf16(c2, fa, fb);
            c3 = Mma.Bf16(c3, fa, fb);
            c4 = Mma.Bf16(c4, fa, fb);
            c5 = Mma.Bf16(c5, fa, fb);
            c6 = Mma.Bf16(c6, fa, fb);
            c7 = Mma.Bf16(c7, fa, fb);
        }

        // C/D layout: C0 = D[g][2t], C1 = D[g][2t+1], C2 = D[g+8][2t], C3 = D[g+8][2t+1].
        long at = (Grid.GlobalLinearIndex >> 5) * SumsPerWarp;
        sums[at + g * 8 + 2 * t] = ((c0.C0 + c1.C0) + (c2.C0 + c3.C0)) + ((c4.C0 + c5.C0) + (c6.C0 + c7.C0));
        sums[at + g * 8 + 2 * t + 1] = ((c0.C1 + c1.C1) + (c2.C1 + c3.C1)) + ((c4.C1 + c5.C1) + (c6.C1 + c7.C1));
        sums[at + (g + 8) * 8 + 2 * t] = ((c0.C2 + c1.C2) + (c2.C2 + c3.C2)) + ((c4.C2 + c5.C2) + (c6.C2 + c7.C2));
        sums[at + (g + 8) * 8 + 2 * t + 1] = ((c0.C3 + c1.C3) + (c2.C3 + c3.C3)) + ((c4.C3 + c5.C3) + (c6.C3 + c7.C3));
    }

    private static Acc4 Start(float v) => new() { C0 = v, C1 = v, C2 = v, C3 = v };
}
