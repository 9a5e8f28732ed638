#!/usr/bin/env bash
# GPU runner, step 2, on the GPU machine (any Linux x64 machine with an NVIDIA driver; no .NET needed):
#   bash run-device.sh --out DIR [--budget-s SECONDS] [--dry-run]
# from the folder perf/gpu/prepare.sh made (copy that one folder to the machine). Everything lands under DIR:
# SUMMARY.txt (one verdict line per step, written as each step ends), each step's log and bench folder
# (bench.json/bench.md are rewritten after every case, so a step that dies keeps what it measured).
#
# Steps, in order of value, each with its own time limit inside the budget (default 470 s); a step that does not fit
# in what is left is SKIPPED, and the bench itself is given a --budget that ends it before its step's limit:
#   1. devices        what the machine and ILGPU see (nvidia-smi, libcuda, `ilgpumoe-gpu devices` and its CUDA: line)
#   2. smoke          every kernel and version on CUDA against the CPU oracle (--check-only at moderate shapes)
#   2b. fixtures      the whole runtime on CUDA: the F32 fixture vs llama.cpp's logits (one prefill, and one token per
#                     step through the decode plan, plainly and as a CUDA graph), each --quant scheme vs the CPU
#                     accelerator, the README's generate command (fixtures.sh)
#   2c. ptx-launch    the exported PTX launched from C through the manifest's ABI (tools/ptx-launch)
#   3. mixtral-8x7b   the kernel benches at Mixtral-8x7B shapes, the decode cases first (--decode-first: T = 1 of
#                     every kernel marked [KernelInfo(Decode = ...)], right after the copy ceiling), then the
#                     ceilings (the tensor-core peak-mma case first, perf/notes/tensor-cores.md), then the sweep
#   4. e2e-mixtral    end to end on a random 1-layer Mixtral-shaped model (bf16, int8, int4, fp8)
#   5. torch          the PyTorch baseline on the same shapes (python3 with torch, if the machine has it)
#   6. qwen, deepseek the other presets' MoE shapes with the time left
# --dry-run runs the same steps in the same order on ILGPU's CPU accelerator with the tiny preset (a check of the
# runner on any machine: `bash perf/gpu/run-device.sh --dry-run --out /tmp/dry --budget-s 120` from a built checkout).
# Each step runs under `timeout -k`; a failed step is explained from its log (the CUDA_ERROR_* names ILGPU's
# CudaException carries, which the bench prints; "no CUDA device"; a refused PTX ISA; a missing native library) and
# the next step still runs. The summary is finished by an EXIT trap even when this script is killed.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-}"
budget=470
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a folder}"; shift 2;;
    --budget-s) budget="${2:?--budget-s needs seconds}"; shift 2;;
    --dry-run) dry=1; shift;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "run-device.sh: unknown argument '$1' (--out DIR [--budget-s SECONDS] [--dry-run])" >&2; exit 2;;
  esac
done
if [ -z "$out" ]; then echo "run-device.sh: --out DIR is required (or set OUT)" >&2; exit 2; fi
case "$budget" in ''|*[!0-9]*) echo "run-device.sh: --budget-s '$budget' is not a whole number of seconds" >&2; exit 2;; esac

# The bench and the CLI in one file (ilgpumoe-gpu): the published single file next to this script, else (a dry run in
# a source checkout) the Release build of perf/ILGpuMoE.GpuBundle.
bin="${ILGPUMOE_BENCH_BIN:-$here/bin/ilgpumoe-gpu}"
if [ ! -x "$bin" ] && [ -x "$here/../ILGpuMoE.GpuBundle/bin/Release/net10.0/ilgpumoe-gpu" ]; then
  bin="$here/../ILGpuMoE.GpuBundle/bin/Release/net10.0/ilgpumoe-gpu"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export ILGPUMOE_COMMIT="${ILGPUMOE_COMMIT:-$(cat "$here/COMMIT" 2>/dev/null || git -C "$here" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
