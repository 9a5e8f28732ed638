using System.Text.Json;
using ILGpuMoE.Kernels;
using ILGpuMoE.Ptx;

namespace ILGpuMoE.Tests.Ptx;

/// <summary>
/// The SASS report (src/ILGpuMoE/Ptx/SassReport.cs) on SASS written by hand in cuobjdump's syntax, where the counts,
/// the hot loop and the decode gate's verdict are known, and sm_90 occupancy on hand-worked numbers.
/// </summary>
public class SassReportTests
{
    // cuobjdump -sass layout: a header, then per instruction "/*addr*/ [guard] OPCODE operands ;  /* encoding */" and a
    // second line holding only the control bits' comment, which is not an instruction.
    private static string Listing(string name, string body) => $"""

        	code for sm_90
        		Function : {name}
        	.headerflags    @"EF_CUDA_SM90 EF_CUDA_PTX_SM(EF_CUDA_SM90)"
        {body}
        		..........

        """;

    private static string Ins(int address, string text, string guard = "") =>
        $"        /*{address:x4}*/              {guard,4} {text} ;        /* 0x0000000404047981 */\n" +
        "                                                                  /* 0x000ea8000c1e1d00 */\n";

    /// <summary>
    /// After the loop of dense-matmul-gemv-v2-bf16 (ptxas 11.8, sm_90): per iteration one LDG.E.128 of eight bf16
    /// weights and eight LDG.E of fp32 activations, then a shuffle-reduction loop with no loads, a final store and
    /// ptxas' closing self-branch.
    /// </summary>
    private static string GemvLike(int wideLoads = 1) =>
        Listing("Kernel_GemvV2BF16",
            Ins(0x0000, "LDC R1, c[0x0][0x28]") +
            Ins(0x0010, "S2R R9, SR_TID.X") +
            Ins(0x0020, "LDG.E R2, [R2.64]") +                 // before the loop: one scalar load
            Ins(0x0030, "BRA 0x1d0", "@P0") +                  // forward branch: not a loop
            Ins(0x0040, "IMAD R4, R18, R14, RZ") +             // loop head (0x40)
            string.Concat(Enumerable.Range(0, wideLoads).Select(i => Ins(0x0050 + (0x10 * i), "LDG.E.128 R4, [R4.64]"))) +
            string.Concat(Enumerable.Range(0, 8).Select(i => Ins(0x0050 + (0x10 * (wideLoads + i)), $"LDG.E R{20 + i}, [R12.64+0x{4 * i:x}]"))) +
            Ins(0x0050 + (0x10 * (wideLoads + 8)), "FFMA R4, R4, R25, R27") +
            Ins(0x0060 + (0x10 * (wideLoads + 8)), "ISETP.GE.AND P0, PT, R19, R14, PT") +
            Ins(0x0070 + (0x10 * (wideLoads + 8)), "BRA 0x40", "@!P0") + // back to the head
            Ins(0x0180, "SHFL.BFLY PT, R7, R16, R4, 0x1f") +   // reduction loop head (0x180)
            Ins(0x0190, "STS.64 [R3], R6") +
            Ins(0x01a0, "LDS.64 R6, [R3+0x8]") +
            Ins(0x01b0, "FADD R16, R7, R16") +
            Ins(0x01c0, "BRA 0x180", "@!P0") +
            Ins(0x01d0, "STG.E [R2.64], R16") +
            Ins(0x01e0, "EXIT") +
            Ins(0x01f0, "BRA 0x1f0"));

    private static SassKernelReport Report(string sass, DecodeUse decode = DecodeUse.Weights, int block = 256) =>
        SassKernelReport.Analyze("k", decode, block, 0, "ptxas info    : Used 32 registers", sass);

    [Test]
    public void CountsAccessesByWidthAndFindsTheLoadLoop()
    {
        var f = SassFunction.ParseAll(GemvLike()).Single();
        Assert.That(f.Name, Is.EqualTo("Kernel_GemvV2BF16"));
        Assert.That(f.Instructions, Has.Count.EqualTo(25), "one per address line, not per control-bits line");
        Assert.That((f.Ldg[128], f.Ldg[32], f.Ldg.Count), Is.EqualTo((1, 9, 10)));
        Assert.That(f.Ldg.Bytes, Is.EqualTo(16 + (9 * 4)));
        Assert.That((f.Stg[32], f.Stg.Count), Is.EqualTo((1, 1)));
        Assert.That((f.Lds[64], f.Sts[64]), Is.EqualTo((1, 1)));
        // Two loops (0x40-0x100 and 0x180-0x1c0); neither the forward branch nor the closing self-branch is one.
        Assert.That(f.Loops.Select(l => (l.Start, l.End)), Is.EqualTo(new[] { (0x40, 0x100), (0x180, 0x1c0) }));
        var hot = f.HotLoop!;
        Assert.That((hot.Start, hot.Instructions), Is.EqualTo((0x40, 13)), "head + 9 loads + FFMA + ISETP + BRA");
        Assert.That(hot.Ldg.ToString(), Is.EqualTo("128:1 32:8"));
    }

