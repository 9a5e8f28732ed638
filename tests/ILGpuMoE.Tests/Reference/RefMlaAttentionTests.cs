using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Reference;

/// <summary>
/// RefMlaAttention's absorbed MLA against Hugging Face's expanded formula (RefMlaAttention.Expand into RefOps.GeneralAttention), both in
/// the oracle: q_nope . (W_UK c) = (W_UK^T q_nope) . c and sum_j p_j W_UV c_j = W_UV sum_j p_j c_j, so the two differ only
/// by rounding.
/// </summary>
public class RefMlaAttentionTests
{
    [TestCase(3, 40, 8, 12, 10, 1, 17)]
    [TestCase(2, 16, 4, 8, 6, 5, 3)]
    [TestCase(4, 24, 0, 8, 8, 2, 1)] // no rope part
    public void AbsorbedEqualsExpanded(int heads, int rank, int ropeDim, int nope, int vDim, int tokens, int pos0)
    {
        var s = new MlaShape(heads, rank, ropeDim, nope, vDim);
        int keys = pos0 + tokens;
        var kvB = Data.Gaussian(1 + rank, (long)s.KvBRows * rank, 1 / Math.Sqrt(rank));
        var cache = Data.Gaussian(2 + rank, (long)keys * s.Row);
        var q = Data.Gaussian(3 + rank, (long)tokens * heads * s.QkDim);
        var pos = Enumerable.Range(pos0, tokens).ToArray();
        double scale = 0.9 / Math.Sqrt(s.QkDim);
        var (k, v) = RefMlaAttention.Expand(cache, kvB, keys, s);
        var expanded = RefOps.GeneralAttention(q, k, v, pos, tokens, keys, heads, heads, s.QkDim, vDim, scale, 0, default);
        Check.Close(expanded, RefMlaAttention.Attention(q, cache, kvB, pos, tokens, keys, s, scale), 1e-5, 1e-6, "absorbed vs expanded");
    }

    [Test]
    public void LatentAttentionOfOneKeyIsThatKeysLatent()
    {
        // Position 0 sees only row 0: softmax of one score is 1, so o_lat = c_0 exactly, whatever q and the scale.
        var s = new MlaShape(2, 8, 4, 4, 4);
        var cache = Data.Gaussian(9, 3L * s.Row);
        var o = RefMlaAttention.LatentAttention(Data.Gaussian(10, 2L * s.Row), cache, [0], 1, 3, s, 0.37);
        Check.BitEqual([.. cache.AsSpan(0, 8), .. cache.AsSpan(0, 8)], o, "o_lat at pos 0");
    }

    [Test]
    public void BadShapesThrowArgumentException()
    {
        var s = new MlaShape(2, 8, 4, 4, 4);
        Assert.Throws<ArgumentException>(() => RefMlaAttention.AbsorbQ(new float[5], new float[s.KvBRows * 8], 1, s));
        Assert.Throws<ArgumentException>(() => RefMlaAttention.LatentAttention(new float[2 * 12], new float[3 * 12], [3], 1, 3, s, 1.0));
        Assert.Throws<ArgumentException>(() => RefMlaAttention.AbsorbV(new float[16], new float[7], 1, s));
    }
}
