// What the GPU will run, read without a GPU: the SASS that `cuobjdump -sass` prints for a kernel ptxas compiled for
// sm_90, plus ptxas -v's figures, reduced to the numbers a decode kernel is judged by (perf/notes/sass-report.md):
// registers, shared memory, spills, theoretical occupancy at the launch configuration declared on [KernelInfo],
// global and shared loads and stores by width, and the hot loop (the loop whose own global loads, not those of loops
// nested in it, carry the most bytes).
// The decode gate holds every DecodeUse.Weights kernel to at least half of its hot loop's global-load bytes in
// 128-bit loads; the tensor-core gate holds every kernel whose [KernelInfo] names a TensorCore instruction to
// containing it, with no local memory (stack, spills, LDL/STL). Parsing only: running ptxas and cuobjdump is SassTools' job.
using System.Globalization;
using System.Text.RegularExpressions;
using ILGpuMoE.Kernels;

namespace ILGpuMoE.Ptx;

/// <summary>One SASS instruction: its byte address, guard predicate ("@!P0", null when none), opcode with modifiers
/// ("LDG.E.128") and the operand text.</summary>
public sealed record SassInstruction(int Address, string? Guard, string Opcode, string Operands)
{
    /// <summary>The opcode without modifiers ("LDG").</summary>
    public string Root => Opcode.Split('.')[0];

    /// <summary>The address a BRA jumps to (its last operand, "0x590"), null for any other instruction.</summary>
    public int? BranchTarget
    {
        get
        {
            if (Root != "BRA")
                return null;
            string last = Operands.Split(',')[^1].Trim();
            return last.StartsWith("0x", StringComparison.Ordinal)
                   && int.TryParse(last.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int target)
                ? target
                : null;
        }
    }

    /// <summary>
    /// Bits one thread moves for a memory access: the width modifier (.U8/.S8 = 8, .U16/.S16 = 16, .64, .128; none = 32).
    /// Only whole modifiers count: a cache hint such as .LTC128B is not a width.
    /// </summary>
    public int AccessBits
    {
        get
        {
            int bits = 32;
            foreach (var m in Opcode.Split('.').Skip(1))
            {
                bits = m switch
                {
                    "U8" or "S8" => 8,
                    "U16" or "S16" => 16,
                    "64" => 64,
                    "128" => 128,
                    _ => bits,
                };
            }

            return bits;
        }
    }
}

/// <summary>Memory instructions of one kind counted by access width in bits (8, 16, 32, 64, 128).</summary>
public sealed class AccessWidths
{
    public static readonly IReadOnlyList<int> Widths = [128, 64, 32, 16, 8];

    private readonly Dictionary<int, int> counts = Widths.ToDictionary(w => w, _ => 0);

    public static AccessWidths Of(IEnumerable<SassInstruction> instructions, string root)
    {
        var w = new AccessWidths();
        foreach (var i in instructions.Where(i => i.Root == root))
            w.counts[i.AccessBits]++;
        return w;
    }

    /// <summary>Instructions of this width.</summary>
    public int this[int bits] => counts[bits];

    public int Count => counts.Values.Sum();

    /// <summary>Bytes one thread moves if each instruction runs once.</summary>
    public int Bytes => counts.Sum(c => c.Key / 8 * c.Value);

    /// <summary>"128:1 32:8" (widths with no instruction left out; "-" when none).</summary>
    public override string ToString() =>
        Count == 0 ? "-" : string.Join(' ', Widths.Where(w => counts[w] > 0).Select(w => $"{w}:{counts[w]}"));

    /// <summary>For sass.json: {"128": 1, "32": 8}, only widths that occur.</summary>
    public IReadOnlyDictionary<string, int> ToDictionary() =>
        Widths.Where(w => counts[w] > 0).ToDictionary(w => w.ToString(CultureInfo.InvariantCulture), w => counts[w]);
}

