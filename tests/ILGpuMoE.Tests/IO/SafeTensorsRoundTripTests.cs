using System.Buffers.Binary;
using ILGpuMoE.IO;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.IO;

public class SafeTensorsRoundTripTests
{
    private static byte[] RandomBytes(int seed, int n)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Test]
    public void EveryDTypeRoundTripsBitExact()
    {
        using var dir = new TempDir();
        string path = dir.File("all.safetensors");
        var entries = new List<SafeTensorsWriter.Entry>();
        int seed = 1;
        foreach (var dt in DTypes.All)
        {
            int size = DTypes.SizeOf(dt);
            string name = DTypes.ToName(dt);
            entries.Add(new(name + ".matrix", dt, [3, 5], RandomBytes(seed++, 15 * size)));
            entries.Add(new(name + ".scalar", dt, [], RandomBytes(seed++, size)));
            entries.Add(new(name + ".empty", dt, [4, 0, 2], Array.Empty<byte>()));
        }

        SafeTensorsWriter.Write(path, entries);
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors.Select(t => t.Name), Is.EqualTo(entries.Select(e => e.Name)), "header order = given order");
        foreach (var e in entries)
        {
            var info = file.Get(e.Name);
            Assert.That(info.DType, Is.EqualTo(e.DType), e.Name);
            Assert.That(info.Shape, Is.EqualTo(e.Shape), e.Name);
            Assert.That(info.ByteLength, Is.EqualTo(e.Data.Length), e.Name);
            Assert.That(file.GetBytes(e.Name).ToArray(), Is.EqualTo(e.Data.ToArray()), e.Name);
        }

        Assert.That(file.Get("F32.scalar").ElementCount, Is.EqualTo(1));
        Assert.That(file.Get("I8.empty").ElementCount, Is.EqualTo(0));
        Assert.That(file.Metadata, Is.Empty);
    }

    [Test]
    public void DTypeNamesParseBackAndSizesAreTheFormats()
    {
        int[] expectedSizes = [8, 4, 2, 2, 8, 4, 2, 1, 1, 1, 1, 1]; // F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL F8_E4M3 F8_E5M2
        Assert.That(DTypes.All.Select(DTypes.SizeOf), Is.EqualTo(expectedSizes));
        foreach (var dt in DTypes.All)
        {
            Assert.That(DTypes.TryParse(DTypes.ToName(dt), out var back), Is.True);
            Assert.That(back, Is.EqualTo(dt));
        }

        Assert.That(DTypes.TryParse("bf16", out _), Is.False, "names are case-sensitive");
        Assert.That(DTypes.ToName(DType.F8_E4M3), Is.EqualTo("F8_E4M3"));
    }

    [Test]
    public void TypedSpansViewTheMappedBytes()
    {
        using var dir = new TempDir();
        string path = dir.File("typed.safetensors");
        int[] ints = Data.Ints(7, 11, -1000, 1000);
        float[] floats = Data.Gaussian(8, 13);
        SafeTensorsWriter.Write(path, [
            SafeTensorsWriter.FromSpan<int>("ints", DType.I32, [11], ints),
            SafeTensorsWriter.FromFloats("floats", [13], floats),
        ]);
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.GetSpan<int>("ints").ToArray(), Is.EqualTo(ints));
        Check.BitEqual(floats, file.GetSpan<float>("floats"), "floats");
        var ex = Assert.Throws<SafeTensorsEntryException>(() => file.GetSpan<long>("ints"))!;
        Assert.That(ex.Kind, Is.EqualTo(SafeTensorsError.WrongDType));
        Assert.That(ex.Message, Does.Contain(path).And.Contain("'ints'"));
        Assert.Throws<SafeTensorsEntryException>(() => file.ReadFloat32("ints"));
    }

    [TestCase(DType.F32)]
    [TestCase(DType.F16)]
    [TestCase(DType.BF16)]
    public void FromFloatsAndReadFloat32AgreeWithIndependentRounding(DType dtype)
    {
        using var dir = new TempDir();
        string path = dir.File("floats.safetensors");
        float[] x = Data.Gaussian(42 + (int)dtype, 6 * 7, std: 3);
        SafeTensorsWriter.Write(path, [SafeTensorsWriter.FromFloats("w", [6, 7], x, dtype)]);
        using var file = SafeTensorsFile.Open(path);
        float[] expected = dtype switch
        {
            DType.F16 => Data.RoundToHalf(x),
            DType.BF16 => Data.RoundToBf16(x),
            _ => x,
        };
        Check.BitEqual(expected, file.ReadFloat32("w"), DTypes.ToName(dtype));
    }

    [Test]
    public void Bf16RoundsToNearestEvenAndKeepsSpecials()
    {
        // bf16 keeps 7 mantissa bits: near 1.0 its ulp is 2^-7.
        float[] input =
        [
            1f + MathF.Pow(2, -8),         // exact tie between 1 (even) and 1 + 2^-7 (odd): down to 1
            1f + 3 * MathF.Pow(2, -8),     // tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up
            1f + MathF.Pow(2, -8) + MathF.Pow(2, -20), // just above the tie: up to 1 + 2^-7
            -2.5f,                          // exact
            float.PositiveInfinity,
            float.NegativeInfinity,
            float.MaxValue,                 // rounds past the largest bf16 to +inf
            float.NaN,
            BitConverter.UInt32BitsToSingle(0xFF800001), // negative NaN whose payload lives only in the low bits
        ];
        float[] expected =
        [
            1f,
            1f + MathF.Pow(2, -6),
            1f + MathF.Pow(2, -7),
            -2.5f,
            float.PositiveInfinity,
            float.NegativeInfinity,
            float.PositiveInfinity,
        ];

        var entry = SafeTensorsWriter.FromFloats("b", [input.Length], input, DType.BF16);
        var span = entry.Data.Span;
        for (int i = 0; i < expected.Length; i++)
        {
            float got = BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(span[(2 * i)..]) << 16);
            Assert.That(got, Is.EqualTo(expected[i]), $"element {i} ({input[i]:R})");
        }

        ushort nan = BinaryPrimitives.ReadUInt16LittleEndian(span[(2 * 7)..]);
        ushort negNan = BinaryPrimitives.ReadUInt16LittleEndian(span[(2 * 8)..]);
        Assert.That(float.IsNaN(BitConverter.UInt32BitsToSingle((uint)nan << 16)), Is.True);
        Assert.That(float.IsNaN(BitConverter.UInt32BitsToSingle((uint)negNan << 16)), Is.True, "truncating would give -inf");
        Assert.That(negNan & 0x8000, Is.Not.Zero, "sign kept");
    }

    [Test]
    public void MetadataRoundTrips()
    {
        using var dir = new TempDir();
        string path = dir.File("meta.safetensors");
        var metadata = new Dictionary<string, string>
        {
            ["format"] = "pt",
            ["note"] = "quotes \" backslash \\ newline \n unicode é 漢 +<>&",
            ["empty"] = "",
        };
        SafeTensorsWriter.Write(path, [SafeTensorsWriter.FromFloats("x", [2], [1f, 2f])], metadata);
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Metadata, Is.EquivalentTo(metadata));
    }

    [Test]
    public void HeaderIsSpacePaddedToEightBytesAndDataIsContiguous()
    {
        using var dir = new TempDir();
        string path = dir.File("pad.safetensors");
        SafeTensorsWriter.Write(path, [
            SafeTensorsWriter.FromFloats("a", [3], [1f, 2f, 3f]),
            SafeTensorsWriter.FromFloats("bb", [1], [4f], DType.BF16),
            SafeTensorsWriter.FromFloats("c", [2], [5f, 6f], DType.F16),
        ]);
        byte[] raw = File.ReadAllBytes(path);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(raw);
        Assert.That(n % 8, Is.Zero);
        Assert.That(raw[8 + (int)n - 1], Is.EqualTo((byte)' ').Or.EqualTo((byte)'}'));
        Assert.That(raw.Length, Is.EqualTo(8 + n + 12 + 2 + 4));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors.Select(t => t.Offset), Is.EqualTo(new long[] { 0, 12, 14 }));
        Assert.That(file.DataStart % 8, Is.Zero);
    }

    [Test]
    public void WriteReplacesAnExistingFileAndLeavesNoTemporaries()
    {
        using var dir = new TempDir();
        string path = dir.File("over.safetensors");
        File.WriteAllText(path, "not a safetensors file");
        SafeTensorsWriter.Write(path, [SafeTensorsWriter.FromFloats("x", [2], [1f, 2f])]);
        SafeTensorsWriter.Write(path, [SafeTensorsWriter.FromFloats("y", [1], [3f])]);
        Assert.That(Directory.GetFiles(dir.Path), Is.EqualTo(new[] { path }));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "y" }));
    }

    [Test]
    public void WriterRefusesInconsistentEntries()
    {
        using var dir = new TempDir();
        string path = dir.File("w.safetensors");
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [new("x", DType.F32, [3], new byte[8])]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [new("x", DType.F32, [-1], Array.Empty<byte>())]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [
            SafeTensorsWriter.FromFloats("x", [1], [1f]), SafeTensorsWriter.FromFloats("x", [1], [2f])]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.FromFloats("x", [1], [1f], DType.I32));
        Assert.That(File.Exists(path), Is.False);
        Assert.That(Directory.GetFiles(dir.Path), Is.Empty, "no temporaries left behind");
    }

    [Test]
    public void UnknownTensorAndUseAfterDispose()
    {
        using var dir = new TempDir();
        string path = dir.File("d.safetensors");
        SafeTensorsWriter.Write(path, [SafeTensorsWriter.FromFloats("x", [2], [1f, 2f])]);
        var file = SafeTensorsFile.Open(path);
        Crafted.Fails<SafeTensorsNotFoundException>(() => file.Get("nope"), SafeTensorsError.MissingTensor, path, "nope");
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.GetBytes("x"));
        file.Dispose(); // idempotent
    }
}
