using ILGpuMoE.Kernels;
using ILGpuMoE.Ptx;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Ptx;

/// <summary>
/// The PTX lint (src/ILGpuMoE/Ptx/PtxLint.cs) on hand-written PTX, where the right answer is known, and on every
/// exported kernel: what CI checks even where ptxas cannot be fetched.
/// </summary>
public class PtxLintTests
{
    private static string Kernel(string body) => $$"""
        .version 7.8
        .target sm_80
        .address_size 64

        .visible .entry K(
        	.param .align 8 .b8 _w_10[16],
        	.param .b32 _n_11
        )
        {
        	.reg .pred	%p<9>;
        	.reg .b32	%r<30>;
        	.reg .b64	%rd<30>;
        	ld.param.b64	%rd7, [_w_10];
        	cvta.to.global.u64	%rd1, %rd7;
        	ld.param.b32	%r1, [_n_11];
        {{body}}
        	ret;
        }
        """;

    private static IReadOnlyList<UniformityFinding> Uniformity(string body) => PtxAnalyses.Uniformity(PtxEntry.ParseAll(Kernel(body)).Single());

    [Test]
    public void ThreadIndexReachingBraUniIsFound()
    {
        var f = Uniformity("""
            	mov.b32	%r2, %tid.x;
            	add.s32	%r3, %r2, 5;
            	setp.lt.s32	%p1, %r3, %r1;
            	@%p1 bra.uni	L_1;
            	mov.b32	%r4, 0;
            	L_1:
            """);
        Assert.That(f, Has.Count.EqualTo(1));
        Assert.That(f[0].Chain, Does.Contain("%tid.x").And.Contain("setp.lt.s32"));
    }

    [Test]
    public void UniformAddressLoadAndBlockIndexStayUniform()
    {
        // A load from an address built from %ctaid and a parameter is the same on every lane.
        var f = Uniformity("""
            	mov.b32	%r2, %ctaid.x;
            	mul.wide.u32	%rd2, %r2, 4;
            	add.u64	%rd3, %rd1, %rd2;
            	ld.global.b32	%r3, [%rd3];
            	setp.lt.s32	%p1, %r3, %r1;
            	@%p1 bra.uni	L_1;
            	mov.b32	%r4, 0;
            	L_1:
            """);
        Assert.That(f, Is.Empty);
    }

    [Test]
    public void LoadThroughLaneAddressAndLocalLoadAreSources()
    {
        var f = Uniformity("""
            	mov.b32	%r2, %laneid;
            	mul.wide.u32	%rd2, %r2, 4;
            	add.u64	%rd3, %rd1, %rd2;
            	ld.global.b32	%r3, [%rd3];
            	setp.lt.s32	%p1, %r3, %r1;
            	@%p1 bra.uni	L_1;
            	ld.local.b32	%r5, [%rd1];
            	setp.eq.s32	%p2, %r5, 0;
            	@%p2 bra.uni	L_1;
            	L_1:
            """);
        Assert.That(f.Select(x => x.Chain), Has.Some.Contains("%laneid").And.Some.Contains("ld.local"));
    }

    [Test]
    public void ValueMergedAfterLaneBranchIsLaneDependent()
    {
        // count += (tid < n) ? 1 : 0 written as a branch: each operand is uniform, the merged value is not.
        var f = Uniformity("""
            	mov.b32	%r2, %tid.x;
            	mov.b32	%r3, 0;
            	setp.ge.s32	%p1, %r2, %r1;
            	@%p1 bra	L_1;
            	add.s32	%r3, %r3, 1;
            	L_1:
            	setp.gt.s32	%p2, %r3, 0;
            	@%p2 bra.uni	L_2;
            	mov.b32	%r4, 0;
            	L_2:
            """);
        Assert.That(f, Has.Count.EqualTo(1));
        Assert.That(f[0].Chain, Does.Contain("under the lane-dependent branch"));
    }

    [Test]
    public void LoopCarriedTaintReachesTheLoopTest()
    {
        // i starts uniform and is advanced by a shuffle result: the loop needs a fixpoint to see it.
        var f = Uniformity("""
            	mov.b32	%r2, 0;
            	L_1:
            	setp.ge.s32	%p1, %r2, %r1;
            	@%p1 bra.uni	L_2;
            	shfl.sync.bfly.b32	%r3, %r2, 1, 31, -1;
            	add.s32	%r2, %r2, %r3;
            	bra.uni	L_1;
            	L_2:
            """);
        Assert.That(f, Has.Count.EqualTo(1));
        Assert.That(f[0].Chain, Does.Contain("shfl"));
    }

