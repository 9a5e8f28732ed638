using System.Text.Json;
using ILGpuMoE.Kernels;
using ILGpuMoE.Ptx;

namespace ILGpuMoE.Tests.Ptx;

/// <summary>The PTX gate's first half: every [KernelInfo] kernel compiles for sm_90 with no GPU present.</summary>
public class PtxExportTests
{
    [Test]
    public void EveryKernelCompilesForSm90()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ilgpumoe-ptx-" + Guid.NewGuid().ToString("N"));
        try
        {
            var kernels = PtxExporter.Export(dir);
            var families = PtxExporter.FindKernels().Select(k => k.Info.Family).Distinct().ToList();
            // The families every Mixtral forward pass needs; a kernel that loses its [KernelInfo] drops out of the gate.
            foreach (var family in new[] { "dense/", "attention/", "moe/" })
                Assert.That(families.Any(f => f.StartsWith(family, StringComparison.Ordinal)), $"no kernel family under {family}");

            var failed = kernels.Where(k => k.Error is not null).Select(k => $"{k.Name}: {k.Error}").ToList();
            Assert.That(failed, Is.Empty);
            foreach (var k in kernels)
            {
                string ptx = File.ReadAllText(Path.Combine(dir, k.File));
                Assert.That(ptx, Does.Contain(".entry"), k.Name);
                Assert.That(ptx, Does.Contain(".version 7.8"), k.Name);
            }

            // Tensor-core kernels are exported after the asm-operand pass, named "mma", and listed with their instruction.
            var tensorCore = kernels.Where(k => k.TensorCore is not null).ToList();
            Assert.That(tensorCore.Select(k => k.Family), Does.Contain("tensor-core/peak"));
            foreach (var k in tensorCore)
            {
                string ptx = File.ReadAllText(Path.Combine(dir, k.File));
                Assert.That(k.File, Does.Contain("mma"), k.Name);
                Assert.That(ptx, Does.Not.Contain(".local"), $"{k.Name}: {k.AsmOperands}");
                Assert.That(k.AsmOperands, Does.StartWith("promoted "), k.Name);
            }

            using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "manifest.json")));
            Assert.That(manifest.RootElement.GetProperty("kernels").GetArrayLength(), Is.EqualTo(kernels.Count));
            Assert.That(kernels.Select(k => k.File).Distinct().Count(), Is.EqualTo(kernels.Count), "file names must be unique");

            // "decode": true exactly on the entries whose [KernelInfo] Decode is set, with "decodeUse" naming it.
            var decodeOf = PtxExporter.FindKernels().ToDictionary(k => $"{k.Method.DeclaringType!.FullName}.{k.Method.Name}", k => k.Info.Decode);
            foreach (var entry in manifest.RootElement.GetProperty("kernels").EnumerateArray())
            {
                var use = decodeOf[entry.GetProperty("method").GetString()!];
                string name = entry.GetProperty("name").GetString()!;
                Assert.That(entry.TryGetProperty("decode", out var decode) && decode.GetBoolean(), Is.EqualTo(use != DecodeUse.None), name);
                Assert.That(entry.TryGetProperty("decodeUse", out var how) ? how.GetString() : null,
                    Is.EqualTo(use == DecodeUse.None ? null : SassKernelReport.DecodeName(use)), name);
            }
        }
        finally
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
    }
}
