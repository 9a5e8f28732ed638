// The CUDA driver library: which file ILGPU gets, and what the driver answers.
//
// WHY: ILGPU 1.5.3 binds the driver API with [DllImport("cuda")] (Windows: "nvcuda"; both in ILGPU.dll, classes
// CudaAPI_1 / CudaAPI_0). .NET turns "cuda" into libcuda.so, an unversioned link that only the driver's development
// package ships; containers that mount the driver often carry libcuda.so.1 alone, and ILGPU then lists no CUDA device
// without saying why (it treats a missing library as "CUDA not supported"). InstallResolver points ILGPU's driver
// import at the first of the preferred library, libcuda.so, libcuda.so.1 that loads (Windows: preferred, nvcuda.dll).
// This library reads no environment: the entry points (src/ILGpuMoE/Runtime/ProcessEnvironment.cs, read by the CLI
// and the bench at start) pass ILGPUMOE_LIBCUDA in through PreferLibrary.
// Probe reports which file that was, or every name tried and why each failed, and what cuInit / cuDeviceGetCount
// returned, by name: the one line `ilgpumoe devices` prints and `--device cuda` fails with.
//
// Both are per process: .NET allows one import resolver per assembly, a library once loaded stays loaded, and ILGPU
// keeps the driver binding it made at its first CUDA call. So the resolver must be in place before the first Context
// that enables CUDA (Devices.CreateContext and the PTX exporter install it), and tests that swap the driver library
// run the CLI in a child process.
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace ILGpuMoE.Kernels;

/// <summary>A name tried for the driver library and why it did not load (the loader's own words). Requested: it was
/// the library the user asked for (CudaDriver.PreferLibrary), not one of the system's names.</summary>
public sealed record CudaLibraryFailure(string Name, string Reason, bool Requested = false)
{
    public override string ToString() => $"{Name}: {Reason}";
}

/// <summary>What the search for the driver library found and what the driver said.</summary>
/// <param name="Loaded">The name that loaded (the preferred library's label such as ILGPUMOE_LIBCUDA=value, libcuda.so,
/// libcuda.so.1, nvcuda.dll), or null.</param>
/// <param name="LoadedPath">The file the process mapped for it, when the OS says (Linux: /proc/self/maps).</param>
/// <param name="Failures">Every name tried before the one that loaded (all of them when none did), in order.</param>
/// <param name="InitResult">cuInit(0)'s CUresult; null without a library or without a cuInit export.</param>
/// <param name="CountResult">cuDeviceGetCount's CUresult; null when cuInit failed (the driver would only say
/// CUDA_ERROR_NOT_INITIALIZED).</param>
/// <param name="DeviceCount">Devices the driver counts (0 unless CountResult is CUDA_SUCCESS).</param>
/// <param name="DriverVersion">cuDriverGetVersion (e.g. 12040 for 12.4), null when not answered.</param>
/// <param name="Note">What the codes do not say: a missing export, ILGPU's resolver set by someone else.</param>
public sealed record CudaDriverProbe(
    string? Loaded,
    string? LoadedPath,
    IReadOnlyList<CudaLibraryFailure> Failures,
    int? InitResult,
    int? CountResult,
    int DeviceCount,
    int? DriverVersion,
    string? Note)
{
    /// <summary>One line: "CUDA: FILE (PATH) loaded; driver API V; cuInit: NAME; N device(s)", or
    /// "CUDA: no driver library (tried NAME: reason, ...)".</summary>
    public string Describe()
    {
        var parts = new List<string>();
        if (Loaded is null)
        {
            parts.Add($"CUDA: no driver library (tried {string.Join(", ", Failures)})");
        }
        else
        {
            var head = $"CUDA: {Loaded}";
            if (LoadedPath is not null && !Loaded.EndsWith(LoadedPath, StringComparison.Ordinal))
                head += $" ({LoadedPath})";
            head += " loaded";
            // A failed preferred library is the user's explicit choice going unused: say so. libcuda.so missing before
            // libcuda.so.1 loads is the common, harmless case and stays out of the line.
            var skipped = Failures.Where(f => f.Requested).ToList();
            if (skipped.Count > 0)
                head += $" (skipped {string.Join(", ", skipped)})";
            parts.Add(head);
            if (DriverVersion is { } v)
                parts.Add($"driver API {v / 1000}.{v % 1000 / 10}");
            if (InitResult is { } init)
                parts.Add($"cuInit: {CudaDriver.ResultName(init)}");
            if (CountResult is { } count)
                parts.Add(count == CudaDriver.Success ? $"{DeviceCount} device(s)" : $"cuDeviceGetCount: {CudaDriver.ResultName(count)}");
        }

        if (Note is not null)
            parts.Add(Note);
        return string.Join("; ", parts);
    }
}

