// TEMPORARY: bodies for the contract so the solution builds before the oracle lands. Deleted by the oracle's owner.
namespace ILGpuMoE.Reference;

public static partial class RefOps
{
    public static partial float[] Embedding(ReadOnlySpan<float> table, ReadOnlySpan<int> tokens, int vocab, int dim) => throw new NotImplementedException();
    public static partial float[] RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, int tokens, int dim, float eps) => throw new NotImplementedException();
    public static partial float[] MatMulT(ReadOnlySpan<float> x, ReadOnlySpan<float> w, int tokens, int outDim, int inDim) => throw new NotImplementedException();
    public static partial float[] Rope(ReadOnlySpan<float> x, ReadOnlySpan<int> positions, int tokens, int heads, int headDim, float theta) => throw new NotImplementedException();
    public static partial float[] SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up) => throw new NotImplementedException();
    public static partial float[] Softmax(ReadOnlySpan<float> x, int rows, int cols) => throw new NotImplementedException();
    public static partial float[] Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<int> queryPos, int tokens, int keys, int heads, int kvHeads, int headDim, int window) => throw new NotImplementedException();
}

public static partial class RefMoe
{
    public static partial RefRouting Route(RefRouterSpec spec, ReadOnlySpan<float> logits, int tokens, ReadOnlySpan<float> noiseLogits, ReadOnlySpan<float> bias) => throw new NotImplementedException();
    public static partial RefPermutation Permute(RefRouting routing, int experts) => throw new NotImplementedException();
    public static partial float[] MoeBlock(ReadOnlySpan<float> x, RefRouting routing, IReadOnlyList<float[]> w1, IReadOnlyList<float[]> w3, IReadOnlyList<float[]> w2, int tokens, int dim, int hidden) => throw new NotImplementedException();
}

public static partial class RefNoise
{
    public static partial double Normal(ulong seed, int token, int expert) => throw new NotImplementedException();
}
