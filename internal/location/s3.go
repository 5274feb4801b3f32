package location

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/s3"
)

// s3Prefix starts an S3 location: s3:https://HOST[:PORT]/BUCKET[/PREFIX]
// (s3:http:// for a server without TLS, such as a test server on
// loopback). s3:HOST/BUCKET[/PREFIX] means https.
const s3Prefix = "s3:"

// The environment of the S3 backend; credentials come from the AWS
// variables and files (see s3.DefaultCredentials).
const (
	envPathStyle = "FLOE_S3_PATH_STYLE" // 1: path style, 0: virtual-host style, unset/auto: automatic
)

// ParseS3 turns an S3 location (with or without "s3:") into the backend's
// configuration, reading AWS_REGION (or AWS_DEFAULT_REGION) and
// FLOE_S3_PATH_STYLE. Its errors never repeat the location, which might
// hold a secret the user pasted by mistake.
func ParseS3(loc string) (s3.Config, error) {
	rest := strings.TrimPrefix(loc, s3Prefix)
	if strings.HasPrefix(rest, "//") {
		return s3.Config{}, fmt.Errorf("s3 location: name the server too: s3:https://HOST[:PORT]/BUCKET[/PREFIX] " +
			"(for AWS: s3:https://s3.REGION.amazonaws.com/BUCKET)")
	}
	if !strings.Contains(rest, "://") {
		rest = "https://" + rest
	}
	u, err := url.Parse(rest)
	if err != nil {
		return s3.Config{}, fmt.Errorf("s3 location: not a URL of the form s3:https://HOST[:PORT]/BUCKET[/PREFIX]")
	}
	if u.User != nil {
		return s3.Config{}, fmt.Errorf("s3 location: credentials do not belong in the location; " +
			"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (~/.aws/credentials)")
	}
	var cfg s3.Config
	switch u.Scheme {
	case "https":
		cfg.Secure = true
	case "http":
	default:
		return s3.Config{}, fmt.Errorf("s3 location: scheme %q is not http or https", u.Scheme)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return s3.Config{}, fmt.Errorf("s3 location: no query or fragment allowed (form s3:https://HOST[:PORT]/BUCKET[/PREFIX])")
	}
	if u.Host == "" || u.Hostname() == "" {
		return s3.Config{}, fmt.Errorf("s3 location: no host (form s3:https://HOST[:PORT]/BUCKET[/PREFIX])")
	}
	if p := u.Port(); p != "" {
		if _, err := net.LookupPort("tcp", p); err != nil {
			return s3.Config{}, fmt.Errorf("s3 location: bad port %q", p)
		}
	}
	cfg.Endpoint = u.Host
	p := strings.Trim(u.Path, "/")
	bucket, prefix, _ := strings.Cut(p, "/")
	if bucket == "" {
		return s3.Config{}, fmt.Errorf("s3 location: no bucket (form s3:https://HOST[:PORT]/BUCKET[/PREFIX])")
	}
	if err := checkBucket(bucket); err != nil {
		return s3.Config{}, err
	}
	if err := checkPrefix(prefix); err != nil {
		return s3.Config{}, err
	}
	cfg.Bucket, cfg.Prefix = bucket, prefix
	cfg.Region = os.Getenv("AWS_REGION")
	if cfg.Region == "" {
		cfg.Region = os.Getenv("AWS_DEFAULT_REGION")
	}
	switch v := strings.ToLower(os.Getenv(envPathStyle)); v {
	case "", "auto":
		cfg.Lookup = s3.LookupAuto
	case "1", "true", "yes", "path":
		cfg.Lookup = s3.LookupPath
	case "0", "false", "no", "virtual", "virtual-host":
		cfg.Lookup = s3.LookupVirtualHost
	default:
		return s3.Config{}, fmt.Errorf("%s=%q: want 1 (path style), 0 (virtual-host style) or auto", envPathStyle, v)
	}
	return cfg, nil
}

// shown quotes a part of a location for an error message, unless it has
// an '@': then it may hold user:password@ put in the wrong place, and
// secrets never appear in messages.
func shown(part string) string {
	if strings.Contains(part, "@") {
		return "(not shown: it has an '@', as credentials do; give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
	}
	return strconv.Quote(part)
}

// checkPrefix allows in a key prefix the characters that need no escaping
// in a URL path, and no empty, . or .. element.
func checkPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	for _, part := range strings.Split(prefix, "/") {
		if part == "" || part == "." || part == ".." {
			return fmt.Errorf("s3 location: the prefix %s has an empty, . or .. element", shown(prefix))
		}
	}
	for i := 0; i < len(prefix); i++ {
		c := prefix[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0) {
			return fmt.Errorf("s3 location: the prefix %s has a character other than letters, digits and -._~!$&'()*+,;=:@/", shown(prefix))
		}
	}
	return nil
}

// checkBucket applies S3's bucket naming rules (3-63 of a-z 0-9 . -,
// starting and ending with a letter or digit).
func checkBucket(b string) error {
	ok := len(b) >= 3 && len(b) <= 63
	for i := 0; ok && i < len(b); i++ {
		c := b[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (c == '.' || c == '-') && i > 0 && i < len(b)-1
	}
	if !ok {
		return fmt.Errorf("s3 location: %s is not a valid bucket name (3-63 characters of a-z, 0-9, '.', '-')", shown(b))
	}
	return nil
}

func openS3(loc string) (storage.Backend, error) {
	cfg, err := ParseS3(loc)
	if err != nil {
		return nil, err
	}
	b, err := s3.Open(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func createS3(loc string) (storage.Backend, error) {
	cfg, err := ParseS3(loc)
	if err != nil {
		return nil, err
	}
	b, err := s3.Create(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// S3Prefixes is, for floe serve --storage, the opener of the repositories
// that are prefixes of the S3 location loc: repository NAME (already
// checked by the server) is the repository at PREFIX/NAME. It checks that
// the bucket is there, so that a wrong location fails at the start and
// not at a host's first backup. where is the location without
// credentials, for messages.
func S3Prefixes(ctx context.Context, loc string) (open func(ctx context.Context, name string, create bool) (storage.Backend, error), where string, err error) {
	base, err := ParseS3(loc)
	if err != nil {
		return nil, "", err
	}
	if err := s3.CheckBucket(ctx, base); err != nil {
		return nil, "", err
	}
	open = func(ctx context.Context, name string, create bool) (storage.Backend, error) {
		cfg := base
		cfg.Prefix = strings.TrimPrefix(base.Prefix+"/"+name, "/")
		if create {
			return s3.Create(ctx, cfg)
		}
		return s3.Open(ctx, cfg)
	}
	return open, base.URL(), nil
}
