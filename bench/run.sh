#!/usr/bin/env bash
# bench/run.sh — floe side by side with restic and borg, on the same data, in
# one run, and write bench/RESULTS.md. See bench/README.md.
#
#   bench/run.sh                              # full run (goroot + 2 GiB "large")
#   BENCH_SCALE=small bench/run.sh            # smoke run, ~1-3 minutes
#
# Environment knobs (defaults in brackets):
#   BENCH_DIR        work dir: data sets, repos, caches, logs  [/tmp/floe-bench]
#   BENCH_SCALE      full | small                              [full]
#   BENCH_REPEAT     runs per tool and data set; median taken  [1]
#   BENCH_TOOLS      tools, in run order                       [floe restic borg]
#   BENCH_DATASETS   data sets                                 [goroot large smallstored]
#   BENCH_BORG_COMPRESSION  borg -C spec                       [zstd,3]
#   BENCH_RESULTS    report path                               [bench/RESULTS.md]
#   BENCH_KEEP       1 = keep repos and restores of the last run for inspection [0]
#   BENCH_FLOE_BIN   benchmark this floe binary instead of building ./cmd/floe
#   BENCH_RESTIC_VERSION  restic built with `go install` (pinned)  [v0.19.1]
#   BENCH_QUIET_SECONDS  wait after a sync before measuring, for earlier
#                    deletions to stop slowing restores (see quiet)  [370]
#   BENCH_CP_REFERENCE 1 = also time `cp -a` of each data set (tool "cp") [1]
#   BENCH_DISK_REFERENCE 1 = also time a direct-I/O copy of the large set's
#                    files (tool "disk": the disk's floor for a restore whose
#                    data is on the disk when it ends)  [1]
#   BENCH_FILL_CACHE 1 = fill the page cache before each data set's runs,
#                    so that no step finds free memory the VM handed back to
#                    its host (see fill_page_cache)  [1]
#
# Exit status: 0 when every tool that was built ran every step and every
# restore matched its source; 1 otherwise (a floe that is not built yet, i.e.
# no ./cmd/floe, is reported as "not built" and is not a failure).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_DIR:-/tmp/floe-bench}
SCALE=${BENCH_SCALE:-full}
REPEAT=${BENCH_REPEAT:-1}
TOOLS=${BENCH_TOOLS:-floe restic borg}
DATASETS=${BENCH_DATASETS:-goroot large smallstored}
BORG_COMPRESSION=${BENCH_BORG_COMPRESSION:-zstd,3}
OUT=${BENCH_RESULTS:-$ROOT/bench/RESULTS.md}
KEEP=${BENCH_KEEP:-0}
# The newest restic, not Debian's (0.14 is years old and much slower at
# restore): built from the Go module proxy at a pinned version into WORK.
RESTIC_VERSION=${BENCH_RESTIC_VERSION:-v0.19.1}
QUIET_SECONDS=${BENCH_QUIET_SECONDS:-370}
FILL_CACHE=${BENCH_FILL_CACHE:-1}
CP_REFERENCE=${BENCH_CP_REFERENCE:-1}
DISK_REFERENCE=${BENCH_DISK_REFERENCE:-1}

MiB=$((1024 * 1024))
case $SCALE in
full)  RANDOM_BYTES=$((1024 * MiB)); TEXT_BYTES=$((1024 * MiB)); GOROOT_SUBSET=.; STORED_BYTES=$((200 * MiB)) ;;
small) RANDOM_BYTES=$((64 * MiB));   TEXT_BYTES=$((64 * MiB));   GOROOT_SUBSET=src/cmd; STORED_BYTES=$((20 * MiB)) ;;
*) echo "run.sh: BENCH_SCALE must be full or small, not '$SCALE'" >&2; exit 2 ;;
esac
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: BENCH_REPEAT must be a positive integer" >&2; exit 2; }
[[ $QUIET_SECONDS =~ ^[0-9]+$ ]] || { echo "run.sh: BENCH_QUIET_SECONDS must be a number of seconds" >&2; exit 2; }
[[ $FILL_CACHE == [01] ]] || { echo "run.sh: BENCH_FILL_CACHE must be 0 or 1" >&2; exit 2; }
for t in $TOOLS; do case $t in floe|restic|borg) ;; *) echo "run.sh: unknown tool '$t'" >&2; exit 2 ;; esac; done
for d in $DATASETS; do case $d in goroot|large|smallstored) ;; *) echo "run.sh: unknown data set '$d'" >&2; exit 2 ;; esac; done

