// The request bodies of POST /v1/completions and /v1/chat/completions, read from JSON and checked field by field, so
// that each fault is one HTTP 400 naming its field (OpenAI's error object: message, type "invalid_request_error",
// param, code). Read by hand from a JsonDocument rather than bound to a class: binding reports a wrong type as a
// generic failure without the field, and cannot tell a missing field from null or an unknown field from a known one.
//
// Supported, as OpenAI defines them: model, prompt (string, [string], token ids, [token ids]) or messages (system /
// developer / user / assistant, content as a string or text parts), max_tokens (chat also max_completion_tokens),
// temperature [0, 2], top_p (0, 1], seed, stop (a string or up to 4), n = 1, stream, stream_options.include_usage, and
// top_k (an extension vLLM also takes; 0 or -1 = off). Accepted and ignored: user, metadata, store, service_tier.
// Options the engine cannot honour (n > 1, logprobs, echo, best_of, suffix, penalties, logit_bias, tools, functions,
// response formats other than text, ...) are refused when set to anything but their neutral value, and an unknown
// field is refused as OpenAI does ("unrecognized request argument").
using System.Text.Json;
using ILGpuMoE.Model;

namespace ILGpuMoE.Server;

/// <summary>An error the client gets as {"error": {...}} with this HTTP status.</summary>
public sealed class ApiException(int status, string message, string? param = null, string type = "invalid_request_error") : Exception(message)
{
    public int Status { get; } = status;

    public string? Param { get; } = param;

    public string Type { get; } = type;

    public static ApiException BadRequest(string message, string? param = null) => new(400, message, param);
}

/// <summary>A prompt as the client gave it: text to tokenize, or token ids.</summary>
public sealed record PromptInput(string? Text, IReadOnlyList<int>? Tokens);

/// <summary>A checked completion or chat request.</summary>
public sealed record OpenAiRequest
{
    public required string Model { get; init; }

    /// <summary>/v1/completions: the prompt; null for chat.</summary>
    public PromptInput? Prompt { get; init; }

    /// <summary>/v1/chat/completions: the conversation; null for completions.</summary>
    public IReadOnlyList<ChatMessage>? Messages { get; init; }

    /// <summary>Null: the endpoint's default (16 for completions, as OpenAI; the rest of the context for chat).</summary>
    public int? MaxTokens { get; init; }

    public float Temperature { get; init; } = 1f;

    public float TopP { get; init; } = 1f;

    public int TopK { get; init; }

    /// <summary>Null: a random seed.</summary>
    public long? Seed { get; init; }

    public IReadOnlyList<string> Stop { get; init; } = [];

    public bool Stream { get; init; }

    public bool IncludeUsage { get; init; }

    /// <summary>Reads and checks a body; throws <see cref="ApiException"/> (400) naming the first bad field.</summary>
    public static OpenAiRequest Parse(JsonElement root, bool chat)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw ApiException.BadRequest($"the request body must be a JSON object, got {Kind(root)}");
        var known = chat ? ChatFields : CompletionFields;
        foreach (var p in root.EnumerateObject())
        {
            if (!known.Contains(p.Name) && !Ignored.Contains(p.Name) && !Unsupported.ContainsKey(p.Name))
                throw ApiException.BadRequest($"unrecognized request argument supplied: {p.Name}", p.Name);
            if (Unsupported.TryGetValue(p.Name, out var neutral) && !neutral(p.Value))
                throw ApiException.BadRequest($"'{p.Name}' is not supported by this server (leave it out{NeutralHint(p.Name)})", p.Name);
        }

        string model = Get(root, "model") is { } m
            ? m.ValueKind == JsonValueKind.String ? m.GetString()! : throw WrongType("model", "a string", m)
            : throw ApiException.BadRequest("you must provide a model parameter", "model");

        int? maxTokens = OptionalInt(root, "max_tokens");
        if (chat && OptionalInt(root, "max_completion_tokens") is { } completionTokens)
        {
            if (maxTokens is not null && maxTokens != completionTokens)
                throw ApiException.BadRequest("give max_tokens or max_completion_tokens, not both with different values", "max_completion_tokens");
            maxTokens = completionTokens;
        }

