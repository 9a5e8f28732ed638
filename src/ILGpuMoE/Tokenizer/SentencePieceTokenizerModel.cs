using Microsoft.ML.Tokenizers;

namespace ILGpuMoE.Tokenizer;

/// <summary>
/// A SentencePiece tokenizer.model (protobuf) run by Microsoft.ML.Tokenizers' SentencePiece BPE, which follows
/// SentencePiece's own algorithm (score-ordered merges, byte fallback, dummy prefix). Used when a model
/// directory has no tokenizer.json.
/// </summary>
public sealed class SentencePieceTokenizerModel : ITextTokenizer
{
    private readonly SentencePieceTokenizer _sp;
    private readonly string _path;
    private readonly string[] _pieces;
    private readonly bool[] _special;

    public int BosId => _sp.BeginningOfSentenceId;
    public int EosId => _sp.EndOfSentenceId;
    public int VocabSize => _pieces.Length;
    public bool AddsDummyPrefix => _sp.AddDummyPrefix;

    private SentencePieceTokenizerModel(string path, SentencePieceTokenizer sp)
    {
        _path = path;
        _sp = sp;
        int size = sp.Vocabulary.Count == 0 ? 0 : sp.Vocabulary.Values.Max() + 1;
        _pieces = new string[size];
        _special = new bool[size];
        foreach (var (piece, id) in sp.Vocabulary)
            _pieces[id] = piece;
        for (int i = 0; i < size; i++)
            _pieces[i] ??= "";
        foreach (int id in new[] { sp.BeginningOfSentenceId, sp.EndOfSentenceId, sp.UnknownId })
        {
            if ((uint)id < (uint)size)
                _special[id] = true;
        }

        if (sp.SpecialTokens is { } specials)
        {
            foreach (var (_, id) in specials)
            {
                if ((uint)id < (uint)size)
                    _special[id] = true;
            }
        }
    }

    /// <summary>Opens a SentencePiece tokenizer.model.</summary>
    public static SentencePieceTokenizerModel Load(string path)
    {
        if (!File.Exists(path))
            throw new TokenizerException($"{path}: tokenizer.model not found");
        try
        {
            using var stream = File.OpenRead(path);
            return new SentencePieceTokenizerModel(path, SentencePieceTokenizer.Create(stream, addBeginningOfSentence: false, addEndOfSentence: false));
        }
        catch (Exception e) when (e is not TokenizerException)
        {
            throw new TokenizerException($"{path}: not a usable SentencePiece model ({e.Message})", e);
        }
    }

    public IReadOnlyList<int> Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        if (addBos)
            ids.Add(BosId); // by hand: the library adds nothing at all for ""
        ids.AddRange(_sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false));
        return ids;
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        TextTokenizer.CheckIds(ids, VocabSize, _path);
        return _sp.Decode(ids, considerSpecialTokens: false);
    }

    public string GetPiece(int id) => (uint)id < (uint)_pieces.Length
        ? _pieces[id]
        : throw new ArgumentOutOfRangeException(nameof(id), $"{_path}: token id {id} is outside the vocabulary [0, {VocabSize})");

    public bool IsSpecial(int id) => (uint)id < (uint)_special.Length && _special[id];

    public void Dispose()
    {
    }
}
