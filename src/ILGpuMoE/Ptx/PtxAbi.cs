// The launch ABI of one exported kernel, for an engine that loads the .ptx with the CUDA driver API and never reads
// C#: the entry symbol, the parameter buffer (each parameter's offset, size and alignment, and the scalar slots of
// struct and ArrayView parameters), the launch shape and the minimum sm.
//
// How ILGPU 1.5.3 passes arguments (its PTXArgumentMapper and CudaAccelerator's launcher): every parameter of the
// kernel method becomes one .param of the entry, in order; ILGPU packs them into one struct and launches with
// cuLaunchKernel's `extra` = { CU_LAUNCH_PARAM_BUFFER_POINTER, buffer, CU_LAUNCH_PARAM_BUFFER_SIZE, &size }, so the
// buffer is C struct layout: each parameter at its alignment, the size rounded up to the largest alignment. An
// ArrayView<T> is 16 bytes aligned 8: the device address of element 0, then the length in elements (i64). A struct is
// one .b8 array holding its fields in declaration order at natural alignment (KernelParamLayout). An implicitly
// grouped kernel (first parameter Index1D/2D/3D) has no .param for that index: ILGPU passes the launch extent instead,
// as a leading parameter of the index type (".param .b32 _i_N" for Index1D, the bound every thread checks), which the
// ABI calls "$kernelLength" (PtxExportTests checks it on a kernel of its own); explicitly grouped kernels, all of
// ours, have none. Describe checks all of this against the entry's .param list, so a layout rule that stops holding fails
// the export instead of writing a wrong manifest.
using System.Globalization;
using System.Reflection;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;
using ILGPU;

namespace ILGpuMoE.Ptx;

/// <summary>
/// One parameter of the entry: Name is the C# name ("$kernelLength" for ILGPU's implicit extent), Symbol the PTX
/// .param name, Offset its place in the parameter buffer; Fields its scalar slots (offsets from the parameter's start).
/// </summary>
public sealed record AbiParameter(string Name, string Type, string Symbol, int Offset, int Bytes, int Align, IReadOnlyList<ParamSlot> Fields);

/// <summary>
/// Grid: one formula per dimension (x, then y), in the named dimensions of [KernelInfo] Launch; Group: threads per
/// group as a formula, GroupThreads the number when it is one; DynamicSharedBytes: "0" when the PTX declares no dynamic
/// shared memory, else a byte count or formula (MaxDynamicSharedBytes bounds it).
/// </summary>
public sealed record LaunchShape(IReadOnlyList<string> Grid, string Group,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int? GroupThreads,
    string DynamicSharedBytes, int MaxDynamicSharedBytes);

/// <summary>What manifest.json's "abi" holds for a kernel.</summary>
public sealed record KernelAbi(string Entry, string Target, int MinSm, int ParamBytes, IReadOnlyList<AbiParameter> Params, LaunchShape Launch);

public static partial class PtxAbi
{
    /// <summary>The ABI of <paramref name="kernel"/> compiled to <paramref name="ptx"/>; throws when the two disagree.</summary>
    public static KernelAbi Describe(MethodInfo kernel, bool implicitlyGrouped, string ptx, string launch, int maxDynamicSharedBytes)
    {
        var entries = PtxEntry.ParseAll(ptx);
        if (entries.Count != 1)
            throw new InvalidOperationException($"{kernel.Name}: the PTX holds {entries.Count} .entry directives, not one");
        var declared = Declarations(ptx);

        var expected = new List<(string Name, string Type, int Bytes, int Align, IReadOnlyList<ParamSlot> Fields)>();
        var ps = kernel.GetParameters();
        if (implicitlyGrouped)
        {
            var index = ps[0].ParameterType;
            var (size, align) = KernelParamLayout.SizeAlign(index);
            expected.Add(("$kernelLength", index.Name, size, align, KernelParamLayout.Slots(index, "$kernelLength")));
            ps = ps[1..];
        }

        foreach (var p in ps)
        {
            var (size, align) = KernelParamLayout.SizeAlign(p.ParameterType);
            expected.Add((p.Name!, PtxExporter.TypeName(p.ParameterType), size, align, KernelParamLayout.Slots(p.ParameterType, p.Name!)));
        }

        if (declared.Count != expected.Count)
            throw new InvalidOperationException($"{kernel.Name}: {expected.Count} parameters by KernelParamLayout but {declared.Count} .param in the PTX");

        var result = new List<AbiParameter>();
        int offset = 0, maxAlign = 1;
        for (int i = 0; i < expected.Count; i++)
        {
            var (name, type, bytes, align, fields) = expected[i];
            var d = declared[i];
            if (d.Bytes != bytes || d.Align != align)
                throw new InvalidOperationException($"{kernel.Name}: parameter {name} is {bytes} bytes aligned {align} by KernelParamLayout, " +
                    $"{d.Bytes} aligned {d.Align} in the PTX ({d.Symbol})");
            offset = (offset + align - 1) / align * align;
            result.Add(new AbiParameter(name, type, d.Symbol, offset, bytes, align, fields));
            offset += bytes;
            maxAlign = Math.Max(maxAlign, align);
        }

        var target = TargetLine().Match(ptx);
        if (!target.Success)
            throw new InvalidOperationException($"{kernel.Name}: the PTX has no .target sm_NN line");
        bool dynamicShared = ptx.Contains(".extern .shared", StringComparison.Ordinal);
        return new KernelAbi(entries[0].Name, "sm_" + target.Groups[1].Value, int.Parse(target.Groups[1].Value, CultureInfo.InvariantCulture),
            (offset + maxAlign - 1) / maxAlign * maxAlign, result, ParseLaunch(launch, dynamicShared, maxDynamicSharedBytes));
    }

