package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// StdioRepo is the name of the one repository `floe serve --stdio`
// serves, in request paths (the client, internal/storage/remote, uses the
// same constant).
const StdioRepo = "repo"

// StdioConfig is what `floe serve --stdio` runs: one repository, one
// credential, one connection on standard input and output. sshd starts it
// (ssh://HOST/PATH locations); sshd has authenticated the key, and its
// forced command in authorized_keys fixes --root and --role, so there is
// no token.
type StdioConfig struct {
	Root     string // the repository's directory
	StateDir string // audit log; default StateDirFor(Root)
	AuditLog string // default StateDir/audit.log
	Role     Role
	// Host names the credential in the audit log and in upload records;
	// default "ssh:ROLE".
	Host string
	// Remote is the client's address for the audit log ($SSH_CLIENT).
	Remote   string
	Verifier UploadVerifier

	MaxObjectSize      int64
	MaxUploadsPerToken int
	BufferedIO         bool // see Config.BufferedIO
	// AllowAnyName is Options.AllowAnyName: only the storage conformance
	// suite sets it (it stores arbitrary bytes under arbitrary names);
	// floe serve --stdio never.
	AllowAnyName bool

	In  io.ReadCloser
	Out io.WriteCloser
}

// RunStdio serves HTTP/2 without TLS (ssh encrypts) over In and Out until
// the client closes the connection or ctx ends. Nothing but the protocol
// goes to Out: messages go to standard error, which ssh passes to the
// client.
func RunStdio(ctx context.Context, cfg StdioConfig) error {
	if cfg.Root == "" {
		return fmt.Errorf("serve over stdio: %w", ErrNoRoot)
	}
	if cfg.Role == 0 {
		return fmt.Errorf("serve over stdio: %w", ErrNoRole)
	}
	repos, err := NewOneRepo(cfg.Root)
	if err != nil {
		return err
	}
	repos.SetBufferedIO(cfg.BufferedIO)
	if cfg.StateDir == "" {
		cfg.StateDir = StateDirFor(repos.one)
	}
	audit, spool, err := openState(cfg.StateDir, cfg.AuditLog)
	if err != nil {
		return err
	}
	defer audit.Close()
	host := cfg.Host
	if host == "" {
		host = "ssh:" + cfg.Role.String()
	}
	cred := &Token{ID: "ssh", Repo: StdioRepo, Host: host, Roles: cfg.Role, SSH: true}
	h, err := New(Options{Repos: repos, Credential: cred, Audit: audit, SpoolDir: spool, Verifier: cfg.Verifier,
		MaxObjectSize: cfg.MaxObjectSize, MaxUploadsPerToken: cfg.MaxUploadsPerToken, AllowAnyName: cfg.AllowAnyName})
	if err != nil {
		return err
	}
	remote := cfg.Remote
	if remote == "" {
		remote = "ssh"
	}
	conn := &stdioConn{r: cfg.In, w: cfg.Out, remote: remote}
	ln := &oneConnListener{conn: conn, closed: make(chan struct{})}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:        h,
		Protocols:      &p,
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       log.New(os.Stderr, "floe serve: ", 0),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          64,
			MaxReceiveBufferPerConnection: 32 << 20,
			MaxReceiveBufferPerStream:     16 << 20,
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				ln.Close()
			}
		},
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve over stdio: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		return nil
	}
}

// oneConnListener hands out one connection, then waits until it closes.
type oneConnListener struct {
	mu     sync.Mutex
	conn   net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.conn
	l.conn = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return stdioAddr("stdio") }

type stdioAddr string

func (a stdioAddr) Network() string { return "stdio" }
func (a stdioAddr) String() string  { return string(a) }

// stdioConn is a net.Conn over standard input and output.
type stdioConn struct {
	r      io.ReadCloser
	w      io.WriteCloser
	remote string
	once   sync.Once
}

func (c *stdioConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *stdioConn) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c *stdioConn) Close() error {
	c.once.Do(func() {
		c.w.Close()
		c.r.Close()
	})
	return nil
}
func (c *stdioConn) LocalAddr() net.Addr  { return stdioAddr("stdio") }
func (c *stdioConn) RemoteAddr() net.Addr { return stdioAddr(c.remote) }

// Deadlines are not supported on standard input and output: ssh keeps
// the connection alive or ends it, and ending it ends the server.
func (c *stdioConn) SetDeadline(time.Time) error      { return nil }
func (c *stdioConn) SetReadDeadline(time.Time) error  { return nil }
func (c *stdioConn) SetWriteDeadline(time.Time) error { return nil }

// SSHClientAddr turns $SSH_CLIENT ("IP PORT PORT") into IP:PORT for the
// audit log.
func SSHClientAddr(env string) string {
	f := strings.Fields(env)
	if len(f) >= 2 {
		return net.JoinHostPort(f[0], f[1])
	}
	return ""
}
