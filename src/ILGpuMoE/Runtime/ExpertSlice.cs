// One expert slot of a stacked [E', out, in] weight: a routed expert's whole matrix, or an F-wide chunk of a wider
// SwiGLU MLP (a shared expert, a dense layer's MLP) cut along its hidden axis (see MoeModel.cs for why).
//
// A chunk j of an MLP of width W covers hidden units [j*F, min((j+1)*F, W)); the rest of the slot is zero. Gate and
// up ([W, D]) are cut by rows, down ([D, W]) by columns. A zero gate row gives silu(0) * up = 0 and a zero down column
// multiplies that 0, so the padding adds exactly nothing, and the chunks' outputs sum to the whole MLP's.
//
// A gpt-oss slot (ExpertStorage.StackedGateUp) is expert e's part of a layer's stacked tensor: gate_up_proj [E, D, 2F]
// gives gate [F, D] (columns 0, 2, ...) and up [F, D] (columns 1, 3, ...), down_proj [E, F, D] gives down [D, F]:
// transposed to our [out, in] rows and de-interleaved, in the checkpoint's dtype (values move, none is rounded).
using System.Runtime.InteropServices;
using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Runtime;

internal readonly record struct ExpertSlice(string Name, int Chunk, int Rows, int Cols, int Width, bool HiddenIsColumns,
    int Expert = -1, StackedPart Part = StackedPart.Gate)
{
    /// <summary>A gpt-oss slot: expert e's part of a stacked tensor.</summary>
    public bool Stacked => Expert >= 0;

    /// <summary>Expert e's <paramref name="part"/> of the stacked tensor <paramref name="name"/> (gate_up_proj [E, D, 2F] or down_proj [E, F, D]).</summary>
    public static ExpertSlice OfStack(string name, int expert, StackedPart part, int f, int d) =>
        part == StackedPart.Down ? new(name, -1, d, f, 0, false, expert, part) : new(name, -1, f, d, 0, false, expert, part);

    /// <summary>The slot of projection p of expert e in gpt-oss's stacked tensors.</summary>
    public static ExpertSlice OfStack(TensorNames n, int layer, int expert, MlpProjection p, int f, int d) => OfStack(n.StackedExperts(layer, p), expert,
        p switch
        {
            MlpProjection.Gate => StackedPart.Gate,
            MlpProjection.Up => StackedPart.Up,
            MlpProjection.Down => StackedPart.Down,
            _ => throw new ArgumentOutOfRangeException(nameof(p), p, "an MLP has gate, up and down projections"),
        }, f, d);

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
        if (Stacked)
            return StackedBytes(src, DTypes.SizeOf(checkpoint.Get(Name).DType));
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
        if (Stacked)
        {
            var info = checkpoint.Get(Name);
            return SafeTensorsFile.WidenToFloat32(checkpoint.Directory, new TensorInfo(Name, info.DType, [Rows, Cols], 0, 0),
                StackedBytes(checkpoint.GetBytes(Name), DTypes.SizeOf(info.DType)));
        }

        var all = checkpoint.ReadFloat32(Name);
        return Chunk < 0 ? all : CutFloat32(all);
    }

    /// <summary>This chunk of the whole matrix <paramref name="whole"/> (F32, [W, D] or [D, W]), zero-padded to [Rows, Cols].</summary>
    public float[] CutFloat32(float[] whole)
    {
        var dst = new float[(long)Rows * Cols];
        Copy(System.Runtime.InteropServices.MemoryMarshal.AsBytes(whole.AsSpan()), System.Runtime.InteropServices.MemoryMarshal.AsBytes(dst.AsSpan()), sizeof(float));
        return dst;
    }

    /// <summary>The stored shape this slot has when stacked.</summary>
    public long[] Shape(Checkpoint checkpoint) => Chunk < 0 && !Stacked ? checkpoint.Get(Name).Shape : [Rows, Cols];

    // Expert e's [Rows, Cols] slot of a stacked input-major tensor: gate_up [E, D, 2F] (out[f, k] = src[e, k, 2f + phase])
    // or down [E, F, D] (out[k, f] = src[e, f, k]).
    private byte[] StackedBytes(ReadOnlySpan<byte> src, int size)
    {
        var dst = new byte[(long)Rows * Cols * size];
        // Element-typed moves: a per-element byte-span copy cost seconds per expert at gpt-oss-20b's [2880, 5760].
        switch (size)
        {
            case 2: Gather(MemoryMarshal.Cast<byte, ushort>(src), MemoryMarshal.Cast<byte, ushort>(dst.AsSpan())); break;
            case 4: Gather(MemoryMarshal.Cast<byte, uint>(src), MemoryMarshal.Cast<byte, uint>(dst.AsSpan())); break;
            default: throw new InvalidDataException($"tensor {Name}: {size}-byte elements cannot be stacked experts (F32, F16, BF16)");
        }

        return dst;
    }

    private void Gather<T>(ReadOnlySpan<T> src, Span<T> dst)
    {
        bool down = Part == StackedPart.Down;
        int phase = Part == StackedPart.Up ? 1 : 0;
        // Source row length (elements) and where expert e's [D, 2F] or [F, D] block starts.
        long srcCols = down ? Rows : 2L * Rows;
        long expertBase = (long)Expert * Rows * Cols * (down ? 1 : 2);
        for (int k = 0; k < Cols; k++)
        {
            var row = src.Slice((int)(expertBase + k * srcCols), (int)srcCols);
            // gate/up: slot [f = r, k] = source [e, k, 2f + phase]; down: slot [r, f = k] = source [e, f = k, r].
            for (int r = 0; r < Rows; r++)
                dst[r * Cols + k] = row[down ? r : 2 * r + phase];
        }
    }

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
