#!/usr/bin/env bash
# ptxas gate: compile every exported kernel for sm_90 and sm_80 and fail on any spill, on a stack frame of a kernel
# not listed in perf/notes/local-memory.md ("- <name>: reason"; spills and local memory in a hot kernel are bugs),
# on registers x block size > 65536 and on static + dynamic shared memory > 48 KB (ILGPU never opts in to more),
# with block size and dynamic shared memory as declared on [KernelInfo] (launch.tsv of the export). Tensor-core kernels
# ([KernelInfo] TensorCore; exported after the asm-operand pass) may have no stack frame at all, allow-listed or not,
# and may use shared memory up to the opt-in maximum (227 KB on sm_90, 163 KB on sm_80: their loader,
# KernelLaunches.LoadTensorCore, opts in); the SASS report (--sass) also requires their HMMA / IMMA.
#
#   tools/ptxas-check.sh [PTX_DIR]
#
# PTX_DIR defaults to a fresh export with the PTX lint and the SASS decode check (`ilgpumoe ptx --out artifacts/ptx
# --lint --sass --check-decode`: uniform branches, vector accesses, .local; every decode weights kernel loads at least
# half of its hot loop's global bytes 128 bits wide, perf/notes/sass-report.md; either failure fails this script too;
# the SASS report lands in artifacts/ptx/sass.json). ptxas and cuobjdump come from Debian's non-free
# `nvidia-cuda-toolkit` package, fetched alone with `apt-get download` into .cache/cuda (no system install,
# none of its dependencies: ptxas needs only libc). The apt source is the machine's own Debian source with the
# component switched to non-free, so nothing here names a host.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/cuda"
ptx_dir="${1:-$root/artifacts/ptx}"

fetch_ptxas() {
    local ptxas
    ptxas="$(find "$cache/root" -path '*bin/ptxas' -type f 2>/dev/null | head -n1 || true)"
    if [ -n "$ptxas" ]; then echo "$ptxas"; return; fi
    mkdir -p "$cache/lists/partial" "$cache/archives/partial" "$cache/root"
    local src=/etc/apt/sources.list.d/debian.sources
    if [ ! -f "$src" ]; then echo "ptxas-check: no $src to derive a non-free source from" >&2; exit 3; fi
    # First stanza of the machine's deb822 source (the main archive), components switched to non-free.
    awk 'BEGIN{RS=""; ORS="\n\n"} NR==1' "$src" | sed -E 's/^Components:.*/Components: main contrib non-free/' > "$cache/nonfree.sources"
    local opts=(-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$cache/srcparts" -o Dir::State::Lists="$cache/lists"
                -o Dir::Cache::Archives="$cache/archives" -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0)
    mkdir -p "$cache/srcparts" && cp "$cache/nonfree.sources" "$cache/srcparts/nonfree.sources"
    echo "ptxas-check: fetching nvidia-cuda-toolkit (about 84 MB, once) into $cache" >&2
    apt-get "${opts[@]}" update >/dev/null
    (cd "$cache/archives" && apt-get "${opts[@]}" download nvidia-cuda-toolkit >/dev/null)
    dpkg -x "$(ls "$cache"/archives/nvidia-cuda-toolkit_*.deb | head -n1)" "$cache/root"
    find "$cache/root" -path '*bin/ptxas' -type f | head -n1
}

# The local-memory allow-list: kernel (file name without .ptx) -> reason.
declare -A allow_stack=()
while IFS= read -r line; do
    if [[ "$line" =~ ^-[[:space:]]+([A-Za-z0-9_.-]+):[[:space:]]*(.+)$ ]]; then allow_stack[${BASH_REMATCH[1]}]="${BASH_REMATCH[2]}"; fi
done < "$root/perf/notes/local-memory.md"

ptxas="$(fetch_ptxas)" || { echo "ptxas-check: could not fetch nvidia-cuda-toolkit" >&2; exit 3; }
if [ -z "$ptxas" ] || [ ! -x "$ptxas" ]; then echo "ptxas-check: ptxas not found in the package" >&2; exit 3; fi

