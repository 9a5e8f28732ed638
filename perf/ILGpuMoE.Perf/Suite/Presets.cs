// Named shape presets of the kernel suite. Glossary: T tokens, E experts, K experts per token, D model dim,
// F expert hidden dim, H heads, Hkv kv heads, Dh head dim, V vocab, S cached keys (decode attention).
using ILGpuMoE.Reference;

namespace ILGpuMoE.Perf.Suite;

/// <summary>
/// One model's kernel shapes. Tokens is the sweep of tokens per step; KvLength the cache length S of the decode
/// attention cases. Layers is the model's depth (the decode model and the notes' per-token figures); EndToEndLayers how
/// many of them the end-to-end part builds on a GPU (as many as the GPU runner's step allows). CheckTokens caps the
/// tokens the reference recomputes at large shapes (plain C#, double accumulation: it must stay seconds). Router is
/// the gating mode its cases use (GatingFamily.Spec names the kinds a preset may have). Family and SharedExpert shape the
/// end-to-end model (RandomMoe: the family's layer, a Qwen2-MoE shared expert of that width); the kernel cases do not
/// include the family's extras (q/k norms, biases, the shared expert's chunks), except gpt-oss's clamped GLU with its
/// expert biases, which the MoE cases run when Family is GptOss. QuantMoeSchemes: the quantized MoE block cases'
/// schemes (null = every scheme of QuantMoeBlockCase.Schemes): a family's checkpoint form (gpt-oss MXFP4, DeepSeek-V3
/// FP8 blocks) where it has one.
/// </summary>
public sealed record ShapePreset(
    string Name,
    int Dim,
    int Hidden,
    int Experts,
    int TopK,
    int Heads,
    int KvHeads,
    int HeadDim,
    int Vocab,
    int[] Tokens,
    int KvLength,
    int Layers,
    RouterKind Router,
    int RouterGroups = 1,
    int RouterTopKGroups = 1,
    float RopeTheta = 1e6f,
    int CheckTokens = 3,
    string Note = "",
    RefFamily Family = RefFamily.Mixtral,
    int SharedExpert = 0,
    string[]? QuantMoeSchemes = null,
    int EndToEndLayers = 1)
{
    public int QDim => Heads * HeadDim;

    public int KvDim => KvHeads * HeadDim;

    /// <summary>True for the preset meant for ILGPU's CPU accelerator (small, checked in full).</summary>
    public bool IsTiny => Name == "tiny";

    /// <summary>Small presets check every output (no token sampling).</summary>
    public bool IsSmall => IsTiny || Name == "smoke";

    /// <summary>The end-to-end part builds this preset's own shapes (F32) on the CPU too, not the small CPU model: the
    /// CPU backend's presets, compared with llama.cpp on the same weights.</summary>
    public bool CpuEndToEnd { get; init; }
}

public static class Presets
{
    /// <summary>Mixtral-8x7B (Hugging Face config).</summary>
    public static readonly ShapePreset Mixtral8x7B = new(
        "mixtral-8x7b", Dim: 4096, Hidden: 14336, Experts: 8, TopK: 2, Heads: 32, KvHeads: 8, HeadDim: 128, Vocab: 32000,
        Tokens: [1, 8, 64, 512, 4096], KvLength: 4096, Layers: 32, Router: RouterKind.Mixtral, RopeTheta: 1e6f);

    /// <summary>Qwen1.5-MoE-A2.7B-like expert shapes (60 routed experts of F = 1408, top-4; the shared expert is left out).</summary>
    public static readonly ShapePreset QwenMoeA27B = new(
        "qwen-moe-a2.7b", Dim: 2048, Hidden: 1408, Experts: 60, TopK: 4, Heads: 16, KvHeads: 16, HeadDim: 128, Vocab: 151936,
        Tokens: [1, 8, 64, 512, 4096], KvLength: 4096, Layers: 24, Router: RouterKind.SoftmaxTopK, RopeTheta: 1e6f,
        Note: "kernel cases: routed experts only; end to end with the shared expert", Family: RefFamily.Qwen2Moe, SharedExpert: 5632);

