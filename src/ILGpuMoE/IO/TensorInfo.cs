namespace ILGpuMoE.IO;

/// <summary>
/// One tensor's header entry. <paramref name="Offset"/> is relative to the start of its file's data section
/// (the byte after the header), <paramref name="ByteLength"/> = ElementCount x element size (validated on open).
/// A 0-d scalar has an empty <paramref name="Shape"/> and one element.
/// </summary>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, long Offset, long ByteLength)
{
    /// <summary>Product of the shape (1 for a scalar, 0 when any dimension is 0).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in Shape)
                n = checked(n * d);
            return n;
        }
    }

    /// <summary>"[512, 64]"-style shape text for messages.</summary>
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    public override string ToString() => $"{Name} {DTypes.ToName(DType)} {ShapeText}";
}
