namespace ILGpuMoE.Tests.Common;

/// <summary>The checkout the tests run from (the folder holding ILGpuMoE.sln above the test binaries).</summary>
public static class RepoPaths
{
    public static string Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "ILGpuMoE.sln")))
                return d.FullName;
        }

        throw new InvalidOperationException($"no ILGpuMoE.sln above {AppContext.BaseDirectory}");
    }
}
