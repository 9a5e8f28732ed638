using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace ILGpuMoE.IO;

/// <summary>
/// Parses and validates a safetensors JSON header in one forward pass of <see cref="Utf8JsonReader"/> (no DOM:
/// JsonDocument would silently keep duplicate names), then checks that the tensors tile the data section.
/// Cost is O(header bytes + n log n) for n tensors; nothing here touches the data section.
/// </summary>
internal static class SafeTensorsHeader
{
    public const string MetadataKey = "__metadata__";

    public sealed record Parsed(List<TensorInfo> Tensors, Dictionary<string, string> Metadata);

    public static Parsed Parse(string file, ReadOnlySpan<byte> header, long dataLength)
    {
        if (!Utf8.IsValid(header))
            throw Fail(SafeTensorsError.InvalidHeader, file, null, "header is not valid UTF-8");

        var tensors = new List<TensorInfo>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var names = new HashSet<string>(StringComparer.Ordinal);
        bool sawMetadata = false;
        var reader = new Utf8JsonReader(header, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow });
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                throw Fail(SafeTensorsError.InvalidHeader, file, null, $"header is not a JSON object (starts with {reader.TokenType})");

            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                string name = reader.GetString()!;
                reader.Read();
                if (name == MetadataKey)
                {
                    if (sawMetadata)
                        throw Fail(SafeTensorsError.DuplicateName, file, null, $"'{MetadataKey}' appears twice in the header");
                    sawMetadata = true;
                    ParseMetadata(file, ref reader, metadata);
                    continue;
                }

