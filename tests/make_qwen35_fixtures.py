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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_tools as ft  # noqa: E402

SEED = 5001
QUANTS = ["Q8_0", "Q4_K_M"]


def main():
    a = ft.args(__doc__, 3, 1)
    moemesh, llama_bin, out = a[:3]
    port = int(a[3]) if len(a) > 3 else 18099
    base = "qwen35moe-tiny"
    f32 = os.path.join(out, base + "-F32.gguf")
    ft.make_model(moemesh, "qwen35moe", "tiny", SEED, f32)
    for q in QUANTS:
        ft.quantize(llama_bin, f32, os.path.join(out, f"{base}-{q}.gguf"), q)
    prompt = ft.tokenize(llama_bin, f32, port)
    names = [base + "-F32"] + [f"{base}-{q}" for q in QUANTS]
    ft.goldens_and_tolerances(llama_bin, out, names, prompt, "qwen35-tolerances.json")


if __name__ == "__main__":
    main()