    [Test]
    public void WidthComesFromWholeModifiersOnly()
    {
        var f = SassFunction.ParseAll(Listing("K",
            Ins(0x00, "LDG.E.U8 R1, [R2.64]") + Ins(0x10, "LDG.E.S16 R1, [R2.64]") + Ins(0x20, "LDG.E.64 R4, [R2.64]") +
            Ins(0x30, "LDG.E.128.CONSTANT R4, [R2.64]") + Ins(0x40, "LDG.E.LTC128B R1, [R2.64]") + Ins(0x50, "LDGSTS.E.128 [R1], [R2.64]") +
            Ins(0x60, "LDSM.16.M88.4 R4, [R1]") + Ins(0x70, "STG.E.U16 [R2.64], R1") + Ins(0x80, "STL [R1], R2") + Ins(0x90, "EXIT"))).Single();
        Assert.That(f.Ldg.ToString(), Is.EqualTo("128:1 64:1 32:1 16:1 8:1"), ".LTC128B is a cache hint, 32-bit; LDGSTS is not LDG");
        Assert.That(f.Stg.ToString(), Is.EqualTo("16:1"));
        Assert.That(f.Lds.Count, Is.Zero, "LDSM is not LDS");
        Assert.That(f.LocalAccesses, Is.EqualTo(1));
        Assert.That(f.HotLoop, Is.Null);
    }

    [Test]
    public void HotLoopIsTheInnermostLoadLoopWithTheMostBytes()
    {
        // 0x00-0xb0 outer loop holding two load loops: 0x10-0x30 (one LDG.E.128: 16 B) and 0x40-0x90 (two LDG.E.64
        // and one LDG.E: 20 B, with a load-free inner loop 0x50-0x60 that must not hide it).
        var f = SassFunction.ParseAll(Listing("K",
            Ins(0x00, "LDG.E R1, [R2.64]") +
            Ins(0x10, "LDG.E.128 R4, [R2.64]") + Ins(0x20, "IADD3 R2, R2, 0x10, RZ") + Ins(0x30, "BRA 0x10", "@P0") +
            Ins(0x40, "LDG.E.64 R4, [R2.64]") + Ins(0x50, "SHFL.BFLY PT, R7, R16, R4, 0x1f") + Ins(0x60, "BRA 0x50", "@P1") +
            Ins(0x70, "LDG.E.64 R6, [R2.64]") + Ins(0x80, "LDG.E R8, [R2.64]") + Ins(0x90, "BRA 0x40", "@P2") +
            Ins(0xa0, "IADD3 R3, R3, 0x1, RZ") + Ins(0xb0, "BRA 0x0", "@P3") + Ins(0xc0, "EXIT"))).Single();
        Assert.That(f.Loops, Has.Count.EqualTo(4));
        Assert.That((f.HotLoop!.Start, f.HotLoop.End, f.HotLoop.Ldg.Bytes), Is.EqualTo((0x40, 0x90, 20)));
        Assert.That(f.HotLoop.Instructions, Is.EqualTo(6));
    }

    [Test]
    public void AStagingLoopInsideTheStreamingLoopDoesNotTakeItsPlace()
    {
        // As in quant-gemv-v1-q8: the streaming loop 0x00-0x90 runs one LDG.E.128 (weights) and one LDG.E itself, and
        // holds two loops staging activations with one LDG.E each (0x20-0x40, 0x50-0x70). Its own loads: 16 + 4 B.
        var f = SassFunction.ParseAll(Listing("K",
            Ins(0x00, "LDG.E.128 R4, [R6.64]") + Ins(0x10, "LDG.E R17, [R2.64]") +
            Ins(0x20, "LDG.E R2, [R2.64]", "@!P1") + Ins(0x30, "STS [R3], R2") + Ins(0x40, "BRA 0x20", "@!P0") +
            Ins(0x50, "LDG.E R8, [R8.64]") + Ins(0x60, "STS [R3], R8") + Ins(0x70, "BRA 0x50", "@!P0") +
            Ins(0x80, "FFMA R4, R4, R25, R27") + Ins(0x90, "BRA 0x0", "@!P2") + Ins(0xa0, "EXIT"))).Single();
        var hot = f.HotLoop!;
        Assert.That((hot.Start, hot.End, hot.Instructions), Is.EqualTo((0x00, 0x90, 10)));
        Assert.That(hot.Ldg.ToString(), Is.EqualTo("128:1 32:1"), "the nested loops' loads are theirs, not the outer loop's");
        Assert.That(Report(Listing("K", string.Concat(f.Instructions.Select(i => Ins(i.Address, i.Opcode + " " + i.Operands, i.Guard ?? ""))))).DecodeFailure(),
            Is.Null, "16 of 20 bytes wide");
    }

