// MoE permutation: (token, slot) pairs -> expert-sorted order, plus the row-tile schedule of the grouped GEMM.
//
// Versions:
//   V1  three launches, no atomics, deterministic and stable:
//       1. HistogramV1: one thread per (expert, chunk of C consecutive pairs) counts its expert in its chunk.
//       2. ScanScheduleV1: one group scans the [E, chunks] counts (expert-major) into each (expert, chunk)'s
//          first output slot, derives counts [E], offsets [E+1], tiles per expert, and writes the tile list.
//       3. ScatterV1: one thread per (expert, chunk) walks its chunk in pair order and writes its expert's pairs
//          from that base: stable (ascending p = t*K + k within an expert) because chunks are scanned in order and
//          each chunk is walked in order. Also writes the inverse map pos[p] (-1 for dropped pairs).
//       Why per (expert, chunk) threads rather than shared-memory ranks: no barriers in 1 and 3 (cheap on the CPU
//       accelerator too), and the E-fold re-read of ids is tiny next to the expert GEMMs (ids are L1/L2 resident;
//       the E threads of one chunk sit in one warp and read the same id: a broadcast).
//
// Shapes: ids [T*K] (-1 = dropped; any other id outside [0, E) is bad input: treated as dropped and counted in
// status[0], which MoePermutation.ThrowIfInvalidIds reads); counts [E]; offsets [E+1]; sorted [P = T*K]
// (first offsets[E] valid); pos [P]; tiles [maxTiles, 2] = (expert, rowStart into sorted), expert -1 = unused
// slot (the GEMM groups of unused slots exit at once, so the grid can be sized on the host without a sync);
// tileOffsets [E+1] (tileOffsets[E] = number of tiles).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Algorithms.ScanReduceOperations;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe;

/// <summary>moe/permute's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("moe/permute")]
public enum MoePermuteVersion
{
    /// <summary>Histogram, scan, stable scatter (three launches).</summary>
    V1 = 1,
}

public static class MoePermuteKernels
{
    public const int GroupSize = 256;

    /// <summary>This thread's (expert, chunk) and the chunk's pair range; Expert -1 past the last one. Experts vary
    /// fastest so the E threads of one chunk share a warp and read each id together.</summary>
    private readonly struct ExpertChunk(int expert, int chunk, int start, int end)
    {
        public readonly int Expert = expert;
        public readonly int Chunk = chunk;
        public readonly int Start = start;
        public readonly int End = end;

        public static ExpertChunk Of(int pairs, int experts, int chunk, int numChunks)
        {
            long i = (long)Grid.IdxX * Group.DimX + Group.IdxX;
            if (i >= (long)experts * numChunks)
                return new ExpertChunk(-1, 0, 0, 0);
            int c = (int)(i / experts);
            return new ExpertChunk((int)(i % experts), c, c * chunk, Math.Min(c * chunk + chunk, pairs));
        }
    }

    [KernelInfo(MoePermuteVersion.V1, "grid ceil(E*chunks/256), group 256", Entry = "histogram", Summary = "histogram: one thread per (expert, chunk) counts its expert's pairs in the chunk")]
    public static void HistogramV1(ArrayView<int> ids, int pairs, int experts, int chunk, int numChunks, ArrayView<int> chunkCounts,
        ArrayView<int> badCounts)
    {
        var my = ExpertChunk.Of(pairs, experts, chunk, numChunks);
        if (my.Expert < 0)
            return;
        int e = my.Expert, c = my.Chunk, start = my.Start, end = my.End;
        int n = 0, bad = 0;
        for (int p = start; p < end; p++)
        {
            int id = ids[p];
            if (id == e)
                n++;
            bad += id < -1 || id >= experts ? 1 : 0;
        }

        chunkCounts[(long)e * numChunks + c] = n;
        if (e == 0)
            badCounts[c] = bad; // ids outside [-1, E): treated as dropped, reported through status[0]
    }

