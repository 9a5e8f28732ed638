using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using ILGpuMoE.Kernels;
using ILGpuMoE.Ptx;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Ptx;

/// <summary>
/// The PTX gate's first half: every [KernelInfo] kernel compiles for sm_90 with no GPU present; and the export's ABI
/// (manifest.json "abi", abi.tsv) agrees with the PTX it describes. One export (about a minute) serves every test.
/// </summary>
public partial class PtxExportTests
{
    private string _dir = "";
    private IReadOnlyList<PtxKernel> _kernels = [];

    [OneTimeSetUp]
    public void ExportOnce()
    {
        _dir = Path.Combine(Path.GetTempPath(), "ilgpumoe-ptx-" + Guid.NewGuid().ToString("N"));
        _kernels = PtxExporter.Export(_dir);
    }

    [OneTimeTearDown]
    public void RemoveExport()
    {
        if (Directory.Exists(_dir))
            Directory.Delete(_dir, recursive: true);
    }

    [Test]
    public void EveryKernelCompilesForSm90()
    {
        string dir = _dir;
        var kernels = _kernels;
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

    /// <summary>
    /// The ABI a C engine launches with, read from manifest.json, against the PTX's own .entry: the entry symbol, every
    /// .param's size and alignment, each parameter's offset as the driver lays the buffer out (C struct layout, read
    /// here from the declarations, not from the exporter), the buffer size, the minimum sm from .target; and every
    /// ld.param of the kernel body reads a declared field at that field's offset and width.
    /// </summary>
    [Test]
    public void ManifestAbiAgreesWithThePtxParameters()
    {
        using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "manifest.json")));
        var all = manifest.RootElement.GetProperty("kernels").EnumerateArray().ToList();
        Assert.That(all, Has.Count.EqualTo(_kernels.Count));
        int loads = 0, fields = 0;
        foreach (var k in all)
        {
            string name = k.GetProperty("name").GetString()!;
            string ptx = File.ReadAllText(Path.Combine(_dir, k.GetProperty("file").GetString()!));
            var abi = k.GetProperty("abi");
            var entry = EntryLine().Match(ptx);
            Assert.That(entry.Success, name);
            Assert.That(abi.GetProperty("entry").GetString(), Is.EqualTo(entry.Groups[1].Value), name);
            Assert.That(abi.GetProperty("minSm").GetInt32(), Is.EqualTo(int.Parse(Target().Match(ptx).Groups[1].Value, CultureInfo.InvariantCulture)), name);

            string list = ptx[entry.Index..ptx.IndexOf(')', entry.Index)];
            var declared = ParamDeclaration().Matches(list).ToList();
            var ps = abi.GetProperty("params").EnumerateArray().ToList();
            Assert.That(ps, Has.Count.EqualTo(declared.Count), $"{name}: parameters");
            int offset = 0, maxAlign = 1;
            var bySymbol = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
            for (int i = 0; i < declared.Count; i++)
            {
                var d = declared[i];
                int width = int.Parse(d.Groups[3].Value, CultureInfo.InvariantCulture) / 8;
                int bytes = width * (d.Groups[5].Success ? int.Parse(d.Groups[5].Value, CultureInfo.InvariantCulture) : 1);
                int align = d.Groups[1].Success ? int.Parse(d.Groups[1].Value, CultureInfo.InvariantCulture) : width;
                offset = (offset + align - 1) / align * align;
                var p = ps[i];
                string what = $"{name} parameter {i} ({d.Groups[4].Value})";
                Assert.That(p.GetProperty("symbol").GetString(), Is.EqualTo(d.Groups[4].Value), what);
                Assert.That(p.GetProperty("bytes").GetInt32(), Is.EqualTo(bytes), what);
                Assert.That(p.GetProperty("align").GetInt32(), Is.EqualTo(align), what);
                Assert.That(p.GetProperty("offset").GetInt32(), Is.EqualTo(offset), what);
                offset += bytes;
                maxAlign = Math.Max(maxAlign, align);
                bySymbol[d.Groups[4].Value] = p;

                // Fields tile the parameter without overlap; an ArrayView is a pointer at 0 and its i64 length at 8.
                int end = 0;
                foreach (var f in p.GetProperty("fields").EnumerateArray())
                {
                    int at = f.GetProperty("offset").GetInt32(), size = f.GetProperty("bytes").GetInt32();
                    Assert.That(at, Is.GreaterThanOrEqualTo(end), $"{what}: field {f.GetProperty("name")} overlaps");
                    Assert.That(at % size, Is.Zero, $"{what}: field {f.GetProperty("name")} misaligned");
                    end = at + size;
                    fields++;
                }

                Assert.That(end, Is.LessThanOrEqualTo(bytes), what);
                if (p.GetProperty("type").GetString()!.StartsWith("ArrayView<", StringComparison.Ordinal))
                {
                    var f = p.GetProperty("fields").EnumerateArray().Select(x => (x.GetProperty("type").GetString(), x.GetProperty("offset").GetInt32())).ToList();
                    Assert.That(f, Is.EqualTo(new[] { ("ptr", 0), ("i64", 8) }), what);
                }
            }

            Assert.That(abi.GetProperty("paramBytes").GetInt32(), Is.EqualTo((offset + maxAlign - 1) / maxAlign * maxAlign), name);

            foreach (Match load in ParamLoad().Matches(ptx))
            {
                var p = bySymbol[load.Groups[3].Value];
                int at = load.Groups[4].Success ? int.Parse(load.Groups[4].Value, CultureInfo.InvariantCulture) : 0;
                int width = int.Parse(load.Groups[2].Value, CultureInfo.InvariantCulture) / 8;
                var field = p.GetProperty("fields").EnumerateArray().Where(f => f.GetProperty("offset").GetInt32() == at).ToList();
                Assert.That(field, Has.Count.EqualTo(1), $"{name}: `{load.Value}` reads no declared field");
                Assert.That(field[0].GetProperty("bytes").GetInt32(), Is.EqualTo(width), $"{name}: `{load.Value}` vs {field[0]}");
                if (load.Groups[1].Value == "f")
                    Assert.That(field[0].GetProperty("type").GetString(), Does.StartWith("f"), $"{name}: `{load.Value}` vs {field[0]}");
                loads++;
            }
        }

        Assert.That(loads, Is.GreaterThan(1000), "the PTX's parameter loads were not found: the check above checked nothing");
        TestContext.Out.WriteLine($"{all.Count} kernels, {fields} fields, {loads} ld.param checked");
    }

    /// <summary>
    /// Each file holds one entry and is named for it: NAME.ptx, one .entry (the manifest's), and where [KernelInfo]
    /// names an Entry ("histogram", "up-gate") the entry's method says it too, so "moe-permute-v1-histogram.ptx" holds
    /// HistogramV1. Entries of one family and version are told apart by Entry, never by the export's order.
    /// </summary>
    [Test]
    public void EveryFileHoldsTheEntryItIsNamedFor()
    {
        var infos = PtxExporter.FindKernels().ToDictionary(k => $"{k.Method.DeclaringType!.FullName}.{k.Method.Name}", k => (k.Method, k.Info));
        foreach (var k in _kernels)
        {
            Assert.That(k.File, Is.EqualTo(k.Name + ".ptx"));
            var entries = EntryLine().Matches(File.ReadAllText(Path.Combine(_dir, k.File)));
            Assert.That(entries.Select(e => e.Groups[1].Value), Is.EqualTo(new[] { k.Abi!.Entry }), k.File);
            var (method, info) = infos[k.Method];
            if (info.Entry.Length > 0)
                Assert.That(Kebab(method.Name), Does.Contain(info.Entry), $"{k.File}: [KernelInfo] Entry \"{info.Entry}\" on {method.Name}");
        }

        foreach (var group in infos.Values.GroupBy(v => (v.Info.Family, v.Info.Version, v.Info.Reader)).Where(g => g.Count() > 1))
            Assert.That(group.Select(v => v.Info.Entry).Distinct().Count(), Is.EqualTo(group.Count()),
                $"{group.Key.Family} {group.Key.Version}: {string.Join(", ", group.Select(v => v.Method.Name))} need distinct [KernelInfo] Entry names");
    }

    /// <summary>abi.tsv carries the manifest's slots, and the C sample (tools/ptx-launch) compiles with the system C
    /// compiler against our header and fills dense-add-v1's buffer from it (--no-gpu: no driver needed).</summary>
    [Test]
    public void CSampleCompilesAndFillsTheBufferFromAbiTsv()
    {
        var lines = File.ReadAllLines(Path.Combine(_dir, "abi.tsv")).Select(l => l.Split('\t')).ToList();
        var add = _kernels.Single(k => k.Name == "dense-add-v1").Abi!;
        Assert.That(lines.Single(l => l[0] == "kernel" && l[1] == "dense-add-v1"),
            Is.EqualTo(new[] { "kernel", "dense-add-v1", add.Entry, "dense-add-v1.ptx", add.ParamBytes.ToString(CultureInfo.InvariantCulture), "80", "256", "0" }));
        Assert.That(lines.Where(l => l[0] == "slot" && l[1] == "dense-add-v1").Select(l => $"{l[2]}@{l[3]}:{l[4]}"),
            Is.EqualTo(add.Params.SelectMany(p => p.Fields.Select(f => $"{f.Name}@{p.Offset + f.Offset}:{f.Bytes}"))));

        string? cc = new[] { "cc", "gcc", "clang" }.FirstOrDefault(c => Environment.GetEnvironmentVariable("PATH")!.Split(':')
            .Any(d => File.Exists(Path.Combine(d, c))));
        if (cc is null)
            Assert.Ignore("no C compiler (cc, gcc, clang) on PATH");
        string exe = Path.Combine(_dir, "ptx_launch");
        string source = Path.Combine(Repo.Root(), "tools", "ptx-launch", "ptx_launch.c");
        var (rc, output) = Run(cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe, source, "-ldl");
        Assert.That(rc, Is.Zero, output);
        (rc, output) = Run(exe, "--no-gpu", _dir);
        Assert.That(rc, Is.Zero, output);
        Assert.That(output, Does.Contain($"entry {add.Entry} in dense-add-v1.ptx, {add.ParamBytes}-byte parameter buffer, 6 slots filled, grid 391 x group 256"));
        (rc, output) = Run(exe, "--no-gpu", Path.Combine(_dir, "missing"));
        Assert.That(rc, Is.EqualTo(2), output);
    }

    private static (int Rc, string Output) Run(string file, params string[] args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
            start.ArgumentList.Add(a);
        using var p = Process.Start(start)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout + stderr.Result);
    }

    /// <summary>"ScanScheduleV1" -> "scan-schedule-v1".</summary>
    private static string Kebab(string name) => string.Concat(name.Select((c, i) => i > 0 && char.IsUpper(c) ? "-" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));

    [GeneratedRegex(@"\.entry\s+([\w$]+)\s*\(")]
    private static partial Regex EntryLine();

    [GeneratedRegex(@"^\s*\.target\s+sm_(\d+)", RegexOptions.Multiline)]
    private static partial Regex Target();

    [GeneratedRegex(@"\.param\s+(?:\.align\s+(\d+)\s+)?\.([bsuf])(8|16|32|64)\s+([\w$]+)(?:\[(\d+)\])?")]
    private static partial Regex ParamDeclaration();

    [GeneratedRegex(@"ld\.param\.([bsuf])(8|16|32|64)\s+%\w+,\s*\[([\w$]+)(?:\+(\d+))?\]")]
    private static partial Regex ParamLoad();
}

