#!/usr/bin/env bash
# The whole test suite: formatting, vet, unit and end-to-end tests, and a
# short run of every fuzz target. Installs what the tests need on a fresh
# Debian machine with Go.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v xattr >/dev/null 2>&1 || true
# backup --fs-snapshot tests (e2e/fssnap_test.go): btrfs and LVM on loop devices
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have mkfs.btrfs || need+=(btrfs-progs)
have lvcreate || need+=(lvm2)
# scripts/build.sh's test checks the binary is static with file(1)
command -v file >/dev/null 2>&1 || need+=(file)
# e2fsprogs also gives chattr (e2e/attack_test.go: a gc directory that cannot be written)
# and debugfs (e2e/image_test.go: a file read out of an image served by floe nbd through nbdfuse)
have mkfs.ext4 && have chattr && have debugfs || need+=(e2fsprogs)
# sfdisk writes the partition table of a VM disk image out of which a file
# is read through floe nbd (e2e/image_test.go: TestImagePartitionedFileOut)
have sfdisk || need+=(fdisk)
# floe agent install (e2e/agent_test.go): the unit is checked with systemd-analyze verify
have systemd-analyze || need+=(systemd)
# ssh:// locations (e2e/ssh_test.go): a real sshd on a loopback port
have sshd && have ssh-keygen && command -v ssh >/dev/null 2>&1 || need+=(openssh-server openssh-client)
# NBD tests (internal/nbd/tools_test.go) use real clients: qemu-img and
# qemu-io, nbdinfo and nbdcopy, libnbd's Python bindings; nbdkit is the
# reference server whose block map ours is checked against. FLOE_REQUIRE_NBD_TOOLS=1
# (below) makes a missing one a failure.
have qemu-img && have qemu-io || need+=(qemu-utils)
have nbdinfo && have nbdcopy && have nbdfuse || need+=(libnbd-bin)
have nbdkit || need+=(nbdkit)
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || need+=(python3-libnbd)
# the dashboard driven in real headless Chromium (internal/web/browser_test.go)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The LVM snapshot tests need the kernel's device-mapper, which the kernel
# of the development machines and CI lacks: TestLVMInVM (e2e/lvm_vm_test.go)
# runs them in a VM under qemu's software emulation, booting Debian's kernel
# (unpacked below, not installed) with an initramfs of busybox. Without
# recommends: qemu-system-x86's would bring a GUI.
need_norec=()
have qemu-system-x86_64 || need_norec+=(qemu-system-x86)
# the initramfs has no libraries: the static busybox, not Debian's default one
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need_norec+=(busybox-static)
updated=""
if [ $((${#need[@]} + ${#need_norec[@]})) -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing test dependencies: ${need[*]} ${need_norec[*]}"
  apt-get update -qq >/dev/null 2>&1 && updated=1
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
      echo "warning: could not install ${need[*]}; tests that need them are skipped"
  fi
  if [ ${#need_norec[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_norec[@]}" >/dev/null 2>&1 ||
      echo "warning: could not install ${need_norec[*]}; TestLVMInVM will fail"
  fi
fi

# The VM's kernel: the package Debian's linux-image-amd64 points to, fetched
# with apt-get download and unpacked with dpkg-deb -x into a cache directory
# (about 70 MB to fetch, 400 MB unpacked, kept between runs; an older one is
# removed when Debian moves on). FLOE_E2E_VM_KERNEL tells TestLVMInVM where
# it is; FLOE_REQUIRE_LVM_VM=1 makes a missing qemu, busybox or kernel a
# failure of that test instead of a skip.
vm_cache="${XDG_CACHE_HOME:-$HOME/.cache}/floe-test-vm"
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -1; }
vm_kernel_pkg=""
if command -v apt-get >/dev/null 2>&1; then
  vm_kernel_pkg=$(kernel_pkg)
  if [ -z "$vm_kernel_pkg" ] && [ -z "$updated" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 && vm_kernel_pkg=$(kernel_pkg)
  fi
fi
if [ -n "$vm_kernel_pkg" ]; then
  vm_kernel="$vm_cache/$vm_kernel_pkg"
  if ! ls "$vm_kernel"/boot/vmlinuz-* >/dev/null 2>&1; then
    echo "fetching the test VM's kernel: $vm_kernel_pkg"
    vm_tmp=$(mktemp -d)
    if (cd "$vm_tmp" && apt-get download -qq "$vm_kernel_pkg") >/dev/null 2>&1 &&
      rm -rf "$vm_kernel.part" && mkdir -p "$vm_kernel.part" &&
      dpkg-deb -x "$vm_tmp"/"$vm_kernel_pkg"_*.deb "$vm_kernel.part" && mv "$vm_kernel.part" "$vm_kernel"; then
      find "$vm_cache" -mindepth 1 -maxdepth 1 ! -name "$vm_kernel_pkg" -exec rm -rf {} +
    else
      echo "warning: could not fetch and unpack $vm_kernel_pkg; TestLVMInVM will fail"
    fi
    rm -rf "$vm_tmp"
  fi
  export FLOE_E2E_VM_KERNEL="$vm_kernel"
else
  echo "warning: no Debian kernel package found (apt-cache depends linux-image-amd64); TestLVMInVM will fail"
fi
export FLOE_REQUIRE_LVM_VM=1

# S3 tests (internal/storage/s3, e2e/s3_test.go) run against a real S3
# server, versitygw, started by the tests on loopback. Installed pinned with
# go install (about 2 minutes the first time; the binary lands in
# $(go env GOPATH)/bin, where the tests look). FLOE_REQUIRE_S3=1 turns the
# tests' "versitygw not found" skip into a failure.
versitygw_version=v1.8.0 # keep in step with s3test.VersitygwVersion
gobin=$(go env GOBIN); [ -n "$gobin" ] || gobin="$(go env GOPATH | cut -d: -f1)/bin"
if ! go version -m "$gobin/versitygw" 2>/dev/null | grep -q "^[[:space:]]*mod[[:space:]]*github.com/versity/versitygw[[:space:]]*$versitygw_version[[:space:]]"; then
  echo "installing versitygw $versitygw_version (S3 server for the tests)"
  go install "github.com/versity/versitygw/cmd/versitygw@$versitygw_version" ||
    echo "warning: could not install versitygw; the S3 tests will fail"
fi
export FLOE_REQUIRE_S3=1
export FLOE_REQUIRE_NBD_TOOLS=1
# a missing Chromium fails the dashboard's browser test instead of skipping it
export FLOE_REQUIRE_CHROMIUM=1

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test"
# here the ssh tests must run: one that cannot start sshd fails, not skips
export FLOE_E2E_REQUIRE_SSHD=1
go test -count=1 -timeout 20m ./...

echo "== go test -race (unit tests)"
# Restore, backup, the server and the agent are concurrent throughout.
# The end-to-end tests are left out here (they take about 20 minutes
# under the race detector on 2 cores); `go test -race ./e2e` builds the
# floe under test with it too.
go test -race -count=1 -timeout 30m ./internal/...

echo "== fuzz (each target briefly)"
fuzztime=${FUZZTIME:-4s}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $target"
    # A run fails when the fuzzer finds an input that breaks the target (it
    # says "Failing input written to"). Go's fuzzer sometimes also ends a
    # run at its time limit with "context deadline exceeded" and no input:
    # that is retried, and only reported if it keeps happening (a race in
    # the fuzz coordinator, golang/go#75804, fixed in Go 1.27).
    ok=""
    for attempt in 1 2 3; do
      if go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" "$pkg" >/tmp/floe-fuzz.log 2>&1; then
        ok=1; break
      fi
      if grep -q "Failing input written to" /tmp/floe-fuzz.log || ! grep -q "context deadline exceeded" /tmp/floe-fuzz.log; then
        cat /tmp/floe-fuzz.log; echo "fuzz target $target in $pkg failed"; exit 1
      fi
      echo "  (the fuzzer stopped at its time limit without a failing input; again)"
    done
    [ -n "$ok" ] || echo "  warning: $target kept ending at its time limit; no failing input was found"
  done
done
echo "all tests passed"
