package repo

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A lease names its holder's process precisely enough that a prune or a
// repair on the same machine can tell that the holder is gone (killed,
// or the machine rebooted) and take the lease over at once instead of
// waiting up to its TTL: the kernel's boot ID (one per boot), the PID
// namespace (containers on one host share the boot ID and the host name,
// but not this), the PID and the process's start time (PIDs are reused).

// procIdentity returns the boot ID and the PID namespace of this process,
// and the start time of process pid as this process sees it; ok is false
// where any of them cannot be read (the lease is then never taken over
// early).
func procIdentity(pid int) (boot, pidNS string, start uint64, ok bool) {
	boot, pidNS = machineIdentity()
	if boot == "" || pidNS == "" {
		return "", "", 0, false
	}
	start, ok = procStart(pid)
	return boot, pidNS, start, ok
}

// machineIdentity returns this boot's ID and this process's PID
// namespace, "" where they cannot be read. Neither changes while the
// process runs: read once.
var machineIdentity = sync.OnceValues(func() (boot, pidNS string) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", ""
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return "", ""
	}
	return strings.TrimSpace(string(b)), ns
})

// procStart reads the start time of pid (clock ticks after boot, field 22
// of /proc/PID/stat); ok is false if there is no such process.
func procStart(pid int) (uint64, bool) {
	if pid <= 0 {
		return 0, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return statStart(b)
}

// statStart returns the start time in a /proc/PID/stat line. The command
// name (field 2) is in parentheses and may hold anything, parentheses and
// spaces too: the fields after it follow the last ')'.
func statStart(b []byte) (uint64, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 { // f[0] is field 3 (state), f[19] field 22
		return 0, false
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	return start, err == nil
}

// holderGone reports whether l's holder ran on this machine (this boot,
// this PID namespace) and is no longer running: no process has its PID,
// or the one that has it started at another time. Whether the PID exists
// is asked of kill(2), not /proc: /proc mounted with hidepid hides the
// processes of other users, which must not look gone.
func holderGone(l *Lease) bool {
	if !ranHere(l) {
		return false
	}
	if err := unix.Kill(l.PID, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	// it exists (we may not be allowed to signal it): gone only if it is
	// another process that was given the PID since
	start, ok := procStart(l.PID)
	return ok && start != l.Start
}

// holderRunsHere reports whether l's holder is known to be running on this
// machine: this boot, this PID namespace, and a process with its PID and
// start time.
func holderRunsHere(l *Lease) bool {
	if !ranHere(l) {
		return false
	}
	start, ok := procStart(l.PID)
	return ok && start == l.Start
}

// ranHere reports whether l names a process of this boot and this PID
// namespace.
func ranHere(l *Lease) bool {
	if l.Boot == "" || l.PIDNS == "" || l.Start == 0 || l.PID <= 0 {
		return false
	}
	boot, pidNS := machineIdentity()
	return boot == l.Boot && pidNS == l.PIDNS
}
