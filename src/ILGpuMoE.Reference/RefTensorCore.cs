// The oracle of the tensor-core microbenchmark (kernels/ILGpuMoE.Kernels/TensorCore/PeakMma.cs), written from what
// the kernel is specified to compute, in double, rounded to float once.
namespace ILGpuMoE.Reference;

public static class RefTensorCore
{
    /// <summary>
    /// What each warp of the peak-mma kernel writes: chains accumulators, chain j starting at j, each adding
    /// A W^T once per iteration, summed: out[r][n] = sum_j j + chains * iterations * sum_k a[r][k] w[n][k], for
    /// a = A [16, 16] and w = W [8, 16] row-major (the values the kernel's BF16 inputs hold), out [16, 8] row-major.
    /// </summary>
    public static float[] PeakMmaSums(ReadOnlySpan<float> a, ReadOnlySpan<float> w, int iterations, int chains)
    {
        Require.Length(a, 16 * 16, nameof(a), "[16, 16]");
        Require.Length(w, 8 * 16, nameof(w), "[8, 16]");
        Require.NonNegative(iterations, nameof(iterations));
        Require.Positive(chains, nameof(chains));
        double starts = chains * (chains - 1) / 2.0;
        var y = new float[16 * 8];
        for (int r = 0; r < 16; r++)
        {
            for (int n = 0; n < 8; n++)
            {
                double dot = 0;
                for (int k = 0; k < 16; k++)
                    dot += (double)a[r * 16 + k] * w[n * 16 + k];
                y[r * 8 + n] = (float)(starts + (double)chains * iterations * dot);
            }
        }

        return y;
    }
}
