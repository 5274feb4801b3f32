package server

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/floe-backup/floe/internal/storage"
)

// RouteKind says what a request path names.
type RouteKind int

// The kinds of paths of docs/PROTOCOL.md.
const (
	// RouteRepo is "/REPO/": the repository itself (PUT creates it).
	RouteRepo RouteKind = iota + 1
	// RouteList is "/REPO/TYPE/": the objects of one type.
	RouteList
	// RouteObject is "/REPO/config" or "/REPO/TYPE/NAME": one object.
	RouteObject
)

// Route is a parsed request path. Handle is valid for RouteObject (and its
// Type for RouteList).
type Route struct {
	Repo   string
	Kind   RouteKind
	Handle storage.Handle
}

// ErrBadPath is returned (wrapped) for a path that names nothing.
var ErrBadPath = errors.New("bad request path")

// MaxRepoNameLen bounds a repository name.
const MaxRepoNameLen = 64

// ValidRepoName reports whether name can name a repository: 1 to 64
// letters, digits, '-' and '_', starting with a letter or digit. Nothing
// else (no dots, no slashes) so that a name is always one plain directory
// under --root and never the server's own state directory.
func ValidRepoName(name string) error {
	if name == "" || len(name) > MaxRepoNameLen {
		return fmt.Errorf("%w: repository name must be 1 to %d characters", ErrBadPath, MaxRepoNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '-' || c == '_')
		if !ok {
			return fmt.Errorf("%w: repository name %s: only letters, digits, '-' and '_' (not first) are allowed",
				ErrBadPath, strconv.Quote(name))
		}
	}
	for _, r := range ReservedRepoNames {
		if name == r {
			return fmt.Errorf("%w: repository name %q is reserved (the server's dashboard is /%s)", ErrBadPath, name, r)
		}
	}
	return nil
}

// ParsePath parses a request path. It is strict: exactly the forms of
// docs/PROTOCOL.md, no empty segments, no dot segments, no escapes (the
// caller refuses paths that were percent-encoded), object names checked
// with storage.Handle.Validate. Nothing reaches storage before it.
func ParsePath(p string) (Route, error) {
	if !strings.HasPrefix(p, "/") {
		return Route{}, fmt.Errorf("%w: %s does not start with /", ErrBadPath, strconv.Quote(p))
	}
	parts := strings.Split(p[1:], "/")
	if err := ValidRepoName(parts[0]); err != nil {
		return Route{}, err
	}
	r := Route{Repo: parts[0]}
	switch len(parts) {
	case 2:
		switch parts[1] {
		case "":
			r.Kind = RouteRepo
			return r, nil
		case string(storage.Config):
			r.Kind = RouteObject
			r.Handle = storage.Handle{Type: storage.Config}
			return r, nil
		}
	case 3:
		t := storage.FileType(parts[1])
		if err := storage.ValidateListType(t); err != nil {
			return Route{}, fmt.Errorf("%w: %v", ErrBadPath, err)
		}
		r.Handle.Type = t
		if parts[2] == "" {
			r.Kind = RouteList
			return r, nil
		}
		r.Handle.Name = parts[2]
		if err := r.Handle.Validate(); err != nil {
			return Route{}, fmt.Errorf("%w: %v", ErrBadPath, err)
		}
		r.Kind = RouteObject
		return r, nil
	}
	return Route{}, fmt.Errorf("%w: %s is not /REPO/, /REPO/config, /REPO/TYPE/ or /REPO/TYPE/NAME",
		ErrBadPath, strconv.Quote(truncate(p, 200)))
}

// String returns the path of r (the inverse of ParsePath).
func (r Route) String() string {
	switch r.Kind {
	case RouteRepo:
		return "/" + r.Repo + "/"
	case RouteList:
		return "/" + r.Repo + "/" + string(r.Handle.Type) + "/"
	}
	if r.Handle.Type == storage.Config {
		return "/" + r.Repo + "/config"
	}
	return "/" + r.Repo + "/" + string(r.Handle.Type) + "/" + r.Handle.Name
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
