using LLama;
using LLama.Common;
using LLama.Native;

namespace ILGpuMoE.Tests.Peer;

/// <summary>
/// llama.cpp in-process (LLamaSharp + its CPU backend) as a peer: logits for every position of one batch from an
/// empty cache, with an F32 KV cache (its F16 default moves logits by ~1e-3) and no flash attention.
/// </summary>
public static class LlamaCppPeer
{
    private static readonly object Gate = new();
    private static bool _configured;

    /// <summary>Logits [T, V] (row-major) of <paramref name="tokens"/> at positions 0..T-1.</summary>
    public static float[] Logits(string ggufPath, IReadOnlyList<int> tokens, out int vocab)
    {
        lock (Gate)
        {
            if (!_configured)
            {
                // Silence llama.cpp's log; must be set before the native library loads.
                NativeLibraryConfig.All.WithLogCallback((level, message) => { });
                _configured = true;
            }

            int t = tokens.Count;
            var p = new ModelParams(ggufPath)
            {
                ContextSize = (uint)Math.Max(64, t),
                BatchSize = (uint)Math.Max(64, t),
                UBatchSize = (uint)Math.Max(64, t),
                TypeK = GGMLType.GGML_TYPE_F32,
                TypeV = GGMLType.GGML_TYPE_F32,
                FlashAttention = false,
                GpuLayerCount = 0,
                Threads = 2,
                BatchThreads = 2,
            };
            using var weights = LLamaWeights.LoadFromFile(p);
            using var ctx = weights.CreateContext(p);
            vocab = weights.Vocab.Count;
            var batch = new LLamaBatch();
            for (int i = 0; i < t; i++)
                batch.Add((LLamaToken)tokens[i], i, LLamaSeqId.Zero, logits: true);
            var result = ctx.Decode(batch);
            if (result != DecodeResult.Ok)
                throw new InvalidOperationException($"llama.cpp decode of {ggufPath} failed: {result}");
            var logits = new float[t * vocab];
            for (int i = 0; i < t; i++)
                ctx.NativeHandle.GetLogitsIth(i).CopyTo(logits.AsSpan(i * vocab, vocab));
            return logits;
        }
    }
}
