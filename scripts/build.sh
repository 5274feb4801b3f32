#!/usr/bin/env bash
# Builds floe as README promises it: one static binary, reproducible.
#
#   scripts/build.sh [-o OUTPUT]     (default: ./floe)
#
# - static: CGO_ENABLED=0, so the binary needs no libc and runs on any Linux
#   of its architecture. The price: user and group names (backup records
#   them, restore maps them back) come from Go's own os/user, which reads
#   /etc/passwd and /etc/group only, not NSS (LDAP, SSSD, systemd-homed).
#   Numeric IDs are always recorded and restored; only names of accounts
#   that exist solely in a directory service are missing.
# - reproducible: -trimpath (no build paths in the binary), and the version
#   (`git describe --dirty`) and commit stamped with -ldflags -X: the same
#   commit and Go version give the same bytes. -buildvcs=false because the
#   go command's own stamping sees only a .git directory, not a git worktree
#   (.git is a file there), so the binary would differ by where it was built.
set -euo pipefail
cd "$(dirname "$0")/.."

out=floe
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift 2 ;;
    -o=*) out="${1#-o=}"; shift ;;
    *) echo "usage: scripts/build.sh [-o OUTPUT]" >&2; exit 2 ;;
  esac
done

version=$(git describe --tags --always --dirty 2>/dev/null || true)
version=${version:-0.1.0-dev}
commit=$(git rev-parse HEAD 2>/dev/null || true)

CGO_ENABLED=0 go build -trimpath -buildvcs=false \
  -ldflags "-s -w -X main.version=${version} -X main.commit=${commit}" \
  -o "$out" ./cmd/floe
echo "built $out: floe $version (static)"
