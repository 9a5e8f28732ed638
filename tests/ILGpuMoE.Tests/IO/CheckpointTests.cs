using System.Text.Json;
using ILGpuMoE.IO;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.IO;

public class CheckpointTests : TempDirTest
{
    /// <summary>Tensors of uneven sizes and several dtypes, so the split has real work to do.</summary>
    private static List<SafeTensorsWriter.Entry> Entries()
    {
        var list = new List<SafeTensorsWriter.Entry>();
        int[] sizes = [40, 7, 300, 64, 1, 128, 90, 33, 250];
        DType[] dtypes = [DType.F32, DType.BF16, DType.F16];
        for (int i = 0; i < sizes.Length; i++)
            list.Add(SafeTensorsWriter.FromFloats($"layers.{i}.w", [sizes[i]], Data.Gaussian(100 + i, sizes[i]), dtypes[i % 3]));
        return list;
    }

    private string WriteIndex(string weightMapJson)
    {
        string path = Dir.File(Checkpoint.IndexFileName);
        File.WriteAllText(path, "{\"metadata\":{\"total_size\":4},\"weight_map\":" + weightMapJson + "}");
        return path;
    }

    private void WriteShard(string file, params string[] tensors)
        => SafeTensorsWriter.Write(Dir.File(file), tensors.Select(t => SafeTensorsWriter.FromFloats(t, [1], [1.5f])));

    [Test]
    public void ThreeShardRoundTrip()
    {
        var entries = Entries();
        SafeTensorsWriter.WriteSharded(Dir.Path, entries, 3);

        string[] expectedFiles = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"];
        Assert.That(Directory.GetFiles(Dir.Path).Select(Path.GetFileName).Order(),
            Is.EqualTo(expectedFiles.Append(Checkpoint.IndexFileName).Order()), "no temporaries, no extra files");

        using var ckpt = Checkpoint.Open(Dir.Path);
        Assert.That(ckpt.IndexPath, Is.EqualTo(Dir.File(Checkpoint.IndexFileName)));
        Assert.That(ckpt.Shards.Select(s => Path.GetFileName(s.Path)), Is.EqualTo(expectedFiles));
        Assert.That(ckpt.Tensors.Select(t => t.Name), Is.EqualTo(entries.Select(e => e.Name)));
        long total = entries.Sum(e => (long)e.Data.Length);
        Assert.That(ckpt.TotalSize, Is.EqualTo(total));
        foreach (var e in entries)
        {
            Assert.That(ckpt.GetBytes(e.Name).ToArray(), Is.EqualTo(e.Data.ToArray()), e.Name);
            Assert.That(ckpt.Get(e.Name).DType, Is.EqualTo(e.DType));
            Check.BitEqual(ckpt.ShardOf(e.Name).ReadFloat32(e.Name), ckpt.ReadFloat32(e.Name), e.Name);
        }

        // Roughly equal: contiguous greedy split, so no shard exceeds its share by more than one tensor.
        long largest = entries.Max(e => (long)e.Data.Length);
        foreach (var shard in ckpt.Shards)
        {
            long bytes = shard.Tensors.Sum(t => t.ByteLength);
            Assert.That(shard.Tensors, Is.Not.Empty, shard.Path);
            Assert.That(bytes, Is.LessThanOrEqualTo(total / 3 + largest), shard.Path);
        }

        using var index = JsonDocument.Parse(File.ReadAllBytes(ckpt.IndexPath!));
        Assert.That(index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64(), Is.EqualTo(total));
        Assert.That(index.RootElement.GetProperty("weight_map").EnumerateObject().Count(), Is.EqualTo(entries.Count));
    }

