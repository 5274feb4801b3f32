package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// linkConfig is what `farlink link` was asked for.
type linkConfig struct {
	a, b  string
	mtu   int
	shape ShapeConfig
}

func parseLinkFlags(args []string) (linkConfig, error) {
	fs := flag.NewFlagSet("link", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	a := fs.String("a", "", "name of the first TUN device (created)")
	b := fs.String("b", "", "name of the second TUN device (created)")
	delay := fs.Duration("delay", 50*time.Millisecond, "one-way delay, each direction")
	rate := fs.String("rate", "1gbit", "rate of each direction, as tc writes it (1gbit, 100mbit, 125mbps); 0: unlimited")
	loss := fs.String("loss", "0.1%", "random loss of each direction, in percent (0.1% or 0.1)")
	limit := fs.Int("limit", 100000, "packets held at most per direction (delayed or queued); tail drop beyond")
	mtu := fs.Int("mtu", 1500, "MTU set on both devices")
	seed := fs.Uint64("seed", 1, "seed of the loss's random numbers (direction b→a uses seed+1)")
	if err := parseFlags(fs, args); err != nil {
		return linkConfig{}, err
	}
	if fs.NArg() > 0 {
		return linkConfig{}, usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	cfg := linkConfig{a: *a, b: *b, mtu: *mtu}
	for _, d := range []struct{ flag, name string }{{"--a", *a}, {"--b", *b}} {
		if d.name == "" {
			return cfg, usageError{fmt.Errorf("%s DEV is required", d.flag)}
		}
		if len(d.name) >= unix.IFNAMSIZ || strings.ContainsAny(d.name, "/ \t\n%") {
			return cfg, usageError{fmt.Errorf("%s %q: not a valid interface name (at most %d characters, no '/', '%%' or spaces)", d.flag, d.name, unix.IFNAMSIZ-1)}
		}
	}
	if *a == *b {
		return cfg, usageError{fmt.Errorf("--a and --b must name different devices, both are %q", *a)}
	}
	if *delay < 0 || *delay > time.Minute {
		return cfg, usageError{fmt.Errorf("--delay %v: must be between 0 and 1m", *delay)}
	}
	r, err := parseRate(*rate)
	if err != nil {
		return cfg, usageError{fmt.Errorf("--rate: %w", err)}
	}
	l, err := parseLoss(*loss)
	if err != nil {
		return cfg, usageError{fmt.Errorf("--loss: %w", err)}
	}
	if *limit < 1 || *limit > 10_000_000 {
		return cfg, usageError{fmt.Errorf("--limit %d: must be 1 to 10000000 packets", *limit)}
	}
	// 68: the smallest IPv4 MTU; 65535: the largest IP packet.
	if *mtu < 68 || *mtu > 65535 {
		return cfg, usageError{fmt.Errorf("--mtu %d: must be 68 to 65535", *mtu)}
	}
	cfg.shape = ShapeConfig{Delay: *delay, Rate: r, Loss: l, Limit: *limit, Seed: *seed}
	return cfg, nil
}

// parseRate reads a rate as tc does: a number with a unit, bit (the
// default), kbit, mbit, gbit, tbit for bits per second, bps, kbps, mbps,
// gbps, tbps for bytes per second; the prefixes are powers of 1000. 0 is
// no limit.
func parseRate(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], t[i:]
	v, err := strconv.ParseFloat(num, 64)
	if num == "" || err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a rate (a number and a unit: 1gbit, 100mbit, 125mbps)", s)
	}
	mult := map[string]float64{
		"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
		"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("%q: unknown unit %q (bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps)", s, unit)
	}
	bits := v * mult
	if bits == 0 {
		return 0, nil
	}
	// below 8 bit/s a packet of 1500 bytes takes half an hour; above 1e13
	// the link is not the limit of anything this program can forward.
	if bits < 8 || bits > 1e13 {
		return 0, fmt.Errorf("%q: out of range (8bit to 10tbit, or 0 for no limit)", s)
	}
	return uint64(bits), nil
}