        if (maxTokens is <= 0)
            throw ApiException.BadRequest($"max_tokens must be at least 1, got {maxTokens}", chat && Get(root, "max_tokens") is null ? "max_completion_tokens" : "max_tokens");

        float temperature = OptionalNumber(root, "temperature") ?? 1f;
        if (!(temperature >= 0 && temperature <= 2))
            throw ApiException.BadRequest($"temperature must be between 0 and 2, got {temperature}", "temperature");
        float topP = OptionalNumber(root, "top_p") ?? 1f;
        if (!(topP > 0 && topP <= 1))
            throw ApiException.BadRequest($"top_p must be in (0, 1], got {topP}", "top_p");
        int topK = OptionalInt(root, "top_k") ?? 0;
        if (topK < -1)
            throw ApiException.BadRequest($"top_k must be >= 0 (0 or -1: off), got {topK}", "top_k");
        long? seed = Get(root, "seed") is { } s
            ? s.ValueKind == JsonValueKind.Number && s.TryGetInt64(out long sv) ? sv : throw WrongType("seed", "an integer", s)
            : null;
        int n = OptionalInt(root, "n") ?? 1;
        if (n != 1)
            throw ApiException.BadRequest($"n = {n} is not supported: this server returns one choice per request (n = 1)", "n");
        bool stream = OptionalBool(root, "stream") ?? false;
        bool includeUsage = false;
        if (Get(root, "stream_options") is { } so)
        {
            if (so.ValueKind != JsonValueKind.Object)
                throw WrongType("stream_options", "an object", so);
            foreach (var p in so.EnumerateObject())
            {
                if (p.Name != "include_usage")
                    throw ApiException.BadRequest($"unrecognized stream option: {p.Name}", "stream_options");
                includeUsage = p.Value.ValueKind switch
                {
                    JsonValueKind.True => true,
                    JsonValueKind.False or JsonValueKind.Null => false,
                    _ => throw WrongType("stream_options.include_usage", "a boolean", p.Value),
                };
            }
        }

