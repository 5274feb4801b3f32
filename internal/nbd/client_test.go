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
	"testing"
	"time"
)

// testClient is a minimal NBD client for checking the server's answers
// byte by byte (the real clients, qemu and libnbd, are in tools_test.go).
type testClient struct {
	t    *testing.T
	c    net.Conn
	r    *bufio.Reader
	size uint64
	tf   uint16
}

func dialPipe(t *testing.T, s *Server) (*testClient, chan error) {
	t.Helper()
	cs, ss := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(context.Background(), ss) }()
	t.Cleanup(func() { cs.Close() })
	cs.SetDeadline(time.Now().Add(20 * time.Second))
	return &testClient{t: t, c: cs, r: bufio.NewReader(cs)}, done
}

func (tc *testClient) greet() {
	tc.t.Helper()
	var b [18]byte
	tc.full(b[:])
	if binary.BigEndian.Uint64(b[:]) != magicInit || binary.BigEndian.Uint64(b[8:]) != magicOpt {
		tc.t.Fatalf("bad greeting %x", b)
	}
	tc.write(binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes))
}

func (tc *testClient) full(b []byte) {
	tc.t.Helper()
	if _, err := io.ReadFull(tc.r, b); err != nil {
		tc.t.Fatalf("read: %v", err)
	}
}

func (tc *testClient) write(b []byte) {
	tc.t.Helper()
	if _, err := tc.c.Write(b); err != nil {
		tc.t.Fatalf("write: %v", err)
	}
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

type optRep struct {
	typ  uint32
	data []byte
}

// option sends an option and reads replies up to the final one.
func (tc *testClient) option(opt uint32, data []byte) []optRep {
	tc.t.Helper()
	tc.write(optBytes(opt, data))
	var reps []optRep
	for {
		var h [20]byte
		tc.full(h[:])
		if binary.BigEndian.Uint64(h[:]) != magicOptReply || binary.BigEndian.Uint32(h[8:]) != opt {
			tc.t.Fatalf("bad option reply %x", h)
		}
		r := optRep{typ: binary.BigEndian.Uint32(h[12:]), data: make([]byte, binary.BigEndian.Uint32(h[16:]))}
		tc.full(r.data)
		reps = append(reps, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return reps
		}
	}
}

func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// handshake negotiates structured replies and base:allocation (when
// structured) and enters transmission with NBD_OPT_GO.
func (tc *testClient) handshake(name string, structured bool) {
	tc.t.Helper()
	tc.greet()
	if structured {
		if r := tc.option(optStructuredReply, nil); r[0].typ != repAck {
			tc.t.Fatalf("structured reply refused: %x", r[0].typ)
		}
		r := tc.option(optSetMetaContext, metaData(name, metaBaseAllocation))
		if len(r) != 2 || r[0].typ != repMetaContext {
			tc.t.Fatalf("set meta context: %+v", r)
		}
	}
	tc.goExport(name)
}

func (tc *testClient) goExport(name string) {
	tc.t.Helper()
	for _, r := range tc.option(optGo, goData(name, infoBlockSize)) {
		switch {
		case r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport:
			tc.size = binary.BigEndian.Uint64(r.data[2:])
			tc.tf = binary.BigEndian.Uint16(r.data[10:])
		case r.typ&(1<<31) != 0:
			tc.t.Fatalf("NBD_OPT_GO %q: error %#x %s", name, r.typ, r.data)
		}
	}
}

func (tc *testClient) request(typ, flags uint16, handle, off uint64, length uint32, payload []byte) {
	tc.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	tc.write(append(b, payload...))
}

// chunk is one reply: a simple reply (typ -1) or a structured chunk.
type chunk struct {
	handle uint64
	typ    int
	flags  uint16
	errno  uint32
	data   []byte
}

// reply reads one simple reply (with dataLen bytes of data if no error)
// or one structured chunk.
func (tc *testClient) reply(dataLen int) chunk {
	tc.t.Helper()
	var m [4]byte
	tc.full(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimpleReply:
		var h [12]byte
		tc.full(h[:])
		ch := chunk{typ: -1, errno: binary.BigEndian.Uint32(h[:]), handle: binary.BigEndian.Uint64(h[4:])}
		if ch.errno == 0 && dataLen > 0 {
			ch.data = make([]byte, dataLen)
			tc.full(ch.data)
		}
		return ch
	case magicStructReply:
		var h [16]byte
		tc.full(h[:])
		ch := chunk{flags: binary.BigEndian.Uint16(h[:]), typ: int(binary.BigEndian.Uint16(h[2:])), handle: binary.BigEndian.Uint64(h[4:])}
		ch.data = make([]byte, binary.BigEndian.Uint32(h[12:]))
		tc.full(ch.data)
		if ch.typ&(1<<15) != 0 {
			ch.errno = binary.BigEndian.Uint32(ch.data)
		}
		return ch
	}
	tc.t.Fatalf("bad reply magic %x", m)
	return chunk{}
}

// read reads [off, off+n) with structured replies and returns the data
// (holes filled with zeros), the number of hole chunks, or the errno.
func (tc *testClient) read(off uint64, n uint32) ([]byte, int, uint32) {
	tc.t.Helper()
	tc.request(cmdRead, 0, 7, off, n, nil)
	buf := make([]byte, n)
	holes := 0
	for {
		ch := tc.reply(0)
		if ch.handle != 7 {
			tc.t.Fatalf("handle %d", ch.handle)
		}
		if ch.errno != 0 {
			if ch.typ != -1 && ch.flags&replyFlagDone == 0 {
				tc.t.Fatal("error chunk not final")
			}
			return nil, 0, ch.errno
		}
		switch ch.typ {
		case replyTypeOffsetData:
			o := binary.BigEndian.Uint64(ch.data) - off
			copy(buf[o:], ch.data[8:])
		case replyTypeOffsetHole:
			holes++
		case replyTypeNone:
		default:
			tc.t.Fatalf("unexpected chunk type %d", ch.typ)
		}
		if ch.flags&replyFlagDone != 0 {
			return buf, holes, 0
		}
	}
}

// simple sends a request and returns the errno of its (simple or
// structured, non-data) reply.
func (tc *testClient) simple(typ, flags uint16, off uint64, length uint32, payload []byte) uint32 {
	tc.t.Helper()
	tc.request(typ, flags, 9, off, length, payload)
	ch := tc.reply(0)
	if ch.typ != -1 && ch.typ != replyTypeNone && ch.errno == 0 && ch.typ != replyTypeBlockStatus {
		tc.t.Fatalf("unexpected chunk %d", ch.typ)
	}
	return ch.errno
}

func (tc *testClient) disc(done chan error) {
	tc.t.Helper()
	tc.request(cmdDisc, 0, 1, 0, 0, nil)
	select {
	case err := <-done:
		if err != nil {
			tc.t.Fatalf("server after NBD_CMD_DISC: %v", err)
		}
	case <-time.After(10 * time.Second):
		tc.t.Fatal("server did not end the connection after NBD_CMD_DISC")
	}
}

// startTLS upgrades the connection.
func (tc *testClient) startTLS(cfg *tls.Config) error {
	r := tc.option(optStartTLS, nil)
	if r[0].typ != repAck {
		return fmt.Errorf("STARTTLS: %#x %s", r[0].typ, r[0].data)
	}
	c := tls.Client(tc.c, cfg)
	if err := c.Handshake(); err != nil {
		return err
	}
	tc.c, tc.r = c, bufio.NewReader(c)
	return nil
}

var errTest = errors.New("injected read error")
