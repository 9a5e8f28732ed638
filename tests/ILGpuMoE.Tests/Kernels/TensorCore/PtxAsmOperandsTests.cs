using System.Text.RegularExpressions;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGpuMoE.Cli;
using ILGpuMoE.Cli.Commands;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Ptx;

namespace ILGpuMoE.Tests.Kernels.TensorCore;

/// <summary>
/// The asm-operand pass (kernels/ILGpuMoE.Kernels/TensorCore/PtxAsmOperands.cs) on ILGPU's own PTX of a kernel using
/// every tensor-core primitive, on hand-written PTX where the pattern is broken in each way the pass must refuse, and
/// (where tools/ptxas-check.sh has unpacked ptxas and cuobjdump into .cache/cuda) through ptxas and the SASS gate.
/// </summary>
public class PtxAsmOperandsTests
{
    // cp.async of 16 bytes per lane (every 8th lane zero-filled), ldmatrix .x4 and .x2, `iterations` BF16 mmas.
    internal static void AllPrimitives(GlobalWords src, ArrayView<float> output, int iterations)
    {
        var s = SharedWords.Dynamic();
        int lane = ILGPU.Group.IdxX;
        CpAsync.Copy16(s, lane * 4, src, lane * 4L, (lane & 7) != 7);
        CpAsync.Commit();
        CpAsync.Wait(0);
        ILGPU.Group.Barrier();
        var a = Ldmatrix.X4(s, (lane & 15) * 8 + (lane >> 4) * 4);
        var b = Ldmatrix.X2(s, (lane & 15) * 8);
        Acc4 acc = default;
        for (int i = 0; i < iterations; i++)
            acc = Mma.Bf16(acc, a, b);
        output[lane * 4] = acc.C0;
        output[lane * 4 + 1] = acc.C1;
        output[lane * 4 + 2] = acc.C2;
        output[lane * 4 + 3] = acc.C3;
    }

    /// <summary>ILGPU's PTX (ISA 7.8, the newest ptxas 11.8 reads) of an explicitly grouped kernel, as PtxExporter compiles it.</summary>
    internal static PTXCompiledKernel Compile(System.Reflection.MethodInfo method, Context context)
    {
        var arch = CudaArchitecture.SM_90;
        var backend = new PTXBackend(context, new CudaCapabilityContext(arch), arch, CudaInstructionSet.ISA_78, null!);
        return (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(method), KernelSpecialization.Empty);
    }

    private static string AllPrimitivesPtx()
    {
        CudaDriver.InstallResolver();
        using var context = Context.Create(b => b.Default().Optimize(OptimizationLevel.O2));
        return Compile(typeof(PtxAsmOperandsTests).GetMethod(nameof(AllPrimitives), System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic)!, context).PTXAssembly;
    }

    private static readonly Lazy<string> IlgpuPtx = new(AllPrimitivesPtx);

    private static List<string> AsmLines(string ptx) =>
        ptx.Split('\n').Select(l => l.Trim()).Where(l => Regex.IsMatch(l, @"^(mma\.sync|ldmatrix|cp\.async)")).ToList();

