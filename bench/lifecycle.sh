#!/usr/bin/env bash
# Lifecycle benchmarks (issues 3 and 12), side by side in one run:
#   - check --read-data: floe vs restic on the same data (1 GiB random +
#     1 GiB Go source text, like bench/run.sh's large set);
#   - prune: time and peak memory of floe prune vs restic prune on the same
#     history (BENCH_ROUNDS backups of a changing tree, then forget all but
#     the last 3 and prune);
#   - copy: floe copy of every snapshot to a second local repository (MB/s),
#     by ID (shared chunk ID key) and re-hashed (independent keys);
#   - mount: sequential read of a large file through the FUSE mount vs
#     restore of the same file.
# Writes bench/LIFECYCLE.md. Environment: BENCH_DIR (default
# /tmp/floe-bench-life), BENCH_ROUNDS (default 12), BENCH_MB (size of the
# changing tree, default 512), BENCH_CHECK_MB (size of each half of the
# check data, default 1024), BENCH_CHECK_DATA (a directory to check instead;
# bench/run.sh's /tmp/floe-bench/data-full/large is the same data),
# BENCH_RESTIC_VERSION (restic built with `go install`, pinned; default
# v0.19.1, as bench/run.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BENCH_DIR:-/tmp/floe-bench-life}
ROUNDS=${BENCH_ROUNDS:-12}
MB=${BENCH_MB:-512}
CHECK_MB=${BENCH_CHECK_MB:-1024}
RESTIC_VERSION=${BENCH_RESTIC_VERSION:-v0.19.1}
OUT=${BENCH_LIFECYCLE_RESULTS:-$root/bench/LIFECYCLE.md}
mkdir -p "$WORK"
cd "$WORK"
rm -rf repos restore mnt && mkdir -p repos restore mnt
# The newest restic, not Debian's 0.14 (years old and slower): built from
# the Go module proxy at a pinned version, like bench/run.sh.
if [ ! -x "$WORK/restic-$RESTIC_VERSION/restic" ]; then
  echo "building restic $RESTIC_VERSION with go install" >&2
  mkdir -p "$WORK/restic-$RESTIC_VERSION"
  GOBIN=$WORK/restic-$RESTIC_VERSION go install "github.com/restic/restic/cmd/restic@$RESTIC_VERSION"
fi
PATH=$WORK/restic-$RESTIC_VERSION:$PATH
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
echo "bench-password" > pw
export FLOE_PASSWORD_FILE=$WORK/pw RESTIC_PASSWORD_FILE=$WORK/pw XDG_CACHE_HOME=$WORK/cache RESTIC_CACHE_DIR=$WORK/cache/restic
(cd "$root" && go build -o "$WORK/floe" ./cmd/floe)
F=$WORK/floe

# timed CMD...: prints "seconds peak_kib cpu_seconds" of the command (CPU
# = user + system: on a loaded machine wall time is noise, CPU time is not)
timed() {
  /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.out" "$@" >/dev/null 2>"$WORK/cmd.err" || { cat "$WORK/cmd.err"; return 1; }
  awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$WORK/time.out"
}
add() { printf '%.2f' "$(echo "$1 + $2" | bc)"; }

# A tree of files; each round rewrites a tenth of them, so the history
# accumulates garbage for prune.
make_tree() {
  mkdir -p data
  local n=$((MB / 4)) i
  for i in $(seq 1 "$n"); do head -c 4M /dev/urandom > "data/f$i"; done
}
mutate() {
  local n=$((MB / 4)) i
  for i in $(seq 1 $((n / 10 + 1))); do head -c 4M /dev/urandom > "data/f$((RANDOM % n + 1))"; done
}
[ -d data ] || make_tree

