// ilgpumoe inspect <model-dir>: reads config.json (+ generation_config.json) and the safetensors checkpoint,
// validates every tensor against the config, and prints the shape constants, storage per dtype and parameter counts.
// Touches no device: it only reads headers (the weights stay memory-mapped and unread).
using System.CommandLine;
using System.Globalization;
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Quant;
using Spectre.Console;

namespace ILGpuMoE.Cli.Commands;

public static class InspectCommand
{
    public static Command Create(CliIo io)
    {
        var dir = new Argument<string>("model-dir")
        {
            Description = "A Hugging Face model folder: config.json and model.safetensors (or model.safetensors.index.json + shards)",
        };
        var command = new Command("inspect", "Validate a model folder and print its architecture, tensors and parameter counts") { dir };
        command.SetAction(parse => Run(io, parse.GetValue(dir)!));
        return command;
    }

    public static int Run(CliIo io, string modelDir)
    {
        if (!Directory.Exists(modelDir))
            throw new CliUsageException(File.Exists(modelDir)
                ? $"{modelDir}: is a file; inspect takes the model folder (the one holding config.json)"
                : $"{modelDir}: no such model folder");

        var config = ModelConfig.Load(modelDir);
        var source = QuantSource.Load(modelDir);
        using var checkpoint = Checkpoint.Open(modelDir);
        QuantSource.Validate(config, checkpoint, source);

        var counts = ParameterCounts.Of(config);

        io.Out.WriteLine($"model: {Path.GetFullPath(modelDir)}");
        io.Ansi.Write(ConfigTable(config));
        io.Ansi.Write(StorageTable(checkpoint.Tensors));
        io.Ansi.Write(SchemeTable(config, checkpoint.Tensors, source));
        if (source is not null && ActOrderLayout.Of(config, checkpoint, source) is { } act && act.WeightBytes(config) > 0)
        {
            io.Out.WriteLine($"GPTQ act-order (desc_act): {act.AttentionMatrices} of {4 * config.Layers} attention matrices and {act.ExpertLayers} of {config.Layers} " +
                             $"layers' experts read their input permuted: {N(act.WeightBytes(config))} bytes of permutations on the device, inputs gathered " +
                             "each step (w2's order is folded into w1/w3's rows at load)");
        }

        io.Out.WriteLine("per decode token: attention q/k/v/o, router and norms of every layer, K of E experts, lm_head and one embedding row; " +
                         "--quant packs attention and experts only");
        var used = ModelTensors.Expected(config).Select(t => QuantSource.BaseOf(t.Name) + ".").ToList();
        var extra = checkpoint.Tensors.Count(t => !used.Any(u => t.Name.StartsWith(u, StringComparison.Ordinal)));
        if (extra > 0)
            io.Out.WriteLine($"{extra} tensor(s) not used by the model (ignored)");
        io.Ansi.Write(ParameterTable(counts, config));
        io.Out.WriteLine("\"with embeddings\" counts embed_tokens and lm_head in full (the convention behind Mixtral-8x7B's 12.9B active of 46.7B)");
        return CliErrors.Ok;
    }

    private static Table ConfigTable(ModelConfig c)
    {
        var table = new Table().AddColumn("config").AddColumn("value");
        void Row(string key, string value) => table.AddRow(Markup.Escape(key), Markup.Escape(value));
        Row("architecture", $"{c.Architecture} (model_type {c.ModelType})");
        Row("torch_dtype", c.TorchDtype ?? "(not given)");
        Row("vocab V", N(c.VocabSize));
        Row("hidden D", N(c.HiddenSize));
        Row("expert hidden F", N(c.IntermediateSize));
        Row("layers L", N(c.Layers));
        Row("heads H / kv heads Hkv / head dim Dh", $"{c.Heads} / {c.KvHeads} / {c.HeadDim}{(c.HeadDimExplicit ? " (explicit)" : "")}");
        Row("experts E / per token K", $"{c.Experts} / {c.TopK}");
        Row("router", RouterText(c.Router));
        Row("rms_norm_eps", c.RmsNormEps.ToString("R", CultureInfo.InvariantCulture));
        Row("rope_theta", c.RopeTheta.ToString("R", CultureInfo.InvariantCulture));
        Row("max_position_embeddings", N(c.MaxPositionEmbeddings));
        Row("sliding_window", c.SlidingWindow is { } w ? N(w) : "none (full causal)");
        if (c.RopeScaling is { } y)
            Row("rope_scaling", FormattableString.Invariant($"yarn: factor {y.Factor}, original {y.OriginalMaxPositions}, beta {y.BetaFast}/{y.BetaSlow}, truncate {y.Truncate}, cos/sin x {y.CosSinFactor:G6}"));
        if (c.Block.Mla is { } m)
            Row("MLA", $"q_lora_rank {(m.QLoraRank > 0 ? N(m.QLoraRank) : "none (q_proj)")}, kv_lora_rank {m.KvLoraRank}, nope / rope / v head dims {m.QkNopeHeadDim} / {m.QkRopeHeadDim} / {m.VHeadDim}");
        // What the runtime allocates per cached token (Runtime/MemoryPlan.cs): K and V per kv head, or MLA's latent + rope part.
        Row("KV cache per token (all layers, F32)", c.Block.Mla is { } ml
            ? $"{N(ILGpuMoE.Runtime.MemoryPlan.CacheBytes(c, 1))} bytes ({ml.CacheWidth} floats per layer: latent {ml.KvLoraRank} + rope {ml.QkRopeHeadDim}; expanded K and V would be {N((long)c.Heads * (ml.QkHeadDim + ml.VHeadDim) * c.Layers * 4)})"
            : $"{N(ILGpuMoE.Runtime.MemoryPlan.CacheBytes(c, 1))} bytes");
        Row("tie_word_embeddings", c.TieWordEmbeddings ? "yes" : "no");
        Row("bos / eos", $"{c.BosTokenId?.ToString(CultureInfo.InvariantCulture) ?? "-"} / {(c.EosTokenIds.Count == 0 ? "-" : string.Join(",", c.EosTokenIds))}");
        if (c.Generation is { } g)
            Row("generation_config", $"do_sample {g.DoSample?.ToString() ?? "-"}, temperature {g.Temperature?.ToString(CultureInfo.InvariantCulture) ?? "-"}, top_p {g.TopP?.ToString(CultureInfo.InvariantCulture) ?? "-"}, top_k {g.TopK?.ToString(CultureInfo.InvariantCulture) ?? "-"}");
        return table;
    }

