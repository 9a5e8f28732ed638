// The two data-flow analyses behind PtxLint, over one PtxEntry's control-flow graph:
//
// Uniformity: a forward taint analysis. ILGPU emits `bra.uni` where its own analysis believes the predicate is the
// same on every active lane of the warp; that analysis follows data only, so a value that differs per lane without a
// thread-index operand (a load from per-thread local memory, an atomic's result, a value merged after a divergent
// branch) can reach a `bra.uni` predicate. On a GPU a divergent `bra.uni` is undefined behaviour (lanes follow the
// first lane's path). Sources: %tid.*, %laneid, %warpid, %lanemask_*, clocks; results of shfl, vote, atom, match,
// activemask and every ld.local; an ld whose address is tainted. A load from a uniform address stays uniform (every
// lane reads the same word), as do %ctaid, %ntid, %nctaid and parameters. Taint flows through every instruction that
// writes a register (a guarded instruction also takes its guard's taint) and, for control dependence, into every
// register assigned between a divergent branch and the point where its paths join (its immediate post-dominator):
// after the join, lanes that took different paths hold different values even when each value came from uniform
// operands. The analysis iterates to a fixpoint over loops and over the set of divergent branches.
//
// Provenance: which kernel parameter each pointer register comes from. ILGPU loads a view's pointer with ld.param
// and converts it with cvta.to.global; address arithmetic keeps the origin. A vector access (ld/st .v2/.v4) is then
// tied to (parameter, byte offset inside the parameter), which PtxLint maps to a declared view of [KernelInfo].
using System.Globalization;
using System.Text.RegularExpressions;

namespace ILGpuMoE.Ptx;

/// <summary>A bra.uni (or brx.idx.uni) whose predicate differs per lane, with the chain of instructions that made it so.</summary>
public sealed record UniformityFinding(int Line, string Instruction, string Chain);

/// <summary>A vector access: its width in bytes and where its address comes from (empty when unknown).</summary>
public sealed record VectorAccess(int Line, string Instruction, int Bytes, long ConstOffset, IReadOnlyList<string> Origins);

public static partial class PtxAnalyses
{
    private const int MaxChainLinks = 10;


    private static readonly string[] ThreadRegisters = ["%tid", "%laneid", "%warpid", "%lanemask", "%clock", "%globaltimer"];

    private static readonly HashSet<string> LaneResults = new(StringComparer.Ordinal) { "shfl", "vote", "atom", "match", "activemask", "redux" };

    public static IReadOnlyList<UniformityFinding> Uniformity(PtxEntry entry)
    {
        var blocks = entry.Blocks;
        var ipdom = ImmediatePostDominators(entry);
        var defs = blocks.Select(b => b.Instructions.SelectMany(i => i.Dests).ToHashSet(StringComparer.Ordinal)).ToArray();
        var divergent = new HashSet<int>();
        var extra = new Dictionary<int, Dictionary<string, string>>();

        // Called with each block's state at its end (a branch writes no register, so also the state its guard is read
        // in): a newly lane-dependent branch taints, at its join, every register assigned between branch and join.
        IEnumerable<int> OnBlockEnd(int b, Dictionary<string, string> state)
        {
            var last = blocks[b].Instructions.Count > 0 ? blocks[b].Instructions[^1] : null;
            if (last is null || !last.IsBranch || (last.Guard is null && last.Root != "brx") || divergent.Contains(b) || ipdom[b] < 0
                || !last.Sources.Any(s => Taint(state, s) is not null))
                return [];
            divergent.Add(b);
            int join = ipdom[b];
            if (!extra.TryGetValue(join, out var set))
                extra[join] = set = new Dictionary<string, string>(StringComparer.Ordinal);
            var region = Region(entry, b, join).ToHashSet();
            foreach (var d in region.SelectMany(r => defs[r]).Distinct())
            {
                if (!PathInvariant(entry, b, join, region, d, state))
                    Join(set, d, $"{d} assigned under the lane-dependent branch at line {last.Line}, read after its paths join");
            }

            return [join];
        }

        var ins0 = Solve(entry, extra, TaintTransfer, keysOnly: true, OnBlockEnd);
        var findings = new List<UniformityFinding>();
        for (int b = 0; b < blocks.Count; b++)
        {
            var state = new Dictionary<string, string>(ins0[b], StringComparer.Ordinal);
            foreach (var ins in blocks[b].Instructions)
            {
                if (ins.IsBranch && ins.Opcode.EndsWith(".uni", StringComparison.Ordinal) && (ins.Guard is not null || ins.Root == "brx"))
                {
                    string? chain = ins.Sources.Select(s => Taint(state, s)).FirstOrDefault(c => c is not null);
                    if (chain is not null)
                        findings.Add(new UniformityFinding(ins.Line, Describe(ins), chain));
                }

                TaintTransfer(ins, state);
            }
        }

        return findings;
    }