                if (!names.Add(name))
                    throw Fail(SafeTensorsError.DuplicateName, file, name, "name appears twice in the header");
                tensors.Add(ParseEntry(file, name, ref reader, dataLength));
            }

            // The root object is closed; anything but whitespace after it is an error (Read throws on it).
            if (reader.Read())
                throw Fail(SafeTensorsError.InvalidHeader, file, null, "content after the header's JSON object");
        }
        catch (JsonException e)
        {
            throw Fail(SafeTensorsError.InvalidHeader, file, null,
                $"header is not valid JSON at byte {reader.BytesConsumed}: {SafeTensorsException.Printable(e.Message)}", e);
        }

        CheckTiling(file, tensors, dataLength);
        return new Parsed(tensors, metadata);
    }

    private static void ParseMetadata(string file, ref Utf8JsonReader reader, Dictionary<string, string> metadata)
    {
        if (reader.TokenType == JsonTokenType.Null)
            return; // the reference implementation accepts null as "no metadata"
        if (reader.TokenType != JsonTokenType.StartObject)
            throw Fail(SafeTensorsError.InvalidMetadata, file, null, $"'{MetadataKey}' is {reader.TokenType}, expected an object of strings");
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string key = reader.GetString()!;
            reader.Read();
            if (reader.TokenType != JsonTokenType.String)
                throw Fail(SafeTensorsError.InvalidMetadata, file, null,
                    $"'{MetadataKey}' value of key '{SafeTensorsException.Printable(key)}' is {reader.TokenType}, expected a string");
            if (!metadata.TryAdd(key, reader.GetString()!))
                throw Fail(SafeTensorsError.InvalidMetadata, file, null, $"'{MetadataKey}' key '{SafeTensorsException.Printable(key)}' appears twice");
        }
    }

    private static TensorInfo ParseEntry(string file, string name, ref Utf8JsonReader reader, long dataLength)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
            throw Fail(SafeTensorsError.InvalidEntry, file, name, $"entry is {reader.TokenType}, expected an object with dtype, shape, data_offsets");

        DType? dtype = null;
        List<long>? shape = null;
        long begin = -1, end = -1;
        bool sawOffsets = false;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            if (reader.ValueTextEquals("dtype"u8))
            {
                if (dtype is not null)
                    throw Fail(SafeTensorsError.InvalidEntry, file, name, "field 'dtype' appears twice");
                reader.Read();
                if (reader.TokenType != JsonTokenType.String)
                    throw Fail(SafeTensorsError.InvalidEntry, file, name, $"dtype is {reader.TokenType}, expected a string");
                string text = reader.GetString()!;
                if (!DTypes.TryParse(text, out var parsed))
                    throw Fail(SafeTensorsError.UnknownDType, file, name, $"unknown dtype '{SafeTensorsException.Printable(text)}'");
                dtype = parsed;
            }
            else if (reader.ValueTextEquals("shape"u8))
            {
                if (shape is not null)
                    throw Fail(SafeTensorsError.InvalidEntry, file, name, "field 'shape' appears twice");
                reader.Read();
                if (reader.TokenType != JsonTokenType.StartArray)
                    throw Fail(SafeTensorsError.InvalidEntry, file, name, $"shape is {reader.TokenType}, expected an array of integers");
                shape = [];
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long d) || d < 0)
                        throw Fail(SafeTensorsError.InvalidShape, file, name, $"shape dimension {shape.Count} is {TokenText(ref reader)}, expected a non-negative integer");
                    shape.Add(d);
                }
            }
            else if (reader.ValueTextEquals("data_offsets"u8))
            {
                if (sawOffsets)
                    throw Fail(SafeTensorsError.InvalidEntry, file, name, "field 'data_offsets' appears twice");
                sawOffsets = true;
                reader.Read();
                if (reader.TokenType != JsonTokenType.StartArray)
                    throw Fail(SafeTensorsError.InvalidEntry, file, name, $"data_offsets is {reader.TokenType}, expected [begin, end]");
                int count = 0;
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.Number)
                        throw Fail(SafeTensorsError.InvalidEntry, file, name, $"data_offsets[{count}] is {reader.TokenType}, expected an integer");
                    if (!reader.TryGetInt64(out long v) || v < 0)
                        throw Fail(SafeTensorsError.OffsetOutOfRange, file, name, $"data_offsets[{count}] is {TokenText(ref reader)}, expected an integer in [0, {dataLength}]");
                    if (count == 0)
                        begin = v;
                    else
                        end = v;
                    count++;
                    if (count > 2)
                        break;
                }

                if (count != 2)
                    throw Fail(SafeTensorsError.InvalidEntry, file, name, "data_offsets must be exactly [begin, end]");
            }
            else
            {
                // Unknown fields are ignored, as the reference implementation does.
                reader.Read();
                reader.Skip();
            }
        }

        if (dtype is null)
            throw Fail(SafeTensorsError.InvalidEntry, file, name, "entry has no 'dtype'");
        if (shape is null)
            throw Fail(SafeTensorsError.InvalidEntry, file, name, "entry has no 'shape'");
        if (!sawOffsets)
            throw Fail(SafeTensorsError.InvalidEntry, file, name, "entry has no 'data_offsets'");

        long elements = 1, bytes;
        try
        {
            foreach (long d in shape)
                elements = checked(elements * d);
            bytes = checked(elements * DTypes.SizeOf(dtype.Value));
        }
        catch (OverflowException)
        {
            throw Fail(SafeTensorsError.InvalidShape, file, name, $"shape [{string.Join(", ", shape)}] of {DTypes.ToName(dtype.Value)} overflows 64-bit byte counts");
        }

        if (begin > end || end > dataLength)
            throw Fail(SafeTensorsError.OffsetOutOfRange, file, name, $"data_offsets [{begin}, {end}] are outside the data section [0, {dataLength}]");
        if (end - begin != bytes)
            throw Fail(SafeTensorsError.SizeMismatch, file, name,
                $"data_offsets [{begin}, {end}] span {end - begin} bytes but {DTypes.ToName(dtype.Value)} [{string.Join(", ", shape)}] needs {bytes}");
        return new TensorInfo(name, dtype.Value, [.. shape], begin, bytes);
    }

    /// <summary>Sorted by begin, the tensors must cover [0, dataLength) exactly once: no overlap, no hole, no trailing bytes.</summary>
    private static void CheckTiling(string file, List<TensorInfo> tensors, long dataLength)
    {
        var sorted = tensors.ToArray();
        Array.Sort(sorted, static (a, b) => a.Offset != b.Offset
            ? a.Offset.CompareTo(b.Offset)
            : a.ByteLength.CompareTo(b.ByteLength));
        long covered = 0;
        TensorInfo? previous = null;
        foreach (var t in sorted)
        {
            if (t.Offset < covered)
                throw Fail(SafeTensorsError.Overlap, file, t.Name,
                    $"bytes [{t.Offset}, {t.Offset + t.ByteLength}) overlap tensor '{SafeTensorsException.Printable(previous!.Name)}' ending at {covered}");
            if (t.Offset > covered)
                throw Fail(SafeTensorsError.Hole, file, t.Name,
                    $"data section bytes [{covered}, {t.Offset}) before this tensor belong to no tensor");
            covered = t.Offset + t.ByteLength;
            previous = t;
        }

        if (covered != dataLength)
            throw Fail(SafeTensorsError.TrailingBytes, file, previous?.Name,
                $"data section has {dataLength - covered} trailing bytes after the last tensor (tensors cover {covered} of {dataLength})");
    }

    private static string TokenText(ref Utf8JsonReader reader)
    {
        if (reader.TokenType is not (JsonTokenType.Number or JsonTokenType.String))
            return reader.TokenType.ToString();
        var raw = reader.ValueSpan;
        return SafeTensorsException.Printable(Encoding.UTF8.GetString(raw[..Math.Min(raw.Length, 64)]));
    }

    internal static SafeTensorsException Fail(SafeTensorsError kind, string file, string? tensor, string what, Exception? inner = null)
        => SafeTensorsException.Create(kind, file, tensor, what, inner);
}