/// <summary>
/// A loop: the instructions from a backward branch's target (Start) to the last branch back to it (End). Own holds
/// those that no loop nested inside it holds: its LDG widths count only loads this loop runs directly.
/// </summary>
public sealed record SassLoop(int Start, int End, IReadOnlyList<SassInstruction> Body, IReadOnlyList<SassInstruction> Own)
{
    public int Instructions => Body.Count;

    /// <summary>The loop's own global loads (not those of loops nested in it).</summary>
    public AccessWidths Ldg { get; } = AccessWidths.Of(Own, "LDG");
}

/// <summary>One function of cuobjdump's listing ("Function : Kernel_GemvV2BF16").</summary>
public sealed partial class SassFunction
{
    public SassFunction(string name, IReadOnlyList<SassInstruction> instructions)
    {
        Name = name;
        Instructions = instructions;
        Ldg = AccessWidths.Of(instructions, "LDG");
        Stg = AccessWidths.Of(instructions, "STG");
        Lds = AccessWidths.Of(instructions, "LDS");
        Sts = AccessWidths.Of(instructions, "STS");
        LocalAccesses = instructions.Count(i => i.Root is "LDL" or "STL");
        Loops = FindLoops(instructions);
        HotLoop = FindHotLoop(Loops);
    }

    public string Name { get; }

    public IReadOnlyList<SassInstruction> Instructions { get; }

    public AccessWidths Ldg { get; }

    public AccessWidths Stg { get; }

    public AccessWidths Lds { get; }

    public AccessWidths Sts { get; }

    /// <summary>LDL + STL: local memory (spills, or arrays ptxas could not keep in registers).</summary>
    public int LocalAccesses { get; }

    public IReadOnlyList<SassLoop> Loops { get; }

    /// <summary>The loop whose own LDGs carry the most bytes (null when no loop loads from global memory).</summary>
    public SassLoop? HotLoop { get; }

    /// <summary>The LDG widths of the hot loop, or of the whole function when it has none.</summary>
    public AccessWidths HotLdg => HotLoop?.Ldg ?? Ldg;

    /// <summary>Every function of a cuobjdump -sass listing, in order.</summary>
    public static IReadOnlyList<SassFunction> ParseAll(string sass)
    {
        var functions = new List<SassFunction>();
        string? name = null;
        var body = new List<SassInstruction>();
        foreach (var line in sass.ReplaceLineEndings("\n").Split('\n'))
        {
            var f = FunctionHead().Match(line);
            if (f.Success)
            {
                if (name is not null)
                    functions.Add(new SassFunction(name, body));
                name = f.Groups[1].Value;
                body = [];
                continue;
            }

            var m = InstructionLine().Match(line);
            if (!m.Success)
                continue;
            if (name is null)
                throw new FormatException($"SASS instruction before any 'Function :' line: {line.Trim()}");
            body.Add(new SassInstruction(int.Parse(m.Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                m.Groups[2].Success ? m.Groups[2].Value.Trim() : null, m.Groups[3].Value, m.Groups[4].Value.Trim()));
        }

        if (name is not null)
            functions.Add(new SassFunction(name, body));
        return functions;
    }

    /// <summary>
    /// A loop per branch target that some later BRA jumps back to, from that target to the last such BRA. A branch to
    /// itself is not a loop: ptxas ends every function with one ("BRA 0xa90" at 0xa90) after the EXIT, never run.
    /// </summary>
    private static List<SassLoop> FindLoops(IReadOnlyList<SassInstruction> instructions)
    {
        var ends = new SortedDictionary<int, int>();
        foreach (var i in instructions)
        {
            if (i.BranchTarget is int target && target < i.Address)
                ends[target] = Math.Max(ends.GetValueOrDefault(target), i.Address);
        }

        var ranges = ends.Select(e => (Start: e.Key, End: e.Value)).ToList();
        return ranges.Select(r =>
        {
            var body = instructions.Where(i => i.Address >= r.Start && i.Address <= r.End).ToList();
            var inner = ranges.Where(o => r.Start <= o.Start && o.End <= r.End && o != r).ToList();
            var own = body.Where(i => !inner.Any(o => i.Address >= o.Start && i.Address <= o.End)).ToList();
            return new SassLoop(r.Start, r.End, body, own);
        }).ToList();
    }

    /// <summary>
    /// The loop whose own LDGs carry the most bytes (ties: the earlier one): the innermost loop around the most load
    /// bytes. An outer loop counts only the loads no inner loop holds, so a small staging loop nested in the streaming
    /// loop does not take its place, and a load-free shuffle loop inside it does not hide it.
    /// </summary>
    private static SassLoop? FindHotLoop(IReadOnlyList<SassLoop> loops) =>
        loops.Where(l => l.Ldg.Count > 0)
            .OrderByDescending(l => l.Ldg.Bytes)
            .ThenBy(l => l.Start)
            .FirstOrDefault();

    [GeneratedRegex(@"^\s*Function\s*:\s*(\S+)")]
    private static partial Regex FunctionHead();

    // "        /*0680*/                   LDG.E.128 R4, [R4.64] ;      /* 0x0000000404047981 */", guard "@!P0", "@PT".
    [GeneratedRegex(@"^\s*/\*([0-9a-fA-F]+)\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\s*([^;]*);")]
    private static partial Regex InstructionLine();
}

/// <summary>What `ptxas -v` says of one kernel (the largest figure where the output names several functions).</summary>
public sealed partial record PtxasFigures(int Registers, int StaticSharedBytes, int StackBytes, int SpillStoreBytes, int SpillLoadBytes)
{
    public static PtxasFigures Parse(string ptxasOutput)
    {
        int Max(Regex r) => r.Matches(ptxasOutput).Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Max();
        if (!RegistersLine().IsMatch(ptxasOutput))
            throw new FormatException("ptxas -v output has no 'Used N registers' line");
        return new PtxasFigures(Max(RegistersLine()), Max(Smem()), Max(Stack()), Max(SpillStores()), Max(SpillLoads()));
    }

