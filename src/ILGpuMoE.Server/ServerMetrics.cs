// GET /metrics: the Prometheus text exposition format (version 0.0.4: "# HELP", "# TYPE", then `name{labels} value`
// lines). Written here rather than with a metrics library: the package feed this project builds from serves no
// Prometheus client for .NET, and the format is a few lines of text.
//
// What the server counts itself: requests by endpoint and status (499 for a client that went away, as nginx logs it),
// and the generated tokens of the last 10 seconds (for a tokens/s gauge: a counter's rate needs two scrapes, a gauge
// reads at once). Everything else is the engine's (EngineStats): prompt and generated tokens, running and waiting
// sequences, KV blocks, tokens per expert per layer.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using ILGpuMoE.Serving;

namespace ILGpuMoE.Server;

/// <summary>The server's counters and the Prometheus text of them and of the engine's stats. Thread-safe.</summary>
public sealed class ServerMetrics
{
    private const int WindowSeconds = 10;

    private readonly object _lock = new();
    private readonly Dictionary<(string Endpoint, int Status), long> _requests = [];
    private readonly long[] _tokensPerSecond = new long[WindowSeconds + 1];
    private readonly long[] _secondOfSlot = new long[WindowSeconds + 1];
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    /// <summary>One finished request.</summary>
    public void Request(string endpoint, int status)
    {
        lock (_lock)
            _requests[(endpoint, status)] = _requests.GetValueOrDefault((endpoint, status)) + 1;
    }

    /// <summary>Tokens a handler received from the engine just now.</summary>
    public void Generated(int tokens)
    {
        long second = (long)_clock.Elapsed.TotalSeconds;
        int slot = (int)(second % _tokensPerSecond.Length);
        lock (_lock)
        {
            if (_secondOfSlot[slot] != second)
            {
                _secondOfSlot[slot] = second;
                _tokensPerSecond[slot] = 0;
            }

            _tokensPerSecond[slot] += tokens;
        }
    }

    /// <summary>Generated tokens per second over the last 10 whole seconds.</summary>
    public double TokensPerSecond()
    {
        long now = (long)_clock.Elapsed.TotalSeconds;
        long sum = 0;
        lock (_lock)
        {
            for (int i = 0; i < _tokensPerSecond.Length; i++)
            {
                long age = now - _secondOfSlot[i];
                if (age is >= 1 and <= WindowSeconds)
                    sum += _tokensPerSecond[i];
            }
        }

        return sum / (double)WindowSeconds;
    }

    /// <summary>The exposition text of the server's counters and <paramref name="stats"/>.</summary>
    public string Render(EngineStats stats, int contextLength)
    {
        var text = new StringBuilder();
        KeyValuePair<(string Endpoint, int Status), long>[] requests;
        lock (_lock)
            requests = [.. _requests.OrderBy(r => r.Key.Endpoint, StringComparer.Ordinal).ThenBy(r => r.Key.Status)];

        Header(text, "ilgpumoe_requests_total", "counter", "HTTP requests finished, by endpoint and status (499: the client went away)");
        foreach (var ((endpoint, status), count) in requests)
            text.Append(CultureInfo.InvariantCulture, $"ilgpumoe_requests_total{{endpoint=\"{Escape(endpoint)}\",status=\"{status}\"}} {count}\n");
        Single(text, "ilgpumoe_prompt_tokens_total", "counter", "Prompt tokens the engine has taken", stats.PromptTokens);
        Single(text, "ilgpumoe_generation_tokens_total", "counter", "Tokens the engine has generated", stats.GeneratedTokens);
        Single(text, "ilgpumoe_generation_tokens_per_second", "gauge", $"Generated tokens per second over the last {WindowSeconds} s", TokensPerSecond());
        Single(text, "ilgpumoe_requests_waiting", "gauge", "Requests queued, not yet running (queue depth)", stats.Waiting);
        Single(text, "ilgpumoe_requests_running", "gauge", "Sequences running", stats.Running);
        Single(text, "ilgpumoe_kv_blocks_used", "gauge", "KV cache blocks held by sequences", stats.KvBlocksUsed);
        Single(text, "ilgpumoe_kv_blocks_free", "gauge", "KV cache blocks free", stats.KvBlocksFree);
        Single(text, "ilgpumoe_context_length", "gauge", "Most tokens (prompt + completion) one sequence may hold", contextLength);
        Header(text, "ilgpumoe_expert_tokens_total", "counter", "Tokens routed to each expert of each MoE layer");
        for (int layer = 0; layer < stats.TokensPerExpert.Count; layer++)
        {
            var row = stats.TokensPerExpert[layer];
            for (int e = 0; e < row.Count; e++)
                text.Append(CultureInfo.InvariantCulture, $"ilgpumoe_expert_tokens_total{{layer=\"{layer}\",expert=\"{e}\"}} {row[e]}\n");
        }

        return text.ToString();
    }

    private static void Header(StringBuilder text, string name, string type, string help) =>
        text.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n').Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    private static void Single(StringBuilder text, string name, string type, string help, double value)
    {
        Header(text, name, type, help);
        text.Append(name).Append(' ').Append(value.ToString("R", CultureInfo.InvariantCulture)).Append('\n');
    }

    // Label values escape backslash, double quote and newline.
    private static string Escape(string value) => value.Replace("\\", "\\\\", StringComparison.Ordinal)
        .Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);
}
