// An MoE checkpoint of any family (Model/ModelFamily.cs) on one accelerator: config + validation + memory plan + upload.
//
// Load order: read config.json (ModelConfig, through the family's reader), open the safetensors (memory-mapped, nothing
// read yet), check every tensor's name, shape and dtype (ModelValidator), plan the device memory (MemoryPlan) and refuse
// early if it does not fit, then stream the tensors to the device one by one, in their own dtype. Experts of a layer
// are stacked into [E', F, D] / [E', D, F] tensors as they are uploaded (the grouped GEMM indexes experts by offset).
//
// One MoE path for every layer kind. A wider MLP that every token visits is cut along its hidden axis into F-wide
// chunks (the last zero-padded, which adds exactly zero) and stacked as extra experts, so it runs in the same grouped
// launch as the routed experts:
//   - Qwen2-MoE's shared expert of width Fs: m = ceil(Fs / F) experts E..E+m-1 after the routed ones; the router
//     weight gets shared_expert_gate as row E, and the gating fills the token's slots K..K+m-1 with those experts at
//     weight sigmoid(logit_E) (RouterSpec.SharedSlots);
//   - a dense layer's MLP of width Fd: m = ceil(Fd / F) experts, every token visiting all m at weight 1 (fixed ids the
//     session uploads once; no router, no gating).
using ILGPU.Runtime;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Model;
using ILGpuMoE.Quant;

namespace ILGpuMoE.Runtime;

/// <summary>How far the upload is: bytes copied of the total, and the tensor being copied.</summary>
public readonly record struct LoadProgress(long BytesDone, long BytesTotal, string Tensor);

public sealed record ModelLoadOptions
{
    /// <summary>Default cap on the KV cache length when --max-seq is not given (max_position_embeddings may be 32K+).</summary>
    public const int DefaultMaxSeqCap = 4096;

    /// <summary>Default tokens per forward step (a longer prompt is prefilled in chunks of this size).</summary>
    public const int DefaultMaxBatch = 512;

    /// <summary>KV cache length S; null: min(max_position_embeddings, DefaultMaxSeqCap).</summary>
    public int? MaxSeq { get; init; }

    /// <summary>Largest T of one forward step (workspace size); null: min(S, DefaultMaxBatch).</summary>
    public int? MaxBatch { get; init; }

    /// <summary>Device memory to plan against; null: the accelerator's MemorySize (tests fake a small device).</summary>
    public long? AvailableBytes { get; init; }

    public IProgress<LoadProgress>? Progress { get; init; }

    /// <summary>Kernel versions (Auto: V1 on the CPU accelerator, tuned on GPUs); KernelPolicy.Cpu: the CPU backend.</summary>
    public KernelPolicy Kernels { get; init; }

    /// <summary>The CPU backend's workers (KernelPolicy.Cpu only); null: one per physical core (CpuThreads.DefaultCount).</summary>
    public int? Threads { get; init; }

    /// <summary>
    /// --quant: pack the linear weights (attention q/k/v/o, experts w1/w2/w3) at load time, tensor by tensor; null
    /// keeps every tensor in its checkpoint dtype. Embeddings, norms, router and lm_head always keep their dtype.
    /// </summary>
    public QuantSpec? Quant { get; init; }

    /// <summary>
    /// --quant-lm-head: pack lm_head [V, D] with this scheme at load time (a tied lm_head gets a packed copy; the
    /// embedding rows stay in their dtype); null keeps it in its dtype. lm_head is read whole every decode step, so at
    /// 4 bits per expert weight it is the largest single read of a small model (llama.cpp's Q4_0 files store it in 6 bits).
    /// </summary>
    public QuantSpec? LmHeadQuant { get; init; }

    /// <summary>--router: a router of the MoE literature in place of the model's own (RouterChoice); null keeps the model's.</summary>
    public RouterChoice? Router { get; init; }
}

/// <summary>The optional attention extras of a layer: biases (Qwen2-MoE, gpt-oss), q/k norms (Qwen3-MoE per head, OLMoE
/// whole), gpt-oss's sinks (F32 [H]).</summary>
internal sealed record AttentionExtras(DeviceTensor? BiasQ, DeviceTensor? BiasK, DeviceTensor? BiasV, DeviceTensor? BiasO,
    DeviceTensor? QNorm, DeviceTensor? KNorm, DeviceTensor? Sinks = null)
{
    public static readonly AttentionExtras None = new(null, null, null, null, null, null);

    public bool Any => BiasQ is not null || BiasK is not null || BiasV is not null || BiasO is not null || QNorm is not null || KNorm is not null || Sinks is not null;
}

