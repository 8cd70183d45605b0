#!/usr/bin/env python3
"""make_iq2_fixtures.py - writes the IQ2_XXS / IQ2_XS / IQ2_S fixtures of tests/fixtures/.

usage: make_iq2_fixtures.py MOEMESH LLAMA_BIN OUT_DIR [PORT]

As make_k23_fixtures.py (the same model, sequences, prompt, llama_logits calls
and comparisons), from qwen3moe-k256-F32.gguf (`moemesh make-model --arch
qwen3moe --preset tiny256 --seed 6001`, not shipped) and an importance matrix
(the IQ2 types require one):

  - qwen3moe-k256.imatrix.gguf (not shipped): `llama-imatrix -m F32 -f
    bench/kjv-genesis-1.txt -c 128 -t 1`;
  - qwen3moe-k256-IQ2_XXS.gguf, -IQ2_XS.gguf: `llama-quantize --imatrix I F32
    OUT TYPE 2` (every tensor of the type but attn_v: Q4_K);
  - qwen3moe-k256-IQ2_S.gguf: llama-quantize's IQ2_M mix (IQ2_S) with
    `--tensor-type attn_output=iq2_s --token-embedding-type iq2_s` (IQ2_M
    puts IQ3_S there);
  - qwen3moe-k256-IQ2_MIX.gguf, a file whose tensors differ in type as the UD
    files' do: Q4_K_M with `--tensor-type ffn_up_exps=iq2_xxs
    --tensor-type ffn_gate_exps=iq2_xs --tensor-type ffn_down_exps=iq2_s`;
  - per model M (the F32 one too, for the comparison): M.A.batch.f32,
    M.A.seq.f32, M.B.batch.f32, M.B.seq.f32, M.G.gen.f32 and M.json;
  - iq2-tolerances.json: llama.cpp's batch vs one-by-one and F32 vs quantized
    numbers (merged into tolerances.json by hand).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_tools as ft  # noqa: E402

SEED = 6001
BASE = "qwen3moe-k256"
QUANTS = [("IQ2_XXS", "IQ2_XXS", []), ("IQ2_XS", "IQ2_XS", []),
          ("IQ2_S", "IQ2_M", ["--tensor-type", "attn_output=iq2_s", "--token-embedding-type",
                              "iq2_s"]),
          ("IQ2_MIX", "Q4_K_M", ["--tensor-type", "ffn_up_exps=iq2_xxs", "--tensor-type",
                                 "ffn_gate_exps=iq2_xs", "--tensor-type", "ffn_down_exps=iq2_s"])]


def main():
    a = ft.args(__doc__, 3, 1)
    moemesh, llama_bin, out = a[:3]
    port = int(a[3]) if len(a) > 3 else 18093
    f32 = os.path.join(out, BASE + "-F32.gguf")
    imatrix = os.path.join(out, BASE + ".imatrix.gguf")
    ft.make_model(moemesh, "qwen3moe", "tiny256", SEED, f32)
    ft.imatrix(llama_bin, f32, imatrix)
    for name, ftype, extra in QUANTS:
        ft.quantize(llama_bin, f32, os.path.join(out, f"{BASE}-{name}.gguf"), ftype,
                    ["--imatrix", imatrix] + extra)
    prompt = ft.tokenize(llama_bin, f32, port)
    names = [BASE + "-F32"] + [f"{BASE}-{q[0]}" for q in QUANTS]
    ft.goldens_and_tolerances(llama_bin, out, names, prompt, "iq2-tolerances.json")


if __name__ == "__main__":
    main()