    [GeneratedRegex(@"Used (\d+) registers")]
    private static partial Regex RegistersLine();

    [GeneratedRegex(@"(\d+) bytes smem")]
    private static partial Regex Smem();

    [GeneratedRegex(@"(\d+) bytes stack frame")]
    private static partial Regex Stack();

    [GeneratedRegex(@"(\d+) bytes spill stores")]
    private static partial Regex SpillStores();

    [GeneratedRegex(@"(\d+) bytes spill loads")]
    private static partial Regex SpillLoads();
}

/// <summary>Theoretical occupancy: resident groups and warps per SM, and which resource bounds them.</summary>
public sealed record Occupancy(int GroupsPerSm, int WarpsPerSm, int MaxWarpsPerSm, string Limiter)
{
    public double Fraction => (double)WarpsPerSm / MaxWarpsPerSm;

    /// <summary>
    /// sm_90 (H100/H200), as NVIDIA's occupancy calculator counts it: 65536 registers per SM allocated per warp in
    /// units of 256, 64 warps and 32 groups per SM, 228 KB of shared memory per SM of which every group also takes
    /// 1 KB reserved (so one group gets at most 227 KB), shared allocations rounded up to 128 bytes.
    /// </summary>
    public static Occupancy Sm90(int registers, int blockSize, int staticSharedBytes, int dynamicSharedBytes)
    {
        const int RegsPerSm = 65536, RegUnit = 256, MaxWarps = 64, MaxGroups = 32;
        const int SharedPerSm = 228 * 1024, SharedReserved = 1024, SharedUnit = 128;
        if (blockSize <= 0)
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "block size must be positive");
        int warps = (blockSize + 31) / 32;
        int regsPerWarp = (Math.Max(registers, 1) * 32 + RegUnit - 1) / RegUnit * RegUnit;
        int shared = (staticSharedBytes + dynamicSharedBytes + SharedReserved + SharedUnit - 1) / SharedUnit * SharedUnit;
        var limits = new (string Name, int Groups)[]
        {
            ("warps", MaxWarps / warps),
            ("groups", MaxGroups),
            ("registers", RegsPerSm / regsPerWarp / warps),
            ("shared", SharedPerSm / shared),
        };
        var bound = limits.MinBy(l => l.Groups);
        return new Occupancy(bound.Groups, bound.Groups * warps, MaxWarps, bound.Name);
    }
}

