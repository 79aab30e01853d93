package hsm

import (
	"fmt"
	"os"
	"strings"
)

// ReadPIN returns the user PIN from file (surrounding white space trimmed)
// or, if file is empty, from the environment variable envVar. There is
// deliberately no way to pass a PIN as a command-line flag: flags show up
// in ps and shell history.
//
// A file must not be accessible to "other" (mode & 0o007 == 0), as ssh
// insists for private keys; a missing or empty source is an error wrapping
// ErrNoPIN. ReadPIN does not fall back from a named file to the
// environment.
func ReadPIN(file, envVar string) (string, error) {
	if file != "" {
		fi, err := os.Stat(file)
		if err != nil {
			return "", fmt.Errorf("hsm: PIN file: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o007 != 0 {
			return "", fmt.Errorf("hsm: PIN file %s: mode %04o is accessible to others; chmod o-rwx", file, perm)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("hsm: PIN file: %w", err)
		}
		pin := strings.TrimSpace(string(b))
		if pin == "" {
			return "", fmt.Errorf("hsm: PIN file %s is empty: %w", file, ErrNoPIN)
		}
		return pin, nil
	}
	if envVar == "" {
		return "", fmt.Errorf("hsm: neither a PIN file nor a PIN environment variable given: %w", ErrNoPIN)
	}
	pin := strings.TrimSpace(os.Getenv(envVar))
	if pin == "" {
		return "", fmt.Errorf("hsm: environment variable %s is unset or empty: %w", envVar, ErrNoPIN)
	}
	return pin, nil
}