public static class CudaDriver
{
    public const int Success = 0;

    // The library name ILGPU's driver imports use (see the file header); anything else ILGPU imports (OpenCL) is
    // left to .NET's default search.
    private static readonly string IlgpuDriverImport = OperatingSystem.IsWindows() ? "nvcuda" : "cuda";

    private static readonly Lock Gate = new();
    private static bool resolverTried;
    private static bool resolverTaken;
    private static (string Name, string Source)? preferred;
    private static readonly Lazy<Library> Driver = new(LoadLibrary, LazyThreadSafetyMode.ExecutionAndPublication);
    private static readonly Lazy<CudaDriverProbe> Answer = new(Ask, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>A driver library to try before the system's: a path, or a name the loader searches for. Source says
    /// where it came from (ILGPUMOE_LIBCUDA) and labels it in Probe's answer as SOURCE=NAME. Call before the driver is
    /// first loaded (before the first Context that enables CUDA); asking for another library afterwards throws, since a
    /// process keeps the driver it loaded.</summary>
    public static void PreferLibrary(string name, string source)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        lock (Gate)
        {
            if (preferred == (name, source))
                return;
            if (Driver.IsValueCreated)
                throw new InvalidOperationException($"{source}={name}: the CUDA driver library is already loaded in this process");
            preferred = (name, source);
        }
    }

    /// <summary>Makes ILGPU load the driver from the first of the preferred library, libcuda.so, libcuda.so.1 that loads.
    /// Idempotent and thread-safe; call before the first Context that enables CUDA. The library itself is only loaded
    /// when ILGPU first asks for it.</summary>
    public static void InstallResolver()
    {
        lock (Gate)
        {
            if (resolverTried)
                return;
            resolverTried = true;
            try
            {
                NativeLibrary.SetDllImportResolver(typeof(Context).Assembly, Resolve);
            }
            catch (InvalidOperationException)
            {
                // .NET allows one resolver per assembly and someone else (a host application) set ILGPU's: keep theirs.
                resolverTaken = true;
            }
        }
    }

    /// <summary>An entry point of the driver library ILGPU uses (loading it if needed); false when none loads or it lacks the export.</summary>
    internal static bool TryExport(string name, out IntPtr function)
    {
        function = IntPtr.Zero;
        var handle = Driver.Value.Handle;
        return handle != IntPtr.Zero && NativeLibrary.TryGetExport(handle, name, out function);
    }

    /// <summary>The driver's answer, asked once per process (cuInit's result does not change within a process).</summary>
    public static CudaDriverProbe Probe() => Answer.Value;

    /// <summary>The CUresult's name from cuda.h: our table of the codes ILGPU's CudaError lacks, then CudaError, then the
    /// loaded driver's cuGetErrorName; "CUresult N" when none knows it.</summary>
    public static string ResultName(int code)
    {
        if (ExtraNames.TryGetValue(code, out var name))
            return name;
        if (Enum.IsDefined((CudaError)code))
            return ((CudaError)code).ToString();
        return DriverErrorName(code) ?? $"CUresult {code.ToString(CultureInfo.InvariantCulture)}";
    }

    // CUresult values of cuda.h (driver API) that ILGPU 1.5.3's CudaError does not name: what cuInit answers with a stub
    // or mismatched driver (34, 802-805) or a busy device (46), and PTX JIT failures a first GPU run may meet (221-223).
    // (The runtime API's cudaErrorInsufficientDriver = 35 has no CUresult twin.)
    private static readonly Dictionary<int, string> ExtraNames = new()
    {
        [34] = "CUDA_ERROR_STUB_LIBRARY",
        [46] = "CUDA_ERROR_DEVICE_UNAVAILABLE",
        [102] = "CUDA_ERROR_DEVICE_NOT_LICENSED",
        [221] = "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
        [222] = "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        [223] = "CUDA_ERROR_JIT_COMPILATION_DISABLED",
        [401] = "CUDA_ERROR_ILLEGAL_STATE",
        [720] = "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
        [802] = "CUDA_ERROR_SYSTEM_NOT_READY",
        [803] = "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        [804] = "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
        [805] = "CUDA_ERROR_MPS_CONNECTION_FAILED",
    };

