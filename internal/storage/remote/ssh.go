package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// StdioRepo is the repository name in request paths over ssh: `floe
// serve --stdio` serves exactly one repository (its --root) under this
// name (internal/server uses the same constant).
const StdioRepo = "repo"

// ErrSSH: ssh ended before the floe server answered (the login was
// refused, the host key is unknown, there is no floe on the host).
var ErrSSH = errors.New("ssh could not reach the floe server")

// IsSSH reports whether loc is an ssh:// location.
func IsSSH(loc string) bool { return strings.HasPrefix(loc, "ssh://") }

// SSHTarget is a parsed ssh://[USER@]HOST[:PORT]/PATH.
type SSHTarget struct {
	User, Host, Port string
	Path             string // the repository directory on the host, absolute
}

// ParseSSH parses ssh://[USER@]HOST[:PORT]/PATH. PATH is the repository's
// directory on HOST (absolute); a forced command in authorized_keys
// decides it instead.
func ParseSSH(loc string) (SSHTarget, error) {
	shown := redactLocation(loc) // for errors: no password typed in a wrong form
	u, err := url.Parse(loc)
	if err != nil {
		return SSHTarget{}, fmt.Errorf("repository location is not a URL: %v", redactErr(err))
	}
	// Hostname, not Host: "ssh://:/r" has the Host ":" and no host name,
	// and ran ssh with an empty destination
	if u.Scheme != "ssh" || u.Hostname() == "" || u.RawQuery != "" || u.Fragment != "" {
		return SSHTarget{}, fmt.Errorf("repository location %q: want ssh://[USER@]HOST[:PORT]/PATH", shown)
	}
	if _, ok := u.User.Password(); ok {
		return SSHTarget{}, errors.New("repository location: a password does not go in an ssh:// URL; use a key (ssh-agent or ~/.ssh/config)")
	}
	t := SSHTarget{User: u.User.Username(), Host: u.Hostname(), Port: u.Port(), Path: u.Path}
	if t.Path == "" || t.Path == "/" {
		return SSHTarget{}, fmt.Errorf("repository location %q: no repository directory: want ssh://[USER@]HOST[:PORT]/PATH", shown)
	}
	// the path and user go to a remote shell: plain characters only, so
	// that quoting cannot be escaped
	for _, s := range []string{t.Path, t.User, t.Host} {
		if !utf8.ValidString(s) {
			return SSHTarget{}, fmt.Errorf("repository location %q: not valid UTF-8 once its %%-escapes are decoded", shown)
		}
		for _, c := range s {
			if c < 0x20 || c == 0x7f || strings.ContainsRune("'\"`$\\;&|<>(){}*?!#~ ", c) {
				return SSHTarget{}, fmt.Errorf("repository location %q: character %q is not allowed in an ssh:// location", shown, c)
			}
		}
	}
	// a colon only in a bracketed IPv6 address: "ssh://::/r" gave the
	// host name ":"
	if strings.HasPrefix(t.Host, "-") || strings.HasPrefix(t.User, "-") || strings.Contains(t.Host, ":") && !strings.HasPrefix(u.Host, "[") {
		return SSHTarget{}, fmt.Errorf("repository location %q: bad host", shown)
	}
	return t, nil
}

// String is the location without anything secret (there is nothing
// secret in it: ssh authenticates with keys), escaped as a URL so that it
// parses back to the same target ("%" in a path, "@" in a user name).
func (t SSHTarget) String() string {
	host := t.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // an IPv6 address, as it was given
	}
	if t.Port != "" {
		host += ":" + t.Port
	}
	u := url.URL{Scheme: "ssh", Host: host, Path: t.Path}
	if t.User != "" {
		u.User = url.User(t.User)
	}
	return u.String()
}

// Command is the ssh command line that runs the server on the host:
// `ssh [-p PORT] [USER@]HOST floe serve --stdio --root PATH`. With a forced
// command in authorized_keys (README), sshd runs that instead and the
// path asked for here is ignored.
func (t SSHTarget) Command(sshCmd []string) []string {
	if len(sshCmd) == 0 {
		sshCmd = []string{"ssh"}
	}
	args := append([]string{}, sshCmd...)
	// no terminal: the connection carries binary HTTP/2 frames
	args = append(args, "-T")
	if t.Port != "" {
		args = append(args, "-p", t.Port)
	}
	dest := t.Host
	if t.User != "" {
		dest = t.User + "@" + t.Host
	}
	return append(args, "--", dest, "floe", "serve", "--stdio", "--root", "'"+t.Path+"'")
}

