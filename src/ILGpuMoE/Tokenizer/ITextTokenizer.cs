namespace ILGpuMoE.Tokenizer;

/// <summary>
/// A text tokenizer for SentencePiece-BPE vocabularies (Mistral / Mixtral / Llama): byte fallback
/// (pieces &lt;0x00&gt;..&lt;0xFF&gt;), '▁' (U+2581) for spaces, a dummy '▁' before the text, &lt;s&gt; / &lt;/s&gt; / &lt;unk&gt;.
/// Load one with <see cref="TextTokenizer.Load"/>.
/// </summary>
public interface ITextTokenizer : IDisposable
{
    /// <summary>Token ids of <paramref name="text"/>; BOS first when <paramref name="addBos"/>; never EOS.</summary>
    IReadOnlyList<int> Encode(string text, bool addBos);

    /// <summary>Text of <paramref name="ids"/>: special tokens skipped, byte tokens fused into UTF-8, the dummy-prefix space removed.</summary>
    string Decode(IReadOnlyList<int> ids);

    int BosId { get; }
    int EosId { get; }

    /// <summary>Number of ids (the largest id + 1), added/special tokens included.</summary>
    int VocabSize { get; }

    /// <summary>The vocabulary entry of <paramref name="id"/> as stored ("▁the", "&lt;0x0A&gt;", "&lt;s&gt;").</summary>
    string GetPiece(int id);

    /// <summary>True for special/control tokens (&lt;s&gt;, &lt;/s&gt;, &lt;unk&gt;, ...): Decode skips them.</summary>
    bool IsSpecial(int id);

    /// <summary>True when encoding puts a '▁' before the text, so decoding removes one leading space.</summary>
    bool AddsDummyPrefix { get; }
}

/// <summary>A tokenizer file that is missing, malformed or of an unsupported kind; the message names the file.</summary>
public sealed class TokenizerException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Opens the tokenizer of a Hugging Face model directory.</summary>
public static class TextTokenizer
{
    /// <summary>
    /// <paramref name="path"/> is a model directory, a tokenizer.json or a tokenizer.model. In a directory
    /// tokenizer.json (Hugging Face's tokenizers library, exact) wins over tokenizer.model (SentencePiece, converted as Hugging Face converts it).
    /// </summary>
    public static ITextTokenizer Load(string path)
    {
        if (Directory.Exists(path))
        {
            string json = Path.Combine(path, "tokenizer.json");
            if (File.Exists(json))
                return HfTokenizer.Load(json);
            string model = Path.Combine(path, "tokenizer.model");
            if (File.Exists(model))
                return SentencePieceModel.Load(model);
            throw new TokenizerException($"{path}: no tokenizer.json or tokenizer.model in this directory");
        }

        if (!File.Exists(path))
            throw new TokenizerException($"{path}: tokenizer file not found");
        return path.EndsWith(".model", StringComparison.OrdinalIgnoreCase)
            ? SentencePieceModel.Load(path)
            : HfTokenizer.Load(path);
    }

    /// <summary>The byte of a byte-fallback piece "&lt;0xNN&gt;", or -1.</summary>
    public static int ByteOfPiece(string piece)
    {
        if (piece.Length != 6 || !piece.StartsWith("<0x", StringComparison.Ordinal) || piece[5] != '>')
            return -1;
        int hi = HexDigit(piece[3]), lo = HexDigit(piece[4]);
        return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
    }

    private static int HexDigit(char c) => c switch
    {
        >= '0' and <= '9' => c - '0',
        >= 'A' and <= 'F' => c - 'A' + 10,
        _ => -1,
    };

    internal static void CheckIds(IReadOnlyList<int> ids, int vocabSize, string what)
    {
        for (int i = 0; i < ids.Count; i++)
        {
            if ((uint)ids[i] >= (uint)vocabSize)
                throw new ArgumentOutOfRangeException(nameof(ids), $"{what}: token id {ids[i]} at position {i} is outside the vocabulary [0, {vocabSize})");
        }
    }
}