/// <summary>
/// DeepSeek's MLA weights beyond the layer's Wq / Wk / Wv, which in an MLA layer are q_b_proj (or q_proj),
/// kv_a_proj_with_mqa and kv_b_proj (always dense: the absorbed attention reads its per-head halves W_UK, W_UV):
/// q_a_proj and q_a_layernorm (null without q LoRA), kv_a_layernorm.
/// </summary>
internal sealed record MlaWeights(LinearWeight? Wqa, DeviceTensor? QaNorm, DeviceTensor KvaNorm);

/// <summary>gpt-oss's MoE extras: the router's bias [E] (checkpoint dtype) and the experts' biases, de-interleaved and
/// widened to F32: gate and up [E, F], down [E, D].</summary>
internal sealed record MoeExtras(DeviceTensor? RouterBias, DeviceTensor? GateBias, DeviceTensor? UpBias, DeviceTensor? DownBias)
{
    public static readonly MoeExtras None = new(null, null, null, null);

    /// <summary>DeepSeek-V3's e_score_correction_bias [E], F32 (the gating kernel reads it as floats).</summary>
    public DeviceTensor? ScoreBias { get; init; }
}

/// <summary>
/// One decoder layer's weights on the device. W1/W3/W2 stack Experts = E' experts: the E routed ones and the shared
/// expert's chunks (a MoE layer), or the dense MLP's chunks (Gate is null). Slots: experts per token (K' = K + shared
/// chunks, or every chunk of a dense layer); SharedSlots: the shared expert's chunks.
/// </summary>
internal sealed record LayerWeights(DeviceTensor InputNorm, LinearWeight Wq, LinearWeight Wk, LinearWeight Wv, LinearWeight Wo,
    AttentionExtras Extras, DeviceTensor PostNorm, DeviceTensor? Gate, LinearWeight W1, LinearWeight W3, LinearWeight W2,
    int Experts, int Slots, int SharedSlots)
{
    public MoeExtras Moe { get; init; } = MoeExtras.None;

    /// <summary>MLA's extra weights (DeepSeek); null for grouped-query attention.</summary>
    public MlaWeights? Mla { get; init; }

    /// <summary>The experts' activation and biases (gpt-oss's clamped GLU; SiLU without biases for every other family).</summary>
    public ExpertGlu Glu { get; init; }

    /// <summary>A dense layer: every token visits all Experts chunks at weight 1, no router.</summary>
    public bool Dense => Gate is null;

    /// <summary>
    /// GPTQ act-order q, k and v with one input order (GPTQ quantizes them on the same inputs, so they get the same
    /// one): the step gathers the normed row once for all three instead of once each.
    /// </summary>
    public bool QkvShareInputOrder { get; } = Wq.Quant?.Host.InputPermutation is { } pq
                                             && Wk.Quant?.Host.InputPermutation is { } pk && Wv.Quant?.Host.InputPermutation is { } pv
                                             && pq.AsSpan().SequenceEqual(pk) && pq.AsSpan().SequenceEqual(pv);
}

public sealed class MoeModel : IDisposable
{
    private readonly List<DeviceTensor> _owned = [];
    private readonly List<LinearWeight> _linear = [];

    private MoeModel(Accelerator accelerator, ModelConfig config, string directory, MemoryPlan plan, KernelPolicy kernels, int? threads)
    {
        Accelerator = accelerator;
        Config = config;
        Directory = directory;
        Plan = plan;
        Ops = kernels == KernelPolicy.Cpu ? new Cpu.CpuOps(new Cpu.CpuThreads(threads)) : new WeightOps(accelerator, kernels);
    }

    public Accelerator Accelerator { get; }

    public ModelConfig Config { get; }

    /// <summary>The model folder it was loaded from.</summary>
    public string Directory { get; }

    public MemoryPlan Plan { get; }

    /// <summary>KV cache length S of sessions.</summary>
    public int MaxSeq => Plan.MaxSeq;

    /// <summary>Largest T of one forward step.</summary>
    public int MaxBatch => Plan.MaxBatch;

    /// <summary>The stored type of layer l's experts ("BF16", "Fp8 128x128", "Mxfp4", ...): a dense layer's MLP chunks included.</summary>
    public string ExpertWeightType(int layer) => Layers[layer].W1.TypeName;

    /// <summary>dtype of the expert weights (the bulk of the model), e.g. "BF16".</summary>
    public string WeightDType => Layers.Count > 0 ? Layers[0].W1.TypeName : Embedding.Type.ToString();

    /// <summary>Bytes of weights on the device (the checkpoint's tensor bytes: no widening on upload; packed bytes
    /// for quantized linear weights).</summary>
    public long DeviceWeightBytes => _owned.Sum(t => t.Bytes) + _linear.Sum(t => t.Bytes);

