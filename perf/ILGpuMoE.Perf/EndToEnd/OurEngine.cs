// Our side of the end-to-end figures: the runtime loads the folder onto the bench's device and runs prefill + decode.
// Compiled only when the runtime exists in src/ILGpuMoE/Runtime (HAS_RUNTIME, set by the project file).
using System.Diagnostics;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Quant;
using ILGpuMoE.Runtime;

namespace ILGpuMoE.Perf.EndToEnd;

public static class OurEngine
{
    /// <summary>
    /// Times prefill + decode of the checkpoint in <paramref name="modelDir"/> (float, or already packed in our layout:
    /// the load quantizes nothing). Load and warm-up are timed apart from the figures.
    /// </summary>
    public static EndToEndResult Time(BenchDevice device, string modelDir, string scheme, int layers, int[] prompt, int[] decode,
        QuantSpec? quant = null)
    {
        var sw = Stopwatch.StartNew();
        using var model = MixtralModel.Load(device.Accelerator, modelDir, new ModelLoadOptions
        {
            MaxSeq = prompt.Length + decode.Length + 8,
            MaxBatch = prompt.Length,
            Quant = quant,
        });
        using var session = model.NewSession();
        device.Stream.Synchronize();
        double load = sw.Elapsed.TotalSeconds;

        // Warm-up at the timed shapes: a prefill of the whole prompt (the kernel versions and launch shapes the launchers
        // pick depend on the token count) and a decode step after it, so nothing the timed passes launch compiles in them.
        sw.Restart();
        session.Prefill(prompt, allLogits: false);
        session.Decode(decode[0]);
        session.Reset();
        double warmup = sw.Elapsed.TotalSeconds;

        sw.Restart();
        session.Prefill(prompt, allLogits: false);
        double ttft = sw.Elapsed.TotalSeconds;
        sw.Restart();
        foreach (int t in decode)
            session.Decode(t);
        double dec = sw.Elapsed.TotalSeconds;
        return new EndToEndResult($"ilgpumoe ({device.Accelerator.AcceleratorType})", scheme, layers, prompt.Length, decode.Length,
            prompt.Length / ttft, decode.Length / dec, ttft, "random weights", warmup) { LoadSeconds = load };
    }
}
