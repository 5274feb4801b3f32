package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runSink accepts TCP connections and reads each to its end, discarding;
// then closes it, which tells the sender that every byte arrived.
func runSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen := fs.String("listen", "", "address to listen on (HOST:PORT)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *listen == "" || fs.NArg() > 0 {
		return usageError{errors.New("give --listen HOST:PORT and nothing else")}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("farlink: sink listening on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 256<<10)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
	}
}

// runSend writes for --seconds over --streams connections, then half
// closes each and waits for the sink to close it: the figure counts only
// bytes the sink has read, not bytes still in the socket buffers.
func runSend(args []string) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	to := fs.String("to", "", "address of a farlink sink (HOST:PORT)")
	streams := fs.Int("streams", 1, "TCP connections at once")
	secs := fs.Float64("seconds", 10, "how long to write")
	cc := fs.String("cc", "", "TCP congestion control of the connections (cubic, bbr, ...; default: the system's)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *to == "" || fs.NArg() > 0 {
		return usageError{errors.New("give --to HOST:PORT and nothing else")}
	}
	if *streams < 1 || *streams > 256 {
		return usageError{fmt.Errorf("--streams %d: must be 1 to 256", *streams)}
	}
	if !(*secs > 0 && *secs <= 3600) {
		return usageError{fmt.Errorf("--seconds %v: must be above 0 and at most 3600", *secs)}
	}
	d := dialer(*cc)
	conns := make([]*net.TCPConn, *streams)
	for i := range conns {
		c, err := d.Dial("tcp", *to)
		if err != nil {
			return fmt.Errorf("connect %d to %s: %w", i+1, *to, err)
		}
		conns[i] = c.(*net.TCPConn)
	}
	used := *cc
	if used == "" {
		if raw, err := conns[0].SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				used, _ = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
			})
		}
	}
	start := time.Now()
	end := start.Add(time.Duration(*secs * float64(time.Second)))
	var wg sync.WaitGroup
	sent := make([]int64, len(conns))
	errs := make([]error, len(conns))
	for i, c := range conns {
		wg.Go(func() {
			defer c.Close()
			buf := make([]byte, 128<<10)
			for time.Now().Before(end) {
				c.SetWriteDeadline(end)
				n, err := c.Write(buf)
				sent[i] += int64(n)
				if err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						break
					}
					errs[i] = err
					return
				}
			}
			c.SetWriteDeadline(time.Time{})
			if err := c.CloseWrite(); err != nil {
				errs[i] = err
				return
			}
			// the sink closes after reading everything: EOF here
			c.SetReadDeadline(time.Now().Add(5 * time.Minute))
			if _, err := c.Read(buf[:1]); err != io.EOF {
				errs[i] = fmt.Errorf("waiting for the sink to read everything: %v", err)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var total int64
	for _, n := range sent {
		total += n
	}
	fmt.Printf("farlink: send streams=%d cc=%s bytes=%d seconds=%.2f mbit_s=%.1f\n",
		len(conns), used, total, el.Seconds(), float64(total)*8/el.Seconds()/1e6)
	return nil
}

// dialer sets the congestion control of its sockets before they connect.
func dialer(cc string) *net.Dialer {
	d := &net.Dialer{Timeout: 30 * time.Second}
	if cc != "" {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("congestion control %q: %w (see /proc/sys/net/ipv4/tcp_available_congestion_control)", cc, serr)
			}
			return nil
		}
	}
	return d
}

// runRTT times TCP connects: connect returns when the SYN-ACK arrives, one
// round trip after the SYN left.
func runRTT(args []string) error {
	fs := flag.NewFlagSet("rtt", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	to := fs.String("to", "", "address of a TCP listener (HOST:PORT), e.g. a farlink sink")
	count := fs.Int("count", 5, "connects to time")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *to == "" || fs.NArg() > 0 {
		return usageError{errors.New("give --to HOST:PORT and nothing else")}
	}
	if *count < 1 || *count > 1000 {
		return usageError{fmt.Errorf("--count %d: must be 1 to 1000", *count)}
	}
	var rtts []time.Duration
	d := &net.Dialer{Timeout: 10 * time.Second}
	for range *count {
		t0 := time.Now()
		c, err := d.DialContext(context.Background(), "tcp", *to)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", *to, err)
		}
		rtts = append(rtts, time.Since(t0))
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
	slices.Sort(rtts)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	fmt.Printf("farlink: rtt count=%d min_ms=%.1f median_ms=%.1f max_ms=%.1f\n",
		len(rtts), ms(rtts[0]), ms(rtts[len(rtts)/2]), ms(rtts[len(rtts)-1]))
	return nil
}