    [Test]
    public void ShardCountOutOfRangeIsRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => SafeTensorsWriter.WriteSharded(Dir.Path, Entries().Take(2), 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => SafeTensorsWriter.WriteSharded(Dir.Path, Entries(), 0));
    }

    [Test]
    public void SingleFileCheckpoint()
    {
        var entries = Entries();
        SafeTensorsWriter.Write(Dir.File(Checkpoint.SingleFileName), entries, new Dictionary<string, string> { ["format"] = "pt" });
        using var ckpt = Checkpoint.Open(Dir.Path);
        Assert.That(ckpt.IndexPath, Is.Null);
        Assert.That(ckpt.Shards, Has.Count.EqualTo(1));
        Assert.That(ckpt.Metadata["format"], Is.EqualTo("pt"));
        Assert.That(ckpt.Tensors.Select(t => t.Name), Is.EqualTo(entries.Select(e => e.Name)));
        Assert.That(ckpt.GetSpan<ushort>("layers.1.w").Length, Is.EqualTo(7));
        Crafted.Fails<SafeTensorsNotFoundException>(() => ckpt.Get("absent"), SafeTensorsError.MissingTensor, Dir.File(Checkpoint.SingleFileName), "absent");

        using var direct = Checkpoint.Open(Dir.File(Checkpoint.SingleFileName)); // a file path is a one-file checkpoint
        Assert.That(direct.Tensors, Has.Count.EqualTo(entries.Count));
    }

    [Test]
    public void IndexWinsOverSingleFileAndShardsAreOpenedOnce()
    {
        WriteShard("a.safetensors", "x", "y", "unlisted");
        WriteShard("b.safetensors", "z");
        WriteShard(Checkpoint.SingleFileName, "decoy");
        WriteIndex("{\"x\":\"a.safetensors\",\"z\":\"b.safetensors\",\"y\":\"a.safetensors\"}");
        using var ckpt = Checkpoint.Open(Dir.Path);
        Assert.That(ckpt.Shards, Has.Count.EqualTo(2));
        Assert.That(ckpt.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "x", "z", "y" }));
        Assert.That(ckpt.Contains("unlisted"), Is.False, "a shard tensor the index does not list is ignored, not an error");
        Assert.That(ckpt.Contains("decoy"), Is.False);
        Assert.That(ckpt.ShardOf("y"), Is.SameAs(ckpt.ShardOf("x")));
        Assert.That(ckpt.ReadFloat32("z"), Is.EqualTo(new[] { 1.5f }));
    }

    [Test]
    public void IndexNamingMissingShard()
    {
        WriteShard("a.safetensors", "x");
        string index = WriteIndex("{\"x\":\"a.safetensors\",\"y\":\"gone.safetensors\"}");
        var ex = Crafted.Fails<SafeTensorsNotFoundException>(() => Checkpoint.Open(Dir.Path), SafeTensorsError.MissingShard, index, "y");
        Assert.That(ex.Message, Does.Contain("gone.safetensors"));
    }

    [Test]
    public void TensorListedButAbsentFromShard()
    {
        WriteShard("a.safetensors", "x");
        WriteIndex("{\"x\":\"a.safetensors\",\"y\":\"a.safetensors\"}");
        Crafted.Fails<SafeTensorsNotFoundException>(() => Checkpoint.Open(Dir.Path), SafeTensorsError.MissingTensor, Dir.File("a.safetensors"), "y");
    }

    [TestCase("../outside.safetensors")]
    [TestCase("sub/a.safetensors")]
    [TestCase("..")]
    [TestCase(".")]
    [TestCase("")]
    [TestCase("/tmp/abs.safetensors")]
    [TestCase("..\\\\outside.safetensors")]
    public void PathTraversalRefused(string file)
    {
        // Valid files really exist at ../outside.safetensors and sub/a.safetensors: refusal must not depend on absence.
        string ckptDir = Dir.File("ckpt");
        Directory.CreateDirectory(Path.Combine(ckptDir, "sub"));
        SafeTensorsWriter.Write(Dir.File("outside.safetensors"), [SafeTensorsWriter.FromFloats("x", [1], [1f])]);
        SafeTensorsWriter.Write(Path.Combine(ckptDir, "sub", "a.safetensors"), [SafeTensorsWriter.FromFloats("x", [1], [1f])]);
        string index = Path.Combine(ckptDir, Checkpoint.IndexFileName);
        File.WriteAllText(index, "{\"weight_map\":{\"x\":\"" + file + "\"}}");
        Crafted.Fails<SafeTensorsIndexException>(() => Checkpoint.Open(ckptDir), SafeTensorsError.UnsafePath, index, "x");
    }

    [TestCase("not json")]
    [TestCase("[]")]
    [TestCase("{\"metadata\":{}}")]
    [TestCase("{\"weight_map\":[\"a\"]}")]
    [TestCase("{\"weight_map\":{\"x\":5}}")]
    [TestCase("{\"weight_map\":{},\"weight_map\":{}}")]
    [TestCase("{\"metadata\":{\"total_size\":\"big\"},\"weight_map\":{}}")]
    [TestCase("{\"metadata\":{\"total_size\":-1},\"weight_map\":{}}")]
    [TestCase("{\"weight_map\":{}} trailing")]
    public void MalformedIndex(string json)
    {
        string index = Dir.File(Checkpoint.IndexFileName);
        File.WriteAllText(index, json);
        Crafted.Fails<SafeTensorsIndexException>(() => Checkpoint.Open(Dir.Path), SafeTensorsError.InvalidIndex, index);
    }

    [Test]
    public void DuplicateTensorInWeightMap()
    {
        WriteShard("a.safetensors", "x");
        string index = WriteIndex("{\"x\":\"a.safetensors\",\"x\":\"a.safetensors\"}");
        Crafted.Fails<SafeTensorsHeaderException>(() => Checkpoint.Open(Dir.Path), SafeTensorsError.DuplicateName, index, "x");
    }

    [Test]
    public void BadShardIsReportedByItsOwnPath()
    {
        File.WriteAllBytes(Dir.File("a.safetensors"), [1, 2, 3]);
        WriteIndex("{\"x\":\"a.safetensors\"}");
        Crafted.Fails<SafeTensorsHeaderException>(() => Checkpoint.Open(Dir.Path), SafeTensorsError.Truncated, Dir.File("a.safetensors"));
    }

    [Test]
    public void EmptyOrMissingDirectory()
    {
        Crafted.Fails<SafeTensorsNotFoundException>(() => Checkpoint.Open(Dir.Path), SafeTensorsError.NotFound, Dir.Path);
        string missing = Dir.File("nowhere");
        Crafted.Fails<SafeTensorsNotFoundException>(() => Checkpoint.Open(missing), SafeTensorsError.NotFound, missing);
    }
}
