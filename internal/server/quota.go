package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/storage"
)

// Files of the ledger in the state directory.
const (
	QuotasFile = "quotas.json" // repository quotas, set by `floe serve quota`
	UsageFile  = "usage.json"  // bytes stored by each token
)

// ErrQuota is the reason of an upload refused because it would exceed a
// quota (507).
var ErrQuota = errors.New("quota exceeded")

// ObjectBlock is the unit in which quotas count an object: its size
// rounded up to whole blocks, and at least one block, as a file system
// stores it (du). Counted by their bytes alone, a `backup` token could
// store millions of objects of a few bytes (snapshot records, which the
// server cannot verify) within its quota, each costing the server a file
// and an inode, and every client that lists snapshots a load; counted so,
// a quota of Q bytes holds at most Q/4 KiB objects. Packs (16 MiB) count
// at most 0.03% more than their bytes.
const ObjectBlock = 4096

// Charged is what an object of size bytes counts against quotas.
func Charged(size int64) int64 {
	return max(ObjectBlock, (size+ObjectBlock-1)/ObjectBlock*ObjectBlock)
}

// Ledger keeps the quotas and what counts against them (in whole blocks
// per object, Charged): the bytes of new objects each token stored (persisted in usage.json, so that it survives
// restarts; identical re-uploads do not count) and the bytes each
// repository holds (counted by listing it the first time an upload needs
// it, then kept up to date by saves and removes). An upload reserves its
// Content-Length before its body is read, so concurrent uploads cannot
// together overshoot, and a refused one stores nothing.
type Ledger struct {
	dir string

	mu           sync.Mutex
	tokenUsed    map[string]int64
	repoQuota    map[string]int64
	quotaMod     time.Time
	repoUsed     map[string]int64 // known repositories only
	reservedTok  map[string]int64
	reservedRepo map[string]int64
	// counting: repositories whose count track has started
	counting map[string]bool
}

type quotaFile struct {
	Repos map[string]int64 `json:"repos"`
}

