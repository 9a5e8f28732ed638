// SentencePiece tokenizer.model -> the tokenizer.json Hugging Face's converter (LlamaConverter) makes from it, run
// by Hugging Face's tokenizers: so a model directory with only tokenizer.model tokenizes exactly like its
// Hugging Face fast tokenizer. Merges follow Hugging Face's SentencePieceExtractor: for every piece (id order),
// every split into two pieces of the vocabulary, ordered by the parts' ids; then all merges stably sorted by the
// merged piece's score, highest first.
// Why not Microsoft.ML.Tokenizers 2.0.1's SentencePiece BPE: measured on TokenizerTests' hand-built vocabulary, it breaks ties between equal
// merges at different positions toward the right ("lll" -> l + ll), where SentencePiece and Hugging Face merge the
// leftmost pair (ll + l).
// Only BPE models with byte fallback are supported (Llama / Mistral / Mixtral); unigram models are refused.
// remove_extra_whitespaces is ignored, as Hugging Face's converter ignores it (Llama/Mistral set it false).
using System.Buffers.Binary;
using System.Text;

namespace ILGpuMoE.Tokenizer;

public static class SentencePieceModel
{
    private enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

    /// <summary>Opens a SentencePiece BPE tokenizer.model.</summary>
    public static HfTokenizer Load(string path)
    {
        if (!File.Exists(path))
            throw new TokenizerException($"{path}: tokenizer.model not found");
        var m = Parse(File.ReadAllBytes(path), path);
        if (m.ModelType != 2)
            throw new TokenizerException($"{path}: SentencePiece model type {m.ModelType} is not supported (BPE = 2 only)");
        if (!m.ByteFallback)
            throw new TokenizerException($"{path}: SentencePiece model without byte_fallback is not supported");
        int n = m.Pieces.Count;
        foreach (var (what, id) in new[] { ("unk_id", m.UnkId), ("bos_id", m.BosId), ("eos_id", m.EosId) })
        {
            if ((uint)id >= (uint)n)
                throw new TokenizerException($"{path}: {what} {id} is outside the {n} pieces");
        }

        var pieces = m.Pieces.Select(p => p.Piece).ToArray();
        var index = new Dictionary<string, int>(n);
        for (int i = 0; i < n; i++)
        {
            if (!index.TryAdd(pieces[i], i))
                throw new TokenizerException($"{path}: piece \"{pieces[i]}\" appears twice");
        }

        var merges = new List<(string L, string R, float Score)>();
        for (int id = 0; id < n; id++)
        {
            string piece = pieces[id];
            var local = new List<(string, string, float)>();
            for (int cut = 1; cut < piece.Length; cut++)
            {
                // Never split a surrogate pair (Python's str indexing is by code point).
                if (char.IsLowSurrogate(piece[cut]))
                    continue;
                string l = piece[..cut], r = piece[cut..];
                if (index.ContainsKey(l) && index.ContainsKey(r))
                    local.Add((l, r, m.Pieces[id].Score));
            }

            merges.AddRange(local.OrderBy(x => index[x.Item1]).ThenBy(x => index[x.Item2]));
        }

        var ordered = merges.OrderByDescending(x => x.Score).Select(x => (x.L, x.R)).ToList(); // OrderBy is stable
        var added = new List<(int, bool)>();
        for (int i = 0; i < n; i++)
        {
            var t = m.Pieces[i].Type;
            if (t is PieceType.Unknown or PieceType.Control)
                added.Add((i, true));
            else if (t == PieceType.UserDefined)
                added.Add((i, false));
        }

        string tmp = Path.Combine(Path.GetTempPath(), $"ilgpumoe-spm-{Environment.ProcessId}-{Guid.NewGuid():N}.json");
        try
        {
            using (var stream = File.Create(tmp))
                HfTokenizerJson.WriteJson(stream, pieces, ordered, added, m.UnkId, m.BosId, m.AddDummyPrefix);
            return HfTokenizer.Load(tmp, path, (m.BosId, m.EosId));
        }
        finally
        {
            File.Delete(tmp);
        }
    }

    private sealed record Model(List<(string Piece, float Score, PieceType Type)> Pieces, int ModelType, bool ByteFallback,
        int UnkId, int BosId, int EosId, bool AddDummyPrefix);

