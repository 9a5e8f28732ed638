#!/usr/bin/env bash
# Packs the repository (dotnet pack ILGpuMoE.sln: the packable projects only), then, from that folder of packages:
# builds and runs the library sample (tools/LibrarySample/Program.cs) on a model folder, and installs the CLI as a .NET
# tool and runs it. .ci/run calls it after the tests. Usage: tools/LibrarySample/run.sh [MODEL_DIR] [DEVICE]
# (defaults: models/mixtral-demo, cpu). Everything goes under artifacts/ (git-ignored).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
model="${1:-$root/models/mixtral-demo}"
device="${2:-cpu}"
pkg="$root/artifacts/packages"
# A packages folder of its own: a re-pack of the same version must not come from the cache of an earlier one.
export NUGET_PACKAGES="$root/artifacts/sample-nuget"
rm -rf "$pkg" "$NUGET_PACKAGES" "$root/artifacts/tool"
mkdir -p "$pkg"
version="$(dotnet msbuild src/ILGpuMoE/ILGpuMoE.csproj -getProperty:Version)"
echo "library-sample: packing ILGpuMoE $version into $pkg"
dotnet pack ILGpuMoE.sln -c Release -o "$pkg" --nologo -v quiet
echo "library-sample: the sample against the packages"
dotnet run --project tools/LibrarySample -c Release -p:RestoreAdditionalProjectSources="$pkg" -- "$model" "$device"
echo "library-sample: the CLI as a .NET tool"
dotnet tool install --tool-path "$root/artifacts/tool" --add-source "$pkg" ILGpuMoE.Cli --version "$version" >/dev/null
"$root/artifacts/tool/ilgpumoe" --help >/dev/null
"$root/artifacts/tool/ilgpumoe" inspect "$model" >/dev/null
echo "library-sample: ok (tool at artifacts/tool/ilgpumoe)"
