// Every file or folder a command writes goes through here, so that all of them fail early and never leave a
// half-written result:
//   Check*    before any compute (before a model is planned or loaded): the path is usable, else exit 2 naming the option;
//   Begin*    a temporary sibling of the target (".NAME.GUID.tmp", in the same folder, so the final move is a rename on
//             one file system) that the command writes into;
//   Commit    moves the temporary into place, only after the work finished and no cancel was asked for;
//   Dispose   removes the temporary when Commit did not happen (an error, a bad input, Ctrl-C).
// Temporaries still pending are listed, so that a second Ctrl-C (the forced stop, CliSignals) can remove them too.
using System.Collections.Concurrent;

namespace ILGpuMoE.Cli;

public static class CliOutput
{
    private static readonly ConcurrentDictionary<string, bool> Pending = new(StringComparer.Ordinal);

    /// <summary>A file the command will write: not a folder, its folder exists and is writable.</summary>
    public static string CheckFile(string option, string path)
    {
        var full = Full(option, path);
        if (Directory.Exists(full))
            throw new CliUsageException($"{option} {path}: is a folder; give a file path");
        CheckParent(option, path, full);
        return full;
    }

    /// <summary>
    /// A folder the command will fill: not a file, its parent exists and is writable. With <paramref name="refuseNonEmpty"/>,
    /// an existing folder with anything in it is refused unless <paramref name="force"/> (the option that allows it is named).
    /// </summary>
    public static string CheckFolder(string option, string path, bool refuseNonEmpty = false, bool force = false, string forceOption = "--force")
    {
        var full = Full(option, path);
        if (File.Exists(full))
            throw new CliUsageException($"{option} {path}: is a file; give a folder");
        CheckParent(option, path, full);
        if (refuseNonEmpty && !force && Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            throw new CliUsageException($"{option} {path}: folder is not empty; give an empty or new folder, or {forceOption} to replace what it holds");
        return full;
    }

    private static string Full(string option, string path)
    {
        if (string.IsNullOrWhiteSpace(path))
            throw new CliUsageException($"{option}: empty path");
        try
        {
            return Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new CliUsageException($"{option} {path}: {e.Message}");
        }
    }

    private static void CheckParent(string option, string path, string full)
    {
        var parent = Path.GetDirectoryName(full) ?? throw new CliUsageException($"{option} {path}: is the root of the file system");
        if (File.Exists(parent))
            throw new CliUsageException($"{option} {path}: {parent} is a file, not a folder");
        if (!Directory.Exists(parent))
            throw new CliUsageException($"{option} {path}: folder {parent} does not exist");

        // Permission bits do not tell (ACLs, read-only mounts, root): creating a file does.
        var probe = Path.Combine(parent, $".ilgpumoe-probe-{Guid.NewGuid():N}");
        try
        {
            using (File.Create(probe, 1, FileOptions.DeleteOnClose))
            {
            }
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new CliUsageException($"{option} {path}: folder {parent} is not writable ({CliErrors.OneLine(e.Message)})");
        }
    }

    /// <summary>A temporary file next to <paramref name="target"/> (a checked full path); Commit renames it over the target.</summary>
    public static PendingOutput BeginFile(string target) => new(target, folder: false, merge: false);

    /// <summary>
    /// A temporary folder next to <paramref name="target"/>. Commit puts it in place of a missing or empty target; into
    /// an existing non-empty one (<paramref name="merge"/>, quantize --force) it moves each file, replacing files of the
    /// same name and keeping the others.
    /// </summary>
    public static PendingOutput BeginFolder(string target, bool merge = false) => new(target, folder: true, merge);

    /// <summary>Removes every temporary not yet committed or disposed (the forced stop on a second signal).</summary>
    public static void DeleteAllPending()
    {
        foreach (var path in Pending.Keys)
            Delete(path);
    }

    internal static void Delete(string path)
    {
        try
        {
            if (Directory.Exists(path))
                Directory.Delete(path, recursive: true);
            else if (File.Exists(path))
                File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a cleanup failure must not replace the error (or the cancel) that got us here.
        }
    }

    /// <summary>One output being written; see the header.</summary>
    public sealed class PendingOutput : IDisposable
    {
        private readonly bool _folder;
        private readonly bool _merge;
        private bool _done;

        internal PendingOutput(string target, bool folder, bool merge)
        {
            Target = target;
            _folder = folder;
            _merge = merge;
            Path = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(target)!, $".{System.IO.Path.GetFileName(target)}.{Guid.NewGuid():N}.tmp");
            Pending[Path] = true;
            if (folder)
                Directory.CreateDirectory(Path);
        }

        /// <summary>Where the command writes.</summary>
        public string Path { get; }

        /// <summary>Where the result ends up.</summary>
        public string Target { get; }

        /// <summary>Moves the finished output into place; a cancel asked for before this point wins (nothing is moved).</summary>
        public void Commit(CancellationToken cancel)
        {
            ObjectDisposedException.ThrowIf(_done, this);
            cancel.ThrowIfCancellationRequested();
            if (!_folder)
            {
                File.Move(Path, Target, overwrite: true);
            }
            else if (!Directory.Exists(Target))
            {
                Directory.Move(Path, Target);
            }
            else if (!Directory.EnumerateFileSystemEntries(Target).Any())
            {
                Directory.Delete(Target);
                Directory.Move(Path, Target);
            }
            else
            {
                if (!_merge)
                    throw new InvalidOperationException($"{Target} is not empty and this output does not merge");
                foreach (var file in Directory.EnumerateFiles(Path, "*", SearchOption.AllDirectories))
                {
                    var to = System.IO.Path.Combine(Target, System.IO.Path.GetRelativePath(Path, file));
                    Directory.CreateDirectory(System.IO.Path.GetDirectoryName(to)!);
                    File.Move(file, to, overwrite: true);
                }

                Directory.Delete(Path, recursive: true);
            }

            Pending.TryRemove(Path, out _);
            _done = true;
        }

        public void Dispose()
        {
            if (_done)
                return;
            _done = true;
            Delete(Path);
            Pending.TryRemove(Path, out _);
        }
    }
}
