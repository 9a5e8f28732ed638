// Argument checks shared by the oracle: one-line ArgumentException messages naming the argument and its shape.
namespace ILGpuMoE.Reference;

internal static class Require
{
    public static void Positive(int value, string name)
    {
        if (value <= 0)
            throw new ArgumentException($"{name} = {value} must be positive.", name);
    }

    /// <summary>Each (value, name) must be positive.</summary>
    public static void Positive(params ReadOnlySpan<(int Value, string Name)> args)
    {
        foreach (var (value, name) in args)
            Positive(value, name);
    }

    /// <summary>value must be a multiple of divisor (e.g. heads of kv heads).</summary>
    public static void MultipleOf(int value, int divisor, string op, string valueName, string divisorName)
    {
        if (value % divisor != 0)
            throw new ArgumentException($"{op}: {valueName} = {value} is not a multiple of {divisorName} = {divisor}.", divisorName);
    }

    public static void NonNegative(int value, string name)
    {
        if (value < 0)
            throw new ArgumentException($"{name} = {value} must not be negative.", name);
    }

    public static void Length<T>(ReadOnlySpan<T> span, long expected, string name, string shape)
    {
        if (span.Length != expected)
            throw new ArgumentException($"{name} has {span.Length} elements, expected {expected} for shape {shape}.", name);
    }
}
