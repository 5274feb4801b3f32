package remote

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// NewHTTPClient returns an HTTP client for other routes of a floe server
// at base (https://HOST:PORT, such as the fleet API), trusting its
// certificate exactly as the storage client does: the pinned fingerprint,
// a system CA, the known-servers file, or trust on first use. Only
// Fingerprint, KnownServersFile and Warn of opts are used. It follows no
// redirect, so that a token its caller sends never goes elsewhere.
func NewHTTPClient(base string, opts Options) (*http.Client, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server address %q: want https://HOST[:PORT]", base)
	}
	hostport := u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), "443")
	}
	if opts.Fingerprint != "" {
		if opts.Fingerprint, err = ParseFingerprint(opts.Fingerprint); err != nil {
			return nil, err
		}
	}
	tr := &trust{host: u.Hostname(), hostport: hostport, pinned: opts.Fingerprint, knownFile: opts.KnownServersFile, warn: opts.Warn, hint: opts.TrustHint}
	transport := &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			ServerName: u.Hostname(),
			// see New: trust.verify checks the chain instead
			InsecureSkipVerify: true,
			VerifyConnection:   tr.verify,
		},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 20 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		// a lease request waits on the server up to a minute
		ResponseHeaderTimeout: DefaultIdleTimeout,
	}
	// no redirects: the fleet API has none, and its callers send a
	// token (see newClient)
	return newClient(transport), nil
}
