// The registry of quant schemes: QuantSpec.Parse (--quant), the checkpoint loader (config.json's quantization_config)
// and `ilgpumoe inspect` all ask it. Adding a scheme is its file under Schemes/ (spec, host matrix, device view,
// checkpoint readers), its kernels, and one line in All.
namespace ILGpuMoE.Quant;

/// <summary>
/// What a scheme tells the registry. ListedNames: its --quant names in help order. TryParse: (lower-case name, name as
/// given) -> its spec, or null when the name is not this scheme's (ArgumentException when it is, but malformed).
/// OtherSpellings: the names TryParse takes beyond the listed ones, for the unknown-scheme message. CheckpointMethods
/// and FromCheckpoint: the quantization_config.quant_method values it reads, and the reader of such a config.
/// </summary>
public sealed record QuantSchemeInfo(
    IReadOnlyList<string> ListedNames,
    Func<string, string, QuantSpec?> TryParse,
    string? OtherSpellings = null,
    IReadOnlyList<string>? CheckpointMethods = null,
    Func<QuantConfigJson, QuantSource>? FromCheckpoint = null);

public static class QuantSchemes
{
    /// <summary>Every scheme, in --quant listing order.</summary>
    public static readonly IReadOnlyList<QuantSchemeInfo> All =
    [
        Int8Spec.Info,
        Int4Spec.Info,
        Fp8Spec.Info,
        Mxfp4Spec.Info,
    ];

    /// <summary>"none", then every scheme's listed names.</summary>
    public static readonly string[] Names = ["none", .. All.SelectMany(s => s.ListedNames)];

    /// <summary>The quant_method values a checkpoint may declare: ours, then every scheme's.</summary>
    public static IEnumerable<string> CheckpointMethods => [QuantSource.OurMethod, .. All.SelectMany(s => s.CheckpointMethods ?? [])];

    /// <summary>See <see cref="QuantSpec.Parse"/>.</summary>
    public static QuantSpec? Parse(string? name)
    {
        string n = name?.Trim().ToLowerInvariant() ?? "";
        if (n is "" or "none")
            return null;
        foreach (var s in All)
        {
            if (s.TryParse(n, name!) is { } spec)
                return spec;
        }

        string others = string.Concat(All.Where(s => s.OtherSpellings is not null).Select(s => "; " + s.OtherSpellings));
        throw new ArgumentException($"--quant {name}: unknown scheme (expected one of {string.Join(", ", Names)}{others})");
    }

    /// <summary>The scheme reading checkpoints of quant_method <paramref name="method"/>, or null.</summary>
    internal static QuantSchemeInfo? ForMethod(string method) =>
        All.FirstOrDefault(s => s.CheckpointMethods is not null && s.CheckpointMethods.Contains(method, StringComparer.Ordinal));
}
