#!/usr/bin/env python3
"""make_iq13_fixtures.py - writes the IQ3_XXS / IQ3_S / IQ1_S / IQ1_M fixtures of tests/fixtures/.

usage: make_iq13_fixtures.py LLAMA_BIN OUT_DIR

LLAMA_BIN is the folder of llama.cpp's built programs (llama-quantize,
llama-imatrix and llama_logits from ../shared/tools/llama_logits.cpp).  From
the shipped qwen3moe-kq-Q4_K_M.gguf (every row a multiple of 256 values), as
tests/fixtures/README.md's section "IQ3 and IQ1 fixtures" describes:

  - qwen3moe-kq-F32.gguf (not shipped): `llama-quantize --allow-requantize
    qwen3moe-kq-Q4_K_M.gguf OUT F32 2`, the Q4_K_M file's values in F32;
  - qwen3moe-kq-imatrix.gguf (not shipped): `llama-imatrix` of that model
    over bench/kjv-genesis-1.txt, context 128, one thread (IQ1_S, IQ1_M and
    IQ3_XXS need an importance matrix; all four files are made with it);
  - qwen3moe-kq-IQ3_XXS.gguf, -IQ3_S.gguf, -IQ1_S.gguf, -IQ1_M.gguf:
    `llama-quantize --imatrix IMATRIX F32 OUT TYPE 2`; for IQ3_XXS with
    `--tensor-type attn_q=iq3_s` (llama-quantize's own choice there is IQ2_S,
    a type these fixtures do not cover), so that file mixes IQ3_XXS experts
    with IQ3_S, Q8_0, Q5_K and Q6_K tensors;
  - per model M the goldens and M.json exactly as make_qwen35_fixtures.py
    writes them (its functions), with the prompt ids of the kq fixture;
  - iq13-tolerances.json: llama.cpp's batch vs one-by-one and F32 vs quantized.
Every program runs under `nice -n 19`.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_qwen35_fixtures as q  # noqa: E402

QUANTS = {"IQ3_XXS": ["--tensor-type", "attn_q=iq3_s"], "IQ3_S": [], "IQ1_S": [], "IQ1_M": []}
PROMPT_IDS = [326, 398, 321, 74, 275, 283, 403, 385, 87]  # qwen3moe-kq-Q4_K_M.json


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    llama_bin, out = sys.argv[1:3]
    here = os.path.dirname(os.path.abspath(__file__))
    base = "qwen3moe-kq"
    f32 = os.path.join(out, base + "-F32.gguf")
    imat = os.path.join(out, base + "-imatrix.gguf")
    quant = os.path.join(llama_bin, "llama-quantize")
    q.run([quant, "--allow-requantize", os.path.join(here, "fixtures", base + "-Q4_K_M.gguf"),
           f32, "F32", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    q.run([os.path.join(llama_bin, "llama-imatrix"), "-m", f32, "-f",
           os.path.join(here, "..", "bench", "kjv-genesis-1.txt"), "-c", "128", "-t", "1",
           "-o", imat], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for t, extra in QUANTS.items():
        q.run([quant, "--imatrix", imat] + extra + [f32, os.path.join(out, f"{base}-{t}.gguf"),
                                                    t, "2"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = [base + "-F32"] + [f"{base}-{t}" for t in QUANTS]
    for n in names:
        q.goldens(llama_bin, out, n, PROMPT_IDS)
    tol = {"batch_vs_seq": {}, "f32_vs_quant": {}}
    for n in names:
        tol["batch_vs_seq"][n] = {
            s: q.compare(q.load(os.path.join(out, f"{n}.{s}.batch.f32")),
                         q.load(os.path.join(out, f"{n}.{s}.seq.f32"))) for s in ("A", "B")}
    gen0 = json.load(open(os.path.join(out, names[0] + ".json")))["generations"][0]["generated"]
    for n in names[1:]:
        t = {}
        for s in ("A", "B"):
            for m in ("batch", "seq"):
                t[f"{s}.{m}"] = q.compare(q.load(os.path.join(out, f"{names[0]}.{s}.{m}.f32")),
                                          q.load(os.path.join(out, f"{n}.{s}.{m}.f32")))
                del t[f"{s}.{m}"]["argmax_equal"]
        gen = json.load(open(os.path.join(out, n + ".json")))["generations"][0]["generated"]
        same = 0
        while same < len(gen) and gen[same] == gen0[same]:
            same += 1
        t["gen_same_prefix_len"] = same
        tol["f32_vs_quant"][n] = t
    with open(os.path.join(out, "iq13-tolerances.json"), "w") as f:
        json.dump(tol, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
