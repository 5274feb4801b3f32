package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
)

func testID(b byte) hash.ID {
	var id hash.ID
	for i := range id {
		id[i] = b + byte(i)
	}
	return id
}

// testRef is a made-up blob reference.
func testRef(b byte) hash.Ref { return hash.Ref{ID: testID(b), Key: testID(b + 100)} }

// longName is a 255-byte name that is not valid UTF-8.
func longName(first byte) string {
	b := bytes.Repeat([]byte{0xff, 0xfe, 'x'}, 85)
	b[0] = first
	return string(b)
}

func fullNode() *Node {
	return &Node{
		Name: "file.txt", Type: TypeFile, Mode: 0o4755,
		UID: 1000, GID: 4294967295, User: "alice", Group: "staff\xff",
		ModTime:    time.Date(2026, 11, 21, 20, 30, 0, 123456789, time.UTC),
		AccessTime: time.Date(1969, 7, 20, 20, 17, 40, 999999999, time.UTC),
		ChangeTime: time.Unix(-1, 1).UTC(),
		Inode:      1<<64 - 1, Device: 0x803, Links: 2, Size: 3 << 30,
		Content:    []hash.Ref{testRef(1), testRef(2), testRef(1)},
		ChunkSizes: []uint32{1 << 30, 1 << 30, 1 << 30},
		Xattrs: []Xattr{
			{Name: "security.capability", Value: []byte{1, 0, 0, 2}},
			{Name: "user.empty", Value: []byte{}},
			{Name: "user.raw\xff", Value: []byte("\x00\xff")},
		},
		Sparse: true, Rdev: 0xfd00, DeviceID: "by-id/virtio-web1",
	}
}

func allTypesTree() *Tree {
	return &Tree{Nodes: []*Node{
		fullNode(),
		{Name: "a dir", Type: TypeDir, Mode: 0o1777, Subtree: testRef(9), Links: 3},
		{Name: "link", Type: TypeSymlink, Mode: 0o777, LinkTarget: "../target\xff/x"},
		{Name: "fifo", Type: TypeFIFO, Mode: 0o600},
		{Name: "null", Type: TypeCharDev, Mode: 0o666, Rdev: 0x103},
		{Name: "sda", Type: TypeBlockDev, Mode: 0o660, Rdev: 0x800},
		{Name: "sock", Type: TypeSocket, Mode: 0o755},
		{Name: longName('z'), Type: TypeFile},
		{Name: longName(0x80), Type: TypeFile, Size: 7, Content: []hash.Ref{testRef(3)}, ChunkSizes: []uint32{7}},
		{Name: "zero times", Type: TypeFile, ModTime: time.Time{}, AccessTime: time.Time{}},
	}}
}

func sortedCopy(t *Tree) *Tree {
	out := &Tree{Nodes: append([]*Node(nil), t.Nodes...)}
	for i := range out.Nodes {
		for j := i + 1; j < len(out.Nodes); j++ {
			if out.Nodes[j].Name < out.Nodes[i].Name {
				out.Nodes[i], out.Nodes[j] = out.Nodes[j], out.Nodes[i]
			}
		}
	}
	return out
}

func TestTreeRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		tree *Tree
	}{
		{"empty", &Tree{}},
		{"one minimal", &Tree{Nodes: []*Node{{Name: "x", Type: TypeFile}}}},
		{"full file", &Tree{Nodes: []*Node{fullNode()}}},
		{"all types unsorted", allTypesTree()},
		{"non-utf8 255-byte names", &Tree{Nodes: []*Node{
			{Name: longName(0xc0), Type: TypeDir, Subtree: testRef(4)},
			{Name: longName(0x01), Type: TypeFile},
		}}},
		{"odd bytes", &Tree{Nodes: []*Node{
			{Name: "\n\t\x01 b64:x", Type: TypeFile},
			{Name: "...", Type: TypeFile},
			{Name: ".hidden", Type: TypeFile},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := append([]*Node(nil), tt.tree.Nodes...)
			data, err := EncodeTree(tt.tree)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(before, tt.tree.Nodes) {
				t.Fatal("EncodeTree modified its input")
			}
			got, err := DecodeTree(data)
			if err != nil {
				t.Fatal(err)
			}
			want := sortedCopy(tt.tree)
			if len(want.Nodes) == 0 {
				want.Nodes = []*Node{}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip differs:\n got %+v\nwant %+v", got.Nodes, want.Nodes)
			}
			again, err := EncodeTree(got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, data) {
				t.Fatal("encoding is not deterministic")
			}
		})
	}
}

