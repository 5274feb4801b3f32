// Package nbd is a Network Block Device server (the protocol of
// NetworkBlockDevice/nbd doc/proto.md): fixed newstyle negotiation with
// NBD_OPT_GO/INFO, structured replies (reads skip holes with OFFSET_HOLE
// chunks), the base:allocation metadata context for NBD_CMD_BLOCK_STATUS,
// optional TLS, and writes for exports whose image accepts them (Overlay).
// It serves any Image: a raw file (FileImage) or a file of a snapshot.
//
// Every request is checked before it is acted on: malformed requests are
// answered with an NBD error (EINVAL, EOVERFLOW, EPERM, ENOSPC) and the
// connection goes on; only what leaves the byte stream unreadable (a bad
// magic number, a write too large to swallow) ends it. Memory per
// connection is bounded by MaxPayload and the in-flight budget.
package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Export is one named image a server offers.
type Export struct {
	Name        string
	Description string // shown by clients that ask (NBD_INFO_DESCRIPTION)
	Image       Image
}

// Server serves exports to NBD clients.
type Server struct {
	// Exports are found by name; the first is also the default export,
	// the one a client asking for the empty name gets.
	Exports []Export
	// TLSConfig, when set, makes TLS mandatory (the protocol's FORCEDTLS
	// mode): every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT is refused
	// until the client has upgraded.
	TLSConfig *tls.Config
	// Logf receives one line per connection problem; nil discards them.
	Logf func(format string, args ...any)
	// HandshakeTimeout bounds option haggling (default 30s), so a client
	// that connects and says nothing does not hold a connection forever.
	HandshakeTimeout time.Duration
	// Workers is how many requests of one connection run at once
	// (default 8). InflightBytes bounds the payload they hold (default 64 MiB).
	Workers       int
	InflightBytes int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// Serve accepts connections on l until ctx is done or l fails, serving
// each in its own goroutine. When ctx is done it closes the listener and
// every connection, waits for their handlers and returns nil.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var err error
	for {
		var c net.Conn
		c, err = l.Accept()
		if err != nil {
			if ctx.Err() == nil && (errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED)) {
				// out of descriptors for a moment: existing
				// connections go on, new ones wait
				s.logf("nbd: accept: %v", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, c); err != nil {
				s.logf("nbd: %s: %v", c.RemoteAddr(), err)
			}
		}()
	}
	if ctx.Err() != nil {
		err = nil
	}
	s.closeAll()
	wg.Wait()
	return err
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

// unixSendBuffer is the send buffer asked for on unix socket connections.
const unixSendBuffer = 4 << 20

// ServeConn runs one client connection to its end and closes it. It
// returns nil when the client ended the session properly (NBD_OPT_ABORT,
// NBD_CMD_DISC or a close between requests), an error otherwise.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	defer nc.Close()
	if !s.track(nc) {
		return errors.New("server closed")
	}
	defer s.untrack(nc)
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	if uc, ok := nc.(*net.UnixConn); ok {
		// A larger send buffer than the default 208 KiB lets the
		// request workers queue their replies (nbdcopy asks for 256
		// KiB at a time, several at once) while the client is busy
		// writing its copy: nbdcopy of the bench image waited in poll
		// half as often (9,300 to 4,350 times) and its system calls
		// fell by 18%. The kernel caps it at net.core.wmem_max. Not for
		// TCP, where a fixed buffer would turn off the kernel's own
		// sizing of it.
		_ = uc.SetWriteBuffer(unixSendBuffer)
	}
	c := &conn{s: s, nc: nc, r: bufio.NewReaderSize(nc, 64<<10), w: bufio.NewWriterSize(nc, 64<<10)}
	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	nc.SetDeadline(time.Now().Add(timeout))
	ex, err := c.handshake()
	if err != nil || ex == nil {
		return err
	}
	nc.SetDeadline(time.Time{})
	return c.transmission(ex)
}

// conn is one client connection.
type conn struct {
	s  *Server
	nc net.Conn // the raw connection, or the TLS one over it
	r  *bufio.Reader
	w  *bufio.Writer

	tls        bool
	fixed      bool // the client speaks fixed newstyle
	noZeroes   bool
	structured bool
	metaAlloc  bool   // base:allocation is selected ...
	metaExport string // ... for this export

	wmu     sync.Mutex // replies in transmission
	werr    error
	options int
}

// errDisconnect ends the session with no error to report (the client
// aborted).
var errDisconnect = errors.New("client disconnected")

