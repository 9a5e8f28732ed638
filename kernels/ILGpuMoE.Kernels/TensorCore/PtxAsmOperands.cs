// A PTX text pass that moves ILGPU's inline-asm operands out of local memory and into registers.
//
// WHY: ILGPU 1.5.3 compiles every CudaAsm.EmitRef operand through a .local slot of its own ("depot"): the slot is
// declared `.local .align 4 .b8 __local_depot3[4];`, its address taken once (`mov.b64 %rd9, __local_depot3;`), and
// the value stored before the asm line and loaded back after it (`st.local.b32 [%rd9], %r17;` ...
// `ld.local.b32 %r22, [%rd9];`). ptxas keeps those slots: a kernel with mma + ldmatrix + cp.async gets a stack frame
// and STL/LDL around every tensor-core instruction (perf/notes/tensor-cores.md has the figures). A slot whose address
// register is used for nothing but whole-slot loads and stores of its own width holds exactly what one register
// would hold at every point of the program, so the pass gives it one: each store becomes a mov into the new
// register, each load a mov out of it, and the slot's declaration and address mov go.
//
// It is a pattern pass, not a PTX parser: anything that does not match exactly (an address register that is also
// written, offset, copied or used by another instruction; a slot of another size; a vector or predicated access;
// a depot whose address is taken twice) is left untouched and named in the result with the reason, so a change in
// ILGPU's output shows up as a report line and a SASS-gate failure, never as wrong code.
//
// It also raises the alignment of the dynamic shared array (__dyn_shared_alloca, declared .align 4 by ILGPU) to 16:
// ldmatrix rows and cp.async destinations are 16-byte accesses.
//
// Used by the tensor-core loader (KernelLaunches.LoadTensorCore, TensorCoreLoader.cs) before the PTX goes to the
// driver, and by the PTX export (src/ILGpuMoE/Ptx/PtxExporter.cs) for kernels whose [KernelInfo] names a TensorCore
// instruction, so the SASS gate sees what the GPU runs.
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace ILGpuMoE.Kernels.TensorCore;

/// <summary>A depot the pass turned into a register: its name, bytes, the register it became, and the stores and loads replaced.</summary>
public sealed record PromotedDepot(string Function, string Depot, int Bytes, string Register, int Stores, int Loads);

/// <summary>A depot the pass left as it was, and why.</summary>
public sealed record KeptDepot(string Function, string Depot, int Bytes, string Reason);

/// <summary>What <see cref="PtxAsmOperands.Promote"/> produced and did.</summary>
public sealed record PtxAsmOperandsResult(string Ptx, IReadOnlyList<PromotedDepot> Promoted, IReadOnlyList<KeptDepot> Kept, bool SharedAlignmentRaised)
{
    /// <summary>One line: "promoted 22 of 22 .local operand slots (88 B) to registers; __dyn_shared_alloca .align 16", plus every kept slot and why.</summary>
    public string Summary
    {
        get
        {
            int total = Promoted.Count + Kept.Count;
            var s = new StringBuilder();
            s.Append(CultureInfo.InvariantCulture, $"promoted {Promoted.Count} of {total} .local operand slots ({Promoted.Sum(p => p.Bytes)} B) to registers");
            if (SharedAlignmentRaised)
                s.Append("; __dyn_shared_alloca .align 16");
            foreach (var k in Kept)
                s.Append(CultureInfo.InvariantCulture, $"; kept {k.Function}:{k.Depot} ({k.Reason})");
            return s.ToString();
        }
    }
}

public static partial class PtxAsmOperands
{
    /// <summary>
    /// Promotes every scalar asm-operand depot of 2, 4 or 8 bytes that matches ILGPU's pattern exactly (see the file
    /// header) to a register, per function, and raises __dyn_shared_alloca's alignment to 16. Text that does not match
    /// is returned unchanged; the result lists what was promoted and what was kept, with the reason.
    /// </summary>
    public static PtxAsmOperandsResult Promote(string ptx)
    {
        ArgumentNullException.ThrowIfNull(ptx);
        string newline = ptx.Contains("\r\n", StringComparison.Ordinal) ? "\r\n" : "\n";
        var lines = ptx.ReplaceLineEndings("\n").Split('\n').ToList();
        bool raised = false;
        for (int i = 0; i < lines.Count; i++)
        {
            var m = DynSharedDecl().Match(lines[i]);
            if (m.Success && int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) < 16)
            {
                lines[i] = m.Groups[1].Value + "16" + m.Groups[3].Value;
                raised = true;
            }
        }

