package connect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/floe-backup/floe/internal/repo"
)

// errNoPrompt is what asking for a password without a Prompt returns.
var errNoPrompt = errors.New("no password or key file given")

// ReadCredential finds what opens the repository (see Target).
func (t Target) ReadCredential(ctx context.Context) (repo.Credential, error) {
	switch {
	case t.Credential != nil:
		return *t.Credential, nil
	case t.KeyFile != "":
		kf, err := repo.ReadKeyFile(t.KeyFile)
		if err != nil {
			return repo.Credential{}, err
		}
		return repo.Credential{KeyFile: kf}, nil
	case t.PasswordFile != "":
		pw, err := ReadPasswordFile(t.PasswordFile)
		return repo.Credential{Password: pw}, err
	case t.PasswordCommand != "":
		pw, err := runPasswordCommand(ctx, t.PasswordCommand)
		return repo.Credential{Password: pw}, err
	}
	if t.Default {
		if path, err := DefaultKeyFile(); err == nil {
			if _, err := os.Stat(path); err == nil {
				kf, err := repo.ReadKeyFile(path)
				if err != nil {
					return repo.Credential{}, err
				}
				return repo.Credential{KeyFile: kf}, nil
			}
		}
	}
	pw, err := t.prompt("password for " + t.Location + ": ")
	return repo.Credential{Password: pw}, err
}

func (t Target) prompt(label string) ([]byte, error) {
	if t.Prompt == nil {
		return nil, errNoPrompt
	}
	return t.Prompt(label)
}

// ReadPasswordFile returns the first line of a password file.
func ReadPasswordFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read password file: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return nil, fmt.Errorf("password file %s is empty", path)
	}
	return line, nil
}

func runPasswordCommand(ctx context.Context, command string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		// the command itself is not echoed: it may contain a secret
		return nil, fmt.Errorf("password command failed: %w", err)
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	if len(line) == 0 {
		return nil, errors.New("password command printed nothing")
	}
	return line, nil
}

// NewPassword returns a password for a new key: the first line of file,
// or one asked for twice with prompt.
func NewPassword(file string, prompt func(label string) ([]byte, error)) ([]byte, error) {
	if file != "" {
		return ReadPasswordFile(file)
	}
	if prompt == nil {
		return nil, errNoPrompt
	}
	pw, err := prompt("new password: ")
	if err != nil {
		return nil, err
	}
	again, err := prompt("repeat password: ")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(pw, again) {
		return nil, errors.New("the passwords do not match")
	}
	return pw, nil
}
