using System.Diagnostics;
using System.Text;

namespace ILGpuMoE.IO;

/// <summary>What exactly is wrong; every <see cref="SafeTensorsException"/> carries one.</summary>
public enum SafeTensorsError
{
    /// <summary>Raised through the plain message constructors (e.g. by model loading code on top of this layer).</summary>
    Other,
    /// <summary>The path does not exist, is a directory, or a directory holds no checkpoint.</summary>
    NotFound,
    /// <summary>The file could not be opened or mapped (permissions, I/O error).</summary>
    Io,
    /// <summary>Shorter than the 8-byte header length prefix.</summary>
    Truncated,
    /// <summary>Header length larger than the file or the 100 MiB limit.</summary>
    HeaderTooLarge,
    /// <summary>Header is not UTF-8, not JSON, or not a JSON object.</summary>
    InvalidHeader,
    /// <summary>A tensor entry is not an object or lacks dtype, shape or data_offsets (or they are ill-typed).</summary>
    InvalidEntry,
    UnknownDType,
    /// <summary>A dimension is negative, not an integer, or the element count / byte size overflows.</summary>
    InvalidShape,
    /// <summary>end - begin differs from element count x element size.</summary>
    SizeMismatch,
    /// <summary>An offset lies outside the data section (or begin &gt; end).</summary>
    OffsetOutOfRange,
    Overlap,
    /// <summary>Bytes between two tensors, or before the first, belong to no tensor.</summary>
    Hole,
    /// <summary>Bytes after the last tensor belong to no tensor.</summary>
    TrailingBytes,
    DuplicateName,
    /// <summary><c>__metadata__</c> is not an object of string values.</summary>
    InvalidMetadata,
    /// <summary><c>model.safetensors.index.json</c> is malformed.</summary>
    InvalidIndex,
    /// <summary>A shard file name in the index is not a plain file name inside the checkpoint directory.</summary>
    UnsafePath,
    /// <summary>A shard named in the index does not exist.</summary>
    MissingShard,
    /// <summary>A tensor is not in the file (or not in the shard the index names).</summary>
    MissingTensor,
    /// <summary>The tensor's dtype does not fit the requested read.</summary>
    WrongDType,
    /// <summary>The tensor is larger than a span can address (2 GiB).</summary>
    TooLarge,
}

/// <summary>
/// Any problem reading a safetensors file or checkpoint. The message is one line:
/// "&lt;file&gt;: tensor '&lt;name&gt;': &lt;what is wrong&gt;" (the tensor part only when one is involved).
/// </summary>
public class SafeTensorsException : Exception
{
    public SafeTensorsException(string message)
        : base(message)
    {
    }

    public SafeTensorsException(string message, Exception? inner)
        : base(message, inner)
    {
    }

    public SafeTensorsException(SafeTensorsError kind, string filePath, string? tensorName, string what, Exception? inner = null)
        : base(Format(filePath, tensorName, what), inner)
    {
        Kind = kind;
        FilePath = filePath;
        TensorName = tensorName;
    }

    public SafeTensorsError Kind { get; }

    /// <summary>The file (or directory) the problem is in.</summary>
    public string? FilePath { get; }

    /// <summary>The tensor involved, if any.</summary>
    public string? TensorName { get; }

    /// <summary>Builds the right subclass for <paramref name="kind"/>.</summary>
    internal static SafeTensorsException Create(SafeTensorsError kind, string filePath, string? tensorName, string what, Exception? inner = null) => kind switch
    {
        SafeTensorsError.NotFound or SafeTensorsError.MissingShard or SafeTensorsError.MissingTensor
            => new SafeTensorsNotFoundException(kind, filePath, tensorName, what, inner),
        SafeTensorsError.Truncated or SafeTensorsError.HeaderTooLarge or SafeTensorsError.InvalidHeader
            or SafeTensorsError.DuplicateName or SafeTensorsError.InvalidMetadata
            => new SafeTensorsHeaderException(kind, filePath, tensorName, what, inner),
        SafeTensorsError.InvalidEntry or SafeTensorsError.UnknownDType or SafeTensorsError.InvalidShape
            or SafeTensorsError.SizeMismatch or SafeTensorsError.WrongDType or SafeTensorsError.TooLarge
            => new SafeTensorsEntryException(kind, filePath, tensorName, what, inner),
        SafeTensorsError.OffsetOutOfRange or SafeTensorsError.Overlap or SafeTensorsError.Hole or SafeTensorsError.TrailingBytes
            => new SafeTensorsLayoutException(kind, filePath, tensorName, what, inner),
        SafeTensorsError.InvalidIndex or SafeTensorsError.UnsafePath
            => new SafeTensorsIndexException(kind, filePath, tensorName, what, inner),
        SafeTensorsError.Other or SafeTensorsError.Io => new SafeTensorsException(kind, filePath, tensorName, what, inner),
        _ => throw new UnreachableException($"safetensors error kind {(int)kind} ({what})"),
    };

    /// <summary>Quotes a user-controlled string for a one-line message: control characters escaped, long ones cut.</summary>
    internal static string Printable(string s, int max = 200)
    {
        var sb = new StringBuilder(Math.Min(s.Length, max) + 8);
        foreach (char c in s)
        {
            if (sb.Length >= max)
            {
                sb.Append("...");
                break;
            }

            if (char.IsControl(c))
                sb.Append($"\\u{(int)c:x4}");
            else
                sb.Append(c);
        }

        return sb.ToString();
    }

    private static string Format(string filePath, string? tensorName, string what)
    {
        string head = Printable(filePath, 1000);
        return tensorName is null
            ? $"{head}: {what}"
            : $"{head}: tensor '{Printable(tensorName)}': {what}";
    }
}

/// <summary>A file, shard or tensor that is not there.</summary>
public sealed class SafeTensorsNotFoundException(SafeTensorsError kind, string filePath, string? tensorName, string what, Exception? inner = null)
    : SafeTensorsException(kind, filePath, tensorName, what, inner);

/// <summary>The 8-byte prefix or the JSON header as a whole is bad (length, encoding, syntax, duplicates, metadata).</summary>
public sealed class SafeTensorsHeaderException(SafeTensorsError kind, string filePath, string? tensorName, string what, Exception? inner = null)
    : SafeTensorsException(kind, filePath, tensorName, what, inner);

/// <summary>One tensor's entry is bad (fields, dtype, shape, byte size), or does not fit the requested read.</summary>
public sealed class SafeTensorsEntryException(SafeTensorsError kind, string filePath, string? tensorName, string what, Exception? inner = null)
    : SafeTensorsException(kind, filePath, tensorName, what, inner);

/// <summary>Tensor byte ranges do not tile the data section exactly (out of range, overlap, hole, trailing bytes).</summary>
public sealed class SafeTensorsLayoutException(SafeTensorsError kind, string filePath, string? tensorName, string what, Exception? inner = null)
    : SafeTensorsException(kind, filePath, tensorName, what, inner);

/// <summary>A sharded checkpoint's index is malformed or names a file outside its directory.</summary>
public sealed class SafeTensorsIndexException(SafeTensorsError kind, string filePath, string? tensorName, string what, Exception? inner = null)
    : SafeTensorsException(kind, filePath, tensorName, what, inner);
