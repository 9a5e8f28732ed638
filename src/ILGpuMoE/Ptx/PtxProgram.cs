// A small reader of the PTX that ILGPU writes (one .entry per file, no .func): parameters, instructions with their
// destination and source registers, basic blocks and the control-flow graph. Just enough for PtxLint's analyses;
// not a general PTX parser (it trusts ILGPU's formatting: one statement per line, labels on their own line).
using System.Text.RegularExpressions;

namespace ILGpuMoE.Ptx;

/// <summary>One kernel parameter: its PTX symbol ("_w_105933"), the C# name ("w") and its size in bytes.</summary>
public sealed record PtxParam(string Symbol, string Name, int Bytes);

/// <summary>One instruction. Guard is the predicate register of "@%p" / "@!%p" (null when unguarded).</summary>
public sealed record PtxInstruction(int Line, string? Guard, string Opcode, IReadOnlyList<string> Operands,
    IReadOnlyList<string> Dests, IReadOnlyList<string> Sources, string? Address, IReadOnlyList<string> Targets)
{
    public string Root => Opcode.Split('.')[0];

    public bool IsBranch => Root is "bra" or "brx";

    public bool EndsFlow => Root is "ret" or "exit" || (IsBranch && Guard is null);
}

public sealed class PtxBlock(int index, string? label)
{
    public int Index { get; } = index;

    public string? Label { get; } = label;

    public List<PtxInstruction> Instructions { get; } = [];

    /// <summary>Successor block indices; -1 is the exit (ret).</summary>
    public List<int> Successors { get; } = [];

    public List<int> Predecessors { get; } = [];
}

public sealed partial class PtxEntry
{
    private PtxEntry(string name, IReadOnlyList<PtxParam> parameters, IReadOnlyList<PtxBlock> blocks, IReadOnlyList<string> localDecls)
    {
        Name = name;
        Parameters = parameters;
        Blocks = blocks;
        LocalDeclarations = localDecls;
    }

    public string Name { get; }

    public IReadOnlyList<PtxParam> Parameters { get; }

    public IReadOnlyList<PtxBlock> Blocks { get; }

    /// <summary>Lines of the entry that declare or touch the .local state space.</summary>
    public IReadOnlyList<string> LocalDeclarations { get; }

    public IEnumerable<PtxInstruction> Instructions => Blocks.SelectMany(b => b.Instructions);

    /// <summary>Every .entry of a PTX module, in file order.</summary>
    public static IReadOnlyList<PtxEntry> ParseAll(string ptx)
    {
        var lines = ptx.ReplaceLineEndings("\n").Split('\n');
        var entries = new List<PtxEntry>();
        for (int i = 0; i < lines.Length; i++)
        {
            var m = EntryHead().Match(lines[i]);
            if (!m.Success)
                continue;
            entries.Add(ParseEntry(m.Groups[1].Value, lines, ref i));
        }

        return entries;
    }

    private static PtxEntry ParseEntry(string name, string[] lines, ref int i)
    {
        var parameters = new List<PtxParam>();
        for (i++; i < lines.Length && !lines[i].TrimStart().StartsWith(')'); i++)
        {
            var p = ParamDecl().Match(lines[i]);
            if (p.Success)
                parameters.Add(new PtxParam(p.Groups[2].Value, CSharpName(p.Groups[2].Value), ParamBytes(p.Groups[1].Value, p.Groups[3].Value)));
        }

        while (i < lines.Length && !lines[i].Contains('{', StringComparison.Ordinal))
            i++;
        var blocks = new List<PtxBlock> { new(0, null) };
        var local = new List<string>();
        var branchTargets = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        string? lastLabel = null;
        int depth = 0;
        for (; i < lines.Length; i++)
        {
            string raw = lines[i];
            int comment = raw.IndexOf("//", StringComparison.Ordinal);
            string text = (comment >= 0 ? raw[..comment] : raw).Trim();
            depth += text.Count(c => c == '{') - text.Count(c => c == '}');
            if (depth <= 0 && text.Contains('}', StringComparison.Ordinal))
                break;
            if (text.Length == 0 || text == "{")
                continue;
            if (text.Contains(".local", StringComparison.Ordinal) || text.Contains("__local_depot", StringComparison.Ordinal))
                local.Add($"line {i + 1}: {text}");

            var label = LabelLine().Match(text);
            if (label.Success)
            {
                lastLabel = label.Groups[1].Value;
                blocks.Add(new PtxBlock(blocks.Count, lastLabel));
                continue;
            }

            if (text.StartsWith(".branchtargets", StringComparison.Ordinal) && lastLabel is not null)
            {
                branchTargets[lastLabel] = [.. text[".branchtargets".Length..].TrimEnd(';').Split(',').Select(s => s.Trim())];
                continue;
            }

            if (text.StartsWith('.'))
                continue; // .reg, .shared, .local declarations

            var ins = ParseInstruction(i + 1, text.TrimEnd(';'), branchTargets);
            var current = blocks[^1];
            if (current.Instructions.Count > 0 && (current.Instructions[^1].IsBranch || current.Instructions[^1].EndsFlow))
            {
                current = new PtxBlock(blocks.Count, null);
                blocks.Add(current);
            }

            current.Instructions.Add(ins);
        }

        Link(blocks);
        return new PtxEntry(name, parameters, blocks, local);
    }

