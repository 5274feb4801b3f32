// Package snapshot is the model layer: snapshot records, trees (encoded
// directories) and nodes (one file's metadata), with the encodings of
// docs/FORMAT.md ("Trees" and "Snapshots").
package snapshot

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/floe-backup/floe/internal/hash"
)

// NodeType is the kind of a file system object. The values are those of the
// tree format and must not change.
type NodeType uint8

// Node types (docs/FORMAT.md, tree tag 2).
const (
	TypeFile     NodeType = 1
	TypeDir      NodeType = 2
	TypeSymlink  NodeType = 3
	TypeFIFO     NodeType = 4
	TypeCharDev  NodeType = 5
	TypeBlockDev NodeType = 6
	TypeSocket   NodeType = 7
)

// String returns a short lower-case name such as "file" or "chardev".
func (t NodeType) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeFIFO:
		return "fifo"
	case TypeCharDev:
		return "chardev"
	case TypeBlockDev:
		return "blockdev"
	case TypeSocket:
		return "socket"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Valid reports whether t is one of the known node types.
func (t NodeType) Valid() bool { return t >= TypeFile && t <= TypeSocket }

// ModeMask holds the bits Node.Mode may use: permissions, setuid, setgid and
// sticky, as in Unix st_mode & 07777 (not os.FileMode bits).
const ModeMask = 0o7777

// Xattr is one extended attribute. Name is the full name with its namespace,
// such as "user.comment" or "security.capability".
type Xattr struct {
	Name  string
	Value []byte
}

// Node is the metadata of one file system object, named within its
// directory. Strings hold raw bytes and need not be valid UTF-8.
type Node struct {
	Name string   // one path element, raw bytes; see CheckName
	Type NodeType // TypeFile ... TypeSocket
	Mode uint32   // Unix bits st_mode & 07777 (ModeMask)

	UID, GID    uint32
	User, Group string // names at backup time; empty if unknown

	// Times are stored with nanoseconds; decoded times are in UTC.
	// The zero time means "unknown" and is not stored.
	ModTime, AccessTime, ChangeTime time.Time

	Inode, Device, Links uint64

	Size       uint64     // regular files: content length in bytes
	Content    []hash.Ref // regular files: data blobs, in order
	ChunkSizes []uint32   // regular files: the plaintext size of each blob of Content
	Subtree    hash.Ref   // directories: tree blob of the contents
	LinkTarget string     // symlinks: target, raw bytes
	// Rdev is the device number of char and block devices, and of the
	// block device an image (backup --image) was read from.
	Rdev   uint64
	Xattrs []Xattr // extended attributes; encoded sorted by name
	Sparse bool    // content was read with holes; restore may punch them
	// DeviceID names the block device an image was read from, beyond its
	// number: "by-id/NAME" (its /dev/disk/by-id link), "serial/S" or
	// "loop/BACKING-FILE"; empty for everything else.
	DeviceID string
}

// ErrInvalidName is wrapped by errors about names that a tree may not hold.
var ErrInvalidName = errors.New("invalid file name")

// CheckName reports whether name may be a node name: a non-empty single path
// element that is not "." or ".." and holds no '/' or NUL byte. Any other
// bytes are allowed, valid UTF-8 or not. Restore relies on this check to
// never write outside its target directory.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	case strings.IndexByte(name, '/') >= 0:
		return fmt.Errorf("%w: %q contains '/'", ErrInvalidName, name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: %q contains NUL", ErrInvalidName, name)
	}
	return nil
}
