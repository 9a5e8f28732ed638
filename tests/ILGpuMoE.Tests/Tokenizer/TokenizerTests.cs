using ILGpuMoE.Testing;
using ILGpuMoE.Tokenizer;

namespace ILGpuMoE.Tests.Tokenizer;

/// <summary>
/// A tiny SentencePiece-BPE vocabulary built here by hand; expected ids are derived by hand from the BPE rules
/// (merge the adjacent pair of lowest rank, leftmost first; a character outside the vocabulary becomes its
/// UTF-8 byte pieces) and checked against both loaders: tokenizer.json (Hugging Face's tokenizers) and
/// tokenizer.model (SentencePiece, converted to Hugging Face's form).
/// </summary>
public class TokenizerTests
{
    // ids: 0 <unk>, 1 <s>, 2 </s>, 3 + b for byte b, then these pieces from 259 on.
    private static readonly string[] Extra =
    [
        "▁", "e", "t", "h", "l", "o", // 259..264
        "▁t", "he", "▁the", "ll", "llo", "▁he", "▁hello", // 265..271
        "1", "2", "12", "é", "日", // 272..276
        "w", "r", "d", "▁w", "or", "▁wor", "ld", "▁world", // 277..284
    ];

    // Rank order = the id order of the piece each merge makes (Hugging Face's conversion of SentencePiece).
    private static readonly (string, string)[] Merges =
    [
        ("▁", "t"), ("h", "e"), ("▁t", "he"), ("l", "l"), ("ll", "o"), ("▁", "he"), ("▁he", "llo"),
        ("1", "2"), ("▁", "w"), ("o", "r"), ("▁w", "or"), ("l", "d"), ("▁wor", "ld"),
    ];

    private static int B(int b) => 3 + b;

    // Hand-derived (see each comment); none of these came from running a tokenizer.
    private static readonly (string Text, int[] Ids)[] Cases =
    [
        // ▁hello: (h,e) r1, (l,l) r3, (ll,o) r4, (▁,he) r5, (▁he,llo) r6; ▁world: (▁,w), (o,r), (▁w,or), (l,d), (▁wor,ld).
        ("hello world", [271, 284]),
        // ▁the ▁12 ▁hello: "▁12" has no (▁,1) or (▁,12) merge, so ▁ + 12.
        ("the 12 hello", [267, 259, 274, 271]),
        // ▁2112: only (1,2) applies, at the second 1.
        ("2112", [259, 273, 272, 274]),
        // c, a, f are not pieces: bytes 0x63, 0x61, 0x66; 本 = E6 9C AC.
        ("café 日本", [259, B(0x63), B(0x61), B(0x66), 275, 259, 276, B(0xE6), B(0x9C), B(0xAC)]),
        // i is 0x69; 😀 = F0 9F 98 80.
        ("hi 😀", [259, 262, B(0x69), 259, B(0xF0), B(0x9F), B(0x98), B(0x80)]),
        // leading spaces are kept: ▁▁▁the.
        ("  the", [259, 259, 267]),
        // newline is byte 0x0A; "world" without ▁: (o,r) then (l,d); no "wor" piece.
        ("hello\nworld", [271, B(0x0A), 277, 281, 283]),
        // trailing space: ▁hello▁.
        ("hello ", [271, 259]),
        // equal merges at two positions: the leftmost goes first, (l,l) l, not l (l,l).
        ("lll", [259, 268, 263]),
    ];

    private string _dir = "";

    [OneTimeSetUp]
    public void WriteTokenizers()
    {
        _dir = Path.Combine(Path.GetTempPath(), "ilgpumoe-tok-" + Guid.NewGuid().ToString("N"));
        var pieces = new List<string> { "<unk>", "<s>", "</s>" };
        for (int b = 0; b < 256; b++)
            pieces.Add($"<0x{b:X2}>");
        pieces.AddRange(Extra);
        HfTokenizerJson.Write(_dir, pieces, Merges);

        // SentencePiece: merges come from scores; score = -id keeps the same order as the merge ranks.
        var sp = new List<(string, float, SentencePieceProto.PieceType)>
        {
            ("<unk>", 0, SentencePieceProto.PieceType.Unknown),
            ("<s>", 0, SentencePieceProto.PieceType.Control),
            ("</s>", 0, SentencePieceProto.PieceType.Control),
        };
        for (int b = 0; b < 256; b++)
            sp.Add(($"<0x{b:X2}>", 0, SentencePieceProto.PieceType.Byte));
        for (int i = 0; i < Extra.Length; i++)
            sp.Add((Extra[i], -(259 + i), SentencePieceProto.PieceType.Normal));
        File.WriteAllBytes(Path.Combine(_dir, "tokenizer.model"), SentencePieceProto.Build(sp));
    }

