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
    writes them (fixture_tools.py, which every make_*_fixtures.py uses), with
    the prompt ids of the kq fixture;
  - iq13-tolerances.json: llama.cpp's batch vs one-by-one and F32 vs quantized.
Every program runs under `nice -n 19`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_tools as ft  # noqa: E402

QUANTS = {"IQ3_XXS": ["--tensor-type", "attn_q=iq3_s"], "IQ3_S": [], "IQ1_S": [], "IQ1_M": []}


def main():
    llama_bin, out = ft.args(__doc__, 2)
    base = "qwen3moe-kq"
    f32 = ft.kq_f32_twin(llama_bin, out)
    imat = os.path.join(out, base + "-imatrix.gguf")
    ft.imatrix(llama_bin, f32, imat)
    for t, extra in QUANTS.items():
        ft.quantize(llama_bin, f32, os.path.join(out, f"{base}-{t}.gguf"), t,
                    ["--imatrix", imat] + extra)
    names = [base + "-F32"] + [f"{base}-{t}" for t in QUANTS]
    ft.goldens_and_tolerances(llama_bin, out, names, ft.KQ_PROMPT_IDS, "iq13-tolerances.json")


if __name__ == "__main__":
    main()
