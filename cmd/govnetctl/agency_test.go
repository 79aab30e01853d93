package main

import (
	"strings"
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

// TestAgencyCodeChecked: a malformed agency code on the command line is
// refused before any call, with the controller's rule, where the
// controller would answer "not registered" or, for cert list --agency,
// an empty list.
func TestAgencyCodeChecked(t *testing.T) {
	for _, args := range [][]string{
		{"cert", "list", "--agency", "H29"},
		{"gateway", "add", "gw1", "--agency", "H29"},
		{"agency", "show", "H29"},
		{"agency", "tree", "H29"},
		{"agency", "close", "H29"},
		{"agency", "merge", "H29", "--into", "000.00.00.H01"},
		{"agency", "merge", "000.00.00.H29", "--into", "H01"},
		{"agency", "reparent", "000.12.04.H01", "--parent", "H29"},
		{"agency", "add", "000.12.04.H01", "--name", "Xã", "--parent", "H29"},
	} {
		_, err := runErr("--config", "", args)
		if err == nil || !strings.Contains(err.Error(), "want four dot-separated groups like 000.00.00.H29") {
			t.Errorf("govnetctl %v: %v", args, err)
		}
	}
	if _, err := runErr("--config", "", "cert", "list", "--agency", "000.00.00.h29"); err == nil ||
		!strings.Contains(err.Error(), "--agency: agency code \"000.00.00.h29\": group 4 (MX1X2) must be a capital letter") {
		t.Errorf("cert list --agency 000.00.00.h29: %v", err)
	}
}
