// Tensor-core cases (kernels/ILGpuMoE.Kernels/TensorCore): the peak-mma microbenchmark (PeakMma V1Mma), whose
// TFLOP/s is the run's tensor-core ceiling (BenchRun.ApplyCeilings: Ceilings.TensorCoreTFlopPerSecond, and every
// timed case's % of it), as the copy ceiling is for bandwidth. On a GPU the ceiling case fills every SM (4 groups of
// 8 warps per SM, 8192 rounds of 8 chains: ~1.1 TFLOP per launch on 132 SMs); it runs with the other ceilings, before the sweep,
// and this family is listed first so it comes before the SIMT matmul ceiling. At T = 1 every device also gets a small
// case (1 warp, 1 round on the CPU accelerator, where each mma is emulated with 32 warp shuffles): on the CPU the
// bench shows that check only, on the GPU the smoke step checks the tensor-core loader's PTX against the oracle.
// FLOPs: 2 * 16 * 8 * 16 per mma. Minimum bytes: A and W read once per warp's fragments (768 B), the sums written.
// Inputs are +-0.5 and +-1 in BF16: every product is a multiple of 1/4 and every partial sum stays below 2^22, so the
// sums are exact in F32 whatever order the hardware adds in, and the check compares at the reference's rounding.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Cases;

public sealed class TensorCoreFamily : IBenchFamily
{
    /// <summary>The family whose best timed figure is the run's tensor-core ceiling.</summary>
    public static readonly string PeakFamily = KernelId.Family(PeakMmaVersion.V1Mma);

    public string Name => "tensor-core";

    public IEnumerable<IBenchCase> Cases(ShapePreset p, int tokens, BenchDevice device)
    {
        if (tokens == 1)
            yield return device.IsGpu ? new PeakMmaCase(tokens, groups: 8, iterations: 64) : new PeakMmaCase(tokens, groups: 1, iterations: 1, warpsPerGroup: 1);
    }

    /// <summary>GPU only: every SM busy with mma chains long enough to time (the tensor-core ceiling).</summary>
    public IBenchCase? CeilingCase(ShapePreset p, BenchDevice device) =>
        device.IsGpu ? new PeakMmaCase(1, groups: 4 * device.Accelerator.NumMultiprocessors, iterations: 8192) : null;
}

public sealed class PeakMmaCase(int tokens, int groups, int iterations, int warpsPerGroup = PeakMma.GroupSize / 32) : CaseBase
{
    private PeakMma? kernel;
    private MemoryBuffer1D<uint, Stride1D.Dense>? a, w;
    private MemoryBuffer1D<float, Stride1D.Dense>? sums;
    private float[] aValues = [], wValues = [];

    private int Warps => groups * warpsPerGroup;

    public override string Family => TensorCoreFamily.PeakFamily;

    public override string Version => KernelId.Version(PeakMmaVersion.V1Mma);

    public override string DType => "bf16";

    public override int Tokens => tokens;

    public override string Shape => $"{groups} groups x {warpsPerGroup} warps x {iterations} rounds x {PeakMma.Chains} chains of m16n8k16";

    public override double Flops => PeakMma.Flops(groups, iterations, warpsPerGroup);

    public override double MinBytes => 4.0 * (PeakMma.AWords + PeakMma.WWords) + 4.0 * Warps * PeakMma.SumsPerWarp;

    public override long SetBytes => 4L * (PeakMma.AWords + PeakMma.WWords);

    public override void Setup(BenchDevice d, int sets)
    {
        kernel = PeakMma.Create(d.Accelerator);
        // One input set whatever `sets` says: the fragments are read once per warp, the cache plays no part.
        (var aWords, aValues) = Tile(PeakMma.AWords, seed: 1401);
        (var wWords, wValues) = Tile(PeakMma.WWords, seed: 1402);
        a = Own(d.Accelerator.Allocate1D(aWords));
        w = Own(d.Accelerator.Allocate1D(wWords));
        sums = Floats(d, (long)Warps * PeakMma.SumsPerWarp);
    }

    public override void Run(AcceleratorStream stream, int set) => kernel!.Launch(stream, a!.View, w!.View, sums!.View, groups, iterations, warpsPerGroup);

    public override CheckResult Check(BenchDevice d)
    {
        RunOnce(d);
        var want = RefTensorCore.PeakMmaSums(aValues, wValues, iterations, PeakMma.Chains);
        var got = sums!.GetAsArray1D();
        var all = new float[got.Length];
        for (int warp = 0; warp < Warps; warp++)
            want.CopyTo(all, warp * PeakMma.SumsPerWarp);
        return Compare.Close(got, all, 1e-6, 0, $"all {Warps} warps x 128");
    }

    /// <summary>n words of BF16 pairs drawn from +-0.5, +-1 (seeded), and the values they hold in order.</summary>
    private static (uint[] Words, float[] Values) Tile(int words, int seed)
    {
        ushort[] bf16 = [0x3F00, 0xBF00, 0x3F80, 0xBF80]; // 0.5, -0.5, 1, -1
        var rng = new Random(seed);
        var bits = Enumerable.Range(0, 2 * words).Select(_ => bf16[rng.Next(bf16.Length)]).ToArray();
        var values = bits.Select(b => BitConverter.UInt32BitsToSingle((uint)b << 16)).ToArray();
        return (Enumerable.Range(0, words).Select(i => bits[2 * i] | ((uint)bits[2 * i + 1] << 16)).ToArray(), values);
    }
}