    [Test]
    public void UndeclaredVectorAccessFails()
    {
        string ptx = Kernel("""
            	mov.b32	%r2, %tid.x;
            	mul.wide.u32	%rd2, %r2, 16;
            	add.u64	%rd3, %rd1, %rd2;
            	ld.global.v4.b32	{%r3, %r4, %r5, %r6}, [%rd3];
            """);
        var access = PtxAnalyses.VectorAccesses(PtxEntry.ParseAll(ptx).Single()).Single();
        Assert.That(access.Bytes, Is.EqualTo(16));
        Assert.That(access.Origins, Is.EqualTo(new[] { "global:_w_10" }));

        var bare = new PtxKernel("k", "f", "v1", "", "M", "", "", [], "k.ptx", ptx.Length, null);
        var empty = new Dictionary<string, string>();
        Assert.That(PtxLint.Check(bare, ptx, empty).Failures, Has.Some.Contains("not declared in [KernelInfo] WideViews"));
        var declared = bare with { WideViews = [new WideViewDeclaration("w", "w", 0, 16, 16)] };
        Assert.That(PtxLint.Check(declared, ptx, empty).Failures, Is.Empty);
        var narrow = bare with { WideViews = [new WideViewDeclaration("w", "w", 0, 8, 16)] };
        Assert.That(PtxLint.Check(narrow, ptx, empty).Failures, Has.Some.Contains("not a multiple of this access"));
        Assert.That(PtxLint.Check(declared, Kernel(""), empty).Failures, Has.Some.Contains("no vector access uses it"));
    }

    [Test]
    public void LocalMemoryNeedsAListedReason()
    {
        string ptx = Kernel("\t.local .align 4 .b8 __local_depot0[16];\n\tmov.b64\t%rd2, __local_depot0;");
        var k = new PtxKernel("k", "f", "v1", "", "M", "", "", [], "k.ptx", ptx.Length, null);
        Assert.That(PtxLint.Check(k, ptx, new Dictionary<string, string>()).Failures, Has.Some.Contains("local-memory.md"));
        Assert.That(PtxLint.Check(k, ptx, new Dictionary<string, string> { ["k"] = "why" }).Failures, Is.Empty);
        Assert.That(PtxLint.Check(k, Kernel(""), new Dictionary<string, string> { ["k"] = "why" }).Failures, Has.Some.Contains("remove the line"));
    }

    [Test]
    public void EveryExportedKernelPassesTheLint()
    {
        string dir = Path.Combine(Path.GetTempPath(), "ilgpumoe-ptxlint-" + Guid.NewGuid().ToString("N"));
        try
        {
            var kernels = PtxExporter.Export(dir);
            var notes = PtxLint.ReadLocalMemoryNotes(Path.Combine(TestContext.CurrentContext.TestDirectory, "TestData", "local-memory.md"));
            Assert.That(notes, Does.ContainKey("moe-gating-v1"), "the notes file is read");
            var results = PtxLint.Run(dir, kernels, notes);
            Assert.That(results, Has.Count.GreaterThanOrEqualTo(kernels.Count));
            var failed = results.Where(r => !r.Ok).Select(r => r.ToString()).ToList();
            Assert.That(failed, Is.Empty, string.Join('\n', failed));
            foreach (var k in kernels.Where(k => k.WideViews.Count > 0))
                Assert.That(k.BlockSize, Is.GreaterThan(0), $"{k.Name}: a kernel with vector accesses declares its block size");

            // The ptxas gate checks registers x block at the declared size, else at Devices.MaxGroupSize: that bound
            // holds only because no declaration exceeds it and the kernel tests' CPU accelerator refuses larger groups.
            foreach (var k in kernels)
                Assert.That(k.CheckedBlockSize, Is.InRange(1, Devices.MaxGroupSize), $"{k.Name}: block size");
            Assert.That(TestDevice.Accelerator.MaxNumThreadsPerGroup, Is.EqualTo(Devices.MaxGroupSize),
                "the kernel tests' accelerator enforces the group-size bound the PTX gate assumes");
            var launch = File.ReadAllLines(Path.Combine(dir, "launch.tsv")).Select(l => l.Split('\t')).ToList();
            Assert.That(launch.Select(f => f[0]), Is.EquivalentTo(kernels.Where(k => k.Error is null).Select(k => k.Name)));
            Assert.That(launch.All(f => f.Length == 5 && int.Parse(f[1], System.Globalization.CultureInfo.InvariantCulture) > 0), "launch.tsv: name, block, dynamic shared, declared|bound, tensor-core instruction");
            Assert.That(launch.Where(f => f[4] != "-").Select(f => f[0]), Is.EquivalentTo(kernels.Where(k => k.Error is null && k.TensorCore is not null).Select(k => k.Name)),
                "launch.tsv names the tensor-core instruction of exactly the tensor-core kernels");
            Assert.That(launch.Select(f => f[4]).Distinct(), Is.SubsetOf(new[] { "-", "HMMA", "IMMA" }).And.Contains("HMMA"));
        }
        finally
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
    }
}
