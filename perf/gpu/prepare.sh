#!/usr/bin/env bash
# GPU runner, step 1 (on this CPU machine): publish ilgpumoe-bench (which also carries the whole ilgpumoe CLI) as one
# self-contained linux-x64 file into perf/gpu/publish/ (git-ignored), next to the device script and the PyTorch
# baseline, then print the exact `device` call to make. The GPU machine has no .NET; nothing is installed there.
# Not trimmed: trimming breaks ILGPU at run time (FACTS.md). Compressed single file: the device tool carries <= 64 MiB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out=perf/gpu/publish
rm -rf "$out"
mkdir -p "$out"
commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
dotnet publish perf/ILGpuMoE.Perf/ILGpuMoE.Perf.csproj -c Release -r linux-x64 --self-contained true \
  -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true -p:IncludeNativeLibrariesForSelfExtract=true \
  -p:PublishTrimmed=false -p:InvariantGlobalization=true -p:GpuPublish=true -p:DebugType=none -p:GenerateDocumentationFile=false \
  -o "$out/bin" -nologo -v:q
# Only the executable travels; pdbs and stray native files the bundle already holds stay behind.
find "$out/bin" -mindepth 1 ! -name ilgpumoe-bench -exec rm -rf {} +
cp perf/gpu/run-device.sh perf/gpu/torch_baseline.py "$out/"
echo "$commit" > "$out/COMMIT"
size=$(du -sm "$out" | cut -f1)
echo "published $out/bin/ilgpumoe-bench ($(du -h "$out/bin/ilgpumoe-bench" | cut -f1)), folder ${size} MiB (limit 64), commit $commit"
if [ "$size" -ge 64 ]; then echo "error: $out is ${size} MiB, over the device tool's 64 MiB carry limit" >&2; exit 1; fi
cat <<MSG

Device call (one call, under 8 minutes of the 10 allowed; it writes everything under \$OUT):
  run(command="bash perf/gpu/publish/run-device.sh", carry=["perf/gpu/publish"], timeout_s=540)
Then, on this machine, with the folder the call's files were copied to (files_at):
  bash perf/gpu/collect.sh <files_at>
MSG
