#!/usr/bin/env bash
# deploy/install.sh - set up, build, and run the demo or the test suite.
#
#   deploy/install.sh demo    install what is missing, build, run the demo
#   deploy/install.sh test    install what is missing, build (release + ASan/UBSan), run all tests
#   deploy/install.sh build   install what is missing, build the release tree only
#
# On the boxes of a cluster (Debian / Ubuntu, x86-64 or aarch64, systemd):
#
#   deploy/install.sh worker --model PATH [--listen URL] [--name NAME] [--secret-file F] [--args "..."]
#   deploy/install.sh coordinator --model PATH [--cluster FILE] [--host H] [--port P]
#                                 [--secret-file F] [--args "..."]
#       build, install /usr/local/bin/moemesh and moemesh-worker, a `moemesh`
#       system user, /etc/moemesh/ (worker.env or serve.env, the cluster file,
#       the secret: copied from --secret-file, else kept, else made; mode 0600,
#       owned by moemesh), /var/lib/moemesh/models, and the systemd unit
#       (deploy/systemd/moemesh-worker.service or moemesh-serve.service), then
#       enable and (re)start it.  Copy the same secret to every node.
#   deploy/install.sh verify [CLUSTER_FILE] [STATUS_ARGS...]
#       `moemesh status` on every node of the cluster file (default
#       /etc/moemesh/cluster.json) with /etc/moemesh/secret: reachable,
#       authenticated, the same model, ISA levels and clocks; exit status 1
#       when a node is not up.
#
#   MOE_DESTDIR=DIR  installs into DIR instead of / (no user, no ownership, no
#                    systemctl: for packaging and the tests)
#   MOE_BIN_DIR=DIR  takes moemesh and moemesh-worker from DIR (no packages,
#                    no build)
#
# Works on a fresh Debian 12 / Ubuntu 22.04+ machine. Packages are installed
# with apt: directly as root, else with `sudo -n`; if neither is possible the
# exact command to run is printed and the script stops. Re-running is quick:
# nothing is installed or rebuilt when nothing changed. A build tree whose
# cached options differ from what this script asks for (say build/asan
# configured without MOE_SANITIZE) is re-configured, and the script says so.
#
# Sourced, it only defines its build functions and returns, so they can be
# tried by hand (in a subshell: it sets -euo pipefail), e.g.
#   bash -c '. deploy/install.sh && config_diff build/asan -DMOE_SANITIZE=ON'
#   bash -c '. deploy/install.sh && build_tree build/x -DCMAKE_BUILD_TYPE=Release'
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# --- build functions --------------------------------------------------------------
cache_get() { # cache_get DIR VAR: VAR's value in DIR/CMakeCache.txt, empty if absent
	sed -n "/^$2:[^=]*=/{s///p;q;}" "$1/CMakeCache.txt"
}

cmake_bool() { # one spelling (ON/OFF) for CMake's boolean constants; others unchanged
	case "$(printf '%s' "$1" | tr '[:lower:]' '[:upper:]')" in
	ON | 1 | TRUE | YES | Y) echo ON ;;
	OFF | 0 | FALSE | NO | N | "") echo OFF ;;
	*) printf '%s\n' "$1" ;;
	esac
}