/// <summary>PtxAbi on kernels compiled here and on hand-written launch strings and PTX.</summary>
public class PtxAbiTests
{
    private static void Scale(ILGPU.Index1D i, ILGPU.ArrayView<float> x, float factor) => x[i] *= factor;

    /// <summary>
    /// ILGPU's hidden parameter: an implicitly grouped kernel (first parameter Index1D) gets no .param for its index but
    /// a leading one for the launch extent, which the ABI lists as "$kernelLength". None of our kernels is implicitly
    /// grouped; this one keeps the rule checked against ILGPU's PTX.
    /// </summary>
    [Test]
    public void ImplicitlyGroupedKernelLeadsWithItsExtent()
    {
        var method = typeof(PtxAbiTests).GetMethod(nameof(Scale), System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic)!;
        using var context = ILGPU.Context.Create(b => b.Default());
        var arch = ILGPU.Runtime.Cuda.CudaArchitecture.SM_90;
        var backend = new ILGPU.Backends.PTX.PTXBackend(context, new ILGPU.Runtime.Cuda.CudaCapabilityContext(arch), arch,
            ILGPU.Runtime.Cuda.CudaInstructionSet.ISA_78, null!);
        var compiled = (ILGPU.Backends.PTX.PTXCompiledKernel)backend.Compile(
            ILGPU.Backends.EntryPoints.EntryPointDescription.FromImplicitlyGroupedKernel(method), ILGPU.Runtime.KernelSpecialization.Empty);

        var abi = PtxAbi.Describe(method, implicitlyGrouped: true, compiled.PTXAssembly, "grid ceil(N/256), group 256", 0);
        Assert.That(abi.Params.Select(p => (p.Name, p.Offset, p.Bytes)), Is.EqualTo(new[] { ("$kernelLength", 0, 4), ("x", 8, 16), ("factor", 24, 4) }),
            compiled.PTXAssembly[..Math.Min(600, compiled.PTXAssembly.Length)]);
        Assert.That(abi.ParamBytes, Is.EqualTo(32));
        Assert.That(abi.Launch.Grid, Is.EqualTo(new[] { "ceil(N/256)" }));
    }