// newSSH is the backend of an ssh:// location: the same protocol, HTTP/2
// without TLS (ssh encrypts and authenticates) over the stdin and stdout
// of `ssh HOST floe serve --stdio`. Each connection of the pool is its own
// ssh process; a connection that breaks is replaced by a new one (the
// requests are retried as over https).
func newSSH(loc string, opts Options) (*Backend, error) {
	t, err := ParseSSH(loc)
	if err != nil {
		return nil, err
	}
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	d := &sshDialer{argv: t.Command(opts.SSHCommand), warn: opts.Warn, target: t.String()}
	b := &Backend{base: "http://floe-ssh", repo: StdioRepo, loc: t.String(), opts: opts, fatal: d.fatalErr}
	for range opts.Connections {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		b.addTransport(&http.Transport{
			DialContext:           d.dial,
			Protocols:             &p,
			ResponseHeaderTimeout: opts.IdleTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   1,
			HTTP2:                 http2Config(),
		})
	}
	return b, nil
}

// sshDialer starts an ssh process for each connection.
type sshDialer struct {
	argv   []string
	target string
	warn   func(string)

	mu    sync.Mutex
	fatal error
}

func (d *sshDialer) fatalErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fatal
}

func (d *sshDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	// not bound to ctx: the connection outlives the request that made it
	cmd := exec.Command(d.argv[0], d.argv[1:]...)
	cmd.Stdin, cmd.Stdout = inR, outW
	stderr := &lineWriter{warn: d.warn}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		err = fmt.Errorf("%w: start %s: %w", ErrSSH, d.argv[0], err)
		d.mu.Lock()
		d.fatal = err
		d.mu.Unlock()
		return nil, err
	}
	inR.Close()
	outW.Close()
	c := &sshConn{d: d, cmd: cmd, r: outR, w: inW, stderr: stderr, exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// lineWriter passes what ssh and the server say on stderr on, line by
// line, and keeps the last line for errors.
type lineWriter struct {
	warn func(string)
	mu   sync.Mutex
	buf  []byte
	last string
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			if len(l.buf) > 4096 {
				l.buf = l.buf[:0]
			}
			return len(p), nil
		}
		line := strings.TrimRight(string(l.buf[:i]), "\r")
		l.buf = l.buf[i+1:]
		if line == "" {
			continue
		}
		l.last = line
		if l.warn != nil {
			l.warn(line)
		}
	}
}

func (l *lineWriter) lastLine() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == "" && len(l.buf) > 0 {
		return string(l.buf)
	}
	return l.last
}

// sshConn is a net.Conn over an ssh process's stdin and stdout.
type sshConn struct {
	d       *sshDialer
	cmd     *exec.Cmd
	r       *os.File
	w       *os.File
	stderr  *lineWriter
	exited  chan struct{}
	waitErr error

	mu        sync.Mutex
	got       bool // the server sent something
	closeOnce sync.Once
}

func (c *sshConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.mu.Lock()
	if n > 0 && !c.got {
		c.got = true
		c.d.mu.Lock()
		c.d.fatal = nil // this one works
		c.d.mu.Unlock()
	}
	c.mu.Unlock()
	if err != nil {
		if ferr := c.notStarted(); ferr != nil {
			return n, ferr
		}
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (c *sshConn) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil {
		if ferr := c.notStarted(); ferr != nil {
			return n, ferr
		}
	}
	return n, err
}

// notStarted is called when the connection fails: if ssh ended before the
// server said anything, the login was refused, the host is unknown, or
// there is no floe there. That is not retried: it would fail the same way.
func (c *sshConn) notStarted() error {
	c.mu.Lock()
	got := c.got
	c.mu.Unlock()
	if got {
		return nil
	}
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		return nil // still running: a connection problem, retried
	}
	msg := c.stderr.lastLine()
	if msg == "" {
		msg = "no answer"
	}
	ferr := fmt.Errorf("%w: ssh to %s ended before the floe server answered (%v): %s", ErrSSH, c.d.target, c.waitErr, msg)
	c.d.mu.Lock()
	c.d.fatal = ferr
	c.d.mu.Unlock()
	return ferr
}

// Close ends the ssh process: closing its stdin ends the server, which
// ends ssh; a process that does not go is killed.
func (c *sshConn) Close() error {
	c.closeOnce.Do(func() {
		c.w.Close()
		select {
		case <-c.exited:
		case <-time.After(5 * time.Second):
			c.cmd.Process.Kill()
			<-c.exited
		}
		c.r.Close()
	})
	return nil
}

type sshAddr string

func (a sshAddr) Network() string { return "ssh" }
func (a sshAddr) String() string  { return string(a) }

func (c *sshConn) LocalAddr() net.Addr  { return sshAddr("local") }
func (c *sshConn) RemoteAddr() net.Addr { return sshAddr(c.d.target) }

// Deadlines are not supported on the pipes; HTTP/2 pings find a dead
// connection instead.
func (c *sshConn) SetDeadline(time.Time) error      { return nil }
func (c *sshConn) SetReadDeadline(time.Time) error  { return nil }
func (c *sshConn) SetWriteDeadline(time.Time) error { return nil }