DATA=$WORK/data-$SCALE       # prepared data sets, reused across runs
RUN=$WORK/run                # everything of this run; wiped at start
LOGS=$RUN/logs
PW=$WORK/password
FLOE=$WORK/floe
TIME=/usr/bin/time

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "FATAL: $*"; exit 2; }
has() { [[ " $TOOLS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- dependencies
ensure_deps() {
	local need=()
	has borg && ! command -v borg >/dev/null && need+=(borgbackup)
	[[ -x $TIME ]] || need+=(time)
	if has restic && [[ ! -x $WORK/restic-$RESTIC_VERSION/restic ]]; then
		say "building restic $RESTIC_VERSION with go install"
		mkdir -p "$WORK/restic-$RESTIC_VERSION"
		GOBIN=$WORK/restic-$RESTIC_VERSION go install "github.com/restic/restic/cmd/restic@$RESTIC_VERSION" ||
			die "could not build restic $RESTIC_VERSION"
	fi
	has restic && PATH=$WORK/restic-$RESTIC_VERSION:$PATH
	((${#need[@]})) || return 0
	say "installing ${need[*]}"
	local sudo=()
	[[ $(id -u) == 0 ]] || sudo=(sudo)
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get install -y "${need[@]}" ||
		{ "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y "${need[@]}"; } ||
		die "could not install ${need[*]}"
}

# ---------------------------------------------------------------- data sets
# GOROOT of the Go toolchain outside this module (no toolchain switch).
goroot() { (cd / && go env GOROOT); }

prepare_goroot() {
	local dst=$DATA/goroot gr
	[[ -f $DATA/.ready-goroot ]] && return
	gr=$(goroot)
	say "preparing goroot: copy of $gr/$GOROOT_SUBSET"
	rm -rf "$dst"
	mkdir -p "$dst/$GOROOT_SUBSET"
	cp -a "$gr/$GOROOT_SUBSET/." "$dst/$GOROOT_SUBSET/"
	touch "$DATA/.ready-goroot"
}

prepare_large() {
	local dst=$DATA/large gr list total passes i
	[[ -f $DATA/.ready-large ]] && return
	gr=$(goroot)
	say "preparing large: $((RANDOM_BYTES / MiB)) MiB random + $((TEXT_BYTES / MiB)) MiB Go source text"
	rm -rf "$dst"
	mkdir -p "$dst"
	head -c "$RANDOM_BYTES" /dev/urandom >"$dst/random.bin"
	# Compressible text: every .go file of GOROOT, concatenated in a fresh
	# random order on each pass, until TEXT_BYTES. Different orders make
	# chunk boundaries fall differently, so passes do not dedup trivially.
	list=$WORK/gofiles.list
	find "$gr" -type f -name '*.go' -print0 | sort -z >"$list"
	total=$(xargs -0 stat -c %s <"$list" | awk '{s += $1} END {print s}')
	((total > 0)) || die "no .go files under $gr"
	passes=$(((TEXT_BYTES + total - 1) / total))
	{ for ((i = 0; i < passes; i++)); do shuf -z <"$list" | xargs -0 cat; done; } 2>/dev/null |
		head -c "$TEXT_BYTES" >"$dst/source.txt" 2>/dev/null || true
	[[ $(stat -c %s "$dst/source.txt") == "$TEXT_BYTES" ]] || die "short source.txt"
	rm -f "$list"
	touch "$DATA/.ready-large"
}

# smallstored: many small files whose content is already in the repository,
# as on a host that backs up another copy of the same OS. Two copies of the
# same files with different inodes (cp -a, not hard links): backup1 saves
# copy 1, backup2 is the first backup of copy 2 in the same repository (no
# parent: other paths), so every file is read and every chunk is already
# stored. The files: those under /usr/lib and /usr/share below 1 MiB, in
# path order, until STORED_BYTES (on a Debian with Go, ~10,000 files).
prepare_smallstored() {
	local dst=$DATA/smallstored list
	[[ -f $DATA/.ready-smallstored ]] && return
	say "preparing smallstored: two copies of $((STORED_BYTES / MiB)) MiB of small files from /usr/lib and /usr/share"
	rm -rf "$dst"
	mkdir -p "$dst/1"
	list=$WORK/smallstored.list
	find /usr/lib /usr/share -xdev -type f -size -1024k -readable -print0 2>/dev/null | LC_ALL=C sort -z |
		xargs -0 -r stat -c '%s	%n' 2>/dev/null |
		awk -F'\t' -v budget="$STORED_BYTES" '{s += $1; if (s > budget) exit; printf "%s%c", substr($0, index($0, "\t") + 1), 0}' >"$list" || true
	[[ -s $list ]] || die "no files under /usr/lib and /usr/share"
	# a file that vanished or changed while copied only makes tar warn
	{ tar --null -T "$list" -cf - 2>/dev/null || true; } | tar -xpf - -C "$dst/1" || die "copying the smallstored files failed"
	rm -f "$list"
	cp -a "$dst/1" "$dst/2" # new inodes: nothing for a tool to take from the first copy's metadata
	touch "$DATA/.ready-smallstored"
}

# ---------------------------------------------------------------- floe build
build_floe() {
	if [[ -n ${BENCH_FLOE_BIN:-} ]]; then
		FLOE=$(realpath "$BENCH_FLOE_BIN")
		[[ -x $FLOE ]] && FLOE_STATUS=ok || FLOE_STATUS="not built"
		say "floe: using $FLOE ($FLOE_STATUS)"
		return
	fi
	rm -f "$FLOE"
	if [[ ! -d $ROOT/cmd/floe ]]; then
		FLOE_STATUS="not built"
		say "floe: no ./cmd/floe yet, reporting floe as not built"
		return
	fi
	say "building floe"
	if (cd "$ROOT" && go build -o "$FLOE" ./cmd/floe) >"$LOGS/floe-build.log" 2>&1; then
		FLOE_STATUS=ok
	else
		FLOE_STATUS="build failed"
		say "FAIL: floe build failed, see $LOGS/floe-build.log"
		sed 's/^/    /' "$LOGS/floe-build.log" | head -20 >&2
	fi
}

# ---------------------------------------------------------------- tool commands
# tool_cmd TOOL STEP sets CMD (argv) and CWD for one step. The environment of
# the step (passwords, cache dirs) is set in run_tool.
RESTIC_INIT=()
tool_cmd() {
	CWD=$RUN
	case $1:$2 in
	floe:init)     CMD=("$FLOE" init -r "$REPO" --password-file "$PW") ;;
	floe:backup*)  CMD=("$FLOE" backup -r "$REPO" --password-file "$PW" "$SRC") ;;
	floe:restore)  CMD=("$FLOE" restore latest -r "$REPO" --password-file "$PW" --target "$DST") ;;
	restic:init)   CMD=(restic init -r "$REPO" "${RESTIC_INIT[@]}") ;;
	restic:backup*) CMD=(restic backup -r "$REPO" "$SRC") ;;
	restic:restore) CMD=(restic restore latest -r "$REPO" --target "$DST") ;;
	borg:init)     CMD=(borg init -e repokey "$REPO") ;;
	borg:backup1)  CMD=(borg create --stats --compression "$BORG_COMPRESSION" "$REPO::bench-1" "$SRC") ;;
	borg:backup2)  CMD=(borg create --stats --compression "$BORG_COMPRESSION" "$REPO::bench-2" "$SRC") ;;
	borg:restore)  CMD=(borg extract "$REPO::bench-2"); CWD=$DST ;;
	cp:restore)    CMD=(cp -a "$SRC/." "$DST/") ;; # the reference: a copy of the tree from the page cache
	# the disk's floor: every file of the set copied from the page cache
	# around it (O_DIRECT), all at once, as floe's restore writes large
	# files (the large set's sizes are whole MiB, as O_DIRECT needs)
	disk:restore)  CMD=(bash -c 'rc=0 pids=(); for f in "$1"/*; do dd if="$f" of="$2/${f##*/}" bs=1M iflag=fullblock oflag=direct status=none & pids+=($!); done; for p in "${pids[@]}"; do wait "$p" || rc=1; done; exit $rc' disk-copy "$SRC" "$DST") ;;
	*:sync)        CMD=(sync) ;; # right after the restore: what it left for write-back, to the disk
	*) die "no command for $1 $2" ;;
	esac
}

