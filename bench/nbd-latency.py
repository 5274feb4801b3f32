#!/usr/bin/python3
# bench/nbd-latency.py: latency of random 4 KiB reads through an NBD export
# (bench/images.sh runs it against `floe nbd`), with libnbd's Python
# bindings (Debian python3-libnbd, which scripts/test.sh installs).
#
#   nbd-latency.py URI cold|warm [N] [SEED]
#
# Offsets are 4 KiB-aligned, uniform over the export's allocated extents
# (BLOCK_STATUS base:allocation): a hole costs nothing to read and would only
# flatter the figures.
#   cold  N reads at distinct random offsets, each the first read of its
#         offset: run it right after the server starts, so that its cache
#         of decrypted blobs is empty and (nearly) every read loads a blob.
#   warm  16 random offsets are read once (loading their blobs), then N
#         reads cycle over them: every read is served from the cache.
# Prints one line: mode, count, p50, p90, p99 and max in milliseconds.
import random
import sys
import time

import nbd

BLOCK = 4096


def extents(h, size):
    """The allocated (data) extents of the export as (offset, length)."""
    out = []
    off = 0
    while off < size:
        got = []

        def cb(metacontext, offset, entries, err):
            if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                got.extend(entries)
            return 0

        h.block_status(min(size - off, 1 << 30), off, cb)
        if not got:
            break
        for i in range(0, len(got), 2):
            length, flags = got[i], got[i + 1]
            if not flags & nbd.STATE_HOLE:
                out.append((off, length))
            off += length
    return out


def pick(ext, rnd):
    """A random 4 KiB-aligned offset inside the data extents."""
    total = sum(l // BLOCK for _, l in ext)
    k = rnd.randrange(total)
    for off, length in ext:
        n = length // BLOCK
        if k < n:
            return off + k * BLOCK
        k -= n
    raise AssertionError


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def main():
    uri, mode = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    rnd = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    size = h.get_size()
    ext = extents(h, size)
    if not ext:
        sys.exit("nbd-latency: the export has no data")
    if mode == "cold":
        offs, seen = [], set()
        while len(offs) < n:
            o = pick(ext, rnd)
            if o not in seen:
                seen.add(o)
                offs.append(o)
    elif mode == "warm":
        hot = [pick(ext, rnd) for _ in range(16)]
        for o in hot:
            h.pread(BLOCK, o)
        offs = [hot[i % len(hot)] for i in range(n)]
        rnd.shuffle(offs)
    else:
        sys.exit("nbd-latency: mode is cold or warm")
    lat = []
    for o in offs:
        t = time.perf_counter()
        h.pread(BLOCK, o)
        lat.append((time.perf_counter() - t) * 1000)
    h.shutdown()
    print("%s: %d random 4 KiB reads, p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms"
          % (mode, len(lat), pct(lat, 50), pct(lat, 90), pct(lat, 99), max(lat)))


main()