    [Test]
    public void IlgpuPtxOfAllPrimitivesLosesEveryLocalSlotAndKeepsEveryAsmLine()
    {
        string before = IlgpuPtx.Value;
        Assert.That(before, Does.Contain(".local"), "ILGPU 1.5.3 routes asm operands through .local (the reason for the pass)");
        int depots = Regex.Matches(before, @"\.local\s+\.align\s+\d+\s+\.b8\s+__local_depot\d+\[").Count;
        Assert.That(depots, Is.GreaterThan(10));

        var r = PtxAsmOperands.Promote(before);
        Assert.That(r.Kept, Is.Empty, r.Summary);
        Assert.That(r.Promoted, Has.Count.EqualTo(depots));
        Assert.That(r.Ptx, Does.Not.Contain(".local").And.Not.Contain("__local_depot"));
        Assert.That(r.SharedAlignmentRaised, Is.True);
        Assert.That(r.Ptx, Does.Contain(".extern .shared .align 16 .b8 __dyn_shared_alloca[];"));
        // The asm lines themselves are untouched: the same instructions with the same operand registers, in order.
        var asm = AsmLines(before);
        Assert.That(asm.Count(l => l.StartsWith("mma.sync", StringComparison.Ordinal)), Is.EqualTo(1));
        Assert.That(asm.Count(l => l.StartsWith("ldmatrix", StringComparison.Ordinal)), Is.EqualTo(2));
        Assert.That(asm.Count(l => l.StartsWith("cp.async", StringComparison.Ordinal)), Is.EqualTo(3), "the copy, the commit and wait_group 0 (the other immediates are folded away)");
        Assert.That(AsmLines(r.Ptx), Is.EqualTo(asm));
        // Every store into a slot became a mov into its register; nothing else changed in number.
        Assert.That(r.Promoted.Sum(p => p.Stores + p.Loads), Is.EqualTo(Regex.Matches(before, @"\b(st|ld)\.local\.").Count));
        Assert.That(r.Ptx.Split('\n').Length, Is.EqualTo(before.Split('\n').Length - (2 * depots) + r.Promoted.Select(p => p.Register[..p.Register.LastIndexOf('_')]).Distinct().Count()));
        Assert.That(r.Summary, Does.StartWith($"promoted {depots} of {depots} .local operand slots"));
        // Idempotent: a second pass finds nothing.
        var again = PtxAsmOperands.Promote(r.Ptx);
        Assert.That((again.Ptx, again.Promoted.Count, again.Kept.Count, again.SharedAlignmentRaised), Is.EqualTo((r.Ptx, 0, 0, false)));
    }

    // One function, a 4-byte slot used as ILGPU does, with `extra` lines spliced in where the pattern may break.
    private static string Snippet(string extra = "", string decl = ".local .align 4 .b8 __local_depot0[4];", string name = "K") => $$"""
        .version 7.8
        .target sm_80
        .address_size 64

        .visible .entry {{name}}(
        	.param .b64 _p
        )
        {
        	{{decl}}
        	.reg .b32	%r<4>;
        	.reg .b64	%rd<10>;

        	mov.b64	%rd6, __local_depot0;
        	st.local.b32	[%rd6], 0;
        	mov.u32 	%r1, %tid.x;
        	st.local.b32	[%rd6], %r1;
        	ld.local.b32	%r2, [%rd6];
        {{extra}}
        	ld.param.b64	%rd1, [_p];
        	st.global.b32	[%rd1], %r2;
        	ret;
        }
        """;

    [Test]
    public void TheSnippetItselfIsPromoted()
    {
        var r = PtxAsmOperands.Promote(Snippet());
        Assert.That(r.Promoted.Single(), Is.EqualTo(new PromotedDepot("K", "__local_depot0", 4, "%aopb32_0", 2, 1)));
        Assert.That(r.Ptx, Does.Contain("mov.b32\t%aopb32_0, 0;").And.Contain("mov.b32\t%aopb32_0, %r1;").And.Contain("mov.b32\t%r2, %aopb32_0;"));
        Assert.That(r.Ptx, Does.Contain(".reg .b32\t%aopb32_<1>;").And.Not.Contain("__local_depot0").And.Not.Contain("%rd6"));
        Assert.That(r.SharedAlignmentRaised, Is.False, "no dynamic shared array in the snippet");
    }

