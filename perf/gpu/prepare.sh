#!/usr/bin/env bash
# GPU runner, step 1 (on a machine with the .NET SDK, from a checkout): publish ilgpumoe-gpu (perf/ILGpuMoE.GpuBundle:
# the bench and the whole ilgpumoe CLI) as one self-contained linux-x64 file into perf/gpu/publish/ (git-ignored), next to the device
# script and the PyTorch baseline. That one folder is all the GPU machine needs: it has no .NET, nothing is installed.
# Not trimmed: trimming breaks ILGPU at run time. Compressed single file: the folder stays small enough to copy anywhere
# (checked against 64 MiB, what the project's own GPU runs could carry).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out=perf/gpu/publish
rm -rf "$out"
mkdir -p "$out"
commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
dotnet publish perf/ILGpuMoE.GpuBundle/ILGpuMoE.GpuBundle.csproj -c Release -r linux-x64 --self-contained true \
  -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true -p:IncludeNativeLibrariesForSelfExtract=true \
  -p:PublishTrimmed=false -p:InvariantGlobalization=true -p:GpuPublish=true -p:DebugType=none -p:GenerateDocumentationFile=false \
  -o "$out/bin" -nologo -v:q
# Only the executable travels; pdbs and stray native files the bundle already holds stay behind.
find "$out/bin" -mindepth 1 ! -name ilgpumoe-gpu -exec rm -rf {} +
cp perf/gpu/run-device.sh perf/gpu/torch_baseline.py perf/gpu/fixtures.sh perf/gpu/fixture_check.py "$out/"
# The C sample of the PTX ABI, for run-device.sh's ptx-launch step (it opens libcuda itself: no CUDA needed here).
cc -std=c11 -O2 -Wall -Wextra -Werror -o "$out/ptx_launch" tools/ptx-launch/ptx_launch.c -ldl \
  || echo "prepare: no C compiler or tools/ptx-launch does not compile: the ptx-launch step will be skipped" >&2
# The fixture step's data: the F32 fixtures (Mixtral's with llama.cpp's logits, one per other family) and the README's
# demo model, 6 MB together.
mkdir -p "$out/data"
cp -r tests/ILGpuMoE.Tests/TestData/mixtral-tiny-f32 tests/ILGpuMoE.Tests/TestData/qwen3-moe-tiny-f32 \
  tests/ILGpuMoE.Tests/TestData/qwen2-moe-tiny-f32 tests/ILGpuMoE.Tests/TestData/olmoe-tiny-f32 models/mixtral-demo "$out/data/"
echo "$commit" > "$out/COMMIT"
size=$(du -sm "$out" | cut -f1)
echo "published $out/bin/ilgpumoe-gpu ($(du -h "$out/bin/ilgpumoe-gpu" | cut -f1)), folder ${size} MiB, commit $commit"
if [ "$size" -ge 64 ]; then echo "error: $out is ${size} MiB, over the 64 MiB the folder is meant to stay under" >&2; exit 1; fi
cat <<MSG

On the GPU machine (Linux x64, NVIDIA driver; no .NET needed):
  1. copy the folder $out there (scp, rsync, a shared disk: one folder, ${size} MiB);
  2. run, from anywhere:   bash publish/run-device.sh --out results [--budget-s 470]
     (every step has its own time limit inside the budget; SUMMARY.txt is written as the steps end);
  3. copy the results folder back here and file it:   bash perf/gpu/collect.sh results
Check the runner first on this machine, on the CPU accelerator:   bash perf/gpu/run-device.sh --dry-run --out /tmp/dry --budget-s 120
MSG
