// ilgpumoe-gpu VERB ...: the GPU machine's single executable. bench (`bench serve` too), host and plot go to the bench
// (perf/ILGpuMoE.Perf/Program.cs); every other verb (devices, logits, generate, inspect, ...) and the root options
// go to the CLI (src/ILGpuMoE.Cli/Program.cs). perf/gpu/run-device.sh and fixtures.sh are its callers.
namespace ILGpuMoE.GpuBundle;

public static class Program
{
    public static readonly string[] BenchVerbs = ["bench", "host", "plot"];

    public static int Main(string[] args) =>
        args.Length > 0 && BenchVerbs.Contains(args[0], StringComparer.Ordinal)
            ? Perf.Program.Main(args)
            : Cli.Program.Main(args);
}