        return new OpenAiRequest
        {
            Model = model,
            Prompt = chat ? null : ReadPrompt(root),
            Messages = chat ? ReadMessages(root) : null,
            MaxTokens = maxTokens,
            Temperature = temperature,
            TopP = topP,
            TopK = Math.Max(topK, 0),
            Seed = seed,
            Stop = ReadStop(root),
            Stream = stream,
            IncludeUsage = includeUsage,
        };
    }

    private static readonly HashSet<string> Common = ["model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream", "stream_options"];

    private static readonly HashSet<string> CompletionFields = [.. Common, "prompt"];

    private static readonly HashSet<string> ChatFields = [.. Common, "messages", "max_completion_tokens"];

    private static readonly HashSet<string> Ignored = ["user", "metadata", "store", "service_tier"];

    // Options this server cannot honour, each with the test for its neutral value (which is accepted).
    private static readonly Dictionary<string, Func<JsonElement, bool>> Unsupported = new()
    {
        ["logprobs"] = v => v.ValueKind is JsonValueKind.Null or JsonValueKind.False,
        ["top_logprobs"] = v => v.ValueKind is JsonValueKind.Null,
        ["echo"] = v => v.ValueKind is JsonValueKind.Null or JsonValueKind.False,
        ["best_of"] = v => v.ValueKind is JsonValueKind.Null || (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int b) && b == 1),
        ["suffix"] = v => v.ValueKind is JsonValueKind.Null,
        ["presence_penalty"] = v => v.ValueKind is JsonValueKind.Null || (v.ValueKind == JsonValueKind.Number && v.GetDouble() == 0),
        ["frequency_penalty"] = v => v.ValueKind is JsonValueKind.Null || (v.ValueKind == JsonValueKind.Number && v.GetDouble() == 0),
        ["logit_bias"] = v => v.ValueKind is JsonValueKind.Null || (v.ValueKind == JsonValueKind.Object && !v.EnumerateObject().Any()),
        ["tools"] = v => v.ValueKind is JsonValueKind.Null || (v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 0),
        ["tool_choice"] = v => v.ValueKind is JsonValueKind.Null || (v.ValueKind == JsonValueKind.String && v.GetString() == "none"),
        ["parallel_tool_calls"] = v => v.ValueKind is JsonValueKind.Null,
        ["functions"] = v => v.ValueKind is JsonValueKind.Null,
        ["function_call"] = v => v.ValueKind is JsonValueKind.Null || (v.ValueKind == JsonValueKind.String && v.GetString() == "none"),
        ["response_format"] = v => v.ValueKind is JsonValueKind.Null ||
                                   (v.ValueKind == JsonValueKind.Object && v.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "text"),
        ["modalities"] = v => v.ValueKind is JsonValueKind.Null,
        ["audio"] = v => v.ValueKind is JsonValueKind.Null,
        ["prediction"] = v => v.ValueKind is JsonValueKind.Null,
        ["reasoning_effort"] = v => v.ValueKind is JsonValueKind.Null,
        ["web_search_options"] = v => v.ValueKind is JsonValueKind.Null,
    };

    private static string NeutralHint(string name) => name switch
    {
        "logprobs" or "echo" => ", or false",
        "best_of" => ", or 1",
        "presence_penalty" or "frequency_penalty" => ", or 0",
        "logit_bias" => ", or {}",
        "tools" => ", or []",
        "tool_choice" or "function_call" => ", or \"none\"",
        "response_format" => ", or {\"type\": \"text\"}",
        _ => "",
    };

    private static PromptInput ReadPrompt(JsonElement root)
    {
        var p = Get(root, "prompt") ?? throw ApiException.BadRequest("you must provide a prompt", "prompt");
        switch (p.ValueKind)
        {
            case JsonValueKind.String:
                return new PromptInput(p.GetString()!, null);
            case JsonValueKind.Array:
                int count = p.GetArrayLength();
                if (count == 0)
                    throw ApiException.BadRequest("prompt must not be an empty list", "prompt");
                var first = p[0];
                if (first.ValueKind == JsonValueKind.Number)
                    return new PromptInput(null, TokenList(p));
                if (count > 1)
                    throw ApiException.BadRequest($"prompt holds {count} prompts; this server takes one prompt per request", "prompt");
                return first.ValueKind switch
                {
                    JsonValueKind.String => new PromptInput(first.GetString()!, null),
                    JsonValueKind.Array => new PromptInput(null, TokenList(first)),
                    _ => throw WrongType("prompt", "a string, a list of strings or a list of token ids", first),
                };
            default:
                throw WrongType("prompt", "a string, a list of strings or a list of token ids", p);
        }
    }

    private static int[] TokenList(JsonElement array)
    {
        var ids = new int[array.GetArrayLength()];
        int i = 0;
        foreach (var e in array.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int id) || id < 0)
                throw ApiException.BadRequest($"prompt token {i} must be a non-negative integer token id, got {Show(e)}", "prompt");
            ids[i++] = id;
        }

        if (ids.Length == 0)
            throw ApiException.BadRequest("prompt must not be an empty list", "prompt");
        return ids;
    }

    private static List<ChatMessage> ReadMessages(JsonElement root)
    {
        var list = Get(root, "messages") ?? throw ApiException.BadRequest("you must provide messages", "messages");
        if (list.ValueKind != JsonValueKind.Array)
            throw WrongType("messages", "a list of messages", list);
        if (list.GetArrayLength() == 0)
            throw ApiException.BadRequest("messages must not be empty", "messages");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var m in list.EnumerateArray())
        {
            string at = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object)
                throw WrongType(at, "an object", m);
            var roleElement = Get(m, "role") ?? throw ApiException.BadRequest($"{at} has no role", $"{at}.role");
            if (roleElement.ValueKind != JsonValueKind.String)
                throw WrongType($"{at}.role", "a string", roleElement);
            string roleName = roleElement.GetString()!;
            var role = roleName switch
            {
                "system" or "developer" => ChatRole.System,
                "user" => ChatRole.User,
                "assistant" => ChatRole.Assistant,
                "tool" or "function" => throw ApiException.BadRequest($"{at}: role '{roleName}' is not supported (no tool calls on this server)", $"{at}.role"),
                _ => throw ApiException.BadRequest($"{at}: unknown role '{roleName}' (system, developer, user, assistant)", $"{at}.role"),
            };
            foreach (var p in m.EnumerateObject())
            {
                if (p.Name is not ("role" or "content" or "name") && p.Value.ValueKind != JsonValueKind.Null)
                    throw ApiException.BadRequest($"{at}.{p.Name} is not supported by this server", $"{at}.{p.Name}");
            }

            var content = Get(m, "content") ?? throw ApiException.BadRequest($"{at} has no content", $"{at}.content");
            messages.Add(new ChatMessage(role, Content(content, $"{at}.content")));
        }

        return messages;
    }

    // A string, or a list of text parts [{"type": "text", "text": "..."}] (joined); images and audio are refused.
    private static string Content(JsonElement content, string at)
    {
        switch (content.ValueKind)
        {
            case JsonValueKind.String:
                return content.GetString()!;
            case JsonValueKind.Array:
                var text = new System.Text.StringBuilder();
                int i = 0;
                foreach (var part in content.EnumerateArray())
                {
                    string partAt = $"{at}[{i++}]";
                    if (part.ValueKind != JsonValueKind.Object)
                        throw WrongType(partAt, "an object", part);
                    if (Get(part, "type") is not { ValueKind: JsonValueKind.String } type || type.GetString() != "text")
                        throw ApiException.BadRequest($"{partAt}: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported", $"{partAt}.type");
                    if (Get(part, "text") is not { ValueKind: JsonValueKind.String } t)
                        throw ApiException.BadRequest($"{partAt}.text must be a string", $"{partAt}.text");
                    text.Append(t.GetString());
                }

                return text.ToString();
            default:
                throw WrongType(at, "a string or a list of text parts", content);
        }
    }

    private static List<string> ReadStop(JsonElement root)
    {
        var stops = new List<string>();
        switch (Get(root, "stop"))
        {
            case null:
                return stops;
            case { ValueKind: JsonValueKind.String } one:
                stops.Add(one.GetString()!);
                break;
            case { ValueKind: JsonValueKind.Array } many:
                foreach (var s in many.EnumerateArray())
                {
                    if (s.ValueKind != JsonValueKind.String)
                        throw WrongType("stop", "a string or a list of strings", s);
                    stops.Add(s.GetString()!);
                }

                break;
            case { } other:
                throw WrongType("stop", "a string or a list of strings", other);
        }

        if (stops.Count > 4)
            throw ApiException.BadRequest($"stop holds {stops.Count} strings; at most 4", "stop");
        if (stops.Any(s => s.Length == 0))
            throw ApiException.BadRequest("stop strings must not be empty", "stop");
        return stops;
    }

    // A field's value; null when absent or JSON null (OpenAI's clients send null for "not given").
    private static JsonElement? Get(JsonElement obj, string name) =>
        obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static int? OptionalInt(JsonElement root, string name) => Get(root, name) is { } v
        ? v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw WrongType(name, "an integer", v)
        : null;

    private static float? OptionalNumber(JsonElement root, string name) => Get(root, name) is { } v
        ? v.ValueKind == JsonValueKind.Number ? (float)v.GetDouble() : throw WrongType(name, "a number", v)
        : null;

    private static bool? OptionalBool(JsonElement root, string name) => Get(root, name) is { } v
        ? v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw WrongType(name, "a boolean", v),
        }
        : null;

    private static ApiException WrongType(string field, string expected, JsonElement got) =>
        ApiException.BadRequest($"'{field}' must be {expected}, got {Show(got)}", field);

    private static string Show(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String or JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null =>
            $"{Kind(e)} {Truncate(e.GetRawText())}",
        JsonValueKind.Object or JsonValueKind.Array or JsonValueKind.Undefined => Kind(e),
        _ => throw new System.Diagnostics.UnreachableException($"JSON value kind {e.ValueKind}"),
    };

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "a list",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        JsonValueKind.Undefined => "nothing",
        _ => throw new System.Diagnostics.UnreachableException($"JSON value kind {e.ValueKind}"),
    };

    private static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "...";
}