    [KernelInfo(MoePermuteVersion.V1, "grid 1, group 256", Entry = "scan", Summary = "in-place exclusive scan of [E, chunks] counts; counts, offsets and the row-tile schedule")]
    public static void ScanScheduleV1(ArrayView<int> chunkCounts, int experts, int numChunks, int tileRows, int maxTiles,
        ArrayView<int> counts, ArrayView<int> offsets, ArrayView<int> tileOffsets, ArrayView<int> tiles, ArrayView<int> badCounts,
        ArrayView<int> status)
    {
        int tid = Group.IdxX;
        int last = Group.DimX - 1;
        int n = experts * numChunks;

        // 0. status[0] = ids outside [-1, E) over all chunks (an integer sum: any order gives the same result).
        int bad = 0;
        for (int c = tid; c < numChunks; c += Group.DimX)
            bad += badCounts[c];
        bad = GroupExtensions.Reduce<int, AddInt32>(bad);
        if (tid == 0)
            status[0] = bad;

        // 1. chunkCounts[e, c] -> first sorted slot of (e, c). Expert-major order makes offsets[e] = slot of (e, 0).
        int carry = 0;
        for (int round = 0; round < n; round += Group.DimX)
        {
            int idx = round + tid;
            int v = idx < n ? chunkCounts[idx] : 0;
            int ex = GroupExtensions.ExclusiveScan<int, AddInt32>(v);
            if (idx < n)
                chunkCounts[idx] = carry + ex;
            carry += Group.Broadcast(ex + v, last);
        }

        int total = carry;
        Group.Barrier();

        // 2. counts, offsets, and an exclusive scan of tiles per expert (ceil(count / tileRows)).
        int tileCarry = 0;
        for (int round = 0; round < experts; round += Group.DimX)
        {
            int e = round + tid;
            int nt = 0;
            if (e < experts)
            {
                int b = chunkCounts[e * numChunks];
                int next = e + 1 < experts ? chunkCounts[(e + 1) * numChunks] : total;
                counts[e] = next - b;
                offsets[e] = b;
                nt = (next - b + tileRows - 1) / tileRows;
            }

            int ex = GroupExtensions.ExclusiveScan<int, AddInt32>(nt);
            if (e < experts)
                tileOffsets[e] = tileCarry + ex;
            tileCarry += Group.Broadcast(ex + nt, last);
        }

        if (tid == 0)
        {
            offsets[experts] = total;
            tileOffsets[experts] = tileCarry;
        }

        Group.Barrier();

        // 3. the tile list: tiles of expert e cover sorted rows offsets[e] + j*tileRows; unused slots get expert -1.
        for (int e = 0; e < experts; e++)
        {
            int t0 = tileOffsets[e];
            int nt = tileOffsets[e + 1] - t0;
            int start = offsets[e];
            for (int j = tid; j < nt; j += Group.DimX)
            {
                tiles[2 * (t0 + j)] = e;
                tiles[2 * (t0 + j) + 1] = start + j * tileRows;
            }
        }

        for (int i = tileCarry + tid; i < maxTiles; i += Group.DimX)
        {
            tiles[2 * i] = -1;
            tiles[2 * i + 1] = 0;
        }
    }

    [KernelInfo(MoePermuteVersion.V1, "grid ceil(E*chunks/256), group 256", Entry = "scatter", Summary = "stable scatter: one thread per (expert, chunk) writes its pairs in pair order; inverse map pos")]
    public static void ScatterV1(ArrayView<int> ids, int pairs, int experts, int chunk, int numChunks, ArrayView<int> chunkBase,
        ArrayView<int> sorted, ArrayView<int> pos)
    {
        var my = ExpertChunk.Of(pairs, experts, chunk, numChunks);
        if (my.Expert < 0)
            return;
        int e = my.Expert, c = my.Chunk, start = my.Start, end = my.End;
        int slot = chunkBase[(long)e * numChunks + c];
        for (int p = start; p < end; p++)
        {
            int id = ids[p];
            if (id == e)
            {
                sorted[slot] = p;
                pos[p] = slot;
                slot++;
            }
            else if (e == 0 && (id < 0 || id >= experts))
            {
                // Expert 0's thread also marks the chunk's dropped pairs, so every pos entry is written once.
                pos[p] = -1;
            }
        }
    }
}