func TestEncodeSortsXattrs(t *testing.T) {
	n := &Node{Name: "f", Type: TypeFile, Xattrs: []Xattr{{"user.b", []byte("2")}, {"user.a", []byte("1")}}}
	data, err := EncodeTree(&Tree{Nodes: []*Node{n}})
	if err != nil {
		t.Fatal(err)
	}
	if n.Xattrs[0].Name != "user.b" {
		t.Fatal("EncodeTree modified the node's xattrs")
	}
	got, err := DecodeTree(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []Xattr{{"user.a", []byte("1")}, {"user.b", []byte("2")}}
	if !reflect.DeepEqual(got.Nodes[0].Xattrs, want) {
		t.Fatalf("xattrs %+v, want %+v", got.Nodes[0].Xattrs, want)
	}
}

func TestFind(t *testing.T) {
	data, err := EncodeTree(allTypesTree())
	if err != nil {
		t.Fatal(err)
	}
	tree, err := DecodeTree(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range allTypesTree().Nodes {
		got := tree.Find(n.Name)
		if got == nil || got.Name != n.Name {
			t.Errorf("Find(%q) = %v", n.Name, got)
		}
	}
	for _, name := range []string{"", "a", "file.tx", "file.txtt", "zzzz" + longName('z')} {
		if got := tree.Find(name); got != nil {
			t.Errorf("Find(%q) = %q, want nil", name, got.Name)
		}
	}
	if (*Tree)(nil).Find("x") != nil {
		t.Error("nil tree found something")
	}
}

func TestEncodeTreeRejects(t *testing.T) {
	tests := []struct {
		name string
		tree *Tree
		want string
	}{
		{"nil tree", nil, "nil tree"},
		{"nil node", &Tree{Nodes: []*Node{nil}}, "nil"},
		{"empty name", &Tree{Nodes: []*Node{{Type: TypeFile}}}, "empty name"},
		{"dot", &Tree{Nodes: []*Node{{Name: ".", Type: TypeFile}}}, `"."`},
		{"dotdot", &Tree{Nodes: []*Node{{Name: "..", Type: TypeFile}}}, `".."`},
		{"slash", &Tree{Nodes: []*Node{{Name: "a/b", Type: TypeFile}}}, "'/'"},
		{"nul", &Tree{Nodes: []*Node{{Name: "a\x00", Type: TypeFile}}}, "NUL"},
		{"duplicate", &Tree{Nodes: []*Node{{Name: "a", Type: TypeFile}, {Name: "a", Type: TypeDir}}}, "duplicate name"},
		{"type 0", &Tree{Nodes: []*Node{{Name: "a"}}}, "unknown type"},
		{"type 8", &Tree{Nodes: []*Node{{Name: "a", Type: 8}}}, "unknown type"},
		{"mode", &Tree{Nodes: []*Node{{Name: "a", Type: TypeFile, Mode: 0o100644}}}, "mode"},
		{"xattr empty", &Tree{Nodes: []*Node{{Name: "a", Type: TypeFile, Xattrs: []Xattr{{}}}}}, "empty xattr name"},
		{"xattr dup", &Tree{Nodes: []*Node{{Name: "a", Type: TypeFile, Xattrs: []Xattr{{Name: "user.x"}, {Name: "user.x"}}}}}, "duplicate xattr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := EncodeTree(tt.tree)
			if err == nil || !errors.Is(err, ErrInvalidTree) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalidTree containing %q", err, tt.want)
			}
		})
	}
}

// rawTree builds an encoded tree from nodes given as field lists, bypassing
// EncodeTree's checks.
type field struct {
	tag   uint64
	value []byte
}

