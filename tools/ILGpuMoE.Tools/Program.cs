// ILGpuMoE.Tools: developer tools. make-model writes a random Mixtral in Hugging Face's layout
// (the generator itself is ILGpuMoE.Testing.RandomMixtral, src/ILGpuMoE.Testing; this file only parses arguments).
using System.Diagnostics;
using System.CommandLine;
using ILGpuMoE.IO;
using ILGpuMoE.Model;
using ILGpuMoE.Testing;

namespace ILGpuMoE.Tools;

public static class Program
{
    public static int Main(string[] args) => Run(args, Console.Out, Console.Error);

    /// <summary>In-process entry point for tests.</summary>
    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        var root = new RootCommand("ILGpuMoE developer tools") { MakeModelCommand(output) };
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // One line: System.CommandLine lists allowed values on separate lines.
            string message = string.Join(' ', parse.Errors[0].Message.Split((char[])['\n', '\r', '\t'], StringSplitOptions.RemoveEmptyEntries));
            error.WriteLine($"error: {message} (see --help)");
            return 2;
        }

        try
        {
            return parse.Invoke(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException or SafeTensorsException)
        {
            error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    private static Command MakeModelCommand(TextWriter output)
    {
        var d = new RandomMixtralOptions();
        var outDir = new Option<string>("--out") { Description = "Output directory", Required = true };
        var hidden = new Option<int>("--hidden") { Description = "Model dim D", DefaultValueFactory = _ => d.Hidden };
        var layers = new Option<int>("--layers") { Description = "Decoder layers", DefaultValueFactory = _ => d.Layers };
        var experts = new Option<int>("--experts") { Description = "Experts E", DefaultValueFactory = _ => d.Experts };
        var topK = new Option<int>("--top-k") { Description = "Experts per token K", DefaultValueFactory = _ => d.TopK };
        var ffn = new Option<int>("--ffn") { Description = "Expert hidden dim F", DefaultValueFactory = _ => d.Ffn };
        var heads = new Option<int>("--heads") { Description = "Attention heads H", DefaultValueFactory = _ => d.Heads };
        var kvHeads = new Option<int>("--kv-heads") { Description = "KV heads Hkv", DefaultValueFactory = _ => d.KvHeads };
        var headDim = new Option<int?>("--head-dim") { Description = "Head dim Dh (default hidden / heads)" };
        var vocab = new Option<int>("--vocab") { Description = $"Vocabulary V (>= {SyntheticVocab.MinimumSize})", DefaultValueFactory = _ => d.Vocab };
        var dtype = new Option<string>("--dtype") { Description = "Weight dtype", DefaultValueFactory = _ => "f32" };
        dtype.AcceptOnlyFromAmong("f32", "f16", "bf16");
        var seed = new Option<ulong>("--seed") { Description = "Random seed", DefaultValueFactory = _ => d.Seed };
        var shards = new Option<int>("--shards") { Description = "Safetensors files (1 = model.safetensors)", DefaultValueFactory = _ => d.Shards };
        var tie = new Option<bool>("--tie-embeddings") { Description = "No lm_head: logits use embed_tokens" };
        var maxPos = new Option<int>("--max-pos") { Description = "max_position_embeddings", DefaultValueFactory = _ => d.MaxPositions };
        var theta = new Option<double>("--rope-theta") { Description = "RoPE base", DefaultValueFactory = _ => d.RopeTheta };
        var window = new Option<int?>("--sliding-window") { Description = "Sliding-window size (default none)" };

        var cmd = new Command("make-model", "Write a random Mixtral (config, safetensors, tokenizer) in Hugging Face's layout")
        {
            outDir, hidden, layers, experts, topK, ffn, heads, kvHeads, headDim, vocab, dtype, seed, shards, tie, maxPos, theta, window,
        };
        cmd.SetAction(p =>
        {
            var o = new RandomMixtralOptions
            {
                Hidden = p.GetValue(hidden),
                Layers = p.GetValue(layers),
                Experts = p.GetValue(experts),
                TopK = p.GetValue(topK),
                Ffn = p.GetValue(ffn),
                Heads = p.GetValue(heads),
                KvHeads = p.GetValue(kvHeads),
                HeadDim = p.GetValue(headDim),
                Vocab = p.GetValue(vocab),
                DType = p.GetValue(dtype) switch
                {
                    "f32" => DType.F32,
                    "f16" => DType.F16,
                    "bf16" => DType.BF16,
                    var other => throw new UnreachableException($"--dtype {other} passed the parser's f32|f16|bf16 check"),
                },
                Seed = p.GetValue(seed),
                Shards = p.GetValue(shards),
                TieEmbeddings = p.GetValue(tie),
                MaxPositions = p.GetValue(maxPos),
                RopeTheta = p.GetValue(theta),
                SlidingWindow = p.GetValue(window),
            };
            string dir = p.GetValue(outDir)!;
            RandomMixtral.Write(dir, o);
            output.WriteLine($"wrote a random Mixtral (D={o.Hidden}, L={o.Layers}, E={o.Experts}, K={o.TopK}, F={o.Ffn}, H={o.Heads}, Hkv={o.KvHeads}, Dh={o.ResolvedHeadDim}, V={o.Vocab}, {DTypes.ToName(o.DType)}, seed {o.Seed}) to {dir}");
            return 0;
        });
        return cmd;
    }
}