/// <summary>
/// Device buffers of one expert-sorted order, sized for at most <see cref="MaxPairs"/> = maxTokens * K pairs.
/// Written by <see cref="MoePermuteKernel"/>; read by <see cref="GroupedGemmKernel{TW}"/> and <see cref="MoeCombineKernel"/>.
/// </summary>
public sealed class MoePermutation : IDisposable
{
    public MoePermutation(Accelerator accelerator, int maxPairs, int experts, int tileRows)
    {
        if (maxPairs < 1)
            throw new ArgumentException($"MoePermutation: maxPairs must be >= 1, got {maxPairs}", nameof(maxPairs));
        if (experts < 1)
            throw new ArgumentException($"MoePermutation: experts must be >= 1, got {experts}", nameof(experts));
        if (tileRows < 1)
            throw new ArgumentException($"MoePermutation: tileRows must be >= 1, got {tileRows}", nameof(tileRows));
        MaxPairs = maxPairs;
        Experts = experts;
        TileRows = tileRows;
        MaxTiles = MoePermuteKernel.MaxTiles(maxPairs, experts, tileRows);
        // Fewer pairs can pick a smaller chunk (more chunks) than maxPairs does; E * ceil(maxPairs / 32) bounds both.
        ChunkBase = accelerator.Allocate1D<int>((long)experts * ((maxPairs + MoePermuteKernel.MinChunk - 1) / MoePermuteKernel.MinChunk));
        Counts = accelerator.Allocate1D<int>(experts);
        Offsets = accelerator.Allocate1D<int>(experts + 1);
        TileOffsets = accelerator.Allocate1D<int>(experts + 1);
        Tiles = accelerator.Allocate1D<int>(2L * MaxTiles);
        SortedPairs = accelerator.Allocate1D<int>(maxPairs);
        PairPositions = accelerator.Allocate1D<int>(maxPairs);
        BadCounts = accelerator.Allocate1D<int>((maxPairs + MoePermuteKernel.MinChunk - 1) / MoePermuteKernel.MinChunk);
        Status = accelerator.Allocate1D<int>(1);
    }

    public int MaxPairs { get; }

    public int Experts { get; }

    /// <summary>Rows per GEMM tile (M): each expert's rows are cut into tiles of this many sorted rows.</summary>
    public int TileRows { get; }

    /// <summary>Upper bound of the tile count for MaxPairs pairs: (P + E * (M - 1)) / M.</summary>
    public int MaxTiles { get; }

    /// <summary>[E * chunks] scratch: per (expert, chunk) first sorted slot.</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> ChunkBase { get; }

    /// <summary>[E] pairs per expert.</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> Counts { get; }

    /// <summary>[E + 1] exclusive scan of Counts; Offsets[E] = valid pairs.</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> Offsets { get; }

    /// <summary>[E + 1] first tile of each expert; TileOffsets[E] = number of tiles.</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> TileOffsets { get; }

    /// <summary>[MaxTiles, 2] (expert, rowStart into SortedPairs); expert -1 marks an unused slot.</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> Tiles { get; }

    /// <summary>[MaxPairs] pair indices p = t*K + k in expert order (stable); the first Offsets[E] are valid.</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> SortedPairs { get; }

    /// <summary>[MaxPairs] inverse map: sorted row of pair p, or -1 when the pair was dropped.</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> PairPositions { get; }

    /// <summary>[chunks] scratch: ids outside [-1, E) per chunk.</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> BadCounts { get; }

    /// <summary>[1]: ids outside [-1, E) in the last launch (those pairs were treated as dropped).</summary>
    public MemoryBuffer1D<int, Stride1D.Dense> Status { get; }

    /// <summary>
    /// Debug check (synchronises: copies Status to the host): throws when the last launch saw expert ids outside
    /// [-1, E). The kernels cannot throw, so they drop such pairs and count them; call this where the ids are not trusted.
    /// </summary>
    public void ThrowIfInvalidIds(AcceleratorStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        stream.Synchronize();
        int bad = Status.GetAsArray1D()[0];
        if (bad != 0)
            throw new InvalidOperationException($"MoePermute: {bad} expert id(s) outside [-1, {Experts}) in the routing (treated as dropped)");
    }

