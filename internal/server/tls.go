package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/floe-backup/floe/internal/storage/remote"
)

// The self-signed certificate's files in the state directory.
const (
	CertFile = "cert.pem"
	KeyFile  = "key.pem"
)

// LoadCertificate loads certFile and keyFile (when both are given), or the
// state directory's self-signed certificate, generating it on first use
// for the names given (plus localhost and the loopback addresses). It
// returns the certificate, its fingerprint (what clients pin) and whether
// it was just created.
func LoadCertificate(stateDir, certFile, keyFile string, names []string) (tls.Certificate, string, bool, error) {
	created := false
	if certFile == "" && keyFile == "" {
		certFile, keyFile = filepath.Join(stateDir, CertFile), filepath.Join(stateDir, KeyFile)
		if _, err := os.Stat(certFile); errors.Is(err, fs.ErrNotExist) {
			if err := writeSelfSigned(certFile, keyFile, names); err != nil {
				return tls.Certificate{}, "", false, err
			}
			created = true
		}
	} else if certFile == "" || keyFile == "" {
		return tls.Certificate{}, "", false, ErrTLSPair
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, "", false, fmt.Errorf("load TLS certificate: %w", err)
	}
	return cert, remote.Fingerprint(cert.Certificate[0]), created, nil
}

func writeSelfSigned(certFile, keyFile string, names []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "floe serve " + host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	all := append([]string{"localhost", "127.0.0.1", "::1"}, names...)
	if host != "" {
		all = append(all, host)
	}
	for _, n := range all {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create self-signed certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	// the key first: a certificate without its key would be "loaded" next
	// time and fail; a key without certificate is simply replaced
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("write TLS key: %w", err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("write TLS certificate: %w", err)
	}
	return nil
}
