using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Reference;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Moe;

public class MoePermuteTests
{
    private static (RefPermutation Ref, int[] Counts, int[] Offsets, int[] Sorted, int[] Pos, int[] TileOffsets, int[] Tiles) Run(
        RefRouting routing, int experts, int tileRows, int capacityTokens = 0)
    {
        var acc = TestDevice.Accelerator;
        int pairs = routing.Tokens * routing.TopK;
        using var perm = new MoePermutation(acc, Math.Max(pairs, capacityTokens * routing.TopK), experts, tileRows);
        MoeTestData.Poison(perm);
        using var ids = TestDevice.Upload(routing.ExpertIds);
        MoeTestData.Permute.Launch(acc.DefaultStream, ids.View, routing.Tokens, routing.TopK, perm);
        perm.ThrowIfInvalidIds(acc.DefaultStream);
        var offsets = perm.Offsets.GetAsArray1D();
        int valid = offsets[experts];
        Assert.That(valid, Is.InRange(0, pairs), "offsets[E]");
        return (RefMoe.Permute(routing, experts), perm.Counts.GetAsArray1D(), offsets, perm.SortedPairs.GetAsArray1D()[..valid],
            perm.PairPositions.GetAsArray1D()[..pairs], perm.TileOffsets.GetAsArray1D(), perm.Tiles.GetAsArray1D());
    }

    internal static void CheckAgainstReference(RefRouting routing, int experts, int tileRows, int capacityTokens = 0)
    {
        var (expected, counts, offsets, sorted, pos, tileOffsets, tiles) = Run(routing, experts, tileRows, capacityTokens);
        Assert.That(counts, Is.EqualTo(expected.Counts), "counts");
        Assert.That(offsets, Is.EqualTo(expected.Offsets), "offsets");
        Assert.That(sorted, Is.EqualTo(expected.SortedPairs), "sorted pairs");

        // Independent of the reference: the sorted list is exactly the valid pairs, grouped by expert, ascending within one.
        var validPairs = Enumerable.Range(0, routing.ExpertIds.Length).Where(p => routing.ExpertIds[p] >= 0).ToArray();
        Assert.That(sorted.Order().ToArray(), Is.EqualTo(validPairs), "a permutation of the valid pairs");
        for (int i = 1; i < sorted.Length; i++)
        {
            int a = routing.ExpertIds[sorted[i - 1]], b = routing.ExpertIds[sorted[i]];
            Assert.That(a < b || (a == b && sorted[i - 1] < sorted[i]), $"stable expert order at sorted row {i}");
        }

        // Inverse map: pos[p] is p's sorted row, -1 for dropped pairs.
        for (int p = 0; p < pos.Length; p++)
        {
            if (routing.ExpertIds[p] < 0)
                Assert.That(pos[p], Is.EqualTo(-1), $"pos of dropped pair {p}");
            else
                Assert.That(sorted[pos[p]], Is.EqualTo(p), $"pos of pair {p}");
        }

        // Tile schedule: same tiles as the reference (rowStart absolute in the sorted list), then unused slots (-1).
        var refTiles = RefMoe.TileSchedule(expected, tileRows);
        Assert.That(tileOffsets[experts], Is.EqualTo(refTiles.Length), "tile count");
        for (int i = 0; i < refTiles.Length; i++)
        {
            Assert.That(tiles[2 * i], Is.EqualTo(refTiles[i].Expert), $"tile {i} expert");
            Assert.That(tiles[2 * i + 1], Is.EqualTo(expected.Offsets[refTiles[i].Expert] + refTiles[i].RowStart), $"tile {i} row start");
        }

        for (int e = 0; e < experts; e++)
            Assert.That(tileOffsets[e], Is.EqualTo(refTiles.Count(t => t.Expert < e)), $"tileOffsets[{e}]");
        for (int i = refTiles.Length; i < tiles.Length / 2; i++)
            Assert.That(tiles[2 * i], Is.EqualTo(-1), $"unused tile slot {i}");
    }

