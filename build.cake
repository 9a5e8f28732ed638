// Build script: `dotnet tool restore` once, then `dotnet cake --target=<Target>`.
//   Clean        remove bin/obj of every project, artifacts/ and perf/gpu/publish/
//   Build        build the solution (Release; warnings are errors)
//   Test         run the NUnit suite on ILGPU's CPU accelerator (--filter="..." to narrow it)
//   Bench        ilgpumoe bench <--args>       (kernel benchmarks; the command lands with the perf work)
//   Ptx          ilgpumoe ptx <--args>         (PTX of every kernel for the sm_90 gate; lands with the PTX work)
//   Pack         NuGet packages of the contracts, the kernels, the runtime and the CLI into artifacts/packages/
//   Publish-Gpu  perf/gpu/prepare.sh: self-contained single-file linux-x64 ilgpumoe-gpu (bench + whole CLI) into
//                perf/gpu/publish/ for a GPU machine (no .NET needed there); prints how to run it. Not trimmed.
// Options: --configuration=Release|Debug, --filter=<dotnet test filter>, --args="<arguments for bench/ptx>".

var target = Argument("target", "Build");
var configuration = Argument("configuration", "Release");
var filter = Argument("filter", "");
var runArgs = Argument("args", "");

var solution = "./ILGpuMoE.sln";
var cli = "./src/ILGpuMoE.Cli/ILGpuMoE.Cli.csproj";
var packages = Directory("./artifacts/packages");
var gpuPublish = Directory("./perf/gpu/publish");

// Runs the CLI through `dotnet run` with the given subcommand and the user's --args.
void RunCli(string command)
{
    var args = new ProcessArgumentBuilder().Append(command);
    if (!string.IsNullOrWhiteSpace(runArgs))
        args.Append(runArgs);
    DotNetRun(cli, args, new DotNetRunSettings { Configuration = configuration });
}

Task("Clean")
    .Does(() =>
{
    CleanDirectories("./kernels/**/bin");
    CleanDirectories("./kernels/**/obj");
    CleanDirectories("./src/**/bin");
    CleanDirectories("./src/**/obj");
    CleanDirectories("./tests/**/bin");
    CleanDirectories("./tests/**/obj");
    CleanDirectories("./perf/**/bin");
    CleanDirectories("./perf/**/obj");
    CleanDirectories("./tools/**/bin");
    CleanDirectories("./tools/**/obj");
    if (DirectoryExists("./artifacts"))
        DeleteDirectory("./artifacts", new DeleteDirectorySettings { Recursive = true, Force = true });
    if (DirectoryExists(gpuPublish))
        DeleteDirectory(gpuPublish, new DeleteDirectorySettings { Recursive = true, Force = true });
});

Task("Build")
    .Does(() =>
{
    DotNetBuild(solution, new DotNetBuildSettings { Configuration = configuration, NoLogo = true });
});

Task("Test")
    .IsDependentOn("Build")
    .Does(() =>
{
    DotNetTest(solution, new DotNetTestSettings
    {
        Configuration = configuration,
        NoBuild = true,
        NoLogo = true,
        Filter = string.IsNullOrWhiteSpace(filter) ? null : filter,
    });
});

Task("Bench")
    .Does(() => RunCli("bench"));

Task("Ptx")
    .Does(() => RunCli("ptx"));

Task("Pack")
    .IsDependentOn("Build")
    .Does(() =>
{
    // Contracts first: the kernels package depends on it (RouterKind).
    foreach (var project in new[] { "./kernels/ILGpuMoE.Contracts/ILGpuMoE.Contracts.csproj", "./kernels/ILGpuMoE.Kernels/ILGpuMoE.Kernels.csproj", "./src/ILGpuMoE/ILGpuMoE.csproj", cli })
    {
        DotNetPack(project, new DotNetPackSettings
        {
            Configuration = configuration,
            NoBuild = true,
            NoLogo = true,
            OutputDirectory = packages,
        });
    }
});

Task("Publish-Gpu")
    .Does(() =>
{
    // perf/gpu/prepare.sh owns the publish (ilgpumoe-gpu, the bench and the CLI in one file) and prints how to run it on a GPU machine.
    var exit = StartProcess("bash", new ProcessSettings { Arguments = "perf/gpu/prepare.sh" });
    if (exit != 0)
        throw new Exception($"perf/gpu/prepare.sh failed ({exit})");
});

Task("Default").IsDependentOn("Build");

RunTarget(target);
