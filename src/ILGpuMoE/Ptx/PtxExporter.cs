// PTX export: compiles every kernel marked [KernelInfo] for sm_90 through ILGPU's PTX backend, with no GPU present.
//
// Kernel researchers read the PTX; tools/ptxas-check.sh feeds it to `ptxas -arch=sm_90 -v` for registers, shared
// memory and spills. ILGPU 1.5.3 writes `.target sm_80` even when SM_90 is asked (perf/notes/toolchain-facts.md); the ISA we ask for
// (7.8 by default) is the newest that the ptxas of Debian's CUDA 11.8 reads.
// Tensor-core kernels ([KernelInfo] TensorCore set) are exported as the GPU loads them: after the asm-operand pass
// (kernels/ILGpuMoE.Kernels/TensorCore/PtxAsmOperands.cs, which KernelLaunches.LoadTensorCore runs too), so the SASS
// gate judges the code that runs; their version names contain "mma", and so do their file names.
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Decode;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Kernels.TensorCore;

namespace ILGpuMoE.Ptx;

/// <summary>One compiled kernel: where its PTX went and what the manifest says of it.</summary>
public sealed record PtxKernel(string Name, string Family, string Version, string WeightType, string Method,
    string Launch, string Summary, IReadOnlyList<string> Parameters, string File, int PtxBytes, string? Error)
{
    /// <summary>[KernelInfo] WideViews, placed in the PTX parameters (see <see cref="KernelParamLayout"/>).</summary>
    public IReadOnlyList<WideViewDeclaration> WideViews { get; init; } = [];

    /// <summary>The launch ABI (entry symbol, parameter buffer, launch shape, minimum sm): see <see cref="PtxAbi"/>.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public KernelAbi? Abi { get; init; }

    /// <summary>[KernelInfo] BlockSize: threads per group of the launcher's largest configuration (0 = undeclared).</summary>
    public int BlockSize { get; init; }

    /// <summary>[KernelInfo] MaxDynamicSharedBytes.</summary>
    public int MaxDynamicSharedBytes { get; init; }

    /// <summary>The block size the PTX gate checks registers against: the declared one, else Devices.MaxGroupSize,
    /// the most threads any launcher of ours puts in a group (every kernel test enforces it: the CPU accelerator's
    /// groups hold at most that many threads, so a launcher asking for more fails its own tests).</summary>
    public int CheckedBlockSize => BlockSize > 0 ? BlockSize : Devices.MaxGroupSize;

    /// <summary>[KernelInfo] TensorCore: the SASS instruction ("HMMA", "IMMA") the SASS gate requires; null for SIMT kernels.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? TensorCore { get; init; }

    /// <summary>For a tensor-core kernel: what the asm-operand pass did to its PTX (PtxAsmOperandsResult.Summary).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? AsmOperands { get; init; }

    /// <summary>[KernelInfo] Decode; the manifest writes it as "decode" and "decodeUse" (below).</summary>
    [JsonIgnore]
    public DecodeUse DecodeUse { get; init; }

    /// <summary>Manifest "decode": true for the kernels a CUDA decode step launches (absent for the others).</summary>
    [JsonPropertyName("decode")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool IsDecode => DecodeUse != DecodeUse.None;

    /// <summary>Manifest "decodeUse": "weights" or "activations" (absent when not a decode kernel).</summary>
    [JsonPropertyName("decodeUse")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? DecodeUseName => DecodeUse == DecodeUse.None ? null : SassKernelReport.DecodeName(DecodeUse);
}

public static class PtxExporter
{
    /// <summary>The settings manifest.json is written with (Export spells them out where it writes it), for sass.json.</summary>
    public static readonly JsonSerializerOptions ManifestJson = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    /// <summary>Every static method of the kernels assembly that carries [KernelInfo], in a stable order.</summary>
    public static IReadOnlyList<(MethodInfo Method, KernelInfoAttribute Info)> FindKernels(Assembly? assembly = null)
    {
        assembly ??= typeof(KernelInfoAttribute).Assembly;
        return assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            .Select(m => (Method: m, Info: m.GetCustomAttribute<KernelInfoAttribute>()))
            .Where(p => p.Info is not null)
            .Select(p => (p.Method, p.Info!))
            .OrderBy(p => p.Item2.Family, StringComparer.Ordinal)
            .ThenBy(p => p.Item2.Version, StringComparer.Ordinal)
            .ThenBy(p => p.Method.DeclaringType!.FullName + "." + p.Method.Name, StringComparer.Ordinal)
            .ToList();
    }

    /// <summary>
    /// Compiles every kernel and writes DIR/&lt;family&gt;-&lt;version&gt;[-&lt;wt&gt;].ptx plus DIR/manifest.json.
    /// A kernel that fails to compile is listed with its error (and no file) rather than stopping the export.
    /// </summary>
    public static IReadOnlyList<PtxKernel> Export(string outDir, CudaInstructionSet? isa = null, Action<string>? log = null)
    {
        Directory.CreateDirectory(outDir);
        var results = new List<PtxKernel>();
        var used = new HashSet<string>(StringComparer.Ordinal);
        var arch = CudaArchitecture.SM_90;
        var set = isa ?? CudaInstructionSet.ISA_78;
        Context? context = null;
        PTXBackend? backend = null;
        try
        {
            foreach (var (method, info) in FindKernels())
            {
                foreach (var (wt, concrete) in Instantiate(method, info))
                {
                    // After an internal compiler error ILGPU fails every later compile in the same context
                    // (perf/notes/toolchain-facts.md): a fresh context after each failure keeps one bad kernel from
                    // hiding the others.
                    if (context is null)
                    {
                        // b.Default() enables CUDA: ILGPU binds the driver at this first context (CudaDriver).
                        CudaDriver.InstallResolver();
                        context = Context.Create(b => b.Default().EnableAlgorithms().Optimize(OptimizationLevel.O2));
                        backend = new PTXBackend(context, new CudaCapabilityContext(arch), arch, set, null!);
                    }

                    string baseName = FileName(info, wt);
                    string file = baseName + ".ptx";
                    // A file is named for the one entry it holds: two entries of a family and version need their own
                    // [KernelInfo] Entry ("histogram", "scan"), never a name made up from the first one's.
                    string? problem = used.Add(baseName) ? TensorCoreNameProblem(info, baseName)
                        : $"{baseName} is already the name of another entry of {info.Family} {info.Version}: give each entry its own [KernelInfo] Entry";
                    if (problem is not null)
                    {
                        results.Add(new PtxKernel(baseName, info.Family, info.Version, wt, $"{concrete.DeclaringType!.FullName}.{concrete.Name}",
                            info.Launch, info.Summary, [], "", 0, problem));
                        log?.Invoke($"FAIL  {baseName}: {problem}");
                        continue;
                    }

                    var parameters = concrete.GetParameters().Select(p => $"{TypeName(p.ParameterType)} {p.Name}").ToList();
                    string methodName = $"{concrete.DeclaringType!.FullName}.{concrete.Name}";
                    try
                    {
                        var entry = IsImplicitlyGrouped(concrete)
                            ? EntryPointDescription.FromImplicitlyGroupedKernel(concrete)
                            : EntryPointDescription.FromExplicitlyGroupedKernel(concrete);
                        var compiled = (PTXCompiledKernel)backend!.Compile(entry, KernelSpecialization.Empty);
                        string ptx = compiled.PTXAssembly;
                        string? pass = null;
                        if (info.TensorCore.Length > 0)
                        {
                            var promoted = PtxAsmOperands.Promote(ptx);
                            (ptx, pass) = (promoted.Ptx, promoted.Summary);
                        }

                        var abi = PtxAbi.Describe(concrete, IsImplicitlyGrouped(concrete), ptx, info.Launch, info.MaxDynamicSharedBytes);
                        File.WriteAllText(Path.Combine(outDir, file), ptx);
                        results.Add(new PtxKernel(baseName, info.Family, info.Version, wt, methodName, info.Launch, info.Summary,
                            parameters, file, ptx.Length, null)
                        {
                            TensorCore = info.TensorCore.Length > 0 ? info.TensorCore : null,
                            AsmOperands = pass,
                            WideViews = KernelParamLayout.Resolve(concrete, info.WideViews),
                            BlockSize = info.BlockSize,
                            MaxDynamicSharedBytes = info.MaxDynamicSharedBytes,
                            DecodeUse = info.Decode,
                            Abi = abi,
                        });
                        log?.Invoke($"ok    {file} ({ptx.Length / 1024.0:F1} KiB)" + (pass is null ? "" : $": {pass}"));
                    }
#pragma warning disable CA1031 // one failing kernel is reported in the manifest, the export goes on
                    catch (Exception e)
#pragma warning restore CA1031
                    {
                        string error = $"{e.GetType().Name}: {e.Message}".ReplaceLineEndings(" ");
                        results.Add(new PtxKernel(baseName, info.Family, info.Version, wt, methodName, info.Launch, info.Summary,
                            parameters, "", 0, error));
                        log?.Invoke($"FAIL  {baseName}: {error}");
                        context.Dispose();
                        context = null;
                        backend = null;
                    }
                }
            }
        }
        finally
        {
            context?.Dispose();
        }

        var manifest = new
        {
            arch = "sm_90",
            isa = set.ToString(),
            ilgpu = typeof(Context).Assembly.GetName().Version?.ToString(),
            abiVersion = 1,
            abiNotes = AbiNotes,
            kernels = results,
        };
        // For tools/ptxas-check.sh (bash, no JSON reader): name, threads per group, most dynamic shared bytes, how the
        // block size is known, the tensor-core instruction ("-" for SIMT kernels).
        File.WriteAllLines(Path.Combine(outDir, "launch.tsv"),
            results.Where(k => k.Error is null).Select(k => $"{k.Name}\t{k.CheckedBlockSize}\t{k.MaxDynamicSharedBytes}\t{(k.BlockSize > 0 ? "declared" : "bound")}\t{k.TensorCore ?? "-"}"));
        File.WriteAllLines(Path.Combine(outDir, "abi.tsv"), AbiTsv(results));
        File.WriteAllText(Path.Combine(outDir, "manifest.json"),
            JsonSerializer.Serialize(manifest, new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase }));
        return results;
    }

    /// <summary>How to read "abi" (manifest.json repeats it, so the file explains itself).</summary>
    public static readonly IReadOnlyList<string> AbiNotes =
    [
        "launch: cuModuleLoadData(file), cuModuleGetFunction(abi.entry), cuLaunchKernel with kernelParams = NULL and extra = " +
            "{CU_LAUNCH_PARAM_BUFFER_POINTER, buffer, CU_LAUNCH_PARAM_BUFFER_SIZE, &abi.paramBytes, CU_LAUNCH_PARAM_END}",
        "buffer: each of abi.params at its offset (C struct layout); a field's place is param offset + field offset",
        "ArrayView<T>: 16 bytes, ptr = device address of element 0 (u64), length = elements (i64)",
        "launch shape: grid and group are formulas of the dimensions named in \"launch\"; sharedMemBytes = abi.launch.dynamicSharedBytes",
        "minSm: from the PTX .target; the PTX was generated for sm_90 (\"arch\") and its ISA is \"isa\"",
        "abi.tsv: the same slots, one per line, for readers without JSON (tools/ptx-launch/ptx_launch.c)",
    ];

    /// <summary>
    /// abi.tsv: per kernel a line "kernel NAME ENTRY FILE PARAM_BYTES MIN_SM GROUP DYNAMIC_SHARED" and one line per
    /// scalar slot "slot NAME SLOT OFFSET BYTES TYPE" (offset in the whole buffer), tab-separated: what a C launcher
    /// needs, with no JSON parser.
    /// </summary>
    private static IEnumerable<string> AbiTsv(IEnumerable<PtxKernel> kernels)
    {
        foreach (var k in kernels)
        {
            if (k.Abi is not { } abi)
                continue;
            yield return string.Join('\t', "kernel", k.Name, abi.Entry, k.File, abi.ParamBytes, abi.MinSm, abi.Launch.Group, abi.Launch.DynamicSharedBytes);
            foreach (var p in abi.Params)
                foreach (var f in p.Fields)
                    yield return string.Join('\t', "slot", k.Name, f.Name, p.Offset + f.Offset, f.Bytes, f.Type);
        }
    }

    /// <summary>
    /// The concrete methods to compile: the method itself, or one instance per weight reader: the quantized readers
    /// for a type parameter constrained to IQuantWeights, the mma input types for IMmaType, the float ones for IWeights (plus the quantized ones where
    /// [KernelInfo] QuantizedReaders says a launcher runs it on packed weights).
    /// </summary>
    private static IEnumerable<(string WeightType, MethodInfo Method)> Instantiate(MethodInfo method, KernelInfoAttribute info)
    {
        if (!method.IsGenericMethodDefinition)
        {
            yield return (info.Reader, method);
            yield break;
        }

        var args = method.GetGenericArguments();
        bool quantOnly = args.All(a => a.GetGenericParameterConstraints().Contains(typeof(IQuantWeights)));
        bool units = args.All(a => a.GetGenericParameterConstraints().Contains(typeof(IRowUnits)));
        bool mma = args.All(a => a.GetGenericParameterConstraints().Contains(typeof(IMmaType)));
        foreach (var arg in args)
        {
            var constraints = arg.GetGenericParameterConstraints();
            if (!constraints.Contains(typeof(IWeights)) && !constraints.Contains(typeof(IQuantWeights)) && !constraints.Contains(typeof(IRowUnits))
                && !constraints.Contains(typeof(IMmaType)))
                throw new InvalidOperationException($"{method.DeclaringType?.Name}.{method.Name}: generic parameter {arg.Name} is not constrained to IWeights");
        }

        var readers = mma ? WeightReaders.Mma
            : units ? WeightReaders.Units
            : quantOnly ? WeightReaders.Quantized
            : info.QuantizedReaders ? WeightReaders.Float.Concat(WeightReaders.Quantized)
            : WeightReaders.Float;
        foreach (var (name, type) in readers)
            yield return (name, method.MakeGenericMethod(Enumerable.Repeat(type, args.Length).ToArray()));
    }

    /// <summary>The instructions [KernelInfo] TensorCore may name: those the SASS gate looks for.</summary>
    public static readonly IReadOnlyList<string> TensorCoreInstructions = ["HMMA", "IMMA"];

    /// <summary>Null when a kernel's TensorCore marking is consistent: empty, or a known instruction with "mma" in the file name.</summary>
    public static string? TensorCoreNameProblem(KernelInfoAttribute info, string baseName)
    {
        if (info.TensorCore.Length == 0)
            return null;
        if (!TensorCoreInstructions.Contains(info.TensorCore))
            return $"[KernelInfo] TensorCore = \"{info.TensorCore}\" is not one of {string.Join(", ", TensorCoreInstructions)}";
        return baseName.Contains("mma", StringComparison.Ordinal)
            ? null
            : $"tensor-core kernel {baseName}: its version name must contain \"mma\" (file names of tensor-core PTX do)";
    }

    private static bool IsImplicitlyGrouped(MethodInfo m)
    {
        var ps = m.GetParameters();
        if (ps.Length == 0)
            return false;
        var t = ps[0].ParameterType;
        return t == typeof(Index1D) || t == typeof(Index2D) || t == typeof(Index3D)
            || t == typeof(LongIndex1D) || t == typeof(LongIndex2D) || t == typeof(LongIndex3D);
    }

    /// <summary>"dense/matmul" v2 bf16 -> "dense-matmul-v2-bf16"; with an entry: "moe-grouped-gemm-v2-tiled-down-bf16".</summary>
    public static string FileName(KernelInfoAttribute info, string weightType)
    {
        string name = $"{info.Family}-{info.Version}" + (info.Entry.Length > 0 ? "-" + info.Entry : "") + (weightType.Length > 0 ? "-" + weightType : "");
        var chars = name.Select(c => char.IsAsciiLetterOrDigit(c) || c == '-' || c == '_' || c == '.' ? char.ToLowerInvariant(c) : '-');
        return new string(chars.ToArray());
    }

    internal static string TypeName(Type t) =>
        t.IsGenericType ? $"{t.Name[..t.Name.IndexOf('`', StringComparison.Ordinal)]}<{string.Join(",", t.GetGenericArguments().Select(TypeName))}>" : t.Name;
}
