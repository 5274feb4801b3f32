package remote

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Fingerprint returns the SHA-256 fingerprint of a DER certificate as
// "sha256:" and 64 lower-case hex digits: what `floe serve` prints and
// --server-fingerprint takes.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseFingerprint normalises a fingerprint given by a user: the
// "sha256:" prefix is optional, hex may be upper case and have colons.
func ParseFingerprint(s string) (string, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(strings.TrimPrefix(s, "sha256:"), "SHA256:")
	s = strings.ToLower(strings.ReplaceAll(s, ":", ""))
	if b, err := hex.DecodeString(s); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("server fingerprint must be sha256: and 64 hex digits, as the server prints it when it starts")
	}
	return "sha256:" + s, nil
}

// ErrFingerprint is returned (wrapped) when the server's certificate is not
// the one pinned or remembered.
var ErrFingerprint = errors.New("server certificate fingerprint mismatch")

// ErrPinned (the fingerprint the client was given for the server differs)
// and ErrUnknownAuthority (a certificate nobody vouches for, and no place
// to remember it) are wrapped with ErrFingerprint, so that a front end can
// say how to give a fingerprint.
var (
	ErrPinned           = errors.New("the pinned fingerprint")
	ErrUnknownAuthority = errors.New("not signed by a known authority")
)

// trust decides whether a server certificate is accepted:
//  1. a pinned fingerprint (--server-fingerprint) must match, nothing else;
//  2. a certificate a system CA vouches for, for the host name, is accepted;
//  3. a fingerprint remembered in the known-servers file must match;
//  4. otherwise the certificate is trusted on first use and remembered,
//     with a message saying so.
type trust struct {
	host, hostport string
	pinned         string
	knownFile      string
	warn           func(string)
	hint           string // Options.TrustHint

	mu       sync.Mutex
	accepted string // fingerprint accepted in this process
}

func (t *trust) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	fp := Fingerprint(leaf.Raw)
	if t.pinned != "" {
		if fp != t.pinned {
			return fmt.Errorf("%w: %s presents %s, but %w is %s: refusing to connect (the server's certificate changed or someone is intercepting the connection)",
				ErrFingerprint, t.hostport, fp, ErrPinned, t.pinned)
		}
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.accepted == fp {
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: t.host, Intermediates: inter}); err == nil {
		t.accepted = fp
		return nil
	}
	if t.knownFile == "" {
		return fmt.Errorf("%w: the certificate of %s (%s) is %w",
			ErrFingerprint, t.hostport, fp, ErrUnknownAuthority)
	}
	known, line, err := lookupKnown(t.knownFile, t.hostport)
	if err != nil {
		return err
	}
	if known != "" {
		if known != fp {
			return fmt.Errorf("%w: %s presents %s, but %s (line %d) remembers %s: the server's certificate changed, or someone is intercepting the connection. If the change is expected, check the new fingerprint with the server's administrator (the server prints it when it starts) and delete line %d of %s",
				ErrFingerprint, t.hostport, fp, t.knownFile, line, known, line, t.knownFile)
		}
		t.accepted = fp
		return nil
	}
	if err := appendKnown(t.knownFile, t.hostport, fp); err != nil {
		return err
	}
	t.accepted = fp
	if t.warn != nil {
		msg := fmt.Sprintf("floe: first connection to %s: trusting its certificate %s and remembering it in %s", t.hostport, fp, t.knownFile)
		if t.hint != "" {
			msg += "; " + t.hint
		}
		t.warn(msg)
	}
	return nil
}

// The known-servers file has lines "HOST:PORT sha256:HEX"; # starts a
// comment.
func lookupKnown(file, hostport string) (string, int, error) {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("known servers: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 || strings.HasPrefix(fields[0], "#") || fields[0] != hostport {
			continue
		}
		return fields[1], n, nil
	}
	if err := sc.Err(); err != nil {
		return "", 0, fmt.Errorf("known servers %s: %w", file, err)
	}
	return "", 0, nil
}

func appendKnown(file, hostport, fp string) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("remember server fingerprint: %w", err)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("remember server fingerprint: %w", err)
	}
	if _, err := fmt.Fprintf(f, "%s %s\n", hostport, fp); err != nil {
		f.Close()
		return fmt.Errorf("remember server fingerprint: %w", err)
	}
	return f.Close()
}