    public void Dispose()
    {
        ChunkBase.Dispose();
        Counts.Dispose();
        Offsets.Dispose();
        TileOffsets.Dispose();
        Tiles.Dispose();
        SortedPairs.Dispose();
        PairPositions.Dispose();
        BadCounts.Dispose();
        Status.Dispose();
    }
}

/// <summary>Launcher of the MoE permutation (see the versions above): histogram, scan + tile schedule, stable scatter.</summary>
public sealed class MoePermuteKernel
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>> histogram;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>> scan;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>, ArrayView<int>> scatter;

    private MoePermuteKernel(Accelerator accelerator)
    {
        histogram = accelerator.LoadCounted<ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>>(MoePermuteKernels.HistogramV1);
        scan = accelerator.LoadCounted<ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>>(
            MoePermuteKernels.ScanScheduleV1);
        scatter = accelerator.LoadCounted<ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>, ArrayView<int>>(MoePermuteKernels.ScatterV1);
    }

    public static MoePermuteKernel Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    public const int MinChunk = 32;

    /// <summary>Pairs per chunk: 32, doubled until the [E, chunks] scan of the single scan group stays &lt;= 16384 entries.</summary>
    public static int ChunkSize(int pairs, int experts)
    {
        int chunk = MinChunk;
        while ((long)experts * ((pairs + chunk - 1) / chunk) > 16384)
            chunk *= 2;
        return chunk;
    }

    public static int NumChunks(int pairs, int experts)
    {
        int chunk = ChunkSize(pairs, experts);
        return Math.Max(1, (pairs + chunk - 1) / chunk);
    }

    /// <summary>sum_e ceil(c_e / M) &lt;= (P + E (M - 1)) / M for any split of P pairs over E experts.</summary>
    public static int MaxTiles(int pairs, int experts, int tileRows) =>
        (int)Math.Max(1, ((long)pairs + (long)experts * (tileRows - 1)) / tileRows);

    /// <summary>
    /// Sorts the tokens * topK pairs of <paramref name="expertIds"/> ([T, K], -1 = dropped) by expert into
    /// <paramref name="permutation"/> (counts, offsets, sorted pairs, positions, tile schedule). Asynchronous on the stream.
    /// Ids outside [-1, E) are dropped and counted (see <see cref="MoePermutation.ThrowIfInvalidIds"/>).
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<int> expertIds, int tokens, int topK, MoePermutation permutation)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(permutation);
        if (tokens < 1 || topK < 1)
            throw new ArgumentException($"MoePermute: tokens ({tokens}) and topK ({topK}) must be >= 1");
        long pairsL = (long)tokens * topK;
        if (pairsL > permutation.MaxPairs)
            throw new ArgumentException($"MoePermute: tokens*topK = {pairsL} exceeds the permutation's capacity {permutation.MaxPairs}");
        if (expertIds.Length < pairsL)
            throw new ArgumentException($"MoePermute: expertIds has {expertIds.Length} elements, need tokens*topK = {pairsL}");
        int pairs = (int)pairsL;
        int experts = permutation.Experts;
        int chunk = ChunkSize(pairs, experts);
        int numChunks = NumChunks(pairs, experts);
        int threads = experts * numChunks;
        int groups = (threads + MoePermuteKernels.GroupSize - 1) / MoePermuteKernels.GroupSize;
        if (threads > permutation.ChunkBase.Length)
            throw new InvalidOperationException($"MoePermute: {threads} chunk slots exceed the scratch of {permutation.ChunkBase.Length}");
        var grid = new KernelConfig(groups, MoePermuteKernels.GroupSize);
        var chunkBase = permutation.ChunkBase.View.SubView(0, threads);
        histogram(stream, grid, expertIds, pairs, experts, chunk, numChunks, chunkBase, permutation.BadCounts.View);
        scan(stream, new KernelConfig(1, MoePermuteKernels.GroupSize), chunkBase, experts, numChunks, permutation.TileRows, permutation.MaxTiles,
            permutation.Counts.View, permutation.Offsets.View, permutation.TileOffsets.View, permutation.Tiles.View, permutation.BadCounts.View,
            permutation.Status.View);
        scatter(stream, grid, expertIds, pairs, experts, chunk, numChunks, chunkBase, permutation.SortedPairs.View, permutation.PairPositions.View);
    }
}
