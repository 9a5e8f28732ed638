// Safetensors reader: memory-mapped, zero-copy, lazy.
//
// Format (little-endian throughout):
//   [8 bytes]  N, uint64: length of the JSON header
//   [N bytes]  UTF-8 JSON object: { "<name>": {"dtype": "BF16", "shape": [D0, D1, ...], "data_offsets": [begin, end]},
//                                    ..., "__metadata__": {"<key>": "<string>", ...} (optional) }
//              writers pad it with trailing spaces so the data section starts 8-byte aligned
//   [rest]     data section: each tensor's row-major bytes at [begin, end) relative to the data section start
//
// What Open validates (each failure a SafeTensorsException naming the file and, where one is involved, the tensor):
//   - the file exists, is a file, and has at least the 8-byte prefix;
//   - N <= file length - 8 and N <= 100 MiB (checked before anything is allocated);
//   - the header is valid UTF-8, valid JSON, a JSON object, with no duplicate names (a DOM would hide them);
//   - each entry is an object with a known dtype, a shape of non-negative integers whose element count and byte
//     size do not overflow int64, and data_offsets [begin, end] with end - begin = elements x element size;
//   - __metadata__ is an object of strings;
//   - sorted by begin, the tensors tile [0, data length) exactly: no offsets outside, no overlap, no hole,
//     no trailing bytes. (Zero-size tensors with begin == end are legal.)
// Only the header is read on open: the data section is touched when a caller reads a tensor's span, page by page.
// Spans returned by GetBytes/GetSpan point into the mapping and are valid until Dispose.
using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace ILGpuMoE.IO;