    [Test]
    public void DecodeGateFailsAWeightsKernelWhoseLoopLoadsMostlyThirtyTwoBits()
    {
        // Hot loop: one LDG.E.128 (16 B) and eight LDG.E (32 B): 16 / 48 = 33% < 50%.
        var failure = Report(GemvLike()).DecodeFailure();
        Assert.That(failure, Does.StartWith("k: 16 of 48 LDG bytes").And.Contain("33% < 50%").And.Contain("hot loop 0x0040-0x0100").And.Contain("128:1 32:8"));
        // The loads outside the loop do not count: the whole kernel's 16 / 52 is not what is judged.
        Assert.That(Report(GemvLike(), DecodeUse.Activations).DecodeFailure(), Is.Null, "only weights kernels are held to it");
        Assert.That(Report(GemvLike(), DecodeUse.None).DecodeFailure(), Is.Null);
    }

    [Test]
    public void DecodeGatePassesAtHalfTheBytesWide()
    {
        // Two LDG.E.128 (32 B) and eight LDG.E (32 B): exactly half.
        Assert.That(Report(GemvLike(wideLoads: 2)).DecodeFailure(), Is.Null);
        Assert.That(Report(GemvLike(wideLoads: 2)).WideLoadBytes, Is.EqualTo(32));
    }

    [Test]
    public void DecodeGateWithoutALoopJudgesTheWholeKernelAndFailsOneWithNoGlobalLoad()
    {
        string straight = Listing("K", Ins(0x00, "LDG.E.128 R4, [R2.64]") + Ins(0x10, "LDG.E.U16 R1, [R2.64]") + Ins(0x20, "STG.E [R2.64], R1") + Ins(0x30, "EXIT"));
        Assert.That(Report(straight).DecodeFailure(), Is.Null, "16 of 18 bytes wide");
        string scalar = Listing("K", Ins(0x00, "LDG.E.128 R4, [R2.64]") + Ins(0x10, "LDG.E.64 R1, [R2.64]") + Ins(0x20, "LDG.E.64 R1, [R2.64]") + Ins(0x30, "LDG.E R1, [R2.64]") + Ins(0x40, "EXIT"));
        Assert.That(Report(scalar).DecodeFailure(), Does.Contain("16 of 36 LDG bytes").And.Contain("whole kernel"));
        string none = Listing("K", Ins(0x00, "LDS R1, [R2]") + Ins(0x10, "EXIT"));
        Assert.That(Report(none).DecodeFailure(), Does.Contain("no LDG"));
    }

