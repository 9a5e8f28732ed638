// Loading tensor-core kernels: ILGPU's own PTX, with the inline-asm operands promoted to registers, loaded as ILGPU
// would load it, and the launch counted as LoadCounted counts it (kernels/ILGpuMoE.Kernels/Common/KernelLaunches.cs).
//
// WHY: ILGPU passes every CudaAsm operand through local memory (PtxAsmOperands.cs); the fix is a text pass over the
// PTX, and ILGPU offers no hook between compiling a kernel and loading it. So on a CudaAccelerator LoadTensorCore
// compiles the explicitly grouped entry with the accelerator's own backend (Accelerator.CompileKernel), runs the pass,
// wraps the patched text in a new PTXCompiledKernel, and hands that to Accelerator.LoadKernel, which builds the module
// and the launcher exactly as for any kernel (same parameter marshalling, same streams and buffers). PTXCompiledKernel
// has no public constructor in ILGPU 1.5.3 (its only one is internal: Context, EntryPoint, KernelInfo, string), and
// CompiledKernel.EntryPoint's getter is internal too: both are reached by reflection, looked up once per process and
// invoked once per load; when they are missing (another ILGPU version) the load fails with an exception naming the
// version, rather than silently running the slow PTX.
//
// More than 48 KB of dynamic shared memory needs the function's opt-in (cuFuncSetAttribute with
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), which ILGPU never makes: the loader makes it on the loaded
// CudaKernel's FunctionPtr through the driver library ILGPU itself uses (CudaDriver).
//
// On every other accelerator (ILGPU's CPU accelerator: the tests) the kernel's CudaAsm.IsSupported branches run their
// emulation, and LoadTensorCore is LoadCounted.
using System.Collections.Concurrent;
using System.Reflection;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using ILGpuMoE.Kernels.TensorCore;

namespace ILGpuMoE.Kernels;

public static partial class KernelLaunches
{
    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1> LoadTensorCore<T1>(this Accelerator accelerator, Action<T1> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2> LoadTensorCore<T1, T2>(this Accelerator accelerator, Action<T1, T2> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3> LoadTensorCore<T1, T2, T3>(this Accelerator accelerator, Action<T1, T2, T3> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4> LoadTensorCore<T1, T2, T3, T4>(this Accelerator accelerator, Action<T1, T2, T3, T4> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5> LoadTensorCore<T1, T2, T3, T4, T5>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6> LoadTensorCore<T1, T2, T3, T4, T5, T6>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6,T7}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7> LoadTensorCore<T1, T2, T3, T4, T5, T6, T7>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6, p7) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6, p7);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6, p7) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6,T7,T8}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8> LoadTensorCore<T1, T2, T3, T4, T5, T6, T7, T8>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6, p7, p8) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6, p7, p8);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6,T7,T8,T9}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9> LoadTensorCore<T1, T2, T3, T4, T5, T6, T7, T8, T9>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6,T7,T8,T9,T10}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10> LoadTensorCore<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6,T7,T8,T9,T10,T11}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11> LoadTensorCore<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6,T7,T8,T9,T10,T11,T12}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12> LoadTensorCore<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6,T7,T8,T9,T10,T11,T12,T13}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13> LoadTensorCore<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct where T13 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13);
        };
    }

    /// <summary>
    /// A tensor-core kernel (explicitly grouped), each launch counted. On CUDA: ILGPU's PTX with the asm operands in
    /// registers (<see cref="TensorCoreLoader"/>), opted in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB; counted in TensorCoreCount as well. Elsewhere: <see cref="LoadCounted{T1,T2,T3,T4,T5,T6,T7,T8,T9,T10,T11,T12,T13,T14}"/> (the emulation).
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14> LoadTensorCore<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14>(this Accelerator accelerator, Action<T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14> kernel, int maxDynamicSharedBytes = 0)
        where T1 : struct where T2 : struct where T3 : struct where T4 : struct where T5 : struct where T6 : struct where T7 : struct where T8 : struct where T9 : struct where T10 : struct where T11 : struct where T12 : struct where T13 : struct where T14 : struct
    {
        if (accelerator is not CudaAccelerator cuda)
        {
            var emulated = accelerator.LoadCounted(kernel);
            return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14) =>
            {
                tensorCoreCount++;
                emulated(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14);
            };
        }

        var launch = TensorCoreLoader.Load<Action<AcceleratorStream, KernelConfig, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14>>(cuda, kernel, maxDynamicSharedBytes);
        return (s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14) =>
        {
            Guard(cuda);
            count++;
            tensorCoreCount++;
            launch(s, c, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14);
        };
    }
}

/// <summary>The CUDA side of <see cref="KernelLaunches"/>.LoadTensorCore: compile, promote, reload, opt in to shared memory.</summary>
public static class TensorCoreLoader
{
    /// <summary>Dynamic shared memory a kernel gets without the opt-in (CUDA's default limit per block).</summary>
    public const int DefaultDynamicSharedLimit = 48 * 1024;

    // CUfunction_attribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (cuda.h).
    private const int MaxDynamicSharedSizeAttribute = 8;

