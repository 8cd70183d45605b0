# shellcheck shell=bash
# deploy/node.sh - `deploy/install.sh worker|coordinator|verify`: a moemesh
# node under systemd, and the check of a whole cluster.  Sourced by
# install.sh (which documents the commands and MOE_DESTDIR / MOE_BIN_DIR);
# defines node_main and its helpers, runs nothing by itself.  Uses install.sh's
# $root, $mode and say.
# shellcheck disable=SC2154

node_usage() {
	cat >&2 <<USAGE
usage: $0 worker --model PATH [--listen URL] [--name NAME] [--secret-file F] [--args "..."]
       $0 coordinator --model PATH [--cluster FILE] [--host H] [--port P] [--secret-file F] [--args "..."]
       $0 verify [CLUSTER_FILE] [moemesh status options...]
USAGE
}

# How privileged commands run: "" (root, or a staging root), "sudo -n", or
# the one command to run is printed and we stop.
node_privilege() { # node_privilege ARGS...: sets $sudo
	if [ -n "${MOE_DESTDIR:-}" ] || [ "$(id -u)" = 0 ]; then
		sudo=
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "installing a moemesh $mode needs root; run this, then nothing else:" >&2
		printf '  sudo MOE_BIN_DIR=%q %q' "$bindir" "$0" >&2
		printf ' %q' "$@" >&2
		echo >&2
		exit 1
	fi
}

# The directory moemesh and moemesh-worker come from: MOE_BIN_DIR, else the
# release tree (built first, as the user running this).
node_bindir() {
	if [ -n "${MOE_BIN_DIR:-}" ]; then
		bindir=$MOE_BIN_DIR
	else
		bash "$root/deploy/install.sh" build
		bindir=$root/build/release
	fi
	for b in moemesh moemesh-worker; do
		if [ ! -x "$bindir/$b" ]; then
			echo "$bindir/$b is missing (MOE_BIN_DIR or deploy/install.sh build)" >&2
			exit 1
		fi
	done
}

