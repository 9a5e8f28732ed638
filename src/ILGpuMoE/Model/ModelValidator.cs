// Checks a checkpoint against its config before anything is uploaded: every tensor the config implies is present,
// has exactly the implied shape, and a weight dtype the kernels read (F32, F16, BF16: see IWeights). Tensors the
// config does not imply (rotary caches, extra heads) are ignored. All problems are collected so one run shows
// the whole picture; the exception's message carries the first.
using ILGpuMoE.IO;

namespace ILGpuMoE.Model;

public static class ModelValidator
{
    /// <summary>Weight dtypes the kernels read.</summary>
    public static readonly IReadOnlyList<DType> SupportedWeightDTypes = [DType.F32, DType.F16, DType.BF16];

    /// <summary>Throws <see cref="ModelValidationException"/> listing every missing / misshapen / wrongly typed tensor.</summary>
    public static void Validate(ModelConfig config, Checkpoint checkpoint)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        Validate(config, checkpoint.Tensors, checkpoint.Directory);
    }

    /// <summary>The same check over a tensor list; <paramref name="source"/> names the checkpoint in messages.</summary>
    public static void Validate(ModelConfig config, IReadOnlyList<TensorInfo> tensors, string source)
    {
        var problems = FindProblems(config, tensors);
        if (problems.Count > 0)
            throw new ModelValidationException(source, problems);
    }

    /// <summary>Every problem, one line each ("tensor 'x' has shape [a, b], expected [c, d]"); empty when the checkpoint fits.</summary>
    public static IReadOnlyList<string> FindProblems(ModelConfig config, IReadOnlyList<TensorInfo> tensors)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(tensors);
        var byName = new Dictionary<string, TensorInfo>(tensors.Count, StringComparer.Ordinal);
        foreach (var t in tensors)
            byName.TryAdd(t.Name, t);

        var problems = new List<string>();
        foreach (var expected in ModelTensors.Expected(config))
        {
            if (!byName.TryGetValue(expected.Name, out var actual))
            {
                problems.Add($"tensor '{expected.Name}' is missing (expected shape {Shape(expected.Shape)})");
                continue;
            }

            if (!actual.Shape.AsSpan().SequenceEqual(expected.Shape))
                problems.Add($"tensor '{expected.Name}' has shape {Shape(actual.Shape)}, expected {Shape(expected.Shape)}");
            if (!SupportedWeightDTypes.Contains(actual.DType))
                problems.Add($"tensor '{expected.Name}' has dtype {DTypes.ToName(actual.DType)}, expected one of {string.Join(", ", SupportedWeightDTypes.Select(DTypes.ToName))}");
        }

        return problems;
    }

    /// <summary>"[4096, 14336]"; "[]" for a scalar.</summary>
    public static string Shape(IReadOnlyList<long> shape) => $"[{string.Join(", ", shape)}]";
}
