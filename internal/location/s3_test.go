package location

import (
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/storage/s3"
)

func TestParseS3(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("FLOE_S3_PATH_STYLE", "")
	good := []struct {
		loc  string
		want s3.Config
	}{
		{"s3:https://s3.eu-west-1.amazonaws.com/my-bucket", s3.Config{Endpoint: "s3.eu-west-1.amazonaws.com", Secure: true, Bucket: "my-bucket"}},
		{"s3:https://minio.example.org:9000/bkt/hosts/web1/", s3.Config{Endpoint: "minio.example.org:9000", Secure: true, Bucket: "bkt", Prefix: "hosts/web1"}},
		{"s3:http://127.0.0.1:7070/floe.backups/p", s3.Config{Endpoint: "127.0.0.1:7070", Bucket: "floe.backups", Prefix: "p"}},
		{"s3:http://[::1]:7070/bkt", s3.Config{Endpoint: "[::1]:7070", Bucket: "bkt"}},
		{"s3:storage.example.com/bkt/x", s3.Config{Endpoint: "storage.example.com", Secure: true, Bucket: "bkt", Prefix: "x"}},
	}
	for _, g := range good {
		cfg, err := ParseS3(g.loc)
		if err != nil {
			t.Errorf("%s: %v", g.loc, err)
			continue
		}
		if cfg != g.want {
			t.Errorf("%s: %+v, want %+v", g.loc, cfg, g.want)
		}
		// the location a backend reports parses to the same place
		if again, err := ParseS3(cfg.URL()); err != nil || again != cfg {
			t.Errorf("%s: URL %s parses to %+v, %v", g.loc, cfg.URL(), again, err)
		}
	}
	bad := []struct{ loc, msg string }{
		{"s3:https://AKIAEXAMPLE:topsecretkey@host/bkt", "credentials do not belong"},
		{"s3:https://AKIAEXAMPLE@host/bkt", "credentials do not belong"},
		{"s3://bkt/prefix", "name the server"},
		{"s3:ftp://host/bkt", "not http or https"},
		{"s3:https://host", "no bucket"},
		{"s3:https://host/", "no bucket"},
		{"s3:https:///bkt", "no host"},
		{"s3:https://host/Bad_Bucket", "not a valid bucket name"},
		{"s3:https://host/ab", "not a valid bucket name"},
		{"s3:https://host/-bkt", "not a valid bucket name"},
		{"s3:https://host/bkt/a//b", "empty, . or .."},
		{"s3:https://host/bkt/../x", "empty, . or .."},
		{"s3:https://host/bkt?x=1", "no query"},
		{"s3:https://host:99999/bkt", "bad port"},
		{"s3:https://host:http/bkt", "not a URL"},
		{"s3:https://host/bkt/a%00b", "a character other than"},
		{"s3:https://host/bkt/a b", "a character other than"},
		{"s3:https://ho st/bkt", "not a URL"},
	}
	for _, b := range bad {
		_, err := ParseS3(b.loc)
		if err == nil {
			t.Errorf("%s: no error", b.loc)
			continue
		}
		if !strings.Contains(err.Error(), b.msg) {
			t.Errorf("%s: %v, want %q", b.loc, err, b.msg)
		}
		if strings.Contains(err.Error(), "topsecretkey") {
			t.Errorf("%s: the error repeats the secret: %v", b.loc, err)
		}
	}
}

func TestParseS3Env(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "eu-central-1")
	for v, want := range map[string]s3.Lookup{"": s3.LookupAuto, "auto": s3.LookupAuto, "1": s3.LookupPath,
		"true": s3.LookupPath, "0": s3.LookupVirtualHost, "false": s3.LookupVirtualHost} {
		t.Setenv("FLOE_S3_PATH_STYLE", v)
		cfg, err := ParseS3("s3:https://host/bkt")
		if err != nil || cfg.Lookup != want || cfg.Region != "eu-central-1" {
			t.Errorf("FLOE_S3_PATH_STYLE=%q: %+v, %v", v, cfg, err)
		}
	}
	t.Setenv("AWS_REGION", "us-west-2")
	if cfg, _ := ParseS3("s3:https://host/bkt"); cfg.Region != "us-west-2" {
		t.Errorf("AWS_REGION is not used: %+v", cfg)
	}
	t.Setenv("FLOE_S3_PATH_STYLE", "maybe")
	if _, err := ParseS3("s3:https://host/bkt"); err == nil || !strings.Contains(err.Error(), "FLOE_S3_PATH_STYLE") {
		t.Errorf("bad FLOE_S3_PATH_STYLE: %v", err)
	}
}

// FuzzParseS3: any location parses or fails cleanly, never repeats the
// password of a user:password@ part, and what it accepts round-trips.
func FuzzParseS3(f *testing.F) {
	for _, s := range []string{"s3:https://host/bkt/p", "s3:http://127.0.0.1:9000/bkt", "s3:u:pw@host/bkt", "s3:host/b.k-t/a/b/c", "s3:https://host/Bad:secret1@x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, loc string) {
		cfg, err := ParseS3(loc)
		if err != nil {
			if i := strings.Index(loc, "@"); i > 0 {
				if j := strings.LastIndex(loc[:i], ":"); j >= 0 {
					secret := loc[j+1 : i]
					if len(secret) >= 6 && !strings.ContainsAny(secret, "/?#") && strings.Contains(err.Error(), secret) {
						// repeated only if the message changes with the
						// secret: it may hold the same characters for
						// another part's sake (a bucket "a000000", the
						// quoted byte "\x80" before "00000")
						other := loc[:j+1] + strings.Map(func(r rune) rune {
							if r == 'q' {
								return 'r'
							}
							return 'q'
						}, secret) + loc[i:]
						if _, err2 := ParseS3(other); err2 == nil || !strings.Contains(err2.Error(), secret) {
							t.Fatalf("error repeats a possible secret %q: %v", secret, err)
						}
					}
				}
			}
			return
		}
		again, err := ParseS3(cfg.URL())
		if err != nil || again != cfg {
			t.Fatalf("%q: %+v; its URL %q parses to %+v, %v", loc, cfg, cfg.URL(), again, err)
		}
	})
}
