// A random Mixtral in exactly Hugging Face's on-disk layout (config.json, generation_config.json,
// model.safetensors or shards + index, tokenizer.json + tokenizer_config.json), for tests, benchmarks and the
// make-model tool. Weights are seeded per tensor (splitmix64 of the seed and the tensor's name), so a tensor's
// values do not depend on dtype, shard count or the order tensors are written in.
// Scale: linear weights ~ N(0, 1/fan_in) keep every activation O(1) at any width (HF's N(0, 0.02) is about
// 1/sqrt(4096) at Mixtral's width, but would shrink tiny models' logits to near-uniform); embeddings ~ N(0, 1);
// RMSNorm weights 1 + N(0, 0.1) so a kernel that forgets the norm weight is caught.
using System.Globalization;
using System.Text;
using ILGpuMoE.IO;
using ILGpuMoE.Tokenizer;
using ILGpuMoE.Model;

namespace ILGpuMoE.Testing;

/// <summary>Shape and file options of a random Mixtral (defaults: the tiny test model).</summary>
public sealed record RandomMixtralOptions
{
    public int Hidden { get; init; } = 64;
    public int Layers { get; init; } = 2;
    public int Experts { get; init; } = 4;
    public int TopK { get; init; } = 2;
    public int Ffn { get; init; } = 128;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;

    /// <summary>Per-head dim; null = Hidden / Heads.</summary>
    public int? HeadDim { get; init; }
    public int Vocab { get; init; } = 512;
    public DType DType { get; init; } = DType.F32;
    public ulong Seed { get; init; } = 1;
    public int Shards { get; init; } = 1;
    public bool TieEmbeddings { get; init; }
    public int MaxPositions { get; init; } = 4096;
    public double RopeTheta { get; init; } = 1e6;
    public double RmsNormEps { get; init; } = 1e-5;

    /// <summary>null = no sliding window (config "sliding_window": null).</summary>
    public int? SlidingWindow { get; init; }

    public int ResolvedHeadDim => HeadDim ?? (Heads > 0 ? Hidden / Heads : 0);
}

public static class RandomMixtral
{
    /// <summary>Writes the model into <paramref name="dir"/> (created if needed).</summary>
    public static void Write(string dir, RandomMixtralOptions o)
    {
        Validate(o);
        WriteFiles(dir, Tensors(o), (name, shape) => Values(o, name, shape), o.DType, o.Shards, ConfigJson(o), o.Vocab, "4.46.0");
    }

    /// <summary>The files of a random checkpoint: the tensors (values made per tensor, rounded to dtype) in one file or
    /// shards + index, config.json, generation_config.json and the synthetic tokenizer of V entries. A tensor for which
    /// <paramref name="stored"/> returns an entry is written as that entry instead (gpt-oss' uint8 MXFP4 tensors).</summary>
    internal static void WriteFiles(string dir, IEnumerable<(string Name, long[] Shape)> tensors, Func<string, long[], float[]> values,
        DType dtype, int shards, string configJson, int vocab, string transformersVersion,
        Func<string, long[], SafeTensorsWriter.Entry?>? stored = null)
    {
        Directory.CreateDirectory(dir);
        // A rewrite must not leave the other layout behind (Checkpoint would see both).
        foreach (string stale in Directory.EnumerateFiles(dir, "model*.safetensors*"))
            File.Delete(stale);
        var entries = tensors
            .AsParallel().AsOrdered()
            .Select(t => stored?.Invoke(t.Name, t.Shape) ?? SafeTensorsWriter.FromFloats(t.Name, t.Shape, values(t.Name, t.Shape), dtype))
            .ToList();
        var metadata = new Dictionary<string, string> { ["format"] = "pt" };
        if (shards == 1)
            SafeTensorsWriter.Write(Path.Combine(dir, Checkpoint.SingleFileName), entries, metadata);
        else
            SafeTensorsWriter.WriteSharded(dir, entries, shards, metadata);

        File.WriteAllText(Path.Combine(dir, "config.json"), configJson);
        File.WriteAllText(Path.Combine(dir, "generation_config.json"),
            $"{{\n  \"_from_model_config\": true,\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n  \"transformers_version\": \"{transformersVersion}\"\n}}\n");
        var (pieces, merges) = SyntheticVocab.Build(vocab);
        HfTokenizerJson.Write(dir, pieces, merges);
    }

