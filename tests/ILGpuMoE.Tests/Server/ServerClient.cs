using System.Net;
using System.Text;
using System.Text.Json;

namespace ILGpuMoE.Tests.Server;

/// <summary>A JSON response: status, headers, body.</summary>
public sealed record JsonReply(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Message)
{
    /// <summary>The one choice's text (completions) or message content (chat).</summary>
    public string Text => Body.GetProperty("choices")[0] is var c && c.TryGetProperty("message", out var m)
        ? m.GetProperty("content").GetString()!
        : c.GetProperty("text").GetString()!;

    public string FinishReason => Body.GetProperty("choices")[0].GetProperty("finish_reason").GetString()!;

    public int Usage(string field) => Body.GetProperty("usage").GetProperty(field).GetInt32();

    public string? ErrorParam => Body.GetProperty("error").GetProperty("param").GetString();
}

/// <summary>A streamed response: every `data:` event's JSON, and whether `data: [DONE]` ended it.</summary>
public sealed record StreamReply(HttpStatusCode Status, List<JsonElement> Events, bool Done, string? ContentType)
{
    private static string? Piece(JsonElement e)
    {
        if (!e.TryGetProperty("choices", out var choices) || choices.GetArrayLength() == 0)
            return null;
        var c = choices[0];
        if (c.TryGetProperty("delta", out var d))
            return d.TryGetProperty("content", out var content) ? content.GetString() : null;
        return c.GetProperty("text").GetString();
    }

    public string Text => string.Concat(Events.Select(Piece).Where(p => p is not null));

    /// <summary>The finish_reason of the one chunk that has one.</summary>
    public string? FinishReason => Events.Where(e => e.TryGetProperty("choices", out var c) && c.GetArrayLength() > 0)
        .Select(e => e.GetProperty("choices")[0].GetProperty("finish_reason"))
        .Where(f => f.ValueKind == JsonValueKind.String).Select(f => f.GetString()).SingleOrDefault();
}

/// <summary>HttpClient calls against a running server, as any OpenAI client makes them.</summary>
public static class ServerClient
{
    /// <summary>A response disposed before its end closes the connection (no draining of the rest, which would keep the
    /// server's generation running): a client that stops reading hangs up, as a browser or an OpenAI client does.</summary>
    public static readonly HttpClient Http = new(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(1), MaxResponseDrainSize = 0 }) { Timeout = TimeSpan.FromSeconds(60) };

    public static StringContent Json(string body) => new(body, Encoding.UTF8, "application/json");

    public static async Task<JsonReply> Post(Uri server, string path, string body, CancellationToken cancel = default)
    {
        var response = await Http.PostAsync(new Uri(server, path), Json(body), cancel);
        return await Read(response, cancel);
    }

    public static async Task<JsonReply> Get(Uri server, string path)
    {
        var response = await Http.GetAsync(new Uri(server, path));
        return await Read(response, default);
    }

    private static async Task<JsonReply> Read(HttpResponseMessage response, CancellationToken cancel)
    {
        string text = await response.Content.ReadAsStringAsync(cancel);
        using var doc = JsonDocument.Parse(text);
        return new JsonReply(response.StatusCode, doc.RootElement.Clone(), response);
    }

    /// <summary>Posts a streaming request and reads its events; <paramref name="stopAfter"/> events, then it hangs up.</summary>
    public static async Task<StreamReply> Stream(Uri server, string path, string body, int stopAfter = int.MaxValue, CancellationToken cancel = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server, path)) { Content = Json(body) };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        var events = new List<JsonElement>();
        bool done = false;
        if (response.StatusCode != HttpStatusCode.OK)
        {
            using var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync(cancel));
            return new StreamReply(response.StatusCode, [error.RootElement.Clone()], false, response.Content.Headers.ContentType?.MediaType);
        }

        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel));
        while (events.Count < stopAfter && await reader.ReadLineAsync(cancel) is { } line)
        {
            if (line.Length == 0)
                continue;
            Assert.That(line, Does.StartWith("data: "), "every server-sent event line is a data line");
            string data = line["data: ".Length..];
            if (data == "[DONE]")
            {
                done = true;
                Assert.That(await reader.ReadLineAsync(cancel), Is.EqualTo(""), "an empty line after [DONE]");
                Assert.That(await reader.ReadLineAsync(cancel), Is.Null, "nothing after [DONE]");
                break;
            }

            using var doc = JsonDocument.Parse(data);
            events.Add(doc.RootElement.Clone());
        }

        return new StreamReply(response.StatusCode, events, done, response.Content.Headers.ContentType?.MediaType);
    }

    /// <summary>A JSON string literal of <paramref name="s"/>.</summary>
    public static string Q(string s) => JsonSerializer.Serialize(s);
}
