#!/bin/bash
# bench/scale.sh: the figures of bench/SCALE.md. Generates synthetic
# repositories of 1M, 3M and 10M chunks (index files of 10,000 chunks)
# in $BENCH_DIR/scale (about 570 MB, kept for the next run), then measures
# for each: open + load the index without and with the index cache
# (bench/scale -measure) and `floe backup` of one small file without and
# with a warm index cache. CPU is user+sys from GNU time. Needs about
# 600 MB more for the caches, removed at the end.
#
#   bench/scale.sh [CHUNKS...]     default: 1000000 3000000 10000000
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BENCH_DIR:-/tmp/floe-bench}/scale
mkdir -p "$dir"
go build -o "$dir/scale" ./bench/scale
go build -o "$dir/floe" ./cmd/floe
pw=$dir/password
[ -f "$pw" ] || { echo floe-scale-bench >"$pw"; chmod 600 "$pw"; }
mkdir -p "$dir/small"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 3000000 10000000)

row() { # label command...: one line of wall, CPU, peak RSS (and what -measure says)
	local label=$1 out
	shift
	out=$(/usr/bin/time -f "TIME %e %U %S %M" "$@" 2>&1) || { echo "$out"; return 1; }
	local t
	t=$(grep '^TIME' <<<"$out")
	read -r _ wall user sys rss <<<"$t"
	printf '%-44s wall %6.2f s  CPU %5.2f s  peak RSS %5d MiB  %s\n' "$label" "$wall" \
		"$(echo "$user + $sys" | bc)" $((rss / 1024)) \
		"$(grep -E '^(index from|bytes per chunk)' <<<"$out" | tr '\n' ' ')"
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg)  $(date -u +%FT%TZ)"
for n in "${sizes[@]}"; do
	repo=$dir/r$n
	if [ ! -f "$repo/config" ]; then
		rm -rf "$repo"
		"$dir/scale" -repo "$repo" -password-file "$pw" -chunks "$n" -files $(((n + 9999) / 10000))
	fi
	cache=$dir/cache-$n
	rm -rf "$cache"
	echo "== $n chunks"
	row "scale -measure" "$dir/scale" -repo "$repo" -password-file "$pw" -measure
	row "scale -measure -cache (fills it)" "$dir/scale" -repo "$repo" -password-file "$pw" -measure -cache "$cache/idx"
	row "scale -measure -cache" "$dir/scale" -repo "$repo" -password-file "$pw" -measure -cache "$cache/idx"
	date +%s.%N >"$dir/small/f"
	row "floe backup --no-cache" "$dir/floe" backup --no-cache -q -r "$repo" --password-file "$pw" "$dir/small"
	date +%s.%N >"$dir/small/f"
	row "floe backup (fills the index cache)" "$dir/floe" backup --cache-dir "$cache/floe" -q -r "$repo" --password-file "$pw" "$dir/small"
	date +%s.%N >"$dir/small/f"
	row "floe backup (index cache warm)" "$dir/floe" backup --cache-dir "$cache/floe" -q -r "$repo" --password-file "$pw" "$dir/small"
	rm -rf "$cache"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