export DOTNET_BUNDLE_EXTRACT_BASE_DIR="${TMPDIR:-/tmp}/ilgpumoe-bundle"
# Random models and their quantized copies for the end-to-end step: made once, reused by later runs (several GB at
# Mixtral shapes: outside $out, so they do not travel back with the results).
cache="${ILGPUMOE_BENCH_CACHE:-${TMPDIR:-/tmp}/ilgpumoe-bench-cache}"
start=$(date +%s)
summary="$out/SUMMARY.txt"
current="(starting)"
: > "$summary"
say() { echo "== $*" | tee -a "$summary"; }
left() { echo $(( budget - ($(date +%s) - start) )); }
finish() {
  local rc=$?
  say "runner ended after $(( $(date +%s) - start ))s of a ${budget}s budget (last step: $current, rc $rc)"
}
trap finish EXIT
# Steps run in the background and are waited for, so a signal reaches this trap at once (bash defers traps while a
# foreground child runs, and `timeout` puts its command in a process group of its own): the step's `timeout` gets
# SIGTERM and passes it on, the bench writes its report with the case in flight marked SIGTERM, then the summary ends.
child=""
on_signal() {
  say "runner received a signal during $current: stopping"
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; fi
  exit 143
}
trap on_signal TERM INT HUP

if [ $dry -eq 1 ]; then
  device=cpu-emulator
  say "DRY RUN on ILGPU's CPU accelerator (tiny preset): the steps and their order, not GPU figures"
else
  device=cuda
fi
say "commit $ILGPUMOE_COMMIT, $(date -u +%FT%TZ), host $(hostname), budget ${budget}s, bench $bin"

# Explains a failed step from its log: the usual ways a new driver meets ILGPU 1.5.3.
explain() {
  local log="$1"
  grep -q -E 'CUDA_ERROR_[A-Z_]+' "$log" && say "  CUDA errors: $(grep -o -E 'CUDA_ERROR_[A-Z_]+' "$log" | sort | uniq -c | sort -rn | head -5 | awk '{printf "%s x%s ", $2, $1}')"
  grep -q 'CudaException' "$log" && say "  $(grep -m1 'CudaException' "$log" | cut -c1-300)"
  grep -q -i -E 'UNSUPPORTED_PTX_VERSION|INVALID_PTX|PTX JIT|ptx.*version' "$log" && say "  the driver refused ILGPU's PTX (ISA version or JIT): see $log"
  grep -q -i -E 'NotSupportedException.*(architecture|Cuda|PTX)' "$log" && say "  ILGPU does not support this architecture/driver combination: $(grep -m1 -i NotSupportedException "$log" | cut -c1-300)"
  grep -q -i 'DllNotFoundException' "$log" && say "  a native library is missing: $(grep -m1 -i DllNotFoundException "$log" | cut -c1-300)"
  grep -q -i 'no CUDA device' "$log" && say "  ILGPU sees no CUDA device: $(grep -m1 -i 'no CUDA device' "$log" | cut -c1-300)"
  # The driver's own sentences (CudaException's message is cuGetErrorString's text when the bench did not name it).
  grep -q -i -E 'illegal memory access|unspecified launch failure|too many resources requested|misaligned address|unsupported toolchain|out of memory' "$log" \
    && say "  driver: $(grep -m1 -i -E 'illegal memory access|unspecified launch failure|too many resources requested|misaligned address|unsupported toolchain|out of memory' "$log" | cut -c1-300)"
  grep -q '^error: ' "$log" && ! grep -q -i 'no CUDA device' "$log" && say "  $(grep -m1 '^error: ' "$log" | cut -c1-300)"
  grep -E '^(WRONG|ERROR|FAULT|TIMEOUT|STOP) ' "$log" | head -20 | sed 's/^/  /' | tee -a "$summary" >/dev/null
  tail -3 "$log" | sed 's/^/  | /'
}

# step NAME LIMIT CMD...: runs CMD under `timeout -k` with LIMIT clipped to the budget left (20 s kept for the
# summary); "{budget}" in CMD becomes the seconds the bench may start new cases in (the limit minus 20 s for the last
# case and the report), so it normally stops by itself with everything written. A case still running at the limit
# (a hang shorter than --case-timeout-s) gets SIGTERM from `timeout`: the bench then writes its report naming it.
case_timeout=60
step() {
  local name="$1" limit="$2"; shift 2
  current="$name"
  local avail=$(( $(left) - 20 ))
  if [ "$avail" -lt 30 ]; then say "$name: SKIPPED (out of budget: ${avail}s left)"; return 99; fi
  [ "$limit" -gt "$avail" ] && limit=$avail
  local inner=$(( limit - 20 )); [ "$inner" -lt 10 ] && inner=10
  local args=() a
  for a in "$@"; do args+=("${a//\{budget\}/$inner}"); done
  local log="$out/$name.log" t0; t0=$(date +%s)
  ILGPUMOE_DEBUG=1 timeout -k 10 "$limit" "${args[@]}" > "$log" 2>&1 &
  child=$!
  wait "$child"; local rc=$?
  child=""
  local dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) say "$name: ok (${dt}s)";;
    124|137) say "$name: TIMED OUT after ${limit}s (killed; its bench.json keeps every case finished before)"; explain "$log";;
    1) say "$name: FAILED, a case is wrong or faulted, or the run broke (${dt}s)"; explain "$log";;
    3) say "$name: STOPPED, a case ran past --case-timeout-s $case_timeout (${dt}s; the report names it)"; explain "$log";;
    *) say "$name: FAILED rc=$rc (${dt}s)"; explain "$log";;
  esac
  tally "$out/$name/bench.json"
  return $rc
}

