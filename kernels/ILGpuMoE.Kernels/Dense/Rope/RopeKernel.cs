// RoPE in place on q [T, H, Dh] and k [T, Hkv, Dh] (head vectors QStride / KStride floats apart), positions [T] on the
// device, as a RopeSpec describes it (RopeSpec.cs: rotary dim d <= the head vector at an offset, rotate-half or
// interleaved pairs, plain or YaRN inv_freq, cos/sin factor). The default, RopeSpec.Full(Dh, theta), is Hugging Face
// Mixtral's rotate-half over all of Dh; for i in [0, d/2): inv_i = theta^(-2i/d), a = pos * inv_i,
//   (x_lo, x_hi) -> (x_lo cos a - x_hi sin a,  x_hi cos a + x_lo sin a),  cos, sin times the factor,
//   (lo, hi) = (i, i + d/2) or interleaved (2i, 2i + 1), both plus the offset; dims outside the rotary range pass through.
// gpt-oss: d = Dh = 64, YaRN (factor 32, truncate false). DeepSeek-V3 (MLA): d = Dr = 64 interleaved on q's last Dr dims
// and on the shared k_rope vector (strides Dn + Dr and kv_lora_rank + Dr), YaRN with mscale.
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
//   Without a norm, V2 and V3 rotate exactly as V1 (same SinCos and RotatePair: the same bits). The per-head norm needs
//   the full rotate-half spec (no family combines it with partial or interleaved rotary).
// attention/rope-append (kernels/ILGpuMoE.Kernels/Attention/RopeAppendKernel.cs) fuses the same rotation (and the same
// norm, NormRotate below) with the KV append; it shares the table, SinCos and RotatePair, so both give the same bits.
//
// Angle precision (why the doubles): with f32, pos * inv_i at pos ~4096 is off by up to half an ulp of 4096
// (2.4e-4 rad) before cos/sin even start, so the result drifts from the exact rotation by ~1e-4. Here inv_i is
// computed once on the host in double (cached per (d, theta, YaRN)), the product and the reduction to [-pi, pi] are
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

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, RopeGeometry, int, int, int> _v1;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, QkNorm, RopeGeometry, int, int, int> _v2, _v3;
    private readonly RopeTables _tables;
    private readonly bool _gpu;
    private readonly int _warpSize;

    private RopeKernel(Accelerator accelerator)
    {
        _tables = new RopeTables(accelerator);
        _gpu = accelerator.AcceleratorType != AcceleratorType.CPU;
        _warpSize = accelerator.WarpSize;
        _v1 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, RopeGeometry, int, int, int>(RopeV1);
        _v2 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, QkNorm, RopeGeometry, int, int, int>(RopeHeadNormV2);
        _v3 = accelerator.LoadCounted<ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<double>, QkNorm, RopeGeometry, int, int, int>(RopeWarpNormV3);
    }

    public static RopeKernel Create(Accelerator accelerator) => new(accelerator);

    /// <summary>
    /// Rotates q [T, H, Dh] and k [T, Hkv, Dh] in place; token t is at absolute position positions[t] (the position
    /// offset for decode lives in that array). The first call for a (Dh, theta) uploads a small inv_freq table.
    /// qNorm / kNorm [Dh] (optional, F32): each q (k) head is first RMS-normalised over Dh with eps = normEps and
    /// times that weight (Qwen3-MoE's q_norm / k_norm). version: null picks V1 without a norm, else V3WarpNorm on a GPU
    /// and V2HeadNorm on the CPU accelerator; V1 refuses a norm. Same as the <see cref="RopeSpec"/> overload with
    /// RopeSpec.Full(headDim, theta) and strides Dh.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions,
        int tokens, int heads, int kvHeads, int headDim, float theta, ArrayView<float> qNorm = default,
        ArrayView<float> kNorm = default, float normEps = 1e-6f, RopeVersion? version = null)
    {
        CheckRotation(Name, headDim, theta);
        Launch(stream, q, k, positions, tokens, heads, kvHeads, RopeSpec.Full(headDim, theta), headDim, headDim, qNorm, kNorm, normEps, version);
    }

    /// <summary>
    /// Rotates, in place, dims [spec.Offset, spec.Offset + d) of every head vector of q (H per token, qStride floats
    /// apart: head (t, h) starts at (t * H + h) * qStride) and of k (Hkv per token, kStride apart) as
    /// <paramref name="spec"/> says (pairs, YaRN, cos/sin factor); the other dims are not touched. Token t is at
    /// positions[t]. DeepSeek MLA: q = the [T, H, Dn + Dr] buffer viewed from Dn, qStride Dn + Dr; k = k_rope viewed
    /// where it starts, kStride its row length (Dr for a [T, 1, Dr] buffer), heads H and kvHeads 1, spec d = Dr
    /// interleaved. The first call for a spec's (d, theta, YaRN) uploads its inv_freq table. qNorm / kNorm [Dh] need the
    /// full rotate-half spec over qStride = kStride = Dh (else ArgumentException). version: as the other overload.
    /// </summary>
    public void Launch(AcceleratorStream stream, ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions,
        int tokens, int heads, int kvHeads, RopeSpec spec, int qStride, int kStride, ArrayView<float> qNorm = default,
        ArrayView<float> kNorm = default, float normEps = 1e-6f, RopeVersion? version = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        DenseShapes.Stream(Name, stream);
        DenseShapes.Positive(Name, nameof(tokens), tokens);
        DenseShapes.Positive(Name, nameof(heads), heads);
        DenseShapes.Positive(Name, nameof(kvHeads), kvHeads);
        DenseShapes.Positive(Name, nameof(qStride), qStride);
        DenseShapes.Positive(Name, nameof(kStride), kStride);
        spec.Check(Name, Math.Min(qStride, kStride));
        CheckHeads(Name, nameof(q), q, (long)tokens * heads, qStride, spec, "[T, H, Dh]");
        CheckHeads(Name, nameof(k), k, (long)tokens * kvHeads, kStride, spec, "[T, Hkv, Dh]");
        DenseShapes.Length(Name, nameof(positions), positions, tokens, "[T]");
        var norm = QkNorm.Check(Name, qNorm, kNorm, normEps, qStride);
        if (norm.Any && !(spec.IsFullRotateHalf(qStride) && qStride == kStride))
            throw new ArgumentException($"{Name}: the per-head norm needs the full rotate-half rotary over the whole head (d = strides, offset 0)", nameof(spec));
        var v = version ?? (!norm.Any ? RopeVersion.V1 : _gpu ? RopeVersion.V3WarpNorm : RopeVersion.V2HeadNorm);
        var inv = _tables.Get(spec);
        var g = spec.Geometry(qStride, kStride);
        long rows = (long)tokens * (heads + kvHeads);
        switch (v)
        {
            case RopeVersion.V1:
                if (norm.Any)
                    throw new ArgumentException($"{Name}: version V1 has no per-head norm; use V2HeadNorm or V3WarpNorm", nameof(version));
                _v1(stream, DenseShapes.Elementwise((long)tokens * g.Half), q, k, positions, inv.View, g, tokens, heads, kvHeads);
                break;
            case RopeVersion.V2HeadNorm:
                _v2(stream, DenseShapes.Elementwise(rows), q, k, positions, inv.View, norm, g, tokens, heads, kvHeads);
                break;
            case RopeVersion.V3WarpNorm:
                _v3(stream, WarpRows(rows, _warpSize), q, k, positions, inv.View, norm, g, tokens, heads, kvHeads);
                break;
            default:
                throw new ArgumentException($"{Name}: unknown version {v}", nameof(version));
        }
    }

    /// <summary>
    /// A view of `rows` head vectors `stride` apart must reach the last one's rotated dims and hold no more than rows *
    /// stride floats (a longer one is the wrong tensor or T): [T, H, Dh] exactly for the full spec, and MLA's views
    /// that start at the rope part of a row and run to the buffer's end.
    /// </summary>
    private static void CheckHeads(string who, string name, ArrayView<float> x, long rows, int stride, RopeSpec spec, string shape)
    {
        long need = (rows - 1) * stride + spec.Offset + spec.RotaryDim, most = rows * stride;
        long length = x.IsValid ? x.Length : 0;
        if (length < need || length > most)
        {
            string range = need == most ? $"{need}" : $"{need}..{most}";
            throw new ArgumentException($"{who}: {name} {shape} has {length} floats, needs {range} ({rows} heads {stride} apart)", name);
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
    public static double[] InverseFrequencies(int headDim, float theta) => InverseFrequencies(headDim, (double)theta);

    /// <summary>The same over a rotary dim d at a double theta (RopeSpec's plain table).</summary>
    internal static double[] InverseFrequencies(int headDim, double theta)
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

    [KernelInfo(RopeVersion.V1, "grid ceil(T*d/2 / 256), group 256",
        Summary = "thread per (token, pair); f64 angle and range reduction, f32 cos/sin, rotates all q and k heads")]
    public static void RopeV1(ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, ArrayView<double> invFreq,
        RopeGeometry g, int tokens, int heads, int kvHeads)
    {
        int half = g.Half;
        long index = Grid.GlobalLinearIndex;
        if (index >= (long)tokens * half)
            return;
        int t = (int)(index / half);
        int i = (int)(index - (long)t * half);

        Angle(positions[t], invFreq, i, g.Factor, out float sin, out float cos);

        int lo = g.Lo(i), hi = g.Hi(i);
        long qRow = (long)t * heads * g.QStride;
        for (int h = 0; h < heads; h++)
            RotateAt(q, qRow + (long)h * g.QStride, lo, hi, cos, sin);
        long kRow = (long)t * kvHeads * g.KStride;
        for (int h = 0; h < kvHeads; h++)
            RotateAt(k, kRow + (long)h * g.KStride, lo, hi, cos, sin);
    }

    /// <summary>V2HeadNorm: thread per (token, head); q heads first, then k heads, per token.</summary>
    [KernelInfo(RopeVersion.V2HeadNorm, "grid ceil(T*(H+Hkv) / 256), group 256",
        Summary = "thread per (token, head): optional per-head RMSNorm (q_norm / k_norm), then the head's d/2 rotations; no barriers")]
    public static void RopeHeadNormV2(ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, ArrayView<double> invFreq,
        QkNorm norm, RopeGeometry g, int tokens, int heads, int kvHeads)
    {
        long row = Grid.GlobalLinearIndex;
        if (row < (long)tokens * (heads + kvHeads))
            RopeRow(q, k, positions, invFreq, norm, g, row, heads, kvHeads, 0, 1, false);
    }

    /// <summary>V3WarpNorm: warp per (token, head) (a warp is all in or all out: rows are whole warps).</summary>
    [KernelInfo(RopeVersion.V3WarpNorm, "grid ceil(T*(H+Hkv) / 8), group 256 (8 warps, one head each)", BlockSize = Devices.MaxGroupSize,
        Summary = "warp per (token, head): per-head RMSNorm sum by a 5-shuffle butterfly, lanes rotate pairs l, l+32, ...")]
    public static void RopeWarpNormV3(ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, ArrayView<double> invFreq,
        QkNorm norm, RopeGeometry g, int tokens, int heads, int kvHeads)
    {
        long row = (long)Grid.IdxX * (Group.DimX / Warp.WarpSize) + Warp.WarpIdx;
        if (row < (long)tokens * (heads + kvHeads))
            RopeRow(q, k, positions, invFreq, norm, g, row, heads, kvHeads, Warp.LaneIdx, Warp.WarpSize, true);
    }

    // Row (token t, head hh of the H q heads then Hkv k heads) in place: norm when asked (full rotate-half only: the
    // launcher checks, so the head is d = stride floats), then the rotation, over pairs start, start + stride, ... (a
    // thread: 0, 1; a warp's lane: l, 32 with warp = true, every lane calling).
    private static void RopeRow(ArrayView<float> q, ArrayView<float> k, ArrayView<int> positions, ArrayView<double> invFreq, QkNorm norm,
        RopeGeometry g, long row, int heads, int kvHeads, int start, int stride, bool warp)
    {
        int rows = heads + kvHeads;
        int t = (int)(row / rows);
        int hh = (int)(row - (long)t * rows);
        int pos = positions[t];
        if (hh < heads)
        {
            long b = ((long)t * heads + hh) * g.QStride;
            float scale = norm.NormQ != 0 ? HeadScale(q, b, g.QStride, start, stride, warp, norm.Eps) : 1f;
            NormRotate(q, b, q, b, g, pos, invFreq, start, stride, norm.NormQ, norm.Q, scale);
        }
        else
        {
            long b = ((long)t * kvHeads + hh - heads) * g.KStride;
            float scale = norm.NormK != 0 ? HeadScale(k, b, g.KStride, start, stride, warp, norm.Eps) : 1f;
            NormRotate(k, b, k, b, g, pos, invFreq, start, stride, norm.NormK, norm.K, scale);
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
    /// Pairs i = start, start + stride, ... &lt; d/2 of the head src[sb ..] (head-relative dims g.Lo(i), g.Hi(i)): times
    /// scale * w (RmsNormKernel's x * scale * w, w indexed by the same head-relative dims) when norm != 0, rotated at
    /// pos, written to dst[db ..] (dst may be src: a pair is read before its own thread writes it).
    /// </summary>
    internal static void NormRotate(ArrayView<float> src, long sb, ArrayView<float> dst, long db, RopeGeometry g, int pos,
        ArrayView<double> invFreq, int start, int stride, int norm, ArrayView<float> w, float scale)
    {
        for (int i = start; i < g.Half; i += stride)
        {
            Angle(pos, invFreq, i, g.Factor, out float sin, out float cos);
            int lo = g.Lo(i), hi = g.Hi(i);
            float a = src[sb + lo], b = src[sb + hi];
            if (norm != 0)
            {
                a = a * scale * w[lo];
                b = b * scale * w[hi];
            }

            RotatePair(a, b, cos, sin, out float rLo, out float rHi);
            dst[db + lo] = rLo;
            dst[db + hi] = rHi;
        }
    }

    /// <summary>sin and cos of pos * invFreq[i] (SinCos), both times factor (1: the same bits as without).</summary>
    internal static void Angle(int pos, ArrayView<double> invFreq, int i, float factor, out float sin, out float cos)
    {
        SinCos(pos * invFreq[i], out float s, out float c);
        sin = s * factor;
        cos = c * factor;
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

    /// <summary>Pair (b + lo, b + hi) of x rotated in place.</summary>
    internal static void RotateAt(ArrayView<float> x, long b, int lo, int hi, float cos, float sin)
    {
        RotatePair(x[b + lo], x[b + hi], cos, sin, out float rLo, out float rHi);
        x[b + lo] = rLo;
        x[b + hi] = rHi;
    }

    /// <summary>(a, b) = (x_lo, x_hi) rotated by the angle whose cos and sin are given.</summary>
    internal static void RotatePair(float a, float b, float cos, float sin, out float lo, out float hi)
    {
        lo = a * cos - b * sin;
        hi = b * cos + a * sin;
    }
}

/// <summary>
/// Device tables inv_freq [d/2] (double) per (d, theta, YaRN), uploaded at the first use of each and kept until disposed
/// (a launch that finds its table allocates nothing, so it can be captured in a CUDA graph).
/// </summary>
internal sealed class RopeTables(Accelerator accelerator) : IDisposable
{
    private readonly Dictionary<(int RotaryDim, double Theta, YarnScaling? Yarn), MemoryBuffer1D<double, Stride1D.Dense>> _invFreq = [];
    private readonly Lock _lock = new();
    private bool _disposed;

    public MemoryBuffer1D<double, Stride1D.Dense> Get(RopeSpec spec)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var key = (spec.RotaryDim, spec.Theta, spec.Yarn);
            if (!_invFreq.TryGetValue(key, out var buffer))
            {
                buffer = accelerator.Allocate1D(spec.InverseFrequencies());
                _invFreq.Add(key, buffer);
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