        var promoted = new List<PromotedDepot>();
        var kept = new List<KeptDepot>();
        // Functions are rewritten from the last to the first so that line indices of earlier ones stay valid.
        foreach (var (name, open, close) in Enumerable.Reverse(Functions(lines)))
            PromoteInFunction(lines, name, open, close, promoted, kept);
        promoted.Reverse();
        kept.Reverse();
        return new PtxAsmOperandsResult(string.Join(newline, lines), promoted, kept, raised);
    }

    /// <summary>Each .entry / .func: its name and the lines of its body's opening and closing braces (depth 0 to 1 and back).</summary>
    private static List<(string Name, int Open, int Close)> Functions(List<string> lines)
    {
        var result = new List<(string, int, int)>();
        int depth = 0, open = -1;
        string? name = null;
        for (int i = 0; i < lines.Count; i++)
        {
            string line = StripComment(lines[i]);
            if (depth == 0 && FunctionHead().Match(line) is { Success: true } head)
                name = head.Groups[1].Value;
            foreach (char c in line)
            {
                if (c == '{')
                {
                    if (depth == 0 && name is not null)
                        open = i;
                    depth++;
                }
                else if (c == '}')
                {
                    depth--;
                    if (depth == 0 && open >= 0)
                    {
                        result.Add((name!, open, i));
                        open = -1;
                        name = null;
                    }
                }
            }
        }

        return result;
    }

    private static string StripComment(string line)
    {
        int c = line.IndexOf("//", StringComparison.Ordinal);
        return c >= 0 ? line[..c] : line;
    }

    private static void PromoteInFunction(List<string> lines, string function, int open, int close,
        List<PromotedDepot> promoted, List<KeptDepot> kept)
    {
        var depots = new List<(int Line, string Name, int Bytes)>();
        for (int i = open + 1; i < close; i++)
        {
            var m = DepotDecl().Match(lines[i]);
            if (m.Success)
                depots.Add((i, m.Groups[1].Value, int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture)));
        }

        if (depots.Count == 0)
            return;

        var edits = new Dictionary<int, string?>(); // line -> replacement (null: delete)
        var newRegs = new List<(string Type, string Name)>();
        var promotedHere = new List<PromotedDepot>();
        var keptHere = new List<KeptDepot>();
        var prefix = FreshPrefix(lines, open, close);
        foreach (var (declLine, depot, bytes) in depots)
        {
            string? reason = MatchDepot(lines, open, close, declLine, depot, bytes, out int movLine, out var accesses);
            if (reason is not null)
            {
                keptHere.Add(new KeptDepot(function, depot, bytes, reason));
                continue;
            }

            // One register type for the slot: the accesses' own type when they agree, else the bit type of that width
            // (PTX lets a .bN register stand in any N-bit instruction).
            var types = accesses.Select(a => a.Type).Distinct().ToList();
            string regType = types.Count == 1 ? types[0] : "b" + (8 * bytes).ToString(CultureInfo.InvariantCulture);
            string reg = $"{prefix}{regType}_{newRegs.Count(r => r.Type == regType)}";
            newRegs.Add((regType, reg));
            edits[declLine] = null;
            edits[movLine] = null;
            foreach (var a in accesses)
            {
                edits[a.Line] = a.IsStore
                    ? $"{a.Indent}mov.{a.Type}\t{reg}, {a.Value};"
                    : $"{a.Indent}mov.{a.Type}\t{a.Value}, {reg};";
            }

            promotedHere.Add(new PromotedDepot(function, depot, bytes, reg, accesses.Count(a => a.IsStore), accesses.Count(a => !a.IsStore)));
        }

        if (edits.Count == 0)
        {
            kept.AddRange(keptHere.AsEnumerable().Reverse());
            return;
        }

        // Rewrite this function's lines (from the end: deletions keep earlier indices), then declare the registers
        // after its last .reg line (or its opening brace).
        int lastReg = open;
        for (int i = open + 1; i < close; i++)
        {
            if (RegDecl().IsMatch(lines[i]))
                lastReg = i;
        }

        foreach (var (line, text) in edits.OrderByDescending(e => e.Key))
        {
            if (text is null)
                lines.RemoveAt(line);
            else
                lines[line] = text;
        }

        lastReg -= edits.Count(e => e.Value is null && e.Key < lastReg);
        var decls = newRegs.GroupBy(r => r.Type)
            .Select(g => $"\t.reg .{g.Key}\t{prefix}{g.Key}_<{g.Count().ToString(CultureInfo.InvariantCulture)}>;");
        lines.InsertRange(lastReg + 1, decls);
        // Reported in source order (the caller reverses the lists it collects from the last function to the first).
        promoted.AddRange(promotedHere.AsEnumerable().Reverse());
        kept.AddRange(keptHere.AsEnumerable().Reverse());
    }

    private sealed record Access(int Line, bool IsStore, string Type, string Value, string Indent);

    /// <summary>Null when the depot matches the pattern exactly (then the address mov's line and every access), else why not.</summary>
    private static string? MatchDepot(List<string> lines, int open, int close, int declLine, string depot, int bytes,
        out int movLine, out List<Access> accesses)
    {
        movLine = -1;
        accesses = [];
        if (bytes is not (2 or 4 or 8))
            return $"{bytes} bytes: only 2-, 4- and 8-byte slots hold one scalar";

        var depotToken = Token(depot);
        string? address = null;
        for (int i = open + 1; i < close; i++)
        {
            if (i == declLine || !depotToken.IsMatch(lines[i]))
                continue;
            var m = AddressMov().Match(lines[i]);
            if (!m.Success || m.Groups[2].Value != depot)
                return $"used outside its address mov: '{lines[i].Trim()}'";
            if (address is not null)
                return "address taken more than once";
            address = m.Groups[1].Value;
            movLine = i;
        }

        if (address is null)
            return "address never taken";

        var addressToken = Token(address);
        for (int i = open + 1; i < close; i++)
        {
            if (i == movLine || !addressToken.IsMatch(lines[i]))
                continue;
            string line = lines[i];
            var st = LocalStore().Match(line);
            var ld = st.Success ? System.Text.RegularExpressions.Match.Empty : LocalLoad().Match(line);
            var m = st.Success ? st : ld;
            if (!m.Success || m.Groups["addr"].Value != address)
                return $"address {address} used by '{line.Trim()}'";
            string type = m.Groups["type"].Value;
            string value = m.Groups["value"].Value.Trim();
            if (TypeBytes(type) != bytes)
                return $"{type} access to a {bytes}-byte slot: '{line.Trim()}'";
            if (addressToken.IsMatch(value))
                return $"address {address} used as a value: '{line.Trim()}'";
            accesses.Add(new Access(i, st.Success, type, value, m.Groups["indent"].Value));
        }

        return null;
    }

    private static int TypeBytes(string type) => int.Parse(type.AsSpan(1), CultureInfo.InvariantCulture) / 8;

    /// <summary>A register-name prefix no name in the function starts with ("%aop", else "%aop1", ...).</summary>
    private static string FreshPrefix(List<string> lines, int open, int close)
    {
        for (int n = 0; ; n++)
        {
            string prefix = n == 0 ? "%aop" : "%aop" + n.ToString(CultureInfo.InvariantCulture) + "x";
            bool used = false;
            for (int i = open; i <= close && !used; i++)
                used = lines[i].Contains(prefix, StringComparison.Ordinal);
            if (!used)
                return prefix;
        }
    }

    /// <summary>The name as a whole token: not followed by another identifier character (so %rd1 does not match %rd10).</summary>
    private static Regex Token(string name) => new(Regex.Escape(name) + @"(?![A-Za-z0-9_$])", RegexOptions.CultureInvariant);

    [GeneratedRegex(@"^(\s*\.extern\s+\.shared\s+\.align\s+)(\d+)(\s+\.b8\s+__dyn_shared_alloca\[\];.*)$")]
    private static partial Regex DynSharedDecl();

    [GeneratedRegex(@"^\s*(?:\.visible\s+|\.weak\s+)?(?:\.entry|\.func)\s+(?:\([^)]*\)\s*)?([A-Za-z_$][A-Za-z0-9_$]*)")]
    private static partial Regex FunctionHead();

    [GeneratedRegex(@"^\s*\.local\s+\.align\s+\d+\s+\.b8\s+(__local_depot\d+)\[(\d+)\];\s*$")]
    private static partial Regex DepotDecl();

    [GeneratedRegex(@"^\s*mov\.[bu]64\s+(%[A-Za-z0-9_$]+),\s*(__local_depot\d+);\s*$")]
    private static partial Regex AddressMov();

    [GeneratedRegex(@"^(?<indent>\s*)st\.local\.(?<type>[bsuf](?:16|32|64))\s+\[(?<addr>%[A-Za-z0-9_$]+)\],\s*(?<value>[^;]+);\s*$")]
    private static partial Regex LocalStore();

    [GeneratedRegex(@"^(?<indent>\s*)ld\.local\.(?<type>[bsuf](?:16|32|64))\s+(?<value>%[A-Za-z0-9_$]+),\s*\[(?<addr>%[A-Za-z0-9_$]+)\];\s*$")]
    private static partial Regex LocalLoad();

    [GeneratedRegex(@"^\s*\.reg\s")]
    private static partial Regex RegDecl();
}
