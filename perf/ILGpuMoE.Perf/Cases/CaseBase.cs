// Shared plumbing of the cases: owned buffers, rotated input sets, launch-then-download for the checks.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Perf.Suite;

namespace ILGpuMoE.Perf.Cases;

public abstract class CaseBase : IBenchCase
{
    private readonly List<IDisposable> owned = [];

    public abstract string Family { get; }

    public abstract string Version { get; }

    public virtual string DType => "f32";

    public abstract int Tokens { get; }

    public abstract string Shape { get; }

    public abstract double Flops { get; }

    public abstract double MinBytes { get; }

    public virtual bool IsMatmul => false;

    public abstract long SetBytes { get; }

    public abstract void Setup(BenchDevice device, int sets);

    public abstract CheckResult Check(BenchDevice device);

    public abstract void Run(AcceleratorStream stream, int set);

    protected T Own<T>(T resource)
        where T : IDisposable
    {
        owned.Add(resource);
        return resource;
    }

    protected MemoryBuffer1D<float, Stride1D.Dense> Floats(BenchDevice d, long n, float scale = 1f) => Own(d.Fill.Floats(d.Stream, n, scale));

    protected WeightBuffer Weights(BenchDevice d, WeightType type, long n, float scale) => Own(d.Fill.Weights(d.Stream, type, n, scale));

    protected MemoryBuffer1D<int, Stride1D.Dense> Ints(BenchDevice d, long n, int modulo) => Own(d.Fill.Ints(d.Stream, n, modulo));

    /// <summary>Launches on set 0 and waits: the run the check compares.</summary>
    protected void RunOnce(BenchDevice d)
    {
        Run(d.Stream, 0);
        d.Stream.Synchronize();
    }

    public void Dispose()
    {
        for (int i = owned.Count - 1; i >= 0; i--)
            owned[i].Dispose();
        owned.Clear();
        GC.SuppressFinalize(this);
    }
}