# check --read-data, both tools on the same data: 1 GiB random + 1 GiB of
# Go source text (every .go file of GOROOT, concatenated in a new random
# order on each pass), as bench/run.sh's large set.
make_check_data() {
  local dst=$1 list total passes i
  rm -rf "$dst" && mkdir -p "$dst"
  head -c "${CHECK_MB}M" /dev/urandom > "$dst/random.bin"
  list=$WORK/gofiles.list
  find "$(go env GOROOT)" -type f -name '*.go' -print0 | sort -z > "$list"
  total=$(xargs -0 stat -c %s < "$list" | awk '{s += $1} END {print s}')
  passes=$(( (CHECK_MB * 1048576 + total - 1) / total ))
  { for ((i = 0; i < passes; i++)); do shuf -z < "$list" | xargs -0 cat; done; } 2>/dev/null |
    head -c "${CHECK_MB}M" > "$dst/source.txt" 2>/dev/null || true
  rm -f "$list"
  touch "$dst.ready"
}
CHECK_DATA=${BENCH_CHECK_DATA:-$WORK/check-data}
if [ -z "${BENCH_CHECK_DATA:-}" ] && [ ! -f "$CHECK_DATA.ready" ]; then make_check_data "$CHECK_DATA"; fi
check_data_mib=$(( $(du -sb "$CHECK_DATA" | cut -f1) / 1048576 ))
$F init -r repos/check-floe -q
restic init -r repos/check-restic -q --repository-version 2 >/dev/null
$F backup -r repos/check-floe -q "$CHECK_DATA"
restic backup -r repos/check-restic -q "$CHECK_DATA" >/dev/null
check_floe_mib=$(( $(du -sb repos/check-floe | cut -f1) / 1048576 ))
check_restic_mib=$(( $(du -sb repos/check-restic | cut -f1) / 1048576 ))
sync
check_load=$(cut -d' ' -f1 /proc/loadavg)
read -r kf kfm kfc < <(timed $F check -r repos/check-floe --read-data -q)
read -r kr krm krc < <(timed restic check -r repos/check-restic --read-data -q)
rm -rf repos/check-floe repos/check-restic
$F init -r repos/floe -q
restic init -r repos/restic -q --repository-version 2 >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  $F backup -r repos/floe -q data
  restic backup -r repos/restic -q data >/dev/null
  mutate
done
floe_before=$(du -sb repos/floe | cut -f1); restic_before=$(du -sb repos/restic | cut -f1)
$F forget -r repos/floe --keep-last 3 -q >/dev/null
restic forget -r repos/restic --keep-last 3 -q >/dev/null
sync
prune_load=$(cut -d' ' -f1 /proc/loadavg)
# floe's first prune marks; with --grace 0 a second run sweeps at once (in
# production the sweep waits a day so that running backups stay safe).
read -r fp1 fm1 fc1 < <(timed $F prune -r repos/floe --grace 0 -q)
read -r fp2 fm2 fc2 < <(timed $F prune -r repos/floe --grace 0 -q)
read -r rp rm_ rc < <(timed restic prune -r repos/restic -q)
floe_after=$(du -sb repos/floe | cut -f1); restic_after=$(du -sb repos/restic | cut -f1)
$F check -r repos/floe -q >/dev/null && floe_check=ok || floe_check=FAILED

# copy throughput
total=$(du -sb data | cut -f1)
$F init -r repos/sib -q --copy-chunker-params-from repos/floe --from-password-file pw
$F init -r repos/oth -q
read -r cs cm _ < <(timed $F copy -r repos/floe --all --to repos/sib --to-password-file pw -q)
read -r co com _ < <(timed $F copy -r repos/floe --all --to repos/oth --to-password-file pw -q)
copied=$(du -sb repos/sib | cut -f1)

# mount read vs restore of one large file
head -c 512M /dev/urandom > big.bin
$F backup -r repos/floe -q big.bin
read -r rs rsm _ < <(timed $F restore -r repos/floe latest --target restore -q)
mount_s=n/a
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null; then
  $F mount -r repos/floe mnt >mount.log 2>&1 & mpid=$!
  for _ in $(seq 1 100); do mountpoint -q mnt && break; sleep 0.1; done
  if mountpoint -q mnt; then
    f=$(find mnt/latest/ -name big.bin | head -1)
    start=$(date +%s.%N); cat "$f" > /dev/null; end=$(date +%s.%N)
    mount_s=$(printf '%.2f' "$(echo "$end - $start" | bc)")
  fi
  kill -INT $mpid 2>/dev/null || true; wait $mpid 2>/dev/null || true
