package local

// Direct I/O (SetDirectIO): objects are written and large ranges read
// around the page cache, with O_DIRECT on Linux. A server that receives
// packs from many hosts reads few of them back soon, nor does a host
// read back soon what it backed up; through the page
// cache every byte was copied into a fresh cache page, and on a virtual
// machine whose free memory goes back to the host a fresh page costs a
// host page fault: measured on the benchmark machine, 1.6 to 2.2 s of
// system time per GiB written buffered against 0.1 s with O_DIRECT, and
// 1.2 to 1.7 s per GiB read cold through the cache against 0.06 s.
// Anything the file system refuses falls back to buffered I/O.
const (
	// directMinWrite: smaller objects (keys, snapshots, index files)
	// are not worth the two fcntl calls.
	directMinWrite = 1 << 20
	// directMinRead: smaller reads go through the page cache, which
	// then serves the rereads of metadata.
	directMinRead = 256 << 10
)

// SetDirectIO makes Save write objects of 1 MiB and more, and ReadAt of
// the backend's ObjectReaders read ranges of 256 KiB and more that are
// aligned (offset and buffer at directio.Align; length a multiple of it, or
// to the object's end with room in the buffer to round it up), around the
// page cache, and SaveStream's objects (packs) whatever their size. floe
// serve turns it on for its root, and a client for a local repository on
// a file system that suits it (DirectSuits); call it before the backend
// is used.
func (b *Backend) SetDirectIO(on bool) { b.direct = on }

// DirectIO reports whether SetDirectIO turned direct I/O on.
func (b *Backend) DirectIO() bool { return b.direct }

// Dir returns the repository's directory.
func (b *Backend) Dir() string { return b.dir }
