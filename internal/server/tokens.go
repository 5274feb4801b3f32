package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Token is a credential as the server stores it: never the secret, only
// its SHA-256 (the secret is 256 random bits, so a fast hash is enough:
// there is nothing to brute-force).
type Token struct {
	ID      string    `json:"id"`
	Repo    string    `json:"repo"`
	Host    string    `json:"host"`
	Roles   Role      `json:"roles"`
	Created time.Time `json:"created"`
	Hash    string    `json:"sha256"`
	// Quota bounds the bytes of new objects this token may store (0: none).
	Quota int64 `json:"quota,omitempty"`
	// SSH marks the credential of `floe serve --stdio`: an ssh key whose
	// forced command gives the role; there is no token.
	SSH bool `json:"-"`
}

// Describe names the credential in messages: "token ID (host H)", or
// "the ssh key (role R over stdio, host H)".
func (t Token) Describe() string {
	if t.SSH {
		return fmt.Sprintf("the ssh key (role %s over stdio, host %s)", t.Roles, t.Host)
	}
	return fmt.Sprintf("token %s (host %s)", t.ID, t.Host)
}

// tokenPrefix starts every token, so that a leaked one is recognisable
// (secret scanners) and a token file holding something else is refused.
const tokenPrefix = "floe_"

// TokensFile is the name of the token store in the state directory.
const TokensFile = "tokens.json"

// ErrUnauthorized is returned (wrapped) when a request carries no token or
// one that the store does not know.
var ErrUnauthorized = errors.New("unauthorized")

// Errors of the server's configuration and its tokens; the front end
// says what to do about them in its terms (flags, commands).
var (
	ErrNoRoot  = errors.New("no directory of repositories given")
	ErrNoRole  = errors.New("no role given for the credential of the stdio connection")
	ErrTLSPair = errors.New("a TLS certificate file and its key file go together")
	ErrNoToken = errors.New("no such token")
)

// TokenStore is the file of credentials in the server's state directory
// (mode 0600). The server re-reads it when it changes, so that `floe serve
// token add/revoke` take effect without a restart.
type TokenStore struct {
	path string

	mu     sync.Mutex
	mod    time.Time
	size   int64
	tokens map[string]Token
}

type tokenFile struct {
	Tokens []Token `json:"tokens"`
}

// OpenTokenStore opens (or starts) the token store in stateDir.
func OpenTokenStore(stateDir string) (*TokenStore, error) {
	s := &TokenStore{path: filepath.Join(stateDir, TokensFile)}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// reload reads the file if it changed since the last read.
func (s *TokenStore) reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloadLocked()
}

