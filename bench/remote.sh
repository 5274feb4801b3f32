#!/usr/bin/env bash
# bench/remote.sh — floe over the network, side by side with restic, in one
# run, and write bench/REMOTE.md. See bench/README.md ("Remote benchmarks").
#
#   REST_SERVER_BIN=/path/to/rest-server bench/remote.sh
#   BENCH_SCALE=small REST_SERVER_BIN=... bench/remote.sh     # smoke run
#
# Parts (BENCH_PARTS, default all, in this order):
#   loopback  floe to a local path, floe to `floe serve`, restic to
#             rest-server --append-only: init, backup, no-change backup,
#             restore (checked against the source), server CPU time
#   s3        floe and restic to the same versitygw S3 server on loopback
#   clients   BENCH_CLIENTS (50) floe clients back up at once through one
#             `floe serve`: its peak RSS and CPU time
#   far       a link between two network namespaces shaped with netem
#             (delay 50ms rate 1gbit loss 0.1% each way; on a kernel without
#             netem, bench/farlink does the same in user space between two
#             TUN devices): RTT, plain TCP over the link, then floe backup
#             with --connections 1, 4, 16 and restic to rest-server
#
# Environment knobs (defaults in brackets), beside those of run.sh that apply
# (BENCH_DIR, BENCH_SCALE, BENCH_DATASETS, BENCH_FLOE_BIN, BENCH_RESTIC_VERSION):
#   REST_SERVER_BIN       rest-server binary (required for loopback and far)
#   BENCH_PARTS           parts to run                      [loopback s3 clients far]
#   BENCH_S3_DATASETS     data sets of the s3 part           [$BENCH_DATASETS]
#   BENCH_REMOTE_REPEAT   runs of each loopback and s3 cycle; every
#                         figure of those parts is the median   [3]
#   BENCH_CLIENTS         concurrent clients                 [50]
#   BENCH_FAR_MB          MiB of random data over the far link [96; small: 16]
#   BENCH_FAR_TIMEOUT     seconds a far-link backup may take [900]
#   BENCH_FAR_CC          TCP congestion controls, one round of backups each [cubic bbr]
#   BENCH_FAR_TCP_SECONDS seconds of each plain TCP transfer over the link [8]
#   BENCH_REMOTE_RESULTS  report path                        [bench/REMOTE.md]
#   FLOE_VERSITYGW        versitygw binary (else $PATH, else Go's bin dir;
#                         installed there with go install at the version
#                         scripts/test.sh pins when missing)
#
# Exit status: 0 when every step ran and every restore matched its source,
# 1 otherwise, 2 when it could not start (missing rest-server, not root, ...).
set -euo pipefail

# run.sh, sourced, gives the data sets (prepare_goroot, prepare_large), the
# floe build, restic's install and the restore checks; it stops before its
# own main part. No borg here.
export BENCH_TOOLS="floe restic"
# The remote targets are on the source tree and the large set; smallstored
# (run.sh) measures a second copy, which the cycle here does not do.
export BENCH_DATASETS=${BENCH_DATASETS:-goroot large}
# shellcheck source=bench/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/run.sh"

