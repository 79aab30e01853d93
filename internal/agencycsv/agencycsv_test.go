package agencycsv

import (
	"reflect"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
)

func TestParse(t *testing.T) {
	got, err := Parse("a.csv", strings.NewReader("\ufeffcode,name,parent\n"+
		"000.00.00.H29,Ủy ban nhân dân tỉnh Quảng Ninh,\n"+
		"\n"+
		"000.12.04.H29, \"Phường Hồng Gai, Hạ Long\",000.00.00.H29\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []api.AgencyRow{
		{Code: "000.00.00.H29", Name: "Ủy ban nhân dân tỉnh Quảng Ninh", Line: 2},
		{Code: "000.12.04.H29", Name: "Phường Hồng Gai, Hạ Long", Parent: "000.00.00.H29", Line: 4},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
	// A file saved in NFD with CRLF line ends (as macOS and Windows
	// tools write them): the names come out in NFC, white space collapsed.
	got, err = Parse("nfd.csv", strings.NewReader(norm.NFD.String("code,name\r\n000.00.00.H29,\"Ủy ban  nhân dân\r\ntỉnh Quảng Ninh\"\r\n")))
	if err != nil || len(got) != 1 || got[0].Name != "Ủy ban nhân dân tỉnh Quảng Ninh" {
		t.Fatalf("got %+v, %v", got, err)
	}
	// Columns in another order, no parent column.
	got, err = Parse("b.csv", strings.NewReader("Name,Code\nVăn phòng Chính phủ,000.00.00.G22\n"))
	if err != nil || len(got) != 1 || got[0].Code != "000.00.00.G22" || got[0].Parent != "" {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct{ src, want string }{
		{"", "f.csv: empty file"},
		{"code,title\n", "f.csv:1: unknown column \"title\""},
		{"code,code,name\n", "f.csv:1: column code appears twice"},
		{"name,parent\n", "f.csv:1: no code column"},
		{"code,name\n", "f.csv: no agencies after the header"},
		{"code,name\n000.00.00.H29,A\nH29,B\n", "f.csv:3: agency code \"H29\""},
		{"code,name\n000.00.00.H29,\n", "f.csv:2: agency 000.00.00.H29 has no usable name"},
		{"code,name\r\n000.00.00.H29,\u200b\u00a0\r\n", "f.csv:2: agency 000.00.00.H29 has no usable name"},
		{"code,name\n000.00.00.H29,A\x01B\n", "f.csv:2: agency 000.00.00.H29 has no usable name"},
		{"code,name,parent\n000.00.04.H29,A,29\n", "f.csv:2: parent: agency code \"29\""},
		{"code,name,parent\n000.00.04.H29,A,000.00.04.H29\n", "f.csv:2: agency 000.00.04.H29 is its own parent"},
		{"code,name\n000.00.00.H29,A\n000.00.00.H29,B\n", "f.csv:3: agency 000.00.00.H29 is already on line 2"},
		{"code,name\n000.00.00.H29,A,extra\n", "f.csv:2: 3 fields, the header has 2"},
		{"code,name\n000.00.00.H29,\"A\n", "f.csv:2:"},
		{"code,name\n000.00.00.H29,\xff\n", "f.csv:2: not UTF-8"},
	} {
		rows, err := Parse("f.csv", strings.NewReader(tt.src))
		if err == nil || !strings.Contains(err.Error(), tt.want) || rows != nil {
			t.Errorf("%q: got %v, %+v; want an error with %q", tt.src, err, rows, tt.want)
		}
	}
}

// FuzzParse: the parser never panics, and what it accepts is canonical.
func FuzzParse(f *testing.F) {
	f.Add("code,name,parent\n000.00.00.H29,Quảng Ninh,\n000.12.04.H29,Hồng Gai,000.00.00.H29\n")
	f.Add("name,code\nA,000.00.00.G22\n")
	f.Add("code,name\n000.00.00.H29,\"A\n")
	f.Fuzz(func(t *testing.T, src string) {
		rows, err := Parse("f.csv", strings.NewReader(src))
		if err != nil {
			if rows != nil {
				t.Fatal("rows with an error")
			}
			return
		}
		seen := map[string]bool{}
		for _, r := range rows {
			c, err := agency.Parse(r.Code)
			if n, nerr := agency.Name(r.Name); err != nil || nerr != nil || n != r.Name || c.String() != r.Code || r.Line < 2 || seen[r.Code] {
				t.Fatalf("accepted %+v", r)
			}
			seen[r.Code] = true
			if r.Parent != "" {
				if p, err := agency.Parse(r.Parent); err != nil || p.String() != r.Parent {
					t.Fatalf("accepted parent %+v", r)
				}
			}
		}
	})
}
