#!/bin/bash
# bench/images.sh: one side-by-side run of disk image backups (bench/IMAGES.md).
# The same 1.5 GiB ext4 image (about 550 MiB of files from /usr, the rest
# zeros), attached read-only to a loop device, is backed up by
#   floe backup --image /dev/loopN       (a repository at the default level,
#                                         auto: images at zstd's fastest)
#   floe backup --image /dev/loopN       (one made with --compression default,
#                                         images at zstd's default level, and
#                                         the same chunker parameters)
#   restic backup --stdin < /dev/loopN
#   borg create --read-special REPO::a /dev/loopN
# then again unchanged; then restored by `floe restore` and read through
# `floe nbd` with nbdcopy, and random 4 KiB reads are timed through a fresh
# `floe nbd` (bench/nbd-latency.py: cold, then warm cache). Needs root
# (losetup), mkfs.ext4, nbdcopy, python3-libnbd, borg, restic (RESTIC,
# default /tmp/floe-bench/restic-v0.19.1/restic).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_DIR:-/tmp/floe-bench}/images
RESTIC=${RESTIC:-/tmp/floe-bench/restic-v0.19.1/restic}
rm -rf "$B/run"; mkdir -p "$B/run"
(cd "$root" && go build -o "$B/floe" ./cmd/floe)
img=$B/disk.raw
if [ ! -f "$img" ]; then
  src=$B/src; rm -rf "$src"; mkdir -p "$src"
  cp -a /usr/share/doc /usr/share/locale "$src"/ 2>/dev/null || true
  cp -a /usr/lib/x86_64-linux-gnu "$src"/lib 2>/dev/null || true
  du -sh "$src"
  truncate -s 1536M "$img.tmp"
  mkfs.ext4 -q -F -E nodiscard -d "$src" "$img.tmp"
  mv "$img.tmp" "$img"; rm -rf "$src"
fi
dev=$(losetup --find --show --read-only "$img")
trap 'losetup -d $dev' EXIT
cat "$img" >/dev/null   # page cache: every tool reads from memory
echo "image: $(stat -c %s "$img") bytes, $(du -B1 "$img" | cut -f1) allocated, on $dev"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); cores: $(nproc)"
t() { local name=$1; shift; /usr/bin/time -f "$name %e s wall, %U s user, %S s sys, %M KiB max RSS" "$@" >/dev/null 2>"$B/run/err" || { cat "$B/run/err"; exit 1; }; tail -1 "$B/run/err"; LAST=$(tail -1 "$B/run/err"); }
# wall / cpu LINE: the wall time, or user + sys, of a line t printed
wall() { sed -E 's/.* ([0-9.]+) s wall,.*/\1/' <<<"$1"; }
cpusum() { sed -E 's/.* ([0-9.]+) s user, ([0-9.]+) s sys,.*/\1 \2/' <<<"$1" | awk '{ printf "%.2f", $1 + $2 }'; }
cores=$(nproc)
export FLOE_PASSWORD_FILE=$B/run/pw RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
echo bench > "$FLOE_PASSWORD_FILE"
F="$B/floe -r $B/run/floe"
FD="$B/floe -r $B/run/floe-default"
$F init -q
$FD init -q --compression default --copy-chunker-params-from "$B/run/floe" --from-password-file "$FLOE_PASSWORD_FILE"
"$RESTIC" init -q -r "$B/run/restic"
borg init -e repokey-blake2 "$B/run/borg"
t "floe   initial " $F backup -q --image "$dev"
floe_initial=$LAST
t "floe-default initial " $FD backup -q --image "$dev"
t "restic initial " sh -c "\"$RESTIC\" backup -q -r $B/run/restic --stdin --stdin-filename disk.raw < $dev"
t "borg   initial " borg create --read-special "$B/run/borg::a" "$dev"
# floe compresses on every core, borg on one: on this machine floe's
# initial backup cannot take less than its CPU time over the cores
awk -v c="$(cpusum "$floe_initial")" -v n="$cores" -v b="$(wall "$LAST")" 'BEGIN {
	printf "floe initial: %.2f CPU-s over %d cores is at least %.2f s: at most %.2fx borg'"'"'s %.2f s at this CPU time\n", c, n, c / n, b / (c / n), b }'
