using System.Text.Json;

namespace ILGpuMoE.Tokenizer;

/// <summary>
/// A Hugging Face tokenizer.json run by Hugging Face's own tokenizers library (Rust, through Tokenizers.DotNet),
/// so normalization, BPE merges, byte fallback and decoding are exactly Hugging Face's. This class reads the
/// vocabulary itself (pieces for streaming, special flags, BOS/EOS from tokenizer_config.json) and undoes the
/// post-processor's template so that BOS is added only on request.
/// </summary>
public sealed class HfTokenizer : ITextTokenizer
{
    private readonly Tokenizers.DotNet.Tokenizer _native;
    private readonly string _path;
    private readonly string[] _pieces;
    private readonly bool[] _special;
    private readonly int _templatePrefix, _templateSuffix;

    public int BosId { get; }
    public int EosId { get; }
    public int VocabSize => _pieces.Length;
    public bool AddsDummyPrefix { get; }

    private HfTokenizer(string path, Tokenizers.DotNet.Tokenizer native, string[] pieces, bool[] special, int bos, int eos, bool dummyPrefix)
    {
        _path = path;
        _native = native;
        _pieces = pieces;
        _special = special;
        BosId = bos;
        EosId = eos;
        AddsDummyPrefix = dummyPrefix;

        // The post-processor (TemplateProcessing "<s> $A" for Mistral) wraps every Encode; measure the wrapper once.
        int[] empty = NativeEncode("");
        int[] one = NativeEncode("a");
        int prefix = 0;
        while (prefix < empty.Length && prefix < one.Length && empty[prefix] == one[prefix] && special[empty[prefix]])
            prefix++;
        _templatePrefix = prefix;
        _templateSuffix = empty.Length - prefix;
    }

    /// <summary>Opens tokenizer.json at <paramref name="path"/> (tokenizer_config.json beside it names BOS/EOS).</summary>
    public static HfTokenizer Load(string path) => Load(path, path, null);

