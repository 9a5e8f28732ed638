// Safetensors writer: the same format SafeTensorsFile reads (see its header comment).
// The header JSON is padded with spaces to a multiple of 8 bytes so the data section is 8-byte aligned; tensors
// are laid out in the order given, contiguous, so the file always passes the reader's tiling check.
// Every file is written to a temporary name in the target directory and then renamed over the target, so a
// crash leaves either the old file or the new one, never half a file.
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace ILGpuMoE.IO;

public static class SafeTensorsWriter
{
    /// <summary>One tensor to write: <paramref name="Data"/> holds exactly ElementCount x element size little-endian bytes.</summary>
    public sealed record Entry(string Name, DType DType, long[] Shape, ReadOnlyMemory<byte> Data);

    private static readonly JsonWriterOptions JsonOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Converts floats to F32, F16 (IEEE round to nearest even) or BF16 (round to nearest even, NaN kept NaN).</summary>
    public static Entry FromFloats(string name, long[] shape, ReadOnlySpan<float> data, DType dtype = DType.F32)
    {
        byte[] bytes;
        switch (dtype)
        {
            case DType.F32:
                bytes = new byte[data.Length * 4];
                for (int i = 0; i < data.Length; i++)
                    BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i), data[i]);
                break;
            case DType.F16:
                bytes = new byte[data.Length * 2];
                for (int i = 0; i < data.Length; i++)
                    BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(2 * i), (Half)data[i]);
                break;
            case DType.BF16:
                bytes = new byte[data.Length * 2];
                for (int i = 0; i < data.Length; i++)
                    BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), ToBFloat16(data[i]));
                break;
            default:
                throw new ArgumentException($"tensor '{name}': FromFloats writes F32, F16 or BF16, not {DTypes.ToName(dtype)}", nameof(dtype));
        }

        var entry = new Entry(name, dtype, shape, bytes);
        Validate(entry);
        return entry;
    }

    /// <summary>Typed convenience: the raw bytes of <paramref name="data"/> (little-endian host) as a tensor of <paramref name="dtype"/>.</summary>
    public static Entry FromSpan<T>(string name, DType dtype, long[] shape, ReadOnlySpan<T> data)
        where T : unmanaged
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("safetensors data is little-endian; FromSpan copies host bytes");
        var entry = new Entry(name, dtype, shape, MemoryMarshal.AsBytes(data).ToArray());
        Validate(entry);
        return entry;
    }

    /// <summary>float -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN of the same sign.</summary>
    public static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
            return (ushort)((bits >> 16) | 0x0040);
        uint roundingBias = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + roundingBias) >> 16);
    }

    /// <summary>Writes one safetensors file (tensors in the given order; metadata as <c>__metadata__</c>).</summary>
    public static void Write(string path, IEnumerable<Entry> entries, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(entries);
        var list = entries.ToList();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in list)
        {
            Validate(e);
            if (!names.Add(e.Name))
                throw new ArgumentException($"{path}: tensor '{e.Name}' appears twice", nameof(entries));
        }

        byte[] header = BuildHeader(list.Select(e => (e.Name, e.DType, e.Shape, (long)e.Data.Length)), metadata);
        WriteAtomically(path, stream =>
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            stream.Write(prefix);
            stream.Write(header);
            foreach (var e in list)
                stream.Write(e.Data.Span);
        });
    }

    /// <summary>
    /// Splits <paramref name="entries"/> (in order) into <paramref name="shards"/> files of roughly equal bytes,
    /// model-00001-of-0000n.safetensors ..., and writes model.safetensors.index.json (metadata.total_size, weight_map).
    /// </summary>
    public static void WriteSharded(string dir, IEnumerable<Entry> entries, int shards)
        => WriteSharded(dir, entries, shards, null);

    /// <summary>As <see cref="WriteSharded(string, IEnumerable{Entry}, int)"/>, with <paramref name="metadata"/> in every shard.</summary>
    public static void WriteSharded(string dir, IEnumerable<Entry> entries, int shards, IReadOnlyDictionary<string, string>? metadata)
    {
        ArgumentNullException.ThrowIfNull(dir);
        ArgumentNullException.ThrowIfNull(entries);
        var list = entries.ToList();
        if (shards < 1 || shards > Math.Max(1, list.Count))
            throw new ArgumentOutOfRangeException(nameof(shards), shards, $"{dir}: need 1 <= shards <= {list.Count} (the number of tensors)");
        foreach (var e in list)
            Validate(e);

        var groups = Split(list, shards);
        System.IO.Directory.CreateDirectory(dir);
        var weightMap = new List<(string Tensor, string File)>(list.Count);
        for (int s = 0; s < shards; s++)
        {
            string file = $"model-{s + 1:D5}-of-{shards:D5}.safetensors";
            Write(Path.Combine(dir, file), groups[s], metadata);
            foreach (var e in groups[s])
                weightMap.Add((e.Name, file));
        }

        long totalSize = list.Sum(e => (long)e.Data.Length);
        WriteAtomically(Path.Combine(dir, Checkpoint.IndexFileName), stream =>
        {
            using var json = new Utf8JsonWriter(stream, JsonOptions with { Indented = true });
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", totalSize);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (tensor, file) in weightMap)
                json.WriteString(tensor, file);
            json.WriteEndObject();
            json.WriteEndObject();
        });
    }

    /// <summary>Contiguous groups: shard s closes once the running total reaches (s+1)/n of all bytes, keeping one tensor for each later shard.</summary>
    private static List<Entry>[] Split(List<Entry> list, int shards)
    {
        long total = list.Sum(e => (long)e.Data.Length);
        var groups = new List<Entry>[shards];
        for (int s = 0; s < shards; s++)
            groups[s] = [];
        int shard = 0;
        long running = 0;
        for (int i = 0; i < list.Count; i++)
        {
            groups[shard].Add(list[i]);
            running += list[i].Data.Length;
            int remainingEntries = list.Count - i - 1, remainingShards = shards - shard - 1;
            bool reachedShare = (double)running >= (double)total * (shard + 1) / shards;
            if (remainingShards > 0 && (remainingEntries == remainingShards || reachedShare))
                shard++;
        }

        return groups;
    }

    /// <summary>The header JSON of tensors laid out contiguously in the given order, space-padded to a multiple of 8 bytes
    /// (also the streaming writer's, which knows names, dtypes, shapes and sizes before it has the bytes).</summary>
    internal static byte[] BuildHeader(IEnumerable<(string Name, DType DType, long[] Shape, long ByteLength)> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, JsonOptions))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(SafeTensorsHeader.MetadataKey);
                foreach (var (k, v) in metadata)
                    json.WriteString(k, v);
                json.WriteEndObject();
            }

            long offset = 0;
            foreach (var (name, dtype, shape, bytes) in tensors)
            {
                json.WriteStartObject(name);
                json.WriteString("dtype", DTypes.ToName(dtype));
                json.WriteStartArray("shape");
                foreach (long d in shape)
                    json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }

            json.WriteEndObject();
        }

        int padded = (int)((buffer.Length + 7) / 8 * 8);
        while (buffer.Length < padded)
            buffer.WriteByte((byte)' ');
        return buffer.ToArray();
    }

    private static void Validate(Entry e)
    {
        ArgumentNullException.ThrowIfNull(e);
        if (string.IsNullOrEmpty(e.Name) || e.Name == SafeTensorsHeader.MetadataKey)
            throw new ArgumentException($"tensor name '{e.Name}' is empty or reserved", nameof(e));
        ArgumentNullException.ThrowIfNull(e.Shape);
        long elements = 1;
        foreach (long d in e.Shape)
        {
            if (d < 0)
                throw new ArgumentException($"tensor '{e.Name}': negative dimension in shape [{string.Join(", ", e.Shape)}]", nameof(e));
            elements = checked(elements * d);
        }

        long bytes = checked(elements * DTypes.SizeOf(e.DType));
        if (bytes != e.Data.Length)
            throw new ArgumentException(
                $"tensor '{e.Name}': {DTypes.ToName(e.DType)} [{string.Join(", ", e.Shape)}] needs {bytes} bytes, data has {e.Data.Length}", nameof(e));
    }

    private static void WriteAtomically(string path, Action<FileStream> write)
    {
        string full = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }

            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
    }
}
