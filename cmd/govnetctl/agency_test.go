package main

import (
	"testing"

	"github.com/govnet/govnet/api"
)

func TestSearchAgencies(t *testing.T) {
	ags := []api.Agency{
		{Code: "000.00.00.H01", Name: "Ủy ban nhân dân thành phố Hà Nội"},
		{Code: "000.00.00.H48", Name: "Ủy ban nhân dân thành phố Đà Nẵng"},
		{Code: "000.00.00.H29", Name: "Ủy ban nhân dân tỉnh Quảng Ninh"},
	}
	for _, tt := range []struct{ q, want string }{
		{"ha noi", "000.00.00.H01"},
		{"HÀ  NỘI", "000.00.00.H01"},
		{"da nang", "000.00.00.H48"},
		{"Đà Nẵng", "000.00.00.H48"},
		{"quang ninh", "000.00.00.H29"},
		{"h29", "000.00.00.H29"},
	} {
		got := searchAgencies(ags, tt.q)
		if len(got) != 1 || got[0].Code != tt.want {
			t.Errorf("search %q: %+v, want %s", tt.q, got, tt.want)
		}
	}
	if got := searchAgencies(ags, "hue"); len(got) != 0 {
		t.Errorf("search hue: %+v", got)
	}
}
