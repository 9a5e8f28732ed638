using ILGpuMoE.Cli;
using ILGpuMoE.Cli.Commands;
using ILGpuMoE.Kernels;
using ILGpuMoE.Ptx;
using ILGpuMoE.Tests.Cli;

namespace ILGpuMoE.Tests.Ptx;

/// <summary>
/// `ilgpumoe ptx --sass`: finding ptxas and cuobjdump, the one-line exit 2 without them, and (where tools/ptxas-check.sh
/// has unpacked them into .cache/cuda of the checkout) the real tools on a hand-written PTX loop read through SassReport.
/// </summary>
public class SassToolsTests
{
    private string dir = "";

    [SetUp]
    public void MakeDir()
    {
        dir = Path.Combine(Path.GetTempPath(), "ilgpumoe-sass-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
    }

    [TearDown]
    public void RemoveDir() => Directory.Delete(dir, recursive: true);

    [Test]
    public void FindNamesWhatIsMissingInTheGivenFolder()
    {
        Assert.That(SassTools.Find(dir).Missing, Is.EqualTo("ptxas and cuobjdump"));
        File.WriteAllText(Path.Combine(dir, "ptxas"), "");
        Assert.That(SassTools.Find(dir).Missing, Is.EqualTo("cuobjdump"));
        File.WriteAllText(Path.Combine(dir, "cuobjdump"), "");
        Assert.That(SassTools.Find(dir).Missing, Is.Null);
    }

    [Test]
    public void SassWithoutTheToolsIsOneLineExitTwo()
    {
        string line = CliRun.Of("ptx", "--out", Path.Combine(dir, "out"), "--sass", "--cuda-bin", dir).AssertBadInput();
        Assert.That(line, Does.Contain("ptxas and cuobjdump not found").And.Contain(dir));
        line = CliRun.Of("ptx", "--out", Path.Combine(dir, "out"), "--check-decode", "--cuda-bin", Path.Combine(dir, "nowhere")).AssertBadInput();
        Assert.That(line, Does.Contain("--cuda-bin").And.Contain("nowhere"));
        // Files of those names that do not run (here: empty, not executable) are as bad as none.
        File.WriteAllText(Path.Combine(dir, "ptxas"), "");
        File.WriteAllText(Path.Combine(dir, "cuobjdump"), "");
        line = CliRun.Of("ptx", "--out", Path.Combine(dir, "out"), "--sass", "--cuda-bin", dir).AssertBadInput();
        Assert.That(line, Does.Contain("ptxas cannot be run"));
        Assert.That(Directory.Exists(Path.Combine(dir, "out")), Is.False, "the export must not start without the tools");
    }

    // A grid-stride sum over 16-byte rows; Load is either one ld.global.v4 or four scalar loads of the same bytes.
    private static string Ptx(string load) => $$"""
        .version 7.8
        .target sm_80
        .address_size 64

        .visible .entry K(
        	.param .u64 _w_1,
        	.param .u64 _y_2,
        	.param .u32 _n_3
        )
        {
        	.reg .pred %p<3>;
        	.reg .b32 %r<20>;
        	.reg .f32 %f<10>;
        	.reg .b64 %rd<10>;
        	ld.param.u64 %rd1, [_w_1];
        	ld.param.u64 %rd2, [_y_2];
        	ld.param.u32 %r1, [_n_3];
        	cvta.to.global.u64 %rd3, %rd1;
        	cvta.to.global.u64 %rd4, %rd2;
        	mov.u32 %r2, %tid.x;
        	mov.f32 %f1, 0f00000000;
        	mov.u32 %r3, %r2;
        	setp.ge.s32 %p1, %r3, %r1;
        	@%p1 bra DONE;
        LOOP:
        	mul.wide.s32 %rd5, %r3, 16;
        	add.s64 %rd6, %rd3, %rd5;
        {{load}}
        	add.f32 %f1, %f1, %f2;
        	add.f32 %f1, %f1, %f3;
        	add.f32 %f1, %f1, %f4;
        	add.f32 %f1, %f1, %f5;
        	add.s32 %r3, %r3, 256;
        	setp.lt.s32 %p2, %r3, %r1;
        	@%p2 bra LOOP;
        DONE:
        	mul.wide.u32 %rd7, %r2, 4;
        	add.s64 %rd8, %rd4, %rd7;
        	st.global.f32 [%rd8], %f1;
        	ret;
        }
        """;

    [Test]
    public void RealToolsReadAWideAndAScalarLoadLoop()
    {
        var tools = SassTools.Find();
        Assume.That(tools.Missing, Is.Null, "ptxas/cuobjdump not unpacked (tools/ptxas-check.sh fetches them)");
        File.WriteAllText(Path.Combine(dir, "wide.ptx"), Ptx("\tld.global.v4.f32 {%f2, %f3, %f4, %f5}, [%rd6];"));
        File.WriteAllText(Path.Combine(dir, "scalar.ptx"), Ptx(
            "\tld.global.f32 %f2, [%rd6];\n\tld.global.f32 %f3, [%rd6+4];\n\tld.global.f32 %f4, [%rd6+8];\n\tld.global.f32 %f5, [%rd6+12];"));
        // ptxas only reads ISA <= 7.8: a newer .version line is compiled from a 7.8 copy.
        File.WriteAllText(Path.Combine(dir, "newer.ptx"), Ptx("\tld.global.v4.f32 {%f2, %f3, %f4, %f5}, [%rd6];").Replace(".version 7.8", ".version 8.0", StringComparison.Ordinal));
        PtxKernel Kernel(string name) => new(name, "test/sum", "v1", "", "K", "", "", [], name + ".ptx", 1, null)
        {
            DecodeUse = DecodeUse.Weights,
            BlockSize = 256,
        };

        var results = tools.Run(dir, [Kernel("wide"), Kernel("scalar"), Kernel("newer")]);
        Assert.That(results.Select(r => r.Error), Is.All.Null);
        var wide = results[0].Report!;
        var scalar = results[1].Report!;
        Assert.That(File.ReadAllText(Path.Combine(dir, "sass", "wide.sass")), Does.Contain("LDG.E.128"));
        Assert.That(wide.Ptxas.Registers, Is.InRange(1, 255));
        Assert.That(wide.Sass.HotLoop, Is.Not.Null, "the grid-stride loop");
        Assert.That(wide.Sass.HotLoop!.Ldg[32] + wide.Sass.HotLoop.Ldg[64], Is.Zero, wide.ToRow());
        Assert.That(wide.DecodeFailure(), Is.Null, wide.ToRow());
        Assert.That(wide.Sass.Stg[32], Is.EqualTo(1));
        Assert.That(scalar.Sass.HotLoop!.Ldg[128], Is.Zero, scalar.ToRow());
        Assert.That(scalar.DecodeFailure(), Does.Contain("0 of").And.Contain("scalar"), scalar.ToRow());
        Assert.That(results[2].Report!.Sass.Ldg.ToString(), Is.EqualTo(wide.Sass.Ldg.ToString()));
        Assert.That(Directory.GetFiles(Path.Combine(dir, "sass"), "*.cubin"), Is.Empty);

        // The CLI's gate on the same kernels: exit 1 naming the scalar one with its numbers, the wide ones pass.
        var output = new StringWriter();
        var error = new StringWriter();
        int code = PtxCommand.RunSass(new CliIo(output, error), dir, [Kernel("wide"), Kernel("scalar"), Kernel("newer")], tools, checkDecode: true);
        Assert.That(code, Is.EqualTo(1), output.ToString());
        Assert.That(output.ToString(), Does.Contain("decode-check FAIL scalar: 0 of").And.Not.Contain("FAIL wide").And.Not.Contain("FAIL newer"));
        Assert.That(error.ToString().Trim(), Does.Not.Contain('\n').And.EndWith("fail the 128-bit load check: scalar"));
        Assert.That(File.ReadAllText(Path.Combine(dir, "sass.json")), Does.Contain("\"decodeFailure\": \"scalar: 0 of"));
        Assert.That(PtxCommand.RunSass(new CliIo(new StringWriter(), new StringWriter()), dir, [Kernel("wide")], tools, checkDecode: true), Is.Zero);
    }
}