    private static readonly Lazy<(ConstructorInfo? Ctor, MethodInfo? EntryPoint)> Internals = new(() =>
    (
        typeof(PTXCompiledKernel).GetConstructor(BindingFlags.Instance | BindingFlags.NonPublic, null,
            [typeof(Context), typeof(EntryPoint), typeof(CompiledKernel.KernelInfo), typeof(string)], null),
        typeof(CompiledKernel).GetProperty("EntryPoint", BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)?.GetMethod
    ));

    private static readonly ConcurrentDictionary<string, PtxAsmOperandsResult> passes = new(StringComparer.Ordinal);

    /// <summary>What the operand pass did for each kernel loaded on CUDA in this process, by "Type.Method" (the last load wins).</summary>
    public static IReadOnlyDictionary<string, PtxAsmOperandsResult> Passes => passes;

    /// <summary>
    /// A copy of <paramref name="compiled"/> carrying <paramref name="ptx"/> instead of its PTX (same context, entry
    /// point and kernel info), through PTXCompiledKernel's internal constructor. Throws NotSupportedException naming
    /// ILGPU's version when that constructor or CompiledKernel.EntryPoint is not there.
    /// </summary>
    public static PTXCompiledKernel WithPtx(PTXCompiledKernel compiled, string ptx)
    {
        ArgumentNullException.ThrowIfNull(compiled);
        ArgumentNullException.ThrowIfNull(ptx);
        var (ctor, entryPoint) = Internals.Value;
        if (ctor is null || entryPoint is null)
        {
            string version = typeof(Context).Assembly.GetName().Version?.ToString() ?? "unknown";
            throw new NotSupportedException(
                $"ILGPU {version}: {(ctor is null ? "PTXCompiledKernel(Context, EntryPoint, KernelInfo, string)" : "CompiledKernel.EntryPoint")} " +
                "not found; the tensor-core loader reaches these internals of ILGPU 1.5.3 to reload patched PTX " +
                "(kernels/ILGpuMoE.Kernels/TensorCore/TensorCoreLoader.cs)");
        }

        return (PTXCompiledKernel)ctor.Invoke([compiled.Context, entryPoint.Invoke(compiled, null), compiled.Info, ptx]);
    }

    /// <summary>The compiled kernel with its asm operands promoted (<see cref="PtxAsmOperands.Promote"/>), and what the pass did.</summary>
    public static (PTXCompiledKernel Kernel, PtxAsmOperandsResult Pass) Patch(PTXCompiledKernel compiled)
    {
        ArgumentNullException.ThrowIfNull(compiled);
        var pass = PtxAsmOperands.Promote(compiled.PTXAssembly);
        return (WithPtx(compiled, pass.Ptx), pass);
    }

    /// <summary>
    /// Compiles <paramref name="kernel"/> (a static, explicitly grouped kernel method) for <paramref name="accelerator"/>,
    /// promotes its asm operands, loads it, opts it in to <paramref name="maxDynamicSharedBytes"/> of dynamic shared
    /// memory when that exceeds 48 KB, and returns ILGPU's launcher (AcceleratorStream, KernelConfig, parameters).
    /// </summary>
    public static TLauncher Load<TLauncher>(CudaAccelerator accelerator, Delegate kernel, int maxDynamicSharedBytes)
        where TLauncher : Delegate
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentOutOfRangeException.ThrowIfNegative(maxDynamicSharedBytes);
        if (kernel.Target is not null || !kernel.Method.IsStatic)
            throw new ArgumentException($"LoadTensorCore: {kernel.Method.Name} is not a static kernel method", nameof(kernel));

        var entry = EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method);
        var compiled = accelerator.CompileKernel(entry) as PTXCompiledKernel
                       ?? throw new InvalidOperationException($"LoadTensorCore: {accelerator.Name}'s backend did not produce PTX");
        var (patched, pass) = Patch(compiled);
        passes[$"{kernel.Method.DeclaringType?.FullName}.{kernel.Method.Name}"] = pass;
        var loaded = accelerator.LoadKernel(patched);
        if (maxDynamicSharedBytes > DefaultDynamicSharedLimit)
            OptInDynamicShared((CudaKernel)loaded, maxDynamicSharedBytes);
        return loaded.CreateLauncherDelegate<TLauncher>();
    }

    /// <summary>cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes); throws naming the CUresult.</summary>
    private static unsafe void OptInDynamicShared(CudaKernel kernel, int bytes)
    {
        if (!CudaDriver.TryExport("cuFuncSetAttribute", out var setAttribute))
            throw new InvalidOperationException("LoadTensorCore: the CUDA driver library has no cuFuncSetAttribute");
        int result = ((delegate* unmanaged<IntPtr, int, int, int>)setAttribute)(kernel.FunctionPtr, MaxDynamicSharedSizeAttribute, bytes);
        if (result != CudaDriver.Success)
            throw new InvalidOperationException(
                $"LoadTensorCore: cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, {bytes}) for {kernel.CompiledKernel.Name} returned {CudaDriver.ResultName(result)}");
    }
}
