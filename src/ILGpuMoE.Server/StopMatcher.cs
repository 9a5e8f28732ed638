// OpenAI's `stop`: generation ends as soon as the text contains one of the stop strings, and the returned text ends
// just before it (the stop string itself is never returned). "As soon as": the stop string that is complete first as
// the text grows wins (of two ending at the same character, the longer); with ["b", "aba"] the text "xaba..." stops at
// "xa", since "b" is complete before "aba" is. That rule gives the same cut however the text is split into pieces. Matched on the decoded text, not on token ids: a stop string
// may start or end in the middle of a token, or span several.
//
// Streaming needs holdback: a piece of text that could be the beginning of a stop string (the text ends with a proper
// prefix of one) is held until the next pieces show whether the stop string completes; it is released when it cannot
// any more. So no part of a stop string is ever sent, and everything else is sent as soon as it is certain.
// The non-streaming endpoints use the same matcher and concatenate what it releases.
namespace ILGpuMoE.Server;

/// <summary>Text in, releasable text out, with stop strings cut (the file header says how).</summary>
public sealed class StopMatcher
{
    private readonly string[] _stops;
    private readonly int _longest;
    private readonly System.Text.StringBuilder _held = new();

    /// <param name="stops">Non-empty stop strings (none: everything passes at once).</param>
    public StopMatcher(IReadOnlyList<string> stops)
    {
        ArgumentNullException.ThrowIfNull(stops);
        if (stops.Any(string.IsNullOrEmpty))
            throw new ArgumentException("stop strings must be non-empty", nameof(stops));
        _stops = [.. stops];
        _longest = _stops.Length == 0 ? 0 : _stops.Max(s => s.Length);
    }

    /// <summary>True once a stop string was found; everything after it is dropped.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds <paramref name="piece"/>; returns the text that can be sent now (possibly "").</summary>
    public string Push(string piece)
    {
        ArgumentNullException.ThrowIfNull(piece);
        if (Stopped || piece.Length == 0)
            return "";
        if (_stops.Length == 0)
            return piece;
        _held.Append(piece);
        string text = _held.ToString();
        // The stop string that completes first wins (ties: the one that starts first), as the text grows: so the cut
        // does not depend on how the text was split into pieces.
        int cut = -1, cutEnd = int.MaxValue;
        foreach (var s in _stops)
        {
            int at = text.IndexOf(s, StringComparison.Ordinal);
            if (at >= 0 && (at + s.Length < cutEnd || (at + s.Length == cutEnd && at < cut)))
                (cut, cutEnd) = (at, at + s.Length);
        }

        if (cut >= 0)
        {
            Stopped = true;
            _held.Clear();
            return text[..cut];
        }

        // Hold the longest tail that is a proper prefix of some stop string; release the rest.
        int hold = 0;
        for (int len = Math.Min(_longest - 1, text.Length); len > 0 && hold == 0; len--)
        {
            var tail = text.AsSpan(text.Length - len);
            foreach (var s in _stops)
            {
                if (s.Length > len && s.AsSpan(0, len).SequenceEqual(tail))
                {
                    hold = len;
                    break;
                }
            }
        }

        _held.Clear().Append(text, text.Length - hold, hold);
        return text[..^hold];
    }

    /// <summary>At the end of generation (no stop string came): the held text, which is now certain.</summary>
    public string Flush()
    {
        string rest = Stopped ? "" : _held.ToString();
        _held.Clear();
        return rest;
    }
}
