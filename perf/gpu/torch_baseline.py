#!/usr/bin/env python3
"""PyTorch equivalents of the ilgpumoe kernel suite on the same shapes, timed with CUDA events.

Reads our bench.json (preset shapes and our median per case), times the PyTorch counterpart of each case, and prints
ours/theirs (time ratio: > 1 means we are slower). Also times, per token count, the Hugging Face-style loop over
experts, torch._grouped_mm when this PyTorch has it, and torch.topk gating, whether or not we have that case yet.
Runs on the GPU machine (PyTorch 2.11, no .NET). Writes --out JSON.
"""
import argparse, json, math, re, sys, time

import torch
import torch.nn.functional as F

PRESETS = {  # the same shapes as perf/ILGpuMoE.Perf/Suite/Presets.cs, for --preset without a bench.json
    "mixtral-8x7b": dict(dim=4096, hidden=14336, experts=8, topK=2, heads=32, kvHeads=8, headDim=128, vocab=32000,
                         tokens=[1, 8, 64, 512, 4096], kvLength=4096, router="Mixtral"),
}


def timed(fn, reps=50, warmup=5, budget=0.5):
    """Median seconds of fn() with CUDA events; fewer reps for slow calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); fn(); e.record(); torch.cuda.synchronize()
    one = s.elapsed_time(e) / 1e3
    n = max(3, min(reps, int(budget / max(one, 1e-7))))
    times = []
    for _ in range(n):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record()
        times.append((s, e))
    torch.cuda.synchronize()
    ts = sorted(a.elapsed_time(b) / 1e3 for a, b in times)
    return ts[len(ts) // 2]


def dt(label):
    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[label]


def hf_moe_loop(x, w1, w3, w2, ids, weights):
    """Hugging Face MixtralSparseMoeBlock's loop: per expert, gather its tokens, run the MLP, index_add back."""
    T, D = x.shape
    out = torch.zeros_like(x)
    E, K = w1.shape[0], ids.shape[1]
    mask = F.one_hot(ids, E).permute(2, 1, 0)  # [E, K, T]
    for e in range(E):
        k_idx, t_idx = torch.where(mask[e])
        if t_idx.numel() == 0:
            continue
        xe = x[t_idx]
        h = F.silu(xe @ w1[e].T) * (xe @ w3[e].T)
        out.index_add_(0, t_idx, (h @ w2[e].T) * weights[t_idx, k_idx, None])
    return out


