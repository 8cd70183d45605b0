#!/bin/sh
# bench/fuzz.sh [RUNS] [TARGET...] - every libFuzzer harness of tests/fuzz for
# RUNS executions each (default 10,000,000) under ASan/UBSan, in build/fuzz;
# prints each harness's executions and rate.  The corpus a run grows stays in
# build/fuzz/fuzz-out/NAME/corpus (worth merging into tests/fuzz/corpus when
# it finds new coverage: `fuzz_NAME -merge=1 tests/fuzz/corpus/NAME DIR`).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-10000000}
[ $# -gt 0 ] && shift
grep -m1 'model name' /proc/cpuinfo || true
# libFuzzer's timeout counts wall-clock time: a long run at low priority beside
# other work can be starved past 25 s on an input that takes 1 s alone (stop
# 27: fuzz_jinja at 9.26 M executions, beside CI), so these runs allow 120 s.
export MOE_FUZZ_TIMEOUT="${MOE_FUZZ_TIMEOUT:-120}"
exec sh "$root/tests/fuzz/run.sh" "$root" "$root/build/fuzz" "runs:$runs" "$@"
