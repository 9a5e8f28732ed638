// Kernel launches, counted: every launcher loads its kernels through LoadCounted instead of ILGPU's LoadKernel, and the
// delegate it gets back adds one to a per-thread counter before it launches. The runtime reads the counter around a
// forward step (`generate` prints "launches per token", the bench reports it): the count is what was launched, not
// what a call site believes it launches. Per thread because a session steps on one thread and tests run in parallel;
// the increment costs nanoseconds next to a launch (microseconds).
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels;

public static partial class KernelLaunches
{
    [ThreadStatic]
    private static long count;

    [ThreadStatic]
    private static long tensorCoreCount;

    /// <summary>
    /// Throws ObjectDisposedException, naming it, when the accelerator or its ILGPU context was disposed: every counted
    /// launch checks first, so a launcher used after its device is gone fails as .NET code does instead of reaching
    /// ILGPU's runtime (where a launch on a disposed CPU accelerator ends the process with an assertion).
    /// </summary>
    public static void Guard(Accelerator accelerator, string? user = null)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        string who = user is null ? "" : user + ": ";
        if (accelerator.Context.IsDisposed)
            throw new ObjectDisposedException(nameof(Context), $"{who}the ILGPU context of accelerator '{accelerator.Name}' was disposed");
        if (accelerator.IsDisposed)
            throw new ObjectDisposedException(nameof(Accelerator), $"{who}the accelerator '{accelerator.Name}' was disposed");
    }

    /// <summary>Kernels launched on this thread since it started (read it before and after a step: the difference).</summary>
    public static long Count => count;

    /// <summary>Of <see cref="Count"/>, the tensor-core kernels (loaded through LoadTensorCore, TensorCore/TensorCoreLoader.cs).</summary>
    public static long TensorCoreCount => tensorCoreCount;

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1> LoadCounted<T1>(this Accelerator accelerator, Action<T1> kernel)
        where T1 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2> LoadCounted<T1, T2>(this Accelerator accelerator, Action<T1, T2> kernel)
        where T1 : struct where T2 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3> LoadCounted<T1, T2, T3>(this Accelerator accelerator, Action<T1, T2, T3> kernel)
        where T1 : struct where T2 : struct where T3 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4> LoadCounted<T1, T2, T3, T4>(this Accelerator accelerator, Action<T1, T2, T3, T4> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5> LoadCounted<T1, T2, T3, T4, T5>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6> LoadCounted<T1, T2, T3, T4, T5, T6>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7> LoadCounted<T1, T2, T3, T4, T5, T6, T7>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6, p7) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8, T9>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct where T13 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14> kernel)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct where T13 : struct where T14 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14);
        };
    }

    /// <summary>
    /// Groups of groupSize threads (no dynamic shared memory) of a loaded kernel that one multiprocessor holds at once,
    /// by ILGPU's occupancy estimate (on CUDA the driver's, from the kernel's registers and shared memory), at least 1.
    /// </summary>
    private static int ResidentGroups<TDelegate>(Accelerator accelerator, TDelegate launch, int groupSize)
        where TDelegate : Delegate =>
        Math.Max(1, accelerator.EstimateMaxActiveGroupsPerMultiprocessor(launch.GetKernel(), groupSize, 0));

    /// <summary>ILGPU's LoadKernel, with each launch counted, and the groups of <paramref name="groupSize"/> threads of it that
    /// one multiprocessor holds at once (<see cref="ResidentGroups"/>): what a persistent launch sizes its grid by.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7> LoadCounted<T1, T2, T3, T4, T5, T6, T7>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7> kernel, int groupSize, out int residentGroups)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        residentGroups = ResidentGroups(accelerator, launch, groupSize);
        return (s, c, p1, p2, p3, p4, p5, p6, p7) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted, and the groups of <paramref name="groupSize"/> threads of it that
    /// one multiprocessor holds at once (<see cref="ResidentGroups"/>): what a persistent launch sizes its grid by.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8> kernel, int groupSize, out int residentGroups)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        residentGroups = ResidentGroups(accelerator, launch, groupSize);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8);
        };
    }

    /// <summary>ILGPU's LoadKernel, with each launch counted, and the groups of <paramref name="groupSize"/> threads of it that
    /// one multiprocessor holds at once (<see cref="ResidentGroups"/>): what a persistent launch sizes its grid by.</summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11> LoadCounted<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11> kernel, int groupSize, out int residentGroups)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct
    {
        var launch = accelerator.LoadKernel(kernel);
        residentGroups = ResidentGroups(accelerator, launch, groupSize);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11) =>
        {
            Guard(accelerator);
            count++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11);
        };
    }
}
