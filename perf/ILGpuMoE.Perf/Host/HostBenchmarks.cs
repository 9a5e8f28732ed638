// Host-side paths under BenchmarkDotNet (`ilgpumoe-bench host [BenchmarkDotNet arguments]`): opening and memory-mapping
// a safetensors checkpoint, reading a tensor's bytes, widening BF16 to F32; the tokenizer (encode / decode of a
// paragraph with models/mixtral-demo's tokenizer, streaming decode one id at a time as generation does); the host
// quantizer (int8 per channel, int4 G = 128, FP8 128x128 blocks of a [1024, 1024] matrix). In-process toolchain
// (perf/notes/toolchain-facts.md: no second build of the project; works from the single-file publish too).
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using ILGpuMoE.IO;
using ILGpuMoE.Quant;
using ILGpuMoE.Tokenizer;

namespace ILGpuMoE.Perf;

public static class HostBenchmarks
{
    public static int Run(string[] args)
    {
        var config = DefaultConfig.Instance
            .AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance))
            .WithOptions(ConfigOptions.DisableOptimizationsValidator);
        var summaries = BenchmarkSwitcher.FromTypes([typeof(SafeTensorsBenchmarks), typeof(TokenizerBenchmarks), typeof(QuantizeBenchmarks)]).Run(args.Length > 0 ? args : ["--filter", "*"], config);
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

/// <summary>
/// models/mixtral-demo's tokenizer (found from the current folder or the executable's upwards, or $ILGPUMOE_TOKENIZER)
/// on a ~120-word English paragraph with digits, punctuation and a non-ASCII word (byte fallback).
/// </summary>
[MemoryDiagnoser]
public class TokenizerBenchmarks
{
    private const string Paragraph =
        "Mixture-of-Experts models route every token to a few of their experts: Mixtral 8x7B picks 2 of 8 per layer, "
        + "so a decode step reads about 13 billion of its 47 billion parameters. The router is a small linear layer whose "
        + "top-k logits are normalised with a softmax; ties go to the lower expert id. Prefill groups the tokens by expert "
        + "(a histogram, a scan and a stable scatter) so that each expert's weights are read once per tile, not once per "
        + "token. On an H200 with 4.3 TB/s the decode step is bound by bandwidth: 2 experts x 3 x 4096 x 14336 bf16 "
        + "weights take 0.16 ms per layer at best. Naïve loops over experts, as in the reference, are correct but slow; "
        + "the kernels here are tiled, coalesced and bit-identical from run to run (no atomics where order matters).";

    private ITextTokenizer? tokenizer;
    private int[] ids = [];

    [GlobalSetup]
    public void Setup()
    {
        tokenizer = TextTokenizer.Load(FindDemoModel());
        ids = [.. tokenizer.Encode(Paragraph, addBos: true)];
    }

    [GlobalCleanup]
    public void Cleanup() => tokenizer?.Dispose();

    /// <summary>$ILGPUMOE_TOKENIZER, else models/mixtral-demo above the current folder or the executable.</summary>
    internal static string FindDemoModel()
    {
        if (Environment.GetEnvironmentVariable("ILGPUMOE_TOKENIZER") is { Length: > 0 } env)
            return env;
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "models", "mixtral-demo");
                if (File.Exists(Path.Combine(candidate, "tokenizer.json")))
                    return candidate;
            }
        }

        throw new FileNotFoundException("host benchmarks: models/mixtral-demo/tokenizer.json not found above the current folder or the executable (set ILGPUMOE_TOKENIZER to a tokenizer folder)");
    }

    [Benchmark(Description = "encode a paragraph (~120 words, BOS)")]
    public int Encode() => tokenizer!.Encode(Paragraph, addBos: true).Count;

    [Benchmark(Description = "decode the paragraph's ids")]
    public int Decode() => tokenizer!.Decode(ids).Length;

    [Benchmark(Description = "streaming decode, one id at a time + flush")]
    public int StreamingDecode()
    {
        var decoder = new StreamingDecoder(tokenizer!);
        int chars = 0;
        foreach (int id in ids)
            chars += decoder.Push(id).Length;
        return chars + decoder.Flush().Length;
    }
}

/// <summary>The host quantizer on a random [1024, 1024] f32 matrix scaled 1/sqrt(1024) (what checkpoint repacking runs per matrix).</summary>
[MemoryDiagnoser]
public class QuantizeBenchmarks
{
    private const int Rows = 1024, Cols = 1024;
    private float[] w = [];

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(11);
        w = new float[Rows * Cols];
        for (int i = 0; i < w.Length; i++)
            w[i] = (float)(rng.NextDouble() * 2 - 1) / 32f;
    }

    [Benchmark(Description = "QuantizeQ8 [1024, 1024] (per channel)")]
    public long Q8() => Q8Matrix.Quantize(w, Rows, Cols).ByteSize;

    [Benchmark(Description = "QuantizeQ4 [1024, 1024] G = 128 symmetric")]
    public long Q4() => Q4Matrix.Quantize(w, Rows, Cols, 128, symmetric: true).ByteSize;

    [Benchmark(Description = "QuantizeFp8 [1024, 1024] (128x128 blocks)")]
    public long Fp8() => Fp8Matrix.Quantize(w, Rows, Cols).ByteSize;
}
