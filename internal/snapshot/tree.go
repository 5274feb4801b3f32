package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/floe-backup/floe/internal/hash"
)

// Tree is one directory: its entries, sorted by name bytes. Trees returned
// by DecodeTree are sorted; EncodeTree sorts a copy, so callers may build
// Nodes in any order.
type Tree struct {
	Nodes []*Node
}

// Find returns the node called name, or nil. It uses binary search, so the
// nodes must be sorted by name (as DecodeTree returns them).
func (t *Tree) Find(name string) *Node {
	if t == nil {
		return nil
	}
	i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
	if i < len(t.Nodes) && t.Nodes[i].Name == name {
		return t.Nodes[i]
	}
	return nil
}

// TreeVersion is the version byte of encoded trees.
const TreeVersion = 2

const treeMagic = "FLTR"

// Bounds of one tree (docs/FORMAT.md "Trees"), far above any real
// directory, so that a hostile tree cannot make check, ls or prune spend
// memory without bound: a decoded node costs several times its encoded
// bytes (a million small entries decode to about 350 MB).
const (
	// MaxTreeNodes is the most entries a directory may have.
	MaxTreeNodes = 1 << 19 // 524,288
	// MaxTreeSize is the most bytes an encoded tree may have (the content
	// lists of its files included).
	MaxTreeSize = 256 << 20
	// MaxTreeXattrs is the most extended attributes the nodes of a tree
	// may have in all: a decoded attribute costs about 130 bytes where it
	// encodes to as few as 10, so a 200 MB tree of one file with 20
	// million of them decoded to 2.7 GB.
	MaxTreeXattrs = 1 << 20 // 1,048,576
)

// Field tags of docs/FORMAT.md "Trees". Tag 0 ends a node.
const (
	tagEnd        = 0
	tagName       = 1
	tagType       = 2
	tagMode       = 3
	tagUID        = 4
	tagGID        = 5
	tagUser       = 6
	tagGroup      = 7
	tagModTime    = 8
	tagAccessTime = 9
	tagChangeTime = 10
	tagInode      = 11
	tagDevice     = 12
	tagLinks      = 13
	tagSize       = 14
	tagContent    = 15
	tagSubtree    = 16
	tagLinkTarget = 17
	tagRdev       = 18
	tagXattr      = 19
	tagSparse     = 20
	tagChunkSizes = 21
	tagDeviceID   = 22
	maxKnownTag   = 22
)

var tagNames = [...]string{
	tagName: "name", tagType: "type", tagMode: "mode", tagUID: "uid", tagGID: "gid",
	tagUser: "user", tagGroup: "group", tagModTime: "mtime", tagAccessTime: "atime",
	tagChangeTime: "ctime", tagInode: "inode", tagDevice: "device", tagLinks: "links",
	tagSize: "size", tagContent: "content", tagSubtree: "subtree",
	tagLinkTarget: "link target", tagRdev: "rdev", tagXattr: "xattr", tagSparse: "sparse",
	tagChunkSizes: "chunk sizes", tagDeviceID: "device id",
}

// ErrInvalidTree is wrapped by every error of DecodeTree and EncodeTree about
// the tree's contents.
var ErrInvalidTree = errors.New("invalid tree")

func treeErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidTree, fmt.Sprintf(format, args...))
}

