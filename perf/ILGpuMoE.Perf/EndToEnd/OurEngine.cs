// Our side of the end-to-end figures: the runtime loads the folder onto the bench's device and runs prefill + decode.
// Compiled only when the runtime exists in src/ILGpuMoE/Runtime (HAS_RUNTIME, set by the project file).
using System.Diagnostics;
using ILGpuMoE.Model;
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
    /// <param name="kernels">The kernel policy (Auto: on CUDA sm_80+, tensor cores for the prefill); the note names any other.</param>
    /// <param name="cudaGraph">Decode through a session that replays its decode step from a CUDA graph (SessionOptions);
    /// the row's scheme gets " + cuda graph" and its note says whether the graph was used.</param>
    public static EndToEndResult Time(BenchDevice device, string modelDir, string scheme, int layers, int[] prompt, int[] decode,
        QuantSpec? quant = null, bool cudaGraph = false, RouterChoice? router = null, KernelPolicy kernels = KernelPolicy.Auto, int? threads = null,
        int repeats = 1, QuantSpec? lmHeadQuant = null)
    {
        var sw = Stopwatch.StartNew();
        using var model = MoeModel.Load(device.Accelerator, modelDir, new ModelLoadOptions
        {
            MaxSeq = prompt.Length + decode.Length + 8,
            MaxBatch = prompt.Length,
            Quant = quant,
            Router = router,
            Kernels = kernels,
            Threads = threads,
            LmHeadQuant = lmHeadQuant,
        });
        using var session = model.NewSession(new SessionOptions { CudaGraph = cudaGraph });
        device.Stream.Synchronize();
        double load = sw.Elapsed.TotalSeconds;

        // Warm-up at the timed shapes: a prefill of the whole prompt (the kernel versions and launch shapes the launchers
        // pick depend on the token count) and decode steps after it, so nothing the timed passes launch compiles in them.
        // Two decode steps: a graph session captures its graph on its second decode step, which must not be a timed one.
        sw.Restart();
        session.Prefill(prompt, allLogits: false);
        session.Decode(decode[0]);
        if (decode.Length > 1)
            session.Decode(decode[1]);
        session.Reset();
        double warmup = sw.Elapsed.TotalSeconds;

        // repeats > 1 (the CPU backend's runs on a shared machine): the fastest prefill and decode of that many passes,
        // as the peer's figures are taken.
        double ttft = double.PositiveInfinity, dec = double.PositiveInfinity;
        long launches = 0;
        double perLayer = 0;
        for (int r = 0; r < Math.Max(1, repeats); r++)
        {
            if (r > 0)
                session.Reset();
            sw.Restart();
            session.Prefill(prompt, allLogits: false);
            ttft = Math.Min(ttft, sw.Elapsed.TotalSeconds);
            sw.Restart();
            launches = 0;
            perLayer = 0;
            foreach (int t in decode)
            {
                session.Decode(t);
                launches += session.LastStepLaunches;
                perLayer += session.LastStepLaunchesPerLayer;
            }

            dec = Math.Min(dec, sw.Elapsed.TotalSeconds);
        }
        string note = "random weights" + (kernels == KernelPolicy.Auto ? "" : $"; kernels {kernels}") + (session.DecodePath is { } path ? $"; decode {path}" : "")
                      + (session.CudaGraphStatus is { } g ? $"; cuda graph {g}" : "");
        return new EndToEndResult(model.IsCpuBackend ? "ilgpumoe (CPU backend)" : $"ilgpumoe ({device.Accelerator.AcceleratorType})", cudaGraph ? scheme + " + cuda graph" : scheme, layers, prompt.Length,
            decode.Length, prompt.Length / ttft, decode.Length / dec, ttft, note, warmup)
        {
            LoadSeconds = load,
            LaunchesPerToken = launches / (double)decode.Length,
            LaunchesPerLayer = perLayer / decode.Length,
        };
    }
}
