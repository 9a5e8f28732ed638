// Group-wide float reductions for the row kernels (RMSNorm, softmax).
//
// Each warp reduces with a shuffle butterfly, lane 0 parks the warp's result in shared memory, one barrier,
// then every thread combines the (at most 8) warp results in warp order. Why this shape: two barriers at
// most per reduction (barriers are what costs on the CPU accelerator and what stalls on the GPU), and a fixed
// combination order so the result is bit-identical run to run (no atomics). The caller owns the shared slot
// array (one float per warp) so two reductions in one kernel use separate slots and need no extra barrier.
using ILGPU;

namespace ILGpuMoE.Kernels.Dense;

internal static class BlockReduce
{
    public const int MaxWarps = Devices.MaxGroupSize / 32;

    public static float Sum(float value, ArrayView<float> slots) => Reduce(value, slots, max: false);

    public static float Max(float value, ArrayView<float> slots) => Reduce(value, slots, max: true);

    /// <summary>Sum across one warp (every lane calls it); the xor butterfly leaves the same bits in every lane.</summary>
    public static float WarpSum(float value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset >>= 1)
            value += Warp.ShuffleXor(value, offset);
        return value;
    }

    // `max` is uniform across the group, so the branch never diverges.
    private static float Reduce(float value, ArrayView<float> slots, bool max)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset >>= 1)
        {
            float other = Warp.ShuffleXor(value, offset);
            value = max ? IntrinsicMath.Max(value, other) : value + other;
        }

        if (Warp.IsFirstLane)
            slots[Warp.WarpIdx] = value;
        Group.Barrier();
        int warps = Group.DimX / Warp.WarpSize;
        float total = slots[0];
        for (int w = 1; w < warps; w++)
            total = max ? IntrinsicMath.Max(total, slots[w]) : total + slots[w];
        return total;
    }
}
