// GGUF v3 writer (llama.cpp's model file), F32 tensors only: enough to hand our Hugging Face weights to
// llama.cpp as a peer. Layout: "GGUF", version 3, tensor count, metadata count, metadata key/values, tensor
// infos (name, dims with ne[0] the fastest-varying, i.e. a PyTorch [rows, cols] tensor is ne = [cols, rows],
// type, offset), padding to the alignment (32), then each tensor's data, each start aligned to 32.
// Tensor data is produced lazily at write time, so a large model is never held whole in memory.
using System.Text;

namespace ILGpuMoE.Testing;

public sealed class GgufWriter
{
    public const uint Version = 3;
    public const int Alignment = 32;

    private enum ValueType : uint { UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9 }

    private readonly List<(string Key, Action<BinaryWriter> Write)> _metadata = [];
    private readonly List<(string Name, long[] Ne, Func<float[]> Data)> _tensors = [];
    private readonly HashSet<string> _keys = [];

    public void AddUInt32(string key, uint value) => AddMeta(key, w => { w.Write((uint)ValueType.UInt32); w.Write(value); });
    public void AddFloat32(string key, float value) => AddMeta(key, w => { w.Write((uint)ValueType.Float32); w.Write(value); });
    public void AddBool(string key, bool value) => AddMeta(key, w => { w.Write((uint)ValueType.Bool); w.Write((byte)(value ? 1 : 0)); });
    public void AddString(string key, string value) => AddMeta(key, w => { w.Write((uint)ValueType.String); WriteString(w, value); });

    public void AddStringArray(string key, IReadOnlyList<string> values) =>
        AddArray(key, ValueType.String, values.Count, w => { foreach (string v in values) WriteString(w, v); });

    public void AddFloat32Array(string key, IReadOnlyList<float> values) =>
        AddArray(key, ValueType.Float32, values.Count, w => { foreach (float v in values) w.Write(v); });

    public void AddInt32Array(string key, IReadOnlyList<int> values) =>
        AddArray(key, ValueType.Int32, values.Count, w => { foreach (int v in values) w.Write(v); });

    private void AddArray(string key, ValueType element, int count, Action<BinaryWriter> writeItems) => AddMeta(key, w =>
    {
        w.Write((uint)ValueType.Array);
        w.Write((uint)element);
        w.Write((ulong)count);
        writeItems(w);
    });

    /// <summary>An F32 tensor; <paramref name="ne"/> is GGML order (fastest-varying first); data is produced at write time.</summary>
    public void AddTensorF32(string name, long[] ne, Func<float[]> data)
    {
        if (_tensors.Any(t => t.Name == name))
            throw new ArgumentException($"GGUF: tensor '{name}' added twice", nameof(name));
        if (ne.Length is 0 or > 4 || ne.Any(n => n <= 0))
            throw new ArgumentException($"GGUF: tensor '{name}' has bad dims [{string.Join(", ", ne)}]", nameof(ne));
        _tensors.Add((name, ne, data));
    }

    public void Write(string path)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        w.Write("GGUF"u8);
        w.Write(Version);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);
        foreach (var (key, write) in _metadata)
        {
            WriteString(w, key);
            write(w);
        }

        long offset = 0;
        foreach (var (name, ne, _) in _tensors)
        {
            WriteString(w, name);
            w.Write((uint)ne.Length);
            foreach (long n in ne)
                w.Write((ulong)n);
            w.Write(0u); // GGML_TYPE_F32
            w.Write((ulong)offset);
            offset = Align(offset + 4 * ne.Aggregate(1L, (a, b) => a * b));
        }

        Pad(w);
        foreach (var (name, ne, data) in _tensors)
        {
            float[] values = data();
            long count = ne.Aggregate(1L, (a, b) => a * b);
            if (values.LongLength != count)
                throw new InvalidOperationException($"GGUF: tensor '{name}' produced {values.LongLength} values for dims [{string.Join(", ", ne)}] ({count})");
            w.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
            Pad(w);
        }
    }

    private void AddMeta(string key, Action<BinaryWriter> write)
    {
        if (!_keys.Add(key))
            throw new ArgumentException($"GGUF: metadata key '{key}' added twice", nameof(key));
        _metadata.Add((key, write));
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static long Align(long x) => (x + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter w)
    {
        long pos = w.BaseStream.Position;
        for (long i = pos; i < Align(pos); i++)
            w.Write((byte)0);
    }
}
