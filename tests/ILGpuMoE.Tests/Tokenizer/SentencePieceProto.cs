namespace ILGpuMoE.Tests.Tokenizer;

/// <summary>
/// Writes a SentencePiece tokenizer.model (protobuf ModelProto) by hand, so the tokenizer.model path is tested
/// on a vocabulary we control: pieces with scores and types, a BPE trainer spec with byte fallback, and
/// Llama/Mistral's normalizer settings (dummy prefix, spaces kept).
/// </summary>
internal static class SentencePieceProto
{
    public enum PieceType { Normal = 1, Unknown = 2, Control = 3, Byte = 6 }

    public static byte[] Build(IReadOnlyList<(string Piece, float Score, PieceType Type)> pieces)
    {
        var model = new List<byte>();
        foreach (var (piece, score, type) in pieces)
        {
            var p = new List<byte>();
            WriteString(p, 1, piece);
            WriteTag(p, 2, 5);
            p.AddRange(BitConverter.GetBytes(score));
            WriteVarintField(p, 3, (ulong)type);
            WriteBytes(model, 1, p);
        }

        var trainer = new List<byte>();
        WriteVarintField(trainer, 3, 2); // model_type BPE
        WriteVarintField(trainer, 4, (ulong)pieces.Count); // vocab_size
        WriteVarintField(trainer, 35, 1); // byte_fallback
        WriteVarintField(trainer, 40, 0); // unk_id
        WriteVarintField(trainer, 41, 1); // bos_id
        WriteVarintField(trainer, 42, 2); // eos_id
        WriteVarintField(trainer, 43, unchecked((ulong)-1L)); // pad_id = -1
        WriteBytes(model, 2, trainer);

        var normalizer = new List<byte>();
        WriteString(normalizer, 1, "identity");
        WriteVarintField(normalizer, 3, 1); // add_dummy_prefix
        WriteVarintField(normalizer, 4, 0); // remove_extra_whitespaces
        WriteVarintField(normalizer, 5, 1); // escape_whitespaces
        WriteBytes(model, 3, normalizer);
        return model.ToArray();
    }

    private static void WriteTag(List<byte> o, int field, int wire) => WriteVarint(o, (ulong)((field << 3) | wire));

    private static void WriteVarintField(List<byte> o, int field, ulong v)
    {
        WriteTag(o, field, 0);
        WriteVarint(o, v);
    }

    private static void WriteString(List<byte> o, int field, string s) => WriteBytes(o, field, System.Text.Encoding.UTF8.GetBytes(s));

    private static void WriteBytes(List<byte> o, int field, IReadOnlyCollection<byte> bytes)
    {
        WriteTag(o, field, 2);
        WriteVarint(o, (ulong)bytes.Count);
        o.AddRange(bytes);
    }

    private static void WriteVarint(List<byte> o, ulong v)
    {
        while (v >= 0x80)
        {
            o.Add((byte)(v | 0x80));
            v >>= 7;
        }

        o.Add((byte)v);
    }
}
