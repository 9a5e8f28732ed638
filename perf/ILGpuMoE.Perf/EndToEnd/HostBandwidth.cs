// The CPU's memory-read ceiling for the CPU backend's decode figures, measured in the same run with the same workers:
// a 1 GiB float array (far past every cache) summed in contiguous blocks, one per worker, best of five passes. Decode
// is a stream over the weights it needs once per token, so bytes per token x tokens/s over this number is how close a
// decode runs to the machine.
using System.Diagnostics;
using System.Runtime.Intrinsics;
using ILGpuMoE.Cpu;

namespace ILGpuMoE.Perf.EndToEnd;

public static unsafe class HostBandwidth
{
    /// <summary>Read bandwidth in bytes/s with <paramref name="threads"/> workers.</summary>
    public static double Measure(CpuThreads threads, long bytes = 1L << 30)
    {
        long n = bytes / sizeof(float);
        var data = GC.AllocateUninitializedArray<float>(checked((int)n), pinned: true);
        // Touched first (the first pass would otherwise time page faults) and not all zero.
        threads.Blocks(checked((int)(n / 4096)), 4096, 1, (a, b) => data.AsSpan((int)((long)a * 4096), (int)((long)(b - a) * 4096)).Fill(1f));
        double best = 0;
        float sink = 0;
        fixed (float* p = data)
        {
            float* d = p;
            int chunks = threads.Count;
            long per = n / chunks;
            for (int pass = 0; pass < 5; pass++)
            {
                var partial = new float[chunks];
                var sw = Stopwatch.StartNew();
                threads.For(chunks, long.MaxValue / 1024, i =>
                {
                    float* s = d + i * per;
                    Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                    for (long c = 0; c + 32 <= per; c += 32)
                    {
                        a0 += Vector256.Load(s + c);
                        a1 += Vector256.Load(s + c + 8);
                        a2 += Vector256.Load(s + c + 16);
                        a3 += Vector256.Load(s + c + 24);
                    }

                    partial[i] = Vector256.Sum(a0 + a1 + a2 + a3);
                });
                best = Math.Max(best, per * chunks * (double)sizeof(float) / sw.Elapsed.TotalSeconds);
                sink += partial.Sum();
            }
        }

        GC.KeepAlive(sink);
        return best;
    }
}
