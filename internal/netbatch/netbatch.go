// Package netbatch gathers the records TLS writes into larger writes, and
// its reads into larger reads (read.go).
package netbatch

import (
	"net"
	"sync"
	"time"
)

// TLS cuts what it sends into records of at most 16 KiB and writes each
// record to the connection on its own: a 1 MiB HTTP/2 DATA frame became
// 64 write system calls and as many TCP segments, each waking the
// other side. Conn, put beneath TLS, gathers full-sized records into writes
// of up to batchSize and sends them when a smaller record comes (the
// last of a TLS write), when the batch is full, or at the latest
// batchDelay after the first record waiting (a write that was an exact
// number of full records).
const (
	batchSize  = 256 << 10
	batchDelay = 500 * time.Microsecond
	// fullRecord is the smallest length on the wire of a TLS record
	// with 16 KiB of data (TLS 1.3: 5 header + 16384 + 1 type + 16 tag;
	// TLS 1.2's explicit nonce makes it longer)
	fullRecord = 5 + 16384 + 1 + 16
)

// batchBufs holds the batches of the connections that are sending.
var batchBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, batchSize)
	return &b
}}

// Listener wraps the connections it accepts in Conn, with their writes
// gathered but not their reads: a server keeps up with what one client
// sends, so its reads find a record or two waiting and a larger buffer
// gathers nothing (the large bench set through floe serve, 6 alternated
// backups: the server's CPU 2.57-2.87 s without, 2.62-3.21 s with), while
// a buffer held by each of hundreds of connections whose handler waits
// on its disk would add up.
type Listener struct{ net.Listener }

// Accept implements net.Listener.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &batchConn{Conn: c, delay: batchDelay}, nil
}

// NewConn returns c with its writes and reads gathered; put TLS on top
// of it. For a client's connections: see Listener for a server's.
func NewConn(c net.Conn) net.Conn {
	return &batchConn{Conn: c, delay: batchDelay, rd: newReader(c)}
}

type batchConn struct {
	net.Conn
	mu    sync.Mutex
	buf   *[]byte // nil when nothing waits
	timer *time.Timer
	err   error // of a flush by the timer, for the next Write
	// delay is how long full records wait for the end of their TLS
	// write: batchDelay, or what a test sets
	delay time.Duration
	rd    reader
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if len(p) < fullRecord || len(p) > batchSize {
		// the end of a TLS write (or something too large to gather):
		// send what waits with it
		if c.buf != nil && len(*c.buf)+len(p) <= batchSize {
			*c.buf = append(*c.buf, p...)
			return len(p), c.flush()
		}
		if err := c.flush(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	if c.buf != nil && len(*c.buf)+len(p) > batchSize {
		if err := c.flush(); err != nil {
			return 0, err
		}
	}
	if c.buf == nil {
		c.buf = batchBufs.Get().(*[]byte)
		if c.timer == nil {
			c.timer = time.AfterFunc(c.delay, c.flushLate)
		} else {
			c.timer.Reset(c.delay)
		}
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

// flush sends what waits; c.mu is held.
func (c *batchConn) flush() error {
	if c.buf == nil {
		return nil
	}
	c.timer.Stop()
	b := c.buf
	c.buf = nil
	_, err := c.Conn.Write(*b)
	*b = (*b)[:0]
	batchBufs.Put(b)
	if err != nil {
		c.err = err
	}
	return err
}

func (c *batchConn) flushLate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.flush()
}

// Close sends what waits, unless a write is in progress: a write
// blocked on a peer that reads nothing holds c.mu, and closing the
// connection is what ends it (an HTTP transport cancels a request to a
// stalled server by closing its connection; waiting for c.mu here hung
// the cancel, and the command, for good).
func (c *batchConn) Close() error {
	if c.mu.TryLock() {
		_ = c.flush()
		c.mu.Unlock()
	}
	return c.Conn.Close()
}