func (c *conn) findExport(name string) *Export {
	for i := range c.s.Exports {
		if c.s.Exports[i].Name == name {
			return &c.s.Exports[i]
		}
	}
	// The empty name is the default export: the first one (clients
	// given no name, qemu's nbd://host/ among them, get it).
	if name == "" && len(c.s.Exports) > 0 {
		return &c.s.Exports[0]
	}
	return nil
}

func (c *conn) handshake() (*Export, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicInit)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	c.w.Write(hello[:])
	if err := c.w.Flush(); err != nil {
		return nil, fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", flags)
	}
	c.fixed = flags&flagCFixedNewstyle != 0
	c.noZeroes = flags&flagCNoZeroes != 0
	if c.s.TLSConfig != nil && !c.fixed {
		return nil, errors.New("TLS is required and the client does not speak fixed newstyle")
	}
	for {
		ex, err := c.option()
		if err == errDisconnect {
			return nil, nil
		}
		if err != nil || ex != nil {
			return ex, err
		}
	}
}

// option reads and answers one option. It returns the export when the
// option ends negotiation.
func (c *conn) option() (*Export, error) {
	c.options++
	if c.options > maxOptions {
		return nil, fmt.Errorf("more than %d options", maxOptions)
	}
	var hdr [16]byte
	if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
		if err == io.EOF {
			return nil, errDisconnect
		}
		return nil, fmt.Errorf("read option: %w", err)
	}
	if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOpt {
		return nil, fmt.Errorf("bad option magic %#x", m)
	}
	opt := binary.BigEndian.Uint32(hdr[8:])
	n := binary.BigEndian.Uint32(hdr[12:])
	if n > maxOptionLen {
		return nil, fmt.Errorf("option %d: %d bytes of data, more than %d", opt, n, maxOptionLen)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(c.r, data); err != nil {
		return nil, fmt.Errorf("read option %d: %w", opt, err)
	}

	if c.s.TLSConfig != nil && !c.tls && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			return nil, errors.New("NBD_OPT_EXPORT_NAME before TLS")
		}
		return nil, c.optReply(opt, repErrTLSReqd, []byte("TLS is required"))
	}
	if !c.fixed && opt != optExportName {
		// Without fixed newstyle the client cannot read option replies.
		return nil, fmt.Errorf("option %d from a client without fixed newstyle", opt)
	}

	switch opt {
	case optExportName:
		ex := c.findExport(string(data))
		if ex == nil {
			return nil, fmt.Errorf("no export %q", data)
		}
		if c.metaExport != ex.Name {
			c.metaAlloc = false
		}
		var b [8 + 2 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(ex.Image.Size()))
		binary.BigEndian.PutUint16(b[8:], c.transmissionFlags(ex))
		out := b[:]
		if c.noZeroes {
			out = b[:10]
		}
		c.w.Write(out)
		if err := c.w.Flush(); err != nil {
			return nil, err
		}
		return ex, nil

	case optAbort:
		c.optReply(opt, repAck, nil) // the client may not wait for it
		return nil, errDisconnect

	case optList:
		if n != 0 {
			return nil, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		for _, ex := range c.s.Exports {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(ex.Name)))
			b = append(b, ex.Name...)
			b = append(b, ex.Description...)
			if err := c.optReplyNoFlush(opt, repServer, b); err != nil {
				return nil, err
			}
		}
		return nil, c.optReply(opt, repAck, nil)

	case optStartTLS:
		switch {
		case n != 0:
			return nil, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
		case c.s.TLSConfig == nil:
			return nil, c.optReply(opt, repErrPolicy, []byte("TLS is not configured on this server"))
		case c.tls:
			return nil, c.optReply(opt, repErrInvalid, []byte("TLS is already on"))
		}
		if err := c.optReply(opt, repAck, nil); err != nil {
			return nil, err
		}
		tc := tls.Server(c.nc, c.s.TLSConfig)
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c.nc, c.tls = tc, true
		c.r.Reset(tc)
		c.w.Reset(tc)
		// What was negotiated in the clear does not carry over.
		c.structured, c.metaAlloc, c.metaExport = false, false, ""
		return nil, nil

	case optInfo, optGo:
		return c.optInfo(opt, data)

	case optStructuredReply:
		if n != 0 {
			return nil, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		c.structured = true
		return nil, c.optReply(opt, repAck, nil)

	case optListMetaContext, optSetMetaContext:
		return nil, c.optMeta(opt, data)

	default:
		return nil, c.optReply(opt, repErrUnsup, []byte("unsupported option"))
	}
}

