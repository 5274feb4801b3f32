package nbd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
)

// DefaultPort is NBD's IANA port.
const DefaultPort = "10809"

// DefaultListen is where a server listens unless told otherwise: the
// loopback interface only, since NBD has no authentication of its own
// (TLS with client certificates aside).
const DefaultListen = "127.0.0.1:" + DefaultPort

// Listen opens where a server listens: "unix:PATH" or an absolute path for
// a Unix socket (made 0600: only this user may connect), else a TCP
// "HOST:PORT", "HOST" (port 10809) or ":PORT".
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok || strings.HasPrefix(addr, "/") {
		if !ok {
			path = addr
		}
		if path == "" {
			return nil, errors.New("listen: unix: needs a socket path")
		}
		// A stale socket of an earlier run is replaced; any other file is not.
		if st, err := os.Lstat(path); err == nil {
			if st.Mode().Type() != fs.ModeSocket {
				return nil, fmt.Errorf("listen on %s: the file exists and is not a socket", path)
			}
			if c, err := net.Dial("unix", path); err == nil {
				c.Close()
				return nil, fmt.Errorf("listen on %s: a server is already listening there", path)
			}
			os.Remove(path)
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		// Not the umask: it is the whole process's. Connecting needs write
		// permission on the socket, so this closes it to others.
		if err := os.Chmod(path, 0o600); err != nil {
			l.Close()
			return nil, fmt.Errorf("listen: %w", err)
		}
		return l, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, DefaultPort)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return l, nil
}

// URI is the address clients use for export name on l (nbd://... or
// nbd+unix://...; nbds when TLS is on).
func URI(l net.Listener, name string, withTLS bool) string {
	s := ""
	if withTLS {
		s = "s"
	}
	if ua, ok := l.Addr().(*net.UnixAddr); ok {
		return "nbd" + s + "+unix:///" + name + "?socket=" + ua.Name
	}
	host := l.Addr().String()
	if h, p, err := net.SplitHostPort(host); err == nil && p == DefaultPort {
		host = h
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	}
	return "nbd" + s + "://" + host + "/" + name
}