    /// <summary>DeepSeek-V3 (Hugging Face config): 256 routed experts of F = 2048, top-8 in 4 of 8 groups (sigmoid scores,
    /// correction bias), FP8 128x128-block experts as the checkpoint ships them in the quant cases; 61 layers. Its
    /// attention is MLA (the mla family's cases, Cases/MlaCases.cs, at 4K and 32K); the attention family's rows here are
    /// plain GQA with 128 heads of 128, not DeepSeek's. End to end: RandomMoe's DeepSeek-V3 (MLA, shared expert).</summary>
    public static readonly ShapePreset DeepSeekV3Moe = new(
        "deepseek-v3-moe", Dim: 7168, Hidden: 2048, Experts: 256, TopK: 8, Heads: 128, KvHeads: 128, HeadDim: 128, Vocab: 129280,
        Tokens: [1, 8, 64, 512, 4096], KvLength: 4096, Layers: 61, Router: RouterKind.DeepSeekV3, RouterGroups: 8, RouterTopKGroups: 4,
        RopeTheta: 10000f, CheckTokens: 2, Note: "attention rows: GQA, not DeepSeek's MLA (--family mla)", Family: RefFamily.DeepSeekV3,
        QuantMoeSchemes: ["fp8-block"]);

    /// <summary>gpt-oss-20b (Hugging Face config): 32 experts of F = 2880, top-4 (softmax over the top-k logits), GQA 64/8
    /// with head_dim 64, MXFP4 experts (the checkpoint's form) with the clamped GLU (alpha 1.702, limit 7) and expert
    /// biases; 24 layers, 4 of them end to end.</summary>
    public static readonly ShapePreset GptOss20B = new(
        "gpt-oss-20b", Dim: 2880, Hidden: 2880, Experts: 32, TopK: 4, Heads: 64, KvHeads: 8, HeadDim: 64, Vocab: 201088,
        Tokens: [1, 8, 64, 512, 4096], KvLength: 4096, Layers: 24, Router: RouterKind.Mixtral, RopeTheta: 150000f, CheckTokens: 2,
        Note: "MXFP4 experts, clamped GLU + biases; 4 of 24 layers end to end", Family: RefFamily.GptOss, QuantMoeSchemes: ["mxfp4"],
        EndToEndLayers: 4);

    /// <summary>gpt-oss-120b: gpt-oss-20b's dims with 128 experts and 36 layers (2 of them end to end).</summary>
    public static readonly ShapePreset GptOss120B = GptOss20B with
    {
        Name = "gpt-oss-120b", Experts = 128, Layers = 36, EndToEndLayers = 2, Note = "MXFP4 experts, clamped GLU + biases; 2 of 36 layers end to end",
    };

    /// <summary>Qwen3-30B-A3B (Hugging Face config): 128 experts of F = 768, top-8 renormalised, GQA 32/4 with head_dim 128
    /// (q/k norm per head is not in the kernel cases).</summary>
    public static readonly ShapePreset Qwen3_30B_A3B = new(
        "qwen3-30b-a3b", Dim: 2048, Hidden: 768, Experts: 128, TopK: 8, Heads: 32, KvHeads: 4, HeadDim: 128, Vocab: 151936,
        Tokens: [1, 8, 64, 512, 4096], KvLength: 4096, Layers: 48, Router: RouterKind.Mixtral, RopeTheta: 1e6f, CheckTokens: 2,
        Family: RefFamily.Qwen3Moe);

