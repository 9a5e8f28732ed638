using ILGpuMoE.IO;

namespace ILGpuMoE.Tests.IO;

/// <summary>Malformed files crafted byte by byte: each must fail with the right type, kind and a message naming file and tensor.</summary>
public class SafeTensorsValidationTests : TempDirTest
{
    private const string A4 = "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";

    private TEx Fails<TEx>(string header, int dataBytes, SafeTensorsError kind, string? tensor = null)
        where TEx : SafeTensorsException
        => Crafted.OpenFails<TEx>(Dir, Crafted.Bytes(header, Crafted.Counting(dataBytes)), kind, tensor);

    [TestCase(0)]
    [TestCase(7)]
    public void FileShorterThanPrefix(int length)
        => Crafted.OpenFails<SafeTensorsHeaderException>(Dir, Crafted.Counting(length), SafeTensorsError.Truncated);

    [Test]
    public void HeaderLengthBeyondFile()
        => Crafted.OpenFails<SafeTensorsHeaderException>(Dir, Crafted.Bytes("{}", [], headerLength: 3), SafeTensorsError.HeaderTooLarge);

    [TestCase(1UL << 62)]
    [TestCase(ulong.MaxValue)]
    public void HugeHeaderLengthFailsFastWithoutAllocating(ulong headerLength)
    {
        string path = Dir.File("huge.safetensors");
        File.WriteAllBytes(path, Crafted.Bytes("{\"a\":{}}", Crafted.Counting(16), headerLength));
        Crafted.Fails<SafeTensorsHeaderException>(() => SafeTensorsFile.Open(path), SafeTensorsError.HeaderTooLarge, path); // warm up (JIT)

        long before = GC.GetAllocatedBytesForCurrentThread();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        Assert.Throws<SafeTensorsHeaderException>(() => SafeTensorsFile.Open(path));
        watch.Stop();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(allocated, Is.LessThan(64 * 1024), "bytes allocated while refusing the header");
        // A hang guard, not a speed test: generous so a loaded 2-core CI machine never flakes.
        Assert.That(watch.ElapsedMilliseconds, Is.LessThan(10_000));
    }

    [Test]
    public void HeaderOver100MiBIsRefusedEvenWhenTheFileIsThatLarge()
    {
        // A sparse file: 101 MiB long on paper, a few bytes on disk.
        string path = Dir.File("big.safetensors");
        using (var fs = new FileStream(path, FileMode.CreateNew))
        {
            fs.Write(Crafted.Bytes("{}", [], headerLength: (100UL << 20) + 8));
            fs.SetLength(101L << 20);
        }

        Crafted.Fails<SafeTensorsHeaderException>(() => SafeTensorsFile.Open(path).Dispose(), SafeTensorsError.HeaderTooLarge, path);
    }

    [Test]
    public void HeaderNotUtf8()
        => Crafted.OpenFails<SafeTensorsHeaderException>(Dir, Crafted.Bytes([(byte)'{', (byte)'"', 0xFF, 0xFE, (byte)'"', (byte)':', (byte)'1', (byte)'}'], []),
            SafeTensorsError.InvalidHeader);