func rawTree(count uint64, nodes ...[]field) []byte {
	b := []byte("FLTR\x02")
	b = binary.AppendUvarint(b, count)
	for _, n := range nodes {
		for _, f := range n {
			b = appendField(b, f.tag, f.value)
		}
		b = append(b, 0)
	}
	return b
}

func named(name string, more ...field) []field {
	return append([]field{{tagName, []byte(name)}, {tagType, []byte{1}}}, more...)
}

func TestDecodeTreeRejects(t *testing.T) {
	valid := rawTree(2, named("a"), named("b"))
	if _, err := DecodeTree(valid); err != nil {
		t.Fatalf("valid raw tree: %v", err)
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "bad magic"},
		{"magic", []byte("FLTX\x01\x00"), "bad magic"},
		{"version", []byte("FLTR\x01\x00"), "version 1"},
		{"no count", []byte("FLTR\x02"), "truncated"},
		{"count overflow", []byte("FLTR\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), "overflow"},
		{"hostile count", append([]byte("FLTR\x02\xff\xff\xff\xff\x0f"), make([]byte, 100)...), "exceeds"},
		{"count too small", rawTree(1, named("a"), named("b")), "trailing"},
		{"count too large", rawTree(3, named("a"), named("b"))[:len(valid)], "truncated"},
		{"truncated", valid[:len(valid)-1], "truncated"},
		{"truncated value", valid[:12], "truncated"},
		{"huge length", append([]byte("FLTR\x02\x01\x01\xff\xff\xff\xff\x0f"), "abc"...), "truncated"},
		{"empty name", rawTree(1, named("")), "empty name"},
		{"dot", rawTree(1, named(".")), `"."`},
		{"dotdot", rawTree(1, named("..")), `".."`},
		{"slash", rawTree(1, named("a/b")), "'/'"},
		{"nul", rawTree(1, named("a\x00b")), "NUL"},
		{"no name", rawTree(1, []field{{tagType, []byte{1}}}), "no name"},
		{"no type", rawTree(1, []field{{tagName, []byte("a")}}), "no type"},
		{"duplicate", rawTree(2, named("a"), named("a")), "duplicate name"},
		{"unsorted", rawTree(2, named("b"), named("a")), "sorts before"},
		{"unsorted bytes", rawTree(2, named("\xff"), named("z")), "sorts before"},
		{"repeated name", rawTree(1, named("a", field{tagName, []byte("b")})), "repeated name"},
		{"bad type", rawTree(1, []field{{tagName, []byte("a")}, {tagType, []byte{9}}}), "invalid type"},
		{"long type", rawTree(1, []field{{tagName, []byte("a")}, {tagType, []byte{1, 1}}}), "invalid type"},
		{"content", rawTree(1, named("a", field{tagContent, make([]byte, 65)})), "multiple of 64"},
		{"chunk sizes missing", rawTree(1, named("a", field{tagContent, make([]byte, 64)})), "chunk sizes"},
		{"chunk sizes sum", rawTree(1, named("a", field{tagContent, make([]byte, 64)}, field{tagChunkSizes, []byte{5}})), "add up"},
		{"chunk sizes malformed", rawTree(1, named("a", field{tagChunkSizes, []byte{0x80}})), "chunk sizes"},
		{"subtree", rawTree(1, named("a", field{tagSubtree, make([]byte, 31)})), "subtree"},
		{"time length", rawTree(1, named("a", field{tagModTime, make([]byte, 8)})), "want 12"},
		{"nanoseconds", rawTree(1, named("a", field{tagModTime, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0xca, 0x9a, 0x3b}})), "nanoseconds"},
		{"mode range", rawTree(1, named("a", field{tagMode, binary.AppendUvarint(nil, 0o10000)})), "out of range"},
		{"uid range", rawTree(1, named("a", field{tagUID, binary.AppendUvarint(nil, 1<<32)})), "out of range"},
		{"uvarint trailing", rawTree(1, named("a", field{tagSize, []byte{1, 2}})), "malformed size"},
		{"uvarint empty", rawTree(1, named("a", field{tagInode, nil})), "malformed inode"},
		{"xattr malformed", rawTree(1, named("a", field{tagXattr, []byte{5, 'a'}})), "malformed xattr"},
		{"xattr empty name", rawTree(1, named("a", field{tagXattr, []byte{0, 'v'}})), "empty xattr"},
		{"xattr order", rawTree(1, named("a", field{tagXattr, []byte{1, 'b'}}, field{tagXattr, []byte{1, 'a'}})), "out of order"},
		{"xattr dup", rawTree(1, named("a", field{tagXattr, []byte{1, 'a'}}, field{tagXattr, []byte{1, 'a'}})), "duplicate"},
		{"sparse value", rawTree(1, named("a", field{tagSparse, []byte{1}})), "sparse"},
		{"unknown tag truncated", append(rawTree(1, named("a"))[:len(valid)/2], 99, 50), "truncated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree, err := DecodeTree(tt.data)
			if err == nil || !errors.Is(err, ErrInvalidTree) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("tree %v, err = %v, want ErrInvalidTree containing %q", tree, err, tt.want)
			}
		})
	}
}

