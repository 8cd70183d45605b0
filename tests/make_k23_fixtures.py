#!/usr/bin/env python3
"""make_k23_fixtures.py - writes the 2- and 3-bit K-quant fixtures of tests/fixtures/.

usage: make_k23_fixtures.py MOEMESH LLAMA_BIN OUT_DIR [PORT]

As make_qwen35_fixtures.py (the same helpers, fixture_tools.py: sequences A, B,
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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_tools as ft  # noqa: E402

SEED = 6001
QUANTS = ["Q2_K", "Q3_K_M"]
BASE = "qwen3moe-k256"


def main():
    a = ft.args(__doc__, 3, 1)
    moemesh, llama_bin, out = a[:3]
    port = int(a[3]) if len(a) > 3 else 18098
    f32 = os.path.join(out, BASE + "-F32.gguf")
    ft.make_model(moemesh, "qwen3moe", "tiny256", SEED, f32)
    for q in QUANTS:
        ft.quantize(llama_bin, f32, os.path.join(out, f"{BASE}-{q}.gguf"), q)
    prompt = ft.tokenize(llama_bin, f32, port)
    names = [BASE + "-F32"] + [f"{BASE}-{q}" for q in QUANTS]
    ft.goldens_and_tolerances(llama_bin, out, names, prompt, "k23-tolerances.json")


if __name__ == "__main__":
    main()