    public static IReadOnlyList<VectorAccess> VectorAccesses(PtxEntry entry)
    {
        var ins0 = Solve(entry, new Dictionary<int, Dictionary<string, string>>(), OriginTransfer, keysOnly: false);
        var result = new List<VectorAccess>();
        foreach (var block in entry.Blocks)
        {
            var state = new Dictionary<string, string>(ins0[block.Index], StringComparer.Ordinal);
            foreach (var ins in block.Instructions)
            {
                var v = VectorOp().Match(ins.Opcode);
                if (v.Success && ins.Address is not null)
                {
                    int lanes = int.Parse(v.Groups[2].Value, CultureInfo.InvariantCulture);
                    int bits = int.Parse(v.Groups[3].Value, CultureInfo.InvariantCulture);
                    var addr = AddressParts().Match(ins.Address);
                    string reg = addr.Groups[1].Value;
                    long offset = addr.Groups[2].Success ? long.Parse(addr.Groups[2].Value.Replace("+", "", StringComparison.Ordinal), CultureInfo.InvariantCulture) : 0;
                    var origins = reg.StartsWith('%') && state.TryGetValue(reg, out var o)
                        ? o.Split('|').ToList()
                        : reg.StartsWith('%') ? [] : [$"sym:{reg}"];
                    // An index computed from loaded data (an expert id, a tile start) also reaches the address; when a
                    // pointer origin is there, the loaded part is the index, not the base.
                    if (origins.Any(x => x.StartsWith("global:", StringComparison.Ordinal) || x.StartsWith("sym:", StringComparison.Ordinal)))
                        origins.RemoveAll(x => x == "loaded" || x.StartsWith("raw:", StringComparison.Ordinal));
                    result.Add(new VectorAccess(ins.Line, Describe(ins), lanes * bits / 8, offset, origins));
                }

                OriginTransfer(ins, state);
            }
        }

        return result;
    }

    // ---- taint --------------------------------------------------------------------------------------------------

    private static string? Taint(Dictionary<string, string> state, string reg)
    {
        if (ThreadRegisters.Any(t => reg.StartsWith(t, StringComparison.Ordinal)))
            return reg;
        return state.TryGetValue(reg, out var chain) ? chain : null;
    }

    private static void TaintTransfer(PtxInstruction ins, Dictionary<string, string> state)
    {
        if (ins.Dests.Count == 0)
            return;
        string? because;
        if (LaneResults.Contains(ins.Root))
            because = $"{ins.Opcode} result differs per lane";
        else if (ins.Opcode.StartsWith("ld.local", StringComparison.Ordinal))
            because = "ld.local: per-thread memory";
        else
            because = ins.Sources.Select(s => Taint(state, s)).FirstOrDefault(c => c is not null);

        foreach (var d in ins.Dests)
        {
            if (because is not null)
            {
                string link = $"{d} = {ins.Opcode} (line {ins.Line})";
                int links = because.Split(" <- ").Length;
                state[d] = links >= MaxChainLinks ? $"{link} <- ... <- {because[(because.LastIndexOf(" <- ", StringComparison.Ordinal) + 4)..]}" : $"{link} <- {because}";
            }
            else if (ins.Guard is null)
            {
                state.Remove(d);
            }
        }
    }

    // ---- provenance ---------------------------------------------------------------------------------------------

    private static void OriginTransfer(PtxInstruction ins, Dictionary<string, string> state)
    {
        // Addresses are 64-bit (.address_size 64): only %rd registers can carry one.
        if (ins.Dests.Count == 0 || !ins.Dests[0].StartsWith("%rd", StringComparison.Ordinal))
            return;
        string? value;
        if (ins.Opcode.StartsWith("ld.param", StringComparison.Ordinal) && ins.Address is not null)
        {
            value = "raw:" + ins.Address.Trim('[', ']').Replace(" ", "", StringComparison.Ordinal);
        }
        else if (ins.Root == "ld")
        {
            value = "loaded";
        }
        else
        {
            value = null;
            foreach (var src in ins.Sources)
            {
                if (state.TryGetValue(src, out var o))
                    value = Union(value, Carry(ins.Root, o));
            }

            // mov %rd, symbol: the address of a .shared / .local array.
            if (ins.Root == "mov" && ins.Operands.Count == 2 && Symbol().IsMatch(ins.Operands[1]))
                value = Union(value, "sym:" + ins.Operands[1]);
        }

        foreach (var d in ins.Dests)
        {
            if (value is not null)
                state[d] = ins.Guard is not null && state.TryGetValue(d, out var old) ? Union(old, value)! : value;
            else if (ins.Guard is null)
                state.Remove(d);
        }
    }

