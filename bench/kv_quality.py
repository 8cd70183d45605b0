#!/usr/bin/env python3
"""kv_quality.py - what a quantized KV cache costs: KL against the F32 one.

usage: bench/kv_quality.py MOEMESH TEXT_FILE MODEL.gguf [MODEL.gguf ...]

Tokenizes TEXT_FILE with each model's vocabulary (its first n_ctx tokens),
writes the logits of every position with `moemesh logits --kv T` for T in
f32, f16, q8_0, q4_0 (all tokens in steps of 256, one thread), and prints
per model and type the mean and largest KL(F32 || T) over positions and the
share of positions whose argmax is F32's.  Standard library only.
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile


def n_ctx(moemesh, model):
    out = subprocess.run([moemesh, "inspect", model], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        if ".context_length" in line:
            return int(line.split()[-1])
    return 512


def logits(moemesh, model, ids, kv, path):
    subprocess.run([moemesh, "logits", "-m", model, "--tokens", ",".join(map(str, ids)), "-o",
                    path, "--kv", kv, "--threads", "1"], check=True, capture_output=True)
    raw = open(path, "rb").read()
    n = len(raw) // 4
    vals = struct.unpack("<%df" % n, raw)
    v = n // len(ids)
    return [vals[i * v:(i + 1) * v] for i in range(len(ids))]


def log_softmax(row):
    m = max(row)
    s = math.log(sum(math.exp(x - m) for x in row))
    return [x - m - s for x in row]


def main():
    moemesh, text_file = sys.argv[1], sys.argv[2]
    text = open(text_file).read()
    print("| model | KV | mean KL | max KL | top-1 = F32 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in sys.argv[3:]:
            ids = json.loads(subprocess.run([moemesh, "tokenize", "-m", model],
                                            input=json.dumps(text) + "\n", text=True,
                                            capture_output=True, check=True).stdout)
            ids = ids[:n_ctx(moemesh, model)]
            ref = [log_softmax(r) for r in logits(moemesh, model, ids, "f32",
                                                  os.path.join(tmp, "f32"))]
            for kv in ("f16", "q8_0", "q4_0"):
                got = [log_softmax(r) for r in logits(moemesh, model, ids, kv,
                                                      os.path.join(tmp, kv))]
                kls, same = [], 0
                for p, q in zip(ref, got):
                    kls.append(sum(math.exp(a) * (a - b) for a, b in zip(p, q)))
                    same += p.index(max(p)) == q.index(max(q))
                print("| %s | %s | %.2e | %.2e | %.1f %% (%d tokens) |" %
                      (os.path.basename(model), kv, sum(kls) / len(kls), max(kls),
                       100.0 * same / len(ids), len(ids)))


if __name__ == "__main__":
    main()