func TestDecodeTreeSkipsUnknownTags(t *testing.T) {
	data := rawTree(2,
		named("a", field{99, []byte("future")}, field{1 << 40, nil}, field{tagSize, []byte{7}}),
		named("b", field{23, make([]byte, 300)}))
	tree, err := DecodeTree(data)
	if err != nil {
		t.Fatal(err)
	}
	want := &Tree{Nodes: []*Node{{Name: "a", Type: TypeFile, Size: 7}, {Name: "b", Type: TypeFile}}}
	if !reflect.DeepEqual(tree, want) {
		t.Fatalf("got %+v", tree.Nodes)
	}
}

func TestDecodeTreeDoesNotAlias(t *testing.T) {
	data, err := EncodeTree(&Tree{Nodes: []*Node{fullNode()}})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := DecodeTree(data)
	if err != nil {
		t.Fatal(err)
	}
	for i := range data {
		data[i] = 0xAA
	}
	if got := tree.Nodes[0]; !reflect.DeepEqual(got, fullNode()) {
		t.Fatalf("decoded node changed with its input: %+v", got)
	}
}

func TestNodeTypeString(t *testing.T) {
	want := []string{"type(0)", "file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket", "type(8)"}
	for i, w := range want {
		if got := NodeType(i).String(); got != w {
			t.Errorf("NodeType(%d) = %q, want %q", i, got, w)
		}
	}
}

func FuzzDecodeTree(f *testing.F) {
	for _, tr := range []*Tree{{}, allTypesTree(), {Nodes: []*Node{fullNode()}}} {
		data, err := EncodeTree(tr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add(rawTree(2, named("a", field{99, []byte("x")}), named("b", field{tagXattr, []byte{1, 'a', 'v'}})))
	f.Add([]byte("FLTR\x01\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tree, err := DecodeTree(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidTree) {
				t.Fatalf("error does not wrap ErrInvalidTree: %v", err)
			}
			return
		}
		enc, err := EncodeTree(tree)
		if err != nil {
			t.Fatalf("decoded tree does not encode: %v", err)
		}
		again, err := DecodeTree(enc)
		if err != nil {
			t.Fatalf("re-encoded tree does not decode: %v", err)
		}
		if !reflect.DeepEqual(tree, again) {
			t.Fatalf("round trip differs:\n%+v\n%+v", tree.Nodes, again.Nodes)
		}
		for _, n := range tree.Nodes {
			if tree.Find(n.Name) != n {
				t.Fatalf("Find(%q) failed", n.Name)
			}
		}
	})
}

// hugeTree encodes n minimal file entries by hand (EncodeTree refuses so
// many).
func hugeTree(n int) []byte {
	buf := append([]byte(treeMagic), TreeVersion)
	buf = binary.AppendUvarint(buf, uint64(n))
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%08d", i)
		buf = appendStringField(buf, tagName, name)
		buf = appendField(buf, tagType, []byte{byte(TypeFile)})
		buf = append(buf, tagEnd)
	}
	return buf
}