    [OneTimeTearDown]
    public void Clean() => Directory.Delete(_dir, recursive: true);

    private ITextTokenizer Open(string kind) => kind == "json"
        ? TextTokenizer.Load(Path.Combine(_dir, "tokenizer.json"))
        : TextTokenizer.Load(Path.Combine(_dir, "tokenizer.model"));

    [TestCase("json")]
    [TestCase("model")]
    public void EncodesHandDerivedIds(string kind)
    {
        using var tok = Open(kind);
        Assert.That(tok.VocabSize, Is.EqualTo(259 + Extra.Length));
        Assert.That(tok.BosId, Is.EqualTo(1));
        Assert.That(tok.EosId, Is.EqualTo(2));
        Assert.That(tok.AddsDummyPrefix, Is.True);
        foreach (var (text, ids) in Cases)
        {
            Assert.That(tok.Encode(text, addBos: false), Is.EqualTo(ids), $"{kind}: \"{text}\"");
            Assert.That(tok.Encode(text, addBos: true), Is.EqualTo(new[] { 1 }.Concat(ids)), $"{kind}: BOS + \"{text}\"");
        }

        Assert.That(tok.Encode("", addBos: false), Is.Empty);
        Assert.That(tok.Encode("", addBos: true), Is.EqualTo(new[] { 1 }));
    }

    [TestCase("json")]
    [TestCase("model")]
    public void DecodeRoundTripsAndSkipsSpecials(string kind)
    {
        using var tok = Open(kind);
        foreach (var (text, ids) in Cases)
        {
            Assert.That(tok.Decode(ids), Is.EqualTo(text), $"{kind}: decode \"{text}\"");
            Assert.That(tok.Decode(tok.Encode(text, addBos: true)), Is.EqualTo(text), $"{kind}: round trip \"{text}\"");
            Assert.That(tok.Decode([1, .. ids, 2]), Is.EqualTo(text), $"{kind}: specials skipped \"{text}\"");
        }

        Assert.Throws<ArgumentOutOfRangeException>(() => tok.Decode([5, tok.VocabSize]));
    }

    [TestCase("json")]
    [TestCase("model")]
    public void StreamingDecodeMatchesDecode(string kind)
    {
        using var tok = Open(kind);
        foreach (var (text, ids) in Cases)
        {
            var stream = new StreamingDecoder(tok);
            var parts = new List<string> { stream.Push(1) };
            parts.AddRange(ids.Select(stream.Push));
            parts.Add(stream.Push(2));
            parts.Add(stream.Flush());
            Assert.That(string.Concat(parts), Is.EqualTo(text), $"{kind}: streamed \"{text}\"");
        }

        // Byte pieces hold text back until the character is complete: 本 = E6 9C AC.
        var s = new StreamingDecoder(tok);
        Assert.That(s.Push(276), Is.EqualTo("日"));
        Assert.That(s.Push(B(0xE6)), Is.EqualTo(""));
        Assert.That(s.Push(B(0x9C)), Is.EqualTo(""));
        Assert.That(s.Push(B(0xAC)), Is.EqualTo("本"));
        // The dummy-prefix space goes only at the very start.
        Assert.That(s.Push(271), Is.EqualTo(" hello"));
        var fresh = new StreamingDecoder(tok);
        Assert.That(fresh.Push(271), Is.EqualTo("hello"));
        Assert.That(new StreamingDecoder(tok, stripLeadingSpace: false).Push(271), Is.EqualTo(" hello"));
        // An unfinished character at the end becomes U+FFFD per byte; a stray continuation byte too.
        Assert.That(fresh.Push(B(0xE6)) + fresh.Push(B(0x9C)) + fresh.Flush(), Is.EqualTo("\uFFFD\uFFFD"));
        Assert.That(fresh.Push(B(0x80)) + fresh.Push(259), Is.EqualTo("\uFFFD "));
    }

