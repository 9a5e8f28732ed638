// A model's shape and constants, read from a Hugging Face checkout's config.json (+ generation_config.json).
//
// Glossary: V vocab, D model dim (hidden_size), F expert hidden dim (intermediate_size), L layers, H heads,
// Hkv kv heads, Dh head dim, E experts, K experts per token.
//
// The sizes every family shares are read here; what differs per family (the router, the experts' width, biases,
// q/k norms, shared expert, dense layers, windows) is read by the family's own file (ModelFamily.cs, Families/*.cs).
namespace ILGpuMoE.Model;

/// <summary>Decoding defaults from generation_config.json; every field is null when the file does not set it.</summary>
public sealed record GenerationConfig
{
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public int? PadTokenId { get; init; }
    public bool? DoSample { get; init; }
    public double? Temperature { get; init; }
    public double? TopP { get; init; }
    public int? TopK { get; init; }
    public int? MaxNewTokens { get; init; }
    public int? MaxLength { get; init; }
}

/// <summary>A validated model description. Build it with <see cref="Load"/> or <see cref="Parse"/>.</summary>
public sealed record ModelConfig
{
    public const string ConfigFileName = "config.json";
    public const string GenerationConfigFileName = "generation_config.json";

    /// <summary>model_type values we can run.</summary>
    public static IReadOnlyList<string> SupportedModelTypes => ModelFamilies.All.Select(f => f.ModelType).ToArray();

    /// <summary>architectures[] entries we can run.</summary>
    public static IReadOnlyList<string> SupportedArchitectures => ModelFamilies.All.Select(f => f.Architecture).ToArray();

    /// <summary>The config.json this came from (for messages).</summary>
    public required string Source { get; init; }

    public required string ModelType { get; init; }

    /// <summary>The family model_type (or architectures) names: its tensor names and block choices.</summary>
    public required ModelFamily Family { get; init; }

    /// <summary>The architectures[] entry we matched, or the family's own when the file lists none.</summary>
    public required string Architecture { get; init; }

    /// <summary>V.</summary>
    public required int VocabSize { get; init; }

    /// <summary>D (hidden_size).</summary>
    public required int HiddenSize { get; init; }

    /// <summary>F, each routed expert's hidden size (intermediate_size in Mixtral and OLMoE, moe_intermediate_size in Qwen).</summary>
    public required int IntermediateSize { get; init; }

    /// <summary>L.</summary>
    public required int Layers { get; init; }

    /// <summary>H.</summary>
    public required int Heads { get; init; }

    /// <summary>Hkv; H is a multiple of it (grouped-query attention).</summary>
    public required int KvHeads { get; init; }

    /// <summary>Dh: head_dim when the file gives it, else D / H.</summary>
    public required int HeadDim { get; init; }

    /// <summary>Dv: a value's dims per head (v_head_dim in MLA; Dh everywhere else).</summary>
    public int ValueHeadDim { get; init; }

    /// <summary>Whether head_dim came from the file (then H * Dh may differ from D).</summary>
    public required bool HeadDimExplicit { get; init; }

    public required double RmsNormEps { get; init; }

    /// <summary>RoPE base (rope_theta, or rope_parameters.rope_theta in newer writers).</summary>
    public required double RopeTheta { get; init; }

    public required int MaxPositionEmbeddings { get; init; }

    /// <summary>YaRN-scaled RoPE (rope_scaling / rope_parameters with rope_type "yarn"), or null for plain RoPE.</summary>
    public Kernels.Dense.YarnScaling? RopeScaling { get; init; }

    /// <summary>The widest attention window of any layer, or null when every layer attends to the whole causal
    /// prefix; <see cref="WindowOf"/> gives each layer's.</summary>
    public int? SlidingWindow => Block.LayerWindows.Count > 0 && Block.LayerWindows.Max() > 0 ? Block.LayerWindows.Max() : null;

    public required RouterConfig Router { get; init; }

    /// <summary>The family's block choices (biases, q/k norm, shared expert, dense layers, windows).</summary>
    public required BlockOptions Block { get; init; }