    private sealed record Library(IntPtr Handle, string? Name, IReadOnlyList<CudaLibraryFailure> Failures);

    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath) =>
        // Zero hands the name back to .NET's default search (which then fails the way it always did).
        libraryName == IlgpuDriverImport ? Driver.Value.Handle : IntPtr.Zero;

    /// <summary>The names to try, in order, each with how it is reported and whether the user asked for it.</summary>
    private static List<(string Label, string Name, bool Requested)> Candidates()
    {
        var list = new List<(string, string, bool)>();
        lock (Gate)
        {
            if (preferred is { } p)
                list.Add(($"{p.Source}={p.Name}", p.Name, true));
        }

        if (OperatingSystem.IsWindows())
        {
            list.Add(("nvcuda.dll", "nvcuda.dll", false));
        }
        else
        {
            list.Add(("libcuda.so", "libcuda.so", false));
            list.Add(("libcuda.so.1", "libcuda.so.1", false));
        }

        return list;
    }

    private static Library LoadLibrary()
    {
        var failures = new List<CudaLibraryFailure>();
        foreach (var (label, name, requested) in Candidates())
        {
            try
            {
                return new Library(NativeLibrary.Load(name), label, failures);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                failures.Add(new CudaLibraryFailure(label, LoaderReason(e.Message, name), requested));
            }
        }

        return new Library(IntPtr.Zero, null, failures);
    }

    /// <summary>The loader's own reason, on one line. .NET's message is a generic first line ("Unable to load shared
    /// library ... consider setting LD_DEBUG") followed by one dlerror line per path it tried, each starting with that
    /// path; the last one is the search for the name as given.</summary>
    private static string LoaderReason(string message, string name)
    {
        var lines = message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var reason = lines.Length > 1 ? lines[^1] : lines.FirstOrDefault() ?? "not loadable";
        var prefix = name + ": ";
        return reason.StartsWith(prefix, StringComparison.Ordinal) ? reason[prefix.Length..] : reason;
    }

    private static unsafe CudaDriverProbe Ask()
    {
        var library = Driver.Value;
        string? note;
        lock (Gate)
        {
            note = !resolverTaken ? null
                : preferred is { } p ? $"ILGPU's import resolver was set elsewhere, so ILGPU does its own search and ignores {p.Source}"
                : "ILGPU's import resolver was set elsewhere, so ILGPU does its own search";
        }
        if (library.Name is null)
            return new CudaDriverProbe(null, null, library.Failures, null, null, 0, null, note);

        var path = MappedFile(library.Handle);
        int? version = null;
        if (NativeLibrary.TryGetExport(library.Handle, "cuDriverGetVersion", out var getVersion))
        {
            int v;
            if (((delegate* unmanaged<int*, int>)getVersion)(&v) == Success)
                version = v;
        }

        if (!NativeLibrary.TryGetExport(library.Handle, "cuInit", out var init))
        {
            note = Join(note, "no cuInit export: not a CUDA driver library");
            return new CudaDriverProbe(library.Name, path, library.Failures, null, null, 0, version, note);
        }

        var initResult = ((delegate* unmanaged<uint, int>)init)(0);
        int? countResult = null;
        var count = 0;
        if (initResult == Success)
        {
            if (NativeLibrary.TryGetExport(library.Handle, "cuDeviceGetCount", out var getCount))
            {
                int n;
                countResult = ((delegate* unmanaged<int*, int>)getCount)(&n);
                count = countResult == Success ? n : 0;
            }
            else
            {
                note = Join(note, "no cuDeviceGetCount export");
            }
        }

        return new CudaDriverProbe(library.Name, path, library.Failures, initResult, countResult, count, version, note);
    }

    private static string Join(string? a, string b) => a is null ? b : $"{a}; {b}";

    /// <summary>The driver's own name for a code, when a driver is loaded and exports cuGetErrorName.</summary>
    private static unsafe string? DriverErrorName(int code)
    {
        // Only an already loaded driver is asked: naming an error must not load a library.
        if (!Driver.IsValueCreated || Driver.Value.Handle == IntPtr.Zero
            || !NativeLibrary.TryGetExport(Driver.Value.Handle, "cuGetErrorName", out var getName))
            return null;
        byte* text = null;
        return ((delegate* unmanaged<int, byte**, int>)getName)(code, &text) == Success && text is not null
            ? Marshal.PtrToStringUTF8((IntPtr)text)
            : null;
    }

    /// <summary>The file whose mapping holds the library's cuInit (Linux only: /proc/self/maps); null elsewhere.</summary>
    private static string? MappedFile(IntPtr handle)
    {
        if (!OperatingSystem.IsLinux() || !NativeLibrary.TryGetExport(handle, "cuInit", out var symbol))
            return null;
        try
        {
            var address = (ulong)symbol;
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                // "start-end perms offset dev inode   path"
                var fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length < 6)
                    continue;
                var range = fields[0].Split('-');
                if (range.Length == 2
                    && ulong.TryParse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var start)
                    && ulong.TryParse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var end)
                    && address >= start && address < end)
                    return fields[5].Trim();
            }
        }
        catch (IOException)
        {
            // No /proc (a sandbox): the name alone is reported.
        }

        return null;
    }
}