config_diff() { # config_diff DIR CMAKE_ARGS...: one line per -DVAR[:TYPE]=VALUE of
	# CMAKE_ARGS that DIR's cache holds another value of; nothing if all match
	local dir=$1 arg var want have
	shift
	for arg in "$@"; do
		case "$arg" in -D*=*) ;; *) continue ;; esac
		var=${arg#-D}
		want=${var#*=}
		var=${var%%=*}
		var=${var%%:*}
		have=$(cache_get "$dir" "$var")
		if [ "$(cmake_bool "$have")" != "$(cmake_bool "$want")" ]; then
			echo "$var=${have:-(unset)} (asked for $want)"
		fi
	done
}

build_tree() { # build_tree DIR CMAKE_ARGS...: configure if new or configured otherwise, build, show warnings/errors only
	local dir=$1 rc=0 stale
	shift
	if [ ! -f "$dir/CMakeCache.txt" ]; then
		cmake -S "$root" -B "$dir" "$@" >/dev/null
	else
		stale=$(config_diff "$dir" "$@")
		if [ -n "$stale" ]; then
			say "$dir was configured with ${stale//$'\n'/, }: re-configuring"
			cmake -S "$root" -B "$dir" "$@" >/dev/null
		fi
	fi
	stale=$(config_diff "$dir" "$@")
	if [ -n "$stale" ]; then
		echo "$dir: after configuring, the cache still has ${stale//$'\n'/, }" >&2
		return 1
	fi
	cmake --build "$dir" -j "$jobs" -- --no-print-directory >"$dir/build.log" 2>&1 || rc=$?
	grep -Ev '^\[ *[0-9]+%\]' "$dir/build.log" || true
	return $rc
}

# suite TREE [CTEST-ARGS...]: TREE's tests (ctest); when some fail it ends
# with a digest: the machine (CPU model, family/model, its SIMD levels) and
# each failed test's failure lines out of ctest's log, so a report that keeps
# only the head and the tail of a long log (as CI's does) still says what
# failed, where, and on what.  Returns ctest's status.
suite() {
	local tree=$1 rc=0
	shift
	(cd "$tree" && ctest --output-on-failure -j "$jobs" "$@") || rc=$?
	[ "$rc" -eq 0 ] && return 0
	local log=$tree/Testing/Temporary/LastTest.log
	local failed=$tree/Testing/Temporary/LastTestsFailed.log
	{
		echo "==> digest of the failures in $tree (ctest exit $rc)"
		echo "machine: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')," \
			"family $(grep -m1 'cpu family' /proc/cpuinfo | sed 's/.*: //')" \
			"model $(grep -m1 '^model[[:space:]]' /proc/cpuinfo | sed 's/.*: //')," \
			"$(nproc) CPUs, SIMD:" \
			"$(grep -m1 -o -w -E 'avx2|avx512f|avx512_vnni|avx512_vbmi|avx512_bitalg|amx_tile|asimd|asimddp|sve' \
				/proc/cpuinfo | sort -u | tr '\n' ' ')"
		if [ -f "$failed" ]; then
			sed 's/^[0-9]*://' "$failed" | while read -r name; do
				echo "--- $name"
				awk -v t="$name" '
					$0 ~ "^[0-9]+/[0-9]+ Test: " t "$" { on = 1; next }
					/^<end of output>/ { on = 0 }
					on && /\[FAIL\]|\[----\] +[^ ]|[Aa]ssert|FAIL:|[Ff]ailed|ERROR|runtime error|Sanitizer|Timeout|not ok/ {
						if (++n <= 40) print
					}' "$log"
			done
		fi
	} >&2
	return "$rc"
}

# Sourced: the functions above are all it does.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
	return 0
fi

mode=${1:-demo}
case "$mode" in demo | test | build | worker | coordinator | verify) ;; *)
	echo "usage: $0 demo|test|build|worker|coordinator|verify" >&2
	exit 2
	;;
esac
cd "$root"
if [ "$mode" = worker ] || [ "$mode" = coordinator ] || [ "$mode" = verify ]; then
	# shellcheck source=deploy/node.sh
	. "$root/deploy/node.sh"
	node_main "$@"
	exit $?
fi

# --- 1. platform --------------------------------------------------------------
os_id=unknown
os_like=
if [ -r /etc/os-release ]; then
	# shellcheck disable=SC1091
	. /etc/os-release
	os_id=${ID:-unknown}
	os_like=${ID_LIKE:-}
fi
arch=$(uname -m)
say "platform: $os_id ($arch)"

# --- 2. packages ----------------------------------------------------------------
pkgs="build-essential cmake pkg-config libnng-dev libprotobuf-c-dev protobuf-c-compiler
      liburing-dev libopenblas-dev libcriterion-dev libcjson-dev libpcre2-dev libutf8proc-dev
      libssl-dev libmicrohttpd-dev libjansson-dev gnuplot-nox python3 python3-jinja2 curl iproute2"