    /// <summary>Hugging Face's tensor names and shapes ([out, in] for linear weights), in file order.</summary>
    public static IReadOnlyList<(string Name, long[] Shape)> Tensors(RandomMixtralOptions o)
    {
        Validate(o);
        long d = o.Hidden, f = o.Ffn, dh = o.ResolvedHeadDim, q = o.Heads * dh, kv = o.KvHeads * dh;
        var list = new List<(string, long[])> { ("model.embed_tokens.weight", [o.Vocab, d]) };
        for (int l = 0; l < o.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            list.Add((p + "input_layernorm.weight", [d]));
            list.Add((p + "self_attn.q_proj.weight", [q, d]));
            list.Add((p + "self_attn.k_proj.weight", [kv, d]));
            list.Add((p + "self_attn.v_proj.weight", [kv, d]));
            list.Add((p + "self_attn.o_proj.weight", [d, q]));
            list.Add((p + "post_attention_layernorm.weight", [d]));
            list.Add((p + "block_sparse_moe.gate.weight", [o.Experts, d]));
            for (int e = 0; e < o.Experts; e++)
            {
                string x = p + $"block_sparse_moe.experts.{e}.";
                list.Add((x + "w1.weight", [f, d]));
                list.Add((x + "w2.weight", [d, f]));
                list.Add((x + "w3.weight", [f, d]));
            }
        }

        list.Add(("model.norm.weight", [d]));
        if (!o.TieEmbeddings)
            list.Add(("lm_head.weight", [o.Vocab, d]));
        return list;
    }

    /// <summary>The float values of one tensor (before rounding to the file's dtype).</summary>
    public static float[] Values(RandomMixtralOptions o, string name, long[] shape)
    {
        bool norm = name.EndsWith("norm.weight", StringComparison.Ordinal);
        double std = norm ? 0.1 : name.Contains("embed_tokens", StringComparison.Ordinal) ? 1.0 : 1.0 / Math.Sqrt(shape[^1]);
        return Normal(o.Seed, name, shape, norm ? 1.0 : 0.0, std);
    }

    /// <summary>mean + std * N(0, 1) for every element, seeded by splitmix64 of the seed and the tensor's name.</summary>
    internal static float[] Normal(ulong seed, string name, long[] shape, double mean, double std)
    {
        long n = 1;
        foreach (long s in shape)
            n *= s;
        var v = new float[n];
        ulong state = seed ^ Fnv1a(name);
        for (long i = 0; i < n; i++)
            v[i] = (float)(mean + std * Gaussian(ref state));
        return v;
    }

