// RoPE as Hugging Face Mixtral (rotate-half), in place on q [T, H, Dh] and k [T, Hkv, Dh], positions [T] on the device.
//
// For i in [0, Dh/2): inv_i = theta^(-2i/Dh), a = pos * inv_i,
//   (x_i, x_{i+Dh/2}) -> (x_i cos a - x_{i+Dh/2} sin a,  x_{i+Dh/2} cos a + x_i sin a).
//
// Versions:
//   V1  one thread per (token, pair i); it computes cos/sin once and rotates pair i of every q head and every k head
//       of its token (consecutive threads touch consecutive dims of a head: coalesced).
// attention/rope-append (kernels/ILGpuMoE.Kernels/Attention/RopeAppendKernel.cs) fuses the same rotation with the KV
// append; it shares the table, SinCos and RotatePair below, so both give the same bits.
//
// Angle precision (why the doubles): with f32, pos * inv_i at pos ~4096 is off by up to half an ulp of 4096
// (2.4e-4 rad) before cos/sin even start, so the result drifts from the exact rotation by ~1e-4. Here inv_i is
// computed once on the host in double (cached per (Dh, theta)), the product and the reduction to [-pi, pi] are
// done in double (a handful of f64 ops per thread, cheap next to the loads), and only the reduced angle (|r| <= pi/4)
// goes through f32 polynomials for sin/cos (SinCos). Against the double reference at positions up to 8191 the
// outputs agree within 1e-5 relative + 1.2e-7 absolute for |x| <= 1 on the CPU accelerator (ElementwiseTests; the
// test allows 3e-7 for the GPU's FMA contraction); the f32 angle pos * inv_i misses by ~4e-4 there (the same test
// fails with it). Hugging Face
// computes the angle in f32, so HF itself is ~1e-4 off the exact rotation at such positions; we follow the exact
// math (the reference's contract), not HF's rounding.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels.Dense;

/// <summary>dense/rope's versions (one so far); each member is the version's one name (<see cref="KernelId"/>).</summary>
[KernelFamily("dense/rope")]
public enum RopeVersion
{
    /// <summary>One thread per rotated pair.</summary>
    V1 = 1,
}

public sealed class RopeKernel : IDisposable
{
    private const string Name = "Rope";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, int, int, int, int> _v1;
    private readonly RopeTables _tables;

    private RopeKernel(Accelerator accelerator)
    {
        _tables = new RopeTables(accelerator);
        _v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, int, int, int, int>(RopeV1);
    }