def gating(logits, k):
    p = torch.softmax(logits.float(), dim=-1)
    w, i = torch.topk(p, k, dim=-1)
    return w / w.sum(-1, keepdim=True), i


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", help="our bench.json (shapes and our medians)")
    ap.add_argument("--preset", default="mixtral-8x7b")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ours = json.load(open(a.bench)) if a.bench else None
    p = (ours or {}).get("shapes") or PRESETS[a.preset]
    torch.backends.cuda.matmul.allow_tf32 = False  # our f32 kernels are true f32: compare with true f32
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, preset {ours['preset'] if ours else a.preset}")
    rows = []

    def add(kernel, version, dtype, tokens, shape, theirs, impl, our_case=None):
        our = our_case["timing"]["medianSeconds"] if our_case and our_case.get("timing") else None
        ratio = our / theirs if our and theirs else None
        rows.append(dict(kernel=kernel, version=version, dtype=dtype, tokens=tokens, shape=shape, ours=our, theirs=theirs,
                         ratio=ratio, torch=impl, our_version=our_case["version"] if our_case else None))
        r = f"{ratio:8.3f}" if ratio else "       -"
        o = f"{our * 1e3:10.4f}" if our else "         -"
        print(f"{kernel:22s} {version:11s} {dtype:5s} T={tokens:<5d} ours {o} ms  torch {theirs * 1e3:10.4f} ms  ours/torch {r}  [{impl}{'; ours ' + our_case['version'] if our_case and version != our_case['version'] else ''}]")

    D, Fh, E, K = p["dim"], p["hidden"], p["experts"], p["topK"]
    H, Hkv, Dh, V = p["heads"], p["kvHeads"], p["headDim"], p["vocab"]
    g = torch.Generator(device=dev).manual_seed(1)

    def rnd(*shape, dtype=torch.float32, scale=1.0):
        return ((torch.rand(*shape, generator=g, device=dev) * 2 - 1) * scale).to(dtype)

    # Our cases, one PyTorch counterpart each.
    for c in (ours or {}).get("cases", []):
        if c["status"] not in ("ok", "ceiling"):
            continue
        fam, T, ty = c["family"], c["tokens"], c["dType"]
        try:
            if fam == "dense/matmul":
                m = re.search(r"\[(\d+), (\d+)\] x \[(\d+), (\d+)\]", c["shape"])
                t, k, n = int(m.group(1)), int(m.group(2)), int(m.group(3))
                x, w = rnd(t, k), rnd(n, k, dtype=dt(ty), scale=1 / math.sqrt(k))
                if ty == "f32":
                    theirs, impl = timed(lambda: F.linear(x, w)), "F.linear f32 (no TF32)"
                else:
                    xb = x.to(dt(ty))
                    theirs, impl = timed(lambda: F.linear(xb, w)), f"F.linear {ty} x {ty} (tensor cores)"
            elif fam == "attention":
                m = re.search(r"H=(\d+) Hkv=(\d+) Dh=(\d+) S=(\d+)", c["shape"])
                h, hk, d, S = map(int, m.groups())
                q, kk, vv = rnd(1, h, T, d), rnd(1, hk, S, d), rnd(1, hk, S, d)
                causal = T > 1
                theirs = timed(lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=True))
                impl = "SDPA f32 (GQA)"
            elif fam == "moe/gating":
                lg = rnd(T, E, scale=4)
                theirs, impl = timed(lambda: gating(lg, K)), "softmax + topk + renorm"
            elif fam == "dense/rmsnorm":
                x, w = rnd(T, D), rnd(D, dtype=torch.bfloat16)
                theirs, impl = timed(lambda: F.rms_norm(x, (D,), w.float(), 1e-5)), "F.rms_norm"
            elif fam == "dense/softmax":
                x = rnd(T, V, scale=8)
                theirs, impl = timed(lambda: torch.softmax(x, -1)), "torch.softmax"
            elif fam == "dense/swiglu":
                gu = rnd(T, 2 * Fh, scale=4)
                theirs, impl = timed(lambda: F.silu(gu[:, :Fh]) * gu[:, Fh:]), "silu * up"
            elif fam == "dense/add":
                x, y = rnd(T, D), rnd(T, D)
                theirs, impl = timed(lambda: x + y), "x + y"
            elif fam == "dense/embedding":
                tab, ids = rnd(V, D, dtype=torch.bfloat16), torch.randint(0, V, (T,), device=dev)
                theirs, impl = timed(lambda: F.embedding(ids, tab).float()), "F.embedding bf16 -> f32"
            else:
                continue
            add(fam, c["version"], ty, T, c["shape"], theirs, impl, c)
        except Exception as e:  # one failed counterpart must not stop the rest
            print(f"{fam} {c['version']} T={T}: torch counterpart failed: {type(e).__name__}: {e}")

    # MoE block baselines at every token count (HF loop; torch._grouped_mm if present), bf16 weights.
    moe_cases = {(c["tokens"], c["version"], c["dType"]): c for c in (ours or {}).get("cases", []) if c["family"] == "moe/grouped-gemm"}
    try:
        w1, w3 = rnd(E, Fh, D, dtype=torch.bfloat16, scale=1 / math.sqrt(D)), rnd(E, Fh, D, dtype=torch.bfloat16, scale=1 / math.sqrt(D))
        w2 = rnd(E, D, Fh, dtype=torch.bfloat16, scale=1 / math.sqrt(Fh))
        for T in p["tokens"]:
            x = rnd(T, D, dtype=torch.bfloat16)
            wts, ids = gating(rnd(T, E, scale=4), K)
            wts = wts.to(torch.bfloat16)
            # Our fastest bf16 version at this T (the first one found was v1, 12x slower than v3-gemv at T=1).
            timed_ours = [c for (t, v, d), c in moe_cases.items() if t == T and d == "bf16" and c.get("timing")]
            our = min(timed_ours, key=lambda c: c["timing"]["medianSeconds"], default=None)
            add("moe/grouped-gemm", "hf-loop", "bf16", T, f"E={E} K={K} D={D} F={Fh}", timed(lambda: hf_moe_loop(x, w1, w3, w2, ids, wts), reps=20),
                "HF loop over experts", our)
            if hasattr(torch, "_grouped_mm"):
                order = torch.argsort(ids.flatten(), stable=True)
                counts = torch.bincount(ids.flatten(), minlength=E)
                offs = torch.cumsum(counts, 0).to(torch.int32)
                xs = x[order // K]
                w13 = torch.cat([w1, w3], 1).transpose(1, 2).contiguous()  # [E, D, 2F]
                w2t = w2.transpose(1, 2).contiguous()  # [E, F, D]

                def grouped():
                    hu = torch._grouped_mm(xs, w13, offs=offs)
                    h = F.silu(hu[:, :Fh]) * hu[:, Fh:]
                    return torch._grouped_mm(h, w2t, offs=offs)
                try:
                    add("moe/grouped-gemm", "grouped_mm", "bf16", T, f"E={E} K={K} D={D} F={Fh}", timed(grouped, reps=20), "torch._grouped_mm x2", our)
                except Exception as e:
                    print(f"torch._grouped_mm at T={T}: {type(e).__name__}: {e}")
            else:
                print("torch._grouped_mm: not in this PyTorch")
            del x
    except torch.cuda.OutOfMemoryError as e:
        print(f"MoE baseline: out of memory: {e}")

    json.dump(dict(torch=torch.__version__, device=torch.cuda.get_device_name(0), rows=rows), open(a.out, "w"), indent=1)
    print(f"wrote {a.out} ({len(rows)} rows)")


if __name__ == "__main__":
    sys.exit(main())