    private static string RouterText(RouterConfig r) => r.Kind switch
    {
        RouterKind.Mixtral => $"softmax over {r.Experts}, top-{r.TopK}, renormalised",
        RouterKind.SoftmaxTopK or RouterKind.Switch or RouterKind.NoisyTopK or RouterKind.DeepSeekV3 => $"{r.Kind}, top-{r.TopK} of {r.Experts}",
        _ => throw new System.Diagnostics.UnreachableException($"inspect: router kind {r.Kind}"),
    };

    private static Table StorageTable(IReadOnlyList<TensorInfo> tensors)
    {
        var table = new Table().AddColumn("dtype").AddColumn(new TableColumn("tensors").RightAligned()).AddColumn(new TableColumn("bytes").RightAligned());
        foreach (var group in tensors.GroupBy(t => t.DType).OrderBy(g => g.Key))
        {
            var bytes = group.Sum(t => t.ByteLength);
            table.AddRow(DTypes.ToName(group.Key), N(group.Count()), $"{N(bytes)} ({Bytes(bytes)})");
        }

        var total = tensors.Sum(t => t.ByteLength);
        table.AddRow("all", N(tensors.Count), $"{N(total)} ({Bytes(total)})");
        return table;
    }

    private static Table SchemeTable(ModelConfig c, IReadOnlyList<TensorInfo> tensors, QuantSource? source)
    {
        var table = new Table().AddColumn("weights as").AddColumn(new TableColumn("bytes").RightAligned())
            .AddColumn(new TableColumn("read per decode token").RightAligned());
        void Row(string name, WeightBytes b) => table.AddRow(Markup.Escape(name), $"{N(b.Total)} ({Bytes(b.Total)})", $"{N(b.PerToken)} ({Bytes(b.PerToken)})");
        Row(source is null ? "checkpoint (as stored)" : $"checkpoint (as stored, {source.Method} {source.PlanSpec.Name})", WeightBytes.Of(c, tensors, null));
        if (source is null)
        {
            foreach (var spec in QuantSpec.All)
            {
                bool fits = ModelTensors.Expected(c).Where(QuantSource.IsLinear).All(e => spec.Fits(e.Shape[1]));
                if (fits)
                    Row($"--quant {spec.Name}", WeightBytes.Of(c, tensors, spec));
                else
                    table.AddRow(Markup.Escape($"--quant {spec.Name}"), "n/a (G does not divide an input dim)", "-");
            }
        }

        return table;
    }

    private static Table ParameterTable(ParameterCounts p, ModelConfig c)
    {
        var table = new Table().AddColumn("parameters").AddColumn(new TableColumn("count").RightAligned());
        void Row(string key, long value) => table.AddRow(Markup.Escape(key), $"{N(value)} ({Short(value)})");
        Row("total parameters", p.Total);
        Row($"active parameters per token (with embeddings, top-{c.TopK} of {c.Experts} experts)", p.ActiveWithEmbeddings);
        Row("active parameters per token (without embeddings)", p.ActiveWithoutEmbeddings);
        Row("total parameters (without embeddings)", p.TotalWithoutEmbeddings);
        Row("per expert (gate + up + down)", p.PerExpert);
        if (p.Dense > 0)
            Row("dense MLPs and shared experts (every token)", p.Dense);
        return table;
    }

    private static string N(long value) => value.ToString("N0", CultureInfo.InvariantCulture);

    private static string Short(long value) => value switch
    {
        >= 1_000_000_000 => $"{value / 1e9:F2} B",
        >= 1_000_000 => $"{value / 1e6:F2} M",
        >= 1_000 => $"{value / 1e3:F1} K",
        _ => value.ToString(CultureInfo.InvariantCulture),
    };

    private static string Bytes(long value) => value switch
    {
        >= 1L << 30 => $"{value / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{value / (double)(1L << 20):F2} MiB",
        >= 1L << 10 => $"{value / 1024.0:F1} KiB",
        _ => $"{value} B",
    };
}