node_install() { # node_install worker|coordinator OPTIONS...
	local kind=$1 model='' listen='tcp://*:7000' name='' secret='' cluster='' host=127.0.0.1
	local port=8080 args=''
	shift
	local all=("$@")
	while [ $# -gt 0 ]; do
		case "$1" in
		--model | --listen | --name | --secret-file | --cluster | --host | --port | --args)
			if [ $# -lt 2 ]; then
				echo "$1 needs a value" >&2
				node_usage
				exit 2
			fi
			case "$1" in
			--model) model=$2 ;;
			--listen) listen=$2 ;;
			--name) name=$2 ;;
			--secret-file) secret=$2 ;;
			--cluster) cluster=$2 ;;
			--host) host=$2 ;;
			--port) port=$2 ;;
			--args) args=$2 ;;
			esac
			shift 2
			;;
		*)
			echo "unknown option '$1'" >&2
			node_usage
			exit 2
			;;
		esac
	done
	if [ "$kind" = worker ] && [ -n "$cluster" ]; then
		echo "--cluster is the coordinator's" >&2
		exit 2
	fi
	local D=${MOE_DESTDIR:-} unit env
	if [ "$kind" = worker ]; then
		unit=moemesh-worker
		env=worker.env
	else
		unit=moemesh-serve
		env=serve.env
	fi
	if [ -z "$model" ] && [ ! -f "$D/etc/moemesh/$env" ]; then
		echo "--model PATH is needed (no /etc/moemesh/$env yet)" >&2
		node_usage
		exit 2
	fi
	case "$model" in /home/* | /root/* | /run/user/*)
		echo "$model: the service cannot read home directories (ProtectHome=yes);" \
			"put the model under /var/lib/moemesh/models" >&2
		[ -n "$D" ] || exit 1
		;;
	esac
	for f in "$secret" "$cluster"; do
		if [ -n "$f" ] && [ ! -r "$f" ]; then
			echo "$f: cannot read it" >&2
			exit 1
		fi
	done
	node_bindir
	node_privilege "$kind" "${all[@]}"
	say "installing the moemesh $kind into ${D:-/}"
	$sudo install -d -m 0755 "$D/usr/local/bin" "$D/etc/systemd/system" "$D/var/lib/moemesh" \
		"$D/var/lib/moemesh/models"
	$sudo install -m 0755 "$bindir/moemesh" "$bindir/moemesh-worker" "$D/usr/local/bin/"
	if [ -z "$D" ] && ! id -u moemesh >/dev/null 2>&1; then
		$sudo useradd --system --user-group --home-dir /var/lib/moemesh --no-create-home \
			--shell /usr/sbin/nologin moemesh
	fi
	$sudo install -d -m 0750 "$D/etc/moemesh"
	[ -n "$D" ] || $sudo chgrp moemesh /etc/moemesh
	# the secret: the one given, else the one there, else a new one
	tmp=$(mktemp) # global: the EXIT trap removes it if we stop half way
	trap 'rm -f "${tmp:-}"' EXIT
	if [ -n "$secret" ]; then
		cat "$secret" >"$tmp"
	elif [ -f "$D/etc/moemesh/secret" ]; then
		$sudo cat "$D/etc/moemesh/secret" >"$tmp"
	else
		head -c 32 /dev/urandom | base64 >"$tmp"
		say "made a new cluster secret: copy $D/etc/moemesh/secret to every node" \
			"(deploy/install.sh ... --secret-file it)"
	fi
	$sudo install -m 0600 "$tmp" "$D/etc/moemesh/secret"
	[ -n "$D" ] || $sudo chown moemesh:moemesh /etc/moemesh/secret
	# the unit's arguments (rewritten when --model is given, else kept)
	if [ -n "$model" ]; then
		{
			echo "# $D/etc/moemesh/$env - the arguments of $unit.service (deploy/install.sh $kind)"
			echo "MOEMESH_MODEL=$model"
			if [ "$kind" = worker ]; then
				echo "MOEMESH_LISTEN=$listen"
				echo "MOEMESH_ARGS=${name:+--name $name }$args"
			else
				echo "MOEMESH_HOST=$host"
				echo "MOEMESH_PORT=$port"
				echo "MOEMESH_ARGS=${cluster:+--cluster /etc/moemesh/cluster.json --secret-file /etc/moemesh/secret }$args"
			fi
		} >"$tmp"
		$sudo install -m 0640 "$tmp" "$D/etc/moemesh/$env"
		[ -n "$D" ] || $sudo chgrp moemesh "/etc/moemesh/$env"
	fi
	if [ -n "$cluster" ]; then
		$sudo install -m 0640 "$cluster" "$D/etc/moemesh/cluster.json"
		[ -n "$D" ] || $sudo chgrp moemesh /etc/moemesh/cluster.json
	fi
	rm -f "$tmp"
	$sudo install -m 0644 "$root/deploy/systemd/$unit.service" "$D/etc/systemd/system/"
	if [ -n "$D" ]; then
		say "staged into $D (no user, no ownership, no systemctl)"
		return 0
	fi
	$sudo systemctl daemon-reload
	$sudo systemctl enable "$unit.service"
	$sudo systemctl restart "$unit.service"
	say "$unit is running: journalctl -u $unit -f; check the cluster with $0 verify"
}

node_verify() { # node_verify [CLUSTER_FILE] [STATUS_ARGS...]
	local D=${MOE_DESTDIR:-} bin
	local cluster=$D/etc/moemesh/cluster.json
	if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
		cluster=$1
		shift
	fi
	if [ -n "${MOE_BIN_DIR:-}" ]; then
		bin=$MOE_BIN_DIR/moemesh
	elif [ -x /usr/local/bin/moemesh ]; then
		bin=/usr/local/bin/moemesh
	else
		bin=$root/build/release/moemesh
	fi
	if [ ! -r "$cluster" ]; then
		echo "$cluster: no cluster file to verify (deploy/install.sh verify FILE)" >&2
		exit 2
	fi
	local cmd=("$bin" status --cluster "$cluster")
	local sec=$D/etc/moemesh/secret
	if [ -e "$sec" ]; then
		cmd+=(--secret-file "$sec")
	fi
	cmd+=("$@")
	if [ -e "$sec" ] && [ ! -r "$sec" ]; then
		if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
			cmd=(sudo -n "${cmd[@]}")
		else
			echo "reading $sec needs root; run this:" >&2
			printf ' %q' sudo "${cmd[@]}" >&2
			echo >&2
			exit 1
		fi
	fi
	"${cmd[@]}"
}

node_main() { # node_main MODE ARGS...
	local m=$1
	shift
	case "$m" in
	worker | coordinator) node_install "$m" "$@" ;;
	verify) node_verify "$@" ;;
	esac
}
