package policy

import "fmt"

// MaxFlowDepth is how deeply flow collections ([...] and {...}) may nest
// in a policy or registry file. The YAML parser takes time quadratic in
// that depth (45 s for 100,000 brackets, a 200 KB document), so a
// document anyone may send for a plan could hold a controller for an
// hour; no policy needs more than a few levels.
const MaxFlowDepth = 64

// DepthError says where a document nests flow collections deeper than
// MaxFlowDepth.
type DepthError struct{ At Pos }

func (e *DepthError) Error() string {
	return fmt.Sprintf("%d:%d: flow collections ([...] or {...}) nested deeper than %d", e.At.Line, e.At.Column, MaxFlowDepth)
}

// checkFlowDepth scans src as YAML's flow indicators nest, skipping quoted
// scalars and comments, and returns a *DepthError at the first bracket
// deeper than MaxFlowDepth. It may count brackets of a block scalar or
// inside a plain scalar as flow indicators: that only refuses a document
// with more than MaxFlowDepth of them open, which no policy has.
func checkFlowDepth(src []byte) error {
	closed, err := scanFlowDepth(src, true)
	if err == nil && !closed {
		// A quote that never closed: the scan may have taken a plain
		// scalar's apostrophe for one and skipped the rest. Count every
		// bracket instead.
		_, err = scanFlowDepth(src, false)
	}
	return err
}

// scanFlowDepth is checkFlowDepth's scan; with quotes unset it counts
// brackets inside quotes too. closed says whether every quote it opened
// was closed.
func scanFlowDepth(src []byte, quotes bool) (closed bool, err error) {
	line, col := 1, 0
	depth := 0
	var quote byte     // ' or " while inside a quoted scalar
	prev := byte('\n') // the start of the file is a line's
	for i := 0; i < len(src); i++ {
		c := src[i]
		col++
		if c == '\n' {
			line, col = line+1, 0
		}
		switch {
		case quote == '"':
			if c == '\\' && i+1 < len(src) && src[i+1] != '\n' {
				i++
				col++
			} else if c == '"' {
				quote = 0
			}
		case quote == '\'':
			if c == '\'' {
				if i+1 < len(src) && src[i+1] == '\'' { // '' is an escaped quote
					i++
					col++
				} else {
					quote = 0
				}
			}
		case c == '#' && (prev == ' ' || prev == '\t' || prev == '\n'):
			for i+1 < len(src) && src[i+1] != '\n' {
				i++
			}
		case quotes && (c == '"' || c == '\'') && scalarStart(prev):
			quote = c
		case c == '[' || c == '{':
			if depth++; depth > MaxFlowDepth {
				return true, &DepthError{At: Pos{Line: line, Column: col}}
			}
		case c == ']' || c == '}':
			if depth > 0 {
				depth--
			}
		}
		prev = c
	}
	return quote == 0, nil
}

// scalarStart says whether a quote after prev can open a quoted scalar
// (in "it's" the apostrophe is part of a plain scalar).
func scalarStart(prev byte) bool {
	switch prev {
	case ' ', '\t', '\n', '\r', '[', '{', ',':
		return true
	}
	return false
}
