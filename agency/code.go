// Package agency parses the electronic identifier codes of agencies in the
// QCVN 102:2016 form V1V2V3.Z1Z2.Y1Y2.MX1X2 and answers questions about the
// hierarchy they encode: level, parent, and whether one code lies under
// another; and it keeps agencies' names in one form (Name).
package agency

import (
	"fmt"
	"strings"
)

// Level names what kind of agency a code denotes. The code's depth (how
// many groups are set, read right to left) decides it, and at depth 1 the
// letter does: G codes are central government bodies, every other letter
// (H People's Committees, K People's Councils, ...) is a province.
type Level int

// Levels, from the top of the hierarchy down.
const (
	Central  Level = iota + 1 // depth 1, letter G: 000.00.00.G22
	Province                  // depth 1, other letters: 000.00.00.H29
	District                  // depth 2, Y1Y2 set: 000.00.04.H29
	Commune                   // depth 3, Z1Z2 set: 000.12.04.H29
	Unit                      // depth 4, V1V2V3 set: 001.12.04.H29
)

var levelNames = [...]string{Central: "central", Province: "province", District: "district", Commune: "commune", Unit: "unit"}

func (l Level) String() string {
	if l < Central || l > Unit {
		return fmt.Sprintf("level(%d)", int(l))
	}
	return levelNames[l]
}

// ParseLevel reads a level name as used in policies and the CLI.
func ParseLevel(s string) (Level, error) {
	for l := Central; l <= Unit; l++ {
		if levelNames[l] == s {
			return l, nil
		}
	}
	return 0, fmt.Errorf("unknown level %q (want central, province, district, commune or unit)", s)
}

// Code is a parsed agency code. The zero value is not a valid code.
type Code struct {
	v3 string // V1V2V3, three digits
	z2 string // Z1Z2, two digits
	y2 string // Y1Y2, two digits
	m  string // M X1X2, a capital letter and two digits
}

// Parse checks s against the QCVN 102:2016 form and returns the code.
func Parse(s string) (Code, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return Code{}, fmt.Errorf("agency code %q: want four dot-separated groups like 000.00.00.H29", s)
	}
	c := Code{v3: parts[0], z2: parts[1], y2: parts[2], m: parts[3]}
	for i, g := range []struct {
		val   string
		width int
		what  string
	}{{c.v3, 3, "V1V2V3"}, {c.z2, 2, "Z1Z2"}, {c.y2, 2, "Y1Y2"}} {
		if len(g.val) != g.width || !allDigits(g.val) {
			return Code{}, fmt.Errorf("agency code %q: group %d (%s) must be %d digits", s, i+1, g.what, g.width)
		}
	}
	if len(c.m) != 3 || c.m[0] < 'A' || c.m[0] > 'Z' || !allDigits(c.m[1:]) {
		return Code{}, fmt.Errorf("agency code %q: group 4 (MX1X2) must be a capital letter and two digits, like H29", s)
	}
	// A lower group may be set only when every higher group is: 001.00.04.H29 names no agency.
	if c.v3 != "000" && c.z2 == "00" || c.z2 != "00" && c.y2 == "00" {
		return Code{}, fmt.Errorf("agency code %q: a group is set while the group to its right is zero", s)
	}
	return c, nil
}

// MustParse is Parse for constants in tests and examples.
func MustParse(s string) Code {
	c, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return c
}

func allDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// String returns the code in its canonical dotted form.
func (c Code) String() string { return c.v3 + "." + c.z2 + "." + c.y2 + "." + c.m }

// IsZero reports whether c is the zero Code.
func (c Code) IsZero() bool { return c.m == "" }

// Depth returns how many groups of the code are set: 1 to 4.
func (c Code) Depth() int {
	switch {
	case c.v3 != "000":
		return 4
	case c.z2 != "00":
		return 3
	case c.y2 != "00":
		return 2
	default:
		return 1
	}
}

// Level returns the kind of agency the code denotes.
func (c Code) Level() Level {
	if d := c.Depth(); d > 1 {
		return Level(d + 1)
	}
	if c.m[0] == 'G' {
		return Central
	}
	return Province
}

// Parent returns the code with its leftmost non-zero group zeroed; ok is
// false for a level-1 code, which has no parent.
func (c Code) Parent() (parent Code, ok bool) {
	switch c.Depth() {
	case 4:
		c.v3 = "000"
	case 3:
		c.z2 = "00"
	case 2:
		c.y2 = "00"
	default:
		return Code{}, false
	}
	return c, true
}

// Within reports whether c is root or lies below it in the hierarchy.
func (c Code) Within(root Code) bool {
	if c.m != root.m {
		return false
	}
	for _, g := range [][2]string{{root.y2, c.y2}, {root.z2, c.z2}, {root.v3, c.v3}} {
		if strings.Trim(g[0], "0") == "" {
			return true // root stops above this group: anything below matches
		}
		if g[0] != g[1] {
			return false
		}
	}
	return true
}
