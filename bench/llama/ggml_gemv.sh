#!/usr/bin/env bash
# ggml_gemv.sh - builds bench/llama/ggml_gemv.c against a llama.cpp build (the one
# /work/shared/tools/build-llama.sh makes) and sets its one-token GEMV beside moemesh's.
# Not part of the CMake build or CI: moemesh never links llama.cpp.
#
# usage: ggml_gemv.sh build
#        ggml_gemv.sh run [ggml_gemv args...]
#        ggml_gemv.sh compare TYPES [ROUNDS]   (TYPES: IQ2_XXS,Q4_K,... as moemesh names them)
#        ggml_gemv.sh callgrind TYPES
#        ggml_gemv.sh incache TYPES [ROUNDS]
# env:   LLAMA_DIR (default /work/llama: headers in ggml/include, static libs in build/ggml/src),
#        MOEMESH_BUILD (default build/release), OUT (default build/llama-gemv-BASENAME_OF_LLAMA_DIR),
#        THREADS (2)
#
# compare: ROUNDS (default 3) rounds; in each, per type, `moemesh bench kernels --gemv-only
#   --types T` and `ggml_gemv --types T` back to back, which one first alternating by round;
#   uptime before each round. One table: per type the range (min-max over the rounds) of
#   each tool's best GB/s at 1 and THREADS threads, of the triad next to them (both tools'
#   passes), and of each tool's GB/s as % of its own triad; llama.cpp's path: "repack" where it
#   interleaves the type's weights at load (its default CPU_REPACK buffer: Q4_0, Q4_K, IQ4_NL,
#   MXFP4 on AVX2), "vec_dot" (one row a call) otherwise. Raw rows in OUT/compare.csv.
# callgrind (K and IQ types but IQ4_NL: those whose vec_dot takes Q8_K): instructions per
#   256-value block, one thread, in cache: llama.cpp's vec_dot for
#   the type (callgrind --toggle-collect on ggml_vec_dot_<type>_q8_K over 256 rows x 4096 columns
#   of random bytes, divided by the blocks it was called on; random: no quantiser tables to
#   build under valgrind, and the kernels do not branch on data), and moemesh's one-token tile
#   (moe_matmul_q) and one-row dot, each from two moe_dotbench runs that differ only in
#   --samples (the difference in instructions over the difference in blocks: setup cancels);
#   Q2_K, Q3_K also "lanes", their rows repacked at load (moe_matmul_repacked, the token's
#   rearrangement per product included): the --matmul --repack runs' figure less --matmul's.
# incache: one thread, ~256 KiB of weights (L2), where the grid types are bound by instructions,
#   not memory: per round and type `moe_dotbench --matmul --samples 1000` (moemesh's one-token
#   tile, each sample ~1 MiB of reads) and `ggml_gemv --rows 256KiB/rowbytes --reps 1000`
#   and at 16 rows (llama.cpp's one-token mul_mat, 4 distinct quantised rows, its
#   activation conversion inside each timed compute; "marginal": the added bytes over the added
#   time, without that per-compute cost, which moe_dotbench leaves out), order alternating by
#   round; best and median GB/s, ranges over ROUNDS (default 3).
set -euo pipefail

# The median of the rounds' marginal figures of type t (marg[t, 1..nm[t]]),
# an awk function both tables' programs take in front of their own text.
awk_median='
    function median(t,   i, j, k, v, x) {
      k = nm[t]
      if (k == 0) return "-"
      for (i = 1; i <= k; i++) v[i] = marg[t, i]
      for (i = 2; i <= k; i++)
        for (j = i; j > 1 && v[j - 1] > v[j]; j--) { x = v[j]; v[j] = v[j - 1]; v[j - 1] = x }
      return sprintf("%.2f", k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2)
    }'
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
llama=${LLAMA_DIR:-/work/llama}
moe_build=${MOEMESH_BUILD:-$root/build/release}
out=${OUT:-$root/build/llama-gemv-$(basename "$llama")} # one per llama.cpp build: the binary links it
threads=${THREADS:-2}
bin=$out/ggml_gemv

# The SIMD flags llama.cpp's CPU backend was built with (its cmake.log, as build-llama.sh writes
# it), and a warning where the CPU has AVX-512 and that build does not: build-llama.sh looks for
# "avx512vnni" in /proc/cpuinfo, which Linux spells "avx512_vnni", so its builds stop at AVX2 on
# AVX-512 machines (seen on a Zen 5 EPYC, stop 28); a fair comparison there takes a build with
# -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON (LLAMA_DIR names it).
llama_simd() {
  local v
  v=$(grep -m1 'Adding CPU backend variant' "$llama/cmake.log" 2>/dev/null | sed 's/.*variant [^:]*: //; s/ .*//')
  echo "llama.cpp ($llama) CPU flags: ${v:-unknown (no $llama/cmake.log)}"
  if grep -q avx512f /proc/cpuinfo && [[ -n $v && $v != *avx512f* ]]; then
    echo "WARNING: this CPU has AVX-512 but that llama.cpp build has none: it is not llama.cpp at its best here"
  fi
}