    internal IForwardOps Ops { get; }

    /// <summary>Of <see cref="DeviceWeightBytes"/>, the bytes read in place from the checkpoint's memory map (the CPU
    /// backend's float tensors; 0 elsewhere): what was not copied at load.</summary>
    public long MappedWeightBytes => _owned.Where(t => t.IsMapped).Sum(t => t.Bytes) + _linear.Where(l => l.Dense?.IsMapped == true).Sum(l => l.Bytes);

    /// <summary>Of <see cref="DeviceWeightBytes"/>, the packed (--quant or quantized-checkpoint) bytes the CPU backend keeps in
    /// host memory only (HostQuantMatrix; 0 elsewhere): packed weights are held once, not also in ILGPU buffers.</summary>
    public long HostPackedWeightBytes => _linear.Where(l => l.Quant is HostQuantMatrix).Sum(l => l.Bytes);

    /// <summary>True when the CPU backend runs this model (KernelPolicy.Cpu): no ILGPU kernel is launched.</summary>
    public bool IsCpuBackend => Ops is Cpu.CpuOps;

    /// <summary>"cpu (N threads)" for the CPU backend, else the accelerator's kind ("CUDA", "CPU" for the emulator).</summary>
    public string Backend => Ops is Cpu.CpuOps c ? $"cpu ({c.Threads.Count} threads)" : Accelerator.AcceleratorType == AcceleratorType.CPU ? "cpu-emulator" : Accelerator.AcceleratorType.ToString();

    /// <summary>The rotation of every layer: the whole head in rotate-half pairs, or MLA's rope part (interleaved when
    /// rope_interleave), with YaRN's frequencies and cos/sin factor when rope_scaling says so.</summary>
    internal RopeSpec Rope => Config.Block.Mla is { } m
        ? new RopeSpec(m.QkRopeHeadDim, Config.RopeTheta) { Interleaved = m.RopeInterleave, Yarn = Config.RopeScaling }
        : new RopeSpec(Config.HeadDim, Config.RopeTheta) { Yarn = Config.RopeScaling };

    /// <summary>The attention softmax scale: Dh^-0.5 (MLA: the q/k head dim's), times YaRN's mscale^2 (DeepSeek's
    /// mscale_all_dim; 1 otherwise).</summary>
    internal float AttentionScale => (float)((Config.RopeScaling?.SoftmaxScaleFactor ?? 1.0) / Math.Sqrt(Config.HeadDim));

    internal DeviceTensor Embedding { get; private set; } = null!;

    internal DeviceTensor FinalNorm { get; private set; } = null!;

    /// <summary>lm_head [V, D]: the checkpoint's (or the tied embedding) in its dtype, or packed (ModelLoadOptions.LmHeadQuant).</summary>
    internal LinearWeight LmHead { get; private set; } = null!;

    internal IReadOnlyList<LayerWeights> Layers { get; private set; } = [];

