using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.TensorCore;
using ILGpuMoE.Ptx;

namespace ILGpuMoE.Tests.Ptx;

/// <summary>
/// The tensor-core SASS gate's rules (SassKernelReport.TensorCoreFailure) on ptxas -v output and cuobjdump listings
/// written by hand in their syntax, and the export's naming rule for tensor-core kernels.
/// </summary>
public class TensorCoreGateTests
{
    private static string Listing(params string[] instructions) =>
        "\n\tcode for sm_90\n\t\tFunction : Kernel_PeakMmaV1\n\t.headerflags    @\"EF_CUDA_SM90 EF_CUDA_PTX_SM(EF_CUDA_SM90)\"\n" +
        string.Concat(instructions.Select((text, i) =>
            $"        /*{16 * i:x4}*/                   {text} ;        /* 0x0000000404047981 */\n" +
            "                                                                  /* 0x000ea8000c1e1d00 */\n")) +
        "\t\t..........\n";

    private static string Ptxas(int stack = 0, int spillStores = 0, int spillLoads = 0) =>
        "ptxas info    : Compiling entry function 'Kernel_PeakMmaV1' for 'sm_90'\n" +
        "ptxas info    : Function properties for Kernel_PeakMmaV1\n" +
        $"    {stack} bytes stack frame, {spillStores} bytes spill stores, {spillLoads} bytes spill loads\n" +
        "ptxas info    : Used 48 registers, 384 bytes cmem[0]\n";

    private static readonly string[] Clean =
    [
        "LDG.E R4, [R2.64]", "HMMA.16816.F32.BF16 R8, R4, R6, R8", "HMMA.16816.F32.BF16 R12, R4, R6, R12", "STG.E [R2.64], R8", "EXIT",
    ];

    private static SassKernelReport Report(string ptxas, string sass, string tensorCore = "HMMA") =>
        SassKernelReport.Analyze("tensor-core-peak-v1-mma", DecodeUse.None, 256, 0, ptxas, sass, tensorCore);

    [Test]
    public void AKernelWithItsInstructionAndNoLocalMemoryPasses()
    {
        var r = Report(Ptxas(), Listing(Clean));
        Assert.That(r.TensorCoreFailure(), Is.Null);
        Assert.That(r.TensorCoreInstructions, Is.EqualTo(2), "any modifiers: HMMA.16816.F32.BF16 is an HMMA");
        Assert.That(r.ToRow(), Does.EndWith("HMMA x2"));
        Assert.That(r.Ptxas.Registers, Is.EqualTo(48));
    }

    [Test]
    public void EachBreachIsNamed()
    {
        Assert.That(Report(Ptxas(), Listing("LDG.E R4, [R2.64]", "FFMA R8, R4, R6, R8", "EXIT")).TensorCoreFailure(),
            Is.EqualTo("tensor-core-peak-v1-mma: no HMMA in the SASS (a HMMA kernel needs its instruction and no local memory)"));
        Assert.That(Report(Ptxas(stack: 96), Listing(Clean)).TensorCoreFailure(), Does.Contain("96 bytes stack frame"));
        Assert.That(Report(Ptxas(spillStores: 8, spillLoads: 8), Listing(Clean)).TensorCoreFailure(), Does.Contain("16 bytes of spills"));
        // LDL/STL without a reported stack frame (a local array ptxas sized elsewhere) fails too.
        Assert.That(Report(Ptxas(), Listing([.. Clean[..2], "STL [R1], R4", "LDL R5, [R1]", .. Clean[2..]])).TensorCoreFailure(),
            Does.Contain("2 LDL/STL").And.Not.Contain("no HMMA"));
        // An int8 kernel is held to IMMA: HMMA does not count for it.
        Assert.That(Report(Ptxas(), Listing(Clean), "IMMA").TensorCoreFailure(), Does.Contain("no IMMA"));
        Assert.That(Report(Ptxas(), Listing("IMMA.16832.S8.S8 R8, R4, R6, R8", "EXIT"), "IMMA").TensorCoreFailure(), Is.Null);
    }

    [Test]
    public void SimtKernelsAreNotHeldToIt()
    {
        var r = Report(Ptxas(stack: 16), Listing("LDG.E R4, [R2.64]", "STL [R1], R4", "EXIT"), tensorCore: "");
        Assert.That(r.TensorCoreFailure(), Is.Null);
        Assert.That(r.TensorCoreInstructions, Is.Zero);
        Assert.That(r.ToRow(), Does.Not.Contain("MMA"));
    }

    [Test]
    public void TensorCoreKernelsAreNamedMmaWithAKnownInstruction()
    {
        var peak = new KernelInfoAttribute(PeakMmaVersion.V1Mma, "grid G, group 256") { TensorCore = "HMMA" };
        Assert.That(PtxExporter.FileName(peak, ""), Is.EqualTo("tensor-core-peak-v1-mma"));
        Assert.That(PtxExporter.TensorCoreNameProblem(peak, "tensor-core-peak-v1-mma"), Is.Null);
        Assert.That(PtxExporter.TensorCoreNameProblem(peak, "tensor-core-peak-v1"), Does.Contain("must contain \"mma\""));
        var odd = new KernelInfoAttribute(PeakMmaVersion.V1Mma, "") { TensorCore = "WGMMA" };
        Assert.That(PtxExporter.TensorCoreNameProblem(odd, "tensor-core-peak-v1-mma"), Does.Contain("WGMMA").And.Contain("HMMA, IMMA"));
        Assert.That(PtxExporter.TensorCoreNameProblem(new KernelInfoAttribute(PeakMmaVersion.V1Mma, ""), "anything"), Is.Null, "SIMT: no rule");
    }
}
