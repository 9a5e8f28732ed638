using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using ILGpuMoE.Cli;
using ILGpuMoE.Tests.Cli;
using static ILGpuMoE.Tests.Server.ServerClient;

namespace ILGpuMoE.Tests.Server;

/// <summary>`ilgpumoe serve` in-process: every bad option is one line and exit 2; a real run prints its startup line,
/// serves, and a signal (the CliIo token) ends its running streams and the command (exit 130, "stopped").</summary>
[NonParallelizable]
public class ServeCommandTests
{
    private static string Demo => Runtime.RuntimeCliTests.DemoDir;

    [TestCase("--port", "70000", "--port")]
    [TestCase("--port", "-1", "--port")]
    [TestCase("--host", "not-an-address", "--host")]
    [TestCase("--max-batch", "0", "--max-batch")]
    [TestCase("--max-context", "1", "--max-context")]
    [TestCase("--kv-blocks", "0", "--kv-blocks")]
    [TestCase("--quant", "int3", "--quant")]
    [TestCase("--kernels", "fastest", "--kernels")]
    [TestCase("--max-batch", "many", "--max-batch")]
    public void ABadOptionIsOneLineAndExit2(string option, string value, string named)
    {
        var line = CliRun.Of("serve", "--model", Demo, "--device", "cpu", option, value).AssertBadInput();
        Assert.That(line, Does.Contain(named));
    }

    [Test]
    public void TheEngineFollowsMaxBatch()
    {
        using var model = ILGpuMoE.Runtime.MoeModel.Load(Common.TestDevice.Accelerator, Demo,
            new ILGpuMoE.Runtime.ModelLoadOptions { MaxSeq = 64, Kernels = ILGpuMoE.Runtime.KernelPolicy.Cpu });
        var create = ILGpuMoE.Cli.Commands.ServeCommand.CreateEngine;
        var batch = create(model, new ILGpuMoE.Cli.Commands.ServeOptions(MaxBatch: 4, KvBlocks: 9));
        try
        {
            Assert.That(batch, Is.TypeOf<ILGpuMoE.Serving.BatchEngine>());
            Assert.That(((ILGpuMoE.Serving.BatchEngine)batch).KvPool, Is.EqualTo((9, 16)));
        }
        finally
        {
            batch.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        var serial = create(model, new ILGpuMoE.Cli.Commands.ServeOptions(MaxBatch: 1));
        Assert.That(serial, Is.TypeOf<ILGpuMoE.Serving.SerialEngine>(), "--max-batch 1: the single-sequence path");
        serial.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Assert.That(() => create(model, new ILGpuMoE.Cli.Commands.ServeOptions(MaxBatch: 1, KvBlocks: 8)), Throws.TypeOf<CliUsageException>().With.Message.Contains("--kv-blocks"));
        Assert.That(() => create(model, new ILGpuMoE.Cli.Commands.ServeOptions(MaxBatch: 65)), Throws.TypeOf<CliUsageException>().With.Message.Contains("--max-batch"),
            "more sequences than a step's 64 tokens");
    }

    [Test]
    public void AMissingModelFolderIsOneLineAndExit2() =>
        Assert.That(CliRun.Of("serve", "--model", Path.Combine(Path.GetTempPath(), "no-such-model-here"), "--device", "cpu").AssertBadInput(), Does.Contain("--model"));

    [Test]
    public void APortInUseIsOneLineAndExit2()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int port = ((IPEndPoint)taken.LocalEndpoint).Port;
        var line = CliRun.Of("serve", "--model", Demo, "--device", "cpu", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture)).AssertBadInput();
        Assert.That(line, Does.Contain("--port"));
    }

    [Test]
    public async Task ServeStartsAnnouncesServesAndStopsOnASignal()
    {
        var output = new StringWriter();
        var inner = new StringWriter();
        var error = TextWriter.Synchronized(inner);
        using var signal = new CancellationTokenSource();
        var io = new CliIo(output, error, signal.Token);
        var run = Task.Run(() => Program.Run(["serve", "--model", Demo, "--device", "cpu", "--port", "0", "--max-context", "512"], io));
        string Err()
        {
            lock (error)
                return inner.ToString();
        }

        var clock = System.Diagnostics.Stopwatch.StartNew();
        Match started;
        while (!(started = Regex.Match(Err(), @"serving mixtral-demo at (http://127\.0\.0\.1:\d+) \(model ""mixtral-demo""\) on (.*); memory plan (.*); context 512 tokens; engine (.*) \(Ctrl\+C stops\)")).Success)
        {
            Assert.That(run.IsCompleted, Is.False, $"serve ended early: {Err()}");
            Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(30)), $"no startup line: {Err()}");
            await Task.Delay(20);
        }

        Assert.That(started.Groups[2].Value, Does.Contain("CPU backend"), "the device");
        Assert.That(started.Groups[3].Value, Does.Contain("GiB").And.Contain("KV cache"), "the memory plan");
        var url = new Uri(started.Groups[1].Value);
        var models = await Get(url, "/v1/models");
        Assert.That(models.Body.GetProperty("data")[0].GetProperty("max_model_len").GetInt32(), Is.EqualTo(512), "--max-context is the context");
        var reply = await Post(url, "/v1/completions", """{"model": "mixtral-demo", "prompt": "hello", "max_tokens": 4, "temperature": 0}""");
        Assert.That(reply.Status, Is.EqualTo(HttpStatusCode.OK), reply.Body.ToString());

        // A stream running when the signal comes ends with an error event and [DONE]; the command then ends.
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(url, "/v1/completions"))
        {
            Content = Json("""{"model": "mixtral-demo", "prompt": "hello", "max_tokens": 500, "temperature": 0, "stream": true}"""),
        };
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        Assert.That(await reader.ReadLineAsync(), Does.StartWith("data: "));
        signal.Cancel();
        string rest = await reader.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(20));
        int code = await run.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(rest, Does.EndWith("data: [DONE]\n\n"));
        Assert.That(code, Is.EqualTo(CliErrors.Cancelled), Err());
        Assert.That(Err(), Does.Contain("stopping: cancelling running requests").And.Contain("stopped"));
        Assert.That(output.ToString(), Is.Empty, "serve writes nothing to stdout");
        Assert.That(async () => await Http.GetAsync(new Uri(url, "/health")), Throws.InstanceOf<HttpRequestException>(), "the port is closed");
    }
}
