#!/usr/bin/env bash
# GPU runner, step 2 (on the device machine, from the repository root, one call): what the machine and ILGPU see,
# the CUDA correctness smoke test, the kernel suites, the PyTorch baseline. Everything lands under $OUT.
# Each step has its own time limit and its own verdict line; a failed step is explained and the next one still runs.
# Budget: under 8 minutes in all (the device tool allows 10 per command).
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin/ilgpumoe-bench"
OUT="${OUT:-/tmp/ilgpumoe-gpu-out}"
mkdir -p "$OUT"
export ILGPUMOE_COMMIT="$(cat "$here/COMMIT" 2>/dev/null || echo unknown)"
export DOTNET_BUNDLE_EXTRACT_BASE_DIR="${TMPDIR:-/tmp}/ilgpumoe-bundle"
start=$(date +%s)
summary="$OUT/SUMMARY.txt"
: > "$summary"
say() { echo "== $*" | tee -a "$summary"; }
left() { echo $(( 470 - ($(date +%s) - start) )); }

say "commit $ILGPUMOE_COMMIT, $(date -u +%FT%TZ), host $(hostname)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 && head -20 "$OUT/nvidia-smi.txt" || say "nvidia-smi failed: $(head -3 "$OUT/nvidia-smi.txt")"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$OUT/gpu.csv" 2>&1
cat "$OUT/gpu.csv"

# libcuda: ILGPU's CUDA backend loads the driver library by name; without it ILGPU silently sees no CUDA device.
if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so'; then
  say "libcuda: $(ldconfig -p | grep 'libcuda\.so' | head -2 | tr -s ' ' | tr '\n' ';')"
else
  say "libcuda: NOT in the ldconfig cache (ILGPU will see no CUDA device); looked for libcuda.so*"
  ls -l /usr/lib/x86_64-linux-gnu/libcuda* /usr/lib64/libcuda* 2>/dev/null | head -5 | tee -a "$summary"
fi

if [ ! -x "$bin" ]; then say "FATAL: $bin missing or not executable (run perf/gpu/prepare.sh first)"; exit 1; fi
say "ILGPU devices:"
timeout 60 "$bin" devices > "$OUT/devices.txt" 2>&1; rc=$?
cat "$OUT/devices.txt" | tee -a "$summary"
if [ $rc -ne 0 ]; then say "ilgpumoe devices failed (rc $rc): the single-file app itself does not start here"; fi
grep -q '^.*Cuda' "$OUT/devices.txt" || say "ILGPU lists no CUDA device: libcuda not found/not loadable, or the driver refused the context (see above)"

# Explains a failed step from its log: the usual ways a new driver meets ILGPU 1.5.3.
explain() {
  local log="$1"
  grep -m1 -o -E 'CUDA_ERROR_[A-Z_]+' "$log" >/dev/null && say "  CUDA error: $(grep -m3 -o -E 'CUDA_ERROR_[A-Z_]+' "$log" | sort -u | tr '\n' ' ')"
  grep -q -i -E 'UNSUPPORTED_PTX_VERSION|PTX ISA|ptx.*version' "$log" && say "  the driver refused ILGPU's PTX ISA version (PTX JIT): see $log"
  grep -q -i -E 'NotSupportedException.*(architecture|Cuda|PTX)' "$log" && say "  ILGPU does not support this architecture/driver combination: $(grep -m1 -i NotSupportedException "$log")"
  grep -q -i 'DllNotFoundException' "$log" && say "  a native library is missing: $(grep -m1 -i DllNotFoundException "$log")"
  grep -q -i 'no CUDA device' "$log" && say "  ILGPU sees no CUDA device"
  grep -E '^(WRONG|ERROR) ' "$log" | head -20 | sed 's/^/  /' | tee -a "$summary" >/dev/null
  tail -3 "$log" | sed 's/^/  | /'
}

step() { # name, seconds, args...
  local name="$1" limit="$2"; shift 2
  local budget; budget=$(left)
  if [ "$budget" -lt 20 ]; then say "$name: SKIPPED (out of time)"; return 99; fi
  [ "$limit" -gt "$budget" ] && limit=$budget
  local log="$OUT/$name.log" t0=$(date +%s)
  ILGPUMOE_DEBUG=1 timeout "$limit" "$@" > "$log" 2>&1; local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) say "$name: ok (${dt}s)";;
    124|137) say "$name: TIMED OUT after ${limit}s (partial log in $log)"; explain "$log";;
    1) say "$name: FAILED, a kernel is wrong or the run broke (${dt}s)"; explain "$log";;
    *) say "$name: FAILED rc=$rc (${dt}s)"; explain "$log";;
  esac
  return $rc
}

# 1. Correctness smoke: every kernel and version against the reference at moderate shapes, on CUDA. Fails loudly.
step smoke 90 "$bin" bench --preset smoke --device cuda --check-only --out "$OUT/smoke"
smoke=$?
if [ $smoke -ne 0 ]; then say "SMOKE TEST FAILED: the timings below include only kernels that passed their own checks"; fi

# 2. Kernel suites (each case is checked at its own shape before it is timed; a wrong kernel is reported, not timed).
step mixtral-8x7b 180 "$bin" bench --preset mixtral-8x7b --device cuda --no-e2e --budget 150 --out "$OUT/mixtral-8x7b"
# 3. PyTorch baseline on the same shapes, our/their ratio per kernel.
if [ -f "$OUT/mixtral-8x7b/bench.json" ]; then
  step torch 90 python3 "$here/torch_baseline.py" --bench "$OUT/mixtral-8x7b/bench.json" --out "$OUT/torch-mixtral-8x7b.json"
  cat "$OUT/torch.log" 2>/dev/null | tail -60
else
  step torch 90 python3 "$here/torch_baseline.py" --preset mixtral-8x7b --out "$OUT/torch-mixtral-8x7b.json"
fi

# End to end on a random 1-layer Mixtral-shaped BF16 model (prefill 128, decode 32, TTFT), when the runtime is built in.
step e2e-mixtral-8x7b 90 "$bin" bench --preset mixtral-8x7b --device cuda --e2e-only --out "$OUT/e2e-mixtral-8x7b"

# 4. The other presets' MoE shapes, with what time is left.
step qwen-moe-a2.7b 60 "$bin" bench --preset qwen-moe-a2.7b --device cuda --tokens 1,64,512 --family dense,gating,moe,quant --no-e2e --budget 45 --out "$OUT/qwen-moe-a2.7b"
step deepseek-v3-moe 60 "$bin" bench --preset deepseek-v3-moe --device cuda --tokens 1,64,512 --family gating,moe --no-e2e --budget 45 --out "$OUT/deepseek-v3-moe"


for d in mixtral-8x7b qwen-moe-a2.7b deepseek-v3-moe; do
  [ -f "$OUT/$d/bench.md" ] && { echo; head -60 "$OUT/$d/bench.md"; }
done
say "done in $(( $(date +%s) - start ))s"
cat "$summary"
exit 0
