#!/usr/bin/env bash
# make_kjv_qwen35moe.sh WORK [LLAMA_BIN] - the trained KJV qwen35moe demo model
# from the checkpoint of train_kjv_qwen35moe.py: raw tensors -> F32 GGUF with
# moemesh's own writer (make-model --from-weights), then Q8_0 and Q4_K_M with
# llama-quantize (as the other demo models were made), and the check that
# llama.cpp, moemesh and PyTorch give the same logits (trunk and MTP) on the
# F32 file.  Run from the repository root after building build/release.
#
#   devtools/train/train_kjv_qwen35moe.py corpus --work WORK
#   nice -n 10 devtools/train/train_kjv_qwen35moe.py train --work WORK
#   devtools/train/make_kjv_qwen35moe.sh WORK /work/llama/build/bin
set -euo pipefail
work=${1:?usage: make_kjv_qwen35moe.sh WORK [LLAMA_BIN]}
llama=${2:-/work/llama/build/bin}
moemesh=build/release/moemesh
py=${PYTHON:-/usr/bin/python3}
train=devtools/train/train_kjv_qwen35moe.py

"$py" "$train" export --work "$work"
"$moemesh" make-model --arch qwen35moe --preset kjv --from-weights "$work/weights" \
	--tokenizer-gguf models/kjv-qwen3next-Q4_K_M.gguf -o "$work/kjv-qwen35moe-F32.gguf"
for t in Q8_0 Q4_K_M; do
	"$llama/llama-quantize" "$work/kjv-qwen35moe-F32.gguf" "$work/kjv-qwen35moe-$t.gguf" "$t" 2 \
		>"$work/quantize-$t.log" 2>&1
done

# the first 160 tokens of the validation text: more than one DeltaNet chunk
toks=$("$py" -c "import numpy as np; print(','.join(map(str, np.fromfile('$work/val.u16', dtype=np.uint16)[:160])))")
"$moemesh" logits -m "$work/kjv-qwen35moe-F32.gguf" --tokens "$toks" --kv f32 -o "$work/moe.f32"
"$llama/llama_logits" "$work/kjv-qwen35moe-F32.gguf" "$toks" batch "$work/llama.f32" 1 >/dev/null 2>&1
mtp_tool=${LLAMA_MTP_LOGITS:-$llama/../../llama_mtp_logits}
if [ -x "$mtp_tool" ]; then
	"$mtp_tool" "$work/kjv-qwen35moe-F32.gguf" "$toks" "$work/llama.mtp.f32" 1 >/dev/null 2>&1
fi
"$py" "$train" logits --work "$work" --ckpt --tokens "[$toks]" >"$work/torch.json"
"$py" - "$work" <<'EOF'
import json, sys, os
import numpy as np
w = sys.argv[1]
p = json.load(open(os.path.join(w, "torch.json")))
for f, k in (("moe.f32", "logits"), ("llama.f32", "logits"), ("llama.mtp.f32", "mtp")):
    path = os.path.join(w, f)
    if not os.path.exists(path):
        print("%-14s missing" % f)
        continue
    a = np.fromfile(path, dtype="<f4").reshape(-1, 4096)
    b = np.array(p[k], dtype=np.float32)
    print("%-14s vs torch %-6s: max |diff| %.3g, logit sd %.3g, same argmax %d/%d"
          % (f, k, np.abs(a - b).max(), b.std(), (a.argmax(1) == b.argmax(1)).sum(), len(a)))
m = np.fromfile(os.path.join(w, "moe.f32"), dtype="<f4").reshape(-1, 4096)
l = np.fromfile(os.path.join(w, "llama.f32"), dtype="<f4").reshape(-1, 4096)
print("moemesh vs llama.cpp: max |diff| %.3g" % np.abs(m - l).max())
EOF
ls -l "$work"/kjv-qwen35moe-*.gguf
