//go:build !linux

package local

import "os"

// Direct I/O is Linux's O_DIRECT; elsewhere everything is buffered.

func writeDirect(f *os.File, data []byte) (bool, error) { return false, nil }

func openDirect(path string) int { return -1 }

func preadDirect(fd int, p []byte, off int64) (int, error) { return 0, nil }

type directStream struct{}

func newDirectStream(*os.File) *directStream { return nil }

func (*directStream) write([]byte) error { return nil }
func (*directStream) finish() error      { return nil }
func (*directStream) abort()             {}

// DirectSuits: no direct I/O outside Linux.
func DirectSuits(string) bool { return false }
