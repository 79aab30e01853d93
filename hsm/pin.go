package hsm

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// maxPINFile is the largest PIN file ReadPIN reads. A PIN file holds one
// PIN (PKCS#11 tokens take a few dozen bytes at most); anything larger is
// the wrong file.
const maxPINFile = 4096

// ReadPIN returns the user PIN from file (surrounding white space trimmed)
// or, if file is empty, from the environment variable envVar. There is
// deliberately no way to pass a PIN as a command-line flag: flags show up
// in ps and shell history.
//
// A file must be a regular file of at most 4 KiB that is not accessible
// to "other" (mode & 0o007 == 0), as ssh insists for private keys; a
// missing or empty source is an error wrapping ErrNoPIN. ReadPIN does not
// fall back from a named file to the environment.
func ReadPIN(file, envVar string) (string, error) {
	if file != "" {
		return readPINFile(file)
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

func readPINFile(file string) (string, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer. The checks
	// are made on the open file, so that what is read is what was
	// checked.
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("hsm: PIN file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("hsm: PIN file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("hsm: PIN file %s: not a regular file (%s)", file, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return "", fmt.Errorf("hsm: PIN file %s: mode %04o is accessible to others; chmod o-rwx", file, perm)
	}
	if fi.Size() > maxPINFile {
		return "", fmt.Errorf("hsm: PIN file %s: too large (%d bytes; a PIN file holds one PIN, at most %d bytes)", file, fi.Size(), maxPINFile)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPINFile+1))
	if err != nil {
		return "", fmt.Errorf("hsm: PIN file: %w", err)
	}
	if len(b) > maxPINFile {
		return "", fmt.Errorf("hsm: PIN file %s: too large (a PIN file holds one PIN, at most %d bytes)", file, maxPINFile)
	}
	pin := strings.TrimSpace(string(b))
	if pin == "" {
		return "", fmt.Errorf("hsm: PIN file %s is empty: %w", file, ErrNoPIN)
	}
	return pin, nil
}
