using ILGPU;
using ILGPU.Runtime;
using ILGpuMoE.Kernels;
using ILGpuMoE.Tests.Common;

namespace ILGpuMoE.Tests.Kernels.Dense;

/// <summary>A test body run once per weight type: w is the device weight reader, seen the widened values it holds.</summary>
internal interface IWeightsTest
{
    void Run<TW>(TW w, float[] seen)
        where TW : struct, IWeights;
}

internal static class DenseTestWeights
{
    /// <summary>Uploads values as the given dtype (RNE rounding) and runs the test with the values the kernel sees.</summary>
    public static void With(WeightType type, float[] values, IWeightsTest test)
    {
        switch (type)
        {
            case WeightType.F32:
            {
                using var buffer = TestDevice.Upload(values);
                test.Run(new F32Weights(buffer.View), values);
                break;
            }

            case WeightType.F16:
            {
                var bits = values.Select(v => BitConverter.HalfToUInt16Bits((System.Half)v)).ToArray();
                using var buffer = TestDevice.Upload(bits);
                test.Run(new F16Weights(((ArrayView<ushort>)buffer.View).Cast<ILGPU.Half>()), Data.RoundToHalf(values));
                break;
            }

            case WeightType.BF16:
            {
                var bits = values.Select(BF16.FromFloat).ToArray();
                using var buffer = TestDevice.Upload(bits);
                test.Run(new BF16Weights(buffer.View), Data.RoundToBf16(values));
                break;
            }

            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, null);
        }
    }

    /// <summary>Tolerance for a dot product of length k: 1e-5 relative plus ~1e-6 * sqrt(k) absolute.</summary>
    public static double DotAtol(int k) => 1e-6 * Math.Sqrt(k);

    public static float[] Run(Action<AcceleratorStream> launch, MemoryBuffer1D<float, Stride1D.Dense> output)
    {
        var stream = TestDevice.Accelerator.DefaultStream;
        launch(stream);
        stream.Synchronize();
        return output.GetAsArray1D();
    }
}
