// RoPE as Hugging Face Mixtral (rotate-half), in place on q [T, H, Dh] and k [T, Hkv, Dh], positions [T] on the device.
//
// For i in [0, Dh/2): inv_i = theta^(-2i/Dh), a = pos * inv_i,
//   (x_i, x_{i+Dh/2}) -> (x_i cos a - x_{i+Dh/2} sin a,  x_{i+Dh/2} cos a + x_i sin a).
//
// Versions:
//   V1  one thread per (token, pair i); it computes cos/sin once and rotates pair i of every q head and every k head
//       of its token (consecutive threads touch consecutive dims of a head: coalesced). No per-head norm.
//   V2HeadNorm  one thread per (token, head): optionally RMS-normalises the head first (Qwen3-MoE's q_norm / k_norm:
//       x * (1 / sqrt(mean(x^2) + eps)) * w over Dh, f32 sum of squares, w [Dh] shared by every head; RmsNormKernel's
//       expression), then rotates its Dh/2 pairs. The norm needs the whole head before any pair is written back in
//       place, so a head belongs to one thread: no barriers, no shuffles (the CPU accelerator's choice), but Dh/2
//       serial pairs per thread and loads Dh floats apart across threads.
//   V3WarpNorm  one warp per (token, head): lane l takes pairs l, l + 32, ...; the head's sum of squares is one xor
//       butterfly of 5 shuffles (every lane gets the same bits). Each lane reads only the pairs it writes, so in place
//       is safe whatever the shuffles order. The GPU's choice when a norm is asked (coalesced, Dh/64 pairs per lane).
//   Without a norm, V2 and V3 rotate exactly as V1 (same SinCos and RotatePair: the same bits).
// attention/rope-append (kernels/ILGpuMoE.Kernels/Attention/RopeAppendKernel.cs) fuses the same rotation (and the same
// norm, NormRotate below) with the KV append; it shares the table, SinCos and RotatePair, so both give the same bits.
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

    /// <summary>One thread per (token, head), with the optional per-head RMSNorm (q_norm / k_norm) before the rotation.</summary>
    V2HeadNorm = 2,

    /// <summary>One warp per (token, head): the per-head norm's sum of squares by a shuffle butterfly.</summary>
    V3WarpNorm = 3,
}

/// <summary>
/// The per-head RMSNorm option of the rope kernels (Qwen3-MoE's q_norm / k_norm): weights [Dh] shared by every q (k)
/// head, F32 on the device. NormQ / NormK 0 leave those heads unnormalised (their view is then not read).
/// </summary>
public readonly struct QkNorm(ArrayView<float> q, ArrayView<float> k, int normQ, int normK, float eps)
{
    public readonly ArrayView<float> Q = q;
    public readonly ArrayView<float> K = k;
    public readonly int NormQ = normQ;
    public readonly int NormK = normK;
    public readonly float Eps = eps;

    public bool Any => NormQ != 0 || NormK != 0;

    /// <summary>
    /// The launchers' form of the option: qNorm / kNorm [Dh] each optional (default or empty: none), eps finite and
    /// &gt;= 0 when either is given. Throws ArgumentException (one line) on a wrong length or eps.
    /// </summary>
    internal static QkNorm Check(string kernel, ArrayView<float> qNorm, ArrayView<float> kNorm, float eps, int headDim)
    {
        bool hasQ = qNorm.IsValid && qNorm.Length > 0, hasK = kNorm.IsValid && kNorm.Length > 0;
        if (hasQ)
            DenseShapes.Length(kernel, nameof(qNorm), qNorm, headDim, "[Dh]");
        if (hasK)
            DenseShapes.Length(kernel, nameof(kNorm), kNorm, headDim, "[Dh]");
        if ((hasQ || hasK) && (!(eps >= 0f) || float.IsInfinity(eps)))
            throw new ArgumentException($"{kernel}: normEps must be finite and >= 0, got {eps}", nameof(eps));
        return new QkNorm(hasQ ? qNorm : default, hasK ? kNorm : default, hasQ ? 1 : 0, hasK ? 1 : 0, eps);
    }
}

public sealed class RopeKernel : IDisposable
{
    private const string Name = "Rope";

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, int, int, int, int> _v1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, QkNorm, int, int, int, int> _v2, _v3;
    private readonly RopeTables _tables;
    private readonly bool _gpu;
    private readonly int _warpSize;