    /// <summary>config.json with the keys Hugging Face's MixtralConfig writes, sorted as it sorts them.</summary>
    public static string ConfigJson(RandomMixtralOptions o)
    {
        string Num(double x) => x.ToString("0.0###############", CultureInfo.InvariantCulture);
        string Sci(double x) => x.ToString("0.#####e-00", CultureInfo.InvariantCulture);
        string dtype = o.DType switch
        {
            DType.F32 => "float32",
            DType.F16 => "float16",
            DType.BF16 => "bfloat16",
            _ => throw new ArgumentException($"random Mixtral weights are F32, F16 or BF16, not {DTypes.ToName(o.DType)}"),
        };
        var keys = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["architectures"] = "[\n    \"MixtralForCausalLM\"\n  ]",
            ["attention_dropout"] = "0.0",
            ["bos_token_id"] = "1",
            ["eos_token_id"] = "2",
            ["head_dim"] = o.ResolvedHeadDim.ToString(CultureInfo.InvariantCulture),
            ["hidden_act"] = "\"silu\"",
            ["hidden_size"] = o.Hidden.ToString(CultureInfo.InvariantCulture),
            ["initializer_range"] = "0.02",
            ["intermediate_size"] = o.Ffn.ToString(CultureInfo.InvariantCulture),
            ["max_position_embeddings"] = o.MaxPositions.ToString(CultureInfo.InvariantCulture),
            ["model_type"] = "\"mixtral\"",
            ["num_attention_heads"] = o.Heads.ToString(CultureInfo.InvariantCulture),
            ["num_experts_per_tok"] = o.TopK.ToString(CultureInfo.InvariantCulture),
            ["num_hidden_layers"] = o.Layers.ToString(CultureInfo.InvariantCulture),
            ["num_key_value_heads"] = o.KvHeads.ToString(CultureInfo.InvariantCulture),
            ["num_local_experts"] = o.Experts.ToString(CultureInfo.InvariantCulture),
            ["output_router_logits"] = "false",
            ["rms_norm_eps"] = o.RmsNormEps < 1e-4 ? Sci(o.RmsNormEps) : Num(o.RmsNormEps),
            ["rope_theta"] = Num(o.RopeTheta),
            ["router_aux_loss_coef"] = "0.02",
            ["router_jitter_noise"] = "0.0",
            ["sliding_window"] = o.SlidingWindow is { } w ? w.ToString(CultureInfo.InvariantCulture) : "null",
            ["tie_word_embeddings"] = o.TieEmbeddings ? "true" : "false",
            ["torch_dtype"] = $"\"{dtype}\"",
            ["transformers_version"] = "\"4.46.0\"",
            ["use_cache"] = "true",
            ["vocab_size"] = o.Vocab.ToString(CultureInfo.InvariantCulture),
        };
        return JsonObject(keys);
    }

    /// <summary>A config.json body: one "key": value line per entry (values already JSON), in the dictionary's order.</summary>
    internal static string JsonObject(IReadOnlyDictionary<string, string> keys)
    {
        var sb = new StringBuilder("{\n");
        int i = 0;
        foreach (var (k, v) in keys)
            sb.Append("  \"").Append(k).Append("\": ").Append(v).Append(++i < keys.Count ? ",\n" : "\n");
        return sb.Append("}\n").ToString();
    }

    private static void Validate(RandomMixtralOptions o)
    {
        void Positive(int v, string what)
        {
            if (v <= 0)
                throw new ArgumentException($"random Mixtral: {what} must be positive, got {v}");
        }

        Positive(o.Hidden, "hidden");
        Positive(o.Layers, "layers");
        Positive(o.Experts, "experts");
        Positive(o.TopK, "top-k");
        Positive(o.Ffn, "ffn");
        Positive(o.Heads, "heads");
        Positive(o.KvHeads, "kv-heads");
        Positive(o.ResolvedHeadDim, "head-dim");
        Positive(o.MaxPositions, "max-pos");
        Positive(o.Shards, "shards");
        if (o.TopK > o.Experts)
            throw new ArgumentException($"random Mixtral: top-k {o.TopK} is larger than the number of experts {o.Experts}");
        if (o.Heads % o.KvHeads != 0)
            throw new ArgumentException($"random Mixtral: heads {o.Heads} is not a multiple of kv-heads {o.KvHeads}");
        if (o.ResolvedHeadDim % 2 != 0)
            throw new ArgumentException($"random Mixtral: head-dim {o.ResolvedHeadDim} must be even (RoPE rotates pairs)");
        if (o.HeadDim is null && o.Hidden % o.Heads != 0)
            throw new ArgumentException($"random Mixtral: hidden {o.Hidden} is not a multiple of heads {o.Heads}; give --head-dim");
        if (o.Vocab < SyntheticVocab.MinimumSize)
            throw new ArgumentException($"random Mixtral: vocab {o.Vocab} is too small; the synthetic tokenizer needs at least {SyntheticVocab.MinimumSize} entries (<unk>, <s>, </s>, 256 byte pieces, '▁', a..z)");
        if (o.DType is not (DType.F32 or DType.F16 or DType.BF16))
            throw new ArgumentException($"random Mixtral: dtype {DTypes.ToName(o.DType)} is not one of F32, F16, BF16");
        if (!(o.RopeTheta > 0) || !(o.RmsNormEps > 0))
            throw new ArgumentException("random Mixtral: rope-theta and rms-norm-eps must be positive");
        if (o.SlidingWindow is <= 0)
            throw new ArgumentException($"random Mixtral: sliding-window must be positive, got {o.SlidingWindow}");
        int tensorCount = 2 + o.Layers * (7 + 3 * o.Experts) + (o.TieEmbeddings ? 0 : 1);
        if (o.Shards > tensorCount)
            throw new ArgumentException($"random Mixtral: {o.Shards} shards for only {tensorCount} tensors");
    }

    private static ulong Fnv1a(string s)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in s)
        {
            h ^= c;
            h *= 1099511628211UL;
        }

        return h;
    }

    private static ulong SplitMix64(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    // Box-Muller; u1 in (0, 1] so the log is finite.
    private static double Gaussian(ref ulong state)
    {
        double u1 = ((SplitMix64(ref state) >> 11) + 1) * (1.0 / (1UL << 53));
        double u2 = (SplitMix64(ref state) >> 11) * (1.0 / (1UL << 53));
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
