// Double-precision log / exp / cos(2 pi u) for device code, in registers only.
//
// WHY: PTX has no f64 log, exp or cos instruction, so ILGPU (with algorithms enabled) lowers Math.Log / Math.Exp /
// Math.Cos on doubles to CORDIC routines that pass their state by reference: that state lives in .local memory and
// gave moe-gating-v2 an 80 B stack frame (ptxas -v). These versions are straight-line polynomials over bit
// manipulation: no calls with ref parameters, no arrays, nothing for ptxas to put on the stack.
// Accuracy: a few ulp in double (the tests compare with Math.* at 1e-15 relative, 2e-15 absolute for cos), far below the float rounding the
// NoisyTopK score gets afterwards. Domains are what the kernels need (documented per method), not the whole of IEEE.
using ILGPU;

namespace ILGpuMoE.Kernels;

public static class DeviceMath
{
    private const double Ln2Hi = 6.93147180369123816490e-01; // fdlibm's split of ln 2: Ln2Hi * k is exact for |k| < 2^11
    private const double Ln2Lo = 1.90821492927058770002e-10;
    private const double InvLn2 = 1.44269504088896338700e+00;
    private const double Sqrt2 = 1.41421356237309504880;

    /// <summary>Natural log of a positive, finite, normal double (u1 in (0, 1] and 1 + e in [1, 2] for NoisyTopK).
    /// x = 2^k m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| &lt; 0.172, whose odd
    /// series to s^23 is below an ulp. Zero, negative, subnormal, inf and NaN inputs are outside the domain.</summary>
    public static double Log(double x)
    {
        ulong bits = Interop.FloatAsInt(x);
        int k = (int)((bits >> 52) & 0x7FF) - 1023;
        double m = Interop.IntAsFloat((bits & 0x000FFFFFFFFFFFFFUL) | 0x3FF0000000000000UL);
        if (m > Sqrt2)
        {
            m *= 0.5;
            k++;
        }

        double s = (m - 1.0) / (m + 1.0);
        double z = s * s;
        double p = 1.0 / 23;
        p = p * z + 1.0 / 21;
        p = p * z + 1.0 / 19;
        p = p * z + 1.0 / 17;
        p = p * z + 1.0 / 15;
        p = p * z + 1.0 / 13;
        p = p * z + 1.0 / 11;
        p = p * z + 1.0 / 9;
        p = p * z + 1.0 / 7;
        p = p * z + 1.0 / 5;
        p = p * z + 1.0 / 3;
        double logM = 2.0 * s + 2.0 * s * z * p;
        return k * Ln2Hi + (k * Ln2Lo + logM);
    }

    /// <summary>e^y for y &lt;= 0 (softplus's exp(-|x|)); 0 below -745.2 (and for -inf). y = k ln2 + r with |r| &lt;= ln2/2,
    /// Taylor series of e^r to r^14, then 2^k through the exponent bits (in two steps where the result is subnormal).</summary>
    public static double ExpNonPositive(double y)
    {
        if (y < -745.2)
            return 0.0;
        double kf = Math.Floor(y * InvLn2 + 0.5);
        int k = (int)kf;
        double r = y - kf * Ln2Hi - kf * Ln2Lo;
        double p = 1.0 / 87178291200.0; // 1/14!
        p = p * r + 1.0 / 6227020800.0;
        p = p * r + 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        if (k < -1000)
        {
            // 2^k alone would be subnormal: scale by 2^-200 first (exact), then the rest (one rounding).
            p *= Interop.IntAsFloat((ulong)(1023 - 200) << 52);
            k += 200;
        }

        return p * Interop.IntAsFloat((ulong)(k + 1023) << 52);
    }

    /// <summary>cos(2 pi u) for u in [0, 1] (Box-Muller's angle). u = q/4 + r with q = round(4u), |r| &lt;= 1/8 (exact:
    /// u is a multiple of 2^-53), theta = 2 pi r in [-pi/4, pi/4]; by quadrant: cos, -sin, -cos, sin, cos theta.</summary>
    public static double CosTwoPi(double u)
    {
        double qf = Math.Floor(u * 4.0 + 0.5);
        int q = (int)qf & 3;
        double theta = (u - qf * 0.25) * 6.28318530717958647693;
        double z = theta * theta;
        bool useSin = (q & 1) != 0;
        double v;
        if (useSin)
        {
            double p = -1.0 / 121645100408832000.0; // -1/19!
            p = p * z + 1.0 / 355687428096000.0;
            p = p * z - 1.0 / 1307674368000.0;
            p = p * z + 1.0 / 6227020800.0;
            p = p * z - 1.0 / 39916800.0;
            p = p * z + 1.0 / 362880.0;
            p = p * z - 1.0 / 5040.0;
            p = p * z + 1.0 / 120.0;
            p = p * z - 1.0 / 6.0;
            v = theta + theta * z * p;
        }
        else
        {
            double p = 1.0 / 6402373705728000.0; // 1/18!
            p = p * z - 1.0 / 20922789888000.0;
            p = p * z + 1.0 / 87178291200.0;
            p = p * z - 1.0 / 479001600.0;
            p = p * z + 1.0 / 3628800.0;
            p = p * z - 1.0 / 40320.0;
            p = p * z + 1.0 / 720.0;
            p = p * z - 1.0 / 24.0;
            p = p * z + 0.5;
            v = 1.0 - z * p;
        }

        // q = 1: cos(pi/2 + theta) = -sin theta; q = 2: -cos theta; q = 3: cos(3pi/2 + theta) = sin theta.
        return q == 1 || q == 2 ? -v : v;
    }
}