    private RopeKernel(Accelerator accelerator)
    {
        _tables = new RopeTables(accelerator);
        _gpu = accelerator.AcceleratorType != AcceleratorType.CPU;
        _warpSize = accelerator.WarpSize;
        _v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, int, int, int, int>(RopeV1);
        _v2 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, QkNorm, int, int, int, int>(RopeHeadNormV2);
        _v3 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, QkNorm, int, int, int, int>(RopeWarpNormV3);
    }

    public static RopeKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>
    /// Rotates q [T, H, Dh] and k [T, Hkv, Dh] in place; token t is at absolute position positions[t] (the position
    /// offset for decode lives in that array). The first call for a (Dh, theta) uploads a small inv_freq table.
    /// qNorm / kNorm [Dh] (optional, F32): each q (k) head is first RMS-normalised over Dh with eps = normEps and
    /// times that weight (Qwen3-MoE's q_norm / k_norm). version: null picks V1 without a norm, else V3WarpNorm on a GPU
    /// and V2HeadNorm on the CPU accelerator; V1 refuses a norm.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions,
        int tokens, int heads, int kvHeads, int headDim, float theta, ArrayView<float> qNorm = default,
        ArrayView<float> kNorm = default, float normEps = 1e-6f, RopeVersion? version = null)
    {
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokens), tokens);
        DenseShapes.Positive(Name, nameof(heads), heads);
        DenseShapes.Positive(Name, nameof(kvHeads), kvHeads);
        CheckRotation(Name, headDim, theta);
        DenseShapes.Length(Name, nameof(q), q, (long)tokens * heads * headDim, "[T, H, Dh]");
        DenseShapes.Length(Name, nameof(k), k, (long)tokens * kvHeads * headDim, "[T, Hkv, Dh]");
        DenseShapes.Length(Name, nameof(positions), positions, tokens, "[T]");
        var norm = QkNorm.Check(Name, qNorm, kNorm, normEps, headDim);
        var v = version ?? (!norm.Any ? RopeVersion.V1 : _gpu ? RopeVersion.V3WarpNorm : RopeVersion.V2HeadNorm);
        var inv = _tables.Get(headDim, theta);
        long rows = (long)tokens * (heads + kvHeads);
        switch (v)
        {
            case RopeVersion.V1:
                if (norm.Any)
                    throw new ArgumentException($"{Name}: version V1 has no per-head norm; use V2HeadNorm or V3WarpNorm", nameof(version));
                _v1(stream, DenseShapes.Elementwise((long)tokens * (headDim / 2)), q, k, positions, inv.View, tokens, heads, kvHeads, headDim);
                break;
            case RopeVersion.V2HeadNorm:
                _v2(stream, DenseShapes.Elementwise(rows), q, k, positions, inv.View, norm, tokens, heads, kvHeads, headDim);
                break;
            case RopeVersion.V3WarpNorm:
                _v3(stream, WarpRows(rows, _warpSize), q, k, positions, inv.View, norm, tokens, heads, kvHeads, headDim);
                break;
            default:
                throw new ArgumentException($"{Name}: unknown version {v}", nameof(version));
        }
    }

    /// <summary>Groups of 256 threads, one warp per row, covering rows rows (V3WarpNorm of both rope families).</summary>
    internal static KernelConfig WarpRows(long rows, int warpSize)
    {
        int perGroup = Devices.MaxGroupSize / warpSize;
        long groups = (rows + perGroup - 1) / perGroup;
        if (groups > int.MaxValue)
            throw new ArgumentException($"{rows} heads are too many for one launch");
        return new KernelConfig((int)groups, perGroup * warpSize);
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

    /// <summary>V2HeadNorm: thread per (token, head); q heads first, then k heads, per token.</summary>
    [KernelInfo(RopeVersion.V2HeadNorm, "grid ceil(T*(H+Hkv) / 256), group 256",
        Summary = "thread per (token, head): optional per-head RMSNorm (q_norm / k_norm), then the head's Dh/2 rotations; no barriers")]
    public static void RopeHeadNormV2(ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, ArrayView<double> invFreq,
        QkNorm norm, int tokens, int heads, int kvHeads, int headDim)
    {
        long row = Grid.GlobalLinearIndex;
        if (row < (long)tokens * (heads + kvHeads))
            RopeRow(q, k, positions, invFreq, norm, row, heads, kvHeads, headDim, 0, 1, false);
    }

    /// <summary>V3WarpNorm: warp per (token, head) (a warp is all in or all out: rows are whole warps).</summary>
    [KernelInfo(RopeVersion.V3WarpNorm, "grid ceil(T*(H+Hkv) / 8), group 256 (8 warps, one head each)", BlockSize = Devices.MaxGroupSize,
        Summary = "warp per (token, head): per-head RMSNorm sum by a 5-shuffle butterfly, lanes rotate pairs l, l+32, ...")]
    public static void RopeWarpNormV3(ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, ArrayView<double> invFreq,
        QkNorm norm, int tokens, int heads, int kvHeads, int headDim)
    {
        long row = (long)Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;
        if (row < (long)tokens * (heads + kvHeads))
            RopeRow(q, k, positions, invFreq, norm, row, heads, kvHeads, headDim, Warp.LaneIdx, Warp.WarpSize, true);
    }

    // Row (token t, head hh of the H q heads then Hkv k heads) in place: norm when asked, then the rotation, over pairs
    // start, start + stride, ... (a thread: 0, 1; a warp's lane: l, 32 with warp = true, every lane calling).
    private static void RopeRow(ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, ArrayView<double> invFreq, QkNorm norm,
        long row, int heads, int kvHeads, int headDim, int start, int stride, bool warp)
    {
        int rows = heads + kvHeads;
        int t = (int)(row / rows);
        int hh = (int)(row - (long)t * rows);
        int pos = positions[t];
        if (hh < heads)
        {
            long b = ((long)t * heads + hh) * headDim;
            float scale = norm.NormQ != 0 ? HeadScale(q, b, headDim, start, stride, warp, norm.Eps) : 1f;
            NormRotate(q, b, q, b, headDim, pos, invFreq, start, stride, norm.NormQ, norm.Q, scale);
        }
        else
        {
            long b = ((long)t * kvHeads + hh - heads) * headDim;
            float scale = norm.NormK != 0 ? HeadScale(k, b, headDim, start, stride, warp, norm.Eps) : 1f;
            NormRotate(k, b, k, b, headDim, pos, invFreq, start, stride, norm.NormK, norm.K, scale);
        }
    }

    /// <summary>
    /// 1 / sqrt(mean(x^2) + eps) of the head x[b .. b + Dh), reading the pairs (i, i + Dh/2) for i = start, start + stride,
    /// ... &lt; Dh/2 (the pairs this thread or lane then writes) and, with warp, summing across the warp (every lane calls).
    /// </summary>
    internal static float HeadScale(ArrayView<float> x, long b, int headDim, int start, int stride, bool warp, float eps)
    {
        int half = headDim / 2;
        float sumSq = 0f;
        for (int i = start; i < half; i += stride)
        {
            float lo = x[b + i], hi = x[b + i + half];
            sumSq += lo * lo + hi * hi;
        }

        if (warp)
            sumSq = BlockReduce.WarpSum(sumSq);
        return 1f / XMath.Sqrt(sumSq / headDim + eps);
    }

    /// <summary>
    /// Pairs i = start, start + stride, ... &lt; Dh/2 of the head src[sb ..]: times scale * w (RmsNormKernel's x * scale * w)
    /// when norm != 0, rotated at pos, written to dst[db ..] (dst may be src: a pair is read before its own thread writes it).
    /// </summary>
    internal static void NormRotate(ArrayView<float> src, long sb, ArrayView<float> dst, long db, int headDim, int pos,
        ArrayView<double> invFreq, int start, int stride, int norm, ArrayView<float> w, float scale)
    {
        int half = headDim / 2;
        for (int i = start; i < half; i += stride)
        {
            SinCos(pos * invFreq[i], out float sin, out float cos);
            float a = src[sb + i], b = src[sb + i + half];
            if (norm != 0)
            {
                a = a * scale * w[i];
                b = b * scale * w[i + half];
            }

            RotatePair(a, b, cos, sin, out float lo, out float hi);
            dst[db + i] = lo;
            dst[db + i + half] = hi;
        }
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