    /// <summary>lm_head shares embed_tokens' weight (then the checkpoint has no lm_head.weight).</summary>
    public required bool TieWordEmbeddings { get; init; }

    /// <summary>bos_token_id (generation_config.json wins when it sets one).</summary>
    public int? BosTokenId { get; init; }

    /// <summary>eos_token_id as a list (the file may give an int or a list; generation_config.json wins).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>torch_dtype (or dtype): the precision the weights were saved in, e.g. "bfloat16"; informational.</summary>
    public string? TorchDtype { get; init; }

    /// <summary>generation_config.json, when present.</summary>
    public GenerationConfig? Generation { get; init; }

    /// <summary>E.</summary>
    public int Experts => Router.Experts;

    /// <summary>K.</summary>
    public int TopK => Router.TopK;

    /// <summary>Whether layer l has the MoE block (else the family's dense MLP).</summary>
    public bool IsMoeLayer(int layer) => Block.MoeLayers.Count == 0 || Block.MoeLayers[layer];

    /// <summary>The shared expert as F-wide experts stacked after the routed ones: ceil(Fs / F), 0 without one.</summary>
    public int SharedChunks => (Block.SharedExpertSize + IntermediateSize - 1) / IntermediateSize;

    /// <summary>
    /// Layer l's MoE launch: (Slots, Experts) = experts per token and experts stacked. A MoE layer: (K + shared chunks,
    /// E + shared chunks); a dense layer: its MLP as ceil(Fd / F) F-wide experts, every token visiting all of them
    /// (Runtime/MoeModel.cs says why).
    /// </summary>
    public (int Slots, int Experts) MoeShape(int layer)
    {
        if (IsMoeLayer(layer))
            return (TopK + SharedChunks, Experts + SharedChunks);
        int chunks = (Block.DenseIntermediateSize + IntermediateSize - 1) / IntermediateSize;
        return (chunks, chunks);
    }

    /// <summary>Layer l's attention window in tokens; 0 for full causal attention.</summary>
    public int WindowOf(int layer) => Block.LayerWindows.Count == 0 ? 0 : Block.LayerWindows[layer];

    /// <summary>H * Dh: q_proj's output rows (and o_proj's input columns, except in MLA: <see cref="AttentionDim"/>).</summary>
    public int QueryDim => Heads * HeadDim;

    /// <summary>H * Dv: the attention output's width, o_proj's input columns.</summary>
    public int AttentionDim => Heads * ValueHeadDim;

    /// <summary>Hkv * Dh: k_proj's and v_proj's output rows.</summary>
    public int KvDim => KvHeads * HeadDim;

    /// <summary>Reads dir/config.json and, when present, dir/generation_config.json.</summary>
    public static ModelConfig Load(string directory)
    {
        if (!Directory.Exists(directory))
            throw new ModelConfigException(directory, null, "is not a directory");
        var configPath = Path.Combine(directory, ConfigFileName);
        if (!File.Exists(configPath))
            throw new ModelConfigException(configPath, null, "is missing (a Hugging Face model folder has config.json next to its *.safetensors)");
        string? generationPath = Path.Combine(directory, GenerationConfigFileName);
        if (!File.Exists(generationPath))
            generationPath = null;

        using var config = ConfigReader.ParseFile(configPath);
        if (generationPath is null)
            return FromJson(new ConfigReader(configPath, config.RootElement), null);
        using var generation = ConfigReader.ParseFile(generationPath);
        return FromJson(new ConfigReader(configPath, config.RootElement), new ConfigReader(generationPath, generation.RootElement));
    }

    /// <summary>Parses config.json text (and optionally generation_config.json text); names are used in messages.</summary>
    public static ModelConfig Parse(string configJson, string configName = ConfigFileName,
        string? generationJson = null, string generationName = GenerationConfigFileName)
    {
        using var config = ConfigReader.ParseText(configJson, configName);
        if (generationJson is null)
            return FromJson(new ConfigReader(configName, config.RootElement), null);
        using var generation = ConfigReader.ParseText(generationJson, generationName);
        return FromJson(new ConfigReader(configName, config.RootElement), new ConfigReader(generationName, generation.RootElement));
    }

