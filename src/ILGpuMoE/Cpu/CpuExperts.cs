// cpu/experts: the MoE block on the CPU (see CpuKernels.cs's header). For ids, weights [T, K'] (an id < 0 is a token
// Switch dropped: it adds nothing), stacked experts w1, w3 [E'*F, D] and w2 [E'*D, F]:
//   out[t] = residual[t] + sum_k weights[t, k] * (W2[e] act(W1[e] x_t, W3[e] x_t) + b2[e]),  e = ids[t, k]
// Steps, each split over the workers as (expert, block of rows) tasks:
//   1. pairs (t, k) counting-sorted by expert, token order kept inside an expert;
//   2. each expert's input rows gathered contiguous (through the expert's act-order permutation when w1 has one: w3
//      shares it, w2's was folded into w1/w3's rows at load);
//   3. g = X_e W1[e]^T, u = X_e W3[e]^T over the expert's F rows (each weight row loaded once for all its tokens),
//      then h = act(g, u) in place;
//   4. y = H_e W2[e]^T (+ b2) over the expert's D rows;
//   5. the combine in slot order per token (the GPU's combine order), residual first.
// Decode (T = 1) is the same code with one token per expert: step 3 streams the K' experts' F x D rows once.
using System.Runtime.CompilerServices;

namespace ILGpuMoE.Cpu;

/// <summary>The MoE block's scratch, grown on demand and reused by every call of one session (not thread-safe).</summary>
public sealed class CpuExpertScratch
{
    internal float[] Gate = [], Up = [], Y = [], X = [];
    internal int[] Order = [], Slot = [], Start = [];

    internal static T[] Grow<T>(ref T[] a, long n)
    {
        if (a.Length < n)
            a = GC.AllocateUninitializedArray<T>(checked((int)n), pinned: true);
        return a;
    }
}

