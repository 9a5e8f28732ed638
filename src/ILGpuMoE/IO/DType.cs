namespace ILGpuMoE.IO;

/// <summary>Element types of the safetensors format (names as they appear in the header).</summary>
public enum DType
{
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    BOOL,
    F8_E4M3,
    F8_E5M2,
}

/// <summary>Size and header name of each <see cref="DType"/>.</summary>
public static class DTypes
{
    /// <summary>Bytes per element.</summary>
    public static int SizeOf(DType dtype) => dtype switch
    {
        DType.F64 or DType.I64 => 8,
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 or DType.I16 => 2,
        DType.I8 or DType.U8 or DType.BOOL or DType.F8_E4M3 or DType.F8_E5M2 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype"),
    };

    /// <summary>The header spelling, e.g. "BF16".</summary>
    public static string ToName(DType dtype) => dtype switch
    {
        DType.F64 => "F64",
        DType.F32 => "F32",
        DType.F16 => "F16",
        DType.BF16 => "BF16",
        DType.I64 => "I64",
        DType.I32 => "I32",
        DType.I16 => "I16",
        DType.I8 => "I8",
        DType.U8 => "U8",
        DType.BOOL => "BOOL",
        DType.F8_E4M3 => "F8_E4M3",
        DType.F8_E5M2 => "F8_E5M2",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype"),
    };

    /// <summary>Parses a header spelling (exact, case-sensitive, as the format requires).</summary>
    public static bool TryParse(string name, out DType dtype)
    {
        foreach (var candidate in All)
        {
            if (ToName(candidate) == name)
            {
                dtype = candidate;
                return true;
            }
        }

        dtype = default;
        return false;
    }

    /// <summary>Every dtype, in declaration order.</summary>
    public static IReadOnlyList<DType> All { get; } = Enum.GetValues<DType>();
}
