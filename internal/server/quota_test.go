package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "10K": 10 << 10, "5MiB": 5 << 20, "2G": 2 << 30, "1TiB": 1 << 40, "7B": 7} {
		if got, err := server.ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "-1", "1.5G", "G", "10 parsecs", "99999999999999T"} {
		if _, err := server.ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q): no error", bad)
		}
	}
}

// Token and repository quotas refuse an upload before any byte is stored,
// with a clear error; identical re-uploads do not count; removes free
// repository quota; token usage survives a restart of the ledger. Objects
// count in whole blocks (server.Charged), so that a host cannot store
// millions of tiny objects within a byte quota.
func TestQuotas(t *testing.T) {
	const block = server.ObjectBlock
	ctx := context.Background()
	root := t.TempDir()
	repos, err := server.NewRootDir(root)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, repos, server.Options{})
	state, ledger := s.state, s.ledger
	adminTok := s.token(t, "fleet", "admin")
	admin, err := remote.Create(ctx, s.url+"/fleet", remote.Options{Token: adminTok, Fingerprint: s.fp, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	small, smallTok, err := s.tokens.AddWithQuota("fleet", "small", server.RoleBackup, 3*block)
	if err != nil {
		t.Fatal(err)
	}
	b := s.client(t, "fleet", small)
	obj := func(c byte, n int) ([]byte, storage.Handle) {
		d := bytes.Repeat([]byte{c}, n)
		return d, storage.Handle{Type: storage.Pack, Name: nameOf(d)}
	}
	d1, h1 := obj('a', 600) // counts one block
	if err := b.Save(ctx, h1, d1); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(ctx, h1, d1); !errors.Is(err, storage.ErrExist) {
		t.Fatalf("identical: %v", err) // and it does not count
	}
	d2, h2 := obj('b', 2*block+1) // three blocks: one too many
	err = b.Save(ctx, h2, d2)
	if !errors.Is(err, remote.ErrQuota) || !errors.Is(err, storage.ErrDenied) || !strings.Contains(err.Error(), "quota of 12.0 KiB") || !strings.Contains(err.Error(), "this upload counts 12.0 KiB") {
		t.Fatalf("over the token quota: %v", err)
	}
	if _, err := admin.Stat(ctx, h2); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("a refused upload was stored: %v", err)
	}
	d3, h3 := obj('c', 2*block)
	if err := b.Save(ctx, h3, d3); err != nil {
		t.Fatalf("exactly up to the quota: %v", err)
	}
	// usage is persisted
	l2, err := server.OpenLedger(state)
	if err != nil {
		t.Fatal(err)
	}
	var used int64
	for _, n := range l2.TokenUsage() {
		used = max(used, n)
	}
	if used != 3*block {
		t.Errorf("persisted usage %d, want %d", used, 3*block)
	}

	// An attacker's many tiny objects: snapshot records of a few bytes
	// (the server cannot verify them) fit ten to a 40 KiB quota, not
	// four thousand.
	tinyTok, _, err := s.tokens.AddWithQuota("fleet", "tiny", server.RoleBackup, 10*block)
	if err != nil {
		t.Fatal(err)
	}
	tiny := s.client(t, "fleet", tinyTok)
	stored := 0
	for i := range 20 {
		d := []byte(fmt.Sprintf("snapshot %02d", i))
		err := tiny.Save(ctx, storage.Handle{Type: storage.Snapshot, Name: nameOf(d)}, d)
		if errors.Is(err, remote.ErrQuota) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		stored++
	}
	if stored != 10 {
		t.Errorf("%d tiny objects stored under a quota of 10 blocks, want 10", stored)
	}

	// a repository quota: the repository holds the config, d1, d3 and
	// the ten tiny objects: 1 + 1 + 2 + 10 blocks
	cfg := []byte("config")
	if err := admin.Save(ctx, storage.Handle{Type: storage.Config}, cfg); err != nil {
		t.Fatal(err)
	}
	if err := ledger.SetRepoQuota("fleet", 15*block); err != nil {
		t.Fatal(err)
	}
	d4, h4 := obj('d', block+1) // two blocks
	if err := admin.Save(ctx, h4, d4); !errors.Is(err, remote.ErrQuota) || !strings.Contains(err.Error(), "repository fleet") {
		t.Fatalf("over the repository quota: %v", err)
	}
	if err := admin.Remove(ctx, h1); err != nil {
		t.Fatal(err)
	}
	if u := ledger.TokenUsage()[smallTok.ID]; u != 2*block {
		t.Errorf("small's usage after its d1 was removed: %d, want %d", u, 2*block)
	}
	if err := admin.Save(ctx, h4, d4); err != nil {
		t.Fatalf("after a remove freed space: %v", err)
	}
	rs, ts, err := server.UsageReport(ctx, root, state)
	if err != nil {
		t.Fatal(err)
	}
	// stored: d3 and d4 (packs) and the ten records; counted against the
	// quota: those in blocks, and the config
	if len(rs) != 1 || rs[0].Repo != "fleet" || rs[0].Objects != 12 || rs[0].Bytes != 2*block+block+1+110 || rs[0].Counted != 15*block || rs[0].Quota != 15*block {
		t.Fatalf("usage report repositories: %+v", rs)
	}
	// by host: what each stores now, and what it uploaded (d1 too,
	// though removed since)
	byHost := map[string]server.HostUsage{}
	for _, h := range rs[0].Hosts {
		byHost[h.Host] = h
	}
	if h := byHost["small"]; h.Objects != 1 || h.Bytes != 2*block || h.UploadedDay != 600+2*block || h.UploadedMonth != h.UploadedDay || h.LastWrite == nil {
		t.Errorf("usage of host small: %+v", h)
	}
	if h := byHost["tiny"]; h.Objects != 10 || h.Bytes != 110 || h.UploadedDay != 110 {
		t.Errorf("usage of host tiny: %+v", h)
	}
	later, err := server.AccountingAt(ctx, repos, "fleet", time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if u := later.Uploads["small"]; u.Day != 0 || u.Month != 600+2*block {
		t.Errorf("uploads of small two days later: %+v", u)
	}
	if len(ts) != 3 {
		t.Errorf("usage report tokens: %+v", ts)
	}
}

func TestCharged(t *testing.T) {
	for size, want := range map[int64]int64{0: 4096, 1: 4096, 4096: 4096, 4097: 8192, 16 << 20: 16 << 20, 16<<20 + 1: 16<<20 + 4096} {
		if got := server.Charged(size); got != want {
			t.Errorf("Charged(%d) = %d, want %d", size, got, want)
		}
	}
}

// A token's quota can be raised (floe serve token quota), and removing
// what it uploaded (prune, forget) gives its quota back, so that a host
// with a quota is not refused for good.
func TestTokenQuotaRaisedAndFreed(t *testing.T) {
	const block = server.ObjectBlock
	ctx := context.Background()
	_, repos := fleetRoot(t)
	s := startServer(t, repos, server.Options{})
	admin := s.client(t, "fleet", s.token(t, "fleet", "admin"))
	secret, tok, err := s.tokens.AddWithQuota("fleet", "web1", server.RoleBackup, block)
	if err != nil {
		t.Fatal(err)
	}
	host := s.client(t, "fleet", secret)
	save := func(c byte) (storage.Handle, error) {
		d := bytes.Repeat([]byte{c}, 100)
		h := storage.Handle{Type: storage.Pack, Name: nameOf(d)}
		return h, host.Save(ctx, h, d)
	}
	h1, err := save('1')
	if err != nil {
		t.Fatal(err)
	}
	if _, err := save('2'); !errors.Is(err, remote.ErrQuota) {
		t.Fatalf("over a quota of one block: %v", err)
	}
	if _, err := s.tokens.SetQuota(tok.ID, 2*block); err != nil {
		t.Fatal(err)
	}
	if _, err := save('2'); err != nil {
		t.Fatalf("after the quota was raised: %v", err)
	}
	if _, err := save('3'); !errors.Is(err, remote.ErrQuota) {
		t.Fatalf("over the raised quota: %v", err)
	}
	if err := admin.Remove(ctx, h1); err != nil {
		t.Fatal(err)
	}
	if _, err := save('3'); err != nil {
		t.Fatalf("after a removal gave a block back: %v", err)
	}
	if u := s.ledger.TokenUsage()[tok.ID]; u != 2*block {
		t.Errorf("usage %d, want %d", u, 2*block)
	}
	if _, err := s.tokens.SetQuota("0123456789abcdef", block); !errors.Is(err, server.ErrNoToken) {
		t.Errorf("quota of an unknown token: %v", err)
	}
}
