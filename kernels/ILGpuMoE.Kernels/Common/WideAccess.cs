// Host checks for kernels that read or write views with vector accesses (ld/st .v2/.v4, declared on [KernelInfo]
// WideViews). A vector access needs its address to be a multiple of its width on the device; a misaligned one is a
// CUDA "misaligned address" fault that kills the context, and the CPU accelerator would never show it. So every
// launcher of such a kernel calls these before the launch, and each message names the tensor.
using ILGPU;
using ILGPU.Runtime;

namespace ILGpuMoE.Kernels;

public static class WideAccess
{
    /// <summary>
    /// Throws ArgumentException (naming tensor) unless the view's device address, buffer base plus the view's
    /// offset (a SubView's start), is a multiple of bytes. An empty view is left to the length checks.
    /// </summary>
    public static void RequireAligned<T>(string where, string tensor, ArrayView<T> view, int bytes)
        where T : unmanaged
    {
        if (!view.IsValid || view.Length == 0)
            return;
        if (!IsAligned(view, bytes))
        {
            throw new ArgumentException(
                $"{where}: {tensor} starts at byte offset {view.LoadEffectiveAddressAsPtr().ToInt64() % bytes} modulo {bytes}; " +
                $"the kernel reads it with {bytes}-byte vector loads, so it must start on a {bytes}-byte boundary", tensor);
        }
    }

    /// <summary>True when the view's device address (buffer base plus the view's byte offset, what ILGPU itself hands to
    /// cuMemset; computed on the host, never dereferenced) is a multiple of bytes.</summary>
    public static bool IsAligned<T>(ArrayView<T> view, int bytes)
        where T : unmanaged => view.LoadEffectiveAddressAsPtr().ToInt64() % bytes == 0;

    /// <summary>Throws ArgumentException (naming tensor) unless a row stride or group size in bytes is a multiple of bytes.</summary>
    public static void RequireMultiple(string where, string tensor, string what, long strideBytes, int bytes)
    {
        if (strideBytes % bytes != 0)
            throw new ArgumentException($"{where}: {tensor} {what} is {strideBytes} bytes, not a multiple of the kernel's {bytes}-byte vector access", tensor);
    }
}
