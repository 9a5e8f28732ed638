// What a server needs from the runtime: submit a tokenized request, read its tokens as they are sampled, cancel it,
// and read the engine's counters. The HTTP layer (src/ILGpuMoE.Server) speaks only to this interface, so the engine
// behind it can change (one request at a time, or continuous batching over a paged KV cache) without touching it.
//
// Text is the server's business (tokenizing, chat templates, stop strings, detokenizing); the engine sees token ids.
using ILGpuMoE.Sampling;

namespace ILGpuMoE.Serving;

/// <summary>One generation: the prompt's ids (BOS and chat form already applied), at most <paramref name="MaxTokens"/> new
/// tokens, sampled with <paramref name="Sampling"/>; a sampled id in <paramref name="StopTokenIds"/> ends it (and is not
/// returned).</summary>
public sealed record GenerationRequest(IReadOnlyList<int> PromptTokens, int MaxTokens, SamplingOptions Sampling, IReadOnlySet<int> StopTokenIds);

/// <summary>Why a generation ended.</summary>
public enum FinishReason
{
    /// <summary>MaxTokens reached, or the context is full.</summary>
    Length,

    /// <summary>A stop token was sampled.</summary>
    Stop,

    /// <summary>The caller cancelled it.</summary>
    Cancelled,
}

/// <summary>A request the engine refuses before it starts; <see cref="Retryable"/> true means "busy, try again later"
/// (HTTP 503), false means the request itself is wrong (HTTP 400, <see cref="Param"/> names the field).</summary>
public sealed class EngineRejectedException(string message, string? param = null, bool retryable = false) : Exception(message)
{
    public string? Param { get; } = param;

    public bool Retryable { get; } = retryable;
}

/// <summary>One running generation: its tokens as they come, and how it ended.</summary>
public interface IGeneration
{
    /// <summary>The sampled ids, in order; the sequence completes when the generation ends (for any reason).</summary>
    IAsyncEnumerable<int> Tokens { get; }

    /// <summary>Why it ended; awaited after <see cref="Tokens"/> completes. Faults with the engine's error if a step failed.</summary>
    Task<FinishReason> Finished { get; }
}

/// <summary>Counters for /metrics, read at any time from any thread.</summary>
public sealed record EngineStats(
    int Running,
    int Waiting,
    long PromptTokens,
    long GeneratedTokens,
    int KvBlocksUsed,
    int KvBlocksFree,
    IReadOnlyList<IReadOnlyList<long>> TokensPerExpert);

/// <summary>A model behind a server.</summary>
public interface IGenerationEngine : IAsyncDisposable
{
    /// <summary>The most tokens (prompt + generated) one sequence may hold.</summary>
    int ContextLength { get; }

    /// <summary>Starts <paramref name="request"/>; throws <see cref="EngineRejectedException"/> when it cannot run
    /// (prompt too long, no room). Cancelling <paramref name="cancel"/> ends it with <see cref="FinishReason.Cancelled"/>
    /// and frees what it held.</summary>
    IGeneration Submit(GenerationRequest request, CancellationToken cancel);

    /// <summary>The counters now.</summary>
    EngineStats Stats();
}