if [ $# -eq 0 ]; then
    rm -rf "$ptx_dir"
    mkdir -p "$(dirname "$ptx_dir")"  # a fresh clone has no artifacts/ yet
    lint_rc=0
    (cd "$root" && dotnet run --project "$root/src/ILGpuMoE.Cli" -c Release -- ptx --out "$ptx_dir" --lint \
        --sass --check-decode --cuda-bin "$(dirname "$ptxas")") > "$ptx_dir.lint.txt" 2>&1 || lint_rc=$?
    grep -v '^ok ' "$ptx_dir.lint.txt" || true
    if [ "$lint_rc" -ne 0 ]; then echo "ptxas-check: PTX lint or SASS decode check FAILED"; exit 1; fi
fi

# Declared launch shape per kernel: threads per group, most dynamic shared bytes (0 0 when undeclared).
declare -A block=() dyn=() how_declared=() tensor=()
if [ -f "$ptx_dir/launch.tsv" ]; then
    while IFS=$'\t' read -r k b d how tc; do block[$k]=$b; dyn[$k]=$d; how_declared[$k]=$how; tensor[$k]=${tc:--}; done < "$ptx_dir/launch.tsv"
fi

shopt -s nullglob
files=("$ptx_dir"/*.ptx)
if [ ${#files[@]} -eq 0 ]; then echo "ptxas-check: no .ptx files in $ptx_dir" >&2; exit 1; fi

bad=0
stacked=0
undeclared=0
tensor_kernels=0
printf '%-44s %-6s %5s %5s %8s %6s %7s %7s\n' kernel arch regs block smem stack spill_st spill_ld
for f in "${files[@]}"; do
    name="$(basename "$f" .ptx)"
    bs="${block[$name]:-0}"; ds="${dyn[$name]:-0}"
    # "bound": no BlockSize on [KernelInfo]; launch.tsv then carries Devices.MaxGroupSize, which every launcher keeps.
    [ "${how_declared[$name]:-}" = bound ] && undeclared=$((undeclared + 1))
    tc="${tensor[$name]:--}"
    [ "$tc" != - ] && tensor_kernels=$((tensor_kernels + 1))
    if [ "$bs" -eq 0 ]; then echo "$name: no block size in launch.tsv (export from an older build?)"; bad=1; fi
    for arch in sm_90 sm_80; do
        # ptxas 11.8 reads PTX ISA <= 7.8; ILGPU writes .target sm_80 even when asked for sm_90, -arch decides.
        if ! out="$("$ptxas" -arch=$arch -v -o /dev/null "$f" 2>&1)"; then
            echo "$name: ptxas $arch FAILED"; echo "$out" | head -n5; bad=1; continue
        fi
        # Largest figure over the file's entry points (grep finds nothing for a figure ptxas leaves out: 0).
        num() { echo "$out" | grep -Eo "$1" | grep -Eo '[0-9]+' | sort -n | tail -n1 || true; }
        regs=$(num 'Used [0-9]+ registers'); smem=$(num '[0-9]+ bytes smem'); stack=$(num '[0-9]+ bytes stack frame')
        sst=$(num '[0-9]+ bytes spill stores'); sld=$(num '[0-9]+ bytes spill loads')
        printf '%-44s %-6s %5s %5s %8s %6s %7s %7s\n' "$name" "$arch" "${regs:-0}" "$bs" "${smem:-0}" "${stack:-0}" "${sst:-0}" "${sld:-0}"
        if [ "${sst:-0}" -ne 0 ] || [ "${sld:-0}" -ne 0 ]; then echo "  ^ spills: a hot kernel must not spill"; bad=1; fi
        if [ "${stack:-0}" -ne 0 ] && [ "$tc" != - ]; then
            echo "  ^ local-memory stack frame in a $tc kernel: the asm-operand pass missed a slot (PtxAsmOperands) or fragments spill"; bad=1
        elif [ "${stack:-0}" -ne 0 ] && [ -z "${allow_stack[$name]:-}" ]; then
            echo "  ^ local-memory stack frame: not listed in perf/notes/local-memory.md (a hot kernel keeps its state in registers or shared memory)"; bad=1
        elif [ "${stack:-0}" -ne 0 ] && [ "$arch" = sm_90 ]; then
            stacked=$((stacked + 1))
        fi
        # Registers are allocated per warp in units of 8 per thread: round up before the register-file check.
        if [ "$bs" -gt 0 ] && [ $(( (${regs:-0} + 7) / 8 * 8 * bs )) -gt 65536 ]; then
            echo "  ^ ${regs} registers x block $bs exceeds the 65536-register file: the launch would fail"; bad=1
        fi
        if [ "$tc" = - ] && [ $(( ${smem:-0} + ds )) -gt 49152 ]; then
            echo "  ^ shared memory ${smem:-0} B static + $ds B dynamic exceeds 48 KB (ILGPU does not opt in to more)"; bad=1
        fi
        optin=$([ "$arch" = sm_90 ] && echo 232448 || echo 166912)
        if [ "$tc" != - ] && [ $(( ${smem:-0} + ds )) -gt "$optin" ]; then
            echo "  ^ shared memory ${smem:-0} B static + $ds B dynamic exceeds the $arch opt-in maximum of $optin B"; bad=1
        fi
    done
done
if [ $bad -ne 0 ]; then echo "ptxas-check: FAILED"; exit 1; fi
echo "ptxas-check: ${#files[@]} kernels x sm_90, sm_80: no spills, no stack frames outside perf/notes/local-memory.md ($stacked listed), registers x block and shared memory within limits ($undeclared kernels checked at the MaxGroupSize bound, the rest at their declared block size; $tensor_kernels tensor-core kernels with no stack frame)"
