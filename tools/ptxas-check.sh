#!/usr/bin/env bash
# ptxas gate: compile every exported kernel for sm_90 and fail on any spill or local-memory stack frame.
# A kernel may keep a stack frame only if it is listed in allow_stack below, with the most bytes it may use and why
# (the project rule: spills and local memory in a hot kernel are bugs; an allowed kernel is never a hot one).
#
#   tools/ptxas-check.sh [PTX_DIR]
#
# PTX_DIR defaults to a fresh export (`ilgpumoe ptx --out artifacts/ptx`). ptxas comes from Debian's non-free
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

# kernel (file name without .ptx) -> "MAX_BYTES reason". Growing past MAX_BYTES fails too.
declare -A allow_stack=(
    [moe-gating-v1]="2048 gating v1: simple reference version, per-thread arrays of E scores and group scores (MaxExperts = 256 floats each); the launcher uses v2"
)

ptxas="$(fetch_ptxas)" || { echo "ptxas-check: could not fetch nvidia-cuda-toolkit" >&2; exit 3; }
if [ -z "$ptxas" ] || [ ! -x "$ptxas" ]; then echo "ptxas-check: ptxas not found in the package" >&2; exit 3; fi

if [ $# -eq 0 ]; then
    rm -rf "$ptx_dir"
    dotnet run --project "$root/src/ILGpuMoE.Cli" -c Release -- ptx --out "$ptx_dir" >/dev/null
fi

shopt -s nullglob
files=("$ptx_dir"/*.ptx)
if [ ${#files[@]} -eq 0 ]; then echo "ptxas-check: no .ptx files in $ptx_dir" >&2; exit 1; fi

bad=0
stacked=0
printf '%-44s %5s %8s %6s %7s %7s\n' kernel regs smem stack spill_st spill_ld
for f in "${files[@]}"; do
    name="$(basename "$f" .ptx)"
    # ptxas 11.8 reads PTX ISA <= 7.8; ILGPU writes .target sm_80 even when asked for sm_90, -arch decides.
    if ! out="$("$ptxas" -arch=sm_90 -v -o /dev/null "$f" 2>&1)"; then
        echo "$name: ptxas FAILED"; echo "$out" | head -n5; bad=1; continue
    fi
    # Largest figure over the file's entry points (grep finds nothing for a figure ptxas leaves out: 0).
    num() { echo "$out" | grep -Eo "$1" | grep -Eo '[0-9]+' | sort -n | tail -n1 || true; }
    regs=$(num 'Used [0-9]+ registers'); smem=$(num '[0-9]+ bytes smem'); stack=$(num '[0-9]+ bytes stack frame')
    sst=$(num '[0-9]+ bytes spill stores'); sld=$(num '[0-9]+ bytes spill loads')
    printf '%-44s %5s %8s %6s %7s %7s\n' "$name" "${regs:-0}" "${smem:-0}" "${stack:-0}" "${sst:-0}" "${sld:-0}"
    if [ "${sst:-0}" -ne 0 ] || [ "${sld:-0}" -ne 0 ]; then echo "  ^ spills: a hot kernel must not spill"; bad=1; fi
    if [ "${stack:-0}" -ne 0 ]; then
        allowed="${allow_stack[$name]:-}"
        if [ -z "$allowed" ]; then
            echo "  ^ local-memory stack frame: not in allow_stack (a hot kernel keeps its state in registers or shared memory)"; bad=1
        elif [ "$stack" -gt "${allowed%% *}" ]; then
            echo "  ^ stack frame $stack B exceeds the ${allowed%% *} B allowed (${allowed#* })"; bad=1
        else
            stacked=$((stacked + 1))
        fi
    fi
done
if [ $bad -ne 0 ]; then echo "ptxas-check: FAILED"; exit 1; fi
echo "ptxas-check: ${#files[@]} kernels, no spills, no stack frames outside the allow-list ($stacked allowed)"
