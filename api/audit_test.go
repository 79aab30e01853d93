package api

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func chain(n int) []AuditEntry {
	var out []AuditEntry
	prev := ""
	for i := 1; i <= n; i++ {
		e := AuditEntry{Seq: uint64(i), RaftIndex: uint64(10 + i), At: time.Date(2026, 11, 23, 8, 0, i, 0, time.UTC),
			Actor: "officer1", Role: "officer", Action: "gateway-add", Object: fmt.Sprintf("gw%d", i), RequestSHA256: "00", Prev: prev}
		e.Hash = e.ComputeHash()
		prev = e.Hash
		out = append(out, e)
	}
	return out
}

func TestVerifyAudit(t *testing.T) {
	for _, tt := range []struct {
		name     string
		edit     func([]AuditEntry) []AuditEntry
		wantLine int
		wantMsg  string
	}{
		{"intact", func(c []AuditEntry) []AuditEntry { return c }, 0, ""},
		{"suffix export", func(c []AuditEntry) []AuditEntry { return c[2:] }, 0, ""},
		{"altered", func(c []AuditEntry) []AuditEntry { c[2].Actor = "mallory"; return c }, 3, "altered"},
		{"altered and rehashed", func(c []AuditEntry) []AuditEntry { c[2].Actor = "mallory"; c[2].Hash = c[2].ComputeHash(); return c }, 3, "altered and its hash recomputed"},
		{"prev altered and rehashed", func(c []AuditEntry) []AuditEntry { c[2].Prev = c[0].Hash; c[2].Hash = c[2].ComputeHash(); return c }, 3, "altered and its hash recomputed"},
		{"next to last altered and rehashed", func(c []AuditEntry) []AuditEntry { c[3].Actor = "mallory"; c[3].Hash = c[3].ComputeHash(); return c }, 4, "altered and its hash recomputed"},
		{"seq 0", func(c []AuditEntry) []AuditEntry { c[0].Seq = 0; c[0].Hash = c[0].ComputeHash(); return c }, 1, "seq 0"},
		{"removed", func(c []AuditEntry) []AuditEntry { return slices.Delete(c, 2, 3) }, 3, "removed"},
		{"reordered", func(c []AuditEntry) []AuditEntry { c[2], c[3] = c[3], c[2]; return c }, 3, "reordered"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyAudit(tt.edit(chain(5)))
			var ae *AuditError
			if tt.wantLine == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.As(err, &ae) || ae.Line != tt.wantLine || !strings.Contains(ae.Msg, tt.wantMsg) {
				t.Fatalf("got %v, want line %d %q", err, tt.wantLine, tt.wantMsg)
			}
		})
	}
}