fi
mbps() { printf '%.1f' "$(echo "scale=2; $1 / 1000000 / $2" | bc)"; }
ratio() { printf '%.2f' "$(echo "scale=3; $1 / $2" | bc)"; }
met() { [ "$(echo "$1 >= $2" | bc)" = 1 ] && echo yes || echo NO; }
fp=$(add "$fp1" "$fp2"); fc=$(add "$fc1" "$fc2")

cat > "$OUT" <<EOT
# floe lifecycle benchmarks

Generated by \`bench/lifecycle.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores,
$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(restic version | cut -d' ' -f1-2).
Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (1-minute load before check: $check_load, before
prune: $prune_load; on a loaded machine wall times are noise and CPU times, user + system, are the measure).

## Targets (issue 12)

Ratios are restic's time ÷ floe's: the target is met when the wall-time ratio is
at least 2 (CPU-time ratio for reference).

| target | wall ratio | CPU ratio | met |
|---|--:|--:|--|
| check --read-data ≥ 2x restic | $(ratio "$kr" "$kf") | $(ratio "$krc" "$kfc") | $(met "$(ratio "$kr" "$kf")" 2) |
| prune ≥ 2x restic | $(ratio "$rp" "$fp") | $(ratio "$rc" "$fc") | $(met "$(ratio "$rp" "$fp")" 2) |

## check --read-data vs restic check --read-data

Data: $check_data_mib MiB (\`random.bin\`, $CHECK_MB MiB from /dev/urandom, and \`source.txt\`,
$CHECK_MB MiB of Go source text), backed up once by each tool into a fresh
repository: floe $check_floe_mib MiB, restic $check_restic_mib MiB. Both read every pack and verify
every blob; floe also decrypts and verifies every data blob a snapshot refers to
(docs/PERFORMANCE.md, "Verification and maintenance").

| | floe | restic | restic ÷ floe |
|---|--:|--:|--:|
| time (s) | $kf | $kr | $(ratio "$kr" "$kf") |
| CPU, user + system (s) | $kfc | $krc | $(ratio "$krc" "$kfc") |
| peak RSS (MiB) | $((kfm / 1024)) | $((krm / 1024)) | |

## prune vs restic prune

History: $ROUNDS backups of a $MB MiB tree of 4 MiB random files, a tenth of
them rewritten between backups; then \`forget --keep-last 3\` and prune.
floe prunes in two runs (mark, then sweep, here with \`--grace 0\`); the
figure is their sum. restic prune takes an exclusive lock; floe's does not.

| | floe | restic | restic ÷ floe |
|---|--:|--:|--:|
| prune time (s) | $fp ($fp1 + $fp2) | $rp | $(ratio "$rp" "$fp") |
| prune CPU, user + system (s) | $fc ($fc1 + $fc2) | $rc | $(ratio "$rc" "$fc") |
| prune peak RSS (MiB) | $(( (fm1 > fm2 ? fm1 : fm2) / 1024 )) | $(( rm_ / 1024 )) | |
| repository before (MiB) | $((floe_before / 1048576)) | $((restic_before / 1048576)) | |
| repository after (MiB) | $((floe_after / 1048576)) | $((restic_after / 1048576)) | |

\`floe check\` after prune: $floe_check.

## copy to a second local repository

$((copied / 1048576)) MiB of repository data: the 3 snapshots that forget kept.

| | seconds | MB/s of repository data | peak RSS (MiB) |
|---|--:|--:|--:|
| shared chunk ID key (copy by ID) | $cs | $(mbps "$copied" "$cs") | $((cm / 1024)) |
| independent keys (re-hash, rewrite trees) | $co | $(mbps "$copied" "$co") | $((com / 1024)) |

## FUSE read vs restore, one 512 MiB random file

| | seconds | MB/s |
|---|--:|--:|
| floe restore | $rs | $(mbps 536870912 "$rs") |
| cat through floe mount | $mount_s | $( [ "$mount_s" = n/a ] && echo n/a || mbps 536870912 "$mount_s") |
EOT
cat "$OUT"
