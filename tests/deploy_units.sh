#!/usr/bin/env bash
# deploy_units.sh - ctest deploy_units: deploy/install.sh worker|coordinator
# into a staging root (MOE_DESTDIR) with the built programs (MOE_BIN_DIR):
# the files, their modes, the secret kept or copied, the env files; the units
# pass `systemd-analyze verify` (ExecStart pointed at the staged programs)
# and its offline security review under a threshold; without root and
# without sudo the script prints the one command to run and stops; verify
# runs `moemesh status` over the cluster file (up: 0, a dead node: 1).
#   deploy_units.sh SOURCE_DIR BIN_DIR FIXTURES
# Exit 77 (skipped) where systemd-analyze is absent.
set -euo pipefail
src=$1
bindir=$2
fixtures=$3
model=$fixtures/qwen3moe-tiny-Q8_0.gguf
if ! command -v systemd-analyze >/dev/null; then
	echo "[SKIP] deploy_units: no systemd-analyze (apt-get install systemd)" >&2
	exit 77
fi
work=$(mktemp -d /tmp/moe-deploy.XXXXXX)
worker_pid=
cleanup() {
	[ -z "$worker_pid" ] || kill "$worker_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
fails=0
fail() {
	echo "FAIL: $*" >&2
	fails=$((fails + 1))
}
check() { # check DESCRIPTION COMMAND...
	local what=$1
	shift
	"$@" || fail "$what"
}
mode_of() { stat -c %a "$1"; }
not_in() { ! grep -q "$1" "$2"; }

D=$work/root
export MOE_BIN_DIR=$bindir
install_sh=$src/deploy/install.sh

# --- worker, then coordinator, into the staging root ----------------------------------
MOE_DESTDIR=$D bash "$install_sh" worker --model "$model" --listen 'tcp://*:7000' \
	--name box1 --args "--threads 4" >"$work/out" 2>&1 || fail "worker install: $(cat "$work/out")"
check "moemesh-worker installed" test -x "$D/usr/local/bin/moemesh-worker"
check "moemesh installed" test -x "$D/usr/local/bin/moemesh"
check "/etc/moemesh is 0750" [ "$(mode_of "$D/etc/moemesh")" = 750 ]
check "the secret is 0600" [ "$(mode_of "$D/etc/moemesh/secret")" = 600 ]
check "the secret is not empty" test -s "$D/etc/moemesh/secret"
check "worker.env is 0640" [ "$(mode_of "$D/etc/moemesh/worker.env")" = 640 ]
check "worker.env names the model" grep -qx "MOEMESH_MODEL=$model" "$D/etc/moemesh/worker.env"
check "worker.env's listen URL" grep -qx 'MOEMESH_LISTEN=tcp://\*:7000' "$D/etc/moemesh/worker.env"
check "worker.env's arguments" grep -qx 'MOEMESH_ARGS=--name box1 --threads 4' \
	"$D/etc/moemesh/worker.env"
check "the worker unit" test -f "$D/etc/systemd/system/moemesh-worker.service"
check "the models folder" test -d "$D/var/lib/moemesh/models"
secret1=$(cat "$D/etc/moemesh/secret")

MOE_DESTDIR=$D bash "$install_sh" coordinator --model "$model" \
	--cluster "$src/deploy/cluster.example.json" --host 0.0.0.0 --port 8080 \
	>"$work/out" 2>&1 || fail "coordinator install: $(cat "$work/out")"
check "the secret is kept by a second install" [ "$(cat "$D/etc/moemesh/secret")" = "$secret1" ]
check "the cluster file copied" cmp -s "$src/deploy/cluster.example.json" \
	"$D/etc/moemesh/cluster.json"
check "serve.env points at the cluster file and the secret" grep -qx \
	'MOEMESH_ARGS=--cluster /etc/moemesh/cluster.json --secret-file /etc/moemesh/secret ' \
	"$D/etc/moemesh/serve.env"
check "serve.env's host" grep -qx 'MOEMESH_HOST=0.0.0.0' "$D/etc/moemesh/serve.env"
check "the serve unit" test -f "$D/etc/systemd/system/moemesh-serve.service"

printf 'the lab secret\n' >"$work/given"
MOE_DESTDIR=$D bash "$install_sh" worker --secret-file "$work/given" >"$work/out" 2>&1 ||
	fail "worker install with --secret-file: $(cat "$work/out")"
check "--secret-file is copied byte for byte" cmp -s "$work/given" "$D/etc/moemesh/secret"
check "the secret stays 0600" [ "$(mode_of "$D/etc/moemesh/secret")" = 600 ]
check "worker.env kept without --model" grep -qx "MOEMESH_MODEL=$model" "$D/etc/moemesh/worker.env"

# --- usage errors ------------------------------------------------------------------------
rc=0
MOE_DESTDIR=$work/empty bash "$install_sh" worker >"$work/out" 2>&1 || rc=$?
check "worker without --model: exit 2 (was $rc)" [ "$rc" = 2 ]
check "worker without --model says so" grep -q -- "--model PATH is needed" "$work/out"
rc=0
bash "$install_sh" bogus >"$work/out" 2>&1 || rc=$?
check "an unknown command: exit 2 (was $rc)" [ "$rc" = 2 ]

# --- no root, no sudo: the one command to run, nothing installed --------------------------
mkdir -p "$work/stub"
# shellcheck disable=SC2016
printf '#!/bin/sh\n[ "$1" = -u ] && { echo 1000; exit 0; }\nexec /usr/bin/id "$@"\n' >"$work/stub/id"
printf '#!/bin/sh\necho "sudo: a password is required" >&2\nexit 1\n' >"$work/stub/sudo"
# and whatever would change the system fails loudly, should the check above be wrong
for c in install useradd chgrp chown systemctl; do
	printf '#!/bin/sh\necho "stub: would have run %s" >&2\nexit 99\n' "$c" >"$work/stub/$c"
	chmod +x "$work/stub/$c"
done
chmod +x "$work/stub/id" "$work/stub/sudo"
rc=0
PATH=$work/stub:$PATH bash "$install_sh" worker --model /var/lib/moemesh/models/m.gguf \
	>"$work/out" 2>&1 || rc=$?
check "without root or sudo: exit 1 (was $rc)" [ "$rc" = 1 ]
check "without root or sudo: the command to run" grep -q "sudo MOE_BIN_DIR=.* worker --model /var/lib/moemesh/models/m.gguf" "$work/out"
check "without root or sudo: nothing installed" not_in "installing the moemesh" "$work/out"

# --- the units: systemd-analyze verify and its security review ------------------------------
mkdir -p "$work/units"
for u in moemesh-worker moemesh-serve; do
	sed "s#/usr/local/bin/#$D/usr/local/bin/#" "$D/etc/systemd/system/$u.service" \
		>"$work/units/$u.service"
	rc=0
	(cd "$work/units" && systemd-analyze verify --man=no "$u.service") >"$work/verify" 2>&1 || rc=$?
	check "$u.service: systemd-analyze verify exit $rc: $(cat "$work/verify")" [ "$rc" = 0 ]
	check "$u.service: systemd-analyze verify says nothing: $(cat "$work/verify")" \
		[ ! -s "$work/verify" ]
	rc=0
	(cd "$work/units" && systemd-analyze security --offline=true --threshold=35 \
		--no-pager "$u.service") >"$work/security" 2>&1 || rc=$?
	check "$u.service: exposure above 3.5: $(tail -1 "$work/security")" [ "$rc" = 0 ]
	check "$u.service: restarts on failure" grep -qx 'Restart=on-failure' "$work/units/$u.service"
	check "$u.service: runs as moemesh" grep -qx 'User=moemesh' "$work/units/$u.service"
done

# --- verify: moemesh status over a cluster file -----------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dead=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bindir/moemesh" worker -m "$model" --listen "tcp://127.0.0.1:$port" --threads 1 --quiet \
	--secret-file "$D/etc/moemesh/secret" &
worker_pid=$!
for _ in $(seq 100); do
	MOE_DESTDIR=$D "$bindir/moemesh" status --worker "tcp://127.0.0.1:$port" --pings 1 \
		--secret-file "$D/etc/moemesh/secret" >/dev/null 2>&1 && break
	sleep 0.05
done
printf '{"workers": ["tcp://127.0.0.1:%s"]}\n' "$port" >"$work/one.json"
printf '{"workers": ["tcp://127.0.0.1:%s", "tcp://127.0.0.1:%s"]}\n' "$port" "$dead" >"$work/two.json"
rc=0
MOE_DESTDIR=$D bash "$install_sh" verify "$work/one.json" >"$work/out" 2>&1 || rc=$?
check "verify of an up cluster: exit 0 (was $rc): $(cat "$work/out")" [ "$rc" = 0 ]
check "verify shows the node up" grep -q " up " "$work/out"
rc=0
MOE_DESTDIR=$D bash "$install_sh" verify "$work/two.json" >"$work/out" 2>&1 || rc=$?
check "verify with a dead node: exit 1 (was $rc)" [ "$rc" = 1 ]
check "verify names it unreachable" grep -q "unreachable" "$work/out"
printf 'not the secret\n' >"$work/wrong"
rc=0
MOE_DESTDIR=$D bash "$install_sh" verify "$work/one.json" --secret-file "$work/wrong" \
	>"$work/out" 2>&1 || rc=$?
check "verify with another secret: exit 1 (was $rc)" [ "$rc" = 1 ]
check "verify names it auth-failed" grep -q "auth-failed" "$work/out"
kill "$worker_pid"
rc=0
wait "$worker_pid" || rc=$?
worker_pid=
check "the worker stopped cleanly (exit $rc)" [ "$rc" = 0 ]

if [ "$fails" -gt 0 ]; then
	echo "deploy_units: $fails checks failed" >&2
	exit 1
fi
echo "deploy_units: all checks passed"