func (c *conn) transmissionFlags(ex *Export) uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagCanMultiConn)
	if c.structured {
		f |= tflagSendDF
	}
	if _, ok := ex.Image.(Writer); ok {
		f |= tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes
	} else {
		f |= tflagReadOnly
	}
	return f
}

// optInfo answers NBD_OPT_INFO and NBD_OPT_GO: name length, name, number
// of information requests, requests.
func (c *conn) optInfo(opt uint32, data []byte) (*Export, error) {
	if len(data) < 6 {
		return nil, c.optReply(opt, repErrInvalid, []byte("short request"))
	}
	nlen := binary.BigEndian.Uint32(data)
	if nlen > maxStringLen || uint64(nlen)+6 > uint64(len(data)) {
		return nil, c.optReply(opt, repErrInvalid, []byte("bad name length"))
	}
	name := string(data[4 : 4+nlen])
	rest := data[4+nlen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return nil, c.optReply(opt, repErrInvalid, []byte("bad number of information requests"))
	}
	var wantName, wantDesc bool
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	ex := c.findExport(name)
	if ex == nil {
		return nil, c.optReply(opt, repErrUnknown, fmt.Appendf(nil, "no export %q", name))
	}
	if wantName {
		b := binary.BigEndian.AppendUint16(nil, infoName)
		if err := c.optReplyNoFlush(opt, repInfo, append(b, ex.Name...)); err != nil {
			return nil, err
		}
	}
	if wantDesc && ex.Description != "" {
		b := binary.BigEndian.AppendUint16(nil, infoDescription)
		if err := c.optReplyNoFlush(opt, repInfo, append(b, ex.Description...)); err != nil {
			return nil, err
		}
	}
	b := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint32(b, PreferredBlock)
	b = binary.BigEndian.AppendUint32(b, MaxPayload)
	if err := c.optReplyNoFlush(opt, repInfo, b); err != nil {
		return nil, err
	}
	b = binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(ex.Image.Size()))
	b = binary.BigEndian.AppendUint16(b, c.transmissionFlags(ex))
	if err := c.optReplyNoFlush(opt, repInfo, b); err != nil {
		return nil, err
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optInfo {
		return nil, nil
	}
	if c.metaExport != ex.Name {
		c.metaAlloc = false
	}
	return ex, nil
}

// optMeta answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT:
// export name length, name, number of queries, each query's length and
// text. The one context is base:allocation.
func (c *conn) optMeta(opt uint32, data []byte) error {
	if !c.structured {
		return c.optReply(opt, repErrInvalid, []byte("structured replies are not negotiated"))
	}
	bad := func() error { return c.optReply(opt, repErrInvalid, []byte("malformed query")) }
	if len(data) < 8 {
		return bad()
	}
	nlen := binary.BigEndian.Uint32(data)
	if nlen > maxStringLen || uint64(nlen)+8 > uint64(len(data)) {
		return bad()
	}
	name := string(data[4 : 4+nlen])
	rest := data[4+nlen:]
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for i := uint32(0); i < nq; i++ {
		if len(rest) < 4 {
			return bad()
		}
		ql := binary.BigEndian.Uint32(rest)
		if ql > maxStringLen || uint64(ql)+4 > uint64(len(rest)) {
			return bad()
		}
		queries = append(queries, string(rest[4:4+ql]))
		rest = rest[4+ql:]
	}
	if len(rest) != 0 {
		return bad()
	}
	ex := c.findExport(name)
	if ex == nil {
		return c.optReply(opt, repErrUnknown, fmt.Appendf(nil, "no export %q", name))
	}
	match := false
	if opt == optListMetaContext && len(queries) == 0 {
		match = true
	}
	for _, q := range queries {
		if q == metaBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optSetMetaContext {
		c.metaAlloc, c.metaExport = match, ex.Name
	}
	if match {
		id := uint32(0) // LIST: reserved, zero
		if opt == optSetMetaContext {
			id = metaBaseAllocationID
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		if err := c.optReplyNoFlush(opt, repMetaContext, append(b, metaBaseAllocation...)); err != nil {
			return err
		}
	}
	return c.optReply(opt, repAck, nil)
}

func (c *conn) optReplyNoFlush(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], magicOptReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.w.Write(h[:])
	_, err := c.w.Write(data)
	return err
}

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	if err := c.optReplyNoFlush(opt, typ, data); err != nil {
		return err
	}
	return c.w.Flush()
}
