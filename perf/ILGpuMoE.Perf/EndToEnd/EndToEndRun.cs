// End to end on a random model, and the CPU peer on the same model.
// Ours: the runtime (MoeModel + InferenceSession) on the bench's device: time to first token = prefill of the
// prompt (logits of the last token copied back), then single-token decode steps. Theirs (CPU only): llama.cpp on the
// same weights as GGUF, F32 and its own Q8_0/Q4_0. Rows: one EndToEndResult per engine and scheme, and PeerResults
// with ours/theirs for prefill and decode tokens/s per matching scheme (F32 vs F32; int8 vs Q8_0; int4 with groups
// of 32 vs Q4_0). Ours also runs fp8 (block 128), which llama.cpp's CPU path has no counterpart for.
// Host work stays out of the device's time where it can: the random model and its quantized copies (written by the
// `quantize` command's CheckpointQuantizer, so the runtime loads packed weights and quantizes nothing) are made once per
// (shape, seed, scheme) into a cache folder and reused by later runs; the time they took is reported apart (HostPrep),
// as is the load and the warm-up.
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels;
using ILGpuMoE.Model;
using ILGpuMoE.Perf.Suite;
using ILGpuMoE.Testing;

using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.EndToEnd;

public static class EndToEndRun
{
    /// <summary>A scheme's row with lm_head packed in int8 too (--quant-lm-head int8).</summary>
    private const string LmHeadSuffix = "+lm_head-int8";

    /// <summary>
    /// The model of the run, of the preset's family (RandomMoe). On the CPU (and for the tiny preset) a small random
    /// model whose dims suit llama.cpp's 32-wide quant blocks, which both sides run (OLMoE with as many kv heads as heads,
    /// which llama.cpp's olmoe needs). On a GPU the preset's own shapes in BF16 with EndToEndLayers layers (1 for most:
    /// that is what the GPU runner's one-minute step allows, writing and loading 2.8 GB of random experts per Mixtral layer).
    /// gpt-oss: the CPU model is a float checkpoint with YaRN truncate true (llama.cpp always rounds YaRN's correction
    /// range, so truncate false is not expressible there: both sides then run the same model) and sliding even layers
    /// (llama.cpp's gpt-oss); on a GPU the checkpoint's MXFP4 experts (4.25 bits per value: the layers that fit) with the
    /// real YaRN block. DeepSeek-V3: MLA with its real ranks on a GPU (every layer MoE: first_k_dense_replace 0, so the
    /// built layers are the MoE ones); on the CPU a small MLA (ranks 32) with one dense first layer, groups 2 / top-1.
    /// </summary>
    public static RandomMoeOptions ModelFor(ShapePreset p, bool gpu)
    {
        if (p.CpuEndToEnd)
        {
            // The CPU backend's preset: its own shapes, F32 (what llama.cpp's F32 row runs), every layer.
            return new RandomMoeOptions
            {
                Family = p.Family, Hidden = p.Dim, Layers = p.EndToEndLayers, Experts = p.Experts, TopK = p.TopK, MoeIntermediate = p.Hidden,
                Heads = p.Heads, KvHeads = p.KvHeads, HeadDim = p.HeadDim, Vocab = p.Vocab, DType = DType.F32, Seed = 11, RopeTheta = p.RopeTheta,
            };
        }

        var o = !gpu || p.IsTiny
            ? new RandomMoeOptions
            {
                Family = p.Family, Hidden = 64, Layers = 2, Experts = 4, TopK = 2, MoeIntermediate = 128, Heads = 4,
                KvHeads = p.Family is RefFamily.Olmoe or RefFamily.DeepSeekV3 ? 4 : 2, Vocab = 512, DType = DType.F32, Seed = 11,
                SharedExpertIntermediate = 128,
            }
            : new RandomMoeOptions
            {
                Family = p.Family, Hidden = p.Dim, Layers = p.EndToEndLayers, Experts = p.Experts, TopK = p.TopK, MoeIntermediate = p.Hidden,
                Heads = p.Heads, KvHeads = p.KvHeads, HeadDim = p.HeadDim, Vocab = p.Vocab, DType = DType.BF16, Seed = 11, RopeTheta = p.RopeTheta,
                SharedExpertIntermediate = p.SharedExpert > 0 ? p.SharedExpert : 4 * p.Hidden,
            };
        bool small = !gpu || p.IsTiny;
        return p.Family switch
        {
            RefFamily.GptOss when small => o with
            {
                HeadDim = 16, UseSlidingWindow = true, SlidingWindow = 8, RopeTheta = 150000, MaxPositions = 131072,
                Yarn = new RefYarn(32, 4096, Truncate: true),
            },
            RefFamily.GptOss => o with { Mxfp4Experts = true, UseSlidingWindow = true, SlidingWindow = 128, MaxPositions = 131072 },
            // MLA ranks and head dims of 32: every matrix's input dim is whole 32-blocks (llama.cpp's Q8_0/Q4_0, our int4-g32).
            RefFamily.DeepSeekV3 when small => o with
            {
                Groups = 2, TopKGroups = 1, DenseIntermediate = 128, QLoraRank = 32, KvLoraRank = 32, QkNopeHeadDim = 32, QkRopeHeadDim = 16,
                VHeadDim = 32,
            },
            RefFamily.DeepSeekV3 => o with
            {
                QLoraRank = 1536, KvLoraRank = 512, QkNopeHeadDim = 128, QkRopeHeadDim = 64, VHeadDim = 128, Groups = p.RouterGroups,
                TopKGroups = p.RouterTopKGroups, FirstKDenseReplace = 0, MaxPositions = 163840,
            },
            _ => o,
        };
    }