# One line per bench report: the state it was left in and its cases by status (bench.json is indented: one
# "status" per line; the report-level "state" is its own line).
tally() {
  local json="$1"
  [ -f "$json" ] || return 0
  local counts
  counts=$(grep -o '"status": "[a-z]*"' "$json" | cut -d'"' -f4 | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}')
  local rows; rows=$(grep -c '"prefillTokensPerSecond"' "$json")
  say "  report: state $(grep -m1 -o '"state": "[a-z]*"' "$json" | cut -d'"' -f4), cases: ${counts%, }${counts:+; }end-to-end rows: $rows"
}

# 1. What the machine and ILGPU see.
current=devices
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 && head -20 "$out/nvidia-smi.txt" || say "nvidia-smi failed: $(head -3 "$out/nvidia-smi.txt")"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$out/gpu.csv" 2>&1
  cat "$out/gpu.csv"
else
  say "nvidia-smi: not on this machine"
fi
if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so'; then
  say "libcuda: $(ldconfig -p | grep 'libcuda\.so' | head -2 | tr -s ' ' | tr '\n' ';')"
else
  say "libcuda: not in the ldconfig cache (ILGPUMOE_LIBCUDA may name the file)"
fi
if [ ! -x "$bin" ]; then say "FATAL: $bin missing or not executable (run perf/gpu/prepare.sh, or build Release for a dry run)"; exit 1; fi
timeout -k 5 60 "$bin" devices > "$out/devices.txt" 2>&1; rc=$?
sed 's/^/  /' "$out/devices.txt" | tee -a "$summary"
[ $rc -ne 0 ] && say "ilgpumoe devices failed (rc $rc): the single-file app itself does not start here"
grep -q '^CUDA:' "$out/devices.txt" && say "driver probe: $(grep -m1 '^CUDA:' "$out/devices.txt" | cut -c1-300)"
if [ $dry -eq 0 ] && ! grep -q -i 'cuda' "$out/devices.txt"; then
  say "ILGPU lists no CUDA device: libcuda not found or not loadable, or the driver refused (see above)"
fi

if [ $dry -eq 1 ]; then
  case_timeout=30
  export FIXTURE_QUANTS=int8 FIXTURE_DECODE_QUANT=int8 FIXTURE_GEN_TOKENS=4
  smoke=(--preset tiny --tokens 1)
  kernels=(--preset tiny --tokens 1)
  e2e=(--preset tiny --no-peer)
  qwen=(--preset tiny --tokens 1 --family gating)
  deepseek=(--preset tiny --tokens 1 --family moe)
  serve=(--preset tiny --concurrency 1,4 --requests 4 --prompt-tokens 4 --max-tokens 4)
else
  smoke=(--preset smoke)
  kernels=(--preset mixtral-8x7b)
  e2e=(--preset mixtral-8x7b)
  qwen=(--preset qwen-moe-a2.7b --tokens 1,64,512 --family dense,gating,moe,quant)
  deepseek=(--preset deepseek-v3-moe --tokens 1,64,512 --family gating,moe)
  serve=(--preset mixtral-8x7b --concurrency 1,4,16,32 --requests 64)
fi
# --decode-first: every bench step runs the T = 1 cases of decode-marked kernels before the rest (only the order
# changes, not the steps' limits), so a step cut short by its limit still has the decode figures.
common=(--device "$device" --case-timeout-s "$case_timeout" --budget "{budget}" --decode-first)

# 2. Correctness first: every kernel and version on the device against the CPU oracle. Fails loudly.
step smoke 90 "$bin" bench "${smoke[@]}" "${common[@]}" --check-only --out "$out/smoke"
[ $? -ne 0 ] && say "SMOKE TEST FAILED: the timings below include only kernels that passed their own checks"

