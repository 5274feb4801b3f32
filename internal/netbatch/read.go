package netbatch

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// TLS reads the connection a record at a time, into the room left in
// its own small buffer: a restore of the large bench set through floe
// serve made 40k reads of about 32 KiB on the client. On loopback each
// read that frees socket buffer runs the sender's side of TCP at once
// (the window update, then the next segments, in a softirq on the
// reader's core), and on a paravirtualised VM every interrupt enable in
// that path is a trip to the hypervisor: the client's system time was
// 2.0 s of its 6.5 CPU-s. Conn, put beneath a client's TLS, reads what
// the socket holds, up to readSize, into a buffer from readBufs and hands
// it to TLS from there: 12 alternated pairs, wall 9% less, client CPU
// 5.4-6.5 -> 4.6-5.6 s (docs/PERFORMANCE.md, "Reads gathered beneath
// TLS"; a server's connections do not, see Listener).
//
// The buffer is taken only once the socket has bytes, and goes back as
// soon as TLS has taken them all, so an idle connection (a client's pool
// blocked in its read loop) holds none.
const readSize = 2 << 20

// readBufs holds the buffers no connection is using. Not a sync.Pool:
// the collector empties one at every cycle, and a restore of many small
// files (GOROOT through floe serve) then zeroed a fresh 2 MiB for most of
// its reads: 0.45 CPU-s more than reading without a buffer. At most
// freeBufs wait here; a buffer beyond them is left to the collector. Not
// internal/slab either: a connection closed with unread bytes drops its
// buffer, which the slab, whose buffers must be given back (its Lent
// count is checked after every backup), would count as lost.
var readBufs = bufList{free: make(chan *[]byte, freeBufs)}

const freeBufs = 8

type bufList struct{ free chan *[]byte }

func (l bufList) Get() *[]byte {
	select {
	case b := <-l.free:
		return b
	default:
		b := make([]byte, readSize)
		return &b
	}
}

func (l bufList) Put(b *[]byte) {
	select {
	case l.free <- b:
	default:
	}
}

// reader is the read side of Conn. TLS never reads a connection from
// two goroutines at once (crypto/tls reads under its input lock), so
// it needs no lock of its own.
type reader struct {
	raw  syscall.RawConn // nil: reads go straight to the connection
	buf  *[]byte         // nil when nothing is buffered
	r, w int             // the unread bytes are (*buf)[r:w]
}

func newReader(c net.Conn) reader {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return reader{}
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return reader{}
	}
	return reader{raw: raw}
}

func (c *batchConn) Read(p []byte) (int, error) {
	rd := &c.rd
	if rd.buf == nil {
		if rd.raw == nil || len(p) >= readSize {
			return c.Conn.Read(p)
		}
		if err := rd.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, (*rd.buf)[rd.r:rd.w])
	rd.r += n
	if rd.r == rd.w {
		readBufs.Put(rd.buf)
		rd.buf, rd.r, rd.w = nil, 0, 0
	}
	return n, nil
}

// fill reads what the socket holds into a buffer from the pool, waiting
// (in the runtime's poller, which keeps the connection's deadlines) until
// there is something; the buffer is taken only when there is.
func (rd *reader) fill() error {
	var n int
	var rerr error
	err := rd.raw.Read(func(fd uintptr) bool {
		b := readBufs.Get()
		for {
			n, rerr = syscall.Read(int(fd), *b)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			readBufs.Put(b)
			return false
		}
		if n > 0 {
			rd.buf, rd.r, rd.w = b, 0, n
		} else {
			readBufs.Put(b)
		}
		return true
	})
	switch {
	case err != nil:
		return opError(err)
	case rerr != nil:
		return &net.OpError{Op: "read", Net: "tcp", Err: rerr}
	case n == 0:
		return io.EOF
	}
	return nil
}

// opError names a failed wait for bytes (closed, deadline) as the read
// it is, keeping what it wraps (net.ErrClosed, a timeout) for errors.Is
// and net.Error.
func opError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "raw-read" {
		c := *oe
		c.Op = "read"
		return &c
	}
	return err
}