    /// <summary>Qwen3-235B-A22B: 128 experts of F = 1536, top-8, GQA 64/4, head_dim 128; the end-to-end part builds 16 of
    /// its 94 layers (4.8 GB of BF16 experts each).</summary>
    public static readonly ShapePreset Qwen3_235B_A22B = new(
        "qwen3-235b-a22b", Dim: 4096, Hidden: 1536, Experts: 128, TopK: 8, Heads: 64, KvHeads: 4, HeadDim: 128, Vocab: 151936,
        Tokens: [1, 8, 64, 512, 4096], KvLength: 4096, Layers: 16, Router: RouterKind.Mixtral, RopeTheta: 1e6f, CheckTokens: 2,
        Note: "16 of 94 layers end to end", Family: RefFamily.Qwen3Moe);

    /// <summary>OLMoE-1B-7B: 64 experts of F = 1024, top-8 without renormalisation, 16 heads of 128 (no GQA).</summary>
    public static readonly ShapePreset Olmoe1B7B = new(
        "olmoe-1b-7b", Dim: 2048, Hidden: 1024, Experts: 64, TopK: 8, Heads: 16, KvHeads: 16, HeadDim: 128, Vocab: 50304,
        Tokens: [1, 8, 64, 512, 4096], KvLength: 4096, Layers: 16, Router: RouterKind.SoftmaxTopK, RopeTheta: 10000f, CheckTokens: 2,
        Family: RefFamily.Olmoe);

    /// <summary>For ILGPU's CPU accelerator: odd sizes (no multiple of any tile), seconds per kernel.</summary>
    public static readonly ShapePreset Tiny = new(
        "tiny", Dim: 40, Hidden: 56, Experts: 4, TopK: 2, Heads: 4, KvHeads: 2, HeadDim: 8, Vocab: 100,
        Tokens: [1, 5, 19], KvLength: 24, Layers: 2, Router: RouterKind.Mixtral, RopeTheta: 10000f, CheckTokens: int.MaxValue);

    /// <summary>Moderate shapes for the GPU correctness smoke test (every kernel and version, checked in full).</summary>
    public static readonly ShapePreset Smoke = new(
        "smoke", Dim: 520, Hidden: 1000, Experts: 8, TopK: 2, Heads: 8, KvHeads: 2, HeadDim: 64, Vocab: 1000,
        Tokens: [1, 7, 65], KvLength: 300, Layers: 2, Router: RouterKind.Mixtral, RopeTheta: 10000f, CheckTokens: int.MaxValue);

    /// <summary>
    /// The CPU backend's large preset (issue 16): a Mixtral-shaped random model of about 790M parameters (D = 1024,
    /// 8 layers, E = 8, K = 2, F = 3584, GQA 16/4 of 64, V = 32000), F32, built whole on the CPU for the end-to-end part
    /// against llama.cpp (F32, Q8_0, Q4_0) on the same weights and threads. Its kernel cases are the ILGPU kernels at
    /// these shapes (a GPU's business); on the CPU run it with --e2e-only.
    /// </summary>
    public static readonly ShapePreset CpuMixtral = new(
        "cpu-mixtral", Dim: 1024, Hidden: 3584, Experts: 8, TopK: 2, Heads: 16, KvHeads: 4, HeadDim: 64, Vocab: 32000,
        Tokens: [1, 8, 64], KvLength: 512, Layers: 8, Router: RouterKind.Mixtral, RopeTheta: 1e6f, CheckTokens: 2,
        Note: "CPU backend vs llama.cpp, ~790M parameters F32", EndToEndLayers: 8)
    {
        CpuEndToEnd = true,
    };

    public static IReadOnlyList<ShapePreset> All { get; } =
        [Mixtral8x7B, QwenMoeA27B, Qwen3_30B_A3B, Qwen3_235B_A22B, Olmoe1B7B, DeepSeekV3Moe, GptOss20B, GptOss120B, Tiny, Smoke, CpuMixtral];

    /// <summary>The preset of that name; ArgumentException listing the names otherwise.</summary>
    public static ShapePreset Get(string name) =>
        All.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"unknown preset '{name}' (expected one of: {string.Join(", ", All.Select(p => p.Name))})");
}