build() {
  mkdir -p "$out"
  local lib=$llama/build/ggml/src
  gcc -O2 -std=c11 -Wall -Wextra -Werror -fopenmp -I "$llama/ggml/include" \
    -c "$here/ggml_gemv.c" -o "$out/ggml_gemv.o"
  g++ -fopenmp "$out/ggml_gemv.o" "$lib/libggml.a" "$lib/libggml-cpu.a" "$lib/ggml-rpc/libggml-rpc.a" \
    "$lib/libggml-base.a" \
    -lpthread -ldl -lm -o "$bin"
}

# rows of "tool,round,type,gbs1,triad1,pct1,gbsN,triadN,pctN[,path]" for one type, one tool
run_moe() { # round type
  local d=$out/moe.$2
  mkdir -p "$d"
  "$moe_build/moemesh" bench kernels --gemv-only --threads "$threads" --types "$2" --out "$d" >"$d/log"
  awk -F, -v r="$1" -v t="$2" '$1 == t { print "moemesh," r "," t "," $2 "," $3 "," $4 "," $5 "," $6 "," $7 }' \
    "$d/bench_kernels.csv"
}
run_ggml() { # round type
  local f=$out/ggml.$2.csv
  "$bin" --threads "$threads" --types "$2" --csv "$f" >"$out/ggml.$2.log"
  # columns: type,path,rows,row_bytes,gbs1,med1,triad1,pct1,gbsN,medN,triadN,pctN
  awk -F, -v r="$1" -v t="$2" 'NR > 1 { print "llama.cpp," r "," t "," $5 "," $7 "," $8 "," $9 "," $11 "," $12 "," $2 }' "$f"
}

compare() {
  local types=${1:?compare TYPES [ROUNDS]} rounds=${2:-3}
  [[ -x $bin ]] || build
  [[ -x $moe_build/moemesh ]] || { echo "no $moe_build/moemesh (build moemesh first)" >&2; exit 1; }
  local raw=$out/compare.csv
  echo "tool,round,type,gbs_1t,triad_1t,pct_1t,gbs_${threads}t,triad_${threads}t,pct_${threads}t,path" >"$raw"
  for ((r = 1; r <= rounds; r++)); do
    echo "round $r: $(uptime)"
    for t in ${types//,/ }; do
      if ((r % 2)); then run_moe "$r" "$t" >>"$raw"; run_ggml "$r" "$t" >>"$raw"
      else run_ggml "$r" "$t" >>"$raw"; run_moe "$r" "$t" >>"$raw"; fi
    done
  done
  echo "after: $(uptime)"
  echo "$(grep -m1 'model name' /proc/cpuinfo); one-token GEMV, 4096 columns, >= 4x LLC of weights;"
  echo "GB/s: best of 6 timed passes per run; ranges min-max over $rounds rounds; % of the triad pass"
  echo "next to each (its own tool's); T = $threads threads"
  llama_simd
  awk -F, -v types="$types" -v T="$threads" "$awk_median"'
    NR > 1 {
      k = $1 SUBSEP $3
      if ($10 != "") path[$3] = $10
      for (c = 4; c <= 9; c++) {
        key = k SUBSEP c
        if (!(key in lo) || $c < lo[key]) lo[key] = $c
        if (!(key in hi) || $c > hi[key]) hi[key] = $c
      }
      for (c = 5; c <= 8; c += 3) {  # triads of both tools
        tk = $3 SUBSEP c
        if (!(tk in tlo) || $c < tlo[tk]) tlo[tk] = $c
        if (!(tk in thi) || $c > thi[tk]) thi[tk] = $c
      }
    }
    function rng(tool, t, c) {
      key = tool SUBSEP t SUBSEP c
      if (!(key in lo)) return "-"
      return (c == 6 || c == 9) ? sprintf("%.0f-%.0f", lo[key], hi[key]) \
                                : sprintf("%.1f-%.1f", lo[key], hi[key])
    }
    END {
      printf "%-8s | %-9s %-9s | %-9s %-9s | %-9s %-9s | %-7s %-7s | %-7s %-7s | %s\n", "", \
        "moemesh", "GB/s", "llama.cpp", "GB/s", "triad", "GB/s", "moemesh", "%", "llama", "%", "llama.cpp"
      printf "%-8s | %-9s %-9s | %-9s %-9s | %-9s %-9s | %-7s %-7s | %-7s %-7s | %s\n", "type", \
        "1 thr", T " thr", "1 thr", T " thr", "1 thr", T " thr", "1 thr", T " thr", "1 thr", T " thr", "path"
      n = split(types, tl, ",")
      for (i = 1; i <= n; i++) {
        t = tl[i]
        printf "%-8s | %-9s %-9s | %-9s %-9s | %-9s %-9s | %-7s %-7s | %-7s %-7s | %s\n", t, \
          rng("moemesh", t, 4), rng("moemesh", t, 7), rng("llama.cpp", t, 4), rng("llama.cpp", t, 7), \
          sprintf("%.1f-%.1f", tlo[t SUBSEP 5], thi[t SUBSEP 5]), \
          sprintf("%.1f-%.1f", tlo[t SUBSEP 8], thi[t SUBSEP 8]), \
          rng("moemesh", t, 6), rng("moemesh", t, 9), rng("llama.cpp", t, 6), rng("llama.cpp", t, 9), \
          path[t]
      }
    }' "$raw"
  echo "raw: $raw"
}

# total instructions (Ir) of a callgrind output file
ir_total() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }

