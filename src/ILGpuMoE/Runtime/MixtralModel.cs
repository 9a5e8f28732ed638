// A Mixtral checkpoint on one accelerator: config + validation + memory plan + weight upload.
//
// Load order: read config.json (ModelConfig), open the safetensors (memory-mapped, nothing read yet), check every
// tensor's name, shape and dtype (ModelValidator), plan the device memory (MemoryPlan) and refuse early if it does
// not fit, then stream the tensors to the device one by one, in their own dtype. Experts of a layer are stacked into
// [E, F, D] / [E, D, F] tensors as they are uploaded (the grouped GEMM indexes experts by offset).
using ILGPU.Runtime;
using ILGpuMoE.IO;
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

    /// <summary>Kernel versions (Auto: V1 on the CPU accelerator, tuned on GPUs).</summary>
    public KernelPolicy Kernels { get; init; }

    /// <summary>
    /// --quant: pack the linear weights (attention q/k/v/o, experts w1/w2/w3) at load time, tensor by tensor; null
    /// keeps every tensor in its checkpoint dtype. Embeddings, norms, router and lm_head always keep their dtype.
    /// </summary>
    public QuantSpec? Quant { get; init; }
}

/// <summary>One decoder layer's weights on the device.</summary>
internal sealed record LayerWeights(DeviceTensor InputNorm, LinearWeight Wq, LinearWeight Wk, LinearWeight Wv, LinearWeight Wo,
    DeviceTensor PostNorm, DeviceTensor Gate, LinearWeight W1, LinearWeight W3, LinearWeight W2)
{
    /// <summary>
    /// GPTQ act-order q, k and v with one input order (GPTQ quantizes them on the same inputs, so they get the same
    /// one): the step gathers the normed row once for all three instead of once each.
    /// </summary>
    public bool QkvShareInputOrder { get; } = Wq.Quant?.Host.InputPermutation is { } pq
                                             && Wk.Quant?.Host.InputPermutation is { } pk && Wv.Quant?.Host.InputPermutation is { } pv
                                             && pq.AsSpan().SequenceEqual(pk) && pq.AsSpan().SequenceEqual(pv);
}

public sealed class MixtralModel : IDisposable
{
    private readonly List<DeviceTensor> _owned = [];
    private readonly List<LinearWeight> _linear = [];

