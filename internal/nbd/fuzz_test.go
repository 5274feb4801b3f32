package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fuzzServe drives a server over net.Pipe with client bytes: the server
// must neither panic nor hang. The client writes the bytes, reads
// whatever the server answers, then closes; the server must be done soon
// after.
func fuzzServe(t *testing.T, s *Server, in []byte) {
	cs, ss := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(context.Background(), ss) }()
	go io.Copy(io.Discard, cs)
	cs.SetWriteDeadline(time.Now().Add(2 * time.Second))
	cs.Write(in) // the server may stop reading early: fine
	cs.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not end after the client closed")
	}
}

// fuzzServer serves a writable export (an overlay) or a read-only one
// that hands out its memory in pieces (SliceReader, as floe nbd's
// snapshot images do).
func fuzzServer(t testing.TB, writable bool) *Server {
	var img Image = &sliceImage{memImage: newMemImage(256<<10, [2]int64{64 << 10, 128 << 10}), piece: 40 << 10}
	if writable {
		o, err := OpenOverlay(filepath.Join(t.TempDir(), "ov"), img, "fuzz")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Close() })
		img = o
	}
	return &Server{
		Exports:          []Export{{Name: "disk", Description: "fuzz", Image: img}, {Name: "ro", Image: newMemImage(8192)}},
		HandshakeTimeout: 5 * time.Second,
		Workers:          2,
	}
}

func clientFlags() []byte {
	return binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
}

func reqBytes(typ, flags uint16, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// FuzzOptions: everything a client sends from its flags on, through option
// haggling (and into transmission if the bytes get there). The server has
// TLS configured in half the runs, so STARTTLS goes to a TLS handshake.
func FuzzOptions(f *testing.F) {
	f.Add(false, cat(clientFlags(), optBytes(optList, nil), optBytes(optAbort, nil)))
	f.Add(false, cat(clientFlags(), optBytes(optStructuredReply, nil), optBytes(optListMetaContext, metaData("disk")),
		optBytes(optSetMetaContext, metaData("disk", metaBaseAllocation)), optBytes(optInfo, goData("disk", infoName, infoDescription, infoBlockSize)),
		optBytes(optGo, goData("disk")), reqBytes(cmdRead, 0, 0, 4096, nil)))
	f.Add(false, cat(clientFlags(), optBytes(optExportName, []byte("ro")), reqBytes(cmdRead, 0, 0, 512, nil)))
	f.Add(true, cat(clientFlags(), optBytes(optGo, goData("disk")), optBytes(optStartTLS, nil), []byte{0x16, 3, 1, 0, 5}))
	f.Add(false, cat(clientFlags(), optBytes(optSetMetaContext, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0xff, 0xff, 0xff, 0xff})))
	cert := selfSigned(f)
	f.Fuzz(func(t *testing.T, withTLS bool, in []byte) {
		s := fuzzServer(t, false)
		if withTLS {
			s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		}
		fuzzServe(t, s, in)
	})
}

// FuzzRequests: requests after a proper handshake (structured replies and
// base:allocation, or not), on a writable export or a read-only one.
func FuzzRequests(f *testing.F) {
	f.Add(true, true, cat(reqBytes(cmdRead, 0, 0, 256<<10, nil), reqBytes(cmdBlockStatus, 0, 0, 256<<10, nil),
		reqBytes(cmdWrite, cmdFlagFUA, 100, 4, []byte("abcd")), reqBytes(cmdWriteZeroes, 0, 5000, 9000, nil),
		reqBytes(cmdTrim, 0, 0, 65536, nil), reqBytes(cmdFlush, 0, 0, 0, nil), reqBytes(cmdDisc, 0, 0, 0, nil)))
	f.Add(false, false, cat(reqBytes(cmdRead, 0, 1<<20, 10, nil), reqBytes(cmdWrite, 0, 0, 3, []byte("ab"))))
	f.Add(true, false, cat(reqBytes(cmdBlockStatus, cmdFlagReqOne, 100, 1000, nil), reqBytes(cmdRead, cmdFlagDF, 65530, 20, nil)))
	f.Add(true, true, reqBytes(cmdWrite, 0, 0, MaxPayload, nil))
	f.Fuzz(func(t *testing.T, structured, writable bool, in []byte) {
		s := fuzzServer(t, writable)
		pre := clientFlags()
		if structured {
			pre = cat(pre, optBytes(optStructuredReply, nil), optBytes(optSetMetaContext, metaData("disk", metaBaseAllocation)))
		}
		pre = cat(pre, optBytes(optGo, goData("disk")))
		fuzzServe(t, s, cat(pre, in))
		if si, ok := s.Exports[0].Image.(*sliceImage); ok {
			si.mu.Lock()
			defer si.mu.Unlock()
			if si.held != 0 {
				t.Fatalf("%d reads of the image's memory not released", si.held)
			}
		}
	})
}
