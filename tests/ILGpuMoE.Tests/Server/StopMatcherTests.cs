using ILGpuMoE.Server;

namespace ILGpuMoE.Tests.Server;

/// <summary>StopMatcher (src/ILGpuMoE.Server/StopMatcher.cs): the text before the first stop string and nothing of the stop
/// string, for any split of the text into pieces; held text is released as soon as no stop string can start in it.</summary>
public class StopMatcherTests
{
    // The released text for a split of `text` into pieces of the given sizes (and the pieces it released).
    private static (string Text, List<string> Released, bool Stopped) Feed(string text, IReadOnlyList<string> stops, Random split)
    {
        var m = new StopMatcher(stops);
        var released = new List<string>();
        for (int at = 0; at < text.Length && !m.Stopped;)
        {
            int n = Math.Min(text.Length - at, 1 + split.Next(5));
            released.Add(m.Push(text.Substring(at, n)));
            at += n;
        }

        released.Add(m.Flush());
        return (string.Concat(released), released, m.Stopped);
    }

    // The plain definition, character by character: the first prefix of the text that ends with a stop string stops it,
    // cut before the longest stop string it ends with.
    private static (string Text, bool Stopped) Expected(string text, IReadOnlyList<string> stops)
    {
        for (int end = 1; end <= text.Length; end++)
        {
            string prefix = text[..end];
            var hit = stops.Where(s => prefix.EndsWith(s, StringComparison.Ordinal)).OrderByDescending(s => s.Length).FirstOrDefault();
            if (hit is not null)
                return (prefix[..^hit.Length], true);
        }

        return (text, false);
    }

    [Test]
    public void AnySplitGivesTheTextBeforeTheFirstStopString()
    {
        var rng = new Random(42);
        const string alphabet = "ab c\n";
        for (int trial = 0; trial < 3000; trial++)
        {
            string text = new(Enumerable.Range(0, rng.Next(0, 40)).Select(_ => alphabet[rng.Next(alphabet.Length)]).ToArray());
            var stops = Enumerable.Range(0, rng.Next(0, 4)).Select(_ => new string(Enumerable.Range(0, 1 + rng.Next(4)).Select(_ => alphabet[rng.Next(alphabet.Length)]).ToArray())).ToArray();
            var (got, _, stopped) = Feed(text, stops, rng);
            var (want, wantStopped) = Expected(text, stops);
            Assert.That((got, stopped), Is.EqualTo((want, wantStopped)), $"text {text.ReplaceLineEndings("\\n")} stops [{string.Join(", ", stops)}]");
        }
    }

    [Test]
    public void APossibleStartIsHeldUntilItCannotBeAStopStringAndThenReleased()
    {
        var m = new StopMatcher(["END", "\n\n"]);
        Assert.That(m.Push("hello E"), Is.EqualTo("hello "), "'E' may begin END");
        Assert.That(m.Push("N"), Is.EqualTo(""), "'EN' may too");
        Assert.That(m.Push("d"), Is.EqualTo("ENd"), "'ENd' cannot: released");
        Assert.That(m.Push(" x\n"), Is.EqualTo(" x"), "one newline may begin two");
        Assert.That(m.Push("y"), Is.EqualTo("\ny"));
        Assert.That(m.Push("EN"), Is.EqualTo(""));
        Assert.That(m.Flush(), Is.EqualTo("EN"), "at the end, held text is certain");
        Assert.That(m.Stopped, Is.False);
    }

    [Test]
    public void TheStopStringCompleteFirstWinsHoweverTheTextIsSplit()
    {
        foreach (var pieces in new[] { new[] { "xaba" }, ["xa", "ba"], ["x", "a", "b", "a"] })
        {
            var m = new StopMatcher(["b", "aba"]);
            Assert.That(string.Concat(pieces.Select(m.Push)) + m.Flush(), Is.EqualTo("xa"), string.Join("|", pieces));
        }
    }

    [Test]
    public void AStopStringAcrossPiecesIsNeverSentAndEndsTheText()
    {
        var m = new StopMatcher(["<|end|>"]);
        Assert.That(m.Push("answer <|"), Is.EqualTo("answer "));
        Assert.That(m.Push("en"), Is.EqualTo(""));
        Assert.That(m.Push("d|> more"), Is.EqualTo(""));
        Assert.That(m.Stopped, Is.True);
        Assert.That(m.Push("later"), Is.EqualTo(""), "nothing after the stop");
        Assert.That(m.Flush(), Is.EqualTo(""));
    }

    [Test]
    public void WithoutStopStringsEverythingPassesAtOnce()
    {
        var m = new StopMatcher([]);
        Assert.That(m.Push("abc"), Is.EqualTo("abc"));
        Assert.That(m.Flush(), Is.EqualTo(""));
    }

    [Test]
    public void AnEmptyStopStringIsRefused() => Assert.Throws<ArgumentException>(() => _ = new StopMatcher(["a", ""]));
}