    [TestCase("\tadd.s64\t%rd6, %rd6, 4;", "used by 'add.s64")]                         // the address register is written
    [TestCase("\tld.local.b32\t%r3, [%rd6+4];", "used by 'ld.local.b32\t%r3, [%rd6+4];'")]   // an offset use
    [TestCase("\tmov.b64\t%rd7, %rd6;", "used by 'mov.b64\t%rd7, %rd6;'")]                    // the address copied
    [TestCase("\tst.local.b64\t[%rd6], %rd1;", "b64 access to a 4-byte slot")]               // another width
    [TestCase("\tst.local.v2.b32\t[%rd6], {%r1, %r2};", "used by 'st.local.v2.b32")]           // a vector access
    [TestCase("\t@%p1 st.local.b32\t[%rd6], %r1;", "used by '@%p1 st.local.b32")]             // a predicated access
    [TestCase("\tst.global.b64\t[%rd1], %rd6;", "used by 'st.global.b64")]                     // the address escapes
    [TestCase("\tst.local.b64\t[%rd1], %rd6;", "used by 'st.local.b64\t[%rd1], %rd6;'")]       // stored as a value elsewhere
    [TestCase("\tmov.b64\t%rd8, __local_depot0;", "address taken more than once")]
    [TestCase("\tcvta.local.u64\t%rd8, __local_depot0;", "used outside its address mov")]
    public void AnythingOffThePatternIsLeftUntouchedAndReported(string extra, string reason)
    {
        string ptx = Snippet(extra);
        var r = PtxAsmOperands.Promote(ptx);
        Assert.That(r.Ptx, Is.EqualTo(ptx));
        Assert.That(r.Promoted, Is.Empty);
        var kept = r.Kept.Single();
        Assert.That((kept.Function, kept.Depot, kept.Bytes), Is.EqualTo(("K", "__local_depot0", 4)));
        Assert.That(kept.Reason, Does.Contain(reason));
        Assert.That(r.Summary, Does.Contain("kept K:__local_depot0"));
    }

    [TestCase(".local .align 4 .b8 __local_depot0[16];", "16 bytes")]
    [TestCase(".local .align 4 .b8 __local_depot0[1];", "1 bytes")]
    public void SlotsOfOtherSizesAreLeftUntouched(string decl, string reason)
    {
        string ptx = Snippet(decl: decl);
        var r = PtxAsmOperands.Promote(ptx);
        Assert.That(r.Ptx, Is.EqualTo(ptx));
        Assert.That(r.Kept.Single().Reason, Does.StartWith(reason));
    }

    [Test]
    public void RegisterNamesAreWholeTokensAndFunctionsAreSeparate()
    {
        // %rd6 is the slot's address; %rd60 is another register whose uses must not count as the slot's. The second
        // function has its own __local_depot0 (ILGPU numbers per function), broken there: only the first is promoted.
        string first = Snippet("\tadd.s64\t%rd60, %rd60, 1;");
        string second = Snippet("\tadd.s64\t%rd6, %rd6, 4;", name: "L");
        string both = first + "\n\n" + second[second.IndexOf(".visible", StringComparison.Ordinal)..];
        var r = PtxAsmOperands.Promote(both);
        Assert.That(r.Promoted.Select(p => p.Function), Is.EqualTo(new[] { "K" }));
        Assert.That(r.Kept.Select(k => (k.Function, k.Depot)), Is.EqualTo(new[] { ("L", "__local_depot0") }));
        Assert.That(r.Ptx, Does.Contain("add.s64\t%rd60, %rd60, 1;"));
        Assert.That(r.Ptx[r.Ptx.IndexOf(".entry L", StringComparison.Ordinal)..], Is.EqualTo(both[both.IndexOf(".entry L", StringComparison.Ordinal)..]),
            "the second function is byte for byte what it was");
    }

    [Test]
    public void MixedAccessTypesGetABitRegisterAndCrlfStays()
    {
        string ptx = Snippet("\tst.local.f32\t[%rd6], 0f3F800000;\n\tld.local.f32\t%f1, [%rd6];").Replace("\n", "\r\n", StringComparison.Ordinal);
        var r = PtxAsmOperands.Promote(ptx);
        Assert.That(r.Promoted.Single().Register, Is.EqualTo("%aopb32_0"));
        Assert.That(r.Ptx, Does.Contain("mov.f32\t%aopb32_0, 0f3F800000;\r\n").And.Contain("mov.f32\t%f1, %aopb32_0;"));
        Assert.That(r.Ptx.Replace("\r\n", "", StringComparison.Ordinal), Does.Not.Contain("\n"));
    }

    [Test]
    public void AFunctionAlreadyUsingThePrefixGetsAnotherOne()
    {
        var r = PtxAsmOperands.Promote(Snippet("\tmov.b32\t%r3, 7; // %aopb32_0 mentioned"));
        Assert.That(r.Promoted.Single().Register, Is.EqualTo("%aop1xb32_0"));
        Assert.That(r.Ptx, Does.Contain(".reg .b32\t%aop1xb32_<1>;"));
    }