// EncodeTree returns the binary form of t (docs/FORMAT.md "Trees"). Nodes
// are written sorted by name bytes and xattrs sorted by name; t itself is not
// modified. Zero-valued fields are left out. It fails on nil nodes, invalid
// or duplicate names, unknown types, mode bits outside ModeMask, and empty,
// NUL-holding or duplicate xattr names.
func EncodeTree(t *Tree) ([]byte, error) {
	if t == nil {
		return nil, treeErr("nil tree")
	}
	nodes := slices.Clone(t.Nodes)
	for i, n := range nodes {
		if n == nil {
			return nil, treeErr("node %d is nil", i)
		}
	}
	if len(nodes) > MaxTreeNodes {
		return nil, treeErr("directory of %d entries: a tree holds at most %d", len(nodes), MaxTreeNodes)
	}
	slices.SortStableFunc(nodes, func(a, b *Node) int { return strings.Compare(a.Name, b.Name) })

	size := len(treeMagic) + 1 + binary.MaxVarintLen64
	for _, n := range nodes {
		size += 64 + len(n.Name) + len(n.User) + len(n.Group) + len(n.LinkTarget) + len(n.Content)*(hash.RefSize+4)
	}
	buf := make([]byte, 0, size)
	buf = append(buf, treeMagic...)
	buf = append(buf, TreeVersion)
	buf = binary.AppendUvarint(buf, uint64(len(nodes)))
	xattrs := 0
	for i, n := range nodes {
		if i > 0 && nodes[i-1].Name == n.Name {
			return nil, treeErr("duplicate name %q", n.Name)
		}
		if xattrs += len(n.Xattrs); xattrs > MaxTreeXattrs {
			return nil, treeErr("directory of more than %d extended attributes in all: a tree holds at most %d", MaxTreeXattrs, MaxTreeXattrs)
		}
		var err error
		buf, err = appendNode(buf, n)
		if err != nil {
			return nil, err
		}
		if len(buf) > MaxTreeSize {
			return nil, treeErr("directory encodes to more than %d bytes, the most a tree may have", MaxTreeSize)
		}
	}
	return buf, nil
}

func appendField(buf []byte, tag uint64, value []byte) []byte {
	buf = binary.AppendUvarint(buf, tag)
	buf = binary.AppendUvarint(buf, uint64(len(value)))
	return append(buf, value...)
}

func appendStringField(buf []byte, tag uint64, value string) []byte {
	buf = binary.AppendUvarint(buf, tag)
	buf = binary.AppendUvarint(buf, uint64(len(value)))
	return append(buf, value...)
}

func appendUvarintField(buf []byte, tag, v uint64) []byte {
	if v == 0 {
		return buf
	}
	var tmp [binary.MaxVarintLen64]byte
	return appendField(buf, tag, binary.AppendUvarint(tmp[:0], v))
}

func appendTimeField(buf []byte, tag uint64, t time.Time) []byte {
	if t.IsZero() {
		return buf
	}
	var v [12]byte
	binary.LittleEndian.PutUint64(v[:8], uint64(t.Unix()))
	binary.LittleEndian.PutUint32(v[8:], uint32(t.Nanosecond()))
	return appendField(buf, tag, v[:])
}