    [TestCase("{\"a\":")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",}}")]
    [TestCase("{} x")]
    [TestCase("")]
    [TestCase("{/*c*/}")]
    public void HeaderNotJson(string header) => Fails<SafeTensorsHeaderException>(header, 0, SafeTensorsError.InvalidHeader);

    [TestCase("[1, 2]")]
    [TestCase("\"text\"")]
    [TestCase("42")]
    public void HeaderNotAnObject(string header) => Fails<SafeTensorsHeaderException>(header, 0, SafeTensorsError.InvalidHeader);

    [TestCase("{\"t\":5}")]
    [TestCase("{\"t\":[0,4]}")]
    [TestCase("{\"t\":null}")]
    public void EntryNotAnObject(string header) => Fails<SafeTensorsEntryException>(header, 4, SafeTensorsError.InvalidEntry, "t");

    [TestCase("{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}")]
    [TestCase("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}")]
    [TestCase("{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}")]
    [TestCase("{\"t\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}")]
    [TestCase("{\"t\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}")]
    [TestCase("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}")]
    [TestCase("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}")]
    [TestCase("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}")]
    [TestCase("{\"t\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}")]
    public void EntryMissingOrIllTypedField(string header) => Fails<SafeTensorsEntryException>(header, 4, SafeTensorsError.InvalidEntry, "t");

    [TestCase("F128")]
    [TestCase("f32")]
    [TestCase("")]
    public void UnknownDType(string dtype)
    {
        var ex = Fails<SafeTensorsEntryException>($"{{\"t\":{{\"dtype\":\"{dtype}\",\"shape\":[1],\"data_offsets\":[0,4]}}}}", 4, SafeTensorsError.UnknownDType, "t");
        Assert.That(ex.Message, Does.Contain($"'{dtype}'"));
    }

    [TestCase("[-1, 4]")]
    [TestCase("[1.5]")]
    [TestCase("[\"2\"]")]
    [TestCase("[1099511627776, 1099511627776]")] // 2^80 elements: int64 overflow
    [TestCase("[4611686018427387904]")]          // 2^62 elements fit int64, x 4 bytes does not
    [TestCase("[99999999999999999999]")]          // does not fit int64 at all
    public void BadShape(string shape)
        => Fails<SafeTensorsEntryException>($"{{\"t\":{{\"dtype\":\"F32\",\"shape\":{shape},\"data_offsets\":[0,4]}}}}", 4, SafeTensorsError.InvalidShape, "t");

    [TestCase("[2]", "[0,4]", 4)]
    [TestCase("[]", "[0,8]", 8)]
    [TestCase("[0]", "[0,4]", 4)]
    public void ByteSpanNotShapeTimesElementSize(string shape, string offsets, int data)
        => Fails<SafeTensorsEntryException>($"{{\"t\":{{\"dtype\":\"F32\",\"shape\":{shape},\"data_offsets\":{offsets}}}}}", data, SafeTensorsError.SizeMismatch, "t");

    [TestCase("[0,8]", 4)]     // past the end of the data section
    [TestCase("[8,4]", 8)]     // begin after end
    [TestCase("[-4,0]", 4)]    // negative
    [TestCase("[0,18446744073709551615]", 4)]
    public void OffsetsOutsideDataSection(string offsets, int data)
        => Fails<SafeTensorsLayoutException>($"{{\"t\":{{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":{offsets}}}}}", data, SafeTensorsError.OffsetOutOfRange, "t");

    [Test]
    public void OverlappingTensors()
    {
        var ex = Fails<SafeTensorsLayoutException>(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            12, SafeTensorsError.Overlap, "b");
        Assert.That(ex.Message, Does.Contain("'a'"), "names the other tensor too");
    }

    [Test]
    public void ZeroSizeTensorInsideAnotherOverlaps()
        => Fails<SafeTensorsLayoutException>(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
            8, SafeTensorsError.Overlap, "z");

    [Test]
    public void HoleBetweenTensors()
        => Fails<SafeTensorsLayoutException>(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
            12, SafeTensorsError.Hole, "b");

    [Test]
    public void HoleBeforeFirstTensor()
        => Fails<SafeTensorsLayoutException>("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, SafeTensorsError.Hole, "a");

    [Test]
    public void TrailingBytesAfterLastTensor() => Fails<SafeTensorsLayoutException>("{" + A4 + "}", 8, SafeTensorsError.TrailingBytes, "a");

    [Test]
    public void DataWithoutTensorsIsTrailing() => Fails<SafeTensorsLayoutException>("{}", 4, SafeTensorsError.TrailingBytes);

    [Test]
    public void DuplicateTensorName()
        => Fails<SafeTensorsHeaderException>("{" + A4 + "," + A4 + "}", 4, SafeTensorsError.DuplicateName, "a");

    [Test]
    public void DuplicateTensorNameHiddenByEscape()
        => Fails<SafeTensorsHeaderException>("{" + A4 + ",\"\\u0061\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, SafeTensorsError.DuplicateName, "a");

    [Test]
    public void DuplicateMetadata()
        => Fails<SafeTensorsHeaderException>("{\"__metadata__\":{},\"__metadata__\":{}}", 0, SafeTensorsError.DuplicateName);

    [TestCase("{\"__metadata__\":{\"k\":1}}")]
    [TestCase("{\"__metadata__\":{\"k\":{\"nested\":\"x\"}}}")]
    [TestCase("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}")]
    [TestCase("{\"__metadata__\":[\"x\"]}")]
    [TestCase("{\"__metadata__\":\"x\"}")]
    public void MetadataNotStrings(string header) => Fails<SafeTensorsHeaderException>(header, 0, SafeTensorsError.InvalidMetadata);

    [Test]
    public void LegalEdgeCasesOpen()
    {
        // Zero-size tensors (begin == end, also at the very end), a scalar, unknown entry fields, null metadata, no padding.
        string header = "{\"__metadata__\":null,"
            + "\"z0\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
            + "\"s\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[0,2],\"extra\":{\"ignored\":[1,2]}},"
            + "\"z1\":{\"dtype\":\"BF16\",\"shape\":[3,0],\"data_offsets\":[2,2]}}";
        string path = Dir.File("ok.safetensors");
        File.WriteAllBytes(path, Crafted.Bytes(header, [0x34, 0x12]));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors, Has.Count.EqualTo(3));
        Assert.That(file.GetBytes("z0").Length, Is.Zero);
        Assert.That(file.GetBytes("z1").Length, Is.Zero);
        Assert.That(file.GetSpan<short>("s")[0], Is.EqualTo((short)0x1234));
        Assert.That(file.Metadata, Is.Empty);
    }

    [Test]
    public void EmptyHeaderObjectWithNoDataOpens()
    {
        string path = Dir.File("empty.safetensors");
        File.WriteAllBytes(path, Crafted.Bytes("{}      ", []));
        using var file = SafeTensorsFile.Open(path);
        Assert.That(file.Tensors, Is.Empty);
    }

    [Test]
    public void MissingPathAndDirectoryAreNamed()
    {
        string missing = Dir.File("nope.safetensors");
        Crafted.Fails<SafeTensorsNotFoundException>(() => SafeTensorsFile.Open(missing), SafeTensorsError.NotFound, missing);
        Crafted.Fails<SafeTensorsNotFoundException>(() => SafeTensorsFile.Open(Dir.Path), SafeTensorsError.NotFound, Dir.Path);
    }

    [Test]
    public void ControlCharactersInNamesDoNotBreakTheOneLineMessage()
    {
        string header = "{\"bad\\nname\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,4]}}";
        var ex = Fails<SafeTensorsEntryException>(header, 4, SafeTensorsError.UnknownDType);
        Assert.That(ex.TensorName, Is.EqualTo("bad\nname"));
        Assert.That(ex.Message, Does.Contain("bad\\u000aname"));
    }
}