    /// <summary>One .param of an entry as declared: symbol, bytes and alignment (".align N", else the element size).</summary>
    public sealed record ParamDeclaration(string Symbol, int Bytes, int Align);

    /// <summary>The .param list of the first .entry of a PTX module, in order.</summary>
    public static IReadOnlyList<ParamDeclaration> Declarations(string ptx)
    {
        int start = ptx.IndexOf(".entry", StringComparison.Ordinal);
        if (start < 0)
            return [];
        int open = ptx.IndexOf('(', start), close = ptx.IndexOf(')', start);
        if (open < 0 || close < open)
            return [];
        return ParamLine().Matches(ptx[open..close]).Select(m =>
        {
            int element = m.Groups[2].Value[1..] switch
            {
                "8" => 1,
                "16" => 2,
                "32" => 4,
                "64" => 8,
                var w => throw new FormatException($"PTX .param width {w} is not one this reader knows"),
            };
            int count = m.Groups[4].Success ? int.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture) : 1;
            int align = m.Groups[1].Success ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : element;
            return new ParamDeclaration(m.Groups[3].Value, element * count, align);
        }).ToList();
    }

    /// <summary>
    /// "grid (tiles, ceil(F/32)), group 128 = 4 warps, 30976 B dynamic shared" -> grid ["tiles", "ceil(F/32)"],
    /// group "128" (128 threads), dynamic shared "30976". A remark in parentheses or after ':' / '=' / ',' is dropped
    /// (the manifest keeps the whole text as "launch").
    /// </summary>
    public static LaunchShape ParseLaunch(string launch, bool dynamicShared, int maxDynamicSharedBytes)
    {
        string text = launch.Trim();
        int groupAt = TopLevelIndex(text, ", group ");
        if (!text.StartsWith("grid ", StringComparison.Ordinal) || groupAt < 0)
            throw new FormatException($"[KernelInfo] Launch \"{launch}\" is not \"grid ..., group ...\"");
        string grid = text[5..groupAt].Trim();
        string rest = text[(groupAt + ", group ".Length)..];
        IReadOnlyList<string> dims = grid.StartsWith('(') && MatchingParen(grid, 0) is var end && end > 0
            ? SplitTopLevel(grid[1..end])
            : [Cut(grid)];
        string group = Cut(rest);
        int? threads = int.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : null;

        string shared = "0";
        if (dynamicShared)
        {
            var bytes = SharedBytes().Match(text);
            var floats = SharedFloats().Match(text);
            shared = bytes.Success ? bytes.Groups[1].Value
                : floats.Success ? $"({floats.Groups[1].Value.Trim()})*4"
                : maxDynamicSharedBytes > 0 ? maxDynamicSharedBytes.ToString(CultureInfo.InvariantCulture)
                : throw new FormatException($"[KernelInfo] Launch \"{launch}\": the PTX uses dynamic shared memory but neither Launch nor MaxDynamicSharedBytes says how much");
        }

        return new LaunchShape(dims, group, threads, shared, maxDynamicSharedBytes);
    }

    /// <summary>The text up to the first top-level remark: " (", ":", ";", " =", ",".</summary>
    private static string Cut(string s)
    {
        int depth = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c == '(' && depth == 0 && i > 0 && s[i - 1] == ' ')
                return s[..i].Trim();
            depth += c == '(' ? 1 : c == ')' ? -1 : 0;
            if (depth == 0 && (c is ':' or ';' or ',' || (c == '=' && i > 0 && s[i - 1] == ' ')))
                return s[..i].Trim();
        }

        return s.Trim();
    }

    private static int TopLevelIndex(string s, string what)
    {
        int depth = 0;
        for (int i = 0; i < s.Length; i++)
        {
            if (depth == 0 && string.CompareOrdinal(s, i, what, 0, what.Length) == 0)
                return i;
            depth += s[i] == '(' ? 1 : s[i] == ')' ? -1 : 0;
        }

        return -1;
    }

    private static int MatchingParen(string s, int open)
    {
        int depth = 0;
        for (int i = open; i < s.Length; i++)
        {
            depth += s[i] == '(' ? 1 : s[i] == ')' ? -1 : 0;
            if (depth == 0)
                return i;
        }

        return -1;
    }

    private static List<string> SplitTopLevel(string s)
    {
        var parts = new List<string>();
        int depth = 0, from = 0;
        for (int i = 0; i < s.Length; i++)
        {
            depth += s[i] == '(' ? 1 : s[i] == ')' ? -1 : 0;
            if (depth == 0 && s[i] == ',')
            {
                parts.Add(s[from..i].Trim());
                from = i + 1;
            }
        }

        parts.Add(s[from..].Trim());
        return parts;
    }

    [GeneratedRegex(@"\.param\s+(?:\.align\s+(\d+)\s+)?\.([bsuf](?:8|16|32|64))\s+([\w$]+)(?:\[(\d+)\])?")]
    private static partial Regex ParamLine();

    [GeneratedRegex(@"^\s*\.target\s+sm_(\d+)", RegexOptions.Multiline)]
    private static partial Regex TargetLine();

    [GeneratedRegex(@"(\d+) B dynamic shared")]
    private static partial Regex SharedBytes();

    [GeneratedRegex(@"dynamic shared (.+?) floats")]
    private static partial Regex SharedFloats();
}
