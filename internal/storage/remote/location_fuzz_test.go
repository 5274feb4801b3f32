package remote

import (
	"strings"
	"testing"
)

// FuzzParseSSH: an ssh:// location that parses gives an ssh command line
// that no remote shell can be made to read as more than the one quoted
// path, whose destination is no ssh option, and that prints back as a
// location naming the same target. The location is typed by a person or
// read from an agent's config, and the path goes to a remote shell.
func FuzzParseSSH(f *testing.F) {
	for _, s := range []string{"ssh://vault/srv/floe/web1", "ssh://root@10.0.0.1:2222/r", "ssh://[::1]:22/srv/r",
		"ssh://h/a'b", "ssh://-oProxyCommand=x/r", "ssh://u:secret@h/r", "ssh://h/%27%3Bx", "ssh://h/r?x=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, loc string) {
		tg, err := ParseSSH(loc)
		if err != nil {
			if shownSecret(loc, err) {
				t.Fatalf("ParseSSH(%q): the error shows the password: %v", loc, err)
			}
			return
		}
		argv := tg.Command(nil)
		quoted := argv[len(argv)-1]
		inner := strings.TrimSuffix(strings.TrimPrefix(quoted, "'"), "'")
		if len(quoted) < 3 || quoted[0] != '\'' || quoted[len(quoted)-1] != '\'' || strings.ContainsAny(inner, "'\x00\n\r") || !strings.HasPrefix(inner, "/") {
			t.Fatalf("ParseSSH(%q): path argument %q", loc, quoted)
		}
		dest := argv[len(argv)-6]
		if argv[len(argv)-7] != "--" || strings.HasPrefix(dest, "-") || dest == "" || strings.ContainsAny(dest, " '\"$`;&|\n") {
			t.Fatalf("ParseSSH(%q): destination %q in %q", loc, dest, argv)
		}
		for _, s := range []string{tg.User, tg.Host, tg.Path} {
			for _, c := range s {
				if c < 0x20 || c == 0x7f {
					t.Fatalf("ParseSSH(%q): control character in %+v", loc, tg)
				}
			}
		}
		again, err := ParseSSH(tg.String())
		if err != nil || again != tg {
			t.Fatalf("ParseSSH(%q) = %+v prints as %q, which parses as %+v, %v", loc, tg, tg.String(), again, err)
		}
	})
}

// FuzzParseURL: an https:// location that parses names one repository
// and a host:port, and no error repeats a password or token that was put
// in the URL.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"https://vault:8443/fleet", "https://vault/fleet/", "https://u:secret@vault/fleet",
		"https://vault/a/b", "https://vault/fleet?x=1", "http://vault/fleet", "https://[::1]:1/r", "https://vault/%2e%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, loc string) {
		base, hostport, repo, err := ParseURL(loc)
		if err != nil {
			if shownSecret(loc, err) {
				t.Fatalf("ParseURL(%q): the error shows the password: %v", loc, err)
			}
			return
		}
		if repo == "" || strings.ContainsAny(repo, "/?#") || repo == "." || !strings.HasPrefix(base, "https://") || hostport == "" {
			t.Fatalf("ParseURL(%q) = %q, %q, %q", loc, base, hostport, repo)
		}
		if strings.Contains(base, "@") {
			t.Fatalf("ParseURL(%q): base %q holds user information", loc, base)
		}
	})
}

// shownSecret reports whether err shows the password "secret" of loc.
// The word may be in the location elsewhere too (secret://:secret@ is
// shown as secret://***@): the error may have it no more often than the
// location without its password does.
func shownSecret(loc string, err error) bool {
	return strings.Contains(loc, ":secret@") &&
		strings.Count(err.Error(), "secret") > strings.Count(strings.Replace(loc, ":secret@", ":@", 1), "secret")
}