    public static RopeKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>
    /// Rotates q [T, H, Dh] and k [T, Hkv, Dh] in place; token t is at absolute position positions[t] (the position
    /// offset for decode lives in that array). The first call for a (Dh, theta) uploads a small inv_freq table.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions,
        int tokens, int heads, int kvHeads, int headDim, float theta)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokens), tokens);
        DenseShapes.Positive(Name, nameof(heads), heads);
        DenseShapes.Positive(Name, nameof(kvHeads), kvHeads);
        CheckRotation(Name, headDim, theta);
        DenseShapes.Length(Name, nameof(q), q, (long)tokens * heads * headDim, "[T, H, Dh]");
        DenseShapes.Length(Name, nameof(k), k, (long)tokens * kvHeads * headDim, "[T, Hkv, Dh]");
        DenseShapes.Length(Name, nameof(positions), positions, tokens, "[T]");
        var inv = _tables.Get(headDim, theta);
        _v1(stream, DenseShapes.Elementwise((long)tokens * (headDim / 2)), q, k, positions, inv.View, tokens, heads, kvHeads, headDim);
    }

    /// <summary>inv_i = theta^(-2i/Dh) in double, i in [0, Dh/2): the same expression as the reference.</summary>
    public static double[] InverseFrequencies(int headDim, float theta)
    {
        var inv = new double[headDim / 2];
        for (int i = 0; i < inv.Length; i++)
            inv[i] = Math.Pow(theta, -2.0 * i / headDim);
        return inv;
    }

    /// <summary>The rotation's argument checks (shared with attention/rope-append): Dh positive and even, theta finite and &gt; 1.</summary>
    internal static void CheckRotation(string name, int headDim, float theta)
    {
        DenseShapes.Positive(name, nameof(headDim), headDim);
        if (headDim % 2 != 0)
            throw new ArgumentException($"{name}: headDim must be even, got {headDim}", nameof(headDim));
        if (!(theta > 1f) || float.IsInfinity(theta))
            throw new ArgumentException($"{name}: theta must be finite and > 1, got {theta}", nameof(theta));
    }

    public void Dispose() => _tables.Dispose();

    [KernelInfo(RopeVersion.V1, "grid ceil(T*Dh/2 / 256), group 256",
        Summary = "thread per (token, pair); f64 angle and range reduction, f32 cos/sin, rotates all q and k heads")]
    public static void RopeV1(ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, ArrayView<double> invFreq,
        int tokens, int heads, int kvHeads, int headDim)
    {
        int half = headDim / 2;
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)tokens * half)
            return;
        int t = (int)(index / half);
        int i = (int)(index - (long)t * half);

        SinCos(positions[t] * invFreq[i], out float sin, out float cos);

        long qRow = (long)t * heads * headDim + i;
        for (int h = 0; h < heads; h++)
            Rotate(q, qRow + (long)h * headDim, half, cos, sin);
        long kRow = (long)t * kvHeads * headDim + i;
        for (int h = 0; h < kvHeads; h++)
            Rotate(k, kRow + (long)h * headDim, half, cos, sin);
    }

    /// <summary>
    /// sin and cos of a double angle, good to ~1e-7 absolute: reduce by pi/2 in double (|r| &lt;= pi/4, quadrant q),
    /// then f32 minimax polynomials (the classic Cephes sinf/cosf coefficients) and the quadrant's sign/swap.
    /// Why not XMath.Sin/Cos: on PTX the f32 ones are sin.approx/cos.approx (~5e-7 absolute) and the f64 ones a
    /// 3000-line software routine; this is a dozen flops and computes the same on the CPU accelerator as on the GPU.
    /// </summary>
    internal static void SinCos(double angle, out float sin, out float cos)
    {
        const double HalfPi = 1.57079632679489661923;
        double turns = XMath.Floor(angle * (1.0 / HalfPi) + 0.5);
        float r = (float)(angle - turns * HalfPi);
        int quadrant = (int)((long)turns & 3);
        float z = r * r;
        float s = r + r * z * (-1.6666654611e-1f + z * (8.3321608736e-3f + z * -1.9515295891e-4f));
        float c = 1f - 0.5f * z + z * z * (4.166664568298827e-2f + z * (-1.388731625493765e-3f + z * 2.443315711809948e-5f));
        sin = quadrant switch { 0 => s, 1 => c, 2 => -s, _ => -c };
        cos = quadrant switch { 0 => c, 1 => -s, 2 => -c, _ => s };
    }

    internal static void Rotate(ArrayView<float> x, long lo, int half, float cos, float sin)
    {
        RotatePair(x[lo], x[lo + half], cos, sin, out float rLo, out float rHi);
        x[lo] = rLo;
        x[lo + half] = rHi;
    }

    /// <summary>(a, b) = (x_i, x_{i+Dh/2}) rotated by the angle whose cos and sin are given.</summary>
    internal static void RotatePair(float a, float b, float cos, float sin, out float lo, out float hi)
    {
        lo = a * cos - b * sin;
        hi = b * cos + a * sin;
    }
}

/// <summary>
/// Device tables inv_freq [Dh/2] (double) per (Dh, theta), uploaded at the first use of each and kept until disposed
/// (a launch that finds its table allocates nothing, so it can be captured in a CUDA graph).
/// </summary>
internal sealed class RopeTables(Accelerator accelerator) : IDisposable
{
    private readonly Dictionary<(int HeadDim, float Theta), MemoryBuffer1D<double, Stride1D.Dense>> _invFreq = [];
    private readonly Lock _lock = new();
    private bool _disposed;

    public MemoryBuffer1D<double, Stride1D.Dense> Get(int headDim, float theta)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_invFreq.TryGetValue((headDim, theta), out var buffer))
            {
                buffer = accelerator.Allocate1D(RopeKernel.InverseFrequencies(headDim, theta));
                _invFreq.Add((headDim, theta), buffer);
            }

            return buffer;
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            foreach (var buffer in _invFreq.Values)
                buffer.Dispose();
            _invFreq.Clear();
        }
    }
}