func appendNode(buf []byte, n *Node) ([]byte, error) {
	if err := CheckName(n.Name); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidTree, err)
	}
	if !n.Type.Valid() {
		return nil, treeErr("node %q: unknown type %d", n.Name, n.Type)
	}
	if n.Mode&^ModeMask != 0 {
		return nil, treeErr("node %q: mode %#o has bits outside %#o", n.Name, n.Mode, ModeMask)
	}
	xattrs := n.Xattrs
	if !slices.IsSortedFunc(xattrs, compareXattr) {
		xattrs = slices.Clone(xattrs)
		slices.SortStableFunc(xattrs, compareXattr)
	}
	for i, x := range xattrs {
		if err := checkXattrName(x.Name); err != nil {
			return nil, treeErr("node %q: %v", n.Name, err)
		}
		if i > 0 && xattrs[i-1].Name == x.Name {
			return nil, treeErr("node %q: duplicate xattr %q", n.Name, x.Name)
		}
	}

	buf = appendStringField(buf, tagName, n.Name)
	buf = appendField(buf, tagType, []byte{byte(n.Type)})
	buf = appendUvarintField(buf, tagMode, uint64(n.Mode))
	buf = appendUvarintField(buf, tagUID, uint64(n.UID))
	buf = appendUvarintField(buf, tagGID, uint64(n.GID))
	if n.User != "" {
		buf = appendStringField(buf, tagUser, n.User)
	}
	if n.Group != "" {
		buf = appendStringField(buf, tagGroup, n.Group)
	}
	buf = appendTimeField(buf, tagModTime, n.ModTime)
	buf = appendTimeField(buf, tagAccessTime, n.AccessTime)
	buf = appendTimeField(buf, tagChangeTime, n.ChangeTime)
	buf = appendUvarintField(buf, tagInode, n.Inode)
	buf = appendUvarintField(buf, tagDevice, n.Device)
	buf = appendUvarintField(buf, tagLinks, n.Links)
	buf = appendUvarintField(buf, tagSize, n.Size)
	if len(n.Content) != len(n.ChunkSizes) {
		return nil, treeErr("node %q: %d chunks but %d chunk sizes", n.Name, len(n.Content), len(n.ChunkSizes))
	}
	if len(n.Content) > 0 {
		buf = binary.AppendUvarint(buf, tagContent)
		buf = binary.AppendUvarint(buf, uint64(len(n.Content))*hash.RefSize)
		for _, ref := range n.Content {
			buf = hash.AppendRef(buf, ref)
		}
		var sizes []byte
		for _, sz := range n.ChunkSizes {
			sizes = binary.AppendUvarint(sizes, uint64(sz))
		}
		buf = appendField(buf, tagChunkSizes, sizes)
	}
	if !n.Subtree.IsNull() {
		buf = appendField(buf, tagSubtree, hash.AppendRef(nil, n.Subtree))
	}
	if n.LinkTarget != "" {
		buf = appendStringField(buf, tagLinkTarget, n.LinkTarget)
	}
	buf = appendUvarintField(buf, tagRdev, n.Rdev)
	for _, x := range xattrs {
		buf = binary.AppendUvarint(buf, tagXattr)
		l := uint64(len(x.Name)) + uint64(len(x.Value))
		l += uint64(len(binary.AppendUvarint(nil, uint64(len(x.Name)))))
		buf = binary.AppendUvarint(buf, l)
		buf = binary.AppendUvarint(buf, uint64(len(x.Name)))
		buf = append(buf, x.Name...)
		buf = append(buf, x.Value...)
	}
	if n.Sparse {
		buf = appendField(buf, tagSparse, nil)
	}
	if n.DeviceID != "" {
		buf = appendStringField(buf, tagDeviceID, n.DeviceID)
	}
	buf = binary.AppendUvarint(buf, tagEnd)
	return buf, nil
}

func compareXattr(a, b Xattr) int { return strings.Compare(a.Name, b.Name) }

func checkXattrName(name string) error {
	if name == "" {
		return errors.New("empty xattr name")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("xattr name %q contains NUL", name)
	}
	return nil
}

// decoder reads from a byte slice; every read is bounds-checked.
type decoder struct {
	rest   []byte
	xattrs int // extended attributes decoded so far (MaxTreeXattrs)
}

func (d *decoder) uvarint(what string) (uint64, error) {
	v, n := binary.Uvarint(d.rest)
	if n == 0 {
		return 0, treeErr("truncated data reading %s", what)
	}
	if n < 0 {
		return 0, treeErr("%s: uvarint overflows 64 bits", what)
	}
	d.rest = d.rest[n:]
	return v, nil
}

func (d *decoder) bytes(n uint64, what string) ([]byte, error) {
	if n > uint64(len(d.rest)) {
		return nil, treeErr("truncated data: %s needs %d bytes, %d left", what, n, len(d.rest))
	}
	b := d.rest[:n]
	d.rest = d.rest[n:]
	return b, nil
}

