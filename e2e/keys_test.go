//go:build linux

package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// Exit codes and messages for what goes wrong when opening a repository.
func TestOpenErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()

	wrong := e.path("wrong-password")
	writeSecretFile(t, wrong)
	r := e.run("-r", e.repo, "--password-file", wrong, "snapshots")
	expectCode(t, r, 11)
	if !strings.Contains(r.stderr, "wrong password") {
		t.Errorf("wrong password: the message does not say so: %s", r)
	}
	// --json: the error is a JSON document on stdout
	r = e.run("-r", e.repo, "--password-file", wrong, "--json", "snapshots")
	expectCode(t, r, 11)
	var je struct {
		Error    string `json:"error"`
		ExitCode int    `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &je); err != nil || je.ExitCode != 11 || !strings.Contains(je.Error, "wrong password") {
		t.Errorf("--json error output: %v %+v\n%s", err, je, r)
	}

	// a key file that does not exist
	missing := e.path("no-such.key")
	r = e.run("-r", e.repo, "--key-file", missing, "snapshots")
	expectFail(t, r)
	if !strings.Contains(r.stderr, "key file") || !strings.Contains(r.stderr, missing) {
		t.Errorf("missing key file: the message names neither the key file nor its path: %s", r)
	}

	// a key file of another repository
	other := newEnv(t)
	otherKey := other.path("other.key")
	res := other.run("-r", other.repo, "--key-file", otherKey, "init")
	expectCode(t, res, 0)
	registerKeyFile(t, otherKey)
	r = e.run("-r", e.repo, "--key-file", otherKey, "snapshots")
	expectCode(t, r, 11)

	// an empty password file
	empty := e.path("empty-password")
	os.WriteFile(empty, nil, 0o600)
	r = e.run("-r", e.repo, "--password-file", empty, "snapshots")
	expectFail(t, r)

	// no repository there
	nowhere := e.path("no-repo-here")
	r = e.run("-r", nowhere, "--password-file", e.pwFile, "snapshots")
	knownBug(t, r.code == 1 && strings.Contains(r.stderr, "no repository at"),
		"cmd/floe/globals.go (*globals).openRepo: a missing repository exits 1, not 10: it tests errors.Is(err, os.ErrNotExist) but local.Open wraps storage.ErrNotExist (the hint then says \"the object is missing from the repository\")")
	expectCode(t, r, 10)
	if !strings.Contains(r.stderr, nowhere) {
		t.Errorf("the message does not name the location: %s", r)
	}
	// one sentence and what to do next, not a chain of the same fact
	if first := strings.SplitN(r.stderr, "\n", 2)[0]; first != "floe: no repository at "+nowhere+": the directory does not exist" ||
		!strings.Contains(r.stderr, "hint: create one with `floe init") {
		t.Errorf("want one clear sentence and a hint: %s", r)
	}
	// an empty directory is no repository either
	r = e.run("-r", e.mkdir("empty-dir"), "--password-file", e.pwFile, "snapshots")
	expectCode(t, r, 10)
}

// registerKeyFile registers the secret of a key file as a secret that no
// output may show.
func registerKeyFile(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var kf struct {
		Secret []byte `json:"secret"`
	}
	if err := json.Unmarshal(b, &kf); err != nil || len(kf.Secret) == 0 {
		t.Fatalf("key file %s: %v", path, err)
	}
	addSecret(base64.StdEncoding.EncodeToString(kf.Secret))
	addSecret(base64.StdEncoding.EncodeToString(kf.Secret)[:24])
}

func checkMode0600(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
}