# 2b. The whole runtime on the device: fixture logits, quant schemes against the CPU accelerator, generate.
# The data prepare.sh copied next to the bench, else (a dry run in a source checkout) the repository's own.
fixture="$here/data/mixtral-tiny-f32" demo="$here/data/mixtral-demo"
[ -d "$fixture" ] || fixture="$here/../../tests/ILGpuMoE.Tests/TestData/mixtral-tiny-f32"
[ -d "$demo" ] || demo="$here/../../models/mixtral-demo"
step fixtures 200 bash "$here/fixtures.sh" "$bin" "$device" "$fixture" "$demo" "$out/fixtures"
grep -E '^(ok|WRONG|ERROR) ' "$out/fixtures.log" 2>/dev/null | sed 's/^/  /' | tee -a "$summary" >/dev/null

# 2c. The PTX ABI from C: export the PTX (manifest.json, abi.tsv) and launch dense-add-v1 with the driver API from the
# C sample prepare.sh compiled (tools/ptx-launch), checked against a CPU loop. The export stays out of $out.
current=ptx-launch
if [ $dry -eq 1 ]; then say "ptx-launch: SKIPPED (dry run)";
elif [ ! -x "$here/ptx_launch" ]; then say "ptx-launch: SKIPPED (no $here/ptx_launch: prepare.sh found no C compiler)";
else step ptx-launch 90 bash -c '"$1" ptx --out "$2" > /dev/null && "$3" "$2"' _ "$bin" "${TMPDIR:-/tmp}/ilgpumoe-ptx-abi" "$here/ptx_launch"; fi
grep -E '^ptx_launch: ' "$out/ptx-launch.log" 2>/dev/null | sed 's/^/  /' | tee -a "$summary" >/dev/null

# 3. Kernel benches at Mixtral shapes (each case is checked at its own shape before it is timed).
step mixtral-8x7b 180 "$bin" bench "${kernels[@]}" "${common[@]}" --no-e2e --out "$out/mixtral-8x7b"

# 4. End to end (the random model and its quantized copies come from the cache when an earlier run made them).
step e2e-mixtral-8x7b 120 "$bin" bench "${e2e[@]}" "${common[@]}" --e2e-only --cache "$cache" --out "$out/e2e-mixtral-8x7b"

# 4b. Continuous batching: the engine under closed-loop load at 1, 4, 16 and 32 concurrent requests on the same random
# Mixtral-shaped model (its one layer from the cache step 4 filled): tok/s, time to first token, inter-token latency.
step serve-mixtral-8x7b 90 "$bin" bench serve "${serve[@]}" --device "$device" --cache "$cache" --out "$out/serve-mixtral-8x7b"
[ -f "$out/serve-mixtral-8x7b/serve.md" ] && sed 's/^/  /' "$out/serve-mixtral-8x7b/serve.md" | tee -a "$summary" >/dev/null

# 5. PyTorch on the same shapes: ours/theirs per kernel.
current=torch
if [ $dry -eq 1 ]; then
  say "torch: SKIPPED (dry run)"
elif ! python3 -c 'import torch' >/dev/null 2>&1; then
  say "torch: SKIPPED (no python3 with torch on this machine)"
elif [ -f "$out/mixtral-8x7b/bench.json" ]; then
  step torch 90 python3 "$here/torch_baseline.py" --bench "$out/mixtral-8x7b/bench.json" --out "$out/torch-mixtral-8x7b.json"
  tail -60 "$out/torch.log" 2>/dev/null
else
  step torch 90 python3 "$here/torch_baseline.py" --preset mixtral-8x7b --out "$out/torch-mixtral-8x7b.json"
fi

# 6. The other presets' MoE shapes, with what is left.
step qwen-moe-a2.7b 75 "$bin" bench "${qwen[@]}" "${common[@]}" --no-e2e --out "$out/qwen-moe-a2.7b"
step deepseek-v3-moe 75 "$bin" bench "${deepseek[@]}" "${common[@]}" --no-e2e --out "$out/deepseek-v3-moe"

current=done
for d in mixtral-8x7b e2e-mixtral-8x7b qwen-moe-a2.7b deepseek-v3-moe; do
  [ -f "$out/$d/bench.md" ] && { echo; head -60 "$out/$d/bench.md"; }
done
echo
cat "$summary"
grep -q '^== smoke: ok' "$summary"