// parseLoss reads a loss in percent ("0.1%" or "0.1") as a probability.
func parseLoss(s string) (float64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "%")
	v, err := strconv.ParseFloat(t, 64)
	if t == "" || err != nil || v != v {
		return 0, fmt.Errorf("%q is not a percentage (0.1%% or 0.1)", s)
	}
	if v < 0 || v > 100 {
		return 0, fmt.Errorf("%q: must be 0%% to 100%%", s)
	}
	return v / 100, nil
}

// openTUN creates (or attaches to) the TUN device name: IP packets
// without the packet-information header. The device lives as long as the
// returned descriptor, in whatever namespace it is moved to. The
// descriptor is blocking: each direction's reader has its own thread, and
// one read(2) per packet is the cheapest way to get it.
func openTUN(name string, mtu int) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("device %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("create TUN device %s: %w", name, err)
	}
	if err := setMTU(name, mtu); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// setMTU sets the device's MTU, so that no packet larger than the read
// buffers comes (a TUN read truncates silently).
func setMTU(name string, mtu int) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("set MTU of %s: %w", name, err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("set MTU of %s: %w", name, err)
	}
	ifr.SetUint32(uint32(mtu))
	if err := unix.IoctlIfreq(s, unix.SIOCSIFMTU, ifr); err != nil {
		return fmt.Errorf("set MTU of %s to %d: %w", name, mtu, err)
	}
	return nil
}

// direction forwards the packets read from one device to the other.
type direction struct {
	name     string // "a->b"
	src, dst int
	bufSize  int
	start    time.Time

	mu     sync.Mutex
	shaper *Shaper[[]byte]
	free   [][]byte // recycled buffers
	wake   chan struct{}
	done   chan struct{} // closed when the reader ends

	fwdPkts, fwdBytes, lost, overflow, oversize, readErrs, writeErrs atomic.Uint64
}

func newDirection(name string, src, dst, mtu int, cfg ShapeConfig, start time.Time) *direction {
	return &direction{
		name: name, src: src, dst: dst, start: start,
		// one byte more than the MTU shows a packet that would not fit
		bufSize: mtu + 1,
		shaper:  NewShaper[[]byte](cfg),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
}

func (d *direction) now() time.Duration { return time.Since(d.start) }

func (d *direction) getBuf() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := len(d.free); n > 0 {
		b := d.free[n-1]
		d.free = d.free[:n-1]
		return b
	}
	return make([]byte, d.bufSize)
}

// reader reads packets, stamps their arrival and hands them to the
// shaper; it wakes the writer when the queue was empty (otherwise the
// writer is already waiting for an earlier head). It returns when the
// device is gone (a read error other than EINTR, or end of file), and
// the writer follows once it has written what is queued.
func (d *direction) reader() {
	defer close(d.done)
	for {
		b := d.getBuf()
		n, err := unix.Read(d.src, b)
		if err == unix.EINTR || err == unix.EAGAIN {
			d.putBuf(b)
			continue
		}
		if err != nil || n == 0 {
			// EBADFD: the TUN device was deleted; 0: the other end of
			// a socket (the tests) closed
			if err != nil {
				d.readErrs.Add(1)
			}
			d.putBuf(b)
			return
		}
		if n == len(b) { // larger than the MTU: cannot be forwarded whole
			d.oversize.Add(1)
			d.putBuf(b)
			continue
		}
		d.mu.Lock()
		wasEmpty := d.shaper.Len() == 0
		_, v := d.shaper.Offer(d.now(), n, b[:n])
		d.mu.Unlock()
		switch v {
		case Queued:
			if wasEmpty {
				select {
				case d.wake <- struct{}{}:
				default:
				}
			}
		case Lost:
			d.lost.Add(1)
			d.putBuf(b)
		case Overflow:
			d.overflow.Add(1)
			d.putBuf(b)
		}
	}
}

