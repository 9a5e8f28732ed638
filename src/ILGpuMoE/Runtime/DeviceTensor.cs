// Weights on the device, kept in the checkpoint's dtype (BF16 stays 2 bytes: the kernels widen on load).
//
// Upload goes straight from the memory-mapped safetensors span to the device buffer (one host copy at most, done by
// ILGPU's CopyFromCPU), so a checkpoint is never materialised in managed memory as a whole.
// The CPU backend does not even copy: a Mapped tensor is the checkpoint's own bytes (its address in the memory map, or
// one address per expert for experts stored as separate tensors), valid while the model keeps the checkpoint open.
using System.Diagnostics;
using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.IO;
using ILGpuMoE.Kernels;

namespace ILGpuMoE.Runtime;

/// <summary>A 1-D device buffer of weights in F32, F16 or BF16, with its logical shape.</summary>
public sealed class DeviceTensor : IDisposable
{
    private readonly MemoryBuffer? _buffer;
    private readonly nint[]? _mapped; // the CPU backend's zero-copy form: one address per part ([E', ...] stacks: per expert)

    private DeviceTensor(MemoryBuffer buffer, WeightType type, long[] shape)
    {
        _buffer = buffer;
        Type = type;
        Shape = shape;
        Length = shape.Aggregate(1L, (a, b) => a * b);
    }

    private DeviceTensor(nint[] parts, WeightType type, long[] shape)
    {
        _mapped = parts;
        Type = type;
        Shape = shape;
        Length = shape.Aggregate(1L, (a, b) => a * b);
    }

    /// <summary>True for a tensor read in place from the memory-mapped checkpoint (the CPU backend): no device buffer.</summary>
    public bool IsMapped => _mapped is not null;

    /// <summary>The checkpoint tensor in place (CPU backend): its address in the map, no copy. The checkpoint must stay
    /// open as long as the tensor is used.</summary>
    internal static unsafe DeviceTensor Mapped(Checkpoint checkpoint, string name)
    {
        var info = checkpoint.Get(name);
        var type = FromDType(info.DType, name);
        return new DeviceTensor([Address(checkpoint.GetBytes(name))], type, info.Shape);
    }

    /// <summary>Whole expert tensors of one dtype and shape as one [E', out, in] tensor without copying: one address per
    /// expert (CPU backend). Null when a part is not a whole tensor (a chunk, a slice of a stacked tensor): those are copied.</summary>
    internal static DeviceTensor? MappedStack(Checkpoint checkpoint, IReadOnlyList<ExpertSlice> parts)
    {
        if (parts.Any(p => p.Chunk >= 0 || p.Stacked))
            return null;
        var first = checkpoint.Get(parts[0].Name);
        var type = FromDType(first.DType, parts[0].Name);
        var addresses = new nint[parts.Count];
        for (int i = 0; i < parts.Count; i++)
        {
            var info = checkpoint.Get(parts[i].Name);
            if (info.DType != first.DType || !info.Shape.SequenceEqual(first.Shape))
                throw new InvalidDataException($"tensor {parts[i].Name}: {DTypes.ToName(info.DType)} [{string.Join(", ", info.Shape)}] differs from {parts[0].Name}'s {DTypes.ToName(first.DType)} [{string.Join(", ", first.Shape)}]; the experts of a layer are stacked in one dtype");
            addresses[i] = Address(checkpoint.GetBytes(parts[i].Name));
        }

        return new DeviceTensor(addresses, type, [parts.Count, .. first.Shape]);
    }

    private static unsafe nint Address(ReadOnlySpan<byte> bytes) =>
        (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(bytes));

    /// <summary>Per part (expert) addresses of a mapped tensor; null for a buffer.</summary>
    internal IReadOnlyList<nint>? MappedParts => _mapped;

    public WeightType Type { get; }

    public long[] Shape { get; }

    public long Length { get; }

    public long Bytes => _buffer?.LengthInBytes ?? Length * ElementSize(Type);

    public static int ElementSize(WeightType t) => t == WeightType.F32 ? 4 : 2;

    public static WeightType FromDType(DType d, string tensor) => d switch
    {
        DType.F32 => WeightType.F32,
        DType.F16 => WeightType.F16,
        DType.BF16 => WeightType.BF16,
        _ => throw new NotSupportedException($"tensor {tensor}: dtype {DTypes.ToName(d)} is not a supported weight type (F32, F16, BF16)"),
    };

    /// <summary>Allocates an uninitialised tensor of the given type and shape.</summary>
    public static DeviceTensor Allocate(Accelerator accelerator, WeightType type, params long[] shape)
    {
        long n = shape.Aggregate(1L, (a, b) => checked(a * b));
        MemoryBuffer buffer = type switch
        {
            WeightType.F32 => accelerator.Allocate1D<float>(n),
            WeightType.F16 => accelerator.Allocate1D<ILGPU.Half>(n),
            WeightType.BF16 => accelerator.Allocate1D<ushort>(n),
            _ => throw new UnreachableException($"weight type {type}"),
        };
        return new DeviceTensor(buffer, type, shape);
    }

    /// <summary>Uploads one checkpoint tensor as it is.</summary>
    public static DeviceTensor Upload(Accelerator accelerator, Checkpoint checkpoint, string name)
    {
        var info = checkpoint.Get(name);
        var t = Allocate(accelerator, FromDType(info.DType, name), info.Shape);
        t.CopyFrom(checkpoint.GetBytes(name), 0);
        return t;
    }