    [Test]
    public void OccupancyOnSm90()
    {
        // 32 regs x 256 threads: 32*32 = 1024 regs a warp (a multiple of 256); 65536 / 1024 = 64 warps = 8 groups of
        // 8 warps; 64 warps / 8 = 8 groups; shared 0 + 1024 reserved -> 233472 / 1024 = 228. 8 groups, 64 warps, 100%.
        var full = Occupancy.Sm90(32, 256, 0, 0);
        Assert.That((full.GroupsPerSm, full.WarpsPerSm, full.Fraction), Is.EqualTo((8, 64, 1.0)));

        // 70 regs x 256, 16896 B static: 70*32 = 2240 -> 2304 (9 x 256); 65536 / 2304 = 28 warps -> 28 / 8 = 3 groups;
        // shared 16896 + 1024 = 17920 -> 233472 / 17920 = 13 groups. Registers bound: 3 groups, 24 warps, 37.5%.
        var regs = Occupancy.Sm90(70, 256, 16896, 0);
        Assert.That((regs.GroupsPerSm, regs.WarpsPerSm, regs.Fraction, regs.Limiter), Is.EqualTo((3, 24, 0.375, "registers")));

        // 32 regs x 128, 48 KB dynamic: 49152 + 1024 = 50176 -> 233472 / 50176 = 4 groups (registers allow 16, warps 16).
        var shared = Occupancy.Sm90(32, 128, 0, 48 * 1024);
        Assert.That((shared.GroupsPerSm, shared.WarpsPerSm, shared.Limiter), Is.EqualTo((4, 16, "shared")));

        // 16 regs x 32 threads: one warp a group; 32 groups a SM bound it (warps allow 64): 32 warps, 50%.
        var groups = Occupancy.Sm90(16, 32, 0, 0);
        Assert.That((groups.GroupsPerSm, groups.WarpsPerSm, groups.Fraction, groups.Limiter), Is.EqualTo((32, 32, 0.5, "groups")));

        // 100 threads take 4 warps; 40 regs: 1280 a warp; 65536 / 1280 = 51 warps -> 12 groups; warps: 64 / 4 = 16.
        var odd = Occupancy.Sm90(40, 100, 0, 0);
        Assert.That((odd.GroupsPerSm, odd.WarpsPerSm, odd.Limiter), Is.EqualTo((12, 48, "registers")));

        // 255 regs x 1024: 8160 -> 8192 a warp; 65536 / 8192 = 8 warps < the 32 one group needs: the launch fails.
        var none = Occupancy.Sm90(255, 1024, 0, 0);
        Assert.That((none.GroupsPerSm, none.Limiter), Is.EqualTo((0, "registers")));
        Assert.Throws<ArgumentOutOfRangeException>(() => Occupancy.Sm90(32, 0, 0, 0));
    }

    [Test]
    public void PtxasFiguresComeFromItsInfoLines()
    {
        const string ptxas = """
            ptxas info    : 0 bytes gmem
            ptxas info    : Compiling entry function 'Kernel_X' for 'sm_90'
            ptxas info    : Function properties for Kernel_X
                48 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
            ptxas info    : Used 70 registers, 16896 bytes smem, 380 bytes cmem[0]
            """;
        Assert.That(PtxasFigures.Parse(ptxas), Is.EqualTo(new PtxasFigures(70, 16896, 48, 8, 12)));
        Assert.That(PtxasFigures.Parse("ptxas info    : Used 18 registers"), Is.EqualTo(new PtxasFigures(18, 0, 0, 0, 0)));
        Assert.Throws<FormatException>(() => PtxasFigures.Parse("ptxas fatal   : Unsupported .version 8.0"));
        Assert.Throws<FormatException>(() => Report(Listing("A", Ins(0, "EXIT")) + Listing("B", Ins(0, "EXIT"))));
    }

    [Test]
    public void RowAndJsonCarryTheNumbers()
    {
        var r = Report(GemvLike());
        Assert.That(r.ToRow(), Does.Contain("weights").And.Contain("64/64 warps").And.Contain("128:1 32:9").And.Contain("13 instr, LDG 128:1 32:8"));
        using var json = JsonDocument.Parse(JsonSerializer.Serialize(r.ToJson(), PtxExporter.ManifestJson));
        var root = json.RootElement;
        Assert.That(root.GetProperty("decodeUse").GetString(), Is.EqualTo("weights"));
        Assert.That(root.GetProperty("hotLoop").GetProperty("start").GetString(), Is.EqualTo("0x0040"));
        Assert.That(root.GetProperty("ldg").GetProperty("32").GetInt32(), Is.EqualTo(9));
        Assert.That(root.GetProperty("hotLoop").GetProperty("instructions").GetInt32(), Is.EqualTo(13));
        Assert.That(root.GetProperty("hotWideLdgBytes").GetInt32(), Is.EqualTo(16));
        Assert.That(root.GetProperty("decodeFailure").GetString(), Does.Contain("33%"));
    }

    [Test]
    public void ManifestMarksDecodeKernels()
    {
        static JsonElement Entry(DecodeUse use) => JsonDocument.Parse(JsonSerializer.Serialize(
            new PtxKernel("k", "dense/x", "v1", "", "M", "", "", [], "k.ptx", 1, null) { DecodeUse = use }, PtxExporter.ManifestJson)).RootElement;
        Assert.That(Entry(DecodeUse.Weights).GetProperty("decode").GetBoolean(), Is.True);
        Assert.That(Entry(DecodeUse.Weights).GetProperty("decodeUse").GetString(), Is.EqualTo("weights"));
        Assert.That(Entry(DecodeUse.Activations).GetProperty("decodeUse").GetString(), Is.EqualTo("activations"));
        Assert.That(Entry(DecodeUse.None).TryGetProperty("decode", out _), Is.False);
        Assert.That(Entry(DecodeUse.None).TryGetProperty("decodeUse", out _), Is.False);
    }
}