    private MixtralModel(Accelerator accelerator, ModelConfig config, string directory, MemoryPlan plan, KernelPolicy kernels)
    {
        Accelerator = accelerator;
        Config = config;
        Directory = directory;
        Plan = plan;
        Ops = new WeightOps(accelerator, kernels);
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

    /// <summary>dtype of the expert weights (the bulk of the model), e.g. "BF16".</summary>
    public string WeightDType => Layers.Count > 0 ? Layers[0].W1.TypeName : Embedding.Type.ToString();

    /// <summary>Bytes of weights on the device (the checkpoint's tensor bytes: no widening on upload; packed bytes
    /// for quantized linear weights).</summary>
    public long DeviceWeightBytes => _owned.Sum(t => t.Bytes) + _linear.Sum(t => t.Bytes);

    internal WeightOps Ops { get; }

    internal DeviceTensor Embedding { get; private set; } = null!;

    internal DeviceTensor FinalNorm { get; private set; } = null!;

    internal DeviceTensor LmHead { get; private set; } = null!;

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

    /// <summary>Loads a Hugging Face Mixtral folder onto <paramref name="accelerator"/>.</summary>
    public static MixtralModel Load(Accelerator accelerator, string directory, ModelLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        options ??= new();
        var (config, checkpoint, plan, source) = Open(directory, options, keep: true);
        using (checkpoint)
        {
            plan.EnsureFits(options.AvailableBytes ?? accelerator.MemorySize, accelerator.Name);
            var model = new MixtralModel(accelerator, config, directory, plan, options.Kernels);
            try
            {
                model.Upload(checkpoint!, options.Progress, options.Quant, source);
                return model;
            }
            catch
            {
                model.Dispose();
                throw;
            }
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

            var actOrder = source is not null ? ActOrderLayout.Of(config, checkpoint, source) : null;
            var plan = MemoryPlan.Of(config, checkpoint.Tensors, maxSeq, maxBatch, options.Quant ?? source?.PlanSpec, keepFloatLinear: source is not null,
                actOrder: actOrder);
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

    private void Upload(Checkpoint checkpoint, IProgress<LoadProgress>? progress, QuantSpec? quant, QuantSource? source)
    {
        var c = Config;
        var shapes = MixtralTensors.Expected(c).Where(QuantSource.IsLinear).ToDictionary(e => e.Name, e => e.Shape, StringComparer.Ordinal);
        long done = 0, total = Plan.WeightBytes;

        DeviceTensor One(string name)
        {
            progress?.Report(new LoadProgress(done, total, name));
            var t = DeviceTensor.Upload(Accelerator, checkpoint, name);
            _owned.Add(t);
            done += t.Bytes;
            return t;
        }

        LinearWeight Add(LinearWeight w)
        {
            _linear.Add(w);
            done += w.Bytes;
            return w;
        }

        // One host matrix at a time: read (widened to f32) and pack, or read a quantized checkpoint's packed tensors;
        // upload, drop.
        QuantizedMatrix Pack(string name)
        {
            int rows = (int)shapes[name][0], cols = (int)shapes[name][1];
            return source is not null ? source.Read(checkpoint, name, rows, cols) : quant!.Quantize(checkpoint.ReadFloat32(name), rows, cols);
        }

        bool packed = quant is not null || source is not null;

        // A quantized checkpoint may leave a linear weight unquantized (modules_to_not_convert): it stays dense.
        bool Dense(string name) => !packed || (source is not null && QuantSource.IsFloat(checkpoint, name));

        LinearWeight Linear(string name)
        {
            progress?.Report(new LoadProgress(done, total, name));
            return Add(Dense(name) ? new LinearWeight(DeviceTensor.Upload(Accelerator, checkpoint, name)) : new LinearWeight(Pack(name).Upload(Accelerator)));
        }

        // The experts of a layer, w2 first: a GPTQ act-order w2's input permutation is folded into the rows of w1 and w3
        // (ActOrder.cs), so w2 must be read before them; one kind of weight is on the host at a time.
        (LinearWeight W1, LinearWeight W3, LinearWeight W2) Experts(int layer)
        {
            string[] Names(int w) => Enumerable.Range(0, c.Experts).Select(e => MixtralTensors.ExpertWeight(layer, e, w)).ToArray();
            string Label(int w) => $"{MixtralTensors.Layer(layer)}.block_sparse_moe.experts.*.w{w}.weight";
            int[]?[] foldRows = new int[]?[c.Experts];
            int[]?[] inputOrder = new int[]?[c.Experts];

            LinearWeight Stacked(int w)
            {
                var names = Names(w);
                progress?.Report(new LoadProgress(done, total, Label(w)));
                if (names.All(Dense))
                    return Add(new LinearWeight(DeviceTensor.UploadStacked(Accelerator, checkpoint, names)));

                // Experts are packed one by one (a per-expert FP8 block grid, per-row int scales) and stacked [E*N, K].
                var parts = new QuantizedMatrix[c.Experts];
                for (int e = 0; e < c.Experts; e++)
                {
                    var m = Pack(names[e]);
                    try
                    {
                        if (w == 2)
                        {
                            foldRows[e] = m.InputPermutation;
                            m = m.WithoutInputPermutation();
                        }
                        else
                        {
                            if (foldRows[e] is { } rowsOrder)
                                m = m.PermuteRows(rowsOrder);
                            if (w == 1)
                                inputOrder[e] = m.InputPermutation;
                            else
                                ActOrder.CheckSameInputOrder(inputOrder[e], m.InputPermutation);
                        }
                    }
                    catch (ArgumentException ex)
                    {
                        throw new InvalidDataException($"{checkpoint.Directory}: {MixtralTensors.Layer(layer)} expert {e}: {ex.Message}");
                    }

                    // w3 shares w1's input permutation: only w1 keeps a copy on the device.
                    parts[e] = w == 3 ? m.WithoutInputPermutation() : m;
                }

                return Add(new LinearWeight(QuantizedMatrix.Stack(parts).Upload(Accelerator)));
            }

            var w2 = Stacked(2);
            return (Stacked(1), Stacked(3), w2);
        }

        Embedding = One(MixtralTensors.Embedding);
        var layers = new List<LayerWeights>(c.Layers);
        for (int l = 0; l < c.Layers; l++)
        {
            var attention = (Q: Linear(MixtralTensors.QProj(l)), K: Linear(MixtralTensors.KProj(l)), V: Linear(MixtralTensors.VProj(l)),
                O: Linear(MixtralTensors.OProj(l)));
            var (inputNorm, postNorm, gate) = (One(MixtralTensors.InputNorm(l)), One(MixtralTensors.PostAttentionNorm(l)), One(MixtralTensors.Gate(l)));
            var experts = Experts(l);
            var layer = new LayerWeights(inputNorm, attention.Q, attention.K, attention.V, attention.O, postNorm, gate, experts.W1, experts.W3, experts.W2);
            if (layer.W1.Kind != layer.W3.Kind || layer.W1.Kind != layer.W2.Kind)
            {
                throw new InvalidDataException($"{checkpoint.Directory}: layer {l}'s experts mix dtypes (w1 {layer.W1.TypeName}, w3 {layer.W3.TypeName}, w2 {layer.W2.TypeName}); " +
                                               "the grouped GEMM needs one dtype for w1, w2 and w3");
            }

            layers.Add(layer);
        }

        Layers = layers;
        FinalNorm = One(MixtralTensors.FinalNorm);
        LmHead = c.TieWordEmbeddings ? Embedding : One(MixtralTensors.LmHead);
        Accelerator.Synchronize();
        progress?.Report(new LoadProgress(total, total, ""));
    }

    /// <summary>A fresh session (empty KV cache of <see cref="MaxSeq"/> positions).</summary>
    public InferenceSession NewSession(SessionOptions? options = null) => new(this, options);

    public void Dispose()
    {
        Ops.Dispose();
        foreach (var t in _owned)
            t.Dispose();
        _owned.Clear();
        foreach (var t in _linear)
            t.Dispose();
        _linear.Clear();
    }
}
