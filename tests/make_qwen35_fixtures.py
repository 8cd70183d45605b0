#!/usr/bin/env python3
"""make_qwen35_fixtures.py - writes the qwen35moe fixtures of tests/fixtures/.

usage: make_qwen35_fixtures.py MOEMESH LLAMA_BIN OUT_DIR [PORT]

MOEMESH is the moemesh program, LLAMA_BIN the folder of llama.cpp's built
programs (llama_logits from ../shared/tools/llama_logits.cpp, llama-quantize,
llama-server).  Writes, as tests/fixtures/README.md describes:

  - qwen35moe-tiny-F32.gguf: `moemesh make-model --arch qwen35moe --preset tiny
    --seed 5001` (random weights; our generator, llama.cpp's names and shapes);
  - qwen35moe-tiny-Q8_0.gguf, -Q4_K_M.gguf: `llama-quantize F32 OUT TYPE 2`;
  - per model M: M.A.batch.f32, M.A.seq.f32, M.B.batch.f32, M.B.seq.f32 and
    M.G.gen.f32 from llama_logits (1 thread, F32 KV cache), and M.json (token
    ids, argmax per row, batch vs one-by-one, the greedy ids);
  - qwen35-tolerances.json: llama.cpp's batch vs one-by-one and F32 vs
    quantized numbers, in the shape of tolerances.json's first two sections
    (merged into it by hand).

The prompt of G is tokenized by llama.cpp itself (llama-server's /tokenize on
PORT, default 18099, started and stopped here).  Python's standard library
only; every program runs under `nice -n 19`.
"""
import array
import json
import math
import os
import subprocess
import sys
import time
import urllib.request

V = 512
SEQ_A = [355, 115, 401, 161, 103, 405, 327, 344, 503, 199, 427, 169, 288, 304, 108, 95, 116, 342,
         312, 479, 359, 126, 465, 482]
SEQ_B = [122, 319, 389, 236, 334, 145, 188, 412, 236, 376, 436, 233, 16, 156, 115, 357, 445, 171,
         255, 137, 447, 477, 379, 69, 382, 245, 400, 400, 371, 221, 73, 465, 182, 215, 154, 136, 52,
         505, 274, 265, 326, 387, 197, 376, 283, 378, 233, 471, 69, 18, 483, 365, 301, 453, 13, 18,
         247, 355, 84, 487, 21, 359, 13, 362]
PROMPT = "The quick brown fox"
N_GEN = 32
SEED = 5001
QUANTS = ["Q8_0", "Q4_K_M"]


def run(args, **kw):
    return subprocess.run(["nice", "-n", "19"] + args, check=True, **kw)


