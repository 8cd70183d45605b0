#!/bin/sh
# run_neon_cross.sh SOURCE_DIR BUILD_DIR [ubsan] - the NEON cross test (ctest
# neon_cross): builds core + kernels + neon_check for aarch64 in BUILD_DIR
# (configured once; later runs rebuild only what changed) and runs neon_check
# under qemu-user on two CPUs: neoverse-n1 (has dotprod: the SDOT build is
# dispatched and checked, and compared with the base build) and cortex-a72 (no
# dotprod: dispatch must pick the base build, or SDOT would stop it with
# SIGILL), then checks MOEMESH_ISA handling.  With "ubsan" (the sanitizer
# build's ctest) everything is built with UBSan.  Exit 0 passed, 1 failed, 77
# skipped (tools absent).
set -u
# the checks name the level they expect; a forced level from the caller's
# environment would only make them fail
unset MOEMESH_ISA
src=$1
bld=$2
ubsan=OFF
[ "${3:-}" = ubsan ] && ubsan=ON
sysroot=/usr/aarch64-linux-gnu

if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1 ||
	[ ! -e "$sysroot/lib/libc.so.6" ]; then
	echo "SKIPPED: aarch64 cross test needs gcc-aarch64-linux-gnu and qemu-user"
	echo "(with libc6-dev-arm64-cross; deploy/install.sh test installs them)"
	exit 77
fi

fail() {
	echo "neon_cross: $*"
	exit 1
}

if [ ! -f "$bld/CMakeCache.txt" ]; then
	cmake -S "$src/tests/cross" -B "$bld" -DCMAKE_BUILD_TYPE=Release -DMOE_CROSS_UBSAN=$ubsan \
		-DCMAKE_TOOLCHAIN_FILE="$src/cmake/aarch64-linux-gnu.cmake" >"$bld.configure.log" 2>&1 ||
		{ cat "$bld.configure.log"; fail "configure failed"; }
fi
cmake --build "$bld" -j2 >"$bld.build.log" 2>&1 || { cat "$bld.build.log"; fail "cross build failed"; }

run() { # CPU, then neon_check's arguments
	cpu=$1
	shift
	echo "== qemu-aarch64 -cpu $cpu neon_check $*"
	qemu-aarch64 -L "$sysroot" -cpu "$cpu" "$bld/neon_check" "$@" || fail "failed on $cpu: $*"
}

run neoverse-n1 --expect-isa neon --expect-dotprod 1
run cortex-a72 --expect-isa neon --expect-dotprod 0
MOEMESH_ISA=scalar run neoverse-n1 --expect-isa scalar --dispatch-only
MOEMESH_ISA=avx2 run cortex-a72 --expect-isa neon --dispatch-only
echo "neon_cross: passed"