    // What an instruction passes on from one source's origins: a raw parameter slot becomes a global pointer through
    // cvta, stays raw through mov, and means nothing once used in arithmetic (a length or a scalar).
    private static string? Carry(string root, string origins)
    {
        if (!origins.Contains("raw:", StringComparison.Ordinal))
            return origins;
        var kept = origins.Split('|')
            .Select(o => !o.StartsWith("raw:", StringComparison.Ordinal) ? o : root == "cvta" ? "global:" + o[4..] : root == "mov" ? o : null)
            .Where(o => o is not null);
        string joined = string.Join('|', kept);
        return joined.Length > 0 ? joined : null;
    }

    private static string? Union(string? a, string? b)
    {
        if (a is null || a == b)
            return b;
        if (b is null)
            return a;
        return string.Join('|', a.Split('|').Union(b.Split('|')).Order(StringComparer.Ordinal));
    }

    // ---- the data-flow engine -----------------------------------------------------------------------------------

    /// <summary>Forward may-analysis: the state at each block's entry (register -> value), joined over predecessors.</summary>
    /// <remarks>Taint states are compared by their key sets only (the chains are annotations: the first one found is
    /// kept), origin states by value; both grow monotonically, so the iteration ends.</remarks>
    private static Dictionary<string, string>[] Solve(PtxEntry entry, Dictionary<int, Dictionary<string, string>> extra,
        Action<PtxInstruction, Dictionary<string, string>> transfer, bool keysOnly,
        Func<int, Dictionary<string, string>, IEnumerable<int>>? onBlockEnd = null)
    {
        var blocks = entry.Blocks;
        var inState = blocks.Select(_ => new Dictionary<string, string>(StringComparer.Ordinal)).ToArray();
        var outState = blocks.Select(_ => (Dictionary<string, string>?)null).ToArray();
        var work = new SortedSet<int>(Enumerable.Range(0, blocks.Count));
        while (work.Count > 0)
        {
            int b = work.Min;
            work.Remove(b);
            var state = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (int p in blocks[b].Predecessors)
            {
                if (outState[p] is { } po)
                {
                    foreach (var (k, v) in po)
                        Join(state, k, v);
                }
            }

            if (extra.TryGetValue(b, out var add))
            {
                foreach (var (k, v) in add)
                    Join(state, k, v);
            }

            inState[b] = new Dictionary<string, string>(state, StringComparer.Ordinal);
            foreach (var ins in blocks[b].Instructions)
                transfer(ins, state);
            foreach (int again in onBlockEnd?.Invoke(b, state) ?? [])
                work.Add(again);
            if (outState[b] is { } prev && Same(prev, state, keysOnly))
                continue;
            outState[b] = state;
            foreach (int s in blocks[b].Successors)
            {
                if (s >= 0)
                    work.Add(s);
            }
        }

        return inState;
    }

    // Join of two facts about one register: a taint chain already there stays (any one chain proves the taint);
    // origin sets are unions.
    private static void Join(Dictionary<string, string> state, string key, string value)
    {
        if (!state.TryGetValue(key, out var old))
        {
            state[key] = value;
            return;
        }

        if (old != value && !old.StartsWith('%'))
            state[key] = Union(old, value)!;
    }

    private static bool Same(Dictionary<string, string> a, Dictionary<string, string> b, bool keysOnly) =>
        a.Count == b.Count && a.All(kv => b.TryGetValue(kv.Key, out var v) && (keysOnly || v == kv.Value));

    // ---- post-dominators ----------------------------------------------------------------------------------------

    /// <summary>Immediate post-dominator of each block (-1: only the exit).</summary>
    private static int[] ImmediatePostDominators(PtxEntry entry)
    {
        var blocks = entry.Blocks;
        int n = blocks.Count, words = n / 64 + 1; // at least one spare bit: an all-ones set counts more than n
        // pdom[b]: the blocks on every path from b to the exit, as a bit set; all ones until known.
        var pdom = new ulong[n][];
        for (int b = 0; b < n; b++)
            pdom[b] = Enumerable.Repeat(ulong.MaxValue, words).ToArray();
        var next = new ulong[words];
        bool changed = true;
        while (changed)
        {
            changed = false;
            for (int b = n - 1; b >= 0; b--)
            {
                Array.Fill(next, ulong.MaxValue);
                foreach (int s in blocks[b].Successors)
                {
                    if (s < 0)
                    {
                        Array.Clear(next);
                        break;
                    }

                    for (int w = 0; w < words; w++)
                        next[w] &= pdom[s][w];
                }

                next[b >> 6] |= 1UL << (b & 63);
                if (!next.AsSpan().SequenceEqual(pdom[b]))
                {
                    next.CopyTo(pdom[b], 0);
                    changed = true;
                }
            }
        }

        bool Has(int b, int d) => (pdom[b][d >> 6] & (1UL << (d & 63))) != 0;
        var size = pdom.Select(p => p.Sum(w => System.Numerics.BitOperations.PopCount(w))).ToArray();
        var result = new int[n];
        for (int b = 0; b < n; b++)
        {
            // The nearest strict post-dominator is the one with the most post-dominators of its own. A block that
            // never reaches the exit keeps the all-ones set: no join (-1).
            int best = -1;
            if (size[b] <= n)
            {
                for (int d = 0; d < n; d++)
                {
                    if (d != b && Has(b, d) && size[d] <= n && (best < 0 || size[d] > size[best]))
                        best = d;
                }
            }

            result[b] = best;
        }

        return result;
    }

