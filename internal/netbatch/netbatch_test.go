package netbatch

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// recConn records the writes that reach the connection.
type recConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	err    error
}

func (r *recConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (r *recConn) Close() error { return nil }

func (r *recConn) got() (n int, all []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.writes {
		all = append(all, w...)
	}
	return len(r.writes), all
}

func record(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// Full-sized TLS records wait and go out together with the smaller
// record that ends a TLS write, in order; a batch that fills up goes
// out; records that end exactly on a full one go out after batchDelay;
// a small write alone goes straight through.
func TestBatchConn(t *testing.T) {
	rc := &recConn{}
	// The timer must not fire while the batches below are written (a
	// loaded machine can take longer than batchDelay between two
	// writes): it gets batchDelay only for the check that it fires.
	c := &batchConn{Conn: rc, delay: time.Hour}
	var want []byte
	write := func(p []byte) {
		t.Helper()
		if n, err := c.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write(%d bytes): %d, %v", len(p), n, err)
		}
		want = append(want, p...)
	}
	write(record(40, 'a')) // alone: straight through
	if n, _ := rc.got(); n != 1 {
		t.Fatalf("a small write alone: %d writes, want 1", n)
	}
	for i := range 5 {
		write(record(fullRecord, byte('b'+i)))
	}
	if n, _ := rc.got(); n != 1 {
		t.Fatalf("full records were sent at once: %d writes", n)
	}
	write(record(31, 'z')) // the end of the TLS write
	if n, got := rc.got(); n != 2 || !bytes.Equal(got, want) {
		t.Fatalf("after the last record: %d writes (want 2), bytes in order %v", n, bytes.Equal(got, want))
	}
	// more than a batch: it goes out when full
	for range batchSize/fullRecord + 2 {
		write(record(fullRecord, 'f'))
	}
	if n, _ := rc.got(); n != 3 {
		t.Fatalf("a full batch: %d writes, want 3", n)
	}
	// an exact number of full records: sent by the timer
	c.mu.Lock()
	c.delay = batchDelay
	c.timer.Reset(c.delay)
	c.mu.Unlock()
	time.Sleep(20*batchDelay + 50*time.Millisecond)
	if n, got := rc.got(); n != 4 || !bytes.Equal(got, want) {
		t.Fatalf("after the delay: %d writes (want 4), bytes in order %v", n, bytes.Equal(got, want))
	}
	// Close sends what waits
	write(record(fullRecord, 'g'))
	c.Close()
	if _, got := rc.got(); !bytes.Equal(got, want) {
		t.Fatal("Close lost what was waiting")
	}
}

// A write error of a late flush comes back from the next Write.
func TestBatchConnLateError(t *testing.T) {
	rc := &recConn{}
	c := &batchConn{Conn: rc, delay: batchDelay}
	boom := errors.New("connection reset")
	rc.err = boom
	if _, err := c.Write(record(fullRecord, 'a')); err != nil {
		t.Fatalf("a gathered record failed at once: %v", err)
	}
	time.Sleep(20*batchDelay + 50*time.Millisecond)
	if _, err := c.Write(record(10, 'b')); !errors.Is(err, boom) {
		t.Fatalf("Write after a failed late flush: %v, want %v", err, boom)
	}
}

// Close does not wait for a write blocked on a peer that reads nothing:
// closing the connection is what ends that write (an HTTP transport
// cancels a request to a stalled server by closing its connection, and
// a server closes a client's that stopped reading).
func TestBatchConnCloseUnblocksWrite(t *testing.T) {
	a, b := net.Pipe() // writes block until the other end reads
	defer b.Close()
	c := NewConn(a)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, batchSize+1)) // written at once, under the lock
		errc <- err
	}()
	// wait until the write is blocked in the pipe
	time.Sleep(50 * time.Millisecond)
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for a blocked write")
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("the blocked write succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write stays blocked after Close")
	}
}
