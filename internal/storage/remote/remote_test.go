package remote

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/storage"
)

func TestParseURL(t *testing.T) {
	for _, ok := range []struct{ in, base, hostport, repo string }{
		{"https://h:8443/fleet", "https://h:8443", "h:8443", "fleet"},
		{"https://h/fleet/", "https://h", "h:443", "fleet"},
		{"https://[::1]:9/r", "https://[::1]:9", "[::1]:9", "r"},
	} {
		base, hp, repo, err := ParseURL(ok.in)
		if err != nil || base != ok.base || hp != ok.hostport || repo != ok.repo {
			t.Errorf("ParseURL(%q) = %q %q %q %v", ok.in, base, hp, repo, err)
		}
	}
	for _, bad := range []string{"http://h/r", "https://h", "https://h/", "https://h/a/b", "https://u:pw@h/r",
		"https://h/r?x=1", "https://h/a%2Fb", "https://floe_secret@h/r", "http://floe_secret@h/r", "https://floe_secret@h:x/r", "https://floe_secret@[::1/r"} {
		if _, _, _, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q): no error", bad)
		} else if strings.Contains(err.Error(), "pw") || strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseURL error shows the credential: %v", err)
		}
	}
}

func TestParseFingerprint(t *testing.T) {
	want := "sha256:" + strings.Repeat("ab", 32)
	for _, in := range []string{want, strings.Repeat("AB", 32), "SHA256:" + strings.Repeat("ab:", 31) + "ab"} {
		if got, err := ParseFingerprint(in); err != nil || got != want {
			t.Errorf("ParseFingerprint(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "sha256:", "sha256:" + strings.Repeat("ab", 31), strings.Repeat("zz", 32)} {
		if _, err := ParseFingerprint(bad); err == nil {
			t.Errorf("ParseFingerprint(%q): no error", bad)
		}
	}
}

func TestParseList(t *testing.T) {
	n := strings.Repeat("a", 64)
	got, err := parseList(storage.Pack, []byte(`{"name":"`+n+`","size":3}`+"\n"+`{"name":"../x","size":1}`+"\n"+`{"end":true}`+"\n"))
	if err != nil || len(got) != 1 || got[0].Name != n || got[0].Size != 3 {
		t.Errorf("parseList: %v %v", got, err)
	}
	if _, err := parseList(storage.Pack, []byte(`{"name":"`+n+`","size":3}`)); err == nil {
		t.Error("a list without its end line is accepted")
	}
}

// FuzzParseList: whatever a server sends, the client neither panics nor
// reports a name that is not a valid object name.
func FuzzParseList(f *testing.F) {
	n := strings.Repeat("a", 64)
	f.Add([]byte(`{"name":"` + n + `","size":3}` + "\n" + `{"end":true}`))
	f.Add([]byte(`{"error":"boom"}`))
	f.Add([]byte(`{"name":"../../etc/passwd","size":-1}{"end":true}`))
	f.Add([]byte(`{"name":"` + n + `","size":3,"token":"t","host":"h","received":"2026-01-01T00:00:00Z"}` + "\n" + `{"end":true}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		infos, origins, err := parseListOrigins(storage.Index, data)
		if err != nil {
			return
		}
		names := map[string]bool{}
		for _, fi := range infos {
			if (storage.Handle{Type: storage.Index, Name: fi.Name}).Validate() != nil || fi.Size < 0 {
				t.Fatalf("parseList reported %+v", fi)
			}
			names[fi.Name] = true
		}
		for name, og := range origins {
			if !names[name] || og.Received.IsZero() {
				t.Fatalf("origin of %q: %+v", name, og)
			}
		}
	})
}

func TestParseSSH(t *testing.T) {
	for _, ok := range []struct {
		in   string
		want SSHTarget
		argv string
	}{
		{"ssh://vault/srv/floe/web1", SSHTarget{Host: "vault", Path: "/srv/floe/web1"}, "ssh -T -- vault floe serve --stdio --root '/srv/floe/web1'"},
		{"ssh://root@10.0.0.1:2222/r", SSHTarget{User: "root", Host: "10.0.0.1", Port: "2222", Path: "/r"}, "ssh -T -p 2222 -- root@10.0.0.1 floe serve --stdio --root '/r'"},
		{"ssh://[::1]:22/r", SSHTarget{Host: "::1", Port: "22", Path: "/r"}, "ssh -T -p 22 -- ::1 floe serve --stdio --root '/r'"},
		// prints escaped, so that it parses back the same
		{"ssh://h/a%25b", SSHTarget{Host: "h", Path: "/a%b"}, "ssh -T -- h floe serve --stdio --root '/a%b'"},
	} {
		got, err := ParseSSH(ok.in)
		if err != nil || got != ok.want {
			t.Errorf("ParseSSH(%q) = %+v, %v", ok.in, got, err)
			continue
		}
		if argv := strings.Join(got.Command(nil), " "); argv != ok.argv {
			t.Errorf("%q: command %q, want %q", ok.in, argv, ok.argv)
		}
		if got.String() != ok.in {
			t.Errorf("String() = %q, want %q", got.String(), ok.in)
		}
	}
	// nothing that a remote shell would interpret, no options, no password
	for _, bad := range []string{"ssh://h", "ssh://h/", "ssh://h/a'b", "ssh://h/a;rm", "ssh://h/$(x)", "ssh://h/a b",
		"ssh://-oProxyCommand=x/r", "ssh://-l@h/r", "ssh://u:secret@h/r", "ssh://h/r?x=1", "ssh:///r", "ssh://h/`x`",
		"ssh://:/r", "ssh://u@:22/r", "ssh://::/r", "ssh://%80@h/r", "ssh://h/%ff"} {
		if _, err := ParseSSH(bad); err == nil {
			t.Errorf("ParseSSH(%q): no error", bad)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseSSH error shows the password: %v", err)
		}
	}
}

// A streamed answer that ends before the length the server announced is
// cut short (io.ErrUnexpectedEOF), one that goes on beyond it is an
// error, and one of the announced length ends in io.EOF; read through a
// buffer (HTTP/2) or not (HTTP/1.1). Reading after Close is an error.
func TestStreamBodyLength(t *testing.T) {
	h := storage.Handle{Type: storage.Pack, Name: strings.Repeat("ab", 32)}
	for _, buffered := range []bool{true, false} {
		for _, c := range []struct {
			sent, announced int64
			want            error // nil: io.EOF after all bytes
		}{{10, 10, nil}, {5, 10, io.ErrUnexpectedEOF}, {12, 10, errTooLong}, {7, -1, nil}} {
			body := io.NopCloser(bytes.NewReader(make([]byte, c.sent)))
			s := &streamBody{rc: body, r: body, left: c.announced, h: h}
			if buffered {
				s.br = streamBufs.Get().(*bufio.Reader)
				s.br.Reset(body)
				s.r = s.br
			}
			got, err := io.ReadAll(s)
			s.Close()
			switch {
			case c.want == nil && (err != nil || int64(len(got)) != c.sent):
				t.Errorf("buffered %v, sent %d, announced %d: %d bytes, %v", buffered, c.sent, c.announced, len(got), err)
			case c.want != nil && !errors.Is(err, c.want):
				t.Errorf("buffered %v, sent %d, announced %d: %v, want %v", buffered, c.sent, c.announced, err, c.want)
			}
			if _, err := s.Read(make([]byte, 1)); err == nil || s.Close() != nil {
				t.Errorf("buffered %v: a read after Close: %v", buffered, err)
			}
		}
	}
}

// A password typed into a location of the wrong form is not repeated by
// the error about it (found by FuzzParseSSH and FuzzParseURL).
func TestLocationErrorsHidePasswords(t *testing.T) {
	for _, loc := range []string{"ssh://u:secret@/r", "ssh:/u:secret@h/r", "u:secret@vault/fleet", "0#:secret@", "ssh://u:secret@h/a b"} {
		if _, err := ParseSSH(loc); err == nil || strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseSSH(%q): %v", loc, err)
		}
	}
	for _, loc := range []string{"A:secret@", "floe:secret@vault:8443/fleet", "https://u:secret@vault/fleet", "http://u:secret@vault/fleet"} {
		if _, _, _, err := ParseURL(loc); err == nil || strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseURL(%q): %v", loc, err)
		}
	}
	if got := redactLocation("ssh://h/srv/floe"); got != "ssh://h/srv/floe" {
		t.Errorf("a location without '@' is shown as %q", got)
	}
}