    // ModelProto: 1 pieces {1 piece, 2 score, 3 type}, 2 trainer_spec {3 model_type, 35 byte_fallback, 40 unk_id,
    // 41 bos_id, 42 eos_id}, 3 normalizer_spec {3 add_dummy_prefix}. Defaults as in sentencepiece_model.proto.
    private static Model Parse(byte[] data, string path)
    {
        var pieces = new List<(string, float, PieceType)>();
        int modelType = 1, unk = 0, bos = 1, eos = 2;
        bool byteFallback = false, dummy = true;
        try
        {
            var r = new Reader(data, 0, data.Length);
            while (r.More)
            {
                var (field, wire) = r.Tag();
                if (field == 1 && wire == 2)
                {
                    var (s, e) = r.Sub();
                    var p = new Reader(data, s, e);
                    string piece = "";
                    float score = 0;
                    var type = PieceType.Normal;
                    while (p.More)
                    {
                        var (f, w) = p.Tag();
                        if (f == 1 && w == 2)
                            piece = p.String();
                        else if (f == 2 && w == 5)
                            score = p.Float();
                        else if (f == 3 && w == 0)
                            type = (PieceType)(int)p.Varint();
                        else
                            p.Skip(w);
                    }

                    pieces.Add((piece, score, type));
                }
                else if (field == 2 && wire == 2)
                {
                    var (s, e) = r.Sub();
                    var t = new Reader(data, s, e);
                    while (t.More)
                    {
                        var (f, w) = t.Tag();
                        switch (f, w)
                        {
                            case (3, 0): modelType = (int)t.Varint(); break;
                            case (35, 0): byteFallback = t.Varint() != 0; break;
                            case (40, 0): unk = (int)t.Varint(); break;
                            case (41, 0): bos = (int)t.Varint(); break;
                            case (42, 0): eos = (int)t.Varint(); break;
                            default: t.Skip(w); break;
                        }
                    }
                }
                else if (field == 3 && wire == 2)
                {
                    var (s, e) = r.Sub();
                    var nr = new Reader(data, s, e);
                    while (nr.More)
                    {
                        var (f, w) = nr.Tag();
                        if (f == 3 && w == 0)
                            dummy = nr.Varint() != 0;
                        else
                            nr.Skip(w);
                    }
                }
                else
                {
                    r.Skip(wire);
                }
            }
        }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentException or InvalidDataException or DecoderFallbackException)
        {
            throw new TokenizerException($"{path}: not a valid SentencePiece model ({e.Message})", e);
        }

        if (pieces.Count == 0)
            throw new TokenizerException($"{path}: not a valid SentencePiece model (no pieces)");
        return new Model(pieces, modelType, byteFallback, unk, bos, eos, dummy);
    }

    private struct Reader(byte[] data, int pos, int end)
    {
        private int _pos = pos;

        public readonly bool More => _pos < end;

        public ulong Varint()
        {
            ulong v = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= end)
                    throw new InvalidDataException("truncated varint");
                byte b = data[_pos++];
                v |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80)
                    return v;
            }

            throw new InvalidDataException("varint longer than 10 bytes");
        }

        public (int Field, int Wire) Tag()
        {
            ulong t = Varint();
            return ((int)(t >> 3), (int)(t & 7));
        }

        public (int Start, int End) Sub()
        {
            ulong len = Varint();
            if (len > (ulong)(end - _pos))
                throw new InvalidDataException("length past the end");
            int s = _pos;
            _pos += (int)len;
            return (s, _pos);
        }

        public string String()
        {
            var (s, e) = Sub();
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(data, s, e - s);
        }

        public float Float()
        {
            if (end - _pos < 4)
                throw new InvalidDataException("truncated float");
            float f = BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(_pos, 4));
            _pos += 4;
            return f;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: Advance(8); break;
                case 2: Sub(); break;
                case 5: Advance(4); break;
                default: throw new InvalidDataException($"unsupported wire type {wire}");
            }
        }

        private void Advance(int n)
        {
            if (end - _pos < n)
                throw new InvalidDataException("truncated field");
            _pos += n;
        }
    }
}
