#!/usr/bin/env bash
# GPU runner helper (run-device.sh's fixture step): the whole runtime on the device against numbers made elsewhere.
#   fixtures.sh BENCH_BIN DEVICE FIXTURE_DIR DEMO_DIR OUT_DIR
# FIXTURE_DIR: mixtral-tiny-f32, the F32 fixture (HF-layout checkpoint + llama.cpp's logits, see its PROVENANCE.md);
# DEMO_DIR: mixtral-demo, the README's shipped model.
#   1. F32 fixture on DEVICE vs llama.cpp's logits: max|d| <= 1e-4 and every argmax equal (the family criterion).
#   2. Each --quant scheme on DEVICE vs the same scheme on ILGPU's CPU accelerator (the same packed weights, packed on
#      the host, so any difference is the kernels'): max|d| <= 1e-4, argmax equal.
#   3. The decode path: the F32 fixture fed one token per step (`logits --decode-steps`: the fused T = 1 kernels) on
#      DEVICE vs llama.cpp, plainly and replayed from a CUDA graph (--cuda-graph), and int4-g32 one token per step on
#      DEVICE vs the CPU accelerator's prefill: each max|d| <= 1e-4, argmax equal.
#   4. The other families' fixtures next to FIXTURE_DIR (*-tiny-f32): prefill and --decode-steps on DEVICE vs their
#      expected logits (Hugging Face in float64): max|d| <= 1e-4, argmax equal.
#   5. The README's generate command on DEVICE (greedy, 16 tokens): it runs and prints text, tokens/s and launches.
# FIXTURE_QUANTS (the schemes of 2) and FIXTURE_GEN_TOKENS (the tokens of 3) shorten it for the dry run.
# Exit 1 when any comparison is WRONG or any command fails; every line is printed either way.
set -u
bin="$1" device="$2" fx="$3" demo="$4" out="$5"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$out"
check() { python3 "$here/fixture_check.py" "$@"; }
fail=0
tokens="$(check --tokens "$fx/expected.safetensors")" || { echo "ERROR cannot read the fixture's tokens"; exit 1; }
echo "fixture tokens: $tokens"

run_logits() { # DEVICE QUANT OUTFILE [EXTRA OPTIONS...]
  local dev="$1" q="$2" file="$3"; shift 3
  local t0=$(date +%s.%N)
  if ! "$bin" logits --device "$dev" --model "$fx" --tokens "$tokens" --quant "$q" --out "$file" "$@" > "$file.log" 2>&1; then
    echo "ERROR logits --device $dev --quant $q $* failed: $(tail -2 "$file.log" | tr '\n' ' ')"; return 1
  fi
  echo "  logits --device $dev --quant $q $*: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s (process, compile included)"
  grep '^decode steps' "$file.log" | sed 's/^/    /' || true
}

if run_logits "$device" none "$out/f32-$device.safetensors"; then
  check --expected "$fx/expected.safetensors" --actual "$out/f32-$device.safetensors" --atol 1e-4 \
    --label "F32 fixture on $device vs llama.cpp" || fail=1
else fail=1; fi

for q in ${FIXTURE_QUANTS:-int8 int4-g32 int4-g32-asym fp8-block128 fp8-tensor}; do
  run_logits "$device" "$q" "$out/$q-$device.safetensors" || { fail=1; continue; }
  run_logits cpu "$q" "$out/$q-cpu.safetensors" || { fail=1; continue; }
  check --expected "$out/$q-cpu.safetensors" --actual "$out/$q-$device.safetensors" --atol 1e-4 \
    --label "$q on $device vs the CPU accelerator" || fail=1
done

# The decode path (fused T = 1 kernels), plainly and from a CUDA graph, against llama.cpp's logits of the same tokens.
for extra in "--decode-steps" "--decode-steps --cuda-graph"; do
  tag="$(echo "$extra" | tr -d ' -')"
  # shellcheck disable=SC2086
  if run_logits "$device" none "$out/f32-$tag-$device.safetensors" $extra; then
    check --expected "$fx/expected.safetensors" --actual "$out/f32-$tag-$device.safetensors" --atol 1e-4 \
      --label "F32 fixture $extra on $device vs llama.cpp" || fail=1
  else fail=1; fi
done
q4="${FIXTURE_DECODE_QUANT:-int4-g32}"
if run_logits "$device" "$q4" "$out/$q4-decodesteps-$device.safetensors" --decode-steps && { [ -f "$out/$q4-cpu.safetensors" ] || run_logits cpu "$q4" "$out/$q4-cpu.safetensors"; }; then
  check --expected "$out/$q4-cpu.safetensors" --actual "$out/$q4-decodesteps-$device.safetensors" --atol 1e-4 \
    --label "$q4 --decode-steps on $device vs the CPU accelerator" || fail=1
else fail=1; fi

# The other families' fixtures (qwen3-moe, qwen2-moe, olmoe: float64 transcriptions of Hugging Face's modeling code),
# found next to FIXTURE_DIR: one prefill and one --decode-steps run each on DEVICE against their expected logits.
for ffx in "$(dirname "$fx")"/*-tiny-f32; do
  [ "$ffx" = "$fx" ] || [ ! -f "$ffx/expected.safetensors" ] && continue
  name="$(basename "$ffx")"
  ftokens="$(check --tokens "$ffx/expected.safetensors")" || { echo "ERROR cannot read $name's tokens"; fail=1; continue; }
  for extra in "" "--decode-steps"; do
    tag="${name}$(echo "$extra" | tr -d ' -')"
    # shellcheck disable=SC2086
    if "$bin" logits --device "$device" --model "$ffx" --tokens "$ftokens" --out "$out/$tag.safetensors" $extra > "$out/$tag.log" 2>&1; then
      grep '^decode steps' "$out/$tag.log" | sed 's/^/    /' || true
      check --expected "$ffx/expected.safetensors" --actual "$out/$tag.safetensors" --atol 1e-4 \
        --label "$name ${extra:-prefill} on $device vs Hugging Face (float64)" || fail=1
    else
      echo "ERROR logits $name $extra on $device failed: $(tail -2 "$out/$tag.log" | tr '\n' ' ')"; fail=1
    fi
  done
done

echo "generate on $device (the README's main job, greedy; on CUDA the decode step replays from a CUDA graph by default):"
if ! "$bin" generate --device "$device" --model "$demo" --prompt "Once upon a time" -n "${FIXTURE_GEN_TOKENS:-16}" --temperature 0 --routing-stats 2>&1 | tail -25; then
  echo "ERROR generate --device $device failed"; fail=1
fi
echo "generate on $device with --cuda-graph false (the plan launched kernel by kernel; same text expected):"
if ! "$bin" generate --device "$device" --model "$demo" --prompt "Once upon a time" -n "${FIXTURE_GEN_TOKENS:-16}" --temperature 0 --cuda-graph false 2>&1 | tail -5; then
  echo "ERROR generate --device $device --cuda-graph false failed"; fail=1
fi
[ $fail -eq 0 ] && echo "fixtures: all ok" || echo "fixtures: WRONG or ERROR above"
exit $fail
