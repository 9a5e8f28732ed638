// --threads N: the CPU backend's workers (src/ILGpuMoE/Cpu/CpuThreads.cs), recursive like --device so that generate and
// logits take it; default one per physical core. Results are the same bits for any N (each output is summed by one
// worker in one order), so N only changes the speed.
using System.CommandLine;

namespace ILGpuMoE.Cli;

public static class ThreadsOption
{
    public static Option<int?> Create() => new("--threads")
    {
        Description = $"CPU backend workers (--device cpu; default: physical cores, {ILGpuMoE.Cpu.CpuThreads.DefaultCount} here)",
        Recursive = true,
    };
}
