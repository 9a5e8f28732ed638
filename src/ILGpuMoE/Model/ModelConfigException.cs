namespace ILGpuMoE.Model;

/// <summary>
/// A config.json / generation_config.json that cannot describe a model we run. The message is one line naming the
/// file and the key, e.g. "/m/config.json: 'num_key_value_heads' (3) does not divide 'num_attention_heads' (32)".
/// </summary>
public sealed class ModelConfigException : Exception
{
    public ModelConfigException(string file, string? key, string problem, Exception? inner = null)
        : base(Format(file, key, problem), inner)
    {
        File = file;
        Key = key;
    }

    /// <summary>The file the problem is in.</summary>
    public string File { get; }

    /// <summary>The offending key (dotted for nested keys), or null for whole-file problems.</summary>
    public string? Key { get; }

    private static string Format(string file, string? key, string problem)
    {
        var text = key is null ? $"{file}: {problem}" : $"{file}: '{key}' {problem}";
        return text.ReplaceLineEndings(" ");
    }
}

/// <summary>
/// A checkpoint that does not match its config: a missing tensor, a wrong shape, an unsupported dtype. The message is
/// one line naming the checkpoint and the first problem (with the count of further ones); <see cref="Problems"/>
/// lists them all.
/// </summary>
public sealed class ModelValidationException : Exception
{
    public ModelValidationException(string source, IReadOnlyList<string> problems)
        : base(Format(source, problems))
    {
        Checkpoint = source;
        Problems = problems;
    }

    /// <summary>The checkpoint (directory or file) that was checked.</summary>
    public string Checkpoint { get; }

    /// <summary>Every problem found, one line each, in tensor order.</summary>
    public IReadOnlyList<string> Problems { get; }

    private static string Format(string source, IReadOnlyList<string> problems)
    {
        if (problems.Count == 0)
            throw new ArgumentException("a validation exception needs at least one problem", nameof(problems));
        var more = problems.Count > 1 ? $" (and {problems.Count - 1} more problem{(problems.Count > 2 ? "s" : "")})" : "";
        return $"{source}: {problems[0]}{more}".ReplaceLineEndings(" ");
    }
}
