#!/usr/bin/env python3
"""make_iq4_fixtures.py - writes the IQ4_XS / IQ4_NL / MXFP4 fixtures of tests/fixtures/.

usage: make_iq4_fixtures.py LLAMA_BIN OUT_DIR

LLAMA_BIN is the folder of llama.cpp's built programs (llama-quantize and
llama_logits from ../shared/tools/llama_logits.cpp).  From the shipped
qwen3moe-kq-Q4_K_M.gguf (every row a multiple of 256 values), as
tests/fixtures/README.md's section "IQ4 and MXFP4 fixtures" describes:

  - qwen3moe-kq-F32.gguf (not shipped): `llama-quantize --allow-requantize
    qwen3moe-kq-Q4_K_M.gguf OUT F32 2`, the Q4_K_M file's values in F32;
  - qwen3moe-kq-IQ4_XS.gguf, -IQ4_NL.gguf, -MXFP4_MOE.gguf: `llama-quantize
    F32 OUT TYPE 2`;
  - per model M the goldens and M.json exactly as make_qwen35_fixtures.py
    writes them (fixture_tools.py, which every make_*_fixtures.py uses), with
    the prompt ids of the kq fixture;
  - iq4-tolerances.json: llama.cpp's batch vs one-by-one and F32 vs quantized.
Every program runs under `nice -n 19`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_tools as ft  # noqa: E402

QUANTS = ["IQ4_XS", "IQ4_NL", "MXFP4_MOE"]


def main():
    llama_bin, out = ft.args(__doc__, 2)
    base = "qwen3moe-kq"
    f32 = ft.kq_f32_twin(llama_bin, out)
    for t in QUANTS:
        ft.quantize(llama_bin, f32, os.path.join(out, f"{base}-{t}.gguf"), t)
    names = [base + "-F32"] + [f"{base}-{t}" for t in QUANTS]
    ft.goldens_and_tolerances(llama_bin, out, names, ft.KQ_PROMPT_IDS, "iq4-tolerances.json")


if __name__ == "__main__":
    main()