// DecodeTree parses an encoded tree (docs/FORMAT.md "Trees"). It checks
// everything it reads and fails, with an error wrapping ErrInvalidTree, on a
// bad magic or version, truncated or trailing data, invalid, unsorted or
// duplicate names, unknown node types, malformed known fields, and counts
// larger than the data could hold. Unknown field tags are skipped. The result
// does not alias data.
func DecodeTree(data []byte) (*Tree, error) {
	if len(data) > MaxTreeSize {
		return nil, treeErr("%d bytes: a tree has at most %d", len(data), MaxTreeSize)
	}
	if len(data) < len(treeMagic)+1 || string(data[:len(treeMagic)]) != treeMagic {
		return nil, treeErr("bad magic, not a tree")
	}
	if v := data[len(treeMagic)]; v != TreeVersion {
		return nil, treeErr("unsupported tree version %d", v)
	}
	d := &decoder{rest: data[len(treeMagic)+1:]}
	count, err := d.uvarint("node count")
	if err != nil {
		return nil, err
	}
	// Every node takes at least one byte, so a larger count is hostile.
	if count > uint64(len(d.rest)) {
		return nil, treeErr("node count %d exceeds the %d bytes of data", count, len(d.rest))
	}
	if count > MaxTreeNodes {
		return nil, treeErr("%d entries: a tree holds at most %d", count, MaxTreeNodes)
	}
	t := &Tree{Nodes: make([]*Node, 0, count)}
	for i := uint64(0); i < count; i++ {
		n, err := d.node()
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		if i > 0 {
			prev := t.Nodes[i-1].Name
			if prev == n.Name {
				return nil, treeErr("node %d: duplicate name %q", i, n.Name)
			}
			if prev > n.Name {
				return nil, treeErr("node %d: name %q sorts before %q", i, n.Name, prev)
			}
		}
		t.Nodes = append(t.Nodes, n)
	}
	if len(d.rest) != 0 {
		return nil, treeErr("%d trailing bytes after the last node", len(d.rest))
	}
	return t, nil
}

func (d *decoder) node() (*Node, error) {
	n := &Node{}
	var seen uint64 // bit per known tag, to reject repeated fields
	for {
		tag, err := d.uvarint("field tag")
		if err != nil {
			return nil, err
		}
		if tag == tagEnd {
			break
		}
		length, err := d.uvarint("field length")
		if err != nil {
			return nil, err
		}
		what := "unknown field"
		if tag <= maxKnownTag {
			what = tagNames[tag] + " field"
		}
		v, err := d.bytes(length, what)
		if err != nil {
			return nil, err
		}
		if tag > maxKnownTag {
			continue // a later version's field
		}
		if tag == tagXattr {
			// counted before decoding: past the bound, nothing more is
			// allocated
			if d.xattrs++; d.xattrs > MaxTreeXattrs {
				return nil, treeErr("too many extended attributes: a tree holds at most %d", MaxTreeXattrs)
			}
		} else {
			if seen&(1<<tag) != 0 {
				return nil, treeErr("repeated %s", what)
			}
			seen |= 1 << tag
		}
		if err := n.setField(tag, v); err != nil {
			return nil, err
		}
	}
	if seen&(1<<tagName) == 0 {
		return nil, treeErr("node has no name")
	}
	if seen&(1<<tagType) == 0 {
		return nil, treeErr("node %q has no type", n.Name)
	}
	if len(n.Content) != len(n.ChunkSizes) {
		return nil, treeErr("node %q has %d chunks but %d chunk sizes", n.Name, len(n.Content), len(n.ChunkSizes))
	}
	if len(n.Content) > 0 {
		var sum uint64
		for _, sz := range n.ChunkSizes {
			sum += uint64(sz)
		}
		if sum != n.Size {
			return nil, treeErr("node %q: chunk sizes add up to %d, its size is %d", n.Name, sum, n.Size)
		}
	}
	return n, nil
}

