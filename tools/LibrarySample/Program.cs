// ILGpuMoE used as a library, from its packages, as an application outside the repository uses it (run.sh packs the
// repository, builds this against the packages and runs it; CI does so on the model that ships in models/):
//   1. open a device (MoeDevice: auto picks CUDA, then OpenCL, then ILGPU's CPU accelerator, where the model runs on the
//      CPU backend: device.Kernels);
//   2. route T tokens over E experts (moe/gating, Mixtral's softmax top-k) and sort the (token, slot) pairs by expert
//      (moe/permute), each checked against the reference oracle (ILGpuMoE.Reference);
//   3. run an MoE block on those routes (permutation, grouped up-gate and down GEMMs, combine), checked the same way;
//   4. load a Hugging Face model folder, decode a few tokens greedily, and check the decode steps against one prefill.
// Exit 0 when every check passes, 1 when one fails, 2 on a bad argument.
// Shapes: T tokens, E experts, K experts per token, D model dim, F expert hidden dim.
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Contracts;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Reference;
using ILGpuMoE.Runtime;

if (args.Length is < 1 or > 2)
{
    Console.Error.WriteLine("usage: LibrarySample MODEL_DIR [auto|cuda|opencl|cpu|cpu-emulator]");
    return 2;
}

DeviceChoice choice;
try
{
    choice = Devices.Parse(args.Length > 1 ? args[1] : "auto");
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"device: {e.Message}");
    return 2;
}

const int T = 5, E = 8, K = 2, D = 64, F = 96;
var rng = new Random(7);
float[] Random(long n, double scale) => Enumerable.Range(0, checked((int)n)).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();
bool ok = true;

void Report(string what, bool pass, string detail)
{
    Console.WriteLine($"{(pass ? "ok  " : "FAIL")} {what}: {detail}");
    ok &= pass;
}

// 1. The device.
using var device = MoeDevice.Open(choice);
var acc = device.Accelerator;
var stream = acc.DefaultStream;
Console.WriteLine($"device: {device.Description}");

// 2. Gating and permutation.
var logits = Random((long)T * E, 3);
using var logitsBuf = acc.Allocate1D(logits);
using var ids = acc.Allocate1D<int>(T * K);
using var weights = acc.Allocate1D<float>(T * K);
using var gating = GatingKernel.Create(acc);
gating.Launch(stream, RouterSpec.Mixtral(E, K), logitsBuf.View, ids.View, weights.View, T);
stream.Synchronize();
var gotIds = ids.GetAsArray1D();
var gotWeights = weights.GetAsArray1D();
var routing = RefMoe.Route(new RefRouterSpec(RouterKind.Mixtral, E, K), logits, T);
Report("gating", gotIds.SequenceEqual(routing.ExpertIds) && gotWeights.Zip(routing.Weights).All(p => Math.Abs(p.First - p.Second) <= 1e-6),
    $"token 0 -> experts {gotIds[0]}, {gotIds[1]} with weights {gotWeights[0]:F4}, {gotWeights[1]:F4}");

using var permutation = new MoePermutation(acc, T * K, E, tileRows: 16);
MoePermuteKernel.Create(acc).Launch(stream, ids.View, T, K, permutation);
stream.Synchronize();
var counts = permutation.Counts.GetAsArray1D();
var refPermutation = RefMoe.Permute(routing, E);
Report("permutation", counts.SequenceEqual(refPermutation.Counts), $"pairs per expert [{string.Join(", ", counts)}]");

// 3. An MoE block on those routes: w1, w3 [E*F, D], w2 [E*D, F] stacked.
var x = Random((long)T * D, 1);
var w1 = Random((long)E * F * D, 1 / Math.Sqrt(D));
var w3 = Random((long)E * F * D, 1 / Math.Sqrt(D));
var w2 = Random((long)E * D * F, 1 / Math.Sqrt(F));
using var xBuf = acc.Allocate1D(x);
using var w1Buf = acc.Allocate1D(w1);
using var w3Buf = acc.Allocate1D(w3);
using var w2Buf = acc.Allocate1D(w2);
using var output = acc.Allocate1D<float>((long)T * D);
using var workspace = new MoeWorkspace(acc, T, K, E, D, F);
MoeBlockKernels<F32Weights>.Create(acc).Launch(stream, workspace, xBuf.View, ids.View, weights.View, T,
    new F32Weights(w1Buf.View), new F32Weights(w3Buf.View), new F32Weights(w2Buf.View), output.View);
stream.Synchronize();
float[][] Split(float[] stacked) => Enumerable.Range(0, E).Select(e => stacked.AsSpan(e * (stacked.Length / E), stacked.Length / E).ToArray()).ToArray();
var want = RefMoe.MoeBlock(x, routing, Split(w1), Split(w3), Split(w2), T, D, F);
var got = output.GetAsArray1D();
double worst = want.Zip(got).Max(p => Math.Abs(p.First - p.Second) / (1e-3 + Math.Abs(p.First)));
Report("MoE block", !got.Any(float.IsNaN) && worst <= 1e-4, $"[{T}, {D}] within {worst:E1} (relative) of the oracle");

// 4. A model: load, prefill three tokens, decode four greedily; then a second session runs the same seven tokens as
//    one prefill, and its logits of the last four positions must be the decode steps' (decode = forward).
using var model = MoeModel.Load(acc, args[0], new ModelLoadOptions { MaxSeq = 32, Kernels = device.Kernels });
int[] prompt = [1, 2, 3];
int v = model.Config.VocabSize;
var steps = new List<float[]>();
var tokens = new List<int>(prompt);
using (var session = model.NewSession())
{
    var last = session.Prefill(prompt, allLogits: false);
    for (int i = 0; i < 4; i++)
    {
        int next = Array.IndexOf(last, last.Max());
        tokens.Add(next);
        if (i < 3)
        {
            last = session.Decode(next);
            steps.Add(last);
        }
    }
}

using (var whole = model.NewSession())
{
    var all = whole.Prefill(tokens.ToArray(), allLogits: true);
    double diff = 0;
    for (int i = 0; i < steps.Count; i++)
    {
        int row = prompt.Length + i; // the position whose logits decode step i returned
        diff = Math.Max(diff, steps[i].Select((s, j) => Math.Abs(s - all[(long)row * v + j])).Max());
    }

    Report("model", diff <= 1e-4, $"{model.Config.Layers} layers, {model.Config.Experts} experts, {model.WeightDType}: greedy tokens after " +
        $"[{string.Join(", ", prompt)}]: {string.Join(" ", tokens.Skip(prompt.Length))}; decode steps within {diff:E1} of one prefill");
}

return ok ? 0 : 1;
