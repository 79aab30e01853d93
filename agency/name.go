package agency

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// ErrBadName is returned by Name for a name that is empty or holds
// control characters.
var ErrBadName = errors.New("bad agency name")

// Name returns an agency's name in the one form the registry keeps: NFC
// (so that a name typed or exported in NFD, as macOS writes it, is the
// same name), without invisible format characters (a byte order mark, a
// zero-width space), and with each run of white space one space, none at
// either end. A name that is empty then, or holds a control character,
// is refused.
func Name(s string) (string, error) {
	s = strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Cf, r) {
			return -1
		}
		return r
	}, norm.NFC.String(s))
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "", fmt.Errorf("%w: it is empty", ErrBadName)
	}
	if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
		return "", fmt.Errorf("%w: it holds the control character %U", ErrBadName, []rune(s[i:])[0])
	}
	return s, nil
}
