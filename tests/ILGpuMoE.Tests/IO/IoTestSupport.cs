using System.Buffers.Binary;
using System.Text;
using ILGpuMoE.IO;

namespace ILGpuMoE.Tests.IO;

/// <summary>A fresh directory under the system temp dir, deleted on Dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ilgpumoe-io-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        if (Directory.Exists(Path))
            Directory.Delete(Path, recursive: true);
    }
}

/// <summary>Base for test classes that want a fresh temp directory per test.</summary>
public abstract class TempDirTest
{
    protected TempDir Dir { get; private set; } = null!;

    [SetUp]
    public void CreateTempDir() => Dir = new TempDir();

    [TearDown]
    public void DeleteTempDir() => Dir.Dispose();
}

/// <summary>Hand-crafted safetensors bytes and the assertions every malformed-input test shares.</summary>
public static class Crafted
{
    /// <summary>8-byte little-endian header length (the real one unless overridden), the header text, the data bytes.</summary>
    public static byte[] Bytes(string headerJson, byte[] data, ulong? headerLength = null)
    {
        byte[] header = Encoding.UTF8.GetBytes(headerJson);
        return Bytes(header, data, headerLength);
    }

    public static byte[] Bytes(byte[] header, byte[] data, ulong? headerLength = null)
    {
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, headerLength ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        return bytes;
    }

    /// <summary>Data bytes 1, 2, 3, ... (never all zero) so offsets mistakes show up as wrong values.</summary>
    public static byte[] Counting(int n) => Enumerable.Range(1, n).Select(i => (byte)i).ToArray();

    /// <summary>
    /// Asserts that <paramref name="open"/> throws exactly <typeparamref name="TEx"/> with <paramref name="kind"/>, and
    /// that its one-line message names <paramref name="file"/> and (when given) the tensor.
    /// </summary>
    public static TEx Fails<TEx>(Action open, SafeTensorsError kind, string file, string? tensor = null)
        where TEx : SafeTensorsException
    {
        var ex = Assert.Throws<TEx>(() => open())!;
        Assert.That(ex.Kind, Is.EqualTo(kind), ex.Message);
        Assert.That(ex.Message, Does.Contain(file), "message names the file");
        Assert.That(ex.Message, Does.Not.Contain('\n'), "one-line message");
        Assert.That(ex.FilePath, Is.EqualTo(file));
        if (tensor is not null)
        {
            Assert.That(ex.Message, Does.Contain($"'{tensor}'"), "message names the tensor");
            Assert.That(ex.TensorName, Is.EqualTo(tensor));
        }

        return ex;
    }

    /// <summary>Writes <paramref name="bytes"/> to dir/bad.safetensors and asserts opening it fails as described.</summary>
    public static TEx OpenFails<TEx>(TempDir dir, byte[] bytes, SafeTensorsError kind, string? tensor = null)
        where TEx : SafeTensorsException
    {
        string path = dir.File("bad.safetensors");
        System.IO.File.WriteAllBytes(path, bytes);
        return Fails<TEx>(() => SafeTensorsFile.Open(path).Dispose(), kind, path, tensor);
    }
}