// fullKeyID returns the ID of a full key of e's repository.
func fullKeyID(t *testing.T, e *floeEnv) string {
	t.Helper()
	var list struct {
		Keys []struct {
			ID        string `json:"id"`
			WriteOnly bool   `json:"write_only"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(e.ok("key", "list", "--json").stdout), &list); err != nil {
		t.Fatal(err)
	}
	for _, k := range list.Keys {
		if !k.WriteOnly {
			return k.ID
		}
	}
	t.Fatal("no full key")
	return ""
}

// A write-only key makes backups (the second one skips unchanged files
// through the local cache) but reads nothing; a full key reads them.
func TestWriteOnlyKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 50, 2000, 40)
	testutil.WriteRandom(t, filepath.Join(src, "big"), 3<<20, 41)

	wo := e.path("host.key")
	r := e.ok("key", "add", "--write-only", "--new-key-file", wo, "--json")
	registerKeyFile(t, wo)
	checkMode0600(t, wo)
	var added struct {
		ID        string `json:"id"`
		WriteOnly bool   `json:"write_only"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &added); err != nil || !added.WriteOnly {
		t.Errorf("key add --json: %v %+v", err, added)
	}
	woArgs := func(args ...string) []string { return append([]string{"-r", e.repo, "--key-file", wo}, args...) }

	r = e.run(woArgs("backup", "--json", src)...)
	expectCode(t, r, 0)
	b1 := decodeJSON[backupOut](t, r)
	r = e.run(woArgs("backup", "--json", src)...)
	expectCode(t, r, 0)
	b2 := decodeJSON[backupOut](t, r)
	if b2.Summary.FilesUnchanged != 51 || b2.Parent != b1.Snapshot {
		t.Errorf("second write-only backup: %d files unchanged (want 51), parent %q (want %q)", b2.Summary.FilesUnchanged, b2.Parent, b1.Snapshot)
	}

	// reading needs a full key
	reads := [][]string{
		{"restore", "latest", "--target", e.path("wo-restore")},
		{"restore", b1.Snapshot, "--target", e.path("wo-restore")},
		{"snapshots"},
		{"key", "add", "--new-key-file", e.path("full-from-wo.key")},
		// key management needs the authority only full keys hold
		{"key", "add", "--write-only", "--new-key-file", e.path("wo-from-wo.key")},
		{"key", "remove", fullKeyID(t, e)},
		{"key", "remove", added.ID},
	}
	for _, cmd := range [][]string{{"ls", "latest"}, {"dump", "latest:" + filepath.Join(src, "big")}, {"find", "big"}, {"diff", b1.Snapshot, b2.Snapshot}, {"cat", "snapshot", b1.Snapshot}} {
		if hasCommand(t, cmd[0]) {
			reads = append(reads, cmd)
		}
	}
	for _, cmd := range reads {
		r := e.run(woArgs(cmd...)...)
		if r.code != 12 {
			t.Errorf("want exit 12 (write-only key): %s", r)
		} else if !strings.Contains(r.stderr, "full key") {
			t.Errorf("the message does not say a full key is needed: %s", r)
		}
	}
	if _, err := os.Stat(e.path("full-from-wo.key")); err == nil {
		t.Errorf("a write-only key wrote a full key file")
	}
	if _, err := os.Stat(e.path("wo-from-wo.key")); err == nil {
		t.Errorf("a write-only key added a key")
	}
	if ents, _ := os.ReadDir(e.path("wo-restore")); len(ents) > 0 {
		t.Errorf("a write-only key restored files")
	}

	// the full key reads both write-only backups
	for _, id := range []string{b1.Snapshot, b2.Snapshot} {
		dst := e.path("restored-" + id[:8])
		e.ok("restore", "--verify", id+":"+src, "--target", dst)
		testutil.CompareTrees(t, src, dst)
	}
}

// With no repository given, the first backup creates the default one with
// a key file, and later commands find both without any flags.
func TestDefaultRepository(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 20, 1000, 50)
	keyFile := filepath.Join(e.config, "floe", "repository.key")
	repoDir := filepath.Join(e.data, "floe", "repository")

	r := e.run("backup", src)
	knownBug(t, r.code == 1 && strings.Contains(r.stderr, "no repository at"),
		"cmd/floe/globals.go (*globals).openRepo: with no -r and no default repository yet, `floe backup DIR` fails (\"no repository at ...\") instead of creating it: the test errors.Is(err, os.ErrNotExist) misses local.Open's storage.ErrNotExist, so errNoRepoGiven is never returned")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, keyFile) {
		t.Errorf("the first backup does not say where the key file is (%s): %s", keyFile, r)
	}
	checkMode0600(t, keyFile)
	registerKeyFile(t, keyFile)
	if _, err := os.Stat(filepath.Join(repoDir, "config")); err != nil {
		t.Errorf("no repository at %s: %v", repoDir, err)
	}
	key1, _ := os.ReadFile(keyFile)

	r = e.run("snapshots", "--json")
	expectCode(t, r, 0)
	if s := decodeJSON[snapshotList](t, r).Snapshots; len(s) != 1 {
		t.Errorf("%d snapshots, want 1", len(s))
	}
	dst := e.path("restored")
	expectCode(t, e.run("restore", "latest:"+src, "--target", dst), 0)
	testutil.CompareTrees(t, src, dst)

	// a second backup uses the same repository and key
	r = e.run("backup", src)
	expectCode(t, r, 0)
	if key2, _ := os.ReadFile(keyFile); !bytes.Equal(key1, key2) {
		t.Errorf("the second backup changed the key file")
	}
	if strings.Contains(r.stdout, "created") {
		t.Errorf("the second backup says it created something: %s", r)
	}
	// FLOE_REPOSITORY pointing elsewhere wins over the default
	r = e.runWith(runOpts{env: []string{"FLOE_REPOSITORY=" + e.path("elsewhere")}}, "snapshots")
	expectCode(t, r, 10)
}

