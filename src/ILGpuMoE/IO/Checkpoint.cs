// A model checkpoint directory: either one model.safetensors, or Hugging Face's sharded form
//   model.safetensors.index.json = {"metadata": {"total_size": N}, "weight_map": {"<tensor>": "<shard file>", ...}}
//   model-00001-of-0000n.safetensors ... (each a normal safetensors file)
// Each shard is mapped once. The index is trusted for nothing: shard names must be plain file names inside the
// directory (no "../x", no absolute paths), every shard must exist and validate, and every tensor the index lists
// must be in the shard it names. Tensors a shard holds but the index does not list are ignored, as Hugging Face does.
using System.Text.Json;
using System.Text.Unicode;

namespace ILGpuMoE.IO;

/// <summary>A read-only checkpoint: one safetensors file or an index plus shards (see this file's header comment).</summary>
public sealed class Checkpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>Largest index accepted; real ones are well under 1 MiB.</summary>
    public const long MaxIndexBytes = 64L << 20;

    private readonly SafeTensorsFile[] _shards;
    private readonly Dictionary<string, (TensorInfo Info, SafeTensorsFile Shard)> _byName;

    private Checkpoint(string directory, string? indexPath, long? totalSize, SafeTensorsFile[] shards,
        List<(TensorInfo, SafeTensorsFile)> tensors)
    {
        Directory = directory;
        IndexPath = indexPath;
        TotalSize = totalSize;
        _shards = shards;
        _byName = new Dictionary<string, (TensorInfo, SafeTensorsFile)>(tensors.Count, StringComparer.Ordinal);
        var list = new List<TensorInfo>(tensors.Count);
        foreach (var (info, shard) in tensors)
        {
            _byName.Add(info.Name, (info, shard));
            list.Add(info);
        }

        Tensors = list;
    }

    public string Directory { get; }

    /// <summary>The index file for a sharded checkpoint, null for a single file.</summary>
    public string? IndexPath { get; }

    /// <summary>The index's metadata.total_size when present (not verified: producers disagree on what it counts).</summary>
    public long? TotalSize { get; }

    /// <summary>The opened files, each once, in order of first use in the index.</summary>
    public IReadOnlyList<SafeTensorsFile> Shards => _shards;

    /// <summary>Metadata of the single file, or of the first shard.</summary>
    public IReadOnlyDictionary<string, string> Metadata => _shards.Length > 0 ? _shards[0].Metadata : new Dictionary<string, string>();

    /// <summary>Tensors in index order (single file: header order). <see cref="TensorInfo.Offset"/> is within the tensor's shard.</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>
    /// Opens a checkpoint directory (index if present, else model.safetensors). A path to a .safetensors file is
    /// also accepted and opened as a one-file checkpoint.
    /// </summary>
    public static Checkpoint Open(string dir)
    {
        ArgumentNullException.ThrowIfNull(dir);
        if (File.Exists(dir))
            return FromSingle(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(dir))!, dir);
        if (!System.IO.Directory.Exists(dir))
            throw SafeTensorsHeader.Fail(SafeTensorsError.NotFound, dir, null, "checkpoint directory not found");

        string index = System.IO.Path.Combine(dir, IndexFileName);
        if (File.Exists(index))
            return FromIndex(dir, index);
        string single = System.IO.Path.Combine(dir, SingleFileName);
        if (File.Exists(single))
            return FromSingle(dir, single);
        throw SafeTensorsHeader.Fail(SafeTensorsError.NotFound, dir, null, $"directory holds neither {IndexFileName} nor {SingleFileName}");
    }

    private static Checkpoint FromSingle(string dir, string file)
    {
        var shard = SafeTensorsFile.Open(file);
        return new Checkpoint(dir, null, null, [shard], [.. shard.Tensors.Select(t => (t, shard))]);
    }

    private static Checkpoint FromIndex(string dir, string index)
    {
        var (totalSize, weightMap) = ReadIndex(index);
        var opened = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        var order = new List<SafeTensorsFile>();
        try
        {
            var tensors = new List<(TensorInfo, SafeTensorsFile)>(weightMap.Count);
            foreach (var (name, file) in weightMap)
            {
                if (!opened.TryGetValue(file, out var shard))
                {
                    string shardPath = System.IO.Path.Combine(dir, file);
                    if (!File.Exists(shardPath))
                        throw SafeTensorsHeader.Fail(SafeTensorsError.MissingShard, index, name, $"shard '{SafeTensorsException.Printable(file)}' does not exist in {dir}");
                    shard = SafeTensorsFile.Open(shardPath);
                    opened.Add(file, shard);
                    order.Add(shard);
                }

                if (!shard.TryGet(name, out var info))
                    throw SafeTensorsHeader.Fail(SafeTensorsError.MissingTensor, shard.Path, name, $"listed in {IndexFileName} but absent from this shard");
                tensors.Add((info, shard));
            }

            return new Checkpoint(dir, index, totalSize, [.. order], tensors);
        }
        catch
        {
            foreach (var s in order)
                s.Dispose();
            throw;
        }
    }

    /// <summary>Parses the index with Utf8JsonReader (duplicate names are errors, not silently merged).</summary>
    private static (long? TotalSize, List<(string Name, string File)> WeightMap) ReadIndex(string index)
    {
        byte[] json;
        try
        {
            long length = new FileInfo(index).Length;
            if (length > MaxIndexBytes)
                throw SafeTensorsHeader.Fail(SafeTensorsError.InvalidIndex, index, null, $"index is {length} bytes, over the {MaxIndexBytes}-byte limit");
            json = File.ReadAllBytes(index);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw SafeTensorsHeader.Fail(SafeTensorsError.Io, index, null, $"cannot read: {SafeTensorsException.Printable(e.Message)}", e);
        }

        if (!Utf8.IsValid(json))
            throw Bad(index, null, "index is not valid UTF-8");
        long? totalSize = null;
        List<(string, string)>? map = null;
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow });
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                throw Bad(index, null, "index is not a JSON object");
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                if (reader.ValueTextEquals("weight_map"u8))
                {
                    if (map is not null)
                        throw Bad(index, null, "'weight_map' appears twice");
                    reader.Read();
                    map = ReadWeightMap(index, ref reader);
                }
                else if (reader.ValueTextEquals("metadata"u8))
                {
                    reader.Read();
                    totalSize = ReadTotalSize(index, ref reader);
                }
                else
                {
                    reader.Read();
                    reader.Skip();
                }
            }

            if (reader.Read())
                throw Bad(index, null, "content after the index's JSON object");
        }
        catch (JsonException e)
        {
            throw Bad(index, null, $"index is not valid JSON at byte {reader.BytesConsumed}: {SafeTensorsException.Printable(e.Message)}", e);
        }

        return (totalSize, map ?? throw Bad(index, null, "index has no 'weight_map' object"));
    }

    private static List<(string, string)> ReadWeightMap(string index, ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
            throw Bad(index, null, $"'weight_map' is {reader.TokenType}, expected an object of tensor name to shard file");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var map = new List<(string, string)>();
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string name = reader.GetString()!;
            reader.Read();
            if (!seen.Add(name))
                throw SafeTensorsHeader.Fail(SafeTensorsError.DuplicateName, index, name, "listed twice in 'weight_map'");
            if (reader.TokenType != JsonTokenType.String)
                throw Bad(index, name, $"'weight_map' value is {reader.TokenType}, expected a shard file name");
            string file = reader.GetString()!;
            CheckPlainFileName(index, name, file);
            map.Add((name, file));
        }

        return map;
    }

    private static long? ReadTotalSize(string index, ref Utf8JsonReader reader)
    {
        if (reader.TokenType == JsonTokenType.Null)
            return null;
        if (reader.TokenType != JsonTokenType.StartObject)
            throw Bad(index, null, $"'metadata' is {reader.TokenType}, expected an object");
        long? total = null;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            bool isTotal = reader.ValueTextEquals("total_size"u8);
            reader.Read();
            if (!isTotal)
            {
                reader.Skip();
                continue;
            }

            // Some producers write total_size as a float (e.g. 1.0e10); accept any non-negative integral number.
            if (reader.TokenType != JsonTokenType.Number)
                throw Bad(index, null, $"'metadata.total_size' is {reader.TokenType}, expected a number");
            if (reader.TryGetInt64(out long n) && n >= 0)
                total = n;
            else if (reader.TryGetDouble(out double d) && d >= 0 && d < 9.2e18 && d == Math.Floor(d))
                total = (long)d;
            else
                throw Bad(index, null, "'metadata.total_size' is not a non-negative integer");
        }

        return total;
    }

    /// <summary>A shard must be a plain file name in the checkpoint directory: no separators, no "..", not rooted.</summary>
    private static void CheckPlainFileName(string index, string tensor, string file)
    {
        bool plain = file.Length > 0
            && file != "." && file != ".."
            && file.IndexOfAny(['/', '\\', '\0']) < 0
            && file.IndexOfAny(System.IO.Path.GetInvalidFileNameChars()) < 0
            && !System.IO.Path.IsPathRooted(file)
            && System.IO.Path.GetFileName(file) == file;
        if (!plain)
            throw SafeTensorsHeader.Fail(SafeTensorsError.UnsafePath, index, tensor,
                $"shard '{SafeTensorsException.Printable(file)}' is not a plain file name inside the checkpoint directory");
    }

    private static SafeTensorsException Bad(string index, string? tensor, string what, Exception? inner = null)
        => SafeTensorsHeader.Fail(SafeTensorsError.InvalidIndex, index, tensor, what, inner);

    public bool Contains(string name) => _byName.ContainsKey(name);

    public TensorInfo Get(string name) => Find(name).Info;

    /// <summary>The file that holds <paramref name="name"/>.</summary>
    public SafeTensorsFile ShardOf(string name) => Find(name).Shard;

    /// <summary>Zero-copy bytes from the tensor's shard (valid until Dispose).</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        var (info, shard) = Find(name);
        return shard.GetBytes(info);
    }

    /// <summary>Zero-copy typed view; see <see cref="SafeTensorsFile.GetSpan{T}"/>.</summary>
    public ReadOnlySpan<T> GetSpan<T>(string name)
        where T : unmanaged => Find(name).Shard.GetSpan<T>(name);

    public float[] ReadFloat32(string name) => Find(name).Shard.ReadFloat32(name);

    private (TensorInfo Info, SafeTensorsFile Shard) Find(string name)
    {
        if (_byName.TryGetValue(name, out var found))
            return found;
        throw SafeTensorsHeader.Fail(SafeTensorsError.MissingTensor, IndexPath ?? (_shards.Length > 0 ? _shards[0].Path : Directory), name, "no such tensor in this checkpoint");
    }

    public void Dispose()
    {
        foreach (var s in _shards)
            s.Dispose();
    }

    public override string ToString() => $"{Directory} ({Tensors.Count} tensors in {_shards.Length} files)";
}