/// <summary>A read-only, memory-mapped safetensors file. See the header comment of this file for the format.</summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    /// <summary>Largest header accepted (the reference implementation uses a similar bound).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly Dictionary<string, TensorInfo> _byName;
    private byte* _base;   // start of the mapping (file byte 0); acquired once in Open, released in Dispose
    private readonly long _dataStart;

    private SafeTensorsFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePtr, long fileLength)
    {
        Path = path;
        _map = map;
        _view = view;
        _base = basePtr;
        FileLength = fileLength;

        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(basePtr, 8));
        _dataStart = 8 + headerLength;
        var parsed = SafeTensorsHeader.Parse(path, new ReadOnlySpan<byte>(basePtr + 8, (int)headerLength), fileLength - _dataStart);
        Tensors = parsed.Tensors;
        Metadata = parsed.Metadata;
        _byName = new Dictionary<string, TensorInfo>(parsed.Tensors.Count, StringComparer.Ordinal);
        foreach (var t in parsed.Tensors)
            _byName.Add(t.Name, t);
    }

    /// <summary>The path as given to <see cref="Open"/>.</summary>
    public string Path { get; }

    public long FileLength { get; }

    /// <summary>Byte offset of the data section in the file (8 + header length).</summary>
    public long DataStart => _dataStart;

    /// <summary>The <c>__metadata__</c> strings (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>Maps and validates <paramref name="path"/>; reads only the header.</summary>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path))
            throw SafeTensorsHeader.Fail(SafeTensorsError.NotFound, path, null, "is a directory, not a safetensors file");
        if (!File.Exists(path))
            throw SafeTensorsHeader.Fail(SafeTensorsError.NotFound, path, null, "file not found");

        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.None);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw SafeTensorsHeader.Fail(SafeTensorsError.Io, path, null, $"cannot open: {SafeTensorsException.Printable(e.Message)}", e);
        }

        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        byte* basePtr = null;
        try
        {
            long length = stream.Length;
            if (length < 8)
                throw SafeTensorsHeader.Fail(SafeTensorsError.Truncated, path, null, $"file is {length} bytes, shorter than the 8-byte header length prefix");

            // Read the prefix with a plain read so a bad length fails before anything is mapped or allocated.
            Span<byte> prefix = stackalloc byte[8];
            stream.ReadExactly(prefix);
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (headerLength > (ulong)(length - 8))
                throw SafeTensorsHeader.Fail(SafeTensorsError.HeaderTooLarge, path, null, $"header length {headerLength} exceeds the {length - 8} bytes after the prefix");
            if (headerLength > MaxHeaderBytes)
                throw SafeTensorsHeader.Fail(SafeTensorsError.HeaderTooLarge, path, null, $"header length {headerLength} exceeds the {MaxHeaderBytes}-byte limit");

            map = MemoryMappedFile.CreateFromFile(stream, mapName: null, capacity: 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
            return new SafeTensorsFile(path, map, view, basePtr + view.PointerOffset, length);
        }
        catch (Exception e)
        {
            if (basePtr != null)
                view!.SafeMemoryMappedViewHandle.ReleasePointer();
            view?.Dispose();
            map?.Dispose();
            stream.Dispose();
            if (e is SafeTensorsException)
                throw;
            if (e is IOException or UnauthorizedAccessException)
                throw SafeTensorsHeader.Fail(SafeTensorsError.Io, path, null, $"cannot map: {SafeTensorsException.Printable(e.Message)}", e);
            throw;
        }
    }

    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The entry for <paramref name="name"/>; a <see cref="SafeTensorsNotFoundException"/> if absent.</summary>
    public TensorInfo Get(string name)
    {
        if (_byName.TryGetValue(name, out var t))
            return t;
        throw SafeTensorsHeader.Fail(SafeTensorsError.MissingTensor, Path, name, "no such tensor in this file");
    }

    public bool TryGet(string name, out TensorInfo info) => _byName.TryGetValue(name, out info!);

    /// <summary>The tensor's raw little-endian bytes, zero-copy from the mapping (valid until Dispose).</summary>
    public ReadOnlySpan<byte> GetBytes(string name) => GetBytes(Get(name));

    /// <summary>The raw bytes of an entry of this file.</summary>
    public ReadOnlySpan<byte> GetBytes(TensorInfo info)
    {
        if (info.ByteLength > int.MaxValue)
            throw SafeTensorsHeader.Fail(SafeTensorsError.TooLarge, Path, info.Name,
                $"{info.ByteLength} bytes do not fit one span; use GetBytes(info, offset, length) in pieces");
        return GetBytes(info, 0, (int)info.ByteLength);
    }

    /// <summary>Bytes [byteOffset, byteOffset + byteLength) of a tensor, for tensors larger than 2 GiB.</summary>
    public ReadOnlySpan<byte> GetBytes(TensorInfo info, long byteOffset, int byteLength)
    {
        ArgumentNullException.ThrowIfNull(info);
        if (!_byName.TryGetValue(info.Name, out var own))
            throw SafeTensorsHeader.Fail(SafeTensorsError.MissingTensor, Path, info.Name, "no such tensor in this file");
        info = own; // trust only this file's own validated offsets
        if (byteOffset < 0 || byteLength < 0 || byteOffset > info.ByteLength - byteLength)
            throw new ArgumentOutOfRangeException(nameof(byteOffset), $"{Path}: tensor '{info.Name}': range [{byteOffset}, +{byteLength}) is outside its {info.ByteLength} bytes");
        return new ReadOnlySpan<byte>(Base + _dataStart + info.Offset + byteOffset, byteLength);
    }

    /// <summary>
    /// The tensor as elements of <typeparamref name="T"/> (e.g. float for F32, ushort for BF16, Half for F16, int for I32),
    /// zero-copy. The size of T must equal the dtype's element size. Values are little-endian as stored.
    /// </summary>
    public ReadOnlySpan<T> GetSpan<T>(string name)
        where T : unmanaged
    {
        var info = Get(name);
        if (Unsafe.SizeOf<T>() != DTypes.SizeOf(info.DType))
            throw SafeTensorsHeader.Fail(SafeTensorsError.WrongDType, Path, name,
                $"dtype {DTypes.ToName(info.DType)} has {DTypes.SizeOf(info.DType)}-byte elements, cannot view as {typeof(T).Name} ({Unsafe.SizeOf<T>()} bytes)");
        return MemoryMarshal.Cast<byte, T>(GetBytes(info));
    }

    /// <summary>The tensor widened to float (F32 copied, F16 and BF16 converted exactly). Other dtypes are refused.</summary>
    public float[] ReadFloat32(string name)
    {
        var info = Get(name);
        return WidenToFloat32(Path, info, GetBytes(info));
    }

    internal static float[] WidenToFloat32(string path, TensorInfo info, ReadOnlySpan<byte> bytes)
    {
        var result = new float[info.ElementCount];
        switch (info.DType)
        {
            case DType.F32 when BitConverter.IsLittleEndian:
                MemoryMarshal.Cast<byte, float>(bytes).CopyTo(result);
                break;
            case DType.F32:
                for (int i = 0; i < result.Length; i++)
                    result[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes[(4 * i)..]);
                break;
            case DType.F16:
                for (int i = 0; i < result.Length; i++)
                    result[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(bytes[(2 * i)..]);
                break;
            case DType.BF16:
                for (int i = 0; i < result.Length; i++)
                    result[i] = BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]) << 16);
                break;
            default:
                throw SafeTensorsHeader.Fail(SafeTensorsError.WrongDType, path, info.Name,
                    $"dtype {DTypes.ToName(info.DType)} cannot be read as float32 (only F32, F16, BF16)");
        }

        return result;
    }

    private byte* Base
    {
        get
        {
            ObjectDisposedException.ThrowIf(_base == null, this);
            return _base;
        }
    }

    public void Dispose()
    {
        if (_base == null)
            return;
        _base = null;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }

    public override string ToString() => $"{Path} ({Tensors.Count} tensors)";
}