    private static ModelConfig FromJson(ConfigReader c, ConfigReader? g)
    {
        var (family, modelType, architecture) = ReadFamily(c);

        // Sizes first: everything else is checked against them.
        var vocab = c.PositiveInt("vocab_size");
        var hidden = c.PositiveInt("hidden_size");
        var layers = c.PositiveInt("num_hidden_layers");
        var heads = c.PositiveInt("num_attention_heads");
        // Hugging Face's own default when the key is absent: one kv head per head (plain multi-head attention).
        var kvHeads = c.Has("num_key_value_heads") ? c.PositiveInt("num_key_value_heads") : heads;
        if (heads % kvHeads != 0)
            throw c.Error("num_key_value_heads", $"({kvHeads}) does not divide 'num_attention_heads' ({heads})");

        var headDimExplicit = c.Has("head_dim");
        int headDim;
        if (headDimExplicit)
        {
            headDim = c.PositiveInt("head_dim");
        }
        else
        {
            if (hidden % heads != 0)
                throw c.Error("hidden_size", $"({hidden}) is not a multiple of 'num_attention_heads' ({heads}); give 'head_dim' explicitly if that is intended");
            headDim = hidden / heads;
        }

        // RoPE rotates pairs (i, i + Dh/2): an odd head dim has no such pairing (MLA's rope part is checked by its family).
        if (headDim % 2 != 0 && !c.Has("qk_rope_head_dim"))
            throw c.Error(headDimExplicit ? "head_dim" : "hidden_size", $"gives an odd head dim ({headDim}); RoPE needs an even one");

        var eps = c.RequiredDouble("rms_norm_eps");
        if (!(eps > 0))
            throw c.Error("rms_norm_eps", $"must be positive, got {eps}");

        var ropeTheta = ReadRopeTheta(c);
        var maxPositions = c.PositiveInt("max_position_embeddings");

        var ropeScaling = Model.RopeScaling.Read(c, maxPositions, family);
        var block = family.Read(c, layers);
        if (block.HeadDim is { } familyHeadDim)
            (headDim, headDimExplicit) = (familyHeadDim, true);

        var act = c.OptionalString("hidden_act");
        if (act is not null && act != "silu")
            throw c.Error("hidden_act", $"is '{act}'; {family.ModelType} MLPs use 'silu'");

        var bos = c.OptionalInt("bos_token_id");
        var eos = c.IntOrIntList("eos_token_id");
        var generation = g is { } gr ? ReadGeneration(gr) : null;
        if (generation?.BosTokenId is { } gBos)
            bos = gBos;
        if (generation is { EosTokenIds.Count: > 0 })
            eos = generation.EosTokenIds;
        CheckTokenIds(bos is null ? [] : [bos.Value], vocab, c, g, "bos_token_id");
        CheckTokenIds(eos, vocab, c, g, "eos_token_id");

        return new ModelConfig
        {
            Source = c.File,
            ModelType = modelType,
            Family = family,
            Architecture = architecture,
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = block.ExpertHidden,
            Layers = layers,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            HeadDimExplicit = headDimExplicit,
            ValueHeadDim = block.ValueHeadDim ?? headDim,
            RmsNormEps = eps,
            RopeTheta = ropeTheta,
            MaxPositionEmbeddings = maxPositions,
            RopeScaling = ropeScaling,
            Router = block.Router,
            Block = block.Block,
            TieWordEmbeddings = c.OptionalBool("tie_word_embeddings") ?? false,
            BosTokenId = bos,
            EosTokenIds = eos,
            TorchDtype = c.OptionalString("torch_dtype") ?? c.OptionalString("dtype"),
            Generation = generation,
        };
    }