    [Test]
    public void JsonAndModelAgreeOnRandomText()
    {
        using var json = Open("json");
        using var model = Open("model");
        var rng = new Random(5);
        string[] alphabet = ["h", "e", "l", "o", "w", "r", "d", "t", "1", "2", " ", "é", "日", "x", "😀", "\n", "ll", "the"];
        for (int n = 0; n < 300; n++)
        {
            string text = string.Concat(Enumerable.Range(0, rng.Next(1, 12)).Select(_ => alphabet[rng.Next(alphabet.Length)]));
            var a = json.Encode(text, addBos: true);
            Assert.That(model.Encode(text, addBos: true), Is.EqualTo(a), $"\"{text}\"");
            Assert.That(json.Decode(a), Is.EqualTo(text), $"json round trip \"{text}\"");
            Assert.That(model.Decode(a), Is.EqualTo(text), $"model round trip \"{text}\"");
            var stream = new StreamingDecoder(json);
            Assert.That(string.Concat(a.Select(stream.Push)) + stream.Flush(), Is.EqualTo(text), $"streamed \"{text}\"");
        }
    }

    [Test]
    public void MistralChatWrapsPrompt()
    {
        using var tok = Open("json");
        Assert.That(MistralChat.WrapText("hello"), Is.EqualTo("[INST] hello [/INST]"));
        int[] inst = [B('['), B('I'), B('N'), B('S'), B('T'), B(']')];
        int[] close = [B('['), B('/'), B('I'), B('N'), B('S'), B('T'), B(']')];
        int[] expected = [1, 259, .. inst, 271, 259, .. close];
        Assert.That(MistralChat.Wrap(tok, "hello"), Is.EqualTo(expected));
    }

    [Test]
    public void SyntheticVocabIsConsistentAndExact()
    {
        foreach (int v in new[] { SyntheticVocab.MinimumSize, 512, 1000, 32000 })
        {
            var (pieces, merges) = SyntheticVocab.Build(v);
            Assert.That(pieces, Has.Length.EqualTo(v));
            Assert.That(pieces.Distinct().Count(), Is.EqualTo(v));
            Assert.That(pieces[3], Is.EqualTo("<0x00>"));
            Assert.That(pieces[258], Is.EqualTo("<0xFF>"));
            var index = pieces.Select((p, i) => (p, i)).ToDictionary(x => x.p, x => x.i);
            foreach (var (l, r) in merges)
                Assert.That(index[l] < index[l + r] && index[r] < index[l + r], $"V={v}: merge {l} {r}");
        }

        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => SyntheticVocab.Build(SyntheticVocab.MinimumSize - 1));
        Assert.That(ex!.Message, Does.Contain("too small"));
    }

    [Test]
    public void SyntheticVocabTokenizesWords()
    {
        string dir = Path.Combine(_dir, "synthetic");
        var (pieces, merges) = SyntheticVocab.Build(512);
        HfTokenizerJson.Write(dir, pieces, merges);
        using var tok = TextTokenizer.Load(dir);
        Assert.That(tok.VocabSize, Is.EqualTo(512));
        var index = pieces.Select((p, i) => (p, i)).ToDictionary(x => x.p, x => x.i);
        // Every word piece is built left to right from ▁, so a listed word is one token.
        Assert.That(tok.Encode("the and", addBos: true), Is.EqualTo(new[] { 1, index["▁the"], index["▁and"] }));
        Assert.That(tok.Decode(tok.Encode("Hello, wörld 42!", addBos: true)), Is.EqualTo("Hello, wörld 42!"));
    }

    [Test]
    public void BadFilesGiveClearErrors()
    {
        Assert.That(Assert.Throws<TokenizerException>(() => TextTokenizer.Load(Path.Combine(_dir, "nope")))!.Message, Does.Contain("not found"));
        string empty = Path.Combine(_dir, "empty");
        Directory.CreateDirectory(empty);
        Assert.That(Assert.Throws<TokenizerException>(() => TextTokenizer.Load(empty))!.Message, Does.Contain("no tokenizer.json"));
        string bad = Path.Combine(_dir, "bad.json");
        File.WriteAllText(bad, "{ \"model\": [1, 2");
        Assert.That(Assert.Throws<TokenizerException>(() => TextTokenizer.Load(bad))!.Message, Does.Contain(bad));
        string wordLevel = Path.Combine(_dir, "wl.json");
        File.WriteAllText(wordLevel, "{ \"model\": { \"type\": \"WordLevel\", \"vocab\": {} } }");
        Assert.That(Assert.Throws<TokenizerException>(() => TextTokenizer.Load(wordLevel))!.Message, Does.Contain("WordLevel"));
        string badModel = Path.Combine(_dir, "bad.model");
        File.WriteAllBytes(badModel, [0xFF, 0xFF, 0xFF]);
        Assert.That(Assert.Throws<TokenizerException>(() => TextTokenizer.Load(badModel))!.Message, Does.Contain(badModel));
    }
}