# The tests drive the server with the official OpenAI and Anthropic SDKs
# (tests/sdk, from npm): Node.js and npm, unless some are on PATH already
# (e.g. NodeSource's nodejs, which carries its own npm).
if [ "$mode" = test ] && ! { command -v node >/dev/null && command -v npm >/dev/null; }; then
	pkgs="$pkgs nodejs npm"
fi
# systemd-analyze checks the units (ctest deploy_units)
if [ "$mode" = test ]; then
	pkgs="$pkgs systemd"
fi
case "$os_id $os_like" in
*debian* | *ubuntu*)
	missing=
	for p in $pkgs; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
			missing="$missing $p"
		fi
	done
	if [ -n "$missing" ]; then
		say "installing:$missing"
		if [ "$(id -u)" = 0 ]; then
			sudo=
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
			sudo="sudo -n"
		else
			echo "moemesh needs these packages:$missing" >&2
			echo "run this once, then run $0 $mode again:" >&2
			echo "  sudo apt-get update && sudo apt-get install -y$missing" >&2
			exit 1
		fi
		export DEBIAN_FRONTEND=noninteractive
		$sudo apt-get update -qq
		# shellcheck disable=SC2086
		$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
	fi
	;;
*)
	say "not Debian or Ubuntu: install the equivalents of these packages yourself: $pkgs"
	;;
esac

# Optional, test mode only: clang with libFuzzer (libclang-rt-dev where apt
# has it), for the fuzz harnesses' smoke run (ctest fuzz_smoke), and on x86-64
# the aarch64 cross compiler and qemu-user, for the NEON kernels' cross test
# (ctest neon_cross). Each test is skipped without them. If apt cannot install
# them, warn and go on.
opt_pkgs="clang"
if command -v apt-cache >/dev/null && apt-cache show libclang-rt-dev >/dev/null 2>&1; then
	opt_pkgs="$opt_pkgs libclang-rt-dev"
fi
if [ "$arch" = x86_64 ]; then
	opt_pkgs="$opt_pkgs gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
fi
if [ "$mode" = test ] && command -v dpkg-query >/dev/null; then
	missing=
	for p in $opt_pkgs; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
			missing="$missing $p"
		fi
	done
	if [ -n "$missing" ]; then
		say "installing (optional, for the fuzz and NEON cross tests):$missing"
		sudo=none
		if [ "$(id -u)" = 0 ]; then
			sudo=
		elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
			sudo="sudo -n"
		fi
		# shellcheck disable=SC2086
		if [ "$sudo" = none ] ||
			! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
				$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
					--no-install-recommends $missing >/dev/null; }; then
			say "warning: could not install$missing; the tests that need them will be skipped"
			echo "  (to run them: sudo apt-get install -y$missing)" >&2
		fi
	fi
fi

# --- 3. build -------------------------------------------------------------------
# Every option the trees depend on is named, at its default where it is one,
# so a tree configured otherwise by hand is re-configured (build_tree).
say "building build/release"
build_tree build/release -DCMAKE_BUILD_TYPE=Release -DMOE_SANITIZE=OFF -DMOE_TESTS=ON
moemesh=$root/build/release/moemesh

if [ "$mode" = build ]; then
	say "built $moemesh"
	exit 0
fi

# --- 4. test --------------------------------------------------------------------
if [ "$mode" = test ]; then
	say "building build/asan (AddressSanitizer + UndefinedBehaviorSanitizer)"
	build_tree build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_SANITIZE=ON -DMOE_TESTS=ON
	# the SDKs the tests use, as the lock file pins them
	if [ ! -f tests/sdk/node_modules/.package-lock.json ] ||
		[ tests/sdk/package-lock.json -nt tests/sdk/node_modules/.package-lock.json ]; then
		say "installing the test clients (npm ci in tests/sdk)"
		npm ci --prefix tests/sdk --no-audit --no-fund --loglevel=error
	fi
	say "test suite, release build"
	suite build/release
	say "test suite, ASan/UBSan build"
	export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	suite build/asan
	exit 0
fi

# --- 5. demo --------------------------------------------------------------------
exec bash deploy/demo.sh "$moemesh"