    /// <summary>Uploads one checkpoint tensor widened to F32 (small vectors a kernel reads as floats, e.g. Qwen3's q/k norms).</summary>
    public static DeviceTensor UploadFloat32(Accelerator accelerator, Checkpoint checkpoint, string name)
    {
        var info = checkpoint.Get(name);
        FromDType(info.DType, name);
        var t = Allocate(accelerator, WeightType.F32, info.Shape);
        t.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(checkpoint.ReadFloat32(name).AsSpan()), 0);
        return t;
    }

    /// <summary>Uploads expert slots of one dtype and shape stacked along a new leading axis (experts: [E', out, in]).</summary>
    internal static DeviceTensor UploadStacked(Accelerator accelerator, Checkpoint checkpoint, IReadOnlyList<ExpertSlice> parts)
    {
        var firstInfo = checkpoint.Get(parts[0].Name);
        var firstShape = parts[0].Shape(checkpoint);
        var type = FromDType(firstInfo.DType, parts[0].Name);
        var t = Allocate(accelerator, type, [parts.Count, .. firstShape]);
        long each = firstShape.Aggregate(1L, (a, b) => a * b);
        for (int i = 0; i < parts.Count; i++)
        {
            var info = checkpoint.Get(parts[i].Name);
            var shape = parts[i].Shape(checkpoint);
            if (info.DType != firstInfo.DType || !shape.SequenceEqual(firstShape))
                throw new InvalidDataException($"tensor {parts[i].Name}: {DTypes.ToName(info.DType)} [{string.Join(", ", shape)}] differs from {parts[0].Name}'s {DTypes.ToName(firstInfo.DType)} [{string.Join(", ", firstShape)}]; the experts of a layer are stacked in one dtype");
            t.CopyFrom(parts[i].Bytes(checkpoint), i * each);
        }

        return t;
    }

    /// <summary>Uploads checkpoint matrices of one dtype and column count one after another as the rows of one [sum rows, cols] tensor.</summary>
    public static DeviceTensor UploadRows(Accelerator accelerator, Checkpoint checkpoint, IReadOnlyList<string> names)
    {
        var first = checkpoint.Get(names[0]);
        long cols = first.Shape[^1], rows = 0;
        foreach (var name in names)
        {
            var info = checkpoint.Get(name);
            if (info.DType != first.DType || info.Shape.Length != 2 || info.Shape[1] != cols)
                throw new InvalidDataException($"tensor {name}: {DTypes.ToName(info.DType)} [{string.Join(", ", info.Shape)}] cannot be joined row-wise to {names[0]}'s {DTypes.ToName(first.DType)} [{string.Join(", ", first.Shape)}]");
            rows += info.Shape[0];
        }

        var t = Allocate(accelerator, FromDType(first.DType, names[0]), rows, cols);
        long at = 0;
        foreach (var name in names)
        {
            t.CopyFrom(checkpoint.GetBytes(name), at);
            at += checkpoint.Get(name).ElementCount;
        }

        return t;
    }

    /// <summary>Copies raw little-endian bytes of this tensor's element type to element offset elementOffset.</summary>
    public void CopyFrom(ReadOnlySpan<byte> bytes, long elementOffset)
    {
        int size = ElementSize(Type);
        if (bytes.Length % size != 0 || elementOffset < 0 || elementOffset + bytes.Length / size > Length)
            throw new ArgumentException($"copy of {bytes.Length} bytes at element {elementOffset} does not fit a tensor of {Length} elements");
        switch (Type)
        {
            case WeightType.F32:
                F32.SubView(elementOffset, bytes.Length / 4).CopyFromCPU(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes));
                break;
            case WeightType.F16:
                F16.SubView(elementOffset, bytes.Length / 2).CopyFromCPU(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ILGPU.Half>(bytes));
                break;
            case WeightType.BF16:
                BF16.SubView(elementOffset, bytes.Length / 2).CopyFromCPU(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes));
                break;
            default:
                throw new UnreachableException($"weight type {Type}");
        }
    }

    public ArrayView<float> F32 => Type == WeightType.F32 ? ((MemoryBuffer1D<float, Stride1D.Dense>)Buffer).View : throw Wrong(WeightType.F32);

    public ArrayView<ILGPU.Half> F16 => Type == WeightType.F16 ? ((MemoryBuffer1D<ILGPU.Half, Stride1D.Dense>)Buffer).View : throw Wrong(WeightType.F16);

    public ArrayView<ushort> BF16 => Type == WeightType.BF16 ? ((MemoryBuffer1D<ushort, Stride1D.Dense>)Buffer).View : throw Wrong(WeightType.BF16);

    private MemoryBuffer Buffer => _buffer ?? throw new InvalidOperationException("a memory-mapped tensor (CPU backend) has no device view");

    /// <summary>The host address of the elements: the CPU backend reads its tensors in place (CPU accelerator memory is
    /// host memory). InvalidOperationException on a GPU tensor.</summary>
    internal nint HostAddress => _mapped is { Length: 1 } one ? one[0]
        : _mapped is not null ? throw new InvalidOperationException("a mapped stack of experts has one address per expert (MappedParts)")
        : _buffer!.AcceleratorType == AcceleratorType.CPU ? _buffer.NativePtr
        : throw new InvalidOperationException($"a {_buffer.AcceleratorType} tensor has no host address (the CPU backend needs the CPU accelerator's memory)");

    private InvalidOperationException Wrong(WeightType asked) => new($"tensor is {Type}, not {asked}");

    public void Dispose() => _buffer?.Dispose();
}
