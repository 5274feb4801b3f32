package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"syscall"
)

// request is one transmission request, its payload read.
type request struct {
	flags   uint16
	typ     uint16
	handle  uint64
	off     uint64
	length  uint32
	payload []byte // NBD_CMD_WRITE
	cost    int64  // its share of the in-flight budget
}

// minCost is what any request takes of the in-flight budget, so that the
// number of requests held at once is bounded too.
const minCost = 64 << 10

func (c *conn) transmission(ex *Export) error {
	workers := c.s.Workers
	if workers <= 0 {
		workers = 8
	}
	budget := c.s.InflightBytes
	if budget < MaxPayload+minCost {
		budget = 64 << 20
	}
	sem := newWeighted(budget)
	reqs := make(chan *request)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rq := range reqs {
				c.handle(ex, rq)
				sem.release(rq.cost)
			}
		}()
	}
	err := c.readRequests(ex, reqs, sem)
	if err != errDisconnect {
		// The stream is broken: replies still due cannot be read anyway,
		// and a worker blocked on a client that does not read must not
		// hold the connection.
		c.nc.Close()
	}
	close(reqs)
	wg.Wait()
	if err == errDisconnect {
		err = nil
	}
	if err == nil {
		c.wmu.Lock()
		err = c.werr
		c.wmu.Unlock()
	}
	if w, ok := ex.Image.(Writer); ok {
		// A client that vanishes without a flush loses nothing it was told
		// is written: flush at every end of a connection.
		if ferr := w.Flush(); ferr != nil && err == nil {
			err = fmt.Errorf("flush at disconnect: %w", ferr)
		}
	}
	return err
}

// readRequests reads requests until NBD_CMD_DISC, the end of the stream or
// a request that leaves the stream unreadable, handing them to workers.
func (c *conn) readRequests(ex *Export, reqs chan<- *request, sem *weighted) error {
	var h [28]byte
	for {
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			if err == io.EOF {
				return errDisconnect // closed between requests: a hard but clean end
			}
			return fmt.Errorf("read request: %w", err)
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != magicRequest {
			return fmt.Errorf("bad request magic %#x", m)
		}
		rq := &request{
			flags:  binary.BigEndian.Uint16(h[4:]),
			typ:    binary.BigEndian.Uint16(h[6:]),
			handle: binary.BigEndian.Uint64(h[8:]),
			off:    binary.BigEndian.Uint64(h[16:]),
			length: binary.BigEndian.Uint32(h[24:]),
		}
		rq.cost = minCost
		switch rq.typ {
		case cmdDisc:
			return errDisconnect
		case cmdWrite:
			if rq.length > MaxPayload {
				// Its payload would have to be read to go on; end instead.
				return fmt.Errorf("write of %d bytes, more than %d", rq.length, MaxPayload)
			}
			rq.cost += int64(rq.length)
			sem.acquire(rq.cost)
			// Read as it arrives rather than allocating what the header
			// claims: a client that lies about the length gets an EOF, not
			// 32 MiB.
			var buf bytes.Buffer
			if _, err := io.CopyN(&buf, c.r, int64(rq.length)); err != nil {
				sem.release(rq.cost)
				return fmt.Errorf("read write payload: %w", err)
			}
			rq.payload = buf.Bytes()
		case cmdRead:
			// Only a read handle() will serve allocates its length.
			size := uint64(ex.Image.Size())
			if rq.length <= MaxPayload && rq.off <= size && uint64(rq.length) <= size-rq.off {
				rq.cost += int64(rq.length)
			}
			sem.acquire(rq.cost)
		default:
			sem.acquire(rq.cost)
		}
		reqs <- rq
	}
}

