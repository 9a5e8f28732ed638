// Expert-sorted order of the routed (token, slot) pairs and the tile schedule of a grouped expert matmul.
namespace ILGpuMoE.Reference;

public static partial class RefMoe
{
    public static partial RefPermutation Permute(RefRouting routing, int experts)
    {
        ArgumentNullException.ThrowIfNull(routing);
        Require.Positive(experts, nameof(experts));
        int pairs = CheckIds(routing, experts, "Permute");
        var counts = new int[experts];
        foreach (int id in routing.ExpertIds.AsSpan(0, pairs))
        {
            if (id >= 0)
                counts[id]++;
        }

        var offsets = new int[experts + 1];
        for (int x = 0; x < experts; x++)
            offsets[x + 1] = offsets[x] + counts[x];

        // Placing pairs in ascending p with one cursor per expert is what makes the order stable.
        var cursor = offsets[..experts];
        var sorted = new int[offsets[experts]];
        for (int p = 0; p < pairs; p++)
        {
            int id = routing.ExpertIds[p];
            if (id >= 0)
                sorted[cursor[id]++] = p;
        }

        return new RefPermutation(counts, offsets, sorted);
    }

    /// <summary>Tiles of a grouped matmul over the sorted pairs: expert by expert in ascending id, each expert's
    /// Counts[e] rows cut into ceil(count / tileRows) tiles with RowStart = 0, tileRows, 2 tileRows, ...;
    /// an expert with no row has no tile.</summary>
    public static RefTile[] TileSchedule(RefPermutation p, int tileRows)
    {
        ArgumentNullException.ThrowIfNull(p);
        Require.Positive(tileRows, nameof(tileRows));
        var tiles = new List<RefTile>();
        for (int x = 0; x < p.Counts.Length; x++)
        {
            for (int r = 0; r < p.Counts[x]; r += tileRows)
                tiles.Add(new RefTile(x, r));
        }

        return tiles.ToArray();
    }

    /// <summary>Checks ids [T, K] and weights [T, K] against the routing's shape and every id against [-1, experts);
    /// returns T*K.</summary>
    private static int CheckIds(RefRouting routing, int experts, string op)
    {
        int pairs = routing.Tokens * routing.TopK;
        if (routing.Tokens < 0 || routing.TopK < 1 || routing.ExpertIds.Length != pairs || routing.Weights.Length != pairs)
            throw new ArgumentException($"{op}: routing has {routing.ExpertIds.Length} ids and {routing.Weights.Length} weights, " +
                $"expected Tokens * TopK = {routing.Tokens} * {routing.TopK}.", nameof(routing));
        for (int p = 0; p < pairs; p++)
        {
            int id = routing.ExpertIds[p];
            if (id < -1 || id >= experts)
                throw new ArgumentException($"{op}: routing id of token {p / routing.TopK} slot {p % routing.TopK} is {id}, " +
                    $"outside [-1, {experts}).", nameof(routing));
        }

        return pairs;
    }
}