    private static void Link(List<PtxBlock> blocks)
    {
        var byLabel = blocks.Where(b => b.Label is not null).ToDictionary(b => b.Label!, b => b.Index, StringComparer.Ordinal);
        for (int b = 0; b < blocks.Count; b++)
        {
            var block = blocks[b];
            var last = block.Instructions.Count > 0 ? block.Instructions[^1] : null;
            if (last is not null && last.IsBranch)
            {
                foreach (var t in last.Targets)
                {
                    if (!byLabel.TryGetValue(t, out int target))
                        throw new FormatException($"PTX line {last.Line}: branch to unknown label {t}");
                    block.Successors.Add(target);
                }
            }
            else if (last is not null && last.Root is "ret" or "exit")
            {
                block.Successors.Add(-1);
                if (last.Guard is null)
                    continue;
            }

            if (last is null || !last.EndsFlow)
                block.Successors.Add(b + 1 < blocks.Count ? b + 1 : -1);
        }

        foreach (var block in blocks)
        {
            foreach (int s in block.Successors.Distinct())
            {
                if (s >= 0)
                    blocks[s].Predecessors.Add(block.Index);
            }
        }
    }

    private static PtxInstruction ParseInstruction(int line, string text, Dictionary<string, List<string>> branchTargets)
    {
        string? guard = null;
        if (text.StartsWith('@'))
        {
            int sp = text.IndexOfAny([' ', '\t']);
            guard = text[1..sp].TrimStart('!');
            text = text[sp..].Trim();
        }

        int split = text.IndexOfAny([' ', '\t']);
        string opcode = split < 0 ? text : text[..split];
        string rest = split < 0 ? "" : text[split..].Trim();
        var operands = SplitOperands(rest);
        string root = opcode.Split('.')[0];

        var targets = new List<string>();
        if (root == "bra" && operands.Count > 0)
            targets.Add(operands[^1]);
        else if (root == "brx" && operands.Count > 1 && branchTargets.TryGetValue(operands[^1], out var list))
            targets.AddRange(list);

        bool hasDest = !NoDest.Contains(root) && operands.Count > 0;
        var dests = hasDest ? Registers(operands[0]).ToList() : [];
        var sourceOps = hasDest ? operands.Skip(1) : operands;
        if (guard is not null)
            sourceOps = sourceOps.Prepend(guard);
        string? address = operands.FirstOrDefault(o => o.StartsWith('['));
        var sources = sourceOps.Where(o => root is not ("bra" or "brx") || o.StartsWith('%')).SelectMany(Registers).ToList();
        if (root == "brx" && operands.Count > 0)
            sources = [.. Registers(operands[0]), .. guard is null ? [] : new[] { guard }];
        return new PtxInstruction(line, guard, opcode, operands, dests, sources, address, targets);
    }

    private static readonly HashSet<string> NoDest = new(StringComparer.Ordinal)
    {
        "st", "bar", "barrier", "bra", "brx", "ret", "exit", "red", "membar", "fence", "prefetch", "prefetchu", "trap", "cp", "griddepcontrol",
    };

    private static List<string> SplitOperands(string rest)
    {
        var list = new List<string>();
        int depth = 0, start = 0;
        for (int i = 0; i < rest.Length; i++)
        {
            char c = rest[i];
            if (c is '{' or '[')
                depth++;
            else if (c is '}' or ']')
                depth--;
            else if (c == ',' && depth == 0)
            {
                list.Add(rest[start..i].Trim());
                start = i + 1;
            }
        }

        if (rest.Trim().Length > 0)
            list.Add(rest[start..].Trim());
        return list;
    }

    /// <summary>Registers and special registers named in an operand ("{%r1, %r2}", "[%rd3+8]", "%p1|%p2", "%tid.x").</summary>
    public static IEnumerable<string> Registers(string operand) => RegisterToken().Matches(operand).Select(m => m.Value);

    /// <summary>"_logits_33333" -> "logits" (ILGPU appends a value id to the C# parameter name).</summary>
    private static string CSharpName(string symbol)
    {
        var m = ParamSymbol().Match(symbol);
        return m.Success ? m.Groups[1].Value : symbol.TrimStart('_');
    }

    private static int ParamBytes(string type, string count)
    {
        int size = type switch
        {
            "b8" or "u8" or "s8" => 1,
            "b16" or "u16" or "s16" or "f16" => 2,
            "b32" or "u32" or "s32" or "f32" => 4,
            "b64" or "u64" or "s64" or "f64" => 8,
            _ => throw new FormatException($"PTX parameter type .{type} is not one this reader knows"),
        };
        return size * (count.Length > 0 ? int.Parse(count, System.Globalization.CultureInfo.InvariantCulture) : 1);
    }

    [GeneratedRegex(@"\.entry\s+([A-Za-z_$][\w$]*)\s*\(")]
    private static partial Regex EntryHead();

    [GeneratedRegex(@"\.param\s+(?:\.align\s+\d+\s+)?\.(\w+)\s+([\w$]+)(?:\[(\d+)\])?")]
    private static partial Regex ParamDecl();

    [GeneratedRegex(@"^([A-Za-z_$][\w$]*):$")]
    private static partial Regex LabelLine();

    [GeneratedRegex(@"%[A-Za-z_]\w*(?:\.[xyz])?")]
    private static partial Regex RegisterToken();

    [GeneratedRegex(@"^_(.+)_\d+$")]
    private static partial Regex ParamSymbol();
}
