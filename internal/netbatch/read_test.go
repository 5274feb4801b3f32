package netbatch

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection, the
// client's wrapped in Conn.
func tcpPair(t *testing.T) (client *batchConn, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	client = NewConn(c).(*batchConn)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// A small read takes all the socket holds into the buffer, hands it out
// in order, and gives the buffer back once it is empty.
func TestReadGathers(t *testing.T) {
	c, s := tcpPair(t)
	if c.rd.raw == nil {
		t.Fatal("a TCP connection's reads are not gathered")
	}
	sent := make([]byte, 64<<10) // within loopback's initial socket buffer
	rand.Read(sent)
	if _, err := s.Write(sent); err != nil {
		t.Fatal(err)
	}
	// on loopback the write has reached the receiver's socket when it
	// returns; wait a moment all the same
	time.Sleep(50 * time.Millisecond)
	p := make([]byte, 100)
	n, err := c.Read(p)
	if err != nil || n != 100 {
		t.Fatalf("Read: %d, %v", n, err)
	}
	if c.rd.buf == nil || c.rd.w != len(sent) {
		t.Fatalf("one read of 100 bytes took %d of the %d waiting, want all", c.rd.w, len(sent))
	}
	got := append([]byte(nil), p[:n]...)
	for len(got) < len(sent) {
		n, err := c.Read(p[:min(len(p), 7000)])
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", len(got), err)
		}
		got = append(got, p[:n]...)
	}
	if !bytes.Equal(got, sent) {
		t.Fatal("bytes out of order or changed")
	}
	if c.rd.buf != nil {
		t.Fatal("the buffer is held after it was emptied")
	}
	s.Close()
	if n, err := c.Read(p); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end: %d, %v, want io.EOF", n, err)
	}
}

// A stream larger than the buffer arrives whole, whatever the sizes of
// the writes and reads; a read as large as the buffer goes straight to
// the socket.
func TestReadStream(t *testing.T) {
	c, s := tcpPair(t)
	sent := make([]byte, 3*readSize+12345)
	rand.Read(sent)
	go func() {
		for rest, i := sent, 0; len(rest) > 0; i++ {
			n := min(len(rest), []int{1, 5000, 1 << 20, 300000}[i%4])
			if _, err := s.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
		s.Close()
	}()
	var got []byte
	big := make([]byte, readSize)
	for i := 0; ; i++ {
		p := big[:[]int{16 << 10, 33, readSize, 40000}[i%4]]
		n, err := c.Read(p)
		got = append(got, p[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", len(got), err)
		}
	}
	if !bytes.Equal(got, sent) {
		t.Fatalf("got %d bytes, sent %d, equal %v", len(got), len(sent), bytes.Equal(got, sent))
	}
}

// A read that waits for bytes keeps the connection's deadline, and ends
// when the connection is closed, with the errors net.Conn gives; it
// holds no buffer meanwhile.
func TestReadDeadlineAndClose(t *testing.T) {
	c, _ := tcpPair(t)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	if c.rd.buf != nil {
		t.Fatal("a read that timed out holds a buffer")
	}
	c.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on a closed connection: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end a waiting Read")
	}
}

// A connection without a file descriptor is read as it is.
func TestReadPipe(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := NewConn(a)
	defer c.Close()
	go b.Write([]byte("hello"))
	p := make([]byte, 10)
	n, err := c.Read(p)
	if err != nil || string(p[:n]) != "hello" {
		t.Fatalf("Read: %q, %v", p[:n], err)
	}
}

// TLS over a client's Conn and a server's Listener: what each side
// sends arrives whole at the other.
func TestTLSOverConn(t *testing.T) {
	cert := selfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tln := tls.NewListener(Listener{ln}, &tls.Config{Certificates: []tls.Certificate{cert}})
	defer tln.Close()
	sent := make([]byte, 5*readSize+777)
	rand.Read(sent)
	echoed := make(chan error, 1)
	go func() {
		s, err := tln.Accept()
		if err != nil {
			echoed <- err
			return
		}
		defer s.Close()
		// echo what arrives, in a buffer shorter than a record
		_, err = io.CopyBuffer(s, io.LimitReader(s, int64(len(sent))), make([]byte, 9000))
		echoed <- err
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(NewConn(raw), &tls.Config{InsecureSkipVerify: true})
	defer c.Close()
	go c.Write(sent)
	got := make([]byte, len(sent))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent) {
		t.Fatal("the echo differs from what was sent")
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
