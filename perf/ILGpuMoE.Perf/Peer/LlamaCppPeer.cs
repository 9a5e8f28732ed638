// The CPU peer: llama.cpp in-process (LLamaSharp 0.30.0 + its CPU backend) on the same random Mixtral we run,
// converted to GGUF (src/ILGpuMoE.Testing/Gguf), F32 and quantized by llama.cpp itself to Q8_0 and Q4_0.
// Measured like ours: prefill of P prompt tokens in one batch (logits of the last only) = time to first token, then
// N single-token decode steps; F32 KV cache, no flash attention, every core as threads
// (perf/notes/toolchain-facts.md: why F32 KV and no flash attention make it a like-for-like peer).
// Not in the GPU publish (its native backend is ~150 MB and the GPU machine's peer is PyTorch).
using System.Diagnostics;
using LLama;
using LLama.Common;
using LLama.Native;

namespace ILGpuMoE.Perf.Peer;

public sealed record PeerTiming(string Scheme, double PrefillSeconds, double DecodeSeconds, int PromptTokens, int DecodeTokens)
{
    public double PrefillTokensPerSecond => PromptTokens / PrefillSeconds;

    public double DecodeTokensPerSecond => DecodeTokens / DecodeSeconds;
}

public static class LlamaCppPeer
{
    private static readonly object Gate = new();
    private static bool configured;

    /// <summary>llama.cpp's quantization of an F32 GGUF: "q8_0" or "q4_0".</summary>
    public static void Quantize(string f32Gguf, string dst, string scheme)
    {
        var ftype = scheme switch
        {
            "q8_0" => LLamaFtype.MOSTLY_Q8_0,
            "q4_0" => LLamaFtype.MOSTLY_Q4_0,
            _ => throw new ArgumentException($"unknown llama.cpp scheme '{scheme}'"),
        };
        Configure();
        if (!LLamaQuantizer.Quantize(f32Gguf, dst, ftype, Environment.ProcessorCount))
            throw new InvalidOperationException($"llama.cpp could not quantize {f32Gguf} to {scheme}");
    }

    /// <summary>Times prefill of <paramref name="prompt"/> and <paramref name="decode"/> greedy-free decode steps (fixed ids);
    /// with repeats &gt; 1 the whole pass runs that many times and the fastest prefill and decode are kept (a shared
    /// machine's noise only ever slows a pass down).</summary>
    public static PeerTiming Time(string gguf, string scheme, int[] prompt, int[] decode, int threads, int repeats = 1)
    {
        lock (Gate)
        {
            Configure();
            var p = new ModelParams(gguf)
            {
                ContextSize = (uint)Math.Max(64, prompt.Length + decode.Length + 1),
                BatchSize = (uint)Math.Max(64, prompt.Length),
                UBatchSize = (uint)Math.Max(64, prompt.Length),
                TypeK = GGMLType.GGML_TYPE_F32,
                TypeV = GGMLType.GGML_TYPE_F32,
                FlashAttention = false,
                GpuLayerCount = 0,
                Threads = threads,
                BatchThreads = threads,
            };
            using var weights = LLamaWeights.LoadFromFile(p);
            using var ctx = weights.CreateContext(p);
            var batch = new LLamaBatch();

            // One untimed warm-up pass at the timed shapes, as ours gets (first touch of the weights, the thread pool, the
            // graph buffers of a whole-prompt batch and of a one-token step), then clear the cache.
            (double Prefill, double Decode) Pass(int steps)
            {
                batch.Clear();
                for (int i = 0; i < prompt.Length; i++)
                    batch.Add((LLamaToken)prompt[i], i, LLamaSeqId.Zero, logits: i == prompt.Length - 1);
                var sw = Stopwatch.StartNew();
                Decode(ctx, batch, gguf);
                _ = ctx.NativeHandle.GetLogitsIth(prompt.Length - 1)[0];
                double prefill = sw.Elapsed.TotalSeconds;

                sw.Restart();
                for (int i = 0; i < steps; i++)
                {
                    batch.Clear();
                    batch.Add((LLamaToken)decode[i], prompt.Length + i, LLamaSeqId.Zero, logits: true);
                    Decode(ctx, batch, gguf);
                    _ = ctx.NativeHandle.GetLogitsIth(0)[0];
                }

                double dec = sw.Elapsed.TotalSeconds;
                ctx.NativeHandle.MemoryClear(true);
                return (prefill, dec);
            }

            Pass(Math.Min(2, decode.Length));
            double bestPrefill = double.PositiveInfinity, bestDecode = double.PositiveInfinity;
            for (int r = 0; r < Math.Max(1, repeats); r++)
            {
                var (prefill, dec) = Pass(decode.Length);
                bestPrefill = Math.Min(bestPrefill, prefill);
                bestDecode = Math.Min(bestDecode, dec);
            }

            return new PeerTiming(scheme, bestPrefill, bestDecode, prompt.Length, decode.Length);
        }
    }

    private static void Decode(LLamaContext ctx, LLamaBatch batch, string gguf)
    {
        var result = ctx.Decode(batch);
        if (result != DecodeResult.Ok)
            throw new InvalidOperationException($"llama.cpp decode of {gguf} failed: {result}");
    }

    private static void Configure()
    {
        if (configured)
            return;
        // Silence llama.cpp's log; must be set before the native library loads.
        NativeLibraryConfig.All.WithLogCallback((level, message) => { });
        configured = true;
    }
}