/// <summary>The report of one kernel: its launch shape, ptxas figures, occupancy and SASS.</summary>
public sealed record SassKernelReport(string Name, DecodeUse Decode, int BlockSize, int DynamicSharedBytes,
    PtxasFigures Ptxas, SassFunction Sass)
{
    public Occupancy Occupancy { get; } = Occupancy.Sm90(Ptxas.Registers, BlockSize, Ptxas.StaticSharedBytes, DynamicSharedBytes);

    /// <summary>[KernelInfo] TensorCore: the instruction ("HMMA", "IMMA") the kernel must contain; empty for SIMT kernels.</summary>
    public string TensorCore { get; init; } = "";

    /// <summary>How many SASS instructions are the kernel's tensor-core instruction (any modifiers: HMMA.16816.F32.BF16).</summary>
    public int TensorCoreInstructions => TensorCore.Length == 0 ? 0 : Sass.Instructions.Count(i => i.Root == TensorCore);

    /// <summary>
    /// The tensor-core gate: null when it holds (or the kernel is SIMT), else why not. A tensor-core kernel must contain
    /// its instruction, and use no local memory at all (no stack frame, no spill, no LDL/STL): local memory in such a
    /// kernel means the asm-operand pass missed ILGPU's operand slots (kernels/ILGpuMoE.Kernels/TensorCore/PtxAsmOperands.cs)
    /// or the fragments do not fit in registers.
    /// </summary>
    public string? TensorCoreFailure()
    {
        if (TensorCore.Length == 0)
            return null;
        var problems = new List<string>();
        if (TensorCoreInstructions == 0)
            problems.Add($"no {TensorCore} in the SASS");
        if (Ptxas.StackBytes > 0)
            problems.Add($"{Ptxas.StackBytes} bytes stack frame");
        if (Ptxas.SpillStoreBytes + Ptxas.SpillLoadBytes > 0)
            problems.Add($"{Ptxas.SpillStoreBytes + Ptxas.SpillLoadBytes} bytes of spills");
        if (Sass.LocalAccesses > 0)
            problems.Add($"{Sass.LocalAccesses} LDL/STL");
        return problems.Count == 0 ? null : $"{Name}: {string.Join(", ", problems)} (a {TensorCore} kernel needs its instruction and no local memory)";
    }

    /// <summary>Bytes the hot loop (or the whole kernel without one) loads from global memory in 128-bit loads.</summary>
    public int WideLoadBytes => Sass.HotLdg[128] * 16;

    /// <summary>
    /// The decode gate: null when it holds (or the kernel streams no weights at decode), else why not. A weights
    /// kernel must load at least half of its hot loop's global bytes 128 bits at a time, and must load with LDG at
    /// all (a kernel whose weights came by another path would escape the check).
    /// </summary>
    public string? DecodeFailure()
    {
        if (Decode != DecodeUse.Weights)
            return null;
        var ldg = Sass.HotLdg;
        string where = Sass.HotLoop is { } l ? $"hot loop 0x{l.Start:x4}-0x{l.End:x4} ({l.Instructions} instructions)" : "whole kernel (no loop loads)";
        if (ldg.Bytes == 0)
            return $"{Name}: no LDG in the kernel: a weights kernel must read its weights with global loads";
        if (2 * WideLoadBytes >= ldg.Bytes)
            return null;
        return $"{Name}: {WideLoadBytes} of {ldg.Bytes} LDG bytes per thread in 128-bit loads ({100.0 * WideLoadBytes / ldg.Bytes:F0}% < 50%) in its {where}: LDG {ldg}";
    }

    public static SassKernelReport Analyze(string name, DecodeUse decode, int blockSize, int dynamicSharedBytes, string ptxasOutput, string sass,
        string tensorCore = "")
    {
        var functions = SassFunction.ParseAll(sass);
        // ILGPU writes one .entry per PTX file and inlines everything else, so cuobjdump lists one function.
        if (functions.Count != 1)
            throw new FormatException($"{name}: expected one function in the SASS, found {functions.Count}");
        return new SassKernelReport(name, decode, blockSize, dynamicSharedBytes, PtxasFigures.Parse(ptxasOutput), functions[0]) { TensorCore = tensorCore };
    }

    /// <summary>The printed table's header: the columns of <see cref="ToRow"/>.</summary>
    public static string Header =>
        $"{"kernel",-44} {"decode",-6} {"regs",4} {"smem",6} {"dyn",6} {"stack",5} {"spill",5} {"block",5} {"occupancy",-15} {"LDG",-22} {"STG",-10} {"LDS",-12} {"STS",-12} hot loop";

    /// <summary>
    /// One table row. Memory columns list "width:count" per access width in bits; occupancy is resident warps of 64
    /// with the resource that bounds it; the hot loop is its instruction count and its LDG widths.
    /// </summary>
    public string ToRow()
    {
        string decode = Decode == DecodeUse.None ? "-" : DecodeName(Decode);
        string loop = Sass.HotLoop is { } l ? $"{l.Instructions} instr, LDG {l.Ldg}" : "-";
        if (TensorCore.Length > 0)
            loop += $"; {TensorCore} x{TensorCoreInstructions}";
        string occupancy = $"{Occupancy.WarpsPerSm}/{Occupancy.MaxWarpsPerSm} {Occupancy.Limiter}";
        return $"{Name,-44} {decode,-6} {Ptxas.Registers,4} {Ptxas.StaticSharedBytes,6} {DynamicSharedBytes,6} {Ptxas.StackBytes,5} " +
               $"{Ptxas.SpillStoreBytes + Ptxas.SpillLoadBytes,5} {BlockSize,5} {occupancy,-15} {Sass.Ldg,-22} {Sass.Stg,-10} {Sass.Lds,-12} {Sass.Sts,-12} {loop}";
    }

    /// <summary>"none", "activations", "weights": how manifest.json and sass.json name a <see cref="DecodeUse"/>.</summary>
    public static string DecodeName(DecodeUse use) => use switch
    {
        DecodeUse.None => "none",
        DecodeUse.Activations => "activations",
        DecodeUse.Weights => "weights",
        _ => throw new ArgumentOutOfRangeException(nameof(use), use, "unknown DecodeUse"),
    };

    /// <summary>The sass.json entry (loop addresses in hex, as in the .sass listing).</summary>
    public object ToJson() => new
    {
        name = Name,
        decodeUse = DecodeName(Decode),
        blockSize = BlockSize,
        dynamicSharedBytes = DynamicSharedBytes,
        registers = Ptxas.Registers,
        staticSharedBytes = Ptxas.StaticSharedBytes,
        stackBytes = Ptxas.StackBytes,
        spillStoreBytes = Ptxas.SpillStoreBytes,
        spillLoadBytes = Ptxas.SpillLoadBytes,
        occupancy = new { groupsPerSm = Occupancy.GroupsPerSm, warpsPerSm = Occupancy.WarpsPerSm, fraction = Math.Round(Occupancy.Fraction, 4), limiter = Occupancy.Limiter },
        instructions = Sass.Instructions.Count,
        ldg = Sass.Ldg.ToDictionary(),
        stg = Sass.Stg.ToDictionary(),
        lds = Sass.Lds.ToDictionary(),
        sts = Sass.Sts.ToDictionary(),
        localAccesses = Sass.LocalAccesses,
        hotLoop = Sass.HotLoop is { } l ? new { start = $"0x{l.Start:x4}", end = $"0x{l.End:x4}", instructions = l.Instructions, ldg = l.Ldg.ToDictionary() } : null,
        hotLdgBytes = Sass.HotLdg.Bytes,
        hotWideLdgBytes = WideLoadBytes,
        decodeFailure = DecodeFailure(),
        tensorCore = TensorCore.Length > 0 ? TensorCore : null,
        tensorCoreInstructions = TensorCore.Length > 0 ? TensorCoreInstructions : (int?)null,
        tensorCoreFailure = TensorCoreFailure(),
    };
}
