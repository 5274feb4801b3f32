package agent

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"
)

//go:embed floe-agent.service
var unitTemplate string

// UnitName is the systemd unit `floe agent install` writes.
const UnitName = "floe-agent.service"

// Unit returns the systemd unit that runs binary as the agent of config.
func Unit(binary, config string) (string, error) {
	for _, p := range []string{binary, config} {
		if !filepath.IsAbs(p) {
			return "", fmt.Errorf("%s: the unit needs absolute paths", p)
		}
		// systemd splits ExecStart on spaces and expands % and $
		if strings.ContainsAny(p, " \t\n\"'\\%$;") {
			return "", fmt.Errorf("%q: a path for a systemd unit must not hold spaces, quotes, %%, $ or ;", p)
		}
	}
	var b strings.Builder
	t := template.Must(template.New("unit").Parse(unitTemplate))
	if err := t.Execute(&b, struct{ Binary, Config string }{binary, config}); err != nil {
		return "", err
	}
	return b.String(), nil
}

// Install writes the unit into dir and returns its path.
func Install(dir, binary, config string) (string, error) {
	unit, err := Unit(binary, config)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("unit directory %s: %w", dir, errors.Join(err, errNotDir(fi)))
	}
	path := filepath.Join(dir, UnitName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(unit), 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

func errNotDir(fi os.FileInfo) error {
	if fi != nil && !fi.IsDir() {
		return errors.New("not a directory")
	}
	return nil
}
