// One expert slot of a stacked [E', out, in] weight: a routed expert's whole matrix, or an F-wide chunk of a wider
// SwiGLU MLP (a shared expert, a dense layer's MLP) cut along its hidden axis (see MoeModel.cs for why).
//
// A chunk j of an MLP of width W covers hidden units [j*F, min((j+1)*F, W)); the rest of the slot is zero. Gate and
// up ([W, D]) are cut by rows, down ([D, W]) by columns. A zero gate row gives silu(0) * up = 0 and a zero down column
// multiplies that 0, so the padding adds exactly nothing, and the chunks' outputs sum to the whole MLP's.
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Runtime;

internal readonly record struct ExpertSlice(string Name, int Chunk, int Rows, int Cols, int Width, bool HiddenIsColumns)
{
    /// <summary>A whole tensor (a routed expert's projection).</summary>
    public static ExpertSlice Whole(string name) => new(name, -1, 0, 0, 0, false);

    /// <summary>The <paramref name="count"/> chunks of projection p ([W, D] for gate and up, [D, W] for down) of an MLP of width W.</summary>
    public static IEnumerable<ExpertSlice> Cut(string name, MlpProjection p, int width, int f, int d, int count)
    {
        bool down = p == MlpProjection.Down;
        for (int j = 0; j < count; j++)
            yield return new ExpertSlice(name, j, down ? d : f, down ? f : d, width, down);
    }

    /// <summary>The slot's elements as raw bytes of the checkpoint's dtype (a whole tensor: its mapped bytes, no copy).</summary>
    public ReadOnlySpan<byte> Bytes(Checkpoint checkpoint)
    {
        var src = checkpoint.GetBytes(Name);
        if (Chunk < 0)
            return src;
        int size = DTypes.SizeOf(checkpoint.Get(Name).DType);
        var dst = new byte[(long)Rows * Cols * size];
        Copy(src, dst, size);
        return dst;
    }

    /// <summary>The slot's elements widened to F32 (for --quant).</summary>
    public float[] ReadFloat32(Checkpoint checkpoint)
    {
        var all = checkpoint.ReadFloat32(Name);
        if (Chunk < 0)
            return all;
        var dst = new float[(long)Rows * Cols];
        Copy(System.Runtime.InteropServices.MemoryMarshal.AsBytes(all.AsSpan()), System.Runtime.InteropServices.MemoryMarshal.AsBytes(dst.AsSpan()), sizeof(float));
        return dst;
    }

    /// <summary>The stored shape this slot has when stacked.</summary>
    public long[] Shape(Checkpoint checkpoint) => Chunk < 0 ? checkpoint.Get(Name).Shape : [Rows, Cols];

    // src: the whole [W, D] (rows cut) or [D, W] (columns cut) tensor; dst: the zeroed [Rows, Cols] slot.
    private void Copy(ReadOnlySpan<byte> src, Span<byte> dst, int size)
    {
        int first = Chunk * (HiddenIsColumns ? Cols : Rows);
        int take = Math.Min(HiddenIsColumns ? Cols : Rows, Width - first);
        if (!HiddenIsColumns)
        {
            // rows first..first+take of a [W, Cols] matrix are contiguous.
            src.Slice(first * Cols * size, take * Cols * size).CopyTo(dst);
            return;
        }

        for (int r = 0; r < Rows; r++)
            src.Slice((int)(((long)r * Width + first) * size), take * size).CopyTo(dst.Slice(r * Cols * size));
    }
}
