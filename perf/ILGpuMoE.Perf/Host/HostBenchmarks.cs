// Host-side paths under BenchmarkDotNet (`ilgpumoe-bench host [BenchmarkDotNet arguments]`): opening and memory-mapping
// a safetensors checkpoint, reading a tensor's bytes, widening BF16 to F32, writing a file. In-process toolchain
// (FACTS.md: no second build of the project; works from the single-file publish too). Tokenizer and quantization
// benchmarks join here when those land.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using ILGpuMoE.IO;

namespace ILGpuMoE.Perf;

public static class HostBenchmarks
{
    public static int Run(string[] args)
    {
        var config = DefaultConfig.Instance
            .AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance))
            .WithOptions(ConfigOptions.DisableOptimizationsValidator);
        var summaries = BenchmarkSwitcher.FromTypes([typeof(SafeTensorsBenchmarks)]).Run(args.Length > 0 ? args : ["--filter", "*"], config);
        return summaries.Any(s => s.HasCriticalValidationErrors) ? 1 : 0;
    }
}

/// <summary>A 64 MiB BF16 checkpoint of 16 tensors [1024, 2048], written once to a temp folder.</summary>
[MemoryDiagnoser]
public class SafeTensorsBenchmarks
{
    private const int Rows = 1024, Cols = 2048, Tensors = 16;
    private string dir = "";
    private string file = "";
    private SafeTensorsFile? open;

    [GlobalSetup]
    public void Setup()
    {
        dir = Path.Combine(Path.GetTempPath(), $"ilgpumoe-host-bench-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        file = Path.Combine(dir, "model.safetensors");
        SafeTensorsWriter.Write(file, Entries());
        open = SafeTensorsFile.Open(file);
    }

    private static IEnumerable<SafeTensorsWriter.Entry> Entries()
    {
        var rng = new Random(7);
        var data = new float[Rows * Cols];
        for (int t = 0; t < Tensors; t++)
        {
            for (int i = 0; i < data.Length; i++)
                data[i] = (float)(rng.NextDouble() * 2 - 1);
            yield return SafeTensorsWriter.FromFloats($"layers.{t}.weight", [Rows, Cols], data, DType.BF16);
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        open?.Dispose();
        Directory.Delete(dir, recursive: true);
    }

    [Benchmark(Description = "open + map + parse header")]
    public int OpenFile()
    {
        using var f = SafeTensorsFile.Open(file);
        return f.Tensors.Count;
    }

    [Benchmark(Description = "zero-copy bytes of every tensor (touch one byte per page)")]
    public long TouchBytes()
    {
        long sum = 0;
        foreach (var t in open!.Tensors)
        {
            var bytes = open.GetBytes(t.Name);
            for (int i = 0; i < bytes.Length; i += 4096)
                sum += bytes[i];
        }

        return sum;
    }

    [Benchmark(Description = "ReadFloat32 of one [1024, 2048] BF16 tensor")]
    public float WidenOne() => open!.ReadFloat32("layers.3.weight")[17];
}