/// <summary>Opening costs O(header): the data section is never read on open, however large, and big headers stay fast.</summary>
public class SafeTensorsScaleTests
{
    [Test]
    public void HugeSparseDataSectionOpensLazilyAndSlicesBeyondTwoGiB()
    {
        using var dir = new TempDir();
        string path = dir.File("sparse.safetensors");
        const long n = 3L << 30; // 3 GiB of U8, on paper only (a sparse file)
        string header = $"{{\"big\":{{\"dtype\":\"U8\",\"shape\":[{n}],\"data_offsets\":[0,{n}]}}}}";
        byte[] head = Crafted.Bytes(header, []);
        using (var fs = new FileStream(path, FileMode.CreateNew))
        {
            fs.Write(head);
            fs.SetLength(head.Length + n);
            fs.Position = head.Length + n - 1;
            fs.WriteByte(0x5A);
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        using var file = SafeTensorsFile.Open(path);
        watch.Stop();
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.LessThan(1 << 20), "open allocates O(header), not O(data)");
        Assert.That(watch.ElapsedMilliseconds, Is.LessThan(10_000), "hang guard");

        var info = file.Get("big");
        Crafted.Fails<SafeTensorsEntryException>(() => file.GetBytes("big"), SafeTensorsError.TooLarge, path, "big");
        var tail = file.GetBytes(info, n - 4, 4);
        Assert.That(tail.ToArray(), Is.EqualTo(new byte[] { 0, 0, 0, 0x5A }));
        Assert.Throws<ArgumentOutOfRangeException>(() => file.GetBytes(info, n - 3, 4));
    }

    [Test]
    public void TwentyThousandTensorHeaderValidatesQuickly()
    {
        using var dir = new TempDir();
        string path = dir.File("many.safetensors");
        var entries = Enumerable.Range(0, 20_000)
            .Select(i => new SafeTensorsWriter.Entry($"model.layers.{i}.weight", DType.U8, [1], new[] { (byte)(i | 1) }))
            .ToList();
        SafeTensorsWriter.Write(path, entries);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        using var file = SafeTensorsFile.Open(path);
        watch.Stop();
        Assert.That(file.Tensors, Has.Count.EqualTo(20_000));
        Assert.That(file.GetBytes("model.layers.12345.weight")[0], Is.EqualTo((byte)((12345 | 1) & 0xFF)));
        Assert.That(watch.ElapsedMilliseconds, Is.LessThan(10_000), "hang guard: a quadratic parse of 20,000 entries would take far longer");
    }
}
