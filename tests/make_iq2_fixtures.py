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
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_qwen35_fixtures as q35  # noqa: E402

SEED = 6001
BASE = "qwen3moe-k256"
QUANTS = [("IQ2_XXS", "IQ2_XXS", []), ("IQ2_XS", "IQ2_XS", []),
          ("IQ2_S", "IQ2_M", ["--tensor-type", "attn_output=iq2_s", "--token-embedding-type",
                              "iq2_s"]),
          ("IQ2_MIX", "Q4_K_M", ["--tensor-type", "ffn_up_exps=iq2_xxs", "--tensor-type",
                                 "ffn_gate_exps=iq2_xs", "--tensor-type", "ffn_down_exps=iq2_s"])]


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    moemesh, llama_bin, out = sys.argv[1:4]
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 18093
    here = os.path.dirname(os.path.abspath(__file__))
    f32 = os.path.join(out, BASE + "-F32.gguf")
    imatrix = os.path.join(out, BASE + ".imatrix.gguf")
    q35.run([moemesh, "make-model", "--arch", "qwen3moe", "--preset", "tiny256", "--seed",
             str(SEED), "-o", f32])
    q35.run([os.path.join(llama_bin, "llama-imatrix"), "-m", f32, "-f",
             os.path.join(here, "..", "bench", "kjv-genesis-1.txt"), "-o", imatrix, "-c", "128",
             "-t", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name, ftype, extra in QUANTS:
        q35.run([os.path.join(llama_bin, "llama-quantize"), "--imatrix", imatrix] + extra +
                [f32, os.path.join(out, f"{BASE}-{name}.gguf"), ftype, "2"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prompt = q35.tokenize(llama_bin, f32, port)
    names = [BASE + "-F32"] + [f"{BASE}-{q[0]}" for q in QUANTS]
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
    with open(os.path.join(out, "iq2-tolerances.json"), "w") as f:
        json.dump(tol, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