    /// <summary>
    /// True when d holds the same value on every path from branch block b to its join: every path sets it (b itself
    /// counts, its instructions run before the branch) and all its definitions in the region are one instruction, or
    /// movs of one immediate, whose operands are themselves path-invariant (uniform and not redefined in the region,
    /// or invariant by the same rule). Two shapes ILGPU emits: a loop counter's start "mov %r5, 0" bound on both sides
    /// of an if before a shared loop, and a uniform row base such as (ctaid / n) * 16 recomputed in the header of a
    /// lane-strided loop. Such a d is equal on all lanes at the join, whichever way each lane went.
    /// </summary>
    private static bool PathInvariant(PtxEntry entry, int b, int join, HashSet<int> region, string d, Dictionary<string, string> branchState)
    {
        var memo = new Dictionary<string, bool>(StringComparer.Ordinal);
        if (!Invariant(d))
            return false;

        // Must-define: no path from b reaches the join without passing a definition of d.
        if (entry.Blocks[b].Instructions.Any(i => i.Dests.Contains(d)))
            return true;
        var seen = new HashSet<int>();
        var stack = new Stack<int>(entry.Blocks[b].Successors);
        while (stack.Count > 0)
        {
            int r = stack.Pop();
            if (r == join || r < 0)
                return false;
            if (!seen.Add(r) || entry.Blocks[r].Instructions.Any(i => i.Dests.Contains(d)))
                continue;
            foreach (int s in entry.Blocks[r].Successors)
                stack.Push(s);
        }

        return true;

        bool Invariant(string reg)
        {
            if (memo.TryGetValue(reg, out bool known))
                return known;
            memo[reg] = false; // a cycle through reg (a loop-carried update) is not invariant
            var sites = region.Append(b).Distinct().SelectMany(r => entry.Blocks[r].Instructions).Where(i => i.Dests.Contains(reg)).ToList();
            bool ok;
            if (sites.Count == 0)
            {
                ok = Taint(branchState, reg) is null;
            }
            else if (sites.All(i => i.Root == "mov" && i.Guard is null && i.Operands.Count == 2 && ImmediateOperand().IsMatch(i.Operands[1])))
            {
                ok = sites.Select(i => i.Operands[1]).Distinct().Count() == 1;
            }
            else
            {
                var site = sites.Select(i => i.Line).Distinct().Count() == 1 ? sites[0] : null;
                ok = site is not null && site.Guard is null && site.Dests.Count == 1 && !LaneResults.Contains(site.Root)
                    && site.Root != "ld" && site.Sources.All(Invariant);
            }

            memo[reg] = ok;
            return ok;
        }
    }

    /// <summary>Blocks reachable from b's successors without passing through join: where b's paths differ.</summary>
    private static IEnumerable<int> Region(PtxEntry entry, int b, int join)
    {
        var seen = new HashSet<int>();
        var stack = new Stack<int>(entry.Blocks[b].Successors.Where(s => s >= 0 && s != join));
        while (stack.Count > 0)
        {
            int r = stack.Pop();
            if (!seen.Add(r))
                continue;
            foreach (int s in entry.Blocks[r].Successors)
            {
                if (s >= 0 && s != join)
                    stack.Push(s);
            }
        }

        return seen;
    }

    private static string Describe(PtxInstruction ins) =>
        (ins.Guard is null ? "" : "@" + ins.Guard + " ") + ins.Opcode + " " + string.Join(", ", ins.Operands);

    [GeneratedRegex(@"^(ld|st)\..*\bv(2|4)\.[a-z](\d+)$")]
    private static partial Regex VectorOp();

    [GeneratedRegex(@"^\[\s*([%\w$]+)\s*(\+\s*-?\d+)?\s*\]$")]
    private static partial Regex AddressParts();

    [GeneratedRegex(@"^[A-Za-z_$][\w$]*$")]
    private static partial Regex Symbol();

    [GeneratedRegex(@"^(-?\d+|0[fFdD][0-9A-Fa-f]+)$")]
    private static partial Regex ImmediateOperand();
}
