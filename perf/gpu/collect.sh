#!/usr/bin/env bash
# GPU runner, step 3 (back in a checkout): file a run's results folder into the repository.
#   bash perf/gpu/collect.sh <the folder run-device.sh --out wrote, copied back from the GPU machine>
# Each preset's bench.json -> perf/results/<date>-<device>-<preset>.json (the PyTorch rows and the step summary go
# alongside), and one summary row per preset appended to perf/RESULTS.md.
set -euo pipefail
src="${1:?usage: collect.sh <results folder of run-device.sh>}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$root/perf/results"
python3 - "$src" "$root" <<'PY'
import json, os, re, sys, glob, shutil
src, root = sys.argv[1], sys.argv[2]
res = os.path.join(root, "perf", "results")
md = os.path.join(root, "perf", "RESULTS.md")
smoke = "?"
summary = os.path.join(src, "SUMMARY.txt")
if os.path.exists(summary):
    m = re.search(r"== smoke: (\S+)", open(summary).read())
    smoke = m.group(1) if m else "not run"
def unique(path):
    # A second run on the same day must not overwrite the first one's files: -2, -3, ... before the extension.
    base, ext = os.path.splitext(path)
    n = 2
    while os.path.exists(path):
        path = f"{base}-{n}{ext}"
        n += 1
    return path

summary_dst = None
rows = []
torch_done = set()  # the kernel and end-to-end reports of one preset share its PyTorch file: file it once
for path in sorted(glob.glob(os.path.join(src, "**", "bench.json"), recursive=True)):
    r = json.load(open(path))
    dev = r["machine"]["device"]
    name = re.sub(r"[^A-Za-z0-9]+", "-", dev.split("|")[0].strip()).strip("-").lower() or "device"
    date = r["startedUtc"][:10]
    preset = r["preset"]
    run = os.path.basename(os.path.dirname(path))  # mixtral-8x7b, e2e-mixtral-8x7b, qwen-moe-a2.7b, smoke, ...
    if preset == "smoke":
        continue
    dst = unique(os.path.join(res, f"{date}-{name}-{run}.json"))
    shutil.copyfile(path, dst)
    torch = os.path.join(src, f"torch-{preset}.json")
    if os.path.exists(torch) and torch not in torch_done:
        torch_done.add(torch)
        shutil.copyfile(torch, unique(os.path.join(res, f"{date}-{name}-{preset}-torch.json")))
    if os.path.exists(summary) and summary_dst is None:
        summary_dst = unique(os.path.join(res, f"{date}-{name}-summary.txt"))
        shutil.copyfile(summary, summary_dst)
    c = r.get("ceilings") or {}
    cases = r["cases"]
    wrong = sum(1 for x in cases if x["status"] in ("wrong", "error", "fault", "timeout"))
    def e2e(r):
        rows = [e for e in r.get("endToEnd", []) if e["engine"].startswith("ilgpumoe")]
        return "; ".join(f'{e["scheme"]} {e["prefillTokensPerSecond"]:.0f}/{e["decodeTokensPerSecond"]:.1f} tok/s' for e in rows) or "-"
    def best(fam, t):
        ts = [x for x in cases if x["family"] == fam and x["tokens"] == t and x.get("timing")]
        if not ts: return "-"
        x = min(ts, key=lambda x: x["timing"]["medianSeconds"])
        return f'{x["version"]} {x["dType"]} {x["timing"]["medianSeconds"]*1e3:.3f} ms ({x["timing"]["percentOfBandwidth"]:.0f}% bw)'
    rows.append(f'| {date} | {dev.split("|")[0].strip()} | `{r["machine"]["commit"][:12]}` | {run} | {len(cases)} | {wrong} | {smoke} | '
                f'{c.get("copyGBPerSecond", float("nan")):.0f} | {c.get("matmulTFlopPerSecond", float("nan")):.2f} | '
                f'{best("dense/matmul", 1)} | {e2e(r)} | [json](results/{os.path.basename(dst)}) |')
    print("filed", dst)
if not os.path.exists(md):
    open(md, "w").write("# GPU results\n\nOne row per preset per device run (perf/gpu/collect.sh). Ceilings are measured in the same run.\n\n"
                        "| date | device | commit | run | cases | wrong | smoke | copy GB/s | best matmul TFLOP/s | fastest T=1 matmul | ours end to end prefill/decode | data |\n"
                        "|---|---|---|---|---:|---:|---|---:|---:|---|---|---|\n")
with open(md, "a") as f:
    for row in rows:
        f.write(row + "\n")
print(f"{len(rows)} rows appended to {md}")
PY