public static unsafe class CpuExperts
{
    /// <summary>
    /// cpu/experts: output [T, D] = residual + MoE(x) (output may be residual, in place); see the file header. ids and
    /// weights are [T, slots]; experts = E' (routed + shared / dense chunks); w1/w3 rows E'*F, w2 rows E'*D.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(CpuThreads threads, CpuExpertScratch s, float* x, int* ids, float* weights, int t, int slots, int experts,
        CpuMatrix w1, CpuMatrix w3, CpuMatrix w2, CpuGlu glu, float* output, float* residual)
    {
        int d = w1.Cols, f = w2.Cols;
        if (w1.Rows != experts * f || w3.Rows != experts * f || w3.Cols != d || w2.Rows != experts * d)
            throw new ArgumentException($"cpu/experts: w1 [{w1.Rows}, {w1.Cols}], w3 [{w3.Rows}, {w3.Cols}], w2 [{w2.Rows}, {w2.Cols}] do not stack {experts} experts of F = {f}, D = {d}");
        long pairs = (long)t * slots;

        // 1. Counting sort of the pairs by expert (stable: token order inside an expert).
        var start = CpuExpertScratch.Grow(ref s.Start, experts + 1);
        var order = CpuExpertScratch.Grow(ref s.Order, pairs);  // sorted position -> pair index t * slots + k
        var slot = CpuExpertScratch.Grow(ref s.Slot, pairs);    // pair index -> sorted position (-1: dropped)
        Array.Clear(start, 0, experts + 1);
        for (long p = 0; p < pairs; p++)
        {
            int e = ids[p];
            if (e >= experts)
                throw new ArgumentOutOfRangeException(nameof(ids), $"cpu/experts: expert id {e} outside [0, {experts})");
            if (e >= 0)
                start[e + 1]++;
        }

        for (int e = 0; e < experts; e++)
            start[e + 1] += start[e];
        int kept = start[experts];
        Span<int> fill = experts <= 1024 ? stackalloc int[experts] : new int[experts];
        start.AsSpan(0, experts).CopyTo(fill);
        for (long p = 0; p < pairs; p++)
        {
            int e = ids[p];
            if (e < 0)
            {
                slot[p] = -1;
                continue;
            }

            int at = fill[e]++;
            order[at] = (int)p;
            slot[p] = at;
        }

        // 2. Inputs gathered per sorted pair: X [kept, D] (through the expert's permutation for act-order experts).
        var xs = CpuExpertScratch.Grow(ref s.X, (long)kept * d);
        var gate = CpuExpertScratch.Grow(ref s.Gate, (long)kept * f);
        var up = CpuExpertScratch.Grow(ref s.Up, (long)kept * f);
        var y = CpuExpertScratch.Grow(ref s.Y, (long)kept * d);
        var perm = w1.InputPermutation;
        fixed (float* px = xs, pg = gate, pu = up, py = y)
        fixed (int* pstart = start, porder = order)
        {
            float* xsp = px, gp = pg, up_ = pu, yp = py;
            int* st = pstart, ord = porder;
            threads.Blocks(kept, d, 8, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
            {
                for (int i = a; i < b; i++)
                {
                    int token = ord[i] / slots;
                    float* src = x + (long)token * d, dst = xsp + (long)i * d;
                    if (perm is null)
                    {
                        Buffer.MemoryCopy(src, dst, d * sizeof(float), d * sizeof(float));
                    }
                    else
                    {
                        int e = ids[ord[i]];
                        for (int c = 0; c < d; c++)
                            dst[c] = src[perm[(long)e * d + c]];
                    }
                }
            });

            // 3. Up and gate, then the activation, per (expert, block of F rows).
            var upTasks = Tasks(st, experts, f, threads);
            // A task's work: its share of the pass's 2 * kept * F * D multiply-adds (the inline test must see the whole pass).
            threads.For(upTasks.Count, 2L * kept * f * d / Math.Max(1, upTasks.Count), [MethodImpl(MethodImplOptions.AggressiveOptimization)] (task) =>
            {
                var (e, r0, r1) = upTasks[task];
                int n = st[e + 1] - st[e];
                float* xe = xsp + (long)st[e] * d;
                w1.Dot(e * f + r0, r1 - r0, xe, d, n, gp + (long)st[e] * f + r0, f, accumulate: false);
                w3.Dot(e * f + r0, r1 - r0, xe, d, n, up_ + (long)st[e] * f + r0, f, accumulate: false);
                for (int j = 0; j < n; j++)
                {
                    float* gj = gp + (long)(st[e] + j) * f, uj = up_ + (long)(st[e] + j) * f;
                    for (int r = r0; r < r1; r++)
                        gj[r] = glu.UpGate(gj[r], uj[r], (long)e * f + r);
                }
            });

            // 4. Down per (expert, block of D rows), with the down bias.
            var downTasks = Tasks(st, experts, d, threads);
            var downBias = glu.DownBias;
            threads.For(downTasks.Count, (long)kept * f * d / Math.Max(1, downTasks.Count), [MethodImpl(MethodImplOptions.AggressiveOptimization)] (task) =>
            {
                var (e, r0, r1) = downTasks[task];
                int n = st[e + 1] - st[e];
                float* ye = yp + (long)st[e] * d;
                w2.Dot(e * d + r0, r1 - r0, gp + (long)st[e] * f, f, n, ye + r0, d, accumulate: false);
                if (downBias != null)
                {
                    for (int j = 0; j < n; j++)
                    {
                        for (int r = r0; r < r1; r++)
                            ye[(long)j * d + r] += downBias[(long)e * d + r];
                    }
                }
            });

            // 5. Combine in slot order: out = residual + sum_k w_k y_k (a dropped slot adds nothing).
            fixed (int* pslot = slot)
            {
                int* sl = pslot;
                threads.Blocks(t, (long)slots * d, 1, [MethodImpl(MethodImplOptions.AggressiveOptimization)] (a, b) =>
                {
                    for (int i = a; i < b; i++)
                    {
                        var o = new Span<float>(output + (long)i * d, d);
                        if (output != residual)
                            new ReadOnlySpan<float>(residual + (long)i * d, d).CopyTo(o);
                        for (int k = 0; k < slots; k++)
                        {
                            int at = sl[(long)i * slots + k];
                            if (at < 0)
                                continue;
                            System.Numerics.Tensors.TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<float>(yp + (long)at * d, d), weights[(long)i * slots + k], o, o);
                        }
                    }
                });
            }
        }
    }

    // (expert, first row, end row) tasks over the experts that have tokens: each expert's rows cut so that the tasks
    // number about 4 per worker (a decode step's K' experts split finely; a prefill's many tokens per expert less so).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static List<(int Expert, int Row0, int Row1)> Tasks(int* start, int experts, int rows, CpuThreads threads)
    {
        int active = 0;
        for (int e = 0; e < experts; e++)
            active += start[e + 1] > start[e] ? 1 : 0;
        var tasks = new List<(int, int, int)>();
        if (active == 0)
            return tasks;
        int perExpert = Math.Max(1, (4 * threads.Count + active - 1) / active);
        int block = Math.Max(16, (rows + perExpert - 1) / perExpert);
        for (int e = 0; e < experts; e++)
        {
            if (start[e + 1] == start[e])
                continue;
            for (int r = 0; r < rows; r += block)
                tasks.Add((e, r, Math.Min(rows, r + block)));
        }

        return tasks;
    }
}
