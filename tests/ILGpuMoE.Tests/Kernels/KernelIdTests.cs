using ILGpuMoE.Kernels;
using ILGpuMoE.Kernels.Attention;
using ILGpuMoE.Kernels.Attention.Mla;
using ILGpuMoE.Kernels.Dense;
using ILGpuMoE.Kernels.Moe;
using ILGpuMoE.Kernels.Moe.Gating;
using ILGpuMoE.Kernels.Quant;
using ILGpuMoE.Ptx;
using ILGpuMoE.Tests.Kernels.Moe;

namespace ILGpuMoE.Tests.Kernels;

/// <summary>A kernel version is named once, by its enum member: the strings of [KernelInfo], PTX and bench come from it.</summary>
public class KernelIdTests
{
    // Every version enum; Attention's V2 is the launcher's own pick between V2Prefill and V2Decode (no kernel of its own).
    private static readonly (Type Enum, Enum[] WithoutKernel)[] VersionEnums =
    [
        (typeof(GroupedGemmVersion), []),
        (typeof(GatingVersion), []),
        (typeof(MatMulVersion), []),
        (typeof(SwiGluVersion), []),
        (typeof(QuantGemvVersion), []),
        (typeof(QuantGemmVersion), []),
        (typeof(AttentionVersion), [AttentionVersion.V2]),
        (typeof(PagedKvAppendVersion), []),
        (typeof(PagedAttentionVersion), []),
        (typeof(PagedMlaAppendVersion), []),
        (typeof(PagedMlaAttentionVersion), []),
    ];

    // Hand-written: the kebab case of the member names.
    [TestCase(GroupedGemmVersion.V1Simple, "moe/grouped-gemm", "v1-simple")]
    [TestCase(GroupedGemmVersion.V4PackedGemv, "moe/grouped-gemm", "v4-packed-gemv")]
    [TestCase(MatMulVersion.GemvV2, "dense/matmul", "gemv-v2")]
    [TestCase(AttentionVersion.V2Decode, "attention", "v2-decode")]
    [TestCase(PagedAttentionVersion.V2Decode, "attention/paged", "v2-decode")]
    [TestCase(PagedMlaAttentionVersion.V1, "attention/paged-mla", "v1")]
    public void NamesComeFromTheMember(Enum version, string family, string name)
    {
        Assert.That(KernelId.Family(version), Is.EqualTo(family));
        Assert.That(KernelId.Version(version), Is.EqualTo(name));
    }

    [Test]
    public void AnUnnamedValueIsRefused()
    {
        Assert.Throws<ArgumentException>(() => KernelId.Version((GroupedGemmVersion)99));
        Assert.Throws<ArgumentException>(() => KernelId.Family(RoutingShape.Random));
    }

    [Test]
    public void EveryVersionHasKernelsAndEveryKernelOfAVersionedFamilyHasAVersion()
    {
        var kernels = PtxExporter.FindKernels().Select(k => (k.Info.Family, k.Info.Version)).ToHashSet();
        foreach (var (type, without) in VersionEnums)
        {
            var members = Enum.GetValues(type).Cast<Enum>().ToList();
            string family = KernelId.Family(members[0]);
            var names = members.Select(KernelId.Version).ToHashSet();
            foreach (var m in members.Except(without))
                Assert.That(kernels, Does.Contain((family, KernelId.Version(m))), $"{type.Name}.{m} has no [KernelInfo] kernel");
            foreach (var (f, v) in kernels.Where(k => k.Family == family))
                Assert.That(names, Does.Contain(v), $"{f} {v}: a version string that is no member of {type.Name}");
        }
    }
}
