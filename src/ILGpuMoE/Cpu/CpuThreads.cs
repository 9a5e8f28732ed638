// The CPU backend's threads: a fixed number of workers (--threads, default the physical cores) and one way to split
// work: [0, n) cut into contiguous blocks, each block run by one task. Every output the kernels write belongs to
// exactly one block and is computed in one fixed order inside it, so a result is bit-identical from run to run and
// does not even depend on the thread count (blocks change, the per-output order does not).
//
// Small work runs inline on the calling thread: a Parallel.For costs a few microseconds to wake the workers, more than
// a whole norm or gating step of a small model (the demo model's decode step is ~40 such ops).
using System.Runtime.InteropServices;

namespace ILGpuMoE.Cpu;

/// <summary>The worker count of the CPU backend and its block-parallel loop.</summary>
public sealed class CpuThreads
{
    /// <summary>Below this much work (multiply-adds or element visits) a loop runs on the calling thread.</summary>
    public const long InlineWork = 1 << 15;

    private readonly ParallelOptions _options;

    /// <param name="count">Workers; null: <see cref="DefaultCount"/>.</param>
    public CpuThreads(int? count = null)
    {
        int n = count ?? DefaultCount;
        if (n < 1 || n > 4096)
            throw new ArgumentOutOfRangeException(nameof(count), $"--threads must be in [1, 4096], got {n}");
        Count = n;
        _options = new ParallelOptions { MaxDegreeOfParallelism = n };
    }

    public int Count { get; }

    /// <summary>One worker per physical core (SMT siblings share a core's FMA units and caches, so they add little to
    /// these loops): Linux's topology files when readable, else the logical processor count.</summary>
    public static int DefaultCount { get; } = PhysicalCores();

    /// <summary>
    /// Runs body(start, end) over contiguous blocks covering [0, n). cost: work per item (for the inline test);
    /// grain: smallest block. Blocks: about 4 per worker, so uneven blocks (experts with more tokens) even out.
    /// </summary>
    public void Blocks(int n, long cost, int grain, Action<int, int> body)
    {
        if (n <= 0)
            return;
        grain = Math.Max(1, grain);
        int blocks = (int)Math.Min((n + (long)grain - 1) / grain, 4L * Count);
        if (Count == 1 || blocks <= 1 || n * Math.Max(1, cost) < InlineWork)
        {
            body(0, n);
            return;
        }

        int size = (n + blocks - 1) / blocks;
        blocks = (n + size - 1) / size;
        Parallel.For(0, blocks, _options, b => body(b * size, Math.Min(n, (b + 1) * size)));
    }

    /// <summary>Runs body(i) for i &lt; n tasks (each task's work about cost), inline when small.</summary>
    public void For(int n, long cost, Action<int> body)
    {
        if (n <= 0)
            return;
        if (Count == 1 || n == 1 || n * Math.Max(1, cost) < InlineWork)
        {
            for (int i = 0; i < n; i++)
                body(i);
            return;
        }

        Parallel.For(0, n, _options, body);
    }

    private static int PhysicalCores()
    {
        int logical = Environment.ProcessorCount;
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux))
            return logical;
        try
        {
            // One core_cpus_list (or thread_siblings_list) per logical CPU: distinct lists are distinct cores. Only the
            // CPUs this process may run on count (a container's quota shows in ProcessorCount).
            var cores = new HashSet<string>(StringComparer.Ordinal);
            foreach (var dir in Directory.EnumerateDirectories("/sys/devices/system/cpu", "cpu*"))
            {
                var topo = Path.Combine(dir, "topology");
                var list = File.Exists(Path.Combine(topo, "core_cpus_list")) ? Path.Combine(topo, "core_cpus_list") : Path.Combine(topo, "thread_siblings_list");
                if (File.Exists(list))
                    cores.Add(File.ReadAllText(list).Trim());
            }

            return cores.Count == 0 ? logical : Math.Clamp(cores.Count, 1, logical);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return logical;
        }
    }
}
