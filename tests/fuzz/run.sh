#!/bin/sh
# tests/fuzz/run.sh SOURCE BUILD MODE [TARGET...] - build the libFuzzer
# harnesses (clang, -DMOE_FUZZ=ON) in BUILD and run each over its committed
# seed corpus (tests/fuzz/corpus/NAME, copied: the seeds stay as committed).
#   MODE  time:S   run each harness for S seconds (the ctest fuzz_smoke)
#         runs:N   run each harness for N executions (bench/fuzz.sh)
# Prints one line per harness with its executions and executions per second;
# a crash, leak, sanitizer report or broken property stops it with the
# harness's output and the input that did it (under BUILD/fuzz-out/NAME).
# Exits 77 (skipped) when clang cannot build a libFuzzer program.
set -eu
src=$1
build=$2
mode=$3
shift 3
targets=${*:-gguf frame tokenizer jinja grammar schema reply openai anthropic trace}

cc=${MOE_FUZZ_CC:-clang}
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$probe/p.c"
if ! command -v "$cc" >/dev/null 2>&1 ||
	! "$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>/dev/null; then
	echo "skipped: $cc cannot build a libFuzzer program (install clang and libclang-rt-dev)"
	exit 77
fi

case $mode in
time:*) limit="-max_total_time=${mode#time:}" ;;
runs:*) limit="-runs=${mode#runs:}" ;;
*)
	echo "MODE must be time:SECONDS or runs:N" >&2
	exit 2
	;;
esac

if [ ! -f "$build/CMakeCache.txt" ]; then
	CC=$cc cmake -S "$src" -B "$build" -DMOE_FUZZ=ON -DMOE_TESTS=OFF \
		-DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" --target fuzz_all -j "$(nproc 2>/dev/null || echo 2)" >"$build/build.log" 2>&1 || {
	grep -E 'error|warning' "$build/build.log" >&2 || tail -20 "$build/build.log" >&2
	exit 1
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export MOE_SOURCE_DIR="$src"
for t in $targets; do
	out=$build/fuzz-out/$t
	rm -rf "$out"
	mkdir -p "$out/corpus"
	cp "$src/tests/fuzz/corpus/$t/"* "$out/corpus/"
	# -timeout: one input over MOE_FUZZ_TIMEOUT seconds (default 25) is a
	# hang; -rss_limit_mb: 2 GiB
	if ! "$build/tests/fuzz/fuzz_$t" $limit -timeout="${MOE_FUZZ_TIMEOUT:-25}" -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$out/" "$out/corpus" >"$out/log" 2>&1; then
		echo "fuzz_$t FAILED; its output ($out/log):"
		tail -60 "$out/log"
		exit 1
	fi
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/log")
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/log")
	echo "fuzz_$t: $runs executions, $rate per second, no failure"
done
