// ilgpumoe-bench: the benchmark executable. `ilgpumoe bench ...` forwards here (perf/NOTES.md says why it is a
// separate executable); this project never calls the CLI. The first argument may be the verb: bench (default), host
// (BenchmarkDotNet host paths), plot, predict (the decode model, Model/DecodeModel.cs) or serve (the continuous-batching
// engine under load, Serve/ServeBench.cs). The GPU machine's file (perf/ILGpuMoE.GpuBundle) sends these verbs here.
using Spectre.Console;

namespace ILGpuMoE.Perf;

public static class Program
{
    public static int Main(string[] args)
    {
        Runtime.ProcessEnvironment.Apply(); // ILGPUMOE_LIBCUDA, before the first context
        var rest = args.AsSpan();
        string verb = rest.Length > 0 && !rest[0].StartsWith('-') ? rest[0] : "bench";
        if (verb is not ("bench" or "host" or "plot" or "predict" or "serve"))
        {
            Console.Error.WriteLine($"error: ilgpumoe-bench: unknown verb '{verb}' (bench, host, plot, predict or serve; the other verbs are ilgpumoe's)");
            return 2;
        }

        if (rest.Length > 0 && !rest[0].StartsWith('-'))
            rest = rest[1..];
        // `bench serve ...` (as `ilgpumoe bench serve` and the GPU file's `bench serve` arrive) is the serve verb.
        if (verb == "bench" && rest.Length > 0 && rest[0] == "serve")
        {
            verb = "serve";
            rest = rest[1..];
        }

        try
        {
            if (verb == "plot")
                return Plot(rest.ToArray());
            if (verb == "predict")
                return Predict(rest.ToArray());
            if (verb == "serve")
                return Serve.ServeBench.Run(rest.ToArray(), Console.Error);
#if GPU_PUBLISH
            if (verb == "host")
            {
                Console.Error.WriteLine("error: host benchmarks are not in the GPU publish (run them on the CPU machine)");
                return 2;
            }

            return BenchCommand.Run(rest.ToArray(), CreateConsole(), Console.Error);
#else
            return verb == "host" ? HostBenchmarks.Run(rest.ToArray()) : BenchCommand.Run(rest.ToArray(), CreateConsole(), Console.Error);
#endif
        }
        catch (BenchUsageException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (Exception e)
        {
            // A CudaException's message is the driver's sentence; Describe adds the CUDA_ERROR_* name the runner greps for.
            Console.Error.WriteLine($"error: unexpected {Suite.CudaFaults.Describe(e)}");
            if (Environment.GetEnvironmentVariable("ILGPUMOE_DEBUG") is "1" or "true")
                Console.Error.WriteLine(e);
            return 1;
        }
    }

    /// <summary>`predict [--context N]`: the decode model's predicted step for the real shapes (no device needed).</summary>
    private static int Predict(string[] args)
    {
        int context = 512;
        if (args.Length != 0 && !(args.Length == 2 && args[0] == "--context" && int.TryParse(args[1], System.Globalization.CultureInfo.InvariantCulture, out context) && context >= 1))
        {
            Console.Error.WriteLine("error: usage: ilgpumoe-bench predict [--context N] (N >= 1 cached positions)");
            return 2;
        }

        Console.Out.Write(Model.DecodeModel.Report(new Model.DecodeMachine(), context));
        return 0;
    }

    /// <summary>`plot bench.json roofline.png`: redraws the roofline from a saved report (e.g. one filed from the GPU machine).</summary>
    private static int Plot(string[] args)
    {
        if (args.Length != 2 || !File.Exists(args[0]))
        {
            Console.Error.WriteLine("error: usage: ilgpumoe-bench plot <bench.json> <roofline.png> (the json must exist)");
            return 2;
        }

        Report.RooflinePlot.Save(Report.Reports.FromJson(File.ReadAllText(args[0])), args[1]);
        return 0;
    }

    /// <summary>Stdout console; when redirected (CI, the GPU runner's log) it is 200 columns wide instead of 80.</summary>
    public static IAnsiConsole CreateConsole()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out) });
        if (Console.IsOutputRedirected)
            console.Profile.Width = 200;
        return console;
    }
}
