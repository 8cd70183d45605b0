"""fixture_tools.py - what the make_*_fixtures.py scripts share: driving llama.cpp's programs
(llama-quantize, llama-imatrix, llama-server's /tokenize, llama_logits from
../shared/tools/llama_logits.cpp) and moemesh make-model, the goldens and M.json of a model,
and the comparisons that become the *-tolerances.json files.

Imported by make_qwen35_fixtures.py, make_k23_fixtures.py, make_iq2_fixtures.py,
make_iq4_fixtures.py and make_iq13_fixtures.py (tests/fixtures/README.md).  Python's standard
library only; every program runs under `nice -n 19`.
"""
import array
import json
import math
import os
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

# llama_logits' sequences and prompt, the same for every model
V = 512
SEQ_A = [355, 115, 401, 161, 103, 405, 327, 344, 503, 199, 427, 169, 288, 304, 108, 95, 116, 342,
         312, 479, 359, 126, 465, 482]
SEQ_B = [122, 319, 389, 236, 334, 145, 188, 412, 236, 376, 436, 233, 16, 156, 115, 357, 445, 171,
         255, 137, 447, 477, 379, 69, 382, 245, 400, 400, 371, 221, 73, 465, 182, 215, 154, 136, 52,
         505, 274, 265, 326, 387, 197, 376, 283, 378, 233, 471, 69, 18, 483, 365, 301, 453, 13, 18,
         247, 355, 84, 487, 21, 359, 13, 362]
PROMPT = "The quick brown fox"
N_GEN = 32
KQ_PROMPT_IDS = [326, 398, 321, 74, 275, 283, 403, 385, 87]  # qwen3moe-kq-Q4_K_M.json
KJV_TEXT = os.path.join(HERE, "..", "bench", "kjv-genesis-1.txt")


def args(doc, n_required, n_optional=0):
    """sys.argv[1:] for a script whose usage is doc: doc on stdout and exit 0 for -h / --help,
    on stderr and exit 1 for too few or too many arguments."""
    a = sys.argv[1:]
    if any(x in ("-h", "--help") for x in a):
        print(doc)
        sys.exit(0)
    if not n_required <= len(a) <= n_required + n_optional:
        sys.exit(doc)
    return a


def run(args, **kw):
    return subprocess.run(["nice", "-n", "19"] + args, check=True, **kw)


def run_quiet(args):
    """run with stdout and stderr dropped (llama.cpp's programs log a lot)."""
    return run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_model(moemesh, arch, preset, seed, out):
    run([moemesh, "make-model", "--arch", arch, "--preset", preset, "--seed", str(seed), "-o",
         out])


def quantize(llama_bin, src, dst, ftype, extra=()):
    """`llama-quantize [extra] src dst ftype 2`."""
    run_quiet([os.path.join(llama_bin, "llama-quantize")] + list(extra) + [src, dst, ftype, "2"])


def kq_f32_twin(llama_bin, out):
    """qwen3moe-kq-F32.gguf in out: the shipped qwen3moe-kq-Q4_K_M.gguf's values in F32."""
    f32 = os.path.join(out, "qwen3moe-kq-F32.gguf")
    quantize(llama_bin, os.path.join(HERE, "fixtures", "qwen3moe-kq-Q4_K_M.gguf"), f32, "F32",
             ["--allow-requantize"])
    return f32


def imatrix(llama_bin, model, dst):
    """`llama-imatrix` of model over bench/kjv-genesis-1.txt, context 128, one thread."""
    run_quiet([os.path.join(llama_bin, "llama-imatrix"), "-m", model, "-f", KJV_TEXT, "-c", "128",
               "-t", "1", "-o", dst])


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
    """PROMPT's ids by llama-server's /tokenize on port (started and stopped here)."""
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
    """out/name.{A,B}.{batch,seq}.f32, name.G.gen.f32 and name.json from out/name.gguf."""
    logits = os.path.join(llama_bin, "llama_logits")
    model = os.path.join(out, name + ".gguf")
    seqs = []
    for sname, toks in (("A", SEQ_A), ("B", SEQ_B)):
        files = {}
        for mode in ("batch", "seq"):
            files[mode] = f"{name}.{sname}.{mode}.f32"
            run_quiet([logits, model, ",".join(map(str, toks)), mode,
                       os.path.join(out, files[mode]), "1"])
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


def tolerances(out, names, filename):
    """out/filename: llama.cpp's batch vs one-by-one numbers of every model in names and the
    first one's (F32) vs each other's, from their goldens in out."""
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
    with open(os.path.join(out, filename), "w") as f:
        json.dump(tol, f, indent=1)
        f.write("\n")


def goldens_and_tolerances(llama_bin, out, names, prompt, filename):
    """goldens of every model in names (the F32 one first), then tolerances into filename."""
    for n in names:
        goldens(llama_bin, out, n, prompt)
    tolerances(out, names, filename)