func (s *TokenStore) reloadLocked() error {
	fi, err := os.Stat(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		s.tokens, s.mod, s.size = map[string]Token{}, time.Time{}, 0
		return nil
	}
	if err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	if s.tokens != nil && fi.ModTime().Equal(s.mod) && fi.Size() == s.size {
		return nil
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("token store %s is readable by others (mode %v); chmod 600 it", s.path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	var tf tokenFile
	if err := json.Unmarshal(b, &tf); err != nil {
		return fmt.Errorf("token store %s is damaged: %w", s.path, err)
	}
	m := make(map[string]Token, len(tf.Tokens))
	for _, t := range tf.Tokens {
		m[t.ID] = t
	}
	s.tokens, s.mod, s.size = m, fi.ModTime(), fi.Size()
	return nil
}

func (s *TokenStore) writeLocked() error {
	var tf tokenFile
	for _, t := range s.tokens {
		tf.Tokens = append(tf.Tokens, t)
	}
	sort.Slice(tf.Tokens, func(i, j int) bool { return tf.Tokens[i].Created.Before(tf.Tokens[j].Created) })
	b, err := json.MarshalIndent(tf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(s.path), ".tokens-*")
	if err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("token store: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("token store: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	if err := os.Rename(f.Name(), s.path); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	s.tokens = nil // re-read (and re-stat) next time
	return s.reloadLocked()
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Add creates a credential for host on repository repo with roles and
// returns the token, which is shown once and never stored.
func (s *TokenStore) Add(repo, host string, roles Role) (string, Token, error) {
	return s.AddWithQuota(repo, host, roles, 0)
}

// AddWithQuota is Add with a quota in bytes (0: none).
func (s *TokenStore) AddWithQuota(repo, host string, roles Role, quota int64) (string, Token, error) {
	if quota < 0 {
		return "", Token{}, fmt.Errorf("a quota is 0 (none) or more bytes")
	}
	if err := ValidRepoName(repo); err != nil {
		return "", Token{}, err
	}
	if host == "" || len(host) > 255 || strings.ContainsAny(host, "\x00\n\r\t") {
		return "", Token{}, fmt.Errorf("host name must be 1 to 255 characters without control characters")
	}
	if roles == 0 {
		return "", Token{}, fmt.Errorf("a token needs at least one role")
	}
	var id [8]byte
	var secret [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", Token{}, err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return "", Token{}, err
	}
	t := Token{ID: hex.EncodeToString(id[:]), Repo: repo, Host: host, Roles: roles,
		Created: time.Now().UTC().Truncate(time.Second), Quota: quota}
	sec := base64.RawURLEncoding.EncodeToString(secret[:])
	t.Hash = hashSecret(sec)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.reloadLocked(); err != nil {
		return "", Token{}, err
	}
	s.tokens[t.ID] = t
	if err := s.writeLocked(); err != nil {
		return "", Token{}, err
	}
	return tokenPrefix + t.ID + "_" + sec, t, nil
}

// List returns the credentials, oldest first.
func (s *TokenStore) List() ([]Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.reloadLocked(); err != nil {
		return nil, err
	}
	var ts []Token
	for _, t := range s.tokens {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(i, j int) bool {
		return ts[i].Created.Before(ts[j].Created) || ts[i].Created.Equal(ts[j].Created) && ts[i].ID < ts[j].ID
	})
	return ts, nil
}

// Revoke removes the credential id.
func (s *TokenStore) Revoke(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.reloadLocked(); err != nil {
		return err
	}
	if _, ok := s.tokens[id]; !ok {
		return fmt.Errorf("%w: id %q", ErrNoToken, id)
	}
	delete(s.tokens, id)
	return s.writeLocked()
}

// SetQuota sets the quota of credential id in bytes (0: none); a running
// server applies it at its next request.
func (s *TokenStore) SetQuota(id string, bytes int64) (Token, error) {
	if bytes < 0 {
		return Token{}, errors.New("a quota is 0 (none) or more bytes")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.reloadLocked(); err != nil {
		return Token{}, err
	}
	t, ok := s.tokens[id]
	if !ok {
		return Token{}, fmt.Errorf("%w: id %q", ErrNoToken, id)
	}
	t.Quota = bytes
	s.tokens[id] = t
	return t, s.writeLocked()
}

// Authenticate checks an Authorization header ("Bearer TOKEN") and returns
// the credential. Errors wrap ErrUnauthorized and never contain the token.
func (s *TokenStore) Authenticate(header string) (Token, error) {
	tok, ok := strings.CutPrefix(header, "Bearer ")
	if !ok {
		return Token{}, fmt.Errorf("%w: no bearer token (the client sent no token)", ErrUnauthorized)
	}
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok {
		return Token{}, fmt.Errorf("%w: not a floe token", ErrUnauthorized)
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || len(id) != 16 {
		return Token{}, fmt.Errorf("%w: malformed token", ErrUnauthorized)
	}
	s.mu.Lock()
	err := s.reloadLocked()
	t, found := s.tokens[id]
	s.mu.Unlock()
	if err != nil {
		return Token{}, err
	}
	if !found {
		return Token{}, fmt.Errorf("%w: unknown or revoked token", ErrUnauthorized)
	}
	if subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(t.Hash)) != 1 {
		return Token{}, fmt.Errorf("%w: wrong token secret for token id %s", ErrUnauthorized, id)
	}
	return t, nil
}

// WriteTokenFile writes a token to a new file of mode 0600 (whatever the
// umask), for `floe serve token add --output`: a shell redirect of the
// printed token makes the file the umask's way, often world-readable.
// An existing file is never overwritten (it may be another host's
// token); the error wraps fs.ErrExist and never shows the token.
func WriteTokenFile(path, token string) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("token file %s: %w", path, cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if _, err := f.WriteString(token + "\n"); err != nil {
		return fmt.Errorf("token file %s: %w", path, err)
	}
	return f.Sync()
}