    // displayPath names the user's file in errors (a converted tokenizer.model is loaded from a temporary json);
    // bosEos overrides tokenizer_config.json.
    internal static HfTokenizer Load(string path, string displayPath, (int Bos, int Eos)? bosEos)
    {
        if (!File.Exists(path))
            throw new TokenizerException($"{path}: tokenizer.json not found");

        string[] pieces;
        bool[] special;
        bool dummyPrefix;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
                throw new TokenizerException($"{path}: no \"model\" object");
            string type = model.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
            if (type != "BPE")
                throw new TokenizerException($"{path}: model type \"{type}\" is not supported (SentencePiece-style BPE only)");
            if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
                throw new TokenizerException($"{path}: model.vocab is missing");

            var byId = new Dictionary<int, (string Piece, bool Special)>();
            foreach (var entry in vocab.EnumerateObject())
                Add(byId, entry.Value.GetInt32(), entry.Name, false, path);
            if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            {
                foreach (var a in added.EnumerateArray())
                {
                    int id = a.GetProperty("id").GetInt32();
                    string content = a.GetProperty("content").GetString() ?? "";
                    bool isSpecial = a.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True;
                    byId.Remove(id);
                    Add(byId, id, content, isSpecial, path);
                }
            }

            int size = byId.Count == 0 ? 0 : byId.Keys.Max() + 1;
            if (size != byId.Count)
                throw new TokenizerException($"{path}: vocabulary ids are not contiguous ({byId.Count} entries, largest id {size - 1})");
            pieces = new string[size];
            special = new bool[size];
            foreach (var (id, (piece, isSpecial)) in byId)
            {
                pieces[id] = piece;
                special[id] = isSpecial;
            }

            dummyPrefix = HasDummyPrefix(root);
        }
        catch (JsonException e)
        {
            throw new TokenizerException($"{path}: not valid tokenizer JSON ({e.Message})", e);
        }
        catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException)
        {
            throw new TokenizerException($"{path}: malformed tokenizer.json ({e.Message})", e);
        }

        int bos, eos;
        if (bosEos is { } given)
        {
            (bos, eos) = given;
        }
        else
        {
            var index = new Dictionary<string, int>(pieces.Length);
            for (int i = 0; i < pieces.Length; i++)
                index.TryAdd(pieces[i], i);
            var (bosPiece, eosPiece) = ReadBosEos(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "tokenizer_config.json"));
            if (!index.TryGetValue(bosPiece, out bos))
                throw new TokenizerException($"{path}: BOS token \"{bosPiece}\" is not in the vocabulary");
            if (!index.TryGetValue(eosPiece, out eos))
                throw new TokenizerException($"{path}: EOS token \"{eosPiece}\" is not in the vocabulary");
        }

        Tokenizers.DotNet.Tokenizer native;
        try
        {
            native = new Tokenizers.DotNet.Tokenizer(path);
        }
        catch (Exception e)
        {
            throw new TokenizerException($"{displayPath}: Hugging Face tokenizers refused the file ({e.Message})", e);
        }

        return new HfTokenizer(displayPath, native, pieces, special, bos, eos, dummyPrefix);
    }

    public IReadOnlyList<int> Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        int[] raw = NativeEncode(text);
        int n = raw.Length - _templatePrefix - _templateSuffix;
        var ids = new List<int>(n + 1);
        if (addBos)
            ids.Add(BosId);
        ids.AddRange(raw.AsSpan(_templatePrefix, n));
        return ids;
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        TextTokenizer.CheckIds(ids, VocabSize, _path);
        var u = new uint[ids.Count];
        for (int i = 0; i < u.Length; i++)
            u[i] = (uint)ids[i];
        return _native.Decode(u);
    }

    public string GetPiece(int id) => (uint)id < (uint)_pieces.Length
        ? _pieces[id]
        : throw new ArgumentOutOfRangeException(nameof(id), $"{_path}: token id {id} is outside the vocabulary [0, {VocabSize})");

    public bool IsSpecial(int id) => (uint)id < (uint)_special.Length && _special[id];

    public void Dispose() => _native.Dispose();

    private int[] NativeEncode(string text)
    {
        uint[] raw = _native.Encode(text);
        var ids = new int[raw.Length];
        for (int i = 0; i < raw.Length; i++)
            ids[i] = (int)raw[i];
        return ids;
    }

    private static void Add(Dictionary<int, (string, bool)> byId, int id, string piece, bool isSpecial, string path)
    {
        if (id < 0)
            throw new TokenizerException($"{path}: negative token id {id} for \"{piece}\"");
        if (!byId.TryAdd(id, (piece, isSpecial)))
            throw new TokenizerException($"{path}: token id {id} is used twice (\"{byId[id].Item1}\" and \"{piece}\")");
    }

    // Mistral's files say it either as a normalizer (Prepend "▁") or as a Metaspace pre-tokenizer.
    private static bool HasDummyPrefix(JsonElement root)
    {
        bool found = false;
        void Visit(JsonElement e)
        {
            if (e.ValueKind == JsonValueKind.Array)
            {
                foreach (var x in e.EnumerateArray())
                    Visit(x);
                return;
            }

            if (e.ValueKind != JsonValueKind.Object)
                return;
            string type = e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "";
            if (type == "Prepend" && e.TryGetProperty("prepend", out var p) && p.GetString() == "\u2581")
                found = true;
            if (type == "Metaspace")
            {
                if (e.TryGetProperty("prepend_scheme", out var scheme))
                    found |= scheme.GetString() != "never";
                else if (e.TryGetProperty("add_prefix_space", out var aps))
                    found |= aps.ValueKind == JsonValueKind.True;
            }

            foreach (var key in new[] { "normalizers", "pretokenizers" })
            {
                if (e.TryGetProperty(key, out var list))
                    Visit(list);
            }
        }

        if (root.TryGetProperty("normalizer", out var n))
            Visit(n);
        if (root.TryGetProperty("pre_tokenizer", out var pt))
            Visit(pt);
        return found;
    }

    private static (string Bos, string Eos) ReadBosEos(string configPath)
    {
        string bos = "<s>", eos = "</s>";
        if (!File.Exists(configPath))
            return (bos, eos);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(configPath));
            bos = TokenText(doc.RootElement, "bos_token") ?? bos;
            eos = TokenText(doc.RootElement, "eos_token") ?? eos;
        }
        catch (JsonException e)
        {
            throw new TokenizerException($"{configPath}: not valid JSON ({e.Message})", e);
        }

        return (bos, eos);
    }

    // "bos_token": "<s>" or {"content": "<s>", ...}
    private static string? TokenText(JsonElement root, string key)
    {
        if (!root.TryGetProperty(key, out var v))
            return null;
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) => c.GetString(),
            _ => null,
        };
    }
}