func (n *Node) setField(tag uint64, v []byte) error {
	what := tagNames[tag]
	switch tag {
	case tagName:
		n.Name = string(v)
		if err := CheckName(n.Name); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidTree, err)
		}
	case tagType:
		if len(v) != 1 || !NodeType(v[0]).Valid() {
			return treeErr("invalid type field %x", v)
		}
		n.Type = NodeType(v[0])
	case tagMode:
		m, err := fieldUvarint(v, what, ModeMask)
		if err != nil {
			return err
		}
		n.Mode = uint32(m)
	case tagUID, tagGID:
		id, err := fieldUvarint(v, what, math.MaxUint32)
		if err != nil {
			return err
		}
		if tag == tagUID {
			n.UID = uint32(id)
		} else {
			n.GID = uint32(id)
		}
	case tagUser:
		n.User = string(v)
	case tagGroup:
		n.Group = string(v)
	case tagDeviceID:
		n.DeviceID = string(v)
	case tagModTime, tagAccessTime, tagChangeTime:
		if len(v) != 12 {
			return treeErr("%s field has %d bytes, want 12", what, len(v))
		}
		sec := int64(binary.LittleEndian.Uint64(v[:8]))
		nsec := binary.LittleEndian.Uint32(v[8:])
		if nsec >= 1e9 {
			return treeErr("%s field has %d nanoseconds", what, nsec)
		}
		t := time.Unix(sec, int64(nsec)).UTC()
		switch tag {
		case tagModTime:
			n.ModTime = t
		case tagAccessTime:
			n.AccessTime = t
		default:
			n.ChangeTime = t
		}
	case tagInode, tagDevice, tagLinks, tagSize, tagRdev:
		x, err := fieldUvarint(v, what, math.MaxUint64)
		if err != nil {
			return err
		}
		switch tag {
		case tagInode:
			n.Inode = x
		case tagDevice:
			n.Device = x
		case tagLinks:
			n.Links = x
		case tagSize:
			n.Size = x
		default:
			n.Rdev = x
		}
	case tagContent:
		if len(v)%hash.RefSize != 0 {
			return treeErr("content field has %d bytes, not a multiple of %d", len(v), hash.RefSize)
		}
		if len(v) == 0 {
			break // as if absent: an empty list encodes to nothing
		}
		n.Content = make([]hash.Ref, len(v)/hash.RefSize)
		for i := range n.Content {
			n.Content[i] = hash.RefFromBytes(v[i*hash.RefSize:])
		}
	case tagChunkSizes:
		// each size takes at least one byte, which bounds the allocation
		sizes := make([]uint32, 0, len(v))
		for len(v) > 0 {
			x, k := binary.Uvarint(v)
			if k <= 0 || x > math.MaxUint32 {
				return treeErr("malformed chunk sizes field")
			}
			sizes = append(sizes, uint32(x))
			v = v[k:]
		}
		if len(sizes) > 0 {
			n.ChunkSizes = sizes
		}
	case tagSubtree:
		if len(v) != hash.RefSize {
			return treeErr("subtree field has %d bytes, want %d", len(v), hash.RefSize)
		}
		n.Subtree = hash.RefFromBytes(v)
	case tagLinkTarget:
		n.LinkTarget = string(v)
	case tagXattr:
		l, k := binary.Uvarint(v)
		if k <= 0 || l > uint64(len(v)-k) {
			return treeErr("malformed xattr field")
		}
		x := Xattr{Name: string(v[k : k+int(l)]), Value: bytes.Clone(v[k+int(l):])}
		if err := checkXattrName(x.Name); err != nil {
			return treeErr("%v", err)
		}
		if len(n.Xattrs) > 0 && n.Xattrs[len(n.Xattrs)-1].Name >= x.Name {
			return treeErr("xattr %q is duplicate or out of order", x.Name)
		}
		n.Xattrs = append(n.Xattrs, x)
	case tagSparse:
		if len(v) != 0 {
			return treeErr("sparse field has a value")
		}
		n.Sparse = true
	}
	return nil
}

// fieldUvarint decodes a field value that must be exactly one uvarint no
// larger than limit.
func fieldUvarint(v []byte, what string, limit uint64) (uint64, error) {
	x, k := binary.Uvarint(v)
	if k <= 0 || k != len(v) {
		return 0, treeErr("malformed %s field", what)
	}
	if x > limit {
		return 0, treeErr("%s %d out of range", what, x)
	}
	return x, nil
}
