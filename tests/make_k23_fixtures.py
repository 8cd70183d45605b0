#!/usr/bin/env python3
"""make_k23_fixtures.py - writes the 2- and 3-bit K-quant fixtures of tests/fixtures/.

usage: make_k23_fixtures.py MOEMESH LLAMA_BIN OUT_DIR [PORT]

As make_qwen35_fixtures.py (whose helpers it uses: the same sequences A, B,
prompt G, llama_logits calls and comparisons), for the model
`moemesh make-model --arch qwen3moe --preset tiny256 --seed 6001` (every row
length a multiple of 256):

  - qwen3moe-k256-F32.gguf (not shipped: make-model rewrites it byte for byte;
    test_quants does, to check the quantizers against llama-quantize);
  - qwen3moe-k256-Q2_K.gguf, -Q3_K_M.gguf: `llama-quantize F32 OUT TYPE 2`
    (no importance matrix);
  - per model M (the F32 one too, for the comparison): M.A.batch.f32,
    M.A.seq.f32, M.B.batch.f32, M.B.seq.f32, M.G.gen.f32 and M.json;
  - k23-tolerances.json: llama.cpp's batch vs one-by-one and F32 vs
    quantized numbers (merged into tolerances.json by hand).
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_qwen35_fixtures as q35  # noqa: E402

SEED = 6001
QUANTS = ["Q2_K", "Q3_K_M"]
BASE = "qwen3moe-k256"


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    moemesh, llama_bin, out = sys.argv[1:4]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 18098
    f32 = os.path.join(out, BASE + "-F32.gguf")
    q35.run([moemesh, "make-model", "--arch", "qwen3moe", "--preset", "tiny256", "--seed",
             str(SEED), "-o", f32])
    for q in QUANTS:
        q35.run([os.path.join(llama_bin, "llama-quantize"), f32,
                 os.path.join(out, f"{BASE}-{q}.gguf"), q, "2"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
    prompt = q35.tokenize(llama_bin, f32, port)
    names = [BASE + "-F32"] + [f"{BASE}-{q}" for q in QUANTS]
    for n in names:
        q35.goldens(llama_bin, out, n, prompt)
    load = q35.load
    tol = {"batch_vs_seq": {}, "f32_vs_quant": {}}
    for n in names:
        tol["batch_vs_seq"][n] = {
            s: q35.compare(load(os.path.join(out, f"{n}.{s}.batch.f32")),
                           load(os.path.join(out, f"{n}.{s}.seq.f32"))) for s in ("A", "B")}
    gen0 = json.load(open(os.path.join(out, names[0] + ".json")))["generations"][0]["generated"]
    for n in names[1:]:
        t = {}
        for s in ("A", "B"):
            for m in ("batch", "seq"):
                t[f"{s}.{m}"] = q35.compare(load(os.path.join(out, f"{names[0]}.{s}.{m}.f32")),
                                            load(os.path.join(out, f"{n}.{s}.{m}.f32")))
                del t[f"{s}.{m}"]["argmax_equal"]
        gen = json.load(open(os.path.join(out, n + ".json")))["generations"][0]["generated"]
        same = 0
        while same < len(gen) and gen[same] == gen0[same]:
            same += 1
        t["gen_same_prefix_len"] = same
        tol["f32_vs_quant"][n] = t
    with open(os.path.join(out, "k23-tolerances.json"), "w") as f:
        json.dump(tol, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
