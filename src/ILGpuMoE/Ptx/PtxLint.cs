// PTX lint: the checks on exported PTX that need no ptxas (tools/ptxas-check.sh adds the ptxas ones). One line per
// kernel, then one indented line per failure:
//   - uniform branches: no bra.uni whose predicate differs per lane (PtxAnalyses.Uniformity);
//   - vector accesses: every ld/st .v2/.v4 addresses a view declared in [KernelInfo] WideViews with a width that is a
//     multiple of the access, at an offset that is a multiple of it; no declared view goes unused;
//   - local memory: no .local in a kernel unless perf/notes/local-memory.md lists it ("- <ptx name>: reason"),
//     and no listed kernel that has none.
using System.Text.RegularExpressions;

namespace ILGpuMoE.Ptx;

public sealed record LintResult(string Kernel, string Summary, IReadOnlyList<string> Failures)
{
    public bool Ok => Failures.Count == 0;

    public override string ToString() =>
        string.Join('\n', new[] { $"{Kernel,-44} {Summary}  {(Ok ? "OK" : "FAIL")}" }.Concat(Failures.Select(f => "  ^ " + f)));
}

public static partial class PtxLint
{
    /// <summary>The local-memory allow-list: lines "- name: reason" of perf/notes/local-memory.md.</summary>
    public static IReadOnlyDictionary<string, string> ReadLocalMemoryNotes(string path)
    {
        var allowed = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in File.ReadAllLines(path))
        {
            var m = AllowLine().Match(line);
            if (m.Success)
                allowed[m.Groups[1].Value] = m.Groups[2].Value.Trim();
        }

        return allowed;
    }

    /// <summary>Lints every exported kernel of a directory (as returned by <see cref="PtxExporter.Export"/>).</summary>
    public static IReadOnlyList<LintResult> Run(string dir, IReadOnlyList<PtxKernel> kernels, IReadOnlyDictionary<string, string> localAllowed)
    {
        var results = kernels.Where(k => k.Error is null)
            .Select(k => Check(k, File.ReadAllText(Path.Combine(dir, k.File)), localAllowed))
            .ToList();
        var names = kernels.Select(k => k.Name).ToHashSet(StringComparer.Ordinal);
        var unknown = localAllowed.Keys.Where(n => !names.Contains(n)).ToList();
        if (unknown.Count > 0)
            results.Add(new LintResult("local-memory.md", "allow-list", unknown.Select(n => $"lists {n}, which is no exported kernel").ToList()));
        return results;
    }

    public static LintResult Check(PtxKernel kernel, string ptx, IReadOnlyDictionary<string, string> localAllowed)
    {
        var failures = new List<string>();
        var entries = PtxEntry.ParseAll(ptx);
        if (entries.Count == 0)
            return new LintResult(kernel.Name, "no .entry", ["the PTX has no .entry"]);

        int uniform = 0, vectors = 0;
        bool local = false;
        var used = new HashSet<WideViewDeclaration>();
        foreach (var entry in entries)
        {
            uniform += entry.Instructions.Count(i => i.IsBranch && i.Guard is not null && i.Opcode.EndsWith(".uni", StringComparison.Ordinal));
            foreach (var f in PtxAnalyses.Uniformity(entry))
                failures.Add($"line {f.Line}: `{f.Instruction}` branches on a lane-dependent predicate: {f.Chain}");

            foreach (var v in PtxAnalyses.VectorAccesses(entry))
            {
                vectors++;
                string? problem = VectorProblem(kernel, entry, v, used);
                if (problem is not null)
                    failures.Add($"line {v.Line}: `{v.Instruction}` ({v.Bytes} B): {problem}");
            }

            local |= entry.LocalDeclarations.Count > 0;
        }

        foreach (var d in kernel.WideViews.Where(d => !used.Contains(d)))
            failures.Add($"[KernelInfo] WideViews declares {d.View}:{d.Bytes}, but no vector access uses it (remove the entry, or its launcher check)");

        bool allowed = localAllowed.TryGetValue(kernel.Name, out var reason);
        if (local && !allowed)
            failures.Add($"uses local memory ({entries.SelectMany(e => e.LocalDeclarations).First()}); list it with its reason in perf/notes/local-memory.md or keep the state in registers/shared memory");
        if (!local && allowed)
            failures.Add("is listed in perf/notes/local-memory.md but its PTX has no local memory: remove the line");

        int conditional = entries.Sum(e => e.Instructions.Count(i => i.IsBranch && i.Guard is not null));
        string summary = $"bra.uni {uniform,3}/{conditional,-3} conditional  vector {vectors,2}  local {(local ? "yes (listed: " + reason + ")" : "no")}";
        return new LintResult(kernel.Name, summary, failures);
    }

    private static string? VectorProblem(PtxKernel kernel, PtxEntry entry, VectorAccess v, HashSet<WideViewDeclaration> used)
    {
        if (v.ConstOffset % v.Bytes != 0)
            return $"constant offset {v.ConstOffset} is not a multiple of the access width";
        if (v.Origins.Count != 1)
            return v.Origins.Count == 0 ? "address of unknown origin" : $"address mixes several origins ({string.Join(", ", v.Origins)})";
        var m = GlobalOrigin().Match(v.Origins[0]);
        if (!m.Success)
        {
            return v.Origins[0] == "loaded"
                ? "address loaded from memory: no host check can cover it"
                : $"address from {v.Origins[0]}: ILGPU aligns shared and local arrays to 4 bytes only";
        }

        var param = entry.Parameters.FirstOrDefault(p => p.Symbol == m.Groups[1].Value);
        if (param is null)
            return $"address from {m.Groups[1].Value}, which is no parameter of the entry";
        int offset = m.Groups[2].Success ? int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
        var decl = kernel.WideViews.FirstOrDefault(d => d.Parameter == param.Name && d.Offset == offset);
        if (decl is null)
            return $"view at byte {offset} of parameter {param.Name} is not declared in [KernelInfo] WideViews (declare it and check it in the launcher)";
        used.Add(decl);
        if (decl.ParameterBytes != param.Bytes)
            return $"parameter {param.Name} is {param.Bytes} bytes in the PTX but {decl.ParameterBytes} by KernelParamLayout: the field offsets cannot be trusted";
        if (decl.Bytes % v.Bytes != 0)
            return $"{decl.View} is declared {decl.Bytes}-byte aligned, not a multiple of this access";
        return null;
    }

    [GeneratedRegex(@"^\s*-\s+([\w.-]+):\s*(.+)$")]
    private static partial Regex AllowLine();

    [GeneratedRegex(@"^global:([\w$]+)(?:\+(\d+))?$")]
    private static partial Regex GlobalOrigin();
}
