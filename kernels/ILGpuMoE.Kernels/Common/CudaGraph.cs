// A CUDA graph of one stream's work: capture the launches once, replay them with one call.
//
// WHY: a decode step is ~8 launches per layer (256 for a 32-layer model) of kernels that each run for microseconds;
// launched one by one from the host, the gaps between them (a few microseconds each) are a visible share of the step.
// A graph hands the whole sequence to the driver once; cuGraphLaunch replays it with the launch gaps mostly gone.
// ILGPU 1.5.3 has no graph API, so this binds the driver's (cuStreamBeginCapture_v2, cuStreamEndCapture,
// cuGraphInstantiateWithFlags, cuGraphLaunch; CUDA 11.4+) through the same library ILGPU loaded (CudaDriver).
//
// What replay needs from the captured work: every launch argument (pointers, sizes, grid) is frozen at capture. So a
// captured step may only read what changes per token (the token id, its position) from device memory, written by
// copies made outside the graph before each replay, and it must not allocate. The runtime captures only its T = 1
// decode step, whose kernels are built that way (positions from a device view, grids sized by the cache length).
// Capture mode "relaxed": ILGPU may call driver functions that the stricter modes forbid during a capture on this
// thread (querying, not allocating); anything that would break the graph fails the capture instead, and the caller
// falls back to launching the step plainly.
using System.Runtime.InteropServices;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace ILGpuMoE.Kernels;

public sealed unsafe class CudaGraph : IDisposable
{
    private const int CaptureModeRelaxed = 2;
    private IntPtr graph, exec;

    private CudaGraph(IntPtr graph, IntPtr exec, long nodes)
    {
        this.graph = graph;
        this.exec = exec;
        Nodes = nodes;
    }

    /// <summary>Nodes of the captured graph: the kernel launches (and any copies) of the captured work.</summary>
    public long Nodes { get; }

    /// <summary>True when the stream is a CUDA stream other than the legacy default one and the driver exports the graph API.</summary>
    public static bool IsSupported(AcceleratorStream stream) =>
        stream is CudaStream cuda && cuda.StreamPtr != IntPtr.Zero
        && CudaDriver.TryExport("cuStreamBeginCapture_v2", out _) && CudaDriver.TryExport("cuGraphInstantiateWithFlags", out _);

    /// <summary>
    /// Runs <paramref name="work"/> (which enqueues launches on <paramref name="stream"/>) under stream capture and
    /// instantiates the graph; the work is recorded, not executed. Throws InvalidOperationException naming the driver
    /// call and its CUresult when the driver refuses (the stream is left out of capture).
    /// </summary>
    public static CudaGraph Capture(AcceleratorStream stream, Action work)
    {
        ArgumentNullException.ThrowIfNull(work);
        if (!IsSupported(stream))
            throw new InvalidOperationException("CudaGraph: the stream is not a capturable CUDA stream (the legacy default stream cannot be captured) or the driver lacks the graph API");
        var s = ((CudaStream)stream).StreamPtr;
        Check("cuStreamBeginCapture_v2", ((delegate* unmanaged<IntPtr, int, int>)Export("cuStreamBeginCapture_v2"))(s, CaptureModeRelaxed));
        IntPtr g = IntPtr.Zero;
        try
        {
            work();
        }
        finally
        {
            // Always end the capture, also when the work threw: a stream left capturing fails every later launch.
            int end = ((delegate* unmanaged<IntPtr, IntPtr*, int>)Export("cuStreamEndCapture"))(s, &g);
            if (end != CudaDriver.Success)
            {
                Destroy(ref g, "cuGraphDestroy");
                throw Failed("cuStreamEndCapture", end);
            }
        }

        try
        {
            nuint count = 0;
            Check("cuGraphGetNodes", ((delegate* unmanaged<IntPtr, IntPtr*, nuint*, int>)Export("cuGraphGetNodes"))(g, null, &count));
            IntPtr e = IntPtr.Zero;
            Check("cuGraphInstantiateWithFlags", ((delegate* unmanaged<IntPtr*, IntPtr, ulong, int>)Export("cuGraphInstantiateWithFlags"))(&e, g, 0));
            return new CudaGraph(g, e, (long)count);
        }
        catch
        {
            Destroy(ref g, "cuGraphDestroy");
            throw;
        }
    }

    /// <summary>Enqueues one replay of the captured work on <paramref name="stream"/>.</summary>
    public void Launch(AcceleratorStream stream)
    {
        ObjectDisposedException.ThrowIf(exec == IntPtr.Zero, this);
        if (stream is not CudaStream cuda)
            throw new ArgumentException("CudaGraph.Launch: not a CUDA stream", nameof(stream));
        Check("cuGraphLaunch", ((delegate* unmanaged<IntPtr, IntPtr, int>)Export("cuGraphLaunch"))(exec, cuda.StreamPtr));
    }

    public void Dispose()
    {
        Destroy(ref exec, "cuGraphExecDestroy");
        Destroy(ref graph, "cuGraphDestroy");
    }

    private static void Destroy(ref IntPtr handle, string function)
    {
        if (handle == IntPtr.Zero)
            return;
        ((delegate* unmanaged<IntPtr, int>)Export(function))(handle);
        handle = IntPtr.Zero;
    }

    private static IntPtr Export(string name) =>
        CudaDriver.TryExport(name, out var f) ? f : throw new InvalidOperationException($"CudaGraph: the CUDA driver library has no {name}");

    private static void Check(string function, int result)
    {
        if (result != CudaDriver.Success)
            throw Failed(function, result);
    }

    private static InvalidOperationException Failed(string function, int result) =>
        new($"CudaGraph: {function} returned {CudaDriver.ResultName(result)}");
}