    /// <summary>Widest input of an act-order (GPTQ desc_act) attention matrix; 0 when none: the session's gather scratch
    /// holds MaxBatch rows of this many floats.</summary>
    internal int GatherColumns => Layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo })
        .Where(w => w.Quant?.Host.InputPermutation is not null).Select(w => w.Quant!.Host.Cols).DefaultIfEmpty(0).Max();

    /// <summary>True when some layer's experts are act-order (w1 carries the [E, D] permutation w1 and w3 share): the
    /// MoE workspace gathers each pair's input row.</summary>
    internal bool PermutedExperts => Layers.Any(l => l.W1.Quant?.Host.InputPermutation is not null);

    /// <summary>The memory plan for a folder without touching a device (config, checkpoint headers, sizes).</summary>
    public static MemoryPlan PlanFor(string directory, ModelLoadOptions? options = null)
    {
        var (config, _, plan, _) = Open(directory, options ?? new(), keep: false);
        return plan;
    }

    /// <summary>Loads a Hugging Face model folder of a supported family (ModelFamilies) onto <paramref name="accelerator"/>.</summary>
    public static MoeModel Load(Accelerator accelerator, string directory, ModelLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        options ??= new();
        if (options.Kernels == KernelPolicy.Cpu && accelerator.AcceleratorType != AcceleratorType.CPU)
            throw new RuntimeInputException($"the CPU backend (KernelPolicy.Cpu) keeps its weights in host memory: it needs ILGPU's CPU accelerator, not {accelerator.AcceleratorType}");
        if (options.Threads is { } n && (n < 1 || n > 4096))
            throw new RuntimeInputException($"--threads must be in [1, 4096], got {n}");
        var (config, checkpoint, plan, source) = Open(directory, options, keep: true);
        // The CPU backend reads float tensors in place from the memory map: the model then owns the open checkpoint (and
        // disposes it with itself, also when the load fails below).
        bool mapped = options.Kernels == KernelPolicy.Cpu;
        MoeModel? model = null;
        try
        {
            plan.EnsureFits(options.AvailableBytes ?? accelerator.MemorySize, accelerator.Name);
            model = new MoeModel(accelerator, config, directory, plan, options.Kernels, options.Threads) { _checkpoint = mapped ? checkpoint : null };
            model.Upload(checkpoint!, options.Progress, options.Quant, source, mapped, options.LmHeadQuant);
            if (!mapped)
                checkpoint!.Dispose();
            return model;
        }
        catch
        {
            if (model is not null)
                model.Dispose();
            if (model is null || !mapped)
                checkpoint!.Dispose();
            throw;
        }
    }

    private static (ModelConfig Config, Checkpoint? Checkpoint, MemoryPlan Plan, QuantSource? Source) Open(string directory, ModelLoadOptions options, bool keep)
    {
        if (!System.IO.Directory.Exists(directory))
        {
            throw new DirectoryNotFoundException(File.Exists(directory)
                ? $"{directory}: is a file; --model takes the model folder (the one holding config.json)"
                : $"{directory}: no such model folder");
        }

        var config = ModelConfig.Load(directory);
        if (options.Router is { } router)
        {
            try
            {
                config = config with { Router = router.Apply(config) };
            }
            catch (ArgumentException e)
            {
                throw new RuntimeInputException(e.Message);
            }
        }

        var source = QuantSource.Load(directory);
        if (source is not null && options.Quant is not null)
            throw new RuntimeInputException($"--quant {options.Quant.Name}: {directory} is already quantized (quantization_config.quant_method '{source.Method}'); drop --quant");
        var checkpoint = Checkpoint.Open(directory);
        try
        {
            QuantSource.Validate(config, checkpoint, source);

            int maxSeq = options.MaxSeq ?? Math.Min(config.MaxPositionEmbeddings, ModelLoadOptions.DefaultMaxSeqCap);
            if (maxSeq < 1 || maxSeq > config.MaxPositionEmbeddings)
                throw new RuntimeInputException($"--max-seq must be in [1, {config.MaxPositionEmbeddings}] (max_position_embeddings), got {maxSeq}");
            int maxBatch = Math.Min(options.MaxBatch ?? ModelLoadOptions.DefaultMaxBatch, maxSeq);
            if (maxBatch < 1)
                throw new RuntimeInputException($"max batch must be >= 1, got {maxBatch}");
            if (options.Quant is { } quant)
                Check(quant, config);
            if (options.LmHeadQuant is { } lmQuant)
                CheckLmHead(lmQuant, config);

            var actOrder = source is not null ? ActOrderLayout.Of(config, checkpoint, source) : null;
            var plan = MemoryPlan.Of(config, checkpoint.Tensors, maxSeq, maxBatch, options.Quant ?? source?.PlanSpec, keepFloatLinear: source is not null,
                actOrder: actOrder, lmHeadQuant: options.LmHeadQuant);
            if (!keep)
            {
                checkpoint.Dispose();
                return (config, null, plan, source);
            }

            return (config, checkpoint, plan, source);
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    private static void Check(QuantSpec quant, ModelConfig config)
    {
        try
        {
            quant.CheckLinearWeights(config);
        }
        catch (ArgumentException e)
        {
            throw new RuntimeInputException(e.Message);
        }
    }

    private static void CheckLmHead(QuantSpec quant, ModelConfig config)
    {
        try
        {
            quant.Check(config.Family.Names.LmHead, config.VocabSize, config.HiddenSize);
            if (!quant.Fits(config.HiddenSize))
                throw new ArgumentException($"--quant {quant.Name}: lm_head's {config.HiddenSize} input columns are not a whole number of its groups");
        }
        catch (ArgumentException e)
        {
            throw new RuntimeInputException(e.Message.StartsWith("--quant ", StringComparison.Ordinal) ? "--quant-lm-head" + e.Message["--quant".Length..] : e.Message);
        }
    }

    // mapped (CPU backend): float tensors stay in the checkpoint's memory map (DeviceTensor.Mapped), nothing is copied.
    private void Upload(Checkpoint checkpoint, IProgress<LoadProgress>? progress, QuantSpec? quant, QuantSource? source, bool mapped, QuantSpec? lmHeadQuant)
    {
        var c = Config;
        var n = c.Family.Names;
        var shapes = ModelTensors.Expected(c).Where(QuantSource.IsLinear).ToDictionary(e => e.Name, e => e.Shape, StringComparer.Ordinal);
        long done = 0, total = Plan.WeightBytes;
        int f = c.IntermediateSize;

        DeviceTensor One(string name)
        {
            progress?.Report(new LoadProgress(done, total, name));
            var t = mapped ? DeviceTensor.Mapped(checkpoint, name) : DeviceTensor.Upload(Accelerator, checkpoint, name);
            _owned.Add(t);
            done += t.Bytes;
            return t;
        }

        DeviceTensor? Optional(bool present, string name) => present ? One(name) : null;

        // Qwen3's per-head q/k norm weights go to the fused RoPE kernel, which reads F32.
        DeviceTensor? OptionalFloat32(bool present, string name)
        {
            if (!present)
                return null;
            progress?.Report(new LoadProgress(done, total, name));
            var t = DeviceTensor.UploadFloat32(Accelerator, checkpoint, name);
            _owned.Add(t);
            done += t.Bytes;
            return t;
        }

        // A packed matrix goes to the device's buffers, or stays in host memory for the CPU backend (read there, once).
        DeviceQuantMatrix Place(QuantizedMatrix m) => mapped ? new HostQuantMatrix(m) : m.Upload(Accelerator);

        LinearWeight Add(LinearWeight w)
        {
            _linear.Add(w);
            done += w.Bytes;
            return w;
        }

        // One host matrix at a time: read (widened to f32) and pack, or read a quantized checkpoint's packed tensors;
        // upload, drop.
        QuantizedMatrix Pack(ExpertSlice part)
        {
            // A shared expert exactly F wide is one chunk, the whole matrix (DeepSeek-V3's single shared expert): a packed
            // checkpoint's is read as it is.
            if (part is { Chunk: 0 } && part.Width == f && source is not null && !QuantSource.IsFloat(checkpoint, part.Name))
                return source.Read(checkpoint, part.Name, part.Rows, part.Cols);

            if (part.Chunk >= 0)
            {
                // A chunk is packed here, from float weights: --quant's, or a quantized checkpoint's shared expert or dense
                // MLP, which our quantize command leaves in float for this (CheckpointQuantizer.cs), packed with its scheme.
                if (source is not null && !QuantSource.IsFloat(checkpoint, part.Name))
                    throw new RuntimeInputException($"{checkpoint.Directory}: {part.Name} is packed ({source.Method}) at its full width; the runtime packs a shared expert or a dense MLP in F-wide chunks, so it needs that tensor in a float dtype");
                return (quant ?? source!.PlanSpec).Quantize(part.ReadFloat32(checkpoint), part.Rows, part.Cols);
            }

            if (part.Stacked)
            {
                // gpt-oss: an MXFP4 original's blocks are read as they are; a BF16 copy is packed like any float weight.
                return source is not null && !QuantSource.IsFloat(checkpoint, part.Name)
                    ? source.ReadStacked(checkpoint, part.Name, part.Expert, part.Part, part.Rows, part.Cols)
                    : (quant ?? source!.PlanSpec).Quantize(part.ReadFloat32(checkpoint), part.Rows, part.Cols);
            }

            int rows = (int)shapes[part.Name][0], cols = (int)shapes[part.Name][1];
            return source is not null ? source.Read(checkpoint, part.Name, rows, cols) : quant!.Quantize(checkpoint.ReadFloat32(part.Name), rows, cols);
        }

        bool packed = quant is not null || source is not null;

        // A quantized checkpoint may leave a linear weight unquantized (modules_to_not_convert): it stays dense.
        bool Dense(string name) => !packed || (source is not null && QuantSource.IsFloat(checkpoint, name));

        LinearWeight Linear(string name)
        {
            progress?.Report(new LoadProgress(done, total, name));
            return Add(Dense(name)
                ? new LinearWeight(mapped ? DeviceTensor.Mapped(checkpoint, name) : DeviceTensor.Upload(Accelerator, checkpoint, name))
                : new LinearWeight(Place(Pack(ExpertSlice.Whole(name)))));
        }

        // The stacked experts of a layer, down (w2) first: a GPTQ act-order down projection's input permutation is folded
        // into the rows of gate and up (ActOrder.cs), so it must be read before them; one kind of weight is on the host at
        // a time. parts(p): the expert slots of projection p, routed experts first.
        (LinearWeight W1, LinearWeight W3, LinearWeight W2) Stack(int layer, Func<MlpProjection, ExpertSlice[]> parts)
        {
            int slots = parts(MlpProjection.Gate).Length;
            int[]?[] foldRows = new int[]?[slots];
            int[]?[] inputOrder = new int[]?[slots];

            LinearWeight Stacked(MlpProjection p)
            {
                var slices = parts(p);
                progress?.Report(new LoadProgress(done, total, n.Experts(layer, p)));
                // A quantized checkpoint's float chunks are packed like the rest of its experts (the memory plan counts them so).
                if (slices.All(x => Dense(x.Name)) && (source is null || slices.All(x => x.Chunk < 0)))
                    return Add(new LinearWeight((mapped ? DeviceTensor.MappedStack(checkpoint, slices) : null) ?? DeviceTensor.UploadStacked(Accelerator, checkpoint, slices)));

                // A dense layer's MLP stored FP8 at its full width (DeepSeek-V3's first layers): its blocks do not follow the
                // F-wide chunks, so it is decoded once on the host (exactly: code x scale in F32) and its chunks run in F32.
                // (Other packed full-width MLPs are refused in Pack, as before.)
                if (source is { PlanSpec.Layout: Kernels.Quant.QuantScheme.Fp8 } && slices.All(x => x.Chunk >= 0 && !x.Stacked)
                    && slices.Select(x => x.Name).Distinct().Count() == 1 && !QuantSource.IsFloat(checkpoint, slices[0].Name) && !c.IsMoeLayer(layer))
                {
                    var whole = slices[0];
                    var (rows, cols) = ((int)shapes[whole.Name][0], (int)shapes[whole.Name][1]);
                    var w = source.Read(checkpoint, whole.Name, rows, cols).ToFloat32();
                    var t = DeviceTensor.Allocate(Accelerator, Kernels.WeightType.F32, slices.Length, whole.Rows, whole.Cols);
                    for (int j = 0; j < slices.Length; j++)
                        t.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(slices[j].CutFloat32(w).AsSpan()), (long)j * whole.Rows * whole.Cols);
                    return Add(new LinearWeight(t));
                }

                // Experts are packed one by one (a per-expert FP8 block grid, per-row int scales) and stacked [E*N, K].
                var packedParts = new QuantizedMatrix[slots];
                for (int e = 0; e < slots; e++)
                {
                    var m = Pack(slices[e]);
                    try
                    {
                        if (p == MlpProjection.Down)
                        {
                            foldRows[e] = m.InputPermutation;
                            m = m.WithoutInputPermutation();
                        }
                        else
                        {
                            if (foldRows[e] is { } rowsOrder)
                                m = m.PermuteRows(rowsOrder);
                            if (p == MlpProjection.Gate)
                                inputOrder[e] = m.InputPermutation;
                            else
                                ActOrder.CheckSameInputOrder(inputOrder[e], m.InputPermutation);
                        }
                    }
                    catch (ArgumentException ex)
                    {
                        throw new InvalidDataException($"{checkpoint.Directory}: {n.Layer(layer)} expert {e}: {ex.Message}");
                    }

                    // up shares gate's input permutation: only gate keeps a copy on the device.
                    packedParts[e] = p == MlpProjection.Up ? m.WithoutInputPermutation() : m;
                }

                return Add(new LinearWeight(Place(QuantizedMatrix.Stack(packedParts))));
            }

            var w2 = Stacked(MlpProjection.Down);
            var w1 = Stacked(MlpProjection.Gate);
            var w3 = Stacked(MlpProjection.Up);
            if (w1.Kind != w3.Kind || w1.Kind != w2.Kind)
            {
                throw new InvalidDataException($"{checkpoint.Directory}: layer {layer}'s experts mix dtypes (gate {w1.TypeName}, up {w3.TypeName}, down {w2.TypeName}); " +
                                               "the grouped GEMM needs one dtype for gate, up and down");
            }

            return (w1, w3, w2);
        }

        // gpt-oss: the router's bias as stored; the experts' biases de-interleaved (gate_up_proj_bias [E, 2F]: gate = even,
        // up = odd) and widened to F32, which the expert kernels' epilogues read.
        MoeExtras UploadMoeExtras(int l)
        {
            if (c.Block.ScoreCorrectionBias)
                return MoeExtras.None with { ScoreBias = OptionalFloat32(true, n.ScoreCorrectionBias(l)) };
            var routerBias = Optional(c.Block.RouterBias, TensorNames.Bias(n.Router(l)));
            if (!c.Block.ExpertBias)
                return new MoeExtras(routerBias, null, null, null);
            DeviceTensor F32(string name, float[] values, long rows, long cols, long storedBytes)
            {
                progress?.Report(new LoadProgress(done, total, name));
                var t = DeviceTensor.Allocate(Accelerator, Kernels.WeightType.F32, rows, cols);
                t.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()), 0);
                _owned.Add(t);
                done += storedBytes; // the plan counts the checkpoint's bytes
                return t;
            }

            string gu = n.StackedExpertsBias(l, MlpProjection.Gate), dn = n.StackedExpertsBias(l, MlpProjection.Down);
            var both = checkpoint.ReadFloat32(gu);
            var (gate, up) = (new float[(long)c.Experts * f], new float[(long)c.Experts * f]);
            for (long i = 0; i < gate.LongLength; i++)
                (gate[i], up[i]) = (both[2 * i], both[2 * i + 1]);
            long half = checkpoint.Get(gu).ByteLength / 2;
            return new MoeExtras(routerBias, F32(gu + " (gate)", gate, c.Experts, f, half), F32(gu + " (up)", up, c.Experts, f, half),
                F32(dn, checkpoint.ReadFloat32(dn), c.Experts, c.HiddenSize, checkpoint.Get(dn).ByteLength));
        }

        // MLA's kv_b_proj stays float: as stored when it is, else (an FP8 checkpoint) widened to F32 here.
        LinearWeight LatentExpansion(string name)
        {
            progress?.Report(new LoadProgress(done, total, name));
            DeviceTensor t;
            if (QuantSource.IsFloat(checkpoint, name))
            {
                t = DeviceTensor.Upload(Accelerator, checkpoint, name);
            }
            else
            {
                var shape = checkpoint.Get(name).Shape;
                var w = (source ?? throw new InvalidDataException($"{checkpoint.Directory}: {name} is not F32, F16 or BF16")).Read(checkpoint, name, (int)shape[0], (int)shape[1]).ToFloat32();
                t = DeviceTensor.Allocate(Accelerator, Kernels.WeightType.F32, shape[0], shape[1]);
                t.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.AsSpan()), 0);
            }

            return Add(new LinearWeight(t));
        }

        var b = c.Block;
        Embedding = One(n.Embedding);
        var layers = new List<LayerWeights>(c.Layers);
        for (int l = 0; l < c.Layers; l++)
        {
            int layer = l;
            LinearWeight wq, wk, wv;
            MlaWeights? mla = null;
            if (b.Mla is { } m)
            {
                bool lora = m.QLoraRank > 0;
                var wqa = lora ? Linear(n.Mla(l, "q_a_proj")) : null;
                var qaNorm = lora ? One(n.Mla(l, "q_a_layernorm")) : null;
                (wq, wk) = (Linear(lora ? n.Mla(l, "q_b_proj") : n.QProj(l)), Linear(n.Mla(l, "kv_a_proj_with_mqa")));
                mla = new MlaWeights(wqa, qaNorm, One(n.Mla(l, "kv_a_layernorm")));
                wv = LatentExpansion(n.Mla(l, "kv_b_proj"));
            }
            else
            {
                (wq, wk, wv) = (Linear(n.QProj(l)), Linear(n.KProj(l)), Linear(n.VProj(l)));
            }

            var wo = Linear(n.OProj(l));
            var extras = new AttentionExtras(
                Optional(b.QkvBias, TensorNames.Bias(n.QProj(l))), Optional(b.QkvBias, TensorNames.Bias(n.KProj(l))),
                Optional(b.QkvBias, TensorNames.Bias(n.VProj(l))), Optional(b.OutputBias, TensorNames.Bias(n.OProj(l))),
                b.QkNorm == QkNormKind.PerHead ? OptionalFloat32(true, n.QNorm(l)) : Optional(b.QkNorm == QkNormKind.Whole, n.QNorm(l)),
                b.QkNorm == QkNormKind.PerHead ? OptionalFloat32(true, n.KNorm(l)) : Optional(b.QkNorm == QkNormKind.Whole, n.KNorm(l)),
                OptionalFloat32(b.AttentionSinks, n.Sinks(l)));
            var (inputNorm, postNorm) = (One(n.InputNorm(l)), One(n.PostAttentionNorm(l)));
            LayerWeights lw;
            if (c.IsMoeLayer(l))
            {
                int shared = c.SharedChunks;
                DeviceTensor gate;
                if (shared > 0 && !b.SharedExpertUngated)
                {
                    // shared_expert_gate [1, D] becomes the router's row E: one matmul gives both.
                    progress?.Report(new LoadProgress(done, total, n.Router(l)));
                    gate = DeviceTensor.UploadRows(Accelerator, checkpoint, [n.Router(l), n.SharedExpertGate(l)]);
                    _owned.Add(gate);
                    done += gate.Bytes;
                }
                else
                {
                    gate = One(n.Router(l));
                }

                bool stacked = c.Family.ExpertStorage == ExpertStorage.StackedGateUp;
                var (w1, w3, w2) = Stack(l, p => Enumerable.Range(0, c.Experts)
                    .Select(e => stacked ? ExpertSlice.OfStack(n, layer, e, p, f, c.HiddenSize) : ExpertSlice.Whole(n.Expert(layer, e, p)))
                    .Concat(ExpertSlice.Cut(n.SharedExpert(layer, p), p, b.SharedExpertSize, f, c.HiddenSize, shared)).ToArray());
                lw = new LayerWeights(inputNorm, wq, wk, wv, wo, extras, postNorm, gate, w1, w3, w2, c.Experts + shared, c.TopK + shared, shared)
                {
                    Moe = b.RouterBias || b.ExpertBias || b.ScoreCorrectionBias ? UploadMoeExtras(l) : MoeExtras.None,
                    Mla = mla,
                };
                if (b.SwigluLimit is { } limit)
                {
                    var e = lw.Moe;
                    lw = lw with
                    {
                        Glu = ExpertGlu.GptOss((float)b.SwigluAlpha, (float)limit, e.GateBias?.F32 ?? default, e.UpBias?.F32 ?? default, e.DownBias?.F32 ?? default),
                    };
                }
            }
            else
            {
                int chunks = c.MoeShape(l).Slots;
                var (w1, w3, w2) = Stack(l, p => ExpertSlice.Cut(n.DenseMlp(layer, p), p, b.DenseIntermediateSize, f, c.HiddenSize, chunks).ToArray());
                lw = new LayerWeights(inputNorm, wq, wk, wv, wo, extras, postNorm, null, w1, w3, w2, chunks, chunks, 0) { Mla = mla };
            }

            layers.Add(lw);
        }

        Layers = layers;
        FinalNorm = One(n.FinalNorm);
        string lmName = c.TieWordEmbeddings ? n.Embedding : n.LmHead;
        if (lmHeadQuant is not null)
        {
            progress?.Report(new LoadProgress(done, total, lmName));
            LmHead = Add(new LinearWeight(Place(lmHeadQuant.Quantize(checkpoint.ReadFloat32(lmName), c.VocabSize, c.HiddenSize))));
        }
        else
        {
            // Dense: the tensor is owned (and disposed) as a tensor, not as a linear weight.
            LmHead = new LinearWeight(c.TieWordEmbeddings ? Embedding : One(n.LmHead));
        }

        Accelerator.Synchronize();
        progress?.Report(new LoadProgress(total, total, ""));
    }

    /// <summary>A fresh session (empty KV cache of <see cref="MaxSeq"/> positions).</summary>
    public InferenceSession NewSession(SessionOptions? options = null)
    {
        ThrowIfUnusable(nameof(NewSession));
        return new(this, options);
    }

    /// <summary>A batch session: sequences stepped together over a paged KV pool (BatchSession.cs).</summary>
    public BatchSession NewBatchSession(BatchOptions? options = null)
    {
        ThrowIfUnusable(nameof(NewBatchSession));
        return new(this, options);
    }

    /// <summary>True once the model, its accelerator or the accelerator's context was disposed.</summary>
    public bool IsDisposed => _disposed || DeviceGone;

    private bool _disposed;

    // The CPU backend's open checkpoint: its mapped tensors point into it (disposed with the model).
    private Checkpoint? _checkpoint;

    /// <summary>True once the accelerator or its context was disposed (ILGPU freed every buffer on it).</summary>
    internal bool DeviceGone => Accelerator.IsDisposed || Accelerator.Context.IsDisposed;

    /// <summary>
    /// Throws ObjectDisposedException naming what is gone: this model, or the accelerator / context it lives on (a
    /// session or call made after either was disposed would otherwise reach ILGPU's runtime with freed buffers).
    /// </summary>
    internal void ThrowIfUnusable(string user)
    {
        if (_disposed)
            throw new ObjectDisposedException(nameof(MoeModel), $"{user}: the model ({Directory}) was disposed");
        ILGpuMoE.Kernels.KernelLaunches.Guard(Accelerator, user);
    }

    /// <summary>Frees the weights (idempotent). After the accelerator or its context was disposed there is nothing left
    /// to free (ILGPU freed the buffers with it): the model only marks itself disposed.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        // The CPU backend's memory map is the model's own, whatever became of the accelerator.
        _checkpoint?.Dispose();
        if (DeviceGone)
            return;
        Ops.Dispose();
        foreach (var t in _owned)
            t.Dispose();
        _owned.Clear();
        foreach (var t in _linear)
            t.Dispose();
        _linear.Clear();
    }
}