    /// <summary>The cache folder of a model's float checkpoint ("hf") and its quantized copies, keyed by every option of
    /// the model (the record's text), so a changed shape or seed never reuses a stale folder.</summary>
    public static string ModelsFolder(RandomMoeOptions o, string? cache)
    {
        string key = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(o.ToString())))[..16].ToLowerInvariant();
        return Path.Combine(cache ?? DefaultCache, $"e2e-{key}");
    }

    /// <summary>The cache folder when --cache is not given: $ILGPUMOE_BENCH_CACHE, else ilgpumoe-bench-cache in the temp folder.</summary>
    public static string DefaultCache =>
        Environment.GetEnvironmentVariable("ILGPUMOE_BENCH_CACHE") is { Length: > 0 } dir ? dir : Path.Combine(Path.GetTempPath(), "ilgpumoe-bench-cache");

    /// <summary>
    /// <paramref name="dir"/> made by <paramref name="make"/> unless an earlier run finished it (a marker file is
    /// written last, so a run killed while writing leaves no half model behind as "cached"). Returns the seconds spent.
    /// </summary>
    public static double Cached(string dir, Action<string> make, Action<string> log)
    {
        string done = Path.Combine(dir, ".complete");
        if (File.Exists(done))
        {
            log($"end to end: reusing {dir}");
            return 0;
        }

        if (Directory.Exists(dir))
            Directory.Delete(dir, recursive: true);
        var sw = Stopwatch.StartNew();
        make(dir);
        File.WriteAllText(done, DateTimeOffset.UtcNow.ToString("O"));
        log($"end to end: wrote {dir} in {sw.Elapsed.TotalSeconds:F1} s (cached for later runs)");
        return sw.Elapsed.TotalSeconds;
    }

    /// <param name="onRow">Receives each of our rows as soon as it is measured (the caller saves the report).</param>
    /// <param name="outOfTime">Checked before each of our schemes: true leaves the rest out (the bench's --budget).</param>
    /// <param name="watch">Armed around each of our schemes' device run (load, warm-up, timed prefill and decode), not
    /// around the host-side model writing and quantizing before it: --case-timeout-s then bounds one scheme's device
    /// work, as it bounds one kernel case, and a first run's cold cache does not read as a hang.</param>
    public static (List<EndToEndResult> Rows, List<PeerResult> Peers, List<string> Notes) Run(BenchDevice device, ShapePreset p, bool peer, Action<string> log,
        string? cache = null, RouterChoice? router = null, Action<EndToEndResult>? onRow = null, Func<bool>? outOfTime = null,
        Func<string, IDisposable>? watch = null)
    {
        var rows = new List<EndToEndResult>();
        var peers = new List<PeerResult>();
        var notes = new List<string>();
        var o = ModelFor(p, device.IsGpu);
        // The CPU backend's runs (--device cpu) get the GPU's prompt and a longer decode than the emulator's (which takes
        // seconds per token): the figures are the point there.
        bool backend = device.Choice == DeviceChoice.Cpu;
        int promptTokens = device.IsGpu || backend ? 128 : 16, decodeTokens = device.IsGpu ? 32 : backend ? 64 : 8;
        // Both engines get the same workers: the CPU backend's default (one per physical core).
        int threads = ILGpuMoE.Cpu.CpuThreads.DefaultCount;
        double bandwidth = double.NaN;
        if (backend)
        {
            bandwidth = HostBandwidth.Measure(new ILGpuMoE.Cpu.CpuThreads(threads));
            log($"end to end: host memory read {bandwidth / 1e9:F1} GB/s with {threads} threads (the decode ceiling)");
            notes.Add($"CPU backend: host memory read bandwidth {bandwidth / 1e9:F1} GB/s measured in this run with {threads} threads (1 GiB, best of 5)");
            notes.Add($"CPU backend and llama.cpp: {threads} threads each, warmed up at the timed shapes, the fastest of 3 timed passes each");
        }
        string shape = $"random {o.Family} D={o.Hidden} L={o.Layers} E={o.Experts} K={o.TopK} F={o.MoeIntermediate} H={o.Heads}/{o.KvHeads} V={o.Vocab}" +
                       (o.Family == RefFamily.Qwen2Moe ? $" shared={o.SharedExpertIntermediate}" : "");
        var rng = new Random(5);
        var prompt = Enumerable.Range(0, promptTokens).Select(_ => rng.Next(3, o.Vocab)).ToArray();
        var decode = Enumerable.Range(0, decodeTokens).Select(_ => rng.Next(3, o.Vocab)).ToArray();
        string dir = Path.Combine(Path.GetTempPath(), $"ilgpumoe-e2e-{Environment.ProcessId}");
        string models = ModelsFolder(o, cache);
        try
        {
            string hf = Path.Combine(models, "hf");
            double hfPrep = Cached(hf, d => RandomMoe.Write(d, o), log);
            if (router is not null)
            shape += $", --router {router.Name} (ours only: llama.cpp runs the model's router)";
        log($"end to end: {shape}, prompt {promptTokens}, decode {decodeTokens}");

            // llama.cpp first, before our run loads the CPU accelerator with a model's worth of work (on a shared 2-core
            // machine its figures already vary a lot with other load: F32 prefill 34 to 1785 tok/s across runs here).
            var theirsByScheme = new List<(string Ours, string Scheme, EndToEndResult Theirs)>();
#if !GPU_PUBLISH
            if (peer && !device.IsGpu)
            {
                string f32 = Path.Combine(dir, "model-f32.gguf");
                Directory.CreateDirectory(dir);
                MoeGguf.Convert(hf, f32);
                foreach (var (scheme, ourScheme) in new[] { ("f32", "f32"), ("q8_0", "int8"), ("q4_0", "int4") })
                {
                    string gguf = f32;
                    if (scheme != "f32")
                    {
                        gguf = Path.Combine(dir, $"model-{scheme}.gguf");
                        Peer.LlamaCppPeer.Quantize(f32, gguf, scheme);
                    }

                    var t = Peer.LlamaCppPeer.Time(gguf, scheme, prompt, decode, threads, repeats: backend ? 3 : 1);
                    var theirs = new EndToEndResult("llama.cpp (LLamaSharp 0.30.0, CPU)", scheme, o.Layers, promptTokens, decodeTokens,
                        t.PrefillTokensPerSecond, t.DecodeTokensPerSecond, t.PrefillSeconds, $"{threads} threads, F32 KV cache");
                    rows.Add(theirs);
                    log($"llama.cpp {scheme}: prefill {theirs.PrefillTokensPerSecond:F1} tok/s, decode {theirs.DecodeTokensPerSecond:F1} tok/s");
                    theirsByScheme.Add((ourScheme, scheme, theirs));
                }
            }
#endif
            // Ours: the checkpoint's dtype, then every weight scheme the runtime packs at load (--quant): int8 against
            // llama.cpp's Q8_0, int4 with groups of 32 (Q4_0's group) against Q4_0, and fp8 on its own.
            var oursByScheme = new Dictionary<string, EndToEndResult>();
#if HAS_RUNTIME
            // gpt-oss: also --quant mxfp4 (its experts' form) on the float model; a checkpoint with MXFP4 experts (gpt-oss
            // on a GPU) runs as it is, named mxfp4, and is not quantized again.
            string baseScheme = o.Mxfp4Experts ? "mxfp4" : o.DType == DType.BF16 ? "bf16" : "f32";
            var schemes = new List<(string, ILGpuMoE.Quant.QuantSpec?, ILGpuMoE.Quant.QuantSpec?)> { (baseScheme, null, null) };
            if (!o.Mxfp4Experts)
            {
                var int8 = ILGpuMoE.Quant.QuantSpec.Parse("int8");
                schemes.AddRange([("int8", int8, null), ("int4", ILGpuMoE.Quant.QuantSpec.Parse("int4-g32"), null),
                    ("fp8", ILGpuMoE.Quant.QuantSpec.Parse("fp8-block128"), null)]);
                // The CPU backend against llama.cpp: its Q8_0 and Q4_0 files quantize the output matrix too (Q8_0 and Q6_K),
                // so the rows that face them also pack lm_head (--quant-lm-head int8: 8 bits, no fewer bytes than theirs).
                if (backend && peer)
                {
                    schemes.Insert(2, ("int8" + LmHeadSuffix, int8, int8));
                    schemes.Insert(4, ("int4" + LmHeadSuffix, ILGpuMoE.Quant.QuantSpec.Parse("int4-g32"), int8));
                }

                if (o.Family == RefFamily.GptOss)
                    schemes.Add(("mxfp4", ILGpuMoE.Quant.QuantSpec.Parse("mxfp4"), null));
            }

            foreach (var (name, quant, lmHead) in schemes)
            {
                if (outOfTime?.Invoke() == true)
                {
                    notes.Add($"end to end: the time budget ran out before ours {quant?.Name ?? name}");
                    break;
                }

                // Quantized once into the cache (the quantize command's path); the runtime then loads packed weights.
                // gpt-oss: the quantize command does not split its stacked [E, D, 2F] experts (QuantizeQ8 refuses the
                // tensor), so the load quantizes them (--quant at load; its time is LoadSeconds, apart from the figures).
                string model = hf;
                double prep = hfPrep;
                bool atLoad = o.Family == RefFamily.GptOss;
                if (quant is not null && !atLoad)
                {
                    model = Path.Combine(models, quant.Name);
                    prep = Cached(model, d => ILGpuMoE.Quant.CheckpointQuantizer.Run(hf, d, quant), log);
                }

                EndToEndResult ours;
                using (watch?.Invoke(quant?.Name ?? name))
                    ours = OurEngine.Time(device, model, (quant?.Name ?? name) + (lmHead is null ? "" : $" + lm_head {lmHead.Name}"), o.Layers, prompt, decode,
                        atLoad ? quant : null, router: router, kernels: backend ? ILGpuMoE.Runtime.KernelPolicy.Cpu : ILGpuMoE.Runtime.KernelPolicy.Auto,
                        threads: backend ? threads : null, repeats: backend ? 3 : 1, lmHeadQuant: lmHead) with { HostPrepSeconds = prep };
                if (backend)
                {
                    // What a decode token reads (attention, router, K experts, lm_head: WeightBytes) at the measured rate.
                    using var ck = ILGpuMoE.IO.Checkpoint.Open(model);
                    long perToken = ILGpuMoE.Quant.WeightBytes.Of(ModelConfig.Load(model), ck.Tensors, atLoad ? quant : null, lmHead).PerToken;
                    double gbs = perToken * ours.DecodeTokensPerSecond / 1e9;
                    ours = ours with { Note = ours.Note + $"; decode reads {perToken / 1e6:F1} MB/token: {gbs:F1} GB/s, {100 * gbs * 1e9 / bandwidth:F0}% of the measured {bandwidth / 1e9:F1} GB/s" };
                }

                rows.Add(ours);
                onRow?.Invoke(ours);
                oursByScheme[name == baseScheme ? "f32" : name] = ours;
                log($"ours {ours.Scheme}: prefill {ours.PrefillTokensPerSecond:F1} tok/s, decode {ours.DecodeTokensPerSecond:F1} tok/s, TTFT {ours.TimeToFirstTokenSeconds * 1e3:F1} ms");

                // On CUDA the float model once more with its decode step replayed from a CUDA graph (the launch gaps).
                if (quant is null && device.Accelerator.AcceleratorType == ILGPU.Runtime.AcceleratorType.Cuda && outOfTime?.Invoke() != true)
                {
                    EndToEndResult graphed;
                    using (watch?.Invoke(name + "-graph"))
                        graphed = OurEngine.Time(device, model, name, o.Layers, prompt, decode, cudaGraph: true, router: router) with { HostPrepSeconds = prep };
                    rows.Add(graphed);
                    onRow?.Invoke(graphed);
                    log($"ours {graphed.Scheme}: decode {graphed.DecodeTokensPerSecond:F1} tok/s ({graphed.Note})");
                }

                // Where Auto runs the prefill on tensor cores (CUDA, sm_80+), the float model once more on the SIMT kernels:
                // the two prefill rates side by side in one run (issue 14).
                if (quant is null && ILGpuMoE.Kernels.Devices.HasMma(device.Accelerator) && outOfTime?.Invoke() != true)
                {
                    EndToEndResult simt;
                    using (watch?.Invoke(name + "-simt"))
                        simt = OurEngine.Time(device, model, name + " simt", o.Layers, prompt, decode, router: router, kernels: ILGpuMoE.Runtime.KernelPolicy.Tuned) with { HostPrepSeconds = prep };
                    rows.Add(simt);
                    onRow?.Invoke(simt);
                    log($"ours {simt.Scheme}: prefill {simt.PrefillTokensPerSecond:F1} tok/s (tensor cores: {ours.PrefillTokensPerSecond:F1})");
                }
            }
#else
            notes.Add("end to end, ours: the runtime (MoeModel, InferenceSession) is not in this build.");
#endif

            foreach (var (baseName, scheme, theirs) in theirsByScheme)
            {
                // The row that packs lm_head like the peer's file does, where there is one.
                string ourScheme = oursByScheme.ContainsKey(baseName + LmHeadSuffix) ? baseName + LmHeadSuffix : baseName;
                var mine = oursByScheme.GetValueOrDefault(ourScheme);
                string note = mine is null
                    ? "ours: runtime not in this build"
                    : backend ? $"ours on the CPU backend, {threads} threads each"
                    : $"ours on {device.Accelerator.AcceleratorType}" + (device.IsGpu ? "" : ": ILGPU's CPU accelerator emulates GPU threads");
                peers.Add(new PeerResult("llama.cpp", $"prefill {ourScheme} vs {scheme}", shape, mine?.PrefillTokensPerSecond ?? double.NaN,
                    theirs.PrefillTokensPerSecond, "tok/s", (mine?.PrefillTokensPerSecond ?? double.NaN) / theirs.PrefillTokensPerSecond, note));
                peers.Add(new PeerResult("llama.cpp", $"decode {ourScheme} vs {scheme}", shape, mine?.DecodeTokensPerSecond ?? double.NaN,
                    theirs.DecodeTokensPerSecond, "tok/s", (mine?.DecodeTokensPerSecond ?? double.NaN) / theirs.DecodeTokensPerSecond, note));
            }
        }
        finally
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        }

        return (rows, peers, notes);
    }
}