t "sequential read (dd bs=4M)" dd if="$dev" of=/dev/null bs=4M
t "floe   unchanged" $F backup -q --image "$dev"
t "floe-default unchanged" $FD backup -q --image "$dev"
t "restic unchanged" sh -c "\"$RESTIC\" backup -q -r $B/run/restic --stdin --stdin-filename disk.raw < $dev"
t "borg   unchanged" borg create --read-special "$B/run/borg::b" "$dev"
echo "repository sizes (du -sb): floe $(du -sb $B/run/floe | cut -f1), floe-default $(du -sb $B/run/floe-default | cut -f1), restic $(du -sb $B/run/restic | cut -f1), borg $(du -sb $B/run/borg | cut -f1)"
t "floe restore   " $F restore -q "latest:$dev" --target "$B/run/r"
cmp "$img" "$B/run/r/$(basename "$dev")" && echo "floe restore: identical, $(du -B1 "$B/run/r/$(basename "$dev")" | cut -f1) bytes allocated"
rm -rf "$B/run/r"
# nbdcopy writes its copy through the page cache, which a restore by
# default skips (O_DIRECT): a buffered restore is the like-for-like
# reference for "nbdcopy within 1.2x of a restore"
t "floe restore --buffered-io" $F restore -q "latest:$dev" --target "$B/run/r" --buffered-io
buffered_restore=$LAST
rm -rf "$B/run/r"
t "floe-default restore" $FD restore -q "latest:$dev" --target "$B/run/r"
cmp "$img" "$B/run/r/$(basename "$dev")" && echo "floe-default restore: identical"
rm -rf "$B/run/r"
# floe nbd in the background; cpu PID prints its user and system CPU
# seconds so far
serve() {
  rm -f "$B/run/nbd.sock"
  $F nbd "latest:$dev" --listen "unix:$B/run/nbd.sock" -q & nbdpid=$!
  for i in $(seq 100); do [ -S "$B/run/nbd.sock" ] && break; sleep 0.1; done
}
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f %.2f", $14/t, $15/t}' /proc/$1/stat; }
uri="nbd+unix:///?socket=$B/run/nbd.sock"
serve
t "nbdcopy from floe nbd" nbdcopy "$uri" "$B/run/copy.raw"
read -r nbd_user nbd_sys < <(cpu $nbdpid)
echo "floe nbd during nbdcopy: $nbd_user s user, $nbd_sys s sys"
# floe nbd and nbdcopy share the cores: the copy cannot take less than
# their CPU time together over the cores, whatever either does per byte
awk -v u="$nbd_user" -v s="$nbd_sys" -v b="$(cpusum "$LAST")" -v n="$cores" -v r="$(wall "$buffered_restore")" 'BEGIN {
	a = u + s; f = (a + b) / n
	printf "nbdcopy: floe nbd %.2f + nbdcopy %.2f CPU-s over %d cores is at least %.2f s, %.2fx the buffered restore (%.2f s)\n", a, b, n, f, f / r, r }'
kill -INT $nbdpid; wait $nbdpid || true
serve   # a fresh server: its cache of decrypted blobs is empty
"$root/bench/nbd-latency.py" "$uri" cold 400
"$root/bench/nbd-latency.py" "$uri" warm 4000
kill -INT $nbdpid; wait $nbdpid || true
cmp "$img" "$B/run/copy.raw" && echo "nbdcopy: identical, $(du -B1 "$B/run/copy.raw" | cut -f1) bytes allocated"
rm -f "$B/run/copy.raw"
t "restic restore " "$RESTIC" restore -q -r "$B/run/restic" latest --target "$B/run/rr"
rm -rf "$B/run/rr"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