// handle runs one request and sends its reply.
func (c *conn) handle(ex *Export, rq *request) {
	size := uint64(ex.Image.Size())
	w, writable := ex.Image.(Writer)
	inBounds := rq.off <= size && uint64(rq.length) <= size-rq.off
	switch rq.typ {
	case cmdRead:
		allowed := uint16(cmdFlagFUA)
		if c.structured {
			allowed |= cmdFlagDF
		}
		switch {
		case rq.flags&^allowed != 0:
			c.replyErr(rq, errInval, "unknown flags")
		case rq.length > MaxPayload:
			c.replyErr(rq, errOverflow, "read larger than the maximum block size")
		case rq.length == 0:
			c.replyErr(rq, errInval, "empty read")
		case !inBounds:
			c.replyErr(rq, errInval, "read past the end of the export")
		default:
			c.read(ex, rq)
		}

	case cmdWrite:
		switch {
		case rq.flags&^cmdFlagFUA != 0:
			c.replyErr(rq, errInval, "unknown flags")
		case !writable:
			c.replyErr(rq, errPerm, "the export is read-only")
		case !inBounds:
			c.replyErr(rq, errNoSpc, "write past the end of the export")
		default:
			_, err := w.WriteAt(rq.payload, int64(rq.off))
			if err == nil && rq.flags&cmdFlagFUA != 0 {
				err = w.Flush()
			}
			c.replyResult(rq, err)
		}

	case cmdFlush:
		switch {
		case rq.flags != 0:
			c.replyErr(rq, errInval, "unknown flags")
		case writable:
			c.replyResult(rq, w.Flush())
		default:
			c.replyOK(rq)
		}

	case cmdTrim, cmdWriteZeroes:
		allowed := uint16(cmdFlagFUA)
		if rq.typ == cmdWriteZeroes {
			allowed |= cmdFlagNoHole
		}
		switch {
		case rq.flags&^allowed != 0:
			c.replyErr(rq, errInval, "unknown flags")
		case !writable:
			c.replyErr(rq, errPerm, "the export is read-only")
		case rq.length == 0:
			c.replyErr(rq, errInval, "empty range")
		case !inBounds:
			c.replyErr(rq, errNoSpc, "range past the end of the export")
		default:
			var err error
			switch {
			case rq.typ == cmdTrim:
				err = w.Trim(int64(rq.off), int64(rq.length))
			case rq.flags&cmdFlagNoHole != 0:
				// The client wants the range allocated: written, not punched.
				err = writeZeros(w, int64(rq.off), int64(rq.length))
			default:
				err = w.Zero(int64(rq.off), int64(rq.length))
			}
			if err == nil && rq.flags&cmdFlagFUA != 0 {
				err = w.Flush()
			}
			c.replyResult(rq, err)
		}

	case cmdBlockStatus:
		switch {
		case rq.flags&^cmdFlagReqOne != 0:
			c.replyErr(rq, errInval, "unknown flags")
		case !c.structured || !c.metaAlloc:
			c.replyErr(rq, errInval, "no metadata context is selected")
		case rq.length == 0:
			c.replyErr(rq, errInval, "empty range")
		case !inBounds:
			c.replyErr(rq, errInval, "range past the end of the export")
		default:
			c.blockStatus(ex, rq)
		}

	default:
		c.replyErr(rq, errInval, "unsupported command")
	}
}

// zeros is read from only.
var zeros = make([]byte, 1<<20)

func writeZeros(w Writer, off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeros)))
		if _, err := w.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// extents returns [off, off+length) of the image as extents that cover it
// exactly, whatever the image answered.
func extents(img Image, off, length int64) ([]Extent, error) {
	got, err := img.Extents(off, length)
	if err != nil {
		return nil, err
	}
	out := make([]Extent, 0, len(got)+1)
	var pos int64
	for _, e := range got {
		if pos >= length {
			break
		}
		if e.Length <= 0 {
			continue
		}
		n := min(e.Length, length-pos)
		if len(out) > 0 && out[len(out)-1].Hole == e.Hole {
			out[len(out)-1].Length += n
		} else {
			out = append(out, Extent{Length: n, Hole: e.Hole})
		}
		pos += n
	}
	if pos < length {
		if len(out) > 0 && !out[len(out)-1].Hole {
			out[len(out)-1].Length += length - pos
		} else {
			out = append(out, Extent{Length: length - pos})
		}
	}
	return out, nil
}

