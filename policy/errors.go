package policy

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Pos is a position in a policy file: 1-based line and column.
type Pos struct {
	Line, Column int
}

func (p Pos) compare(q Pos) int {
	return cmp.Or(cmp.Compare(p.Line, q.Line), cmp.Compare(p.Column, q.Column))
}

// Error is one problem found in a policy, located in its source.
type Error struct {
	File   string
	Line   int
	Column int
	Msg    string
	Hint   string // how to fix it, or what was probably meant; may be empty
}

// Error formats the error as "file:line:col: msg (hint)".
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:%d:", e.Line, e.Column)
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	b.WriteString(e.Msg)
	if e.Hint != "" {
		b.WriteString(" (")
		b.WriteString(e.Hint)
		b.WriteByte(')')
	}
	return b.String()
}

// ErrorList is every problem found in one pass over a policy. The functions
// of this package return it sorted by position.
type ErrorList []*Error

// Error joins the errors, one per line.
func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.As find the individual *Error values.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// Sort orders the list by file, line and column, keeping the order of
// errors at the same position.
func (l ErrorList) Sort() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		return cmp.Or(strings.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
}

// Err returns the sorted list as an error, or nil if it is empty.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	l.Sort()
	return l
}

// AsList returns the errors of err as an ErrorList: the list itself, a
// single *Error, or nil when err carries no positioned errors.
func AsList(err error) ErrorList {
	var l ErrorList
	if errors.As(err, &l) {
		return l
	}
	var e *Error
	if errors.As(err, &e) {
		return ErrorList{e}
	}
	return nil
}

// errs collects errors for one file.
type errs struct {
	file   string
	errors ErrorList
}

func (e *errs) add(pos Pos, hint, format string, args ...any) {
	e.errors = append(e.errors, &Error{File: e.file, Line: pos.Line, Column: pos.Column, Msg: fmt.Sprintf(format, args...), Hint: hint})
}

// maxHints is how many errors of a file get a "did you mean" hint: each
// is an edit distance to every candidate (~1 ms against the national
// registry's 20,000 gateways), and a document of thousands of unknown
// names would otherwise cost minutes.
const maxHints = 50

// hint is didYouMean while the file has fewer than maxHints errors, then
// "".
func (e *errs) hint(name string, candidates ...[]string) string {
	if len(e.errors) >= maxHints {
		return ""
	}
	return didYouMean(name, candidates...)
}

// didYouMean returns a hint naming the candidate closest to name by edit
// distance, or "" when none is close (at most half of name, and at least
// two edits, away). The first of equally close candidates wins, so sorted
// input gives a deterministic hint.
func didYouMean(name string, candidates ...[]string) string {
	best, limit := "", max(2, len(name)/2)
	for _, cs := range candidates {
		for _, c := range cs {
			if c == name {
				continue
			}
			if d, ok := editDistance(name, c, limit); ok {
				best, limit = c, d-1 // only a strictly closer one replaces it
			}
		}
	}
	if best == "" {
		return ""
	}
	return "did you mean " + best + "?"
}

// editDistance returns the Levenshtein distance between a and b in bytes,
// and false as soon as it is known to exceed limit.
func editDistance(a, b string, limit int) (int, bool) {
	if d := len(a) - len(b); d > limit || -d > limit {
		return 0, false
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			rowMin = min(rowMin, cur[j])
		}
		if rowMin > limit {
			return 0, false
		}
		prev, cur = cur, prev
	}
	if prev[len(b)] > limit {
		return 0, false
	}
	return prev[len(b)], true
}