func (d *direction) putBuf(b []byte) {
	d.mu.Lock()
	d.free = append(d.free, b[:cap(b)])
	d.mu.Unlock()
}

// writer sleeps until the head is due, then writes every packet due.
func (d *direction) writer() {
	batch := make([][]byte, 0, 256)
	for {
		d.mu.Lock()
		next, ok := d.shaper.Next()
		d.mu.Unlock()
		if !ok {
			select {
			case <-d.wake:
				continue
			case <-d.done:
			}
			// the reader has ended; whatever it queued last is
			// in the shaper by now
			d.mu.Lock()
			empty := d.shaper.Len() == 0
			d.mu.Unlock()
			if empty {
				return
			}
			continue
		}
		if wait := next - d.now(); wait > 0 {
			time.Sleep(wait)
		}
		d.mu.Lock()
		batch = d.shaper.Due(d.now(), batch[:0])
		d.mu.Unlock()
		var pkts, bytes uint64
		for _, p := range batch {
			if _, err := unix.Write(d.dst, p); err != nil {
				// the receiving side is down or refuses this
				// packet: lost, as on a wire
				d.writeErrs.Add(1)
				continue
			}
			pkts++
			bytes += uint64(len(p))
		}
		d.fwdPkts.Add(pkts)
		d.fwdBytes.Add(bytes)
		d.mu.Lock()
		for i, p := range batch {
			d.free = append(d.free, p[:cap(p)])
			batch[i] = nil
		}
		d.mu.Unlock()
	}
}

func (d *direction) report(w io.Writer) {
	fmt.Fprintf(w, "farlink: %s forwarded_packets=%d forwarded_bytes=%d lost=%d overflow=%d oversize=%d read_errors=%d write_errors=%d\n",
		d.name, d.fwdPkts.Load(), d.fwdBytes.Load(), d.lost.Load(), d.overflow.Load(), d.oversize.Load(), d.readErrs.Load(), d.writeErrs.Load())
}

func runLink(args []string) error {
	cfg, err := parseLinkFlags(args)
	if err != nil {
		return err
	}
	fa, err := openTUN(cfg.a, cfg.mtu)
	if err != nil {
		return err
	}
	fb, err := openTUN(cfg.b, cfg.mtu)
	if err != nil {
		return err
	}
	// Four goroutines spend their lives in read(2) and write(2). With
	// fewer Ps than that, one coming back from a syscall waits for a P
	// while the others loop, and a reader that waits lets the TUN queue
	// overflow: loss outside the model. With a P each, the kernel's
	// scheduler alone decides.
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), 4))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	start := time.Now()
	ab := newDirection(cfg.a+"->"+cfg.b, fa, fb, cfg.mtu, cfg.shape, start)
	bCfg := cfg.shape
	bCfg.Seed++ // the two directions lose different packets
	ba := newDirection(cfg.b+"->"+cfg.a, fb, fa, cfg.mtu, bCfg, start)
	for _, d := range []*direction{ab, ba} {
		go d.reader()
		go d.writer()
	}
	rate := "unlimited"
	if cfg.shape.Rate > 0 {
		rate = fmt.Sprintf("%d bit/s", cfg.shape.Rate)
	}
	// bench/remote.sh waits for this line before it moves the devices
	fmt.Printf("farlink: ready %s %s delay=%v rate=%s loss=%g%% limit=%d mtu=%d\n",
		cfg.a, cfg.b, cfg.shape.Delay, rate, cfg.shape.Loss*100, cfg.shape.Limit, cfg.mtu)
	s := <-sigs
	ab.report(os.Stdout)
	ba.report(os.Stdout)
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err == nil {
		u := time.Duration(ru.Utime.Nano())
		sy := time.Duration(ru.Stime.Nano())
		fmt.Printf("farlink: cpu_user_s=%.2f cpu_sys_s=%.2f cpu_s=%.2f wall_s=%.1f signal=%v\n",
			u.Seconds(), sy.Seconds(), (u + sy).Seconds(), time.Since(start).Seconds(), s)
	}
	return nil
}
