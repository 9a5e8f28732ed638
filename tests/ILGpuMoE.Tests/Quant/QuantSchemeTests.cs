using System.Text.Json.Nodes;
using ILGpuMoE.IO;
using ILGpuMoE.Quant;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Quant;

/// <summary>
/// The contract every registered scheme (QuantSchemes.All) keeps with the code that does not know it: the memory plan's
/// bytes equal what its quantizer builds, the tensors `ilgpumoe quantize` plans equal the bytes it writes, our checkpoint
/// form reads back the same packed values, and stacking experts keeps each expert's values. A scheme added to the
/// registry is checked here without a new test.
/// </summary>
public class QuantSchemeTests
{
    // Every listed --quant name plus the spellings only the int4 parser takes.
    public static IEnumerable<string> Schemes => QuantSpec.Names.Skip(1).Concat(["int4-per-row", "int4-per-row-asym", "int4-g64-asym"]);

    // 136 rows: FP8's 128-row blocks leave a partial block; 256 columns: two 128-column blocks, two int4 g128 groups.
    private const int Rows = 136, Cols = 256;

    [Test]
    public void NamesAreUniqueAndParseToThemselves()
    {
        Assert.That(QuantSpec.Names, Is.Unique);
        foreach (var name in QuantSpec.Names.Skip(1))
            Assert.That(QuantSpec.Parse(name)!.Name, Is.EqualTo(name));
        Assert.That(QuantSchemes.CheckpointMethods, Is.Unique.And.Contains(QuantSource.OurMethod));
    }

    [TestCaseSource(nameof(Schemes))]
    public void PlannedBytesAreTheQuantizedBytes(string name)
    {
        var spec = QuantSpec.Parse(name)!;
        spec.Check("w", Rows, Cols);
        var m = spec.Quantize(Data.Gaussian(name.Length * 31 + 5, (long)Rows * Cols), Rows, Cols);
        Assert.That((m.Scheme, m.Rows, m.Cols, m.RowWords), Is.EqualTo((spec.Layout, Rows, Cols, spec.RowWords(Cols))));
        Assert.That(m.ByteSize, Is.EqualTo(spec.Bytes(Rows, Cols)), "MemoryPlan's bytes per matrix");
        Assert.That(spec.Bytes(Rows, Cols, 3), Is.EqualTo(3 * spec.Bytes(Rows, Cols)));

        var planned = QuantSource.Tensors(spec, "w", Rows, Cols);
        var written = m.PackedBytes();
        Assert.That(written.Select(b => b.LongLength),
            Is.EqualTo(planned.Select(t => t.Shape.Aggregate(1L, (a, b) => a * b) * DTypes.SizeOf(t.DType))), "planned vs written tensor bytes");
        Assert.That(written.Sum(b => b.LongLength), Is.EqualTo(m.ByteSize));
    }

    [TestCaseSource(nameof(Schemes))]
    public void OurCheckpointFormReadsBackTheSameValues(string name)
    {
        var spec = QuantSpec.Parse(name)!;
        var m = spec.Quantize(Data.Gaussian(name.Length * 17 + 3, (long)Rows * Cols), Rows, Cols);
        string dir = Path.Combine(Path.GetTempPath(), "ilgpumoe-scheme-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var planned = QuantSource.Tensors(spec, "mlp.up", Rows, Cols);
            var bytes = m.PackedBytes();
            SafeTensorsWriter.Write(Path.Combine(dir, Checkpoint.SingleFileName),
                planned.Select((t, i) => new SafeTensorsWriter.Entry(t.Name, t.DType, t.Shape, bytes[i])));
            File.WriteAllText(Path.Combine(dir, "config.json"), new JsonObject { ["quantization_config"] = QuantSource.ConfigFor(spec) }.ToJsonString());

            var source = QuantSource.Load(dir)!;
            Assert.That((source.Method, source.PlanSpec), Is.EqualTo((QuantSource.OurMethod, spec)));
            using var ck = Checkpoint.Open(dir);
            var back = source.Read(ck, "mlp.up.weight", Rows, Cols);
            Assert.That((back.GetType(), back.TypeName, back.Words), Is.EqualTo((m.GetType(), m.TypeName, m.Words)));
            Check.BitEqual(QuantTestData.RefDequant(m), QuantTestData.RefDequant(back), name);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestCaseSource(nameof(Schemes))]
    public void StackKeepsEachExpertsValues(string name)
    {
        var spec = QuantSpec.Parse(name)!;
        var parts = Enumerable.Range(0, 3).Select(e => spec.Quantize(Data.Gaussian(e * 7 + name.Length, (long)Rows * Cols), Rows, Cols)).ToArray();
        var stacked = QuantizedMatrix.Stack(parts);
        Assert.That((stacked.Rows, stacked.MatrixRows, stacked.ByteSize), Is.EqualTo((3 * Rows, Rows, parts.Sum(p => p.ByteSize))));
        Check.BitEqual(parts.SelectMany(QuantTestData.RefDequant).ToArray(), QuantTestData.RefDequant(stacked), $"{name} stacked");
        Assert.That(() => QuantizedMatrix.Stack([stacked, stacked]), Throws.ArgumentException.With.Message.Contains("already stacked"));
    }
}
