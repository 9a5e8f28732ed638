// Runs ptxas and cuobjdump on exported PTX (PtxExporter) to get the SASS that SassReport reads. The tools come from
// Debian's CUDA 11.8 package that tools/ptxas-check.sh unpacks into .cache/cuda/root of the repository, or from PATH,
// or from a folder the caller names (`ilgpumoe ptx --sass --cuda-bin DIR`).
using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace ILGpuMoE.Ptx;

/// <summary>Where ptxas and cuobjdump are; either may be null when not found.</summary>
public sealed partial record SassTools(string? Ptxas, string? Cuobjdump)
{
    /// <summary>
    /// The tools in <paramref name="cudaBin"/> when given; else under .cache/cuda/root of the first folder from the
    /// working directory up that has one; else on PATH.
    /// </summary>
    public static SassTools Find(string? cudaBin = null)
    {
        if (cudaBin is not null)
            return new SassTools(Existing(Path.Combine(cudaBin, "ptxas")), Existing(Path.Combine(cudaBin, "cuobjdump")));
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            string cache = Path.Combine(dir.FullName, ".cache", "cuda", "root");
            if (!Directory.Exists(cache))
                continue;
            var found = new SassTools(InTree(cache, "ptxas"), InTree(cache, "cuobjdump"));
            if (found.Missing is null)
                return found;
        }

        return new SassTools(OnPath("ptxas"), OnPath("cuobjdump"));
    }

    /// <summary>One line naming what is missing, or null when both tools are there.</summary>
    public string? Missing => (Ptxas, Cuobjdump) switch
    {
        (null, null) => "ptxas and cuobjdump",
        (null, _) => "ptxas",
        (_, null) => "cuobjdump",
        _ => null,
    };

    /// <summary>Null when both tools run (`--version` exits 0), else one line saying which does not and why.</summary>
    public string? Unusable()
    {
        foreach (var tool in new[] { Ptxas, Cuobjdump }.OfType<string>())
        {
            try
            {
                var (code, output) = Exec(tool, "--version");
                if (code != 0)
                    return $"{tool} --version exited {code}: {FirstLines(output)}";
            }
            catch (Win32Exception e)
            {
                return $"{tool} cannot be run: {e.Message}";
            }
        }

        return null;
    }

    /// <summary>
    /// Compiles every exported kernel for sm_90 and reads its SASS: writes DIR/sass/&lt;kernel&gt;.sass and returns one
    /// report per kernel, or the kernel's ptxas/cuobjdump error.
    /// </summary>
    public IReadOnlyList<(PtxKernel Kernel, SassKernelReport? Report, string? Error)> Run(string ptxDir, IEnumerable<PtxKernel> kernels, Action<string>? log = null)
    {
        if (Missing is not null)
            throw new InvalidOperationException($"{Missing} not found");
        string sassDir = Path.Combine(ptxDir, "sass");
        Directory.CreateDirectory(sassDir);
        var results = new List<(PtxKernel, SassKernelReport?, string?)>();
        foreach (var k in kernels.Where(k => k.Error is null))
        {
            string ptx = Path.Combine(ptxDir, k.File);
            string cubin = Path.Combine(sassDir, k.Name + ".cubin");
            try
            {
                ptx = WithReadableVersion(ptx, sassDir);
                var (ptxasCode, ptxasOut) = Exec(Ptxas!, "-arch=sm_90", "-v", "-o", cubin, ptx);
                if (ptxasCode != 0)
                {
                    results.Add((k, null, $"ptxas exit {ptxasCode}: {FirstLines(ptxasOut)}"));
                    continue;
                }

                var (dumpCode, sass) = Exec(Cuobjdump!, "-sass", cubin);
                if (dumpCode != 0)
                {
                    results.Add((k, null, $"cuobjdump exit {dumpCode}: {FirstLines(sass)}"));
                    continue;
                }

                File.WriteAllText(Path.Combine(sassDir, k.Name + ".sass"), sass);
                var report = SassKernelReport.Analyze(k.Name, k.DecodeUse, k.CheckedBlockSize, k.MaxDynamicSharedBytes, ptxasOut, sass, k.TensorCore ?? "");
                results.Add((k, report, null));
                log?.Invoke($"sass  {k.Name}");
            }
            catch (FormatException e)
            {
                results.Add((k, null, e.Message));
            }
            finally
            {
                File.Delete(cubin);
            }
        }

        return results;
    }

    /// <summary>
    /// ptxas 11.8 reads PTX ISA up to 7.8, which the exporter asks ILGPU for by default; a file of a newer ISA is
    /// compiled from a copy with its .version line set to 7.8 (ILGPU's kernels use nothing newer).
    /// </summary>
    private static string WithReadableVersion(string ptx, string sassDir)
    {
        string text = File.ReadAllText(ptx);
        var m = VersionLine().Match(text);
        if (!m.Success)
            return ptx;
        var version = (int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture));
        if (version.CompareTo((7, 8)) <= 0)
            return ptx;
        string copy = Path.Combine(sassDir, Path.GetFileName(ptx));
        File.WriteAllText(copy, VersionLine().Replace(text, ".version 7.8", 1));
        return copy;
    }

    private static (int Code, string Output) Exec(string tool, params string[] args)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
            start.ArgumentList.Add(a);
        using var p = Process.Start(start) ?? throw new InvalidOperationException($"could not start {tool}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    private static string FirstLines(string text) => string.Join(" | ", text.ReplaceLineEndings("\n").Split('\n', StringSplitOptions.RemoveEmptyEntries).Take(3));

    private static string? Existing(string path) => File.Exists(path) ? path : null;

    /// <summary>The first bin/&lt;tool&gt; under the unpacked package (usr/bin/ptxas in Debian's layout).</summary>
    private static string? InTree(string root, string tool) =>
        Directory.EnumerateFiles(root, tool, SearchOption.AllDirectories)
            .FirstOrDefault(f => Path.GetFileName(Path.GetDirectoryName(f)) == "bin");

    private static string? OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, tool))
            .FirstOrDefault(File.Exists);

    [GeneratedRegex(@"^\.version\s+(\d+)\.(\d+)", RegexOptions.Multiline)]
    private static partial Regex VersionLine();
}