PARTS=${BENCH_PARTS:-loopback s3 clients far}
S3_DATASETS=${BENCH_S3_DATASETS:-$DATASETS}
CLIENTS=${BENCH_CLIENTS:-50}
REMOTE_REPEAT=${BENCH_REMOTE_REPEAT:-3}
[[ $REMOTE_REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "remote.sh: BENCH_REMOTE_REPEAT must be a positive integer" >&2; exit 2; }
REP=1
FAR_TIMEOUT=${BENCH_FAR_TIMEOUT:-900}
REMOTE_OUT=${BENCH_REMOTE_RESULTS:-$ROOT/bench/REMOTE.md}
# The far backups' size: one cubic connection over 100 ms with 0.1% loss
# moves only a few Mbit/s, so --connections 1 alone takes about 3 minutes
# for 96 MiB (bench/REMOTE.md, "Far link"); the whole part stays near 10.
case $SCALE in full) FAR_MB=${BENCH_FAR_MB:-96} ;; *) FAR_MB=${BENCH_FAR_MB:-16} ;; esac
FAR_CCS=${BENCH_FAR_CC:-cubic bbr}
FAR_TCP_SECONDS=${BENCH_FAR_TCP_SECONDS:-8}
for p in $PARTS; do case $p in loopback|s3|clients|far) ;; *) die "unknown part '$p'" ;; esac; done
for d in $S3_DATASETS; do case $d in goroot|large) ;; *) die "unknown S3 data set '$d'" ;; esac; done
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENTS must be a positive integer"
[[ $FAR_MB =~ ^[1-9][0-9]*$ ]] || die "BENCH_FAR_MB must be a positive integer"
for cc in $FAR_CCS; do [[ $cc =~ ^[a-z0-9_]+$ ]] || die "BENCH_FAR_CC must name congestion controls (cubic, bbr, reno), not '$cc'"; done
[[ -n ${FAR_CCS// /} ]] || die "BENCH_FAR_CC is empty"
[[ $FAR_TCP_SECONDS =~ ^[1-9][0-9]*$ ]] || die "BENCH_FAR_TCP_SECONDS must be a positive integer"

RUN=$WORK/remote             # everything of this run; wiped at start
LOGS=$RUN/logs
RES=$RUN/results.tsv
FLOE=$WORK/floe-remote       # not run.sh's binary: both may run at once
CERT=$RUN/tls/cert.pem
CERTKEY=$RUN/tls/key.pem
CLK=$(getconf CLK_TCK)
GiB=$((1024 * MiB))
# The far link's addresses: private, inside this run's own namespaces only.
FAR_SRV_IP=10.213.77.1
FAR_CLI_IP=10.213.77.2
NS_SRV=floe-rb-srv-$$
NS_CLI=floe-rb-cli-$$
FAR_DELAY=50ms FAR_RATE=1gbit FAR_LOSS=0.1% FAR_LIMIT=100000 FAR_MTU=1500
FAR_NETEM=(netem delay "$FAR_DELAY" rate "$FAR_RATE" loss "$FAR_LOSS" limit "$FAR_LIMIT")
# bench/farlink (user-space netem) when the kernel has no netem: its binary,
# its TUN devices (at most 15 characters) and its process
FARLINK=$WORK/farlink
FAR_TUN_S=flrs$$
FAR_TUN_C=flrc$$
FARLINK_PID=
FAR_PORT=5201 # farlink's TCP sink, in the server's namespace
FAR_NOTES=()  # lines of the report about the link (its measures, counters)
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- tools
need_rest_server() {
	if [[ -z ${REST_SERVER_BIN:-} || ! -x ${REST_SERVER_BIN:-} ]]; then
		cat >&2 <<'EOF'
remote.sh: REST_SERVER_BIN must name a rest-server binary (restic's REST
backend server; the Go module proxy does not serve it). Build it outside this
repository, for example:
    git clone https://github.com/restic/rest-server /tmp/rest-server
    cd /tmp/rest-server && git checkout v0.14.0 && go build ./cmd/rest-server
    REST_SERVER_BIN=/tmp/rest-server/rest-server bench/remote.sh
(or BENCH_PARTS="s3 clients" to run without it).
EOF
		exit 2
	fi
	REST_SERVER_BIN=$(realpath "$REST_SERVER_BIN")
}

# versitygw as the S3 tests find it; installed at scripts/test.sh's pinned
# version when missing (the version is read from there, not repeated here).
find_versitygw() {
	local gobin ver
	gobin=$(go env GOBIN)
	[[ -n $gobin ]] || gobin="$(go env GOPATH | cut -d: -f1)/bin"
	for VERSITYGW in "${FLOE_VERSITYGW:-}" "$(command -v versitygw || true)" "$gobin/versitygw"; do
		[[ -n $VERSITYGW && -x $VERSITYGW ]] && return
	done
	ver=$(sed -n 's/^versitygw_version=\([^ ]*\).*/\1/p' "$ROOT/scripts/test.sh")
	[[ -n $ver ]] || die "no versitygw_version in scripts/test.sh"
	say "installing versitygw $ver with go install"
	go install "github.com/versity/versitygw/cmd/versitygw@$ver" || die "could not install versitygw $ver"
	VERSITYGW=$gobin/versitygw
}

# One certificate for both servers, so that both tools pay for TLS alike.
make_cert() {
	mkdir -p "$RUN/tls"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj /CN=floe-bench -addext "subjectAltName=IP:127.0.0.1,IP:$FAR_SRV_IP" \
		-keyout "$CERTKEY" -out "$CERT" >"$LOGS/openssl.log" 2>&1 || die "openssl: see $LOGS/openssl.log"
	chmod 600 "$CERTKEY"
	FP="sha256:$(openssl x509 -in "$CERT" -outform DER | sha256sum | cut -d' ' -f1)"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- servers
# start_server NAME HOST PORT NETNS CMD...: start a server in the background
# (in NETNS unless it is "-") and wait until it accepts connections; sets
# SERVER_PID (the server itself: ip netns exec execs it).
start_server() {
	local name=$1 host=$2 port=$3 ns=$4 i pre=()
	shift 4
	[[ $ns == - ]] || pre=(ip netns exec "$ns")
	"${pre[@]}" "$@" </dev/null >"$LOGS/server-$name.log" 2>&1 &
	SERVER_PID=$!
	for ((i = 0; i < 300; i++)); do
		kill -0 "$SERVER_PID" 2>/dev/null || { tail "$LOGS/server-$name.log" >&2; die "server $name exited"; }
		"${pre[@]}" timeout 1 bash -c "</dev/tcp/$host/$port" 2>/dev/null && return
		sleep 0.1
	done
	die "server $name does not listen on $host:$port"
}
stop_server() {
	[[ -n ${SERVER_PID:-} ]] || return 0
	kill -TERM "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=
}
# server_cpu: the server's CPU time so far in seconds, to the microsecond:
# the sum over its threads of the nanoseconds on a CPU in schedstat (Go
# keeps its threads), where /proc/PID/stat counts 10 ms ticks, a quarter
# of what a no-change backup costs the server; the ticks where schedstat
# is missing (a kernel without CONFIG_SCHED_INFO).
server_cpu() {
	local p=${SERVER_PID:-}
	if [[ -n $p && -r /proc/$p/task/$p/schedstat ]]; then
		cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{ns += $1} END {printf "%.6f", ns / 1e9}'
	elif [[ -n $p && -r /proc/$p/stat ]]; then
		awk -v t="$CLK" '{printf "%.6f", ($14 + $15) / t}' "/proc/$p/stat"
	else
		echo NA
	fi
}

floe_token() { # ROOT REPO HOST ROLE FILE
	"$FLOE" serve token add --root "$1" --repo "$2" --host "$3" --role "$4" >"$5" 2>>"$LOGS/tokens.log" ||
		die "floe serve token add failed, see $LOGS/tokens.log"
	chmod 600 "$5"
}

# ---------------------------------------------------------------- measuring
# row SECTION DS TOOL STEP WALL CPU RSS_KB SERVER_CPU BYTES LOAD1 STATUS
row() { (IFS=$'\t'; echo "$*") >>"$RES"; }

# measure SECTION DS TOOL STEP CMD...: run CMD under GNU time (wall, client
# CPU = user + sys of it and its children, peak RSS), with the server's CPU
# time (SERVER_PID) over the same interval and the 1-minute load average at
# the start. Returns CMD's status.
measure() {
	local sec=$1 ds=$2 tool=$3 step=$4 tf=$RUN/time.out log load s0 s1 t0 t1 wall u s kb cpu scpu=NA rc=0 TIMEFORMAT='%3U %3S' cu cs
	shift 4
	log=$LOGS/$sec-$ds-$tool-$step.log
	rm -f "$tf"
	settle # bench/run.sh: a sync
	load=$(cut -d' ' -f1 /proc/loadavg)
	printf '$ %s\n' "$*" >"$log"
	s0=$(server_cpu)
	t0=${EPOCHREALTIME/,/.}
	# bash's time of GNU time: the client's CPU to the millisecond (GNU
	# time prints it in 10 ms steps), GNU time's own 1-2 ms included
	{ time "$TIME" -f '%e %U %S %M' -o "$tf" "$@" </dev/null >>"$log" 2>&1; } 2>"$tf.cpu" || rc=$?
	t1=${EPOCHREALTIME/,/.}
	s1=$(server_cpu)
	read -r wall u s kb < <(tail -n 1 "$tf") || true
	read -r cu cs < <(tail -n 1 "$tf.cpu") || true
	[[ $cu =~ ^[0-9.]+$ && $cs =~ ^[0-9.]+$ ]] && u=$cu s=$cs
	# the wall time to the millisecond: GNU time's 10 ms steps are a
	# quarter of a 0.04 s no-change backup, and the serve ÷ local ratio
	# of one is what the target is about
	[[ $wall =~ ^[0-9.]+$ ]] && wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') || wall=NA
	[[ $kb =~ ^[0-9]+$ ]] || kb=NA
	if [[ $u =~ ^[0-9.]+$ && $s =~ ^[0-9.]+$ ]]; then cpu=$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%.3f", u + s}'); else cpu=NA; fi
	[[ $s0 == NA || $s1 == NA ]] || scpu=$(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.3f", b - a}')
	if ((rc == 0)); then
		row "$sec" "$ds" "$tool" "$step" "$wall" "$cpu" "$kb" "$scpu" NA "$load" ok
		say "  $sec $ds $tool $step: ${wall}s wall, ${cpu}s CPU, server ${scpu}s CPU (load $load)"
	else
		row "$sec" "$ds" "$tool" "$step" "$wall" "$cpu" "$kb" "$scpu" NA "$load" FAIL
		say "  FAIL: $sec $ds $tool $step exited $rc, log $log:"
		tail -n 15 "$log" | sed 's/^/    /' >&2
		FAILED=1
	fi
	return $rc
}

# check_restore SECTION DS TOOL: the restore in DST matches SRC (run.sh's
# restored_root and listing: contents, names, types, modes, sizes, mtimes).
check_restore() {
	local root log=$LOGS/$1-$2-$3-verify.log
	root=$(restored_root "$SRC" "$DST")
	if { diff -r -q --no-dereference "$SRC" "$root" && diff <(listing "$SRC") <(listing "$root"); } >"$log" 2>&1; then
		row "$1" "$2" "$3" verify NA NA NA NA NA NA ok
		say "  $1 $2 $3 verify: restore matches source"
	else
		row "$1" "$2" "$3" verify NA NA NA NA NA NA MISMATCH
		FAILED=1
		say "  !!!!!!!! VERIFY FAILED: $3 restore of $2 ($1) differs from the source, see $log !!!!!!!!"
	fi
}

# client TOOL: fresh caches and config for one tool and data set, in $BASE.
fresh_client() {
	rm -rf "$BASE"
	mkdir -p "$BASE/cache" "$BASE/config" "$DST"
	export XDG_CACHE_HOME=$BASE/cache XDG_CONFIG_HOME=$BASE/config
	export RESTIC_PASSWORD_FILE=$PW RESTIC_CACHE_DIR=$BASE/cache/restic
}

# cycle SECTION DS KIND TOOL STORE CLIENT...: init, backup, no-change backup,
# restore and check, then a listing of the snapshot (ls -l latest: a walk of
# every tree, what browsing a remote repository costs), with CLIENT (the command and its repository options) of
# KIND floe or restic; STORE is the directory that holds the repository's
# bytes (its size after the first backup is what the server ingested).
cycle() {
	local sec=$1 ds=$2 kind=$3 tool=$4 store=$5 init=(init)
	shift 5
	SRC=$DATA/$ds BASE=$RUN/c/$sec-$ds-$tool-$REP DST=$RUN/c/$sec-$ds-$tool-$REP/restore
	fresh_client
	fill_page_cache # bench/run.sh: the last cycle's deletions freed memory
	say "$sec $ds: $tool (run $REP/$REMOTE_REPEAT)"
	[[ $kind == restic ]] && init=(init --repository-version 2)
	measure "$sec" "$ds" "$tool" init "$@" "${init[@]}" || return 0
	measure "$sec" "$ds" "$tool" backup1 "$@" backup "$SRC" || return 0
	row "$sec" "$ds" "$tool" stored NA NA NA NA "$(du -sb "$store" | cut -f1)" NA ok
	measure "$sec" "$ds" "$tool" backup2 "$@" backup "$SRC" || return 0
	measure "$sec" "$ds" "$tool" restore "$@" restore latest --target "$DST" || return 0
	check_restore "$sec" "$ds" "$tool"
	measure "$sec" "$ds" "$tool" ls "$@" ls -l latest || true
	# removed at the end of the run (see bench/run.sh, cleanup_tool: each
	# restore would pay for the deletion of the one before it), unless it
	# holds a few big files: three runs of the large set would keep 30 GB,
	# and deleting two files costs the next step nothing measurable
	if (($(find "$BASE" | head -n 1000 | wc -l) < 1000)); then
		rm -rf "$BASE"
	else
		LATER+=("$BASE")
	fi
}
LATER=()

# ---------------------------------------------------------------- parts
# rotated N WORD...: the words, starting with the Nth (counted from 1,
# round the end). The loopback and S3 parts run their tools' cycles in an
# order that rotates with the repetition, so that no tool always runs
# first: the VM's speed drifts during a run (Dec 2: the served goroot
# restore took 1.05, 1.87 and 1.97 s in three cycles that each followed
# the local one, whose restores took 0.90-1.24 s), and a ratio of two
# tools should not carry the drift between their places in the order.
rotated() {
	local n=$1 i
	shift
	for ((i = 0; i < $#; i++)); do
		echo "${@:$(((n - 1 + i) % $# + 1)):1}"
	done
}

# The loopback part's cycles, one per tool; they use part_loopback's ds,
# srv, rs and tok.
loopback_floe_local() {
	cycle loopback "$ds" floe floe-local "$RUN/c/local-$ds/repo" \
		"$FLOE" -r "$RUN/c/local-$ds/repo" --password-file "$PW"
	rm -rf "$RUN/c/local-$ds"
}

loopback_floe_serve() {
	local port
	port=$(free_port)
	start_server "floe-$ds" 127.0.0.1 "$port" - "$FLOE" serve --root "$srv" --listen "127.0.0.1:$port" \
		--tls-cert "$CERT" --tls-key "$CERTKEY"
	floe_token "$srv" "$ds" bench admin "$tok"
	cycle loopback "$ds" floe floe-serve "$srv/$ds" \
		"$FLOE" -r "https://127.0.0.1:$port/$ds" --token-file "$tok" --server-fingerprint "$FP" --password-file "$PW"
	stop_server
	rm -rf "${srv:?}/$ds"
}

loopback_restic_rest() {
	local port
	port=$(free_port)
	start_server "rest-$ds" 127.0.0.1 "$port" - "$REST_SERVER_BIN" --path "$rs" --listen "127.0.0.1:$port" \
		--append-only --no-auth --tls --tls-cert "$CERT" --tls-key "$CERTKEY"
	cycle loopback "$ds" restic restic-rest "$rs/$ds" \
		restic -r "rest:https://127.0.0.1:$port/$ds/" --cacert "$CERT"
	stop_server
	rm -rf "${rs:?}/$ds"
}

part_loopback() {
	local ds tool srv=$RUN/floe-serve rs=$RUN/rest-server tok=$RUN/admin.token
	mkdir -p "$srv" "$rs"
	for ds in $DATASETS; do
		say "$ds: warming the page cache"
		warm "$DATA/$ds"
		for ((REP = 1; REP <= REMOTE_REPEAT; REP++)); do
			SERVER_PID=
			for tool in $(rotated "$REP" floe_local floe_serve restic_rest); do
				"loopback_$tool"
			done
		done
	done
}

part_s3() {
	local ds port tool dir=$RUN/s3
	mkdir -p "$dir"
	port=$(free_port)
	export AWS_ACCESS_KEY_ID=floebench$RANDOM AWS_SECRET_ACCESS_KEY=secret$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
	export ROOT_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID ROOT_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
	start_server versitygw 127.0.0.1 "$port" - "$VERSITYGW" --port "127.0.0.1:$port" --quiet posix "$dir"
	for ds in $S3_DATASETS; do
		say "$ds: warming the page cache"
		warm "$DATA/$ds"
		for ((REP = 1; REP <= REMOTE_REPEAT; REP++)); do
			for tool in $(rotated "$REP" floe restic); do
				case $tool in
				floe) cycle s3 "$ds" floe floe-s3 "$dir/floe-$ds" \
					"$FLOE" -r "s3:http://127.0.0.1:$port/floe-$ds" --password-file "$PW" ;;
				restic) cycle s3 "$ds" restic restic-s3 "$dir/restic-$ds" \
					restic -r "s3:http://127.0.0.1:$port/restic-$ds" ;;
				esac
			done
			rm -rf "${dir:?}/floe-$ds" "${dir:?}/restic-$ds"
		done
	done
	REP=1
	stop_server
	unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY ROOT_ACCESS_KEY_ID ROOT_SECRET_ACCESS_KEY
}

# BENCH_CLIENTS hosts, each with its own backup token, cache and tree (8
# random files of 256 KiB), back up through one server at once with a
# write-only key, as e2e's TestServerManyClients does.
part_clients() {
	local srv=$RUN/clients-srv data=$WORK/clients-$CLIENTS port i failed=0 hwm scpu s0 s1 t0 t1 load key=$RUN/clients/wo.key
	if [[ ! -f $data/.ready ]]; then
		say "preparing $CLIENTS client trees"
		rm -rf "$data"
		for ((i = 0; i < CLIENTS; i++)); do
			mkdir -p "$data/h$i"
			for f in 1 2 3 4 5 6 7 8; do head -c $((256 * 1024)) /dev/urandom >"$data/h$i/f$f"; done
		done
		touch "$data/.ready"
	fi
	mkdir -p "$srv" "$RUN/clients"
	BASE=$RUN/clients/admin DST=$RUN/clients/none
	fresh_client
	port=$(free_port)
	start_server clients 127.0.0.1 "$port" - "$FLOE" serve --root "$srv" --listen "127.0.0.1:$port" \
		--tls-cert "$CERT" --tls-key "$CERTKEY"
	local url=https://127.0.0.1:$port/fleet
	floe_token "$srv" fleet admin admin "$RUN/clients/admin.token"
	"$FLOE" -r "$url" --token-file "$RUN/clients/admin.token" --server-fingerprint "$FP" --password-file "$PW" init \
		>"$LOGS/clients-init.log" 2>&1 || die "clients: init failed, see $LOGS/clients-init.log"
	"$FLOE" -r "$url" --token-file "$RUN/clients/admin.token" --server-fingerprint "$FP" --password-file "$PW" \
		key add --write-only --new-key-file "$key" >>"$LOGS/clients-init.log" 2>&1 || die "clients: key add failed"
	for ((i = 0; i < CLIENTS; i++)); do floe_token "$srv" fleet "h$i" backup "$RUN/clients/h$i.token"; done
	say "clients: $CLIENTS concurrent backups through floe serve"
	sync
	load=$(cut -d' ' -f1 /proc/loadavg)
	s0=$(server_cpu)
	t0=$(date +%s.%N)
	local pids=()
	for ((i = 0; i < CLIENTS; i++)); do
		(XDG_CACHE_HOME=$RUN/clients/cache$i XDG_CONFIG_HOME=$RUN/clients/config$i \
			"$FLOE" -r "$url" --token-file "$RUN/clients/h$i.token" --server-fingerprint "$FP" --key-file "$key" \
			backup "$data/h$i" </dev/null >"$LOGS/clients-h$i.log" 2>&1) &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i" || failed=$((failed + 1)); done
	t1=$(date +%s.%N)
	s1=$(server_cpu)
	hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")
	scpu=$(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.2f", b - a}')
	local wall status=ok
	wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
	if ((failed)) || ! "$FLOE" -r "$url" --token-file "$RUN/clients/admin.token" --server-fingerprint "$FP" \
		--password-file "$PW" check --read-data >"$LOGS/clients-check.log" 2>&1; then
		status=FAIL FAILED=1
		say "  FAIL: clients: $failed backups failed or check --read-data failed (logs $LOGS/clients-*)"
	fi
	row clients "$CLIENTS" floe-serve backup "$wall" NA "$hwm" "$scpu" "$(du -sb "$srv/fleet" | cut -f1)" "$load" "$status"
	say "  clients: $CLIENTS backups in ${wall}s, floe serve peak RSS $((hwm / 1024)) MiB, ${scpu}s CPU (load $load)"
	stop_server
	rm -rf "$srv" "$RUN/clients"
}

far_cleanup() {
	farlink_down
	if [[ -n ${FAR_ALLOWED_OLD:-} ]]; then
		sysctl -qw "net.ipv4.tcp_allowed_congestion_control=$FAR_ALLOWED_OLD" || true
		FAR_ALLOWED_OLD=
	fi
	ip netns pids "$NS_SRV" 2>/dev/null | xargs -r kill 2>/dev/null || true
	ip netns pids "$NS_CLI" 2>/dev/null | xargs -r kill 2>/dev/null || true
	ip netns del "$NS_SRV" 2>/dev/null || true
	ip netns del "$NS_CLI" 2>/dev/null || true
}

# farlink_up TAG DELAY LOSS: start bench/farlink (in this, the root,
# namespace) with two TUN devices, move each into its namespace (farlink's
# descriptors keep working: a TUN device belongs to its file, not to a
# namespace) and give them the link's addresses. Packets from one
# namespace go to farlink, which delays, limits and drops them and writes
# them into the other: TCP stays end to end.
farlink_up() {
	local tag=$1 delay=$2 loss=$3 log=$LOGS/farlink-$1.log i ns dev
	"$FARLINK" link --a "$FAR_TUN_S" --b "$FAR_TUN_C" --delay "$delay" --rate "$FAR_RATE" --loss "$loss" \
		--limit "$FAR_LIMIT" --mtu "$FAR_MTU" --seed 1 </dev/null >"$log" 2>&1 &
	FARLINK_PID=$!
	for ((i = 0; i < 100; i++)); do
		grep -qs '^farlink: ready' "$log" && break
		kill -0 "$FARLINK_PID" 2>/dev/null || { FARLINK_PID=; say "far: farlink exited: $(tail -n 2 "$log")"; return 1; }
		sleep 0.1
	done
	grep -q '^farlink: ready' "$log" || { say "far: farlink not ready after 10 s, see $log"; return 1; }
	ip link set "$FAR_TUN_S" netns "$NS_SRV"
	ip link set "$FAR_TUN_C" netns "$NS_CLI"
	ip -n "$NS_SRV" addr add "$FAR_SRV_IP/30" dev "$FAR_TUN_S"
	ip -n "$NS_CLI" addr add "$FAR_CLI_IP/30" dev "$FAR_TUN_C"
	for ns in "$NS_SRV:$FAR_TUN_S" "$NS_CLI:$FAR_TUN_C"; do
		dev=${ns#*:} ns=${ns%%:*}
		# no IPv6 chatter (router solicitations, DAD) on the link
		ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1" 2>/dev/null || true
		# The device's queue is where packets wait for farlink's reader;
		# TUN drops beyond it, outside the model. Senders are not held
		# back there (TUN orphans its packets), so a burst of many
		# connections can fill it at memory speed while the reader waits
		# for a core: 500 packets (the default) are nothing, 10,000 still
		# overflowed on a loaded machine. As many as farlink may hold;
		# its drops are counted per measure and reported.
		ip -n "$ns" link set "$dev" txqueuelen "$FAR_LIMIT" up
	done
}

# farlink_down: stop farlink (its devices go with it); on SIGTERM it writes
# its counters and CPU time to its log (farlink_stats reads them).
farlink_down() {
	[[ -n ${FARLINK_PID:-} ]] || return 0
	kill -TERM "$FARLINK_PID" 2>/dev/null || true
	wait "$FARLINK_PID" 2>/dev/null || true
	FARLINK_PID=
}

# farlink_stats TAG: one line of farlink's counters from its log (after
# farlink_down) and the TUN devices' own drops (read before).
farlink_stats() {
	awk '/^farlink: .*->/ {for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
			printf "%s%s %s packets (%.1f MiB), lost %s, overflow %s, over the MTU %s", sep, ($2 ~ /^flrc/ ? "client→server" : "server→client"),
				v["forwarded_packets"], v["forwarded_bytes"] / 1048576, v["lost"], v["overflow"], v["oversize"]; sep = "; " }
		/^farlink: cpu_s=|^farlink: cpu_user_s=/ {for (i = 2; i <= NF; i++) { split($i, kv, "="); c[kv[1]] = kv[2] }
			printf "; farlink CPU %s s (user %s, system %s) in %s s", c["cpu_s"], c["cpu_user_s"], c["cpu_sys_s"], c["wall_s"]}' \
		"$LOGS/farlink-$1.log"
}

# tun_drop_count: the TUN devices' drops so far (both sides), or NA.
tun_drop_count() {
	[[ ${FAR_EMU:-} == farlink ]] || { echo NA; return; }
	local a b
	a=$(ip netns exec "$NS_SRV" cat "/sys/class/net/$FAR_TUN_S/statistics/tx_dropped" 2>/dev/null) || a=
	b=$(ip netns exec "$NS_CLI" cat "/sys/class/net/$FAR_TUN_C/statistics/tx_dropped" 2>/dev/null) || b=
	if [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]]; then echo $((a + b)); else echo NA; fi
}

# tun_drops: packets the TUN devices dropped before farlink read them.
tun_drops() {
	local a b
	a=$(ip netns exec "$NS_SRV" cat "/sys/class/net/$FAR_TUN_S/statistics/tx_dropped" 2>/dev/null || echo "?")
	b=$(ip netns exec "$NS_CLI" cat "/sys/class/net/$FAR_TUN_C/statistics/tx_dropped" 2>/dev/null || echo "?")
	echo "TUN queue drops (before farlink): server side $a, client side $b"
}

# far_tcp LABEL STREAMS CC: plain TCP from the client's namespace to the
# sink for FAR_TCP_SECONDS; the figure goes to FAR_NOTES.
far_tcp() {
	local out cc=() used d0 d1
	[[ -z $3 ]] || cc=(--cc "$3")
	d0=$(tun_drop_count)
	if out=$(ip netns exec "$NS_CLI" "$FARLINK" send --to "$FAR_SRV_IP:$FAR_PORT" --streams "$2" "${cc[@]}" \
		--seconds "$FAR_TCP_SECONDS" 2>&1); then
		echo "$out" >>"$LOGS/far-tcp.log"
		used=$(sed -n 's/.* cc=\([^ ]*\).*/\1/p' <<<"$out")
		out=$(awk '{for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
			printf "%s Mbit/s (%.1f MiB in %s s)", v["mbit_s"], v["bytes"] / 1048576, v["seconds"]}' <<<"$out")
	else
		echo "$out" >>"$LOGS/far-tcp.log"
		out="failed: $(tail -n 1 <<<"$out")"
	fi
	d1=$(tun_drop_count)
	[[ $d0 == NA || $d1 == NA || $d0 == "$d1" ]] || out+=" — $((d1 - d0)) packets dropped by the TUN queues, outside the model"
	FAR_NOTES+=("$1, $2 TCP stream(s), ${used:-$3}: $out")
	say "far: $1, $2 stream(s), ${used:-$3}: $out"
}

# far_sink_start / far_sink_stop: farlink's TCP sink in the server's namespace.
far_sink_start() {
	local i
	ip netns exec "$NS_SRV" "$FARLINK" sink --listen "$FAR_SRV_IP:$FAR_PORT" >"$LOGS/far-sink.log" 2>&1 &
	FAR_SINK_PID=$!
	for ((i = 0; i < 100; i++)); do
		ip netns exec "$NS_CLI" timeout 2 bash -c "</dev/tcp/$FAR_SRV_IP/$FAR_PORT" 2>/dev/null && return 0
		sleep 0.1
	done
	say "far: the TCP sink does not answer over the link, see $LOGS/far-sink.log"
	return 1
}
far_sink_stop() {
	kill "$FAR_SINK_PID" 2>/dev/null || true
	wait "$FAR_SINK_PID" 2>/dev/null || true
}

# far_allow_cc: a namespace other than the first may only make a
# congestion control its default when tcp_allowed_congestion_control (one
# list for the whole machine) names it; add the run's, put the list back at
# exit (far_cleanup).
FAR_ALLOWED_OLD=
far_allow_cc() {
	local cur cc add=
	cur=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
	for cc in $FAR_CCS; do [[ " $cur " == *" $cc "* ]] || add+=" $cc"; done
	[[ -n $add ]] || return 0
	FAR_ALLOWED_OLD=$cur
	sysctl -qw "net.ipv4.tcp_allowed_congestion_control=$cur$add" ||
		say "far: could not allow$add in net.ipv4.tcp_allowed_congestion_control"
}

# far_set_cc CC: the default congestion control of both namespaces, which
# floe, restic and their servers use; fails when the kernel refuses it.
far_set_cc() {
	local ns
	for ns in "$NS_SRV" "$NS_CLI"; do
		ip netns exec "$ns" sysctl -qw "net.ipv4.tcp_congestion_control=$1" 2>>"$LOGS/far-cc.log" || {
			say "far: cannot make $1 the congestion control of $ns: $(tail -n 1 "$LOGS/far-cc.log")"
			return 1
		}
	done
}

# Two namespaces joined by a link that delays, limits and drops in each
# direction (so the round trip is twice the delay): a veth pair with netem
# on each end when the kernel has netem, else bench/farlink between two TUN
# devices. Then the link is measured: RTT, plain TCP (1 and 16 streams,
# cubic and bbr), and with farlink its ceiling (delay and loss 0).
far_setup() {
	local vs=vrbs$$ vc=vrbc$$ cc ns
	FAR_NOTES=()
	FAR_EMU=
	ip netns add "$NS_SRV"
	ip netns add "$NS_CLI"
	ip -n "$NS_SRV" link set lo up
	ip -n "$NS_CLI" link set lo up
	if ip netns exec "$NS_SRV" tc qdisc add dev lo root netem delay 1ms 2>"$LOGS/far-tc.log"; then
		ip netns exec "$NS_SRV" tc qdisc del dev lo root
		FAR_EMU=netem
		ip link add "$vs" type veth peer name "$vc"
		ip link set "$vs" netns "$NS_SRV"
		ip link set "$vc" netns "$NS_CLI"
		ip -n "$NS_SRV" addr add "$FAR_SRV_IP/30" dev "$vs"
		ip -n "$NS_CLI" addr add "$FAR_CLI_IP/30" dev "$vc"
		ip -n "$NS_SRV" link set "$vs" up
		ip -n "$NS_CLI" link set "$vc" up
		ip netns exec "$NS_SRV" tc qdisc add dev "$vs" root "${FAR_NETEM[@]}"
		ip netns exec "$NS_CLI" tc qdisc add dev "$vc" root "${FAR_NETEM[@]}"
		FAR_SHAPE="netem delay $FAR_DELAY rate $FAR_RATE loss $FAR_LOSS limit $FAR_LIMIT on each end of a veth pair (round trip twice the delay)"
	elif [[ -c /dev/net/tun ]]; then
		FAR_EMU=farlink
		say "far: no netem in this kernel ($(head -n 1 "$LOGS/far-tc.log")): user-space netem, bench/farlink"
		# The emulator's own ceiling: the same link without delay and loss.
		farlink_up ceiling 0ms 0 || return 1
		far_sink_start || return 1
		far_tcp "emulator ceiling (delay 0, loss 0, rate $FAR_RATE)" 4 ""
		far_sink_stop
		local drops
		drops=$(tun_drops)
		farlink_down
		FAR_NOTES+=("ceiling run: $(farlink_stats ceiling); $drops")
		farlink_up far "$FAR_DELAY" "$FAR_LOSS" || return 1
		FAR_SHAPE="user-space netem (bench/farlink, two TUN devices, packets forwarded one by one): $FAR_DELAY each way, rate $FAR_RATE, $FAR_LOSS random loss each way, limit $FAR_LIMIT packets, MTU $FAR_MTU"
	else
		FAR_SHAPE="not set up: no netem in this kernel ($(head -n 1 "$LOGS/far-tc.log")) and no /dev/net/tun for bench/farlink"
		say "far: $FAR_SHAPE"
		return 1
	fi
	FAR_BUFS="client tcp_wmem $(ip netns exec "$NS_CLI" sysctl -n net.ipv4.tcp_wmem | tr '\t' ' '), server tcp_rmem $(ip netns exec "$NS_SRV" sysctl -n net.ipv4.tcp_rmem | tr '\t' ' ')"
	far_allow_cc
	far_sink_start || return 1
	if command -v ping >/dev/null; then
		ip netns exec "$NS_CLI" ping -c 5 -q "$FAR_SRV_IP" >"$LOGS/far-ping.log" 2>&1 || true
		FAR_RTT="$(awk -F/ '/^rtt/ {print $5 " ms"}' "$LOGS/far-ping.log") (ping, average of 5)"
	else
		ip netns exec "$NS_CLI" "$FARLINK" rtt --to "$FAR_SRV_IP:$FAR_PORT" --count 5 >"$LOGS/far-rtt.log" 2>&1 || true
		FAR_RTT=$(awk '{for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
			if (v["median_ms"] != "") printf "%s ms (median of 5 TCP connects; min %s, max %s)", v["median_ms"], v["min_ms"], v["max_ms"]}' "$LOGS/far-rtt.log")
		[[ -n $FAR_RTT ]] || FAR_RTT="not measured ($(tail -n 1 "$LOGS/far-rtt.log"))"
	fi
	say "far: $FAR_SHAPE; RTT $FAR_RTT"
	# What TCP itself gets over this link, without floe or restic, with
	# each congestion control of the run (bbr does not back off on random
	# loss, cubic does).
	for cc in $FAR_CCS; do
		far_tcp "plain TCP over the far link" 1 "$cc"
		far_tcp "plain TCP over the far link" 16 "$cc"
	done
	far_sink_stop
}

part_far() {
	local data=$WORK/far-$FAR_MB srv=$RUN/far-floe rs=$RUN/far-rest tok=$RUN/far.token n in=(ip netns exec "$NS_CLI")
	if [[ ! -f $data/.ready ]]; then
		say "preparing far: $FAR_MB MiB random"
		rm -rf "$data"
		mkdir -p "$data"
		head -c $((FAR_MB * MiB)) /dev/urandom >"$data/random.bin"
		touch "$data/.ready"
	fi
	if ! far_setup; then
		row far "$FAR_MB" link setup NA NA NA NA NA NA FAIL
		FAILED=1
		far_cleanup
		return 0
	fi
	DATA_FAR=$data
	warm "$data"
	mkdir -p "$srv" "$rs"
	local cc
	for cc in $FAR_CCS; do
		if ! far_set_cc "$cc"; then
			row "far-$cc" "$FAR_MB" link cc NA NA NA NA NA NA FAIL
			FAILED=1
			continue
		fi
		FAR_SEC=far-$cc
		start_server far-floe "$FAR_SRV_IP" 8443 "$NS_SRV" "$FLOE" serve --root "$srv" --listen "$FAR_SRV_IP:8443" \
			--tls-cert "$CERT" --tls-key "$CERTKEY"
		for n in 1 4 16; do
			floe_token "$srv" "c$n" bench admin "$tok"
			far_backup "floe-c$n" "$srv/c$n" "${in[@]}" "$FLOE" -r "https://$FAR_SRV_IP:8443/c$n" --token-file "$tok" \
				--server-fingerprint "$FP" --password-file "$PW" --connections "$n"
			rm -rf "${srv:?}/c$n"
		done
		stop_server
		start_server far-rest "$FAR_SRV_IP" 8000 "$NS_SRV" "$REST_SERVER_BIN" --path "$rs" --listen "$FAR_SRV_IP:8000" \
			--append-only --no-auth --tls --tls-cert "$CERT" --tls-key "$CERTKEY"
		far_backup restic-rest "$rs/far" "${in[@]}" restic -r "rest:https://$FAR_SRV_IP:8000/far/" --cacert "$CERT"
		stop_server
		rm -rf "${rs:?}/far"
	done
	if [[ $FAR_EMU == farlink ]]; then
		local drops
		drops=$(tun_drops)
		farlink_down
		FAR_NOTES+=("far link, whole part: $(farlink_stats far); $drops")
	fi
	far_cleanup
}

# far_backup TOOL STORE CLIENT...: init, then one timed backup of the far
# data, with farlink's CPU time over the backup (row linkcpu, field 6) and
# the TUN queues' drops (field 9).
far_backup() {
	local tool=$1 store=$2 init=(init) l0 l1 d0 d1
	shift 2
	SRC=$DATA_FAR BASE=$RUN/c/$FAR_SEC-$tool DST=$RUN/c/far-$tool/restore
	fresh_client
	[[ $tool == restic* ]] && init=(init --repository-version 2)
	say "$FAR_SEC: $tool"
	measure "$FAR_SEC" "$FAR_MB" "$tool" init "$@" "${init[@]}" || return 0
	l0=$(pid_ticks "$FARLINK_PID")
	d0=$(tun_drop_count)
	measure "$FAR_SEC" "$FAR_MB" "$tool" backup1 timeout "$FAR_TIMEOUT" "$@" backup "$SRC" || return 0
	l1=$(pid_ticks "$FARLINK_PID")
	d1=$(tun_drop_count)
	if [[ $l0 != NA && $l1 != NA ]]; then
		if [[ $d0 == NA || $d1 == NA ]]; then d1=NA; else d1=$((d1 - d0)); fi
		row "$FAR_SEC" "$FAR_MB" "$tool" linkcpu NA "$(awk -v a="$l0" -v b="$l1" -v t="$CLK" 'BEGIN {printf "%.2f", (b - a) / t}')" NA NA "$d1" NA ok
	fi
	row "$FAR_SEC" "$FAR_MB" "$tool" stored NA NA NA NA "$(du -sb "$store" | cut -f1)" NA ok
	rm -rf "$BASE"
}
pid_ticks() { # PID: its user + system clock ticks, or NA
	if [[ -n $1 && -r /proc/$1/stat ]]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo NA; fi
}

# ---------------------------------------------------------------- report
# val SECTION DS TOOL STEP FIELD: a field of the ok rows (5 wall, 6 CPU, 7
# RSS, 8 server CPU, 9 bytes, 10 load), the median when the step ran more
# than once (BENCH_REMOTE_REPEAT; of two, their mean), or NA.
val() {
	awk -F'\t' -v a="$1" -v b="$2" -v c="$3" -v d="$4" -v f="$5" '
		$1 == a && $2 == b && $3 == c && $4 == d && $11 == "ok" && $f ~ /^[0-9.]+$/ {
			x = $f + 0
			for (i = n + 0; i > 0 && v[i - 1] > x; i--) v[i] = v[i - 1]
			v[i] = x; n++
		}
		END {
			if (n == 0) { print "NA"; exit }
			m = (n % 2) ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2
			print (m == int(m)) ? sprintf("%d", m) : sprintf((f == 5 || f == 6 || f == 8) && m < 1 ? "%.3f" : "%.2f", m)
		}' "$RES"
}
# calc EXPR with x and y; NA when either is missing or a divisor is 0.
calc() {
	awk -v x="$2" -v y="$3" "BEGIN { if (x == \"NA\" || y == \"NA\" || x == \"\" || y == \"\") { print \"NA\"; exit }
		if (\"$1\" == \"div\") { if (y + 0 == 0) print \"NA\"; else printf \"%.2f\", x / y }
		else printf \"%.2f\", x + y }"
}
# verdict RATIO TARGET: met / NOT MET / not measured (ratio above 1: floe better).
verdict() {
	[[ $1 == NA ]] && { echo "not measured"; return; }
	awk -v r="$1" -v t="$2" 'BEGIN {print (r >= t) ? "met" : "NOT MET"}'
}
# judge WALL_RATIO CPU_RATIO TARGET: one line for both measures.
judge() {
	local w c
	w=$(verdict "$1" "$3")
	c=$(verdict "$2" "$3")
	if [[ $w == "$c" ]]; then echo "$w"; else echo "wall: $w; CPU: $c"; fi
}
fmt() { [[ $1 == NA ]] && echo "–" || echo "$1"; }
gib() { awk -v b="$1" 'BEGIN {printf "%.2f", b / 1073741824}'; }

step_table() { # SECTION DS TOOL...
	local sec=$1 ds=$2 t s
	shift 2
	echo "| tool | step | wall s | client CPU s | server CPU s | peak RSS MiB | load (1 min) |"
	echo "|---|---|---|---|---|---|---|"
	for t in "$@"; do
		for s in init backup1 backup2 restore ls; do
			local rss
			rss=$(val "$sec" "$ds" "$t" "$s" 7)
			[[ $rss == NA ]] || rss=$((rss / 1024))
			echo "| $t | $s | $(fmt "$(val "$sec" "$ds" "$t" "$s" 5)") | $(fmt "$(val "$sec" "$ds" "$t" "$s" 6)") | $(fmt "$(val "$sec" "$ds" "$t" "$s" 8)") | $(fmt "$rss") | $(fmt "$(val "$sec" "$ds" "$t" "$s" 10)") |"
		done
		local st v
		st=$(val "$sec" "$ds" "$t" stored 9)
		v=$(awk -F'\t' -v a="$sec" -v b="$ds" -v c="$t" '$1 == a && $2 == b && $3 == c && $4 == "verify" && !seen[$11]++ {printf "%s%s", sep, $11; sep = ", "}' "$RES")
		echo "| $t | stored after backup1 | $( [[ $st == NA ]] && echo – || echo "$(gib "$st") GiB") | | | | restore check: ${v:-not run} |"
	done
	echo
}

# ratio_row LABEL SEC DS STEP RESTIC_TOOL FLOE_TOOL TARGET: restic ÷ floe,
# wall and CPU (client + server CPU for remote tools).
ratio_row() {
	local label=$1 sec=$2 ds=$3 step=$4 rt=$5 ft=$6 target=$7 rw fw rc fc wr cr
	rw=$(val "$sec" "$ds" "$rt" "$step" 5)
	fw=$(val "$sec" "$ds" "$ft" "$step" 5)
	rc=$(cpu_total "$sec" "$ds" "$rt" "$step")
	fc=$(cpu_total "$sec" "$ds" "$ft" "$step")
	wr=$(calc div "$rw" "$fw")
	cr=$(calc div "$rc" "$fc")
	echo "| $label | $ds | $(fmt "$wr") | $(fmt "$cr") | ≥ $target | $(judge "$wr" "$cr" "$target") |"
}
cpu_total() {
	local c s
	c=$(val "$@" 6)
	s=$(val "$@" 8)
	[[ $s == NA ]] && { echo "$c"; return; }
	calc add "$c" "$s"
}

write_report() {
	local ds sec
	{
		echo "# floe remote: side by side with restic"
		echo
		echo "Written by \`bench/remote.sh\` (see bench/README.md, \"Remote benchmarks\"). Every figure of"
		echo "the loopback and S3 parts is the median of $REMOTE_REPEAT run(s) (BENCH_REMOTE_REPEAT),"
		echo "each a fresh repository and cache; the other parts ran once."
		echo "Ratios are restic ÷ floe: above 1, floe is faster or uses less CPU."
		echo "\"CPU\" is the client's user + system time (getrusage, to the millisecond), plus the"
		echo "server's (its threads' schedstat over the same interval) for remote repositories: on a shared,"
		echo "loaded machine wall time mostly measures the scheduler, CPU time the work."
		echo "A target is met when both wall and CPU ratios reach it; when they disagree"
		echo "both verdicts are given."
		echo
		echo "## Machine and run"
		echo
		echo "| | |"
		echo "|---|---|"
		sed 's/\t/ | /; s/^/| /; s/$/ |/' "$RUN/meta.tsv"
		echo
		if has_part loopback; then
			echo "## Loopback: floe (local path, floe serve) and restic (rest-server --append-only)"
			echo
			echo "Both servers on 127.0.0.1 with the same TLS certificate (ECDSA P-256)."
			echo
			for ds in $DATASETS; do
				echo "### $ds"
				echo
				step_table loopback "$ds" floe-local floe-serve restic-rest
			done
		fi
		if has_part s3; then
			echo "## S3: floe and restic to the same versitygw (posix backend) on loopback"
			echo
			echo "Server CPU here is versitygw's."
			echo
			for ds in $S3_DATASETS; do
				echo "### $ds (S3)"
				echo
				step_table s3 "$ds" floe-s3 restic-s3
			done
		fi
		if has_part loopback || has_part s3; then
			echo "## Targets"
			echo
			echo "| measure | data set | wall ratio | CPU ratio | target | verdict |"
			echo "|---|---|---|---|---|---|"
		fi
		if has_part loopback; then
			for ds in $DATASETS; do
				local t=2
				[[ $ds == large ]] && t=2.5
				ratio_row "initial backup, restic→rest-server ÷ floe→floe serve" loopback "$ds" backup1 restic-rest floe-serve "$t"
				ratio_row "no-change backup" loopback "$ds" backup2 restic-rest floe-serve 3
				ratio_row "restore" loopback "$ds" restore restic-rest floe-serve 2
			done
			for ds in $DATASETS; do
				local s w c
				for s in backup1 backup2 restore; do
					# floe serve ÷ floe local: at most 1.3 (the other way round).
					w=$(calc div "$(val loopback "$ds" floe-serve "$s" 5)" "$(val loopback "$ds" floe-local "$s" 5)")
					c=$(calc div "$(cpu_total loopback "$ds" floe-serve "$s")" "$(val loopback "$ds" floe-local "$s" 6)")
					echo "| floe serve ÷ floe local path, $s | $ds | $(fmt "$w") | $(fmt "$c") | ≤ 1.3 | $(judge "$(inv "$w")" "$(inv "$c")" 0.7692) |"
				done
			done
		fi
		if has_part s3; then
			for ds in $S3_DATASETS; do
				ratio_row "S3 initial backup" s3 "$ds" backup1 restic-s3 floe-s3 2
				ratio_row "S3 restore" s3 "$ds" restore restic-s3 floe-s3 2
			done
		fi
		echo
		if has_part loopback; then
			echo "(The floe serve ÷ local rows are floe ÷ floe, the CPU one counting the"
			echo "server's CPU too; the target is met at 1.3 or below.)"
			echo
		fi
		if has_part loopback; then
			echo "## Server CPU per GiB ingested (initial backup, loopback)"
			echo
			echo "| data set | floe serve s/GiB | rest-server s/GiB | rest-server ÷ floe serve | load (1 min) |"
			echo "|---|---|---|---|---|"
			for ds in $DATASETS; do
				local fs rs
				fs=$(calc div "$(val loopback "$ds" floe-serve backup1 8)" "$(calc div "$(val loopback "$ds" floe-serve stored 9)" "$GiB")")
				rs=$(calc div "$(val loopback "$ds" restic-rest backup1 8)" "$(calc div "$(val loopback "$ds" restic-rest stored 9)" "$GiB")")
				echo "| $ds | $(fmt "$fs") | $(fmt "$rs") | $(fmt "$(calc div "$rs" "$fs")") | $(fmt "$(val loopback "$ds" floe-serve backup1 10)") / $(fmt "$(val loopback "$ds" restic-rest backup1 10)") |"
			done
			echo
			echo "GiB ingested: the size of the repository on the server after the first backup."
			echo
		fi
		if has_part clients; then
			echo "## $CLIENTS concurrent clients through one floe serve"
			echo
			local line
			line=$(awk -F'\t' '$1 == "clients"' "$RES")
			if [[ -n $line ]]; then
				IFS=$'\t' read -r _ n _ _ w _ kb sc b l st <<<"$line"
				echo "| clients | wall s | floe serve peak RSS (VmHWM) | floe serve CPU s | stored | load (1 min) | status |"
				echo "|---|---|---|---|---|---|---|"
				echo "| $n | $w | $((kb / 1024)) MiB | $sc | $(gib "$b") GiB | $l | $st |"
				echo
				echo "Each client: its own backup token and cache, a write-only key, 8 random files of"
				echo "256 KiB; all started at once; then \`check --read-data\` of the repository."
			else
				echo "not run"
			fi
			echo
		fi
		if has_part far; then
			echo "## Far link: $FAR_MB MiB of random data between two network namespaces"
			echo
			echo "Link: ${FAR_SHAPE:-not set up}."
			echo
			echo "RTT ${FAR_RTT:-not measured}; socket buffers (bytes: min, default, max):"
			echo "${FAR_BUFS:-?}. One round of backups per TCP congestion control"
			echo "(BENCH_FAR_CC: $FAR_CCS), set as the default of both namespaces."
			echo "Server in one namespace, client in the other; restic uses its default"
			echo "5 connections to rest-server (\`-o rest.connections\`)."
			echo
			local note
			for note in "${FAR_NOTES[@]}"; do echo "- $note"; done
			((${#FAR_NOTES[@]} == 0)) || echo
			echo "| congestion control | tool | backup wall s | MiB/s | Mbit/s | client CPU s | server CPU s | link emulator CPU s | TUN drops | load (1 min) |"
			echo "|---|---|---|---|---|---|---|---|---|---|"
			local cc sec
			for cc in $FAR_CCS; do
				sec=far-$cc
				for t in floe-c1 floe-c4 floe-c16 restic-rest; do
					local w r
					w=$(val "$sec" "$FAR_MB" "$t" backup1 5)
					r=$(calc div "$FAR_MB" "$w")
					echo "| $cc | $t | $(fmt "$w") | $(fmt "$r") | $(fmt "$(calc div "$(awk -v m="$FAR_MB" 'BEGIN {printf "%.4f", m * 8.388608}')" "$w")") | $(fmt "$(val "$sec" "$FAR_MB" "$t" backup1 6)") | $(fmt "$(val "$sec" "$FAR_MB" "$t" backup1 8)") | $(fmt "$(val "$sec" "$FAR_MB" "$t" linkcpu 6)") | $(fmt "$(val "$sec" "$FAR_MB" "$t" linkcpu 9)") | $(fmt "$(val "$sec" "$FAR_MB" "$t" backup1 10)") |"
				done
			done
			echo
			echo "MiB/s and Mbit/s: MiB of source data ÷ backup wall time (random data: the"
			echo "bytes sent are about the same plus the repository's overhead). Link"
			echo "emulator CPU and TUN drops (packets lost before bench/farlink read them:"
			echo "loss beyond the model's, which makes a figure pessimistic): over the backup."
			echo
		fi
		local bad
		bad=$(awk -F'\t' '$11 != "ok" {print "- " $1 " " $2 " " $3 " " $4 ": " $11}' "$RES")
		if [[ -n $bad ]]; then
			echo "## FAILURES"
			echo
			echo "$bad"
			echo
		fi
	} >"$REMOTE_OUT"
}
inv() { [[ $1 == NA ]] && echo NA || awk -v x="$1" 'BEGIN {if (x + 0 == 0) print "NA"; else printf "%.4f", 1 / x}'; }

# ---------------------------------------------------------------- main
if has_part far && [[ $(id -u) != 0 ]]; then die "the far part needs root (ip netns); BENCH_PARTS without far runs as any user"; fi
if has_part loopback || has_part far; then need_rest_server; fi
ensure_deps
command -v go >/dev/null || die "go not found"
command -v openssl >/dev/null || die "openssl not found"
command -v python3 >/dev/null || die "python3 not found (free ports)"
has_part s3 && find_versitygw
if has_part far && ! command -v tc >/dev/null; then
	say "installing iproute2"
	apt-get install -y iproute2 || { apt-get update && apt-get install -y iproute2; } || die "could not install iproute2"
fi
mkdir -p "$WORK" "$DATA"
rm -rf "$RUN"
rm -f "$WORK"/fill.* # an interrupted run's (sparse: no disk, only cache)
mkdir -p "$LOGS" "$RUN/c"
[[ -f $PW ]] || echo "floe-bench-password-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" >"$PW"
chmod 600 "$PW"
: >"$RES"
FAILED=0
START=$(date +%s)
SERVER_PID=
# Servers and the far link's namespaces go away however the run ends.
trap 'stop_server; far_cleanup' EXIT
build_floe
[[ $FLOE_STATUS == ok ]] || die "floe: $FLOE_STATUS"
make_cert
# the far part brings its own data; the data sets are for loopback and s3
DATA_SETS_USED=
has_part loopback && DATA_SETS_USED+=" $DATASETS"
has_part s3 && DATA_SETS_USED+=" $S3_DATASETS"
for ds in $DATA_SETS_USED; do "prepare_$ds"; done
if has_part far; then
	say "building bench/farlink"
	(cd "$ROOT" && go build -o "$FARLINK" ./bench/farlink) >"$LOGS/farlink-build.log" 2>&1 ||
		die "bench/farlink build failed, see $LOGS/farlink-build.log"
fi

{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'scale\t%s (far link: %s MiB)\n' "$SCALE" "$FAR_MB"
	printf 'parts\t%s\n' "$PARTS"
	printf 'runs of each loopback and s3 cycle\t%s (medians)\n' "$REMOTE_REPEAT"
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'cpu\t%s\n' "$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
	printf 'memory\t%s\n' "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
	printf 'kernel\t%s\n' "$(uname -sr)"
	printf 'filesystem\t%s\n' "$(df -PT "$WORK" | awk 'NR == 2 {print $2 " (" $1 ")"}')"
	printf 'go\t%s\n' "$(cd / && go version)"
	[[ $FILL_CACHE == 1 ]] && printf 'page cache\t%s\n' "filled before each cycle (free memory down to the kernel's reserve; see bench/README.md)"
	rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
	[[ -z $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] || rev="$rev + uncommitted changes"
	printf 'floe\t%s\n' "${BENCH_FLOE_BIN:+binary }${BENCH_FLOE_BIN:-source $rev}"
	printf 'restic\t%s, repository version 2, compression auto\n' "$(restic version | head -n 1)"
	if has_part loopback || has_part far; then printf 'rest-server\t%s\n' "$("$REST_SERVER_BIN" --version 2>&1 | head -n 1)"; fi
	if has_part s3; then printf 'versitygw\t%s\n' "$(go version -m "$VERSITYGW" 2>/dev/null | awk '$1 == "mod" {print $2 " " $3; exit}')"; fi
	for ds in $(tr ' ' '\n' <<<"$DATA_SETS_USED" | awk 'NF && !seen[$0]++'); do
		printf 'data set %s\t%s files, %s GiB\n' "$ds" "$(find "$DATA/$ds" -type f | wc -l)" "$(gib "$(du -sb "$DATA/$ds" | cut -f1)")"
	done
} >"$RUN/meta.tsv"

quiet # bench/run.sh: earlier deletions must not slow the restores
record_start_load
for p in $PARTS; do "part_$p"; done
((${#LATER[@]} == 0)) || rm -rf "${LATER[@]}"
rm -f "$WORK"/fill.*

{
	printf 'load average at end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'duration\t%s s\n' "$(($(date +%s) - START))"
} >>"$RUN/meta.tsv"
say "writing $REMOTE_OUT"
write_report
echo
cat "$REMOTE_OUT"
echo
if ((FAILED)); then
	say "FAILURES: see above and the logs in $LOGS"
	exit 1
fi
say "done in $(($(date +%s) - START)) s; raw results in $RES"
