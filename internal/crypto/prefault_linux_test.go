package crypto

import (
	"syscall"
	"testing"

	"golang.org/x/crypto/argon2"
)

// DeriveKey faults argon2's memory in once per page (prefault.go): left to
// itself, argon2 reads each page before writing it, which faults twice per
// page (the zero page, then a copy on write) and flushes the other core's
// TLB on the second fault.
func TestDeriveKeyFaultsOncePerPage(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector faults its shadow memory in as well")
	}
	p := DefaultKDFParams()
	pages := int64(p.MemoryKiB) / 4
	var before, after syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &before); err != nil {
		t.Skip(err)
	}
	k, err := DeriveKey([]byte("pw"), p)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &after); err != nil {
		t.Fatal(err)
	}
	if faults := int64(after.Minflt) - int64(before.Minflt); faults > pages*3/2 {
		t.Errorf("deriving a key with %d KiB of memory (%d pages) took %d page faults, want about one per page", p.MemoryKiB, pages, faults)
	}
	if want := argon2.IDKey([]byte("pw"), p.Salt, p.Time, p.MemoryKiB, p.Threads, KeySize); string(k[:]) != string(want) {
		t.Error("DeriveKey differs from argon2.IDKey")
	}
}
