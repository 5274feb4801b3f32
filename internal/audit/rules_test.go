package audit

import (
	"errors"
	"strings"
	"testing"
)

func TestParseRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		text string
		sels map[string]Attrs // path -> attrs
		sets map[string]Attrs // extra checks of rule sets
		ign  []string         // ignore patterns in order
	}{
		{"empty", "", map[string]Attrs{}, nil, nil},
		{"comments and blanks", "# a comment\n\n   # indented\n\t\n", map[string]Attrs{}, nil, nil},
		{"built-ins", "/etc R\n/var/log >\n/home L\n/tmp E\n", map[string]Attrs{
			"/etc": RuleR, "/var/log": RuleGrowing, "/home": RuleL, "/tmp": 0}, nil, nil},
		{"letters", "/srv p+u+g+s+m+c+i+n+S+H+x", map[string]Attrs{
			"/srv": AttrPerm | AttrUser | AttrGroup | AttrSize | AttrMtime | AttrCtime | AttrInode | AttrLinks |
				AttrGrowing | AttrHash | AttrXattrs}, nil, nil},
		{"definition and minus", "Conf = p+u+g+s+H\nBoot = R-i-c\n/etc Conf\n/boot Boot+x\n", map[string]Attrs{
			"/etc":  AttrPerm | AttrUser | AttrGroup | AttrSize | AttrHash,
			"/boot": RuleR&^(AttrInode|AttrCtime) | AttrXattrs,
		}, map[string]Attrs{"Conf": AttrPerm | AttrUser | AttrGroup | AttrSize | AttrHash}, nil},
		{"spaces in expressions", "  Mine =  p + u \n/data   Mine + g  \n", map[string]Attrs{
			"/data": AttrPerm | AttrUser | AttrGroup}, nil, nil},
		{"redefine a built-in", "R = R+x\n/etc R\n", map[string]Attrs{"/etc": RuleR | AttrXattrs}, nil, nil},
		{"paths are cleaned", "/etc/ R\n/usr//lib/./x L\n", map[string]Attrs{"/etc": RuleR, "/usr/lib/x": RuleL}, nil, nil},
		{"ignores", "!/var/spool\n!/home/[a-z0-9]+/mail\n", map[string]Attrs{}, nil,
			[]string{"/var/spool", "/home/[a-z0-9]+/mail"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRules(strings.NewReader(tc.text), "test.rules")
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]Attrs{}
			for _, s := range r.Selections {
				got[s.Path] = s.Attrs
			}
			if len(got) != len(tc.sels) {
				t.Errorf("selections %v, want %v", got, tc.sels)
			}
			for p, want := range tc.sels {
				if a, ok := got[p]; !ok || a != want {
					t.Errorf("%s: %s (selected %v), want %s", p, a, ok, want)
				}
			}
			for name, want := range tc.sets {
				if r.Sets[name] != want {
					t.Errorf("set %s = %s, want %s", name, r.Sets[name], want)
				}
			}
			if len(r.Ignores) != len(tc.ign) {
				t.Fatalf("ignores %v, want %v", r.Ignores, tc.ign)
			}
			for i, ig := range r.Ignores {
				if ig.Pattern != tc.ign[i] {
					t.Errorf("ignore %d: %q, want %q", i, ig.Pattern, tc.ign[i])
				}
			}
		})
	}
}

func TestParseRulesErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		text string
		want []string // substrings, in order, one per bad line
	}{
		{"unknown rule set", "# x\n/etc Q\n", []string{`test.rules:2: unknown attribute or rule set "Q"`}},
		{"unknown letter", "/etc p+u+z", []string{`:1: unknown attribute or rule set "z" in "p+u+z"`}},
		{"letters run together", "/etc pug", []string{`:1: unknown attribute or rule set "pug"`}},
		{"empty term", "/etc p++u", []string{`:1: bad rule "p++u": empty term`}},
		{"trailing operator", "X = p+", []string{`:1: bad rule "p+": empty term`}},
		{"no rule", "/etc\n", []string{`:1: selection /etc has no rule set`}},
		{"duplicate selection", "/etc R\n/etc/ L\n", []string{`:2: /etc is already selected on line 1`}},
		{"duplicate definition", "A = p\nA = u\n", []string{`:2: rule set A is already defined on line 1`}},
		{"use before definition", "/etc A\nA = p\n", []string{`:1: unknown attribute or rule set "A"`}},
		{"bad name", "1abc = p\n", []string{`:1: bad rule set name "1abc"`}},
		{"letter as name", "p = u\n", []string{`:1: rule set name "p" is an attribute letter`}},
		{"empty definition", "A =\n", []string{`:1: rule set A is empty (use E`}},
		{"bad regexp", "!/home/(x\n", []string{`:1: bad regular expression "/home/(x": missing closing )`}},
		{"empty ignore", "!\n", []string{`:1: empty ignore pattern`}},
		{"garbage", "etc R\n", []string{`:1: cannot parse "etc R"`}},
		{"several bad lines", "/a R\nbad\n/b R\n/c X\n!(\n", []string{":2: cannot parse", ":4: unknown attribute", ":5: bad regular"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRules(strings.NewReader(tc.text), "test.rules")
			if err == nil {
				t.Fatal("no error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.want) {
				t.Fatalf("errors %q, want %d", lines, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(lines[i], w) {
					t.Errorf("error %q does not contain %q", lines[i], w)
				}
			}
			var le *LineError
			if !errors.As(err, &le) || le.File != "test.rules" || le.Line == 0 {
				t.Errorf("error is not a LineError: %#v", err)
			}
		})
	}
}

func TestSelectAndIgnore(t *testing.T) {
	r, err := ParseRules(strings.NewReader(`
/etc R
/etc/ssh L
/var/log >
!/var/spool
!/home/[a-z0-9]+/mail
!/etc/mtab$
`), "t")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		sel  string // "" means not selected
	}{
		{"/etc", "/etc"},
		{"/etc/passwd", "/etc"},
		{"/etc/ssh", "/etc/ssh"},
		{"/etc/ssh/sshd_config", "/etc/ssh"},
		{"/etc/sshd", "/etc"}, // whole components
		{"/etcetera", ""},
		{"/var/log/syslog", "/var/log"},
		{"/var", ""},
		{"/", ""},
	} {
		s, ok := r.Select(tc.path)
		if ok != (tc.sel != "") || s.Path != tc.sel {
			t.Errorf("Select(%s) = %q %v, want %q", tc.path, s.Path, ok, tc.sel)
		}
	}
	for path, want := range map[string]bool{
		"/var/spool": true, "/var/spool/cron/x": true, "/var/spool2": true, "/x/var/spool": false,
		"/home/bob/mail": true, "/home/bob/mail/inbox": true, "/home/Bob/mail": false, "/home/bob/docs": false,
		"/etc/mtab": true, "/etc/mtab.bak": false, "/etc/passwd": false,
	} {
		if got := r.Ignored(path); got != want {
			t.Errorf("Ignored(%s) = %v, want %v", path, got, want)
		}
	}
}

func TestDefaultRules(t *testing.T) {
	r := DefaultRules()
	for path, want := range map[string]Attrs{
		"/etc/passwd":                RuleR,
		"/usr/bin/ls":                RuleR,
		"/boot/vmlinuz":              RuleR,
		"/boot/efi/EFI/x":            RuleR &^ AttrInode,
		"/root/.ssh/authorized_keys": RuleR,
		"/root/.bash_history":        RuleGrowing,
		"/var/log/syslog":            RuleGrowing,
		"/var/spool/cron/crontabs/x": RuleR,
		"/etc/resolv.conf":           AttrPerm | AttrUser | AttrGroup,
	} {
		s, ok := r.Select(path)
		if !ok || s.Attrs != want {
			t.Errorf("%s: %s %v, want %s", path, s.Attrs, ok, want)
		}
	}
	for _, p := range []string{"/home/bob", "/var/lib/dpkg/status", "/tmp/x", "/srv/www"} {
		if s, ok := r.Select(p); ok {
			t.Errorf("%s selected by %s", p, s.Path)
		}
	}
	for path, want := range map[string]bool{
		"/etc/mtab": true, "/etc/mtab.d": false, "/root/.cache/x": true, "/var/log/journal/abc/system.journal": true,
		"/var/log/syslog.1": true, "/var/log/syslog.2.gz": true, "/var/log/messages-20240501": true,
		"/var/log/syslog": false, "/var/log/auth.log": false, "/etc/passwd": false, "/root/.ssh": false,
	} {
		if got := r.Ignored(path); got != want {
			t.Errorf("Ignored(%s) = %v, want %v", path, got, want)
		}
	}
}

func TestAttrsString(t *testing.T) {
	for a, want := range map[Attrs]string{
		RuleR: "p+i+n+u+g+s+m+c+H", RuleL: "p+i+n+u+g", RuleGrowing: "p+i+n+u+g+S", 0: "E",
	} {
		if got := a.String(); got != want {
			t.Errorf("%#x: %q, want %q", uint16(a), got, want)
		}
	}
}
