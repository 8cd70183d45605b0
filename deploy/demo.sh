#!/usr/bin/env bash
# deploy/demo.sh MOEMESH - the README demo; run through deploy/install.sh demo.
set -euo pipefail
moemesh=${1:?usage: demo.sh PATH/TO/moemesh}
cd "$(dirname "$0")/.."
"$moemesh" version
echo "(the demo grows as the open issues land: GGUF inspect, tokenizer, generation, cluster)"
