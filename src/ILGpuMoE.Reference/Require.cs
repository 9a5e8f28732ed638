// Argument checks shared by the oracle: one-line ArgumentException messages naming the argument and its shape.
namespace ILGpuMoE.Reference;

internal static class Require
{
    public static void Positive(int value, string name)
    {
        if (value <= 0)
            throw new ArgumentException($"{name} = {value} must be positive.", name);
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