callgrind_types() {
  local types=${1:?callgrind TYPES}
  [[ -x $bin ]] || build
  local dot=$moe_build/bench/moe_dotbench cg=$out/callgrind
  mkdir -p "$cg"
  printf "%-8s %14s %16s %14s %14s\n" type "llama vec_dot" "moemesh tile" "moemesh dot" "moemesh lanes"
  for t in ${types//,/ }; do
    local g lt=${t,,} rows=256 reps=20
    g=$lt; [[ $lt == *_k ]] && g=${lt%_k}_K
    # llama.cpp: vec_dot called once per row, on rows x 16 blocks, reps times at 1 thread and
    # reps times at the second thread count (1 here, so both passes are single-threaded)
    valgrind --tool=callgrind --callgrind-out-file="$cg/ggml.$t.out" \
      --toggle-collect="ggml_vec_dot_${g}_q8_K" "$bin" --types "$t" --threads 1 --rows $rows \
      --reps $reps --no-triad --no-repack --distinct 0 >/dev/null 2>"$cg/ggml.$t.err"
    local lir lpb
    lir=$(ir_total "$cg/ggml.$t.out")
    lpb=$(awk -v i="$lir" -v n=$((2 * reps * rows * 16)) 'BEGIN { printf "%.0f", i / n }')
    # moemesh: moe_dotbench in cache (256 KiB of rows, 1 MiB of reads a sample), samples 20 vs 40
    local mode res=() modes=(--matmul "")
    [[ $t == Q2_K || $t == Q3_K ]] && modes+=("--matmul --repack")
    for mode in "${modes[@]}"; do
      local a b rb
      valgrind --tool=callgrind --callgrind-out-file="$cg/moe.$t.a.out" "$dot" $mode --threads 1 \
        --cols 4096 --mib 1 --reps 1 --samples 20 --types "$t" >"$cg/moe.$t.log" 2>/dev/null
      valgrind --tool=callgrind --callgrind-out-file="$cg/moe.$t.b.out" "$dot" $mode --threads 1 \
        --cols 4096 --mib 1 --reps 1 --samples 40 --types "$t" >/dev/null 2>&1
      a=$(ir_total "$cg/moe.$t.a.out")
      b=$(ir_total "$cg/moe.$t.b.out")
      rb=$(awk -v t="$t" '$1 == t { print $2 }' "$cg/moe.$t.log")
      # dotbench's in-cache job: n = 256 KiB / rb rows, passes = 1 MiB / (n rb) + 1 per sample
      res+=("$(awk -v a="$a" -v b="$b" -v rb="$rb" 'BEGIN {
        n = int(262144 / rb); p = int(1048576 / (n * rb)) + 1
        printf "%.0f", (b - a) / (20 * p * n * 16) }')")
    done
    local lanes=-
    [[ ${#res[@]} == 3 ]] && lanes=$((res[2] - res[0]))
    printf "%-8s %14s %16s %14s %14s\n" "$t" "$lpb" "${res[0]}" "${res[1]}" "$lanes"
  done
  echo "instructions per 256-value block, 4096 columns, one thread, callgrind (files in $cg)"
}

incache() {
  local types=${1:?incache TYPES [ROUNDS]} rounds=${2:-3}
  [[ -x $bin ]] || build
  local dot=$moe_build/bench/moe_dotbench raw=$out/incache.csv
  echo "tool,round,type,best,median,path,marginal" >"$raw"
  for ((r = 1; r <= rounds; r++)); do
    echo "round $r: $(uptime)"
    for t in ${types//,/ }; do
      local order=(moe ggml)
      ((r % 2)) || order=(ggml moe)
      for who in "${order[@]}"; do
        if [[ $who == moe ]]; then
          "$dot" --matmul --threads 1 --cols 4096 --mib 1 --reps 1 --samples 1000 --types "$t" |
            awk -v r="$r" -v t="$t" '$1 == t { print "moemesh," r "," t "," $3 "," $4 ",tile" }' >>"$raw"
        else
          local rb n
          rb=$("$bin" --types "$t" --threads 1 --rows 16 --no-triad --reps 1 --distinct 0 --csv "$out/rb.csv" >/dev/null &&
            awk -F, 'NR == 2 { print $4 }' "$out/rb.csv")
          n=$((262144 / rb / 16 * 16))
          "$bin" --types "$t" --threads 1 --rows 16 --no-triad --reps 1000 --distinct 4 \
            --csv "$out/ic1.csv" >/dev/null
          "$bin" --types "$t" --threads 1 --rows $n --no-triad --reps 1000 --distinct 4 \
            --csv "$out/ic2.csv" >/dev/null
          # marginal: the bytes of rows 16..n over the time they added (best times)
          awk -F, -v r="$r" -v t="$t" 'FNR == 2 { b[++k] = $3 * $4; g[k] = $5; m = $6; p = $2 }
            END { print "llama.cpp," r "," t "," g[2] "," m "," p "," (b[2] - b[1]) / (b[2] / g[2] - b[1] / g[1]) }' \
            "$out/ic1.csv" "$out/ic2.csv" >>"$raw"
        fi
      done
    done
  done
  echo "after: $(uptime)"
  echo "$(grep -m1 'model name' /proc/cpuinfo); one thread, ~256 KiB of weights, 4096 columns;"
  llama_simd
  echo "GB/s of weight bytes, best and median per run, ranges min-max over $rounds rounds"
  awk -F, -v types="$types" "$awk_median"'
    NR > 1 {
      for (c = 4; c <= 5; c++) {
        key = $1 SUBSEP $3 SUBSEP c
        if (!(key in lo) || $c < lo[key]) lo[key] = $c
        if (!(key in hi) || $c > hi[key]) hi[key] = $c
      }
      if ($1 == "llama.cpp") {
        path[$3] = $6
        marg[$3, ++nm[$3]] = $7
      }
    }
    function rng(tool, t, c) {
      key = tool SUBSEP t SUBSEP c
      return (key in lo) ? sprintf("%.2f-%.2f", lo[key], hi[key]) : "-"
    }
    END {
      printf "%-8s | %-11s %-11s | %-11s %-11s %-11s | %-6s | %s\n", "", "moemesh", "tile", "llama.cpp", \
        "", "", "best /", "llama.cpp"
      printf "%-8s | %-11s %-11s | %-11s %-11s %-11s | %-6s | %s\n", "type", "best", "median", "best", \
        "median", "marg. med", "best", "path"
      n = split(types, tl, ",")
      for (i = 1; i <= n; i++) {
        t = tl[i]
        mk = "moemesh" SUBSEP t SUBSEP 4; lk = "llama.cpp" SUBSEP t SUBSEP 4
        ratio = (mk in hi && lk in hi && hi[lk] > 0) ? sprintf("%.2f", hi[mk] / hi[lk]) : "-"
        printf "%-8s | %-11s %-11s | %-11s %-11s %-11s | %-6s | %s\n", t, rng("moemesh", t, 4), \
          rng("moemesh", t, 5), rng("llama.cpp", t, 4), rng("llama.cpp", t, 5), median(t), \
          ratio, path[t]
      }
      print "llama.cpp marg.: rows 16 -> n, the added bytes over the added best time (its per-compute"
      print "cost, mostly the activation conversion, left out as moe_dotbench leaves it out), median of"
      print "the rounds (a difference of two times: noisy); best / best: moemesh over llama.cpp, each"
      print "the highest of its rounds"
    }' "$raw"
  echo "raw: $raw"
}

case ${1:-} in
build) build ;;
run) shift; [[ -x $bin ]] || build; "$bin" "$@" ;;
compare) shift; compare "$@" ;;
callgrind) shift; callgrind_types "$@" ;;
incache) shift; incache "$@" ;;
*) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
