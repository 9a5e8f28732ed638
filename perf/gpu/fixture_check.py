#!/usr/bin/env python3
# GPU runner helper: compares two logits files (safetensors, F32 'logits' [T, V]) and prints one verdict line.
#   fixture_check.py --expected FILE --actual FILE [--atol A] [--label NAME]
#   fixture_check.py --tokens FILE          prints the fixture's token ids, comma-separated (for `ilgpumoe logits`)
# FILE may be the fixture's expected.safetensors (llama.cpp's logits) or another run's `ilgpumoe logits` output.
# Plain Python (struct + array): the GPU machine's python3 has numpy, a dry run's machine may not.
# Exit 0 when max|actual - expected| <= atol and every row's argmax agrees, else 1. NaN never passes.
import argparse, array, json, math, struct, sys

def read(path, name):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    if name not in header:
        sys.exit(f"{path}: no tensor '{name}' (has {', '.join(k for k in header if k != '__metadata__')})")
    t = header[name]
    lo, hi = t["data_offsets"]
    data = blob[8 + n + lo:8 + n + hi]
    code = {"F32": "f", "I32": "i"}[t["dtype"]]
    values = array.array(code)
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return t["shape"], values

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens")
    p.add_argument("--expected")
    p.add_argument("--actual")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--label", default="logits")
    a = p.parse_args()
    if a.tokens:
        _, ids = read(a.tokens, "tokens")
        print(",".join(map(str, ids)))
        return 0
    if not (a.expected and a.actual):
        p.error("--expected and --actual are required (or --tokens FILE)")
    shape_e, e = read(a.expected, "logits")
    shape_a, x = read(a.actual, "logits")
    if shape_e != shape_a:
        print(f"WRONG {a.label}: shape {shape_a} vs expected {shape_e}")
        return 1
    rows, v = shape_e
    worst, nan, agree = 0.0, 0, 0
    for r in range(rows):
        er, xr = e[r * v:(r + 1) * v], x[r * v:(r + 1) * v]
        for ev, xv in zip(er, xr):
            if math.isnan(xv) or math.isinf(xv):
                nan += 1
            else:
                worst = max(worst, abs(xv - ev))
        agree += max(range(v), key=er.__getitem__) == max(range(v), key=xr.__getitem__)
    ok = nan == 0 and worst <= a.atol and agree == rows
    print(f"{'ok' if ok else 'WRONG'} {a.label}: max|d| {worst:.3e} (atol {a.atol:g}), argmax {agree}/{rows}, non-finite {nan}")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