    [TestCase(1, 1, 4, 32)]
    [TestCase(1, 2, 8, 8)]
    [TestCase(3, 2, 8, 8)]
    [TestCase(17, 2, 16, 32)]
    [TestCase(17, 4, 4, 8)]
    [TestCase(69, 2, 8, 32)]
    [TestCase(69, 8, 8, 8)]
    [TestCase(69, 1, 16, 5)]
    public void MatchesReferenceRandom(int tokens, int topK, int experts, int tileRows) =>
        CheckAgainstReference(MoeTestData.Routing(1000 + tokens * 7 + topK, tokens, topK, experts, RoutingShape.Random), experts, tileRows);

    [TestCase(RoutingShape.AllToOne, 69, 1, 8)]
    [TestCase(RoutingShape.AllToOne, 17, 2, 4)]
    [TestCase(RoutingShape.SkipExperts, 17, 2, 8)]
    [TestCase(RoutingShape.Dropped, 69, 2, 8)]
    [TestCase(RoutingShape.Dropped, 3, 1, 4)]
    public void MatchesReferenceEdgeCases(RoutingShape shape, int tokens, int topK, int experts) =>
        CheckAgainstReference(MoeTestData.Routing(2000 + (int)shape, tokens, topK, experts, shape), experts, 8);

    [Test]
    public void FewerTokensThanCapacity() =>
        CheckAgainstReference(MoeTestData.Routing(31, 17, 2, 8, RoutingShape.Random), 8, 8, capacityTokens: 69);

    [Test]
    public void EveryPairDropped()
    {
        var routing = new RefRouting(Enumerable.Repeat(-1, 6).ToArray(), new float[6], 3, 2, 3);
        CheckAgainstReference(routing, 4, 8);
    }

    [Test]
    public void ManyChunksAndScanRounds()
    {
        // 40000 pairs over 16 experts: chunks grow to 64 pairs and the single scan group runs many rounds.
        Assert.That(MoePermuteKernel.ChunkSize(40000, 16), Is.EqualTo(64));
        CheckAgainstReference(MoeTestData.Routing(77, 20000, 2, 16, RoutingShape.Random), 16, 32);

        // 24000 pairs in a 40000-pair permutation: the smaller launch picks 32-pair chunks, more than the capacity's.
        Assert.That(MoePermuteKernel.ChunkSize(24000, 16), Is.EqualTo(32));
        CheckAgainstReference(MoeTestData.Routing(78, 12000, 2, 16, RoutingShape.Random), 16, 32, capacityTokens: 20000);
    }

    [Test]
    public void ReportsIdsOutsideTheExpertRange()
    {
        var acc = TestDevice.Accelerator;
        using var perm = new MoePermutation(acc, 70, 4, 8);
        MoeTestData.Poison(perm);
        var ids = MoeTestData.Routing(91, 35, 2, 4, RoutingShape.Random).ExpertIds;
        ids[3] = 4;
        ids[68] = -2;
        using var buffer = TestDevice.Upload(ids);
        MoeTestData.Permute.Launch(acc.DefaultStream, buffer.View, 35, 2, perm);
        var e = Assert.Throws<InvalidOperationException>(() => perm.ThrowIfInvalidIds(acc.DefaultStream));
        Assert.That(e!.Message, Does.Contain("2 expert id(s) outside [-1, 4)"));
        var pos = perm.PairPositions.GetAsArray1D();
        Assert.That((pos[3], pos[68]), Is.EqualTo((-1, -1)), "bad ids are dropped");
        Assert.That(perm.Offsets.GetAsArray1D()[4], Is.EqualTo(68), "valid pairs");
    }

    [Test]
    public void RejectsBadShapes()
    {
        var acc = TestDevice.Accelerator;
        using var perm = new MoePermutation(acc, 8, 4, 8);
        using var ids = TestDevice.Upload(new int[8]);
        Assert.Throws<ArgumentException>(() => MoeTestData.Permute.Launch(acc.DefaultStream, ids.View, 5, 2, perm));
        Assert.Throws<ArgumentException>(() => MoeTestData.Permute.Launch(acc.DefaultStream, ids.View.SubView(0, 3), 2, 2, perm));
        Assert.Throws<ArgumentException>(() => MoeTestData.Permute.Launch(acc.DefaultStream, ids.View, 0, 2, perm));
        Assert.Throws<ArgumentException>(() => _ = new MoePermutation(acc, 8, 0, 8));
    }
}
