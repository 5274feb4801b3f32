package local

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteBack asks the kernel to begin writing n bytes at off to the
// disk, without waiting for it. It is advice: an error here shows again
// at the fsync that makes the file durable, which is where it is handled.
func startWriteBack(f *os.File, off, n int64) {
	unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