// A tree of a million entries is refused before it is decoded: decoding it
// would cost hundreds of MB in check, ls and prune.
func TestDecodeTreeBounded(t *testing.T) {
	data := hugeTree(1_000_000)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := DecodeTree(data)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrInvalidTree) || !strings.Contains(err.Error(), "at most 524288") {
		t.Fatalf("1M entries: %v, want an error naming the limit", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("refusing a 1M-entry tree allocated %d bytes", alloc)
	}
	if _, err := DecodeTree(hugeTree(1000)); err != nil {
		t.Errorf("1000 entries: %v", err)
	}
	big := make([]byte, MaxTreeSize+1)
	copy(big, hugeTree(1))
	if _, err := DecodeTree(big); !errors.Is(err, ErrInvalidTree) || !strings.Contains(err.Error(), "at most") {
		t.Errorf("tree over MaxTreeSize: %v", err)
	}
	nodes := make([]*Node, MaxTreeNodes+1)
	for i := range nodes {
		nodes[i] = &Node{Name: fmt.Sprintf("%08d", i), Type: TypeFile}
	}
	if _, err := EncodeTree(&Tree{Nodes: nodes}); !errors.Is(err, ErrInvalidTree) || !strings.Contains(err.Error(), "at most") {
		t.Errorf("EncodeTree of %d entries: %v, want refused", len(nodes), err)
	}
}

// xattrTree encodes one file node with n extended attributes by hand
// (EncodeTree refuses more than MaxTreeXattrs).
func xattrTree(n int) []byte {
	buf := append([]byte(treeMagic), TreeVersion)
	buf = binary.AppendUvarint(buf, 1)
	buf = append(buf, tagName, 1, 'f', tagType, 1, byte(TypeFile))
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("u.%07x", i)
		buf = append(buf, tagXattr, byte(1+len(name)), byte(len(name)))
		buf = append(buf, name...)
	}
	return append(buf, tagEnd)
}

// Extended attributes are bounded per tree: one costs about 130 bytes
// decoded where it encodes to 10, so a 200 MB tree of one file with 20
// million of them decoded to 2.7 GB in every reader. Decoding stops at
// the bound, and EncodeTree refuses to write such a tree.
func TestDecodeTreeXattrsBounded(t *testing.T) {
	if _, err := DecodeTree(xattrTree(MaxTreeXattrs)); err != nil {
		t.Fatalf("%d xattrs: %v", MaxTreeXattrs, err)
	}
	data := xattrTree(3 * MaxTreeXattrs)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := DecodeTree(data)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrInvalidTree) || !strings.Contains(err.Error(), "extended attributes: a tree holds at most 1048576") {
		t.Fatalf("%d xattrs: %v, want an error naming the limit", 3*MaxTreeXattrs, err)
	}
	// what the bound allows (about 250 MB allocated, half of it kept),
	// not three times that
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 320<<20 {
		t.Errorf("refusing %d xattrs allocated %d MB", 3*MaxTreeXattrs, alloc>>20)
	}
	// spread over many nodes, the same
	nodes := make([]*Node, 1024)
	per := MaxTreeXattrs/len(nodes) + 1
	for i := range nodes {
		nodes[i] = &Node{Name: fmt.Sprintf("%04d", i), Type: TypeFile, Xattrs: make([]Xattr, per)}
		for j := range nodes[i].Xattrs {
			nodes[i].Xattrs[j] = Xattr{Name: fmt.Sprintf("user.%04d", j)}
		}
	}
	if _, err := EncodeTree(&Tree{Nodes: nodes}); !errors.Is(err, ErrInvalidTree) || !strings.Contains(err.Error(), "extended attributes in all: a tree holds at most") {
		t.Errorf("EncodeTree of %d xattrs: %v, want refused", per*len(nodes), err)
	}
	nodes = nodes[:len(nodes)-1]
	if _, err := EncodeTree(&Tree{Nodes: nodes}); err != nil {
		t.Errorf("EncodeTree of %d xattrs: %v", per*len(nodes), err)
	}
}
