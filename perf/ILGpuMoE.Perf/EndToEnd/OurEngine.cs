// Our side of the end-to-end figures: the runtime loads the folder onto the bench's device and runs prefill + decode.
// Compiled only when the runtime exists in src/ILGpuMoE/Runtime (HAS_RUNTIME, set by the project file).
using System.Diagnostics;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Quant;
using ILGpuMoE.Runtime;

namespace ILGpuMoE.Perf.EndToEnd;

public static class OurEngine
{
    /// <summary>Times prefill + decode; <paramref name="quant"/> packs the linear weights at load (as --quant does).</summary>
    public static EndToEndResult Time(BenchDevice device, string modelDir, string scheme, int layers, int[] prompt, int[] decode,
        QuantSpec? quant = null)
    {
        using var model = MixtralModel.Load(device.Accelerator, modelDir, new ModelLoadOptions
        {
            MaxSeq = prompt.Length + decode.Length + 8,
            MaxBatch = prompt.Length,
            Quant = quant,
        });
        using var session = model.NewSession();

        // Warm-up: compiles every kernel of the forward pass once (ILGPU compiles on first launch).
        session.Prefill(prompt.AsSpan(0, Math.Min(2, prompt.Length)), allLogits: false);
        session.Decode(decode[0]);
        session.Reset();

        var sw = Stopwatch.StartNew();
        session.Prefill(prompt, allLogits: false);
        double ttft = sw.Elapsed.TotalSeconds;
        sw.Restart();
        foreach (int t in decode)
            session.Decode(t);
        double dec = sw.Elapsed.TotalSeconds;
        return new EndToEndResult($"ilgpumoe ({device.Accelerator.AcceleratorType})", scheme, layers, prompt.Length, decode.Length,
            prompt.Length / ttft, decode.Length / dec, ttft, "random weights");
    }
}