    private static (ModelFamily Family, string ModelType, string Architecture) ReadFamily(ConfigReader c)
    {
        var modelType = c.OptionalString("model_type");
        var architectures = c.OptionalStringList("architectures");
        var supported = ModelFamilies.SupportedList;
        if (modelType is null && architectures.Count == 0)
            throw c.Error("model_type", $"is missing (and so is 'architectures'); supported: {supported}");
        if (modelType is not null)
        {
            var family = ModelFamilies.ByModelType(modelType)
                         ?? throw c.Error("model_type", $"'{modelType}' is not supported (supported: {supported})");
            // architectures may name a head we do not run (e.g. a sequence classifier) next to the causal LM.
            if (architectures.Count > 0 && !architectures.Contains(family.Architecture))
                throw c.Error("architectures", $"[{string.Join(", ", architectures)}] does not name {family.Architecture}, the causal LM of model_type '{modelType}'");
            return (family, modelType, family.Architecture);
        }

        var known = architectures.Select(ModelFamilies.ByArchitecture).FirstOrDefault(f => f is not null)
                    ?? throw c.Error("architectures", $"[{string.Join(", ", architectures)}] is not supported (supported: {string.Join(", ", SupportedArchitectures)})");
        return (known, known.ModelType, known.Architecture);
    }

    private static double ReadRopeTheta(ConfigReader c)
    {
        // Older writers: top-level rope_theta. Newer transformers: rope_parameters { rope_type, rope_theta }.
        var key = c.Has("rope_theta") ? "rope_theta" : c.Has("rope_parameters.rope_theta") ? "rope_parameters.rope_theta" : null;
        if (key is null)
            throw c.Error("rope_theta", "is missing (looked for 'rope_theta' and 'rope_parameters.rope_theta')");
        var theta = c.RequiredDouble(key);
        if (!(theta > 0))
            throw c.Error(key, $"must be positive, got {theta}");
        return theta;
    }

    private static GenerationConfig ReadGeneration(ConfigReader g)
    {
        var topP = g.OptionalDouble("top_p");
        if (topP is not null and (<= 0 or > 1))
            throw g.Error("top_p", $"must be in (0, 1], got {topP}");
        return new GenerationConfig
        {
            BosTokenId = g.OptionalInt("bos_token_id"),
            EosTokenIds = g.IntOrIntList("eos_token_id"),
            PadTokenId = g.OptionalInt("pad_token_id"),
            DoSample = g.OptionalBool("do_sample"),
            Temperature = g.OptionalNonNegativeDouble("temperature"),
            TopP = topP,
            TopK = g.OptionalNonNegativeInt("top_k"),
            MaxNewTokens = g.OptionalNonNegativeInt("max_new_tokens"),
            MaxLength = g.OptionalNonNegativeInt("max_length"),
        };
    }

    private static void CheckTokenIds(IReadOnlyList<int> ids, int vocab, ConfigReader c, ConfigReader? g, string key)
    {
        foreach (var id in ids)
        {
            if (id < 0 || id >= vocab)
            {
                // Name the file the id came from: generation_config.json wins when it sets the key.
                var from = g is { } gr && gr.Has(key) ? gr : c;
                throw from.Error(key, $"({id}) is outside the vocabulary [0, {vocab})");
            }
        }
    }

    /// <summary>A one-line summary for logs (not parsed by anything).</summary>
    public override string ToString() =>
        $"{Architecture}: V={VocabSize} D={HiddenSize} F={IntermediateSize} L={Layers} H={Heads} Hkv={KvHeads} Dh={HeadDim} " +
        $"E={Experts} K={TopK} eps={RmsNormEps} theta={RopeTheta} window={(SlidingWindow?.ToString() ?? "none")}" +
        (RopeScaling is { } y ? FormattableString.Invariant($" rope=yarn(factor {y.Factor}, original {y.OriginalMaxPositions}, truncate {y.Truncate})") : "") +
        (Block.SharedExpertSize > 0 ? $" shared={Block.SharedExpertSize}" : "") +
        (Block.MoeLayers.Count > 0 && Block.MoeLayers.Any(m => !m) ? $" dense-layers={Block.MoeLayers.Count(m => !m)}" : "");
}
