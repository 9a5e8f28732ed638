namespace ILGpuMoE.Testing;

/// <summary>
/// A synthetic SentencePiece-BPE vocabulary of exactly V entries, laid out like Mistral's: &lt;unk&gt; 0, &lt;s&gt; 1,
/// &lt;/s&gt; 2, the 256 byte-fallback pieces &lt;0x00&gt;..&lt;0xFF&gt; (ids 3..258), then '▁' and single characters,
/// then '▁'-words built one character at a time (merge (prefix, next char) makes each), frequent English words
/// first, then every '▁'-string over a..z in length order. Each piece's merge parents come before it, so any
/// prefix of the list is a consistent vocabulary; merge ranks follow ids, as in Hugging Face's conversion.
/// </summary>
public static class SyntheticVocab
{
    public const int FirstBytePiece = 3;
    public const int ByteCount = 256;

    /// <summary>The fixed pieces every synthetic vocabulary has: specials, bytes, '▁' and a..z.</summary>
    public const int MinimumSize = FirstBytePiece + ByteCount + 1 + 26;

    private static readonly string[] Words =
    [
        "the", "of", "and", "to", "a", "in", "is", "that", "it", "for", "was", "on", "are", "as", "with", "he", "they",
        "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what", "all", "were", "we",
        "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do", "how", "their", "if", "will",
        "up", "other", "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like",
        "him", "into", "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could",
        "people", "my", "than", "first", "water", "been", "call", "who", "now", "find", "long", "down", "day", "did",
        "get", "come", "made", "may", "part", "hello", "world", "model", "expert", "token",
    ];

    /// <summary>The V pieces (index = id) and the merges (rank order) that build the multi-character ones.</summary>
    public static (string[] Pieces, (string Left, string Right)[] Merges) Build(int vocabSize)
    {
        if (vocabSize < MinimumSize)
            throw new ArgumentOutOfRangeException(nameof(vocabSize), $"synthetic vocabulary: V = {vocabSize} is too small; it needs at least {MinimumSize} entries (<unk>, <s>, </s>, 256 byte pieces, '▁', a..z)");

        var pieces = new List<string>(vocabSize) { "<unk>", "<s>", "</s>" };
        for (int b = 0; b < ByteCount; b++)
            pieces.Add($"<0x{b:X2}>");
        var merges = new List<(string, string)>();
        var seen = new HashSet<string>(pieces);

        bool Add(string piece, (string, string)? merge)
        {
            if (pieces.Count == vocabSize)
                return false;
            if (seen.Add(piece))
            {
                pieces.Add(piece);
                if (merge is { } m)
                    merges.Add(m);
            }

            return true;
        }

        // Adds "▁" + word through its prefixes ▁w, ▁wo, ▁wor, ...
        bool AddWord(string word)
        {
            string prefix = "\u2581";
            foreach (char c in word)
            {
                string next = prefix + c;
                if (!Add(next, (prefix, c.ToString())))
                    return false;
                prefix = next;
            }

            return true;
        }

        Add("\u2581", null);
        for (char c = 'a'; c <= 'z'; c++)
            Add(c.ToString(), null);
        var singles = new List<string>();
        for (char c = 'A'; c <= 'Z'; c++)
            singles.Add(c.ToString());
        for (char c = '0'; c <= '9'; c++)
            singles.Add(c.ToString());
        singles.AddRange([".", ",", "!", "?", "'", "\"", "-", ":", ";", "(", ")"]);
        foreach (string s in singles)
        {
            if (!Add(s, null))
                return Done();
        }

        foreach (string w in Words)
        {
            if (!AddWord(w))
                return Done();
        }

        // Fill: every ▁-string over a..z by length (▁a..▁z are already in from the words or come first here).
        var level = new List<string> { "" };
        while (true)
        {
            var nextLevel = new List<string>(level.Count * 26);
            foreach (string s in level)
            {
                for (char c = 'a'; c <= 'z'; c++)
                {
                    string w = s + c;
                    nextLevel.Add(w);
                    if (!Add("\u2581" + w, ("\u2581" + s, c.ToString())))
                        return Done();
                }
            }

            level = nextLevel;
        }

        (string[], (string, string)[]) Done() => (pieces.ToArray(), merges.ToArray());
    }
}
