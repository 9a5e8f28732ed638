using System.Buffers;
using System.Text;

namespace ILGpuMoE.Tokenizer;

/// <summary>
/// Turns generated ids into text as they arrive. Byte-fallback tokens (&lt;0xE6&gt;&lt;0x97&gt;&lt;0xA5&gt; = "日")
/// are held until they complete a UTF-8 character; '▁' becomes a space; special tokens give no text; the
/// first space of the whole output is dropped when the tokenizer adds a dummy prefix (what Decode does).
/// For valid text the concatenation of every Push plus Flush equals Decode(all ids). A byte run that is not
/// valid UTF-8 gives one U+FFFD per bad byte here, while Hugging Face's decoder replaces every byte of the run.
/// </summary>
public sealed class StreamingDecoder
{
    private readonly ITextTokenizer _tokenizer;
    private readonly bool _stripLeadingSpace;
    private readonly byte[] _pending = new byte[4];
    private int _pendingCount;
    private bool _emittedAny;

    /// <param name="stripLeadingSpace">Drop the first output space (set false to continue an earlier stream).</param>
    public StreamingDecoder(ITextTokenizer tokenizer, bool stripLeadingSpace = true)
    {
        _tokenizer = tokenizer;
        _stripLeadingSpace = stripLeadingSpace && tokenizer.AddsDummyPrefix;
    }

    /// <summary>The new text that <paramref name="id"/> completes (often "", e.g. mid-character).</summary>
    public string Push(int id)
    {
        if ((uint)id >= (uint)_tokenizer.VocabSize)
            throw new ArgumentOutOfRangeException(nameof(id), $"StreamingDecoder: token id {id} is outside the vocabulary [0, {_tokenizer.VocabSize})");
        if (_tokenizer.IsSpecial(id))
            return "";

        var sb = new StringBuilder();
        string piece = _tokenizer.GetPiece(id);
        int b = TextTokenizer.ByteOfPiece(piece);
        if (b >= 0)
        {
            _pending[_pendingCount++] = (byte)b;
            DrainPending(sb, final: false);
        }
        else
        {
            DrainPending(sb, final: true);
            sb.Append(piece.Replace('\u2581', ' '));
        }

        return Emit(sb);
    }

    /// <summary>Text still held (an unfinished UTF-8 sequence becomes U+FFFD per byte).</summary>
    public string Flush()
    {
        var sb = new StringBuilder();
        DrainPending(sb, final: true);
        return Emit(sb);
    }

    /// <summary>Starts a new output (the leading-space rule applies again).</summary>
    public void Reset()
    {
        _pendingCount = 0;
        _emittedAny = false;
    }

    private string Emit(StringBuilder sb)
    {
        if (sb.Length == 0)
            return "";
        if (!_emittedAny)
        {
            _emittedAny = true;
            if (_stripLeadingSpace && sb[0] == ' ')
                sb.Remove(0, 1);
        }

        return sb.ToString();
    }

    // Decodes complete characters from the held bytes; keeps an unfinished tail unless final.
    private void DrainPending(StringBuilder sb, bool final)
    {
        int start = 0;
        while (start < _pendingCount)
        {
            var status = System.Text.Rune.DecodeFromUtf8(_pending.AsSpan(start, _pendingCount - start), out var rune, out int used);
            if (status == OperationStatus.Done)
            {
                sb.Append(rune.ToString());
                start += used;
            }
            else if (status == OperationStatus.NeedMoreData && !final)
            {
                break;
            }
            else
            {
                // Invalid (or unfinished at the end): one replacement character per byte, like Hugging Face's ByteFallback.
                int bad = status == OperationStatus.NeedMoreData ? _pendingCount - start : Math.Max(used, 1);
                sb.Append('\uFFFD', bad);
                start += bad;
            }
        }

        _pending.AsSpan(start, _pendingCount - start).CopyTo(_pending);
        _pendingCount -= start;
    }
}
