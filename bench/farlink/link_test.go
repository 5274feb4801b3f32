package main

import (
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// seqpacket returns two connected sockets that keep message boundaries,
// as a TUN device keeps packets.
func seqpacket(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// The forwarding loop, on sockets instead of TUN devices: every packet
// arrives whole, in order, no sooner than the delay; the counters add up;
// the loop ends when its source closes, after writing what it held.
func TestDirectionForwards(t *testing.T) {
	in, src := seqpacket(t)
	dst, out := seqpacket(t)
	const delay = 40 * time.Millisecond
	start := time.Now()
	d := newDirection("test", src, dst, 1500, ShapeConfig{Delay: delay, Rate: 100_000_000, Limit: 1000}, start)
	writerDone := make(chan struct{})
	go d.reader()
	go func() { d.writer(); close(writerDone) }()

	const n = 50
	sent := make([]time.Time, n)
	total := 0
	for i := range n {
		p := make([]byte, 100+i*29) // 100 to 1521 bytes: the last ones exceed the MTU
		binary.BigEndian.PutUint32(p, uint32(i))
		sent[i] = time.Now()
		if _, err := unix.Write(in, p); err != nil {
			t.Fatal(err)
		}
		if len(p) <= 1500 {
			total += len(p)
		}
	}
	unix.Shutdown(in, unix.SHUT_WR) // the reader sees the end

	buf := make([]byte, 2000)
	want := 0
	for {
		unix.SetsockoptTimeval(out, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
		m, err := unix.Read(out, buf)
		if err != nil {
			break // no more within 2 s
		}
		got := int(binary.BigEndian.Uint32(buf))
		if got != want {
			t.Fatalf("packet %d arrived where %d was due", got, want)
		}
		if m != 100+got*29 {
			t.Errorf("packet %d: %d bytes, want %d", got, m, 100+got*29)
		}
		if el := time.Since(sent[got]); el < delay {
			t.Errorf("packet %d arrived after %v, before the delay %v", got, el, delay)
		}
		want++
		if 100+want*29 > 1500 {
			break // the rest were too large to forward
		}
	}
	select {
	case <-writerDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the writer did not end after its reader")
	}
	fwd := 0
	for i := range n {
		if 100+i*29 <= 1500 {
			fwd++
		}
	}
	if want != fwd || d.fwdPkts.Load() != uint64(fwd) || d.fwdBytes.Load() != uint64(total) {
		t.Errorf("received %d packets; counted %d packets, %d bytes; want %d, %d", want, d.fwdPkts.Load(), d.fwdBytes.Load(), fwd, total)
	}
	if d.oversize.Load() != uint64(n-fwd) || d.lost.Load() != 0 || d.overflow.Load() != 0 {
		t.Errorf("oversize %d (want %d), lost %d, overflow %d", d.oversize.Load(), n-fwd, d.lost.Load(), d.overflow.Load())
	}
}

// With 100% loss nothing comes through and everything is counted lost.
func TestDirectionLoses(t *testing.T) {
	in, src := seqpacket(t)
	dst, out := seqpacket(t)
	d := newDirection("test", src, dst, 1500, ShapeConfig{Loss: 1, Limit: 10}, time.Now())
	go d.reader()
	go d.writer()
	for range 20 {
		if _, err := unix.Write(in, make([]byte, 500)); err != nil {
			t.Fatal(err)
		}
	}
	unix.Shutdown(in, unix.SHUT_WR)
	<-d.done
	unix.SetsockoptTimeval(out, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100_000})
	if m, err := unix.Read(out, make([]byte, 2000)); err == nil {
		t.Errorf("a packet of %d bytes came through a link that loses everything", m)
	}
	if d.lost.Load() != 20 || d.fwdPkts.Load() != 0 {
		t.Errorf("lost %d, forwarded %d; want 20, 0", d.lost.Load(), d.fwdPkts.Load())
	}
}
