#!/usr/bin/env bash
# The test command: restore, build (warnings are errors) and run every NUnit test on ILGPU's CPU accelerator.
set -euo pipefail
cd "$(dirname "$0")"
dotnet tool restore >/dev/null
dotnet test ILGpuMoE.sln -c Release --logger "console;verbosity=normal" "$@"
