// Typed reads of Hugging Face config keys, each failure a ModelConfigException naming file and key.
// Why not JsonSerializer: configs mix int / list / null for the same key across writers (eos_token_id,
// sliding_window, rope_theta moving under rope_parameters), and each mismatch must say which key it is.
using System.Text.Json;

namespace ILGpuMoE.Model;

internal readonly struct ConfigReader
{
    private readonly JsonElement _root;

    public ConfigReader(string file, JsonElement root)
    {
        File = file;
        _root = root;
    }

    public string File { get; }

    public ModelConfigException Error(string? key, string problem) => new(File, key, problem);

    /// <summary>The value of a (possibly dotted, nested) key; false when absent or JSON null.</summary>
    public bool TryGet(string key, out JsonElement value)
    {
        value = _root;
        foreach (var part in key.Split('.'))
        {
            if (value.ValueKind != JsonValueKind.Object || !value.TryGetProperty(part, out value))
                return false;
        }

        return value.ValueKind != JsonValueKind.Null;
    }

    public bool Has(string key) => TryGet(key, out _);

    /// <summary>True when the (top-level) key is present with the value null (which some configs use for "none").</summary>
    public bool IsNull(string key) => _root.ValueKind == JsonValueKind.Object && _root.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Null;

    public int RequiredInt(string key) =>
        TryGet(key, out var v) ? AsInt(key, v) : throw Error(key, "is missing");

    public int? OptionalInt(string key) => TryGet(key, out var v) ? AsInt(key, v) : null;

    public int PositiveInt(string key)
    {
        var value = RequiredInt(key);
        return value > 0 ? value : throw Error(key, $"must be positive, got {value}");
    }

    public int? OptionalNonNegativeInt(string key)
    {
        var value = OptionalInt(key);
        return value is < 0 ? throw Error(key, $"must be non-negative, got {value}") : value;
    }

    public double? OptionalNonNegativeDouble(string key)
    {
        var value = OptionalDouble(key);
        return value is < 0 ? throw Error(key, $"must be non-negative, got {value}") : value;
    }

    public double RequiredDouble(string key) =>
        TryGet(key, out var v) ? AsDouble(key, v) : throw Error(key, "is missing");

    public double? OptionalDouble(string key) => TryGet(key, out var v) ? AsDouble(key, v) : null;

    public bool? OptionalBool(string key)
    {
        if (!TryGet(key, out var v))
            return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Error(key, $"must be true or false, got {Describe(v)}"),
        };
    }

    public string? OptionalString(string key)
    {
        if (!TryGet(key, out var v))
            return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Error(key, $"must be a string, got {Describe(v)}");
    }

    public IReadOnlyList<string> OptionalStringList(string key)
    {
        if (!TryGet(key, out var v))
            return [];
        if (v.ValueKind != JsonValueKind.Array)
            throw Error(key, $"must be a list of strings, got {Describe(v)}");
        var list = new List<string>();
        foreach (var item in v.EnumerateArray())
            list.Add(item.ValueKind == JsonValueKind.String ? item.GetString()! : throw Error(key, $"must be a list of strings, has {Describe(item)}"));
        return list;
    }

    /// <summary>A list of ints; empty when absent.</summary>
    public IReadOnlyList<int> OptionalIntList(string key)
    {
        if (!TryGet(key, out var v))
            return [];
        if (v.ValueKind != JsonValueKind.Array)
            throw Error(key, $"must be a list of integers, got {Describe(v)}");
        var list = new List<int>();
        foreach (var item in v.EnumerateArray())
            list.Add(AsInt(key, item));
        return list;
    }

    /// <summary>An int or a list of ints (eos_token_id is either); empty when absent.</summary>
    public IReadOnlyList<int> IntOrIntList(string key)
    {
        if (!TryGet(key, out var v))
            return [];
        if (v.ValueKind == JsonValueKind.Array)
        {
            var list = new List<int>();
            foreach (var item in v.EnumerateArray())
                list.Add(AsInt(key, item));
            return list;
        }

        return [AsInt(key, v)];
    }

    private int AsInt(string key, JsonElement v)
    {
        if (v.ValueKind != JsonValueKind.Number)
            throw Error(key, $"must be an integer, got {Describe(v)}");
        if (v.TryGetInt32(out var i))
            return i;
        // Python writers sometimes emit 4096.0 for an int field: accept exact integral doubles only.
        if (v.TryGetDouble(out var d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue)
            return (int)d;
        throw Error(key, $"must be a 32-bit integer, got {v.GetRawText()}");
    }

    private double AsDouble(string key, JsonElement v)
    {
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out var d) || !double.IsFinite(d))
            throw Error(key, $"must be a number, got {Describe(v)}");
        return d;
    }

    internal static string Describe(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.String => $"string \"{Clip(v.GetString() ?? "")}\"",
        JsonValueKind.Number => $"number {v.GetRawText()}",
        JsonValueKind.True or JsonValueKind.False => $"boolean {v.GetRawText()}",
        JsonValueKind.Array => "a list",
        JsonValueKind.Object => "an object",
        _ => "null",
    };

    private static string Clip(string s) => s.Length <= 40 ? s : s[..40] + "...";

    /// <summary>Parses a whole file; a missing file or malformed JSON becomes a ModelConfigException.</summary>
    public static JsonDocument ParseFile(string path)
    {
        string text;
        try
        {
            text = System.IO.File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelConfigException(path, null, $"cannot be read: {e.Message}", e);
        }

        return ParseText(text, path);
    }

    public static JsonDocument ParseText(string json, string file)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ModelConfigException(file, null, $"is not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1})", e);
        }

        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw new ModelConfigException(file, null, "must hold a JSON object at the top level");
        }

        return doc;
    }
}
