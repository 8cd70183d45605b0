#!/usr/bin/env bash
# deploy/demo.sh MOEMESH - the README demo; run through `deploy/install.sh demo`.
#
# 1. A synthetic qwen3next model with the real Qwen3 tokenizer: written,
#    inspected, and used to tokenize a sentence.
# 2. Generation with the small MoE model trained on the King James Bible
#    (models/kjv-qwen3next-Q4_K_M.gguf, see models/README.md).
#    MOE_DEMO_MODEL=models/kjv-qwen35moe-Q4_K_M.gguf (or another KJV model)
#    runs steps 2 and 3 on that file instead; a qwen35moe file, which has an
#    MTP block, also gets step 4: the same text drafted with --spec mtp.
#    MOE_DEMO_PROMPT replaces their prompt, "In the beginning" (kjv-qwen35moe,
#    the least trained, loops on it at once; "And the LORD said" reads better).
set -euo pipefail
moemesh=${1:?usage: demo.sh PATH/TO/moemesh}
cd "$(dirname "$0")/.."
model=${MOE_DEMO_MODEL:-models/kjv-qwen3next-Q4_K_M.gguf}
prompt=${MOE_DEMO_PROMPT:-In the beginning}
out=build/demo
mkdir -p "$out"

echo "== 1. make-model: tiny qwen3next, real Qwen3 tokenizer (151,669 tokens)"
if [ ! -f "$out/qwen3next-tiny-qwen3tok.gguf" ]; then
	"$moemesh" make-model --arch qwen3next --preset tiny --type Q8_0 \
		--tokenizer tests/fixtures/qwen3-tokenizer/tokenizer.json \
		-o "$out/qwen3next-tiny-qwen3tok.gguf"
fi
"$moemesh" inspect "$out/qwen3next-tiny-qwen3tok.gguf" | sed -n '1,3p;/tokenizer.ggml.tokens/p;/^tensors/,/blk.0.ffn_norm\|blk.0.ssm_conv1d/p' | head -20
echo "..."
"$moemesh" inspect "$out/qwen3next-tiny-qwen3tok.gguf" | tail -4
echo
echo "== tokenize with it"
line='"Hello, world! <|im_start|>user\nWie geht es dir? 你好"'
printf '%s\n' "$line"
printf '%s\n' "$line" | "$moemesh" tokenize -m "$out/qwen3next-tiny-qwen3tok.gguf"
echo
echo "== 2. generate with the KJV-trained MoE model $model (greedy, 64 tokens)"
printf "%s" "$prompt"
"$moemesh" run -m "$model" -p "$prompt" -n 64 --temp 0
echo
echo "== 3. the same generation, experts spread over 2 worker processes (ipc://)"
echo "   (coordinator: dense layers, KV, sampling; each worker: half of every layer's experts)"
printf "%s" "$prompt"
# --log-level warn: the workers' load progress (info lines on stderr) would
# land in the middle of the text
"$moemesh" run -m "$model" -p "$prompt" -n 64 --temp 0 \
	--workers 2 --log-level warn
case "$model" in
*qwen35moe*)
	echo
	echo "== 4. the same generation, 4 tokens at a time drafted by the model's MTP block"
	echo "   (--spec mtp: the same text; drafted and accepted counts on the spec: line)"
	printf "%s" "$prompt"
	"$moemesh" run -m "$model" -p "$prompt" -n 64 --temp 0 --spec mtp --draft-max 4
	;;
esac
