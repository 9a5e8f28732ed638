namespace ILGpuMoE.Tests.Common;

/// <summary>The repository checkout the tests run from (tests that read its files: results, scripts, sources).</summary>
public static class Repo
{
    /// <summary>The folder holding ILGpuMoE.sln above the test binaries.</summary>
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
