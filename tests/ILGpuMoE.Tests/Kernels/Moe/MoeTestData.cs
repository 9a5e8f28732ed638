using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Moe;

/// <summary>How a hand-built routing spreads tokens over experts.</summary>
public enum RoutingShape
{
    /// <summary>Each token picks K distinct experts at random.</summary>
    Random,
    /// <summary>Every token goes to the same K experts.</summary>
    AllToOne,
    /// <summary>Random, but expert E-1 (and expert 1 when E > 4) receive no token.</summary>
    SkipExperts,
    /// <summary>Random with about a third of the pairs dropped (-1, weight 0), and token 0 fully dropped.</summary>
    Dropped,
}

/// <summary>Routings, weights and launchers shared by the MoE data-path tests.</summary>
public static class MoeTestData
{
    private static readonly Lazy<MoeBlockKernels<F32Weights>> F32Block = new(() => MoeBlockKernels<F32Weights>.Create(TestDevice.Accelerator));
    private static readonly Lazy<MoeBlockKernels<F16Weights>> F16Block = new(() => MoeBlockKernels<F16Weights>.Create(TestDevice.Accelerator));
    private static readonly Lazy<MoeBlockKernels<BF16Weights>> BF16Block = new(() => MoeBlockKernels<BF16Weights>.Create(TestDevice.Accelerator));
    private static readonly Lazy<MoePermuteKernel> PermuteKernel = new(() => MoePermuteKernel.Create(TestDevice.Accelerator));

    public static MoePermuteKernel Permute => PermuteKernel.Value;

    public static MoeBlockKernels<F32Weights> BlockF32 => F32Block.Value;

    public static MoeBlockKernels<F16Weights> BlockF16 => F16Block.Value;

    public static MoeBlockKernels<BF16Weights> BlockBF16 => BF16Block.Value;

    /// <summary>A routing as the gating kernel would hand it over: ids [T, K], weights [T, K] summing to ~1 per token.</summary>
    public static RefRouting Routing(int seed, int tokens, int topK, int experts, RoutingShape shape)
    {
        var rng = new Random(seed);
        var ids = new int[tokens * topK];
        var weights = new float[tokens * topK];
        var allowed = Enumerable.Range(0, experts)
            .Where(e => shape != RoutingShape.SkipExperts || (e != experts - 1 && !(experts > 4 && e == 1)))
            .ToArray();
        if (topK > allowed.Length)
            throw new ArgumentException($"test routing: topK {topK} > {allowed.Length} usable experts");
        var fixedChoice = allowed.OrderBy(_ => rng.Next()).Take(topK).ToArray();
        int dropped = 0;
        for (int t = 0; t < tokens; t++)
        {
            int[] pick = shape == RoutingShape.AllToOne ? fixedChoice : allowed.OrderBy(_ => rng.Next()).Take(topK).ToArray();
            double sum = 0;
            var raw = new double[topK];
            for (int k = 0; k < topK; k++)
            {
                raw[k] = 0.1 + rng.NextDouble();
                sum += raw[k];
            }

            for (int k = 0; k < topK; k++)
            {
                bool drop = shape == RoutingShape.Dropped && (t == 0 || rng.Next(3) == 0);
                ids[t * topK + k] = drop ? -1 : pick[k];
                weights[t * topK + k] = drop ? 0f : (float)(raw[k] / sum);
                dropped += drop ? 1 : 0;
            }
        }

        return new RefRouting(ids, weights, tokens, topK, dropped);
    }

    /// <summary>Per-expert HF weights [E][out*in], uniform in +-1/sqrt(in) (keeps activations O(1)).</summary>
    public static float[][] ExpertWeights(int seed, int experts, int outDim, int inDim) =>
        Enumerable.Range(0, experts).Select(e => Data.Uniform(seed * 131 + e, (long)outDim * inDim, 1f / MathF.Sqrt(inDim))).ToArray();

    public static float[] Stack(float[][] perExpert) => perExpert.SelectMany(w => w).ToArray();

    public static float[][] ToHalfValues(float[][] w) => w.Select(a => a.Select(v => (float)(ILGPU.Half)v).ToArray()).ToArray();

    public static float[][] ToBf16Values(float[][] w) => w.Select(Data.RoundToBf16).ToArray();

    public static ILGPU.Half[] HalfBits(float[] a) => a.Select(v => (ILGPU.Half)v).ToArray();

    public static ushort[] Bf16Bits(float[] a) => a.Select(BF16.FromFloat).ToArray();

    /// <summary>Overwrites a device buffer with int.MinValue.</summary>
    public static void Poison(MemoryBuffer1D<int, Stride1D.Dense> buffer)
    {
        var bad = new int[buffer.Length];
        Array.Fill(bad, int.MinValue);
        buffer.CopyFromCPU(bad);
    }

    /// <summary>Overwrites a device buffer with NaN.</summary>
    public static void Poison(MemoryBuffer1D<float, Stride1D.Dense> buffer)
    {
        var nan = new float[buffer.Length];
        Array.Fill(nan, float.NaN);
        buffer.CopyFromCPU(nan);
    }

    public static void Poison(MoePermutation p)
    {
        Poison(p.ChunkBase);
        Poison(p.Counts);
        Poison(p.Offsets);
        Poison(p.TileOffsets);
        Poison(p.Tiles);
        Poison(p.SortedPairs);
        Poison(p.PairPositions);
        Poison(p.BadCounts);
        Poison(p.Status);
    }

    public static void Poison(MoeWorkspace ws)
    {
        foreach (var p in ws.Permutations)
            Poison(p);
        Poison(ws.H);
        Poison(ws.Y);
    }
}
