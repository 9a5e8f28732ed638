// 64-bit offsets for tensors whose element count can pass 2^31 (shape glossary: T tokens, V vocab, D model dim,
// F expert hidden, E experts, K per token, P = T*K pairs, S cache positions, Hkv kv heads, Dh head dim).
//   logits [T, V]              Qwen's V = 151,936: T*V passes 2^31 from T = 14,135
//   stacked experts [E, N, K]  DeepSeek-V3 w1: 256 x 2048 x 7168 = 3.76e9 elements (packed: E*N rows of units)
//   permuted rows [P, D | F]   P = T*K sorted pairs
//   embedding table [V, D]     Qwen V x D = 151,936 x 8192 = 1.24e9, near the limit
// The KV cache has its own helper (Attention/AttentionKernel.cs, KvCacheLayout.Index).
// Device and host code share these (ILGPU inlines them): a kernel builds a row base once in long and keeps its
// per-element loop counter int (bounded by one row's length), so hot loops do no 64-bit multiply or division.
// Tests check them past 2^31 and 2^32 against exact integer math (tests/ILGpuMoE.Tests/Kernels/Index64Tests.cs).
namespace ILGpuMoE.Kernels;

public static class Index64
{
    /// <summary>Offset of (row, col) in a row-major [rows, cols] tensor: row * cols + col, in long.</summary>
    public static long At(int row, int cols, int col) => (long)row * cols + col;

    /// <summary>First element of row <paramref name="row"/> of matrix <paramref name="matrix"/> in a stacked [matrices, rows, cols] tensor.</summary>
    public static long StackedRow(int matrix, int rows, int row, int cols) => ((long)matrix * rows + row) * cols;

    /// <summary>
    /// Host check for a count that a kernel indexes with an int (a grid size, a per-thread counter's bound):
    /// throws a one-line ArgumentException naming the kernel and the tensor when it does not fit.
    /// </summary>
    public static void CheckInt(string kernel, string tensor, long count)
    {
        if (count > int.MaxValue)
            throw new ArgumentException($"{kernel}: {tensor} has {count} elements, more than the kernel's 32-bit per-thread indices allow ({int.MaxValue})", tensor);
    }
}