def load(path):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return [a[r * V:(r + 1) * V] for r in range(len(a) // V)]


def argmax(row):
    best = 0
    for i in range(1, V):
        if row[i] > row[best]:
            best = i
    return best


def log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def compare(a, b):
    """max |a-b|, mean and max KL(softmax(a) || softmax(b)), top-1 agreement %."""
    mx, kls = 0.0, []
    agree = 0
    for x, y in zip(a, b):
        mx = max(mx, max(abs(p - q) for p, q in zip(x, y)))
        lx, ly = log_softmax(x), log_softmax(y)
        kls.append(sum(math.exp(p) * (p - q) for p, q in zip(lx, ly)))
        agree += argmax(x) == argmax(y)
    return {"max_abs_diff": mx, "mean_kl": sum(kls) / len(kls), "max_kl": max(kls),
            "top1_agree_pct": 100.0 * agree / len(a),
            "argmax_equal": agree == len(a)}


def tokenize(llama_bin, model, port):
    srv = subprocess.Popen(["nice", "-n", "19", os.path.join(llama_bin, "llama-server"), "-m",
                            model, "--port", str(port), "-t", "1", "-c", "256"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                body = json.dumps({"content": PROMPT, "add_special": False}).encode()
                req = urllib.request.Request(f"http://127.0.0.1:{port}/tokenize", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    return json.load(r)["tokens"]
            except OSError:
                time.sleep(0.2)
        sys.exit("llama-server did not answer /tokenize")
    finally:
        srv.terminate()
        srv.wait()


def goldens(llama_bin, out, name, prompt):
    logits = os.path.join(llama_bin, "llama_logits")
    model = os.path.join(out, name + ".gguf")
    seqs = []
    for sname, toks in (("A", SEQ_A), ("B", SEQ_B)):
        files = {}
        for mode in ("batch", "seq"):
            files[mode] = f"{name}.{sname}.{mode}.f32"
            run([logits, model, ",".join(map(str, toks)), mode,
                 os.path.join(out, files[mode]), "1"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        b = load(os.path.join(out, files["batch"]))
        s = load(os.path.join(out, files["seq"]))
        seqs.append({"name": sname, "n_tokens": len(toks), "tokens": toks,
                     "batch_file": files["batch"], "seq_file": files["seq"],
                     "shape": [len(toks), V], "argmax_batch": [argmax(r) for r in b],
                     "argmax_seq": [argmax(r) for r in s],
                     "max_abs_diff_batch_vs_seq": compare(b, s)["max_abs_diff"]})
    gfile = f"{name}.G.gen.f32"
    p = run([logits, model, ",".join(map(str, prompt)), f"gen:{N_GEN}",
             os.path.join(out, gfile), "1"], capture_output=True, text=True)
    gen = [int(t) for t in p.stdout.strip().split(",")]
    doc = {"model": name + ".gguf", "n_vocab": V,
           "dtype": "float32 little-endian, row-major [n_tokens][n_vocab]", "n_threads": 1,
           "kv_cache_type": "f32", "flash_attn": False,
           "tokenize": [{"text": PROMPT, "add_special": False, "ids": prompt}],
           "sequences": seqs,
           "generations": [{"name": "G", "prompt_tokens": prompt, "n_gen": N_GEN,
                            "generated": gen, "logits_file": gfile, "shape": [N_GEN, V]}]}
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    moemesh, llama_bin, out = sys.argv[1:4]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 18099
    base = "qwen35moe-tiny"
    f32 = os.path.join(out, base + "-F32.gguf")
    run([moemesh, "make-model", "--arch", "qwen35moe", "--preset", "tiny", "--seed", str(SEED),
         "-o", f32])
    for q in QUANTS:
        run([os.path.join(llama_bin, "llama-quantize"), f32,
             os.path.join(out, f"{base}-{q}.gguf"), q, "2"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    prompt = tokenize(llama_bin, f32, port)
    names = [base + "-F32"] + [f"{base}-{q}" for q in QUANTS]
    for n in names:
        goldens(llama_bin, out, n, prompt)
    tol = {"batch_vs_seq": {}, "f32_vs_quant": {}}
    for n in names:
        tol["batch_vs_seq"][n] = {
            s: compare(load(os.path.join(out, f"{n}.{s}.batch.f32")),
                       load(os.path.join(out, f"{n}.{s}.seq.f32"))) for s in ("A", "B")}
    gen0 = json.load(open(os.path.join(out, names[0] + ".json")))["generations"][0]["generated"]
    for n in names[1:]:
        t = {}
        for s in ("A", "B"):
            for m in ("batch", "seq"):
                t[f"{s}.{m}"] = compare(load(os.path.join(out, f"{names[0]}.{s}.{m}.f32")),
                                        load(os.path.join(out, f"{n}.{s}.{m}.f32")))
                del t[f"{s}.{m}"]["argmax_equal"]
        gen = json.load(open(os.path.join(out, n + ".json")))["generations"][0]["generated"]
        same = 0
        while same < len(gen) and gen[same] == gen0[same]:
            same += 1
        t["gen_same_prefix_len"] = same
        tol["f32_vs_quant"][n] = t
    with open(os.path.join(out, "qwen35-tolerances.json"), "w") as f:
        json.dump(tol, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
