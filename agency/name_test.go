package agency

import (
	"errors"
	"testing"

	"golang.org/x/text/unicode/norm"
)

func TestName(t *testing.T) {
	const qn = "Ủy ban nhân dân tỉnh Quảng Ninh"
	for _, tt := range []struct{ in, want string }{
		{qn, qn},
		{norm.NFD.String(qn), qn},
		{"  Ủy  ban\tnhân dân\u00a0tỉnh Quảng Ninh ", qn},
		{"\ufeffỦy ban nhân dân tỉnh Quảng\u200b Ninh", qn},
		{"Đà Nẵng", "Đà Nẵng"},
	} {
		got, err := Name(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("Name(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "   ", "\u00a0", "\u200b", "\ufeff", "A\x00B", "A\x1bB"} {
		if got, err := Name(in); !errors.Is(err, ErrBadName) {
			t.Errorf("Name(%q) = %q, %v; want ErrBadName", in, got, err)
		}
	}
}
