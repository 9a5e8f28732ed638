// Text generation: tokenize (optionally in the family's chat form: ModelFamily.ChatPrompt), prefill the prompt, then sample one token
// per decode step until EOS, the token budget, a full KV cache, or cancellation. Text is streamed through the
// tokenizer's streaming decoder (byte-fallback tokens are held until they complete a UTF-8 character).
//
// Timings: prefill = the prompt's forward pass (T tokens) and the first sample; time to first token is measured from
// the call (tokenization included); decode = the remaining steps, one token each.
using System.Diagnostics;
using ILGpuMoE.Model;
using ILGpuMoE.Sampling;
using ILGpuMoE.Tokenizer;

namespace ILGpuMoE.Runtime;

public enum StopReason
{
    /// <summary>The model produced an end-of-sequence token (not emitted as text).</summary>
    Eos,

    /// <summary>-n tokens were generated.</summary>
    MaxTokens,

    /// <summary>The KV cache (--max-seq) is full.</summary>
    CacheFull,

    /// <summary>Cancelled (Ctrl+C).</summary>
    Cancelled,
}

public sealed record GenerationOptions
{
    /// <summary>-n: most new tokens (EOS stops earlier).</summary>
    public int MaxNewTokens { get; init; } = 128;

    public SamplingOptions Sampling { get; init; } = new();

    /// <summary>Wrap the prompt as BOS + "[INST] prompt [/INST]".</summary>
    public bool Chat { get; init; }
}

public sealed record GenerationResult(
    IReadOnlyList<int> PromptTokens,
    IReadOnlyList<int> Tokens,
    string Text,
    StopReason Stop,
    TimeSpan TimeToFirstToken,
    TimeSpan Prefill,
    TimeSpan Decode)
{
    /// <summary>Prompt tokens per second of the prefill pass.</summary>
    public double PrefillTokensPerSecond => PromptTokens.Count / Math.Max(Prefill.TotalSeconds, 1e-9);

    /// <summary>Decode steps per second (tokens after the first; each needs one forward step).</summary>
    public int DecodeSteps { get; init; }

    public double DecodeTokensPerSecond => DecodeSteps == 0 ? 0 : DecodeSteps / Math.Max(Decode.TotalSeconds, 1e-9);

    /// <summary>Kernel launches of the decode steps (null when there were none).</summary>
    public LaunchStats? DecodeLaunches { get; init; }
}

/// <summary>
/// Kernel launches per decode step: fewest, most, mean, and the mean per decoder layer (the launches between the
/// embedding and the final norm, over the layers). Replayed: some steps came from a CUDA graph (their count is the
/// graph's node count, their per-layer share the plain step's).
/// </summary>
public sealed record LaunchStats(long Min, long Max, double Mean, double PerLayer, bool Replayed)
{
    public static LaunchStats? Of(IReadOnlyList<(long Step, double PerLayer)> steps, bool replayed)
    {
        if (steps.Count == 0)
            return null;
        return new LaunchStats(steps.Min(s => s.Step), steps.Max(s => s.Step), steps.Average(s => s.Step), steps.Average(s => s.PerLayer), replayed);
    }
}

public static class Generator
{
    /// <summary>The prompt's token ids (BOS first), in the family's chat form when asked (ModelFamily.ChatPrompt; Mixtral's
    /// when no family is given); checked against the model's vocabulary.</summary>
    public static IReadOnlyList<int> Tokenize(ITextTokenizer tokenizer, string prompt, bool chat, int vocab, ModelFamily? family = null)
    {
        var (text, bos) = chat ? (family ?? ModelFamilies.Mixtral).ChatPrompt(prompt) : (prompt, true);
        var ids = tokenizer.Encode(text, addBos: bos);
        for (int i = 0; i < ids.Count; i++)
        {
            if ((uint)ids[i] >= (uint)vocab)
                throw new RuntimeInputException($"the tokenizer gave id {ids[i]} (position {i}), outside the model's vocabulary [0, {vocab}): tokenizer and model do not match");
        }

        return ids;
    }

    /// <summary>
    /// Generates from <paramref name="prompt"/> on a fresh sequence of <paramref name="session"/> (its cache is reset).
    /// <paramref name="onText"/> receives each new piece of text as soon as it is complete.
    /// </summary>
    public static GenerationResult Run(InferenceSession session, ITextTokenizer tokenizer, string prompt, GenerationOptions options,
        Action<string>? onText = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        if (options.MaxNewTokens < 0)
            throw new RuntimeInputException($"-n must be >= 0, got {options.MaxNewTokens}");
        var sampler = new Sampler(options.Sampling);
        var config = session.Model.Config;
        var eos = new HashSet<int>(config.EosTokenIds) { tokenizer.EosId };

        var clock = Stopwatch.StartNew();
        var prompt_ = Tokenize(tokenizer, prompt, options.Chat, config.VocabSize, config.Family);
        session.Reset();
        var decoder = new StreamingDecoder(tokenizer);
        var generated = new List<int>();
        var text = new System.Text.StringBuilder();

        void Emit(string piece)
        {
            if (piece.Length == 0)
                return;
            text.Append(piece);
            onText?.Invoke(piece);
        }

        TimeSpan ttft = TimeSpan.Zero, prefill = TimeSpan.Zero;
        var stop = StopReason.MaxTokens;
        int decodeSteps = 0;
        long decodeStart = 0;
        var launches = new List<(long, double)>();
        bool replayed = false;
        if (options.MaxNewTokens > 0 && !cancel.IsCancellationRequested)
        {
            var logits = session.Prefill(prompt_.ToArray(), allLogits: false);
            while (true)
            {
                int next = sampler.Next(logits);
                if (generated.Count == 0)
                {
                    ttft = clock.Elapsed;
                    prefill = ttft;
                    decodeStart = Stopwatch.GetTimestamp();
                }

                if (eos.Contains(next))
                {
                    stop = StopReason.Eos;
                    break;
                }

                generated.Add(next);
                // A model vocabulary padded past the tokenizer's (ids with no piece) gives no text, not a crash.
                if (next < tokenizer.VocabSize)
                    Emit(decoder.Push(next));
                if (generated.Count >= options.MaxNewTokens)
                {
                    stop = StopReason.MaxTokens;
                    break;
                }

                if (cancel.IsCancellationRequested)
                {
                    stop = StopReason.Cancelled;
                    break;
                }

                if (session.Position >= session.Model.MaxSeq)
                {
                    stop = StopReason.CacheFull;
                    break;
                }

                logits = session.Decode(next);
                decodeSteps++;
                launches.Add((session.LastStepLaunches, session.LastStepLaunchesPerLayer));
                replayed |= session.LastStepReplayed;
            }
        }
        else if (cancel.IsCancellationRequested)
        {
            stop = StopReason.Cancelled;
        }

        Emit(decoder.Flush());
        var decode = decodeStart == 0 ? TimeSpan.Zero : Stopwatch.GetElapsedTime(decodeStart);
        return new GenerationResult(prompt_, generated, text.ToString(), stop, ttft, prefill, decode) {
            DecodeSteps = decodeSteps,
            // The CPU backend launches no kernel: no launch statistics to report.
            DecodeLaunches = session.Model.IsCpuBackend ? null : LaunchStats.Of(launches, replayed),
        };
    }
}