// readData returns [off, off+length) of img: the image's own memory when
// it is a SliceReader, else a pooled buffer read with ReadAt. release
// gives them back once the reply is written.
func readData(img Image, off, length int64) (data [][]byte, release func(), err error) {
	if sr, ok := img.(SliceReader); ok {
		return sr.ReadSlices(off, length)
	}
	buf := getBuf(int(length))
	release = func() { putBuf(buf) }
	if _, err := img.ReadAt(buf, off); err != nil {
		return nil, release, err
	}
	return [][]byte{buf}, release, nil
}

func (c *conn) read(ex *Export, rq *request) {
	off, length := int64(rq.off), int64(rq.length)
	if !c.structured {
		data, release, err := readData(ex.Image, off, length)
		defer release()
		if err != nil {
			c.s.logf("nbd: read %d bytes at %d: %v", length, off, err)
			c.replySimple(rq, errIO, nil)
			return
		}
		c.replySimple(rq, 0, data)
		return
	}
	exts := []Extent{{Length: length}}
	if rq.flags&cmdFlagDF == 0 {
		e, err := extents(ex.Image, off, length)
		if err != nil {
			// Holes are an optimisation: read it all instead.
			c.s.logf("nbd: extents at %d: %v", off, err)
		} else {
			exts = e
		}
	}
	datas := make([][][]byte, len(exts))
	var pos int64
	for i, e := range exts {
		if !e.Hole {
			data, release, err := readData(ex.Image, off+pos, e.Length)
			defer release()
			if err != nil {
				c.s.logf("nbd: read %d bytes at %d: %v", e.Length, off+pos, err)
				c.replyStructErr(rq, errIO, "read error", off+pos)
				return
			}
			datas[i] = data
		}
		pos += e.Length
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	pos = 0
	for i, e := range exts {
		var flags uint16
		if i == len(exts)-1 {
			flags = replyFlagDone
		}
		if e.Hole {
			var p [12]byte
			binary.BigEndian.PutUint64(p[0:], uint64(off+pos))
			binary.BigEndian.PutUint32(p[8:], uint32(e.Length))
			c.chunkLocked(rq, flags, replyTypeOffsetHole, p[:], nil)
		} else {
			var p [8]byte
			binary.BigEndian.PutUint64(p[0:], uint64(off+pos))
			c.chunkLocked(rq, flags, replyTypeOffsetData, p[:], datas[i])
		}
		pos += e.Length
	}
	c.flushLocked()
}

// maxDescriptors bounds one BLOCK_STATUS reply; a client asks again for
// the rest.
const maxDescriptors = 1 << 16

func (c *conn) blockStatus(ex *Export, rq *request) {
	exts, err := extents(ex.Image, int64(rq.off), int64(rq.length))
	if err != nil {
		c.s.logf("nbd: extents at %d: %v", rq.off, err)
		c.replyErr(rq, errIO, "cannot map the export")
		return
	}
	if rq.flags&cmdFlagReqOne != 0 || len(exts) > maxDescriptors {
		n := 1
		if rq.flags&cmdFlagReqOne == 0 {
			n = maxDescriptors
		}
		exts = exts[:n]
	}
	p := binary.BigEndian.AppendUint32(make([]byte, 0, 4+8*len(exts)), metaBaseAllocationID)
	for _, e := range exts {
		var flags uint32
		if e.Hole {
			flags = stateHole | stateZero
		}
		p = binary.BigEndian.AppendUint32(p, uint32(e.Length))
		p = binary.BigEndian.AppendUint32(p, flags)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.chunkLocked(rq, replyFlagDone, replyTypeBlockStatus, p, nil)
	c.flushLocked()
}

func (c *conn) replyOK(rq *request) { c.replySimple(rq, 0, nil) }

func (c *conn) replyResult(rq *request, err error) {
	if err == nil {
		c.replyOK(rq)
		return
	}
	c.s.logf("nbd: command %d at %d: %v", rq.typ, rq.off, err)
	code := uint32(errIO)
	if errors.Is(err, syscall.ENOSPC) {
		code = errNoSpc
	}
	c.replyErr(rq, code, "I/O error")
}

// replyErr answers with an error: a structured error chunk when
// structured replies are on (which a read must use), else a simple reply.
func (c *conn) replyErr(rq *request, code uint32, msg string) {
	if c.structured {
		c.replyStructErr(rq, code, msg, -1)
		return
	}
	c.replySimple(rq, code, nil)
}

func (c *conn) replyStructErr(rq *request, code uint32, msg string, off int64) {
	p := binary.BigEndian.AppendUint32(nil, code)
	p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
	p = append(p, msg...)
	typ := uint16(replyTypeError)
	if off >= 0 {
		typ = replyTypeErrorOffset
		p = binary.BigEndian.AppendUint64(p, uint64(off))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.chunkLocked(rq, replyFlagDone, typ, p, nil)
	c.flushLocked()
}

func (c *conn) replySimple(rq *request, code uint32, data [][]byte) {
	var h [16]byte
	binary.BigEndian.PutUint32(h[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(h[4:], code)
	binary.BigEndian.PutUint64(h[8:], rq.handle)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.sendLocked(data, h[:])
	c.flushLocked()
}

func (c *conn) chunkLocked(rq *request, flags, typ uint16, p []byte, data [][]byte) {
	var h [20]byte
	binary.BigEndian.PutUint32(h[0:], magicStructReply)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], rq.handle)
	binary.BigEndian.PutUint32(h[16:], uint32(len(p)+dataLen(data)))
	c.sendLocked(data, h[:], p)
}

func dataLen(data [][]byte) int {
	n := 0
	for _, d := range data {
		n += len(d)
	}
	return n
}

// sendLocked writes heads and then data. Large data goes out in one
// writev with its heads, without a copy into the buffer: a reply of an
// image held in memory is written from that memory (SliceReader).
func (c *conn) sendLocked(data [][]byte, heads ...[]byte) {
	if dataLen(data) < 64<<10 {
		for _, b := range heads {
			c.writeLocked(b)
		}
		for _, d := range data {
			c.writeLocked(d)
		}
		return
	}
	c.flushLocked() // earlier chunks of the reply
	if c.werr != nil {
		return
	}
	bufs := make(net.Buffers, 0, len(heads)+len(data))
	bufs = append(bufs, heads...)
	bufs = append(bufs, data...)
	if _, err := bufs.WriteTo(c.nc); err != nil {
		c.werr = fmt.Errorf("send reply: %w", err)
		c.nc.Close()
	}
}

// writeLocked writes unless an earlier write failed; on failure it closes
// the connection so that the request reader stops too.
func (c *conn) writeLocked(b []byte) {
	if c.werr != nil || len(b) == 0 {
		return
	}
	if _, err := c.w.Write(b); err != nil {
		c.werr = fmt.Errorf("send reply: %w", err)
		c.nc.Close()
	}
}

func (c *conn) flushLocked() {
	if c.werr != nil {
		return
	}
	if err := c.w.Flush(); err != nil {
		c.werr = fmt.Errorf("send reply: %w", err)
		c.nc.Close()
	}
}

// Read buffers are reused: a copy streams hundreds of MiB through
// requests of the same few sizes. One pool per power of two.
var bufPools [32]sync.Pool

func bufClass(n int) int { return bits.Len(uint(n - 1)) }

func getBuf(n int) []byte {
	c := bufClass(n)
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<c)
}

func putBuf(b []byte) {
	c := bufClass(cap(b))
	if cap(b) != 1<<c {
		return
	}
	b = b[:cap(b)]
	bufPools[c].Put(&b)
}

// weighted is a counting semaphore over bytes.
type weighted struct {
	mu   sync.Mutex
	cond *sync.Cond
	free int64
}

func newWeighted(n int64) *weighted {
	w := &weighted{free: n}
	w.cond = sync.NewCond(&w.mu)
	return w
}

func (w *weighted) acquire(n int64) {
	w.mu.Lock()
	for w.free < n {
		w.cond.Wait()
	}
	w.free -= n
	w.mu.Unlock()
}

func (w *weighted) release(n int64) {
	w.mu.Lock()
	w.free += n
	w.mu.Unlock()
	w.cond.Broadcast()
}