// key add, list, passwd and remove.
func TestKeyManagement(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	pw1 := e.pwFile
	pw2, pw3 := e.path("pw2"), e.path("pw3")
	writeSecretFile(t, pw2)
	writeSecretFile(t, pw3)
	with := func(pw string, args ...string) result {
		return e.run(append([]string{"-r", e.repo, "--password-file", pw}, args...)...)
	}
	type keyInfo struct {
		ID        string `json:"id"`
		Current   bool   `json:"current"`
		WriteOnly bool   `json:"write_only"`
		Kind      string `json:"kind"`
	}
	list := func(pw string) []keyInfo {
		r := with(pw, "key", "list", "--json")
		expectCode(t, r, 0)
		return decodeJSON[struct {
			Keys []keyInfo `json:"keys"`
		}](t, r).Keys
	}
	current := func(keys []keyInfo) string {
		for _, k := range keys {
			if k.Current {
				return k.ID
			}
		}
		t.Fatalf("no current key in %+v", keys)
		return ""
	}
	keys := list(pw1)
	if len(keys) != 1 {
		t.Fatalf("%d keys after init, want 1", len(keys))
	}
	id1 := current(keys)

	expectCode(t, with(pw1, "key", "add", "--new-password-file", pw2), 0)
	if keys = list(pw2); len(keys) != 2 {
		t.Fatalf("%d keys, want 2", len(keys))
	}
	id2 := current(keys)
	if id2 == id1 {
		t.Fatalf("the new password opens the old key")
	}
	// human listing shows both
	r := with(pw1, "key", "list")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, id1[:8]) || !strings.Contains(r.stdout, id2[:8]) {
		t.Errorf("key list does not show both keys: %s", r)
	}

	// passwd: pw2 -> pw3
	expectCode(t, with(pw2, "key", "passwd", "--new-password-file", pw3), 0)
	expectCode(t, with(pw2, "snapshots"), 11)
	keys = list(pw3)
	id3 := current(keys)
	if len(keys) != 2 || id3 == id2 {
		t.Errorf("after passwd: keys %+v, want 2 with a new current one", keys)
	}
	expectCode(t, with(pw1, "snapshots"), 0)

	// the key in use cannot be removed
	r = with(pw3, "key", "remove", id3[:12])
	expectFail(t, r)
	if !strings.Contains(r.stderr, "in use") {
		t.Errorf("removing the key in use: message does not say why: %s", r)
	}
	expectCode(t, with(pw3, "snapshots"), 0)

	// another key can be removed; its password no longer opens
	expectCode(t, with(pw3, "key", "remove", id1), 0)
	expectCode(t, with(pw1, "snapshots"), 11)
	if keys = list(pw3); len(keys) != 1 {
		t.Errorf("%d keys after remove, want 1", len(keys))
	}

	// key files: a full key-file key opens and reads
	kf := e.path("full.key")
	expectCode(t, with(pw3, "key", "add", "--new-key-file", kf), 0)
	registerKeyFile(t, kf)
	checkMode0600(t, kf)
	expectCode(t, e.run("-r", e.repo, "--key-file", kf, "snapshots"), 0)
	// it will not overwrite a file
	r = with(pw3, "key", "add", "--new-key-file", kf)
	expectFail(t, r)
	// passwd of a key-file key is refused
	expectFail(t, e.run("-r", e.repo, "--key-file", kf, "key", "passwd", "--new-password-file", pw2))
	// ambiguous or unknown IDs
	expectFail(t, with(pw3, "key", "remove", "ffffffffffff"))
}

// The passwords of the suite never appear in output (run checks every
// command); here the ways a password can travel: files, commands, wrong ones.
// Neither do they stand in plain text in the repository or the cache.
func TestSecretsStayHidden(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 10, 100, 60)
	e.backup(src)

	// --password-command: the command text may hold the secret; messages
	// about it must not repeat it
	expectCode(t, e.run("-r", e.repo, "--password-command", "cat "+e.pwFile, "snapshots"), 0)
	expectCode(t, e.run("-r", e.repo, "--password-command", "printf %s\\\\n "+e.password, "snapshots"), 0)
	wrongPw := newSecret(t)
	r := e.run("-r", e.repo, "--password-command", "echo "+wrongPw, "snapshots")
	expectCode(t, r, 11)
	r = e.run("-r", e.repo, "--password-command", "exit 3 # "+e.password, "snapshots")
	expectFail(t, r)
	r = e.runWith(runOpts{env: []string{"FLOE_PASSWORD_COMMAND=false " + e.password}}, "-r", e.repo, "snapshots")
	expectFail(t, r)
	// FLOE_PASSWORD_FILE
	expectCode(t, e.runWith(runOpts{env: []string{"FLOE_PASSWORD_FILE=" + e.pwFile}}, "-r", e.repo, "snapshots"), 0)
	// no password at all, stdin not a terminal: a clear error, no prompt hang
	r = e.run("-r", e.repo, "snapshots")
	expectFail(t, r)

	// nothing in the repository or the caches holds a password in plain text
	secrets.mu.Lock()
	all := append([]string(nil), secrets.list...)
	secrets.mu.Unlock()
	for _, dir := range []string{e.repo, e.floeCache, e.cache, e.home} {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, s := range all {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("%s holds a password in plain text", p)
				}
			}
			return nil
		})
	}
}