// OpenLedger opens the ledger in stateDir.
func OpenLedger(stateDir string) (*Ledger, error) {
	l := &Ledger{dir: stateDir, tokenUsed: map[string]int64{}, repoUsed: map[string]int64{},
		reservedTok: map[string]int64{}, reservedRepo: map[string]int64{}, counting: map[string]bool{}}
	b, err := os.ReadFile(filepath.Join(stateDir, UsageFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("usage ledger: %w", err)
	}
	if err == nil {
		if err := json.Unmarshal(b, &l.tokenUsed); err != nil {
			return nil, fmt.Errorf("usage ledger %s is damaged: %w", UsageFile, err)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.reloadQuotasLocked(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Ledger) reloadQuotasLocked() error {
	p := filepath.Join(l.dir, QuotasFile)
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		l.repoQuota, l.quotaMod = map[string]int64{}, time.Time{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("quotas: %w", err)
	}
	if l.repoQuota != nil && fi.ModTime().Equal(l.quotaMod) {
		return nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("quotas: %w", err)
	}
	var qf quotaFile
	if err := json.Unmarshal(b, &qf); err != nil {
		return fmt.Errorf("quotas file %s is damaged: %w", p, err)
	}
	if qf.Repos == nil {
		qf.Repos = map[string]int64{}
	}
	l.repoQuota, l.quotaMod = qf.Repos, fi.ModTime()
	return nil
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// SetRepoQuota sets the quota of a repository in bytes (0: none).
func (l *Ledger) SetRepoQuota(repo string, bytes int64) error {
	if err := ValidRepoName(repo); err != nil {
		return err
	}
	if bytes < 0 {
		return errors.New("a quota is 0 (none) or more bytes")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.reloadQuotasLocked(); err != nil {
		return err
	}
	q := map[string]int64{}
	for k, v := range l.repoQuota {
		q[k] = v
	}
	if bytes == 0 {
		delete(q, repo)
	} else {
		q[repo] = bytes
	}
	if err := writeJSONFile(filepath.Join(l.dir, QuotasFile), quotaFile{Repos: q}); err != nil {
		return fmt.Errorf("quotas: %w", err)
	}
	l.repoQuota = nil
	return l.reloadQuotasLocked()
}

// RepoQuotas returns the repository quotas.
func (l *Ledger) RepoQuotas() (map[string]int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.reloadQuotasLocked(); err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for k, v := range l.repoQuota {
		out[k] = v
	}
	return out, nil
}

// TokenUsage returns the bytes each token stored.
func (l *Ledger) TokenUsage() map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int64{}
	for k, v := range l.tokenUsed {
		out[k] = v
	}
	return out
}

// RepoSize counts what the objects stored in be count against a quota
// (Charged).
func RepoSize(ctx context.Context, be storage.Backend) (int64, error) {
	var n int64
	if fi, err := be.Stat(ctx, storage.Handle{Type: storage.Config}); err == nil {
		n += Charged(fi.Size)
	}
	for _, t := range storage.AllTypes {
		if err := be.List(ctx, t, func(fi storage.FileInfo) error { n += Charged(fi.Size); return nil }); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// reserve books an upload of size bytes by tok to repo (what it counts,
// Charged), or refuses it with ErrQuota. done(created) ends the
// reservation; created uploads count.
func (l *Ledger) reserve(ctx context.Context, be storage.Backend, tok Token, repo string, size int64) (func(created bool), error) {
	size = Charged(size)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.reloadQuotasLocked(); err != nil {
		return nil, err
	}
	rq := l.repoQuota[repo]
	if _, known := l.repoUsed[repo]; !known && rq > 0 {
		// counted once, under the lock: uploads to a repository with a
		// quota wait for it the first time
		n, err := RepoSize(ctx, be)
		if err != nil {
			return nil, fmt.Errorf("count the size of repository %s: %w", repo, err)
		}
		l.repoUsed[repo] = n
	}
	if tok.Quota > 0 && l.tokenUsed[tok.ID]+l.reservedTok[tok.ID]+size > tok.Quota {
		return nil, fmt.Errorf("%w: token %s (host %s) has stored %s of its quota of %s; this upload counts %s",
			ErrQuota, tok.ID, tok.Host, FormatSize(l.tokenUsed[tok.ID]+l.reservedTok[tok.ID]), FormatSize(tok.Quota), FormatSize(size))
	}
	if used, known := l.repoUsed[repo]; known && rq > 0 && used+l.reservedRepo[repo]+size > rq {
		return nil, fmt.Errorf("%w: repository %s holds %s of its quota of %s; this upload counts %s",
			ErrQuota, repo, FormatSize(used+l.reservedRepo[repo]), FormatSize(rq), FormatSize(size))
	}
	l.reservedTok[tok.ID] += size
	l.reservedRepo[repo] += size
	return func(created bool) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.reservedTok[tok.ID] -= size
		l.reservedRepo[repo] -= size
		if !created {
			return
		}
		l.tokenUsed[tok.ID] += size
		l.addLocked(repo, size)
		// written at once (not fsynced): a crash loses at most the
		// accounting of uploads whose rename did not reach the disk
		if err := writeJSONFile(filepath.Join(l.dir, UsageFile), l.tokenUsed); err != nil {
			fmt.Fprintf(os.Stderr, "floe serve: usage ledger: %v\n", err)
		}
	}, nil
}

// credit gives the quota of token id back what an object of size bytes
// it uploaded counted, when the object is removed (prune, forget): a
// token's usage is what its objects still stored count.
func (l *Ledger) credit(id string, size int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	used, ok := l.tokenUsed[id]
	if !ok {
		return
	}
	l.tokenUsed[id] = max(0, used-Charged(size))
	if err := writeJSONFile(filepath.Join(l.dir, UsageFile), l.tokenUsed); err != nil {
		fmt.Fprintf(os.Stderr, "floe serve: usage ledger: %v\n", err)
	}
}

// removed records that an object of size bytes left repo.
func (l *Ledger) removed(repo string, size int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addLocked(repo, -Charged(size))
}

// addLocked adds n to what repo holds, if the ledger knows it.
func (l *Ledger) addLocked(repo string, n int64) {
	if _, known := l.repoUsed[repo]; known {
		l.repoUsed[repo] += n
	}
}

// track counts what repository repo holds, once, so that its size is
// known (floe_server_repository_bytes) before an upload to it needs it.
// The count runs in the background but under the ledger's lock, as an
// upload's own first count does, so that no save or remove is missed or
// counted twice: uploads wait for it (a listing of the repository, once
// per repository and server start).
func (l *Ledger) track(be storage.Backend, repo string) {
	l.mu.Lock()
	_, known := l.repoUsed[repo]
	if known || l.counting[repo] {
		l.mu.Unlock()
		return
	}
	l.counting[repo] = true
	l.mu.Unlock()
	go func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.counting, repo)
		if _, known := l.repoUsed[repo]; known {
			return
		}
		n, err := RepoSize(context.Background(), be)
		if err != nil {
			fmt.Fprintf(os.Stderr, "floe serve: repository %s: counting what it holds: %v\n", repo, err)
			return
		}
		l.repoUsed[repo] = n
	}()
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}, {"", 1}}

// ParseSize parses a byte count such as 500MiB, 2G or 1048576 (units are
// binary: K = KiB).
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n < 0 || n > (1<<62)/u.mult {
			break
		}
		return n * u.mult, nil
	}
	return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit (K, M, G, T or KiB, MiB, GiB, TiB)", s)
}

// FormatSize prints a byte count for people.
func FormatSize(n int64) string {
	for _, u := range sizeUnits[:4] {
		if n >= u.mult {
			return strconv.FormatFloat(float64(n)/float64(u.mult), 'f', 1, 64) + " " + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + " B"
}

// RepoUsage is one repository of `floe serve usage`.
type RepoUsage struct {
	Repo    string `json:"repo"`
	Objects int64  `json:"objects"`
	Bytes   int64  `json:"bytes"`
	// Counted is what the objects count against the quota (Charged).
	Counted int64       `json:"counted"`
	Quota   int64       `json:"quota,omitempty"`
	Hosts   []HostUsage `json:"hosts"`
}

// HostUsage is what one host (the host of the credentials that uploaded
// them; "" for objects nobody recorded) stores in a repository and
// uploaded lately.
type HostUsage struct {
	Host          string     `json:"host"`
	Objects       int64      `json:"objects"`
	Bytes         int64      `json:"bytes"`
	UploadedDay   int64      `json:"uploaded_day"`
	UploadedMonth int64      `json:"uploaded_month"`
	LastWrite     *time.Time `json:"last_write,omitempty"`
}

// TokenUsageLine is one token's line of `floe serve usage`.
type TokenUsageLine struct {
	ID    string `json:"id"`
	Repo  string `json:"repo"`
	Host  string `json:"host"`
	Bytes int64  `json:"bytes"`
	Quota int64  `json:"quota,omitempty"`
}

// UsageReport lists what every repository under root holds and what every
// token stored, with their quotas.
func UsageReport(ctx context.Context, root, stateDir string) ([]RepoUsage, []TokenUsageLine, error) {
	repos, err := NewRootDir(root)
	if err != nil {
		return nil, nil, err
	}
	return usageReport(ctx, repos, stateDir, func([]Token, map[string]int64) ([]string, error) {
		entries, err := os.ReadDir(repos.dir)
		if err != nil {
			return nil, err
		}
		var names []string
		for _, e := range entries {
			if e.IsDir() && ValidRepoName(e.Name()) == nil {
				names = append(names, e.Name())
			}
		}
		return names, nil
	})
}

// UsageReportOf is UsageReport for repositories that cannot be listed (a
// bucket's prefixes, --storage): those that a token or a quota names.
func UsageReportOf(ctx context.Context, repos Repositories, stateDir string) ([]RepoUsage, []TokenUsageLine, error) {
	return usageReport(ctx, repos, stateDir, func(tokens []Token, quotas map[string]int64) ([]string, error) {
		seen := map[string]bool{}
		var names []string
		for _, t := range tokens {
			if !seen[t.Repo] {
				seen[t.Repo] = true
				names = append(names, t.Repo)
			}
		}
		for n := range quotas {
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
		return names, nil
	})
}

// usageReport is UsageReport of the repositories of repos that names
// gives, from the tokens and the repository quotas (names that are not
// repositories are left out).
func usageReport(ctx context.Context, repos Repositories, stateDir string, names func([]Token, map[string]int64) ([]string, error)) ([]RepoUsage, []TokenUsageLine, error) {
	ts, err := OpenTokenStore(stateDir)
	if err != nil {
		return nil, nil, err
	}
	list, err := ts.List()
	if err != nil {
		return nil, nil, err
	}
	l, err := OpenLedger(stateDir)
	if err != nil {
		return nil, nil, err
	}
	quotas, err := l.RepoQuotas()
	if err != nil {
		return nil, nil, err
	}
	repoNames, err := names(list, quotas)
	if err != nil {
		return nil, nil, err
	}
	var ru []RepoUsage
	now := time.Now()
	for _, name := range repoNames {
		if _, err := repos.Open(ctx, name); err != nil {
			continue // not a repository
		}
		a, err := AccountingAt(ctx, repos, name, now)
		if err != nil {
			return nil, nil, err
		}
		u := RepoUsage{Repo: name, Objects: a.Objects, Bytes: a.Bytes, Counted: a.Counted, Quota: quotas[name], Hosts: []HostUsage{}}
		hosts := map[string]bool{}
		for h := range a.ByHost {
			hosts[h] = true
		}
		for h := range a.Uploads {
			hosts[h] = true
		}
		for h := range hosts {
			up := a.Uploads[h]
			hu := HostUsage{Host: h, Objects: a.ObjectsByHost[h], Bytes: a.ByHost[h], UploadedDay: up.Day, UploadedMonth: up.Month}
			if !up.Last.IsZero() {
				last := up.Last
				hu.LastWrite = &last
			}
			u.Hosts = append(u.Hosts, hu)
		}
		sort.Slice(u.Hosts, func(i, j int) bool { return u.Hosts[i].Host < u.Hosts[j].Host })
		ru = append(ru, u)
	}
	used := l.TokenUsage()
	var tu []TokenUsageLine
	for _, t := range list {
		tu = append(tu, TokenUsageLine{ID: t.ID, Repo: t.Repo, Host: t.Host, Bytes: used[t.ID], Quota: t.Quota})
	}
	sort.Slice(ru, func(i, j int) bool { return ru[i].Repo < ru[j].Repo })
	return ru, tu, nil
}