    /// <summary>A PTX whose .param disagrees with the C# layout fails the description, naming the parameter.</summary>
    [Test]
    public void APtxThatDisagreesWithTheLayoutIsRefused()
    {
        var method = typeof(PtxAbiTests).GetMethod(nameof(Scale), System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic)!;
        const string Ptx = ".version 7.8\n.target sm_80\n.address_size 64\n.visible .entry Kernel_Scale(\n\t.param .b32 _i_1,\n" +
            "\t.param .align 4 .b8 _x_2[16],\n\t.param .f32 _factor_3\n)\n{\n\tret;\n}\n";
        Assert.That(() => PtxAbi.Describe(method, true, Ptx, "grid 1, group 32", 0),
            Throws.InvalidOperationException.With.Message.Contains("parameter x is 16 bytes aligned 8").And.Message.Contains("aligned 4"));
        string withoutExtent = Ptx.Replace("\t.param .b32 _i_1,\n", "", StringComparison.Ordinal);
        Assert.That(() => PtxAbi.Describe(method, true, withoutExtent, "grid 1, group 32", 0),
            Throws.InvalidOperationException.With.Message.Contains("3 parameters by KernelParamLayout but 2 .param"));
    }

    /// <summary>Launch strings as [KernelInfo] writes them, and the shapes read from them (expected values by hand).</summary>
    [TestCase("grid ceil(N/256), group 256", false, 0, new[] { "ceil(N/256)" }, "256", 256, "0")]
    [TestCase("grid (tiles, ceil(F/32)), group 128 = 4 warps, 30976 B dynamic shared", true, 30976, new[] { "tiles", "ceil(F/32)" }, "128", 128, "30976")]
    [TestCase("grid ceil(T/W), group 32*W (W = min(8, T) on GPU): one warp per token, dynamic shared W*(E+Groups) floats", true, 16384,
        new[] { "ceil(T/W)" }, "32*W", null, "(W*(E+Groups))*4")]
    [TestCase("grid T*Hkv*splits, group 32*min(H/Hkv, 8)", false, 0, new[] { "T*Hkv*splits" }, "32*min(H/Hkv, 8)", null, "0")]
    [TestCase("grid ceil(T/64)*ceil(Out/64) (rastered in groups of 16 token tiles), group 128 (4 warps, 2 x 2)", false, 0,
        new[] { "ceil(T/64)*ceil(Out/64)" }, "128", 128, "0")]
    [TestCase("grid (tiles, ceil(D/64)), group 128 = 4 warps, dynamic shared", true, 19712, new[] { "tiles", "ceil(D/64)" }, "128", 128, "19712")]
    public void LaunchShapes(string launch, bool dynamicShared, int maxDynamic, string[] grid, string group, int? threads, string shared)
    {
        var shape = PtxAbi.ParseLaunch(launch, dynamicShared, maxDynamic);
        Assert.That(shape.Grid, Is.EqualTo(grid));
        Assert.That(shape.Group, Is.EqualTo(group));
        Assert.That(shape.GroupThreads, Is.EqualTo(threads));
        Assert.That(shape.DynamicSharedBytes, Is.EqualTo(shared));
    }

    [Test]
    public void ALaunchWithoutGridAndGroupIsRefused() =>
        Assert.That(() => PtxAbi.ParseLaunch("one thread per row", false, 0), Throws.TypeOf<FormatException>().With.Message.Contains("grid ..., group ..."));
}