# ---------------------------------------------------------------- measuring
# row REP DATASET TOOL STEP SECONDS MAXRSS_KB BYTES STATUS
row() { (IFS=$'\t'; echo "$*") >>"$RUN/results.tsv"; }

# settle: every timed step starts after a sync, so that one step's
# write-back does not land in the next one's time.
settle() { sync; }

# quiet: wait until deletions made before this run no longer slow its
# restores. This ext4 (no journal) skips an inode deleted less than 60 s
# ago, or 360 s while the inode-table block that holds it is dirty, when
# it allocates one (perf: recently_deleted, find_get_block), and a restore
# dirties those blocks itself as it creates files, so a sync beforehand does
# not help: measured, the first goroot restores of a round that started
# 2-5 minutes after the last one's cleanup took 4.3-4.9 s for every tool,
# against 1.2-2.5 s ten minutes later (cp -a of the same tree, timed after
# them, was not slowed). Hence six minutes and a bit.
quiet() {
	((QUIET_SECONDS > 0)) || return 0
	say "sync, then ${QUIET_SECONDS}s for earlier deletions to age (BENCH_QUIET_SECONDS)"
	sync
	sleep "$QUIET_SECONDS"
}

# record_start_load: the load average the measurements start at, into
# RUN/meta.tsv. Called after quiet, not before it: what ran just before the
# script (a build, the data sets' preparation) is over by then and would
# only mark the round busy.
record_start_load() { printf 'load average at start\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RUN/meta.tsv"; }

# reference TOOL REP DS: a reference that is not a backup tool, timed like
# a restore, step restore and its sync:
#   cp    `cp -a` of what the tools restore: the "copy speed" a restore is
#         compared with;
#   disk  the same files written around the page cache by dd: no restore
#         that leaves its data on the disk, as floe's does for large files,
#         can be faster (only for the large set: its two files are all
#         bytes and no metadata).
reference() {
	local tool=$1 rep=$2 ds=$3 base=$RUN/$2/$1/$3
	SRC=$DATA/$ds
	[[ $ds == smallstored ]] && SRC=$DATA/$ds/2
	REPO=$base/repo DST=$base/restore
	rm -rf "$base"
	mkdir -p "$DST"
	timed "$rep" "$ds" "$tool" restore && timed "$rep" "$ds" "$tool" sync || true
	cleanup_tool "$base"
}

# steal_ticks: the whole machine's CPU steal so far, in clock ticks. A
# step's user time grows when the hypervisor runs other guests on our
# cores without telling this kernel; where it does tell, the steal shows
# here, and the log line of each step gives it (bimodal CPU times of one
# step, the same work, are otherwise hard to read).
steal_ticks() { awk '$1 == "cpu" { print $9; exit }' /proc/stat; }
# memory_free: free memory and page cache, for the same reason: a step
# whose pages come from reclaim (the cache full of earlier runs' files)
# spends more system time than one that finds free memory.
memory_free() { awk '/^MemFree:/ { f = $2 } /^Cached:/ { c = $2 } END { printf "free %.1f GiB, cache %.1f GiB", f / 1048576, c / 1048576 }' /proc/meminfo; }

# fill_page_cache: read a sparse file as large as free memory, so that free
# memory is down to the kernel's reserve and every step's new pages come
# from reclaiming the page cache, as on a server that has run for a while.
# Where a VM reports its free memory to the host (virtio-balloon free page
# reporting: this benchmark machine reports every free 2 MiB block at
# once), the host takes that memory back, and the next page the guest
# takes there costs a fault in the host: measured here, writing 1 GiB into
# a new file cost 3.1-4.1 s of system time when free memory had been
# handed back, 0.3-0.65 s when the page cache was full (docs/PERFORMANCE.md,
# "Free memory the host took back"). That cost lands on whichever tool
# grows its memory or page cache first, and swung the large set's initial
# backup by 3-7 s. The file's holes read as zero-filled cache pages and
# take no disk; the pages are clean, so reclaim drops them first. A file
# system that maps holes to one shared zero page (tmpfs) leaves memory
# free; the log says so.
FILL_FILES=()
fill_page_cache() {
	[[ $FILL_CACHE == 1 ]] || return 0
	local kib f=$WORK/fill.${#FILL_FILES[@]}
	kib=$(awk '/^MemFree:/ { print $2 }' /proc/meminfo) # mawk prints large products as 1.8e+10
	((kib > 256 * 1024)) || return 0
	truncate -s "$((kib * 1024))" "$f"
	FILL_FILES+=("$f")
	cat "$f" >/dev/null
	say "page cache filled: $(memory_free)"
}

# timed REP DS TOOL STEP: run the step under GNU time; record a row; return
# non-zero when the step failed.
timed() {
	local rep=$1 ds=$2 tool=$3 step=$4 tf=$RUN/time.out log secs kb usr sys cpu steal0 steal free0 rc=0
	log=$LOGS/$ds-$tool-$rep-$step.log
	tool_cmd "$tool" "$step"
	rm -f "$tf"
	# the sync step measures what the restore before it left unwritten
	[[ $step == sync ]] || settle
	printf '$ %s\n' "${CMD[*]}" >"$log"
	steal0=$(steal_ticks)
	free0=$(memory_free)
	(cd "$CWD" && "$TIME" -f '%e %M %U %S' -o "$tf" "${CMD[@]}") </dev/null >>"$log" 2>&1 || rc=$?
	steal=$(awk -v a="$steal0" -v b="$(steal_ticks)" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')
	read -r secs kb usr sys < <(tail -n 1 "$tf") || true
	[[ $secs =~ ^[0-9.]+$ ]] || secs=NA
	[[ $kb =~ ^[0-9]+$ ]] || kb=NA
	# CPU (user + system) beside the wall time: on a shared VM the wall
	# time of one run can vary by a third (page-cache pages cost more or
	# less system time from one minute to the next), and the CPU column
	# says whether a slow run did more work or waited
	if [[ $usr =~ ^[0-9.]+$ && $sys =~ ^[0-9.]+$ ]]; then cpu=$(awk -v u="$usr" -v s="$sys" 'BEGIN { printf "%.2f", u + s }'); else cpu=NA; fi
	if ((rc == 0)); then
		row "$rep" "$ds" "$tool" "$step" "$secs" "$kb" NA ok "$cpu"
		say "  $ds $tool $step: ${secs}s (CPU ${cpu}s: user ${usr}, sys ${sys}; machine's steal ${steal}s; ${free0} before), peak RSS $((${kb/NA/0} / 1024)) MiB"
	else
		row "$rep" "$ds" "$tool" "$step" "$secs" "$kb" NA FAIL "$cpu"
		say "  FAIL: $ds $tool $step exited $rc, log $log:"
		tail -n 15 "$log" | sed 's/^/    /' >&2
		FAILED=1
	fi
	return $rc
}

# restored_root SRC DST: where the restore put SRC: DST/SRC (restic, borg:
# absolute path kept), DST/basename(SRC), or DST itself.
restored_root() {
	local c
	for c in "$2$1" "$2/$(basename "$1")"; do
		[[ -d $c ]] && { echo "$c"; return; }
	done
	echo "$2"
}

# listing DIR: path, type, mode; size and mtime (seconds) for regular files.
listing() {
	(cd "$1" && find . -mindepth 1 \( -type f -printf '%P\t%y\t%m\t%s\t%Ts\n' \) -o -printf '%P\t%y\t%m\n' | LC_ALL=C sort)
}

verify() {
	local rep=$1 ds=$2 tool=$3 root log
	log=$LOGS/$ds-$tool-$rep-verify.log
	root=$(restored_root "$SRC" "$DST")
	{
		echo "source:   $SRC"
		echo "restored: $root"
		diff -r -q --no-dereference "$SRC" "$root" &&
			diff <(listing "$SRC") <(listing "$root") &&
			echo "content, names, types, modes, sizes and file mtimes match"
	} >"$log" 2>&1 && {
		row "$rep" "$ds" "$tool" verify NA NA NA ok
		say "  $ds $tool verify: restore matches source"
		return
	}
	row "$rep" "$ds" "$tool" verify NA NA NA MISMATCH
	FAILED=1
	say "  !!!!!!!! VERIFY FAILED: $tool restore of $ds differs from the source !!!!!!!!"
	head -n 20 "$log" | sed 's/^/    /' >&2
	say "  (full diff in $log)"
}

skip_rest() { # REP DS TOOL STATUS STEP...
	local rep=$1 ds=$2 tool=$3 status=$4 s
	shift 4
	for s in "$@"; do row "$rep" "$ds" "$tool" "$s" NA NA NA "$status"; done
}

# Each repetition has its own directories: removing the last one's before
# restoring again would make this restore pay for that deletion (see
# cleanup_tool).
run_tool() {
	local rep=$1 ds=$2 tool=$3 base=$RUN/$rep/$tool/$ds steps=(init backup1 backup2 restore sync repo verify) i
	SRC=$DATA/$ds
	# smallstored: backup1 saves copy 1, backup2 (the one measured) copy 2,
	# which is restored and verified
	[[ $ds == smallstored ]] && SRC=$DATA/$ds/1
	REPO=$base/repo
	DST=$base/restore
	rm -rf "$base"
	mkdir -p "$base/cache" "$base/config" "$DST"
	if [[ $tool == floe && $FLOE_STATUS != ok ]]; then
		skip_rest "$rep" "$ds" floe "$FLOE_STATUS" "${steps[@]}"
		return
	fi
	say "$ds: $tool (run $rep/$REPEAT)"
	# Clean caches and config per run, all inside the work dir; never prompt.
	export XDG_CACHE_HOME=$base/cache XDG_CONFIG_HOME=$base/config
	export RESTIC_PASSWORD_FILE=$PW RESTIC_CACHE_DIR=$base/cache/restic
	export BORG_BASE_DIR=$base/cache/borg BORG_PASSCOMMAND="cat $PW"
	export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
	export BORG_CHECK_I_KNOW_WHAT_I_AM_DOING=NO BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=NO
	for ((i = 0; i < 5; i++)); do
		[[ $ds == smallstored && ${steps[i]} == backup2 ]] && SRC=$DATA/$ds/2
		timed "$rep" "$ds" "$tool" "${steps[i]}" ||
			{ skip_rest "$rep" "$ds" "$tool" skipped "${steps[@]:i+1}"; cleanup_tool "$base"; return; }
	done
	row "$rep" "$ds" "$tool" repo NA NA "$(du -sb "$REPO" | cut -f1)" ok
	if [[ $tool == floe ]]; then # untimed, for the log: floe's own view of the repo
		"$FLOE" stats -r "$REPO" --password-file "$PW" --json </dev/null >"$LOGS/$ds-floe-$rep-stats.json" 2>&1 || true
	fi
	verify "$rep" "$ds" "$tool"
	cleanup_tool "$base"
}

# Repositories and restores are removed at the end of the run, not after
# each tool: on ext4, creating files soon after deleting many makes the
# kernel search the recently deleted inodes (perf: recently_deleted,
# find_get_block at ~70% of a restore), so each tool's restore paid for
# the one before it. Needs room for all of them (about 12 GB at full scale).
CLEANUP=()
cleanup_tool() { [[ $KEEP == 1 ]] || CLEANUP+=("$1"); }

# warm SRC: read every file once so every tool reads from the page cache.
warm() { find "$1" -type f -print0 | xargs -0 -r cat >/dev/null; }

# ---------------------------------------------------------------- main
# Sourced (by bench/remote.sh, for the data sets and helpers above): stop here.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0
ensure_deps
command -v go >/dev/null || die "go not found"
mkdir -p "$WORK" "$DATA"
rm -rf "$RUN"
rm -f "$WORK"/fill.* # an interrupted run's (sparse: no disk, only cache)
mkdir -p "$LOGS"
[[ -f $PW ]] || echo "floe-bench-password-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')" >"$PW"
chmod 600 "$PW"
: >"$RUN/results.tsv"
FAILED=0
FLOE_STATUS=skipped
START=$(date +%s)

if has restic && restic init --help 2>/dev/null | grep -q -- '--repository-version'; then
	RESTIC_INIT=(--repository-version 2)
fi
# Build the report generator first: a broken one should fail in seconds, not
# after an hour of measuring.
(cd "$ROOT" && go build -o "$WORK/report" ./bench/report) || die "cannot build bench/report"
if has floe; then build_floe; fi

for ds in $DATASETS; do "prepare_$ds"; done

# Machine and tool information, one "key<TAB>value" a line.
{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'scale\t%s\n' "$SCALE"
	printf 'repeat\t%s\n' "$REPEAT"
	printf 'tools\t%s\n' "$TOOLS"
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'cpu\t%s\n' "$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
	printf 'memory\t%s\n' "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
	printf 'kernel\t%s\n' "$(uname -sr)"
	printf 'filesystem\t%s\n' "$(df -PT "$WORK" | awk 'NR == 2 {print $2 " (" $1 ")"}')"
	printf 'go\t%s\n' "$(cd / && go version)"
	printf 'before the run\t%s\n' "sync, then ${QUIET_SECONDS} s without deletions; a sync before each step"
	if [[ $FILL_CACHE == 1 ]]; then
		printf 'page cache\t%s\n' "filled before each data set's runs (free memory down to the kernel's reserve; see bench/README.md)"
	fi
	if has floe; then
		rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
		[[ -z $(git -C "$ROOT" status --porcelain 2>/dev/null) ]] || rev="$rev + uncommitted changes"
		if [[ -n ${BENCH_FLOE_BIN:-} ]]; then rev="binary $FLOE"; else rev="source $rev"; fi
		printf 'floe\t%s\n' "$FLOE_STATUS, $rev"
	fi
	if has restic; then
		printf 'restic\t%s\n' "$(restic version | head -n 1), repository version ${RESTIC_INIT[1]:-default}, compression auto"
	fi
	if has borg; then
		printf 'borg\t%s\n' "$(borg --version), repokey encryption, compression $BORG_COMPRESSION"
	fi
} >"$RUN/meta.tsv"

for ds in $DATASETS; do
	d=$DATA/$ds
	[[ $ds == smallstored ]] && d=$DATA/$ds/2 # one copy: what the measured backup reads
	printf '%s\t%s\t%s\n' "$ds" "$(find "$d" -type f | wc -l)" "$(du -sb "$d" | cut -f1)"
done >"$RUN/datasets.tsv"

quiet
record_start_load
for ((rep = 1; rep <= REPEAT; rep++)); do
	for ds in $DATASETS; do
		fill_page_cache
		say "$ds: warming the page cache"
		warm "$DATA/$ds"
		for tool in $TOOLS; do run_tool "$rep" "$ds" "$tool"; done
		[[ $CP_REFERENCE == 1 ]] && reference cp "$rep" "$ds"
		[[ $DISK_REFERENCE == 1 && $ds == large ]] && reference disk "$rep" "$ds"
	done
done

((${#CLEANUP[@]} == 0)) || rm -rf "${CLEANUP[@]}"
rm -f "$WORK"/fill.*

{
	printf 'load average at end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'duration\t%s s\n' "$(($(date +%s) - START))"
} >>"$RUN/meta.tsv"
say "writing $OUT"
"$WORK/report" -dir "$RUN" -o "$OUT"
echo
cat "$OUT"
echo
if ((FAILED)); then
	say "FAILURES: see the tables above and the logs in $LOGS"
	exit 1
fi
say "done in $(($(date +%s) - START)) s; raw results in $RUN/results.tsv"
