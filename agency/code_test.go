package agency

import "testing"

func TestParse(t *testing.T) {
	tests := []struct {
		in     string
		level  Level
		parent string
		err    bool
	}{
		{in: "000.00.00.G22", level: Central},
		{in: "000.00.00.H29", level: Province},
		{in: "000.00.04.H29", level: District, parent: "000.00.00.H29"},
		{in: "000.12.04.H29", level: Commune, parent: "000.00.04.H29"},
		{in: "001.12.04.H29", level: Unit, parent: "000.12.04.H29"},
		{in: "001.00.04.H29", err: true},
		{in: "000.12.00.H29", err: true},
		{in: "000.00.00.h29", err: true},
		{in: "000.00.00", err: true},
		{in: "0000.00.00.H29", err: true},
		{in: "000.0a.00.H29", err: true},
		{in: "", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			c, err := Parse(tt.in)
			if tt.err {
				if err == nil {
					t.Fatalf("Parse(%q) = %v, want error", tt.in, c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.String() != tt.in {
				t.Errorf("String() = %q", c)
			}
			if c.Level() != tt.level {
				t.Errorf("Level() = %v, want %v", c.Level(), tt.level)
			}
			p, ok := c.Parent()
			if got := map[bool]string{true: p.String(), false: ""}[ok]; got != tt.parent {
				t.Errorf("Parent() = %q, want %q", got, tt.parent)
			}
		})
	}
}

func TestWithin(t *testing.T) {
	tests := []struct {
		code, root string
		want       bool
	}{
		{"000.00.00.H29", "000.00.00.H29", true},
		{"000.00.04.H29", "000.00.00.H29", true},
		{"001.12.04.H29", "000.00.00.H29", true},
		{"001.12.04.H29", "000.00.04.H29", true},
		{"001.12.04.H29", "000.12.04.H29", true},
		{"001.12.05.H29", "000.00.04.H29", false},
		{"000.00.00.H29", "000.00.04.H29", false},
		{"000.00.00.H49", "000.00.00.H29", false},
	}
	for _, tt := range tests {
		if got := MustParse(tt.code).Within(MustParse(tt.root)); got != tt.want {
			t.Errorf("%s.Within(%s) = %v, want %v", tt.code, tt.root, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"000.00.00.H29", "001.12.04.H29", "x", "000.00.00.H2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		if c.String() != s {
			t.Fatalf("round trip %q -> %q", s, c)
		}
		if !c.Within(c) {
			t.Fatalf("%s not within itself", c)
		}
		if p, ok := c.Parent(); ok {
			if !c.Within(p) || p.Depth() != c.Depth()-1 {
				t.Fatalf("parent %s of %s", p, c)
			}
		}
	})
}
