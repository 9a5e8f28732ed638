// What the server serves besides the engine: the model's name (as /v1/models reports it and requests must name it), its
// tokenizer (text <-> ids; the engine sees ids only), its family's chat format and the ids that end a generation.
using ILGpuMoE.Model;
using ILGpuMoE.Tokenizer;

namespace ILGpuMoE.Server;

/// <summary>The served model's name, tokenizer, chat format and stop ids. The tokenizer stays the caller's to dispose.</summary>
public sealed class ServedModel
{
    private readonly object _encodeLock = new();

    public ServedModel(string id, ITextTokenizer tokenizer, ModelFamily family, IEnumerable<int> stopTokenIds)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(id);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(family);
        ArgumentNullException.ThrowIfNull(stopTokenIds);
        Id = id;
        Tokenizer = tokenizer;
        Family = family;
        StopTokenIds = new HashSet<int>(stopTokenIds);
    }

    /// <summary>The model config's EOS ids and the tokenizer's EOS end a generation (what `generate` stops on).</summary>
    public static ServedModel For(string id, ModelConfig config, ITextTokenizer tokenizer) =>
        new(id, tokenizer, config.Family, config.EosTokenIds.Append(tokenizer.EosId));

    /// <summary>The name /v1/models lists and every request must give as "model".</summary>
    public string Id { get; }

    public ITextTokenizer Tokenizer { get; }

    public ModelFamily Family { get; }

    public IReadOnlySet<int> StopTokenIds { get; }

    /// <summary>Unix seconds when this server started serving the model (/v1/models' "created").</summary>
    public long Created { get; } = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>Encodes under a lock: the native tokenizer is not documented as safe for concurrent calls.</summary>
    public IReadOnlyList<int> Encode(string text, bool addBos)
    {
        lock (_encodeLock)
            return Tokenizer.Encode(text, addBos);
    }
}
