using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Moe;

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

/// <summary>Launcher of the MoE permutation (see MoePermute.cs): histogram, scan + tile schedule, stable scatter.</summary>
public sealed class MoePermuteKernel
{
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>> histogram;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>> scan;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>, ArrayView<int>> scatter;

    private MoePermuteKernel(Accelerator accelerator)
    {
        histogram = accelerator.LoadKernel<ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>>(MoePermuteKernels.HistogramV1);
        scan = accelerator.LoadKernel<ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<int>>(
            MoePermuteKernels.ScanScheduleV1);
        scatter = accelerator.LoadKernel<ArrayView<int>, int, int, int, int, ArrayView<int>, ArrayView<int>, ArrayView<int>>(MoePermuteKernels.ScatterV1);
    }

    public static MoePermuteKernel Create(Accelerator accelerator) => new(accelerator ?? throw new ArgumentNullException(nameof(accelerator)));

    public const int MinChunk = 32;

    /// <summary>Pairs per chunk: 32, doubled until the [E, chunks] scan of the single scan group stays <= 16384 entries.</summary>
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