    [Test]
    public void PtxasAndTheSassGateSeeTheSlotsGo()
    {
        var tools = SassTools.Find();
        Assume.That(tools.Missing, Is.Null, "ptxas/cuobjdump not unpacked (tools/ptxas-check.sh fetches them)");
        string dir = Directory.CreateTempSubdirectory("ilgpumoe-asm-operands-").FullName;
        try
        {
            string before = IlgpuPtx.Value;
            var pass = PtxAsmOperands.Promote(before);
            File.WriteAllText(Path.Combine(dir, "ilgpu.ptx"), before);
            File.WriteAllText(Path.Combine(dir, "promoted.ptx"), pass.Ptx);
            // Hand-written mixed-type slot: the relaxed typing of the promoted movs must be PTX ptxas accepts.
            File.WriteAllText(Path.Combine(dir, "mixed.ptx"), PtxAsmOperands.Promote(
                Snippet("\tst.local.f32\t[%rd6], 0f3F800000;\n\tld.local.f32\t%f1, [%rd6];\n\tmov.b32\t%r3, %f1;").Replace(".reg .b32\t%r<4>;", ".reg .b32\t%r<4>;\n\t.reg .f32\t%f<2>;", StringComparison.Ordinal)).Ptx);
            PtxKernel Kernel(string name, string tc) => new(name, "tensor-core/test", "v1-mma", "", "K", "", "", [], name + ".ptx", 1, null)
            {
                BlockSize = 32,
                TensorCore = tc,
            };

            var results = tools.Run(dir, [Kernel("ilgpu", "HMMA"), Kernel("promoted", "HMMA"), Kernel("mixed", "")]);
            Assert.That(results.Select(x => x.Error), Is.All.Null);
            var (raw, promoted) = (results[0].Report!, results[1].Report!);
            TestContext.Out.WriteLine($"before: {raw.Ptxas}, {raw.Sass.Instructions.Count} SASS instructions, {raw.Sass.LocalAccesses} LDL/STL");
            TestContext.Out.WriteLine($"after:  {promoted.Ptxas}, {promoted.Sass.Instructions.Count} SASS instructions, {promoted.Sass.LocalAccesses} LDL/STL");
            Assert.That(raw.Ptxas.StackBytes, Is.GreaterThan(0));
            Assert.That(raw.Sass.LocalAccesses, Is.GreaterThan(0));
            Assert.That(raw.TensorCoreFailure(), Does.Contain("bytes stack frame").And.Contain("LDL/STL"));
            Assert.That((promoted.Ptxas.StackBytes, promoted.Ptxas.SpillStoreBytes, promoted.Ptxas.SpillLoadBytes, promoted.Sass.LocalAccesses), Is.EqualTo((0, 0, 0, 0)));
            Assert.That(promoted.TensorCoreFailure(), Is.Null);
            string sass = File.ReadAllText(Path.Combine(dir, "sass", "promoted.sass"));
            Assert.That(sass, Does.Contain("HMMA.16816.F32.BF16").And.Contain("LDSM.16.M88.4").And.Contain("LDSM.16.M88.2").And.Contain("LDGSTS"));
            Assert.That(promoted.TensorCoreInstructions, Is.EqualTo(1));
            Assert.That(promoted.Sass.Instructions.Count, Is.LessThan(raw.Sass.Instructions.Count));

            // The CLI's gate: exit 1 naming the raw kernel; the promoted one passes.
            var output = new StringWriter();
            var error = new StringWriter();
            Assert.That(PtxCommand.RunSass(new CliIo(output, error), dir, [Kernel("ilgpu", "HMMA"), Kernel("promoted", "HMMA")], tools, checkDecode: false), Is.EqualTo(1));
            Assert.That(output.ToString(), Does.Contain("tensor-core FAIL ilgpu:").And.Not.Contain("FAIL promoted"));
            Assert.That(error.ToString().Trim(), Does.EndWith("fail the SASS gate: ilgpu"));
            Assert.That(PtxCommand.RunSass(new CliIo(new StringWriter(), new StringWriter()), dir, [Kernel("promoted", "HMMA")], tools, checkDecode: false), Is.Zero);
            Assert.That(File.ReadAllText(Path.Combine(dir, "sass.json")), Does.Contain("\"tensorCore\": \"HMMA\"").And.Contain("\"tensorCoreInstructions\": 1"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
