package controller

import (
	"testing"
	"time"

	"github.com/govnet/govnet/api"
)

// coverageRegistry: two provinces and a central body. 000.00.07.H49 keeps
// its code but was re-parented under Quảng Ninh (its stored Parent), so it
// counts there.
func coverageRegistry() []api.Agency {
	return []api.Agency{
		{Code: "000.00.00.G22", Name: "Văn phòng Chính phủ", Level: "central"},
		{Code: "000.00.01.G22", Name: "Vụ Tổng hợp", Level: "district", Parent: "000.00.00.G22"},
		{Code: "000.00.00.H29", Name: "Ủy ban nhân dân tỉnh Quảng Ninh", Level: "province"},
		{Code: "000.00.04.H29", Name: "UBND thành phố Hạ Long", Level: "district", Parent: "000.00.00.H29"},
		{Code: "000.12.04.H29", Name: "UBND phường Hồng Gai", Level: "commune", Parent: "000.00.04.H29"},
		{Code: "000.00.00.H49", Name: "Ủy ban nhân dân tỉnh Quảng Nam", Level: "province"},
		{Code: "000.00.01.H49", Name: "UBND thành phố Tam Kỳ", Level: "district", Parent: "000.00.00.H49"},
		{Code: "000.00.07.H49", Name: "UBND huyện chuyển", Level: "district", Parent: "000.00.00.H29"},
		// Merged away: kept for history, counted nowhere.
		{Code: "000.00.00.H22", Name: "Ủy ban nhân dân tỉnh cũ", Level: "province", Status: api.AgencyClosed, MergedInto: "000.00.00.H29"},
	}
}

func TestCoverage(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	// gw builds an enrolled gateway that is healthy unless opts break it.
	type gwSpec struct {
		id, agency string
		status     string        // default enrolled
		age        time.Duration // since its last report; default 1m
		noReport   bool
		cert       string // valid (default), revoked, expired, missing
		ruleset    string // default ok
	}
	build := func(specs []gwSpec) ([]api.Gateway, []api.Certificate) {
		var gws []api.Gateway
		var certs []api.Certificate
		for i, s := range specs {
			serial := string(rune('a'+i)) + "01"
			g := api.Gateway{ID: s.id, Agency: s.agency, Status: api.StatusEnrolled, CertSerial: serial, Ruleset: api.RulesetOK}
			if s.status != "" {
				g.Status = s.status
			}
			if s.ruleset != "" {
				g.Ruleset = s.ruleset
			}
			age := time.Minute
			if s.age != 0 {
				age = s.age
			}
			if !s.noReport {
				g.Report = &api.Report{PolicyVersion: 1, RaftIndex: 10, At: now.Add(-age)}
			}
			c := api.Certificate{Serial: serial, Kind: "gateway", Gateway: s.id, Agency: s.agency, Status: api.CertValid,
				NotBefore: now.Add(-time.Hour), NotAfter: now.Add(23 * time.Hour)}
			switch s.cert {
			case "revoked":
				c.Status = api.CertRevoked
			case "expired":
				c.NotAfter = now.Add(-time.Second)
			}
			if s.cert != "missing" {
				certs = append(certs, c)
			}
			gws = append(gws, g)
		}
		return gws, certs
	}
	type counts struct{ agencies, enrolled, healthy int }
	tests := []struct {
		name      string
		gateways  []gwSpec
		total     counts
		provinces []string          // codes in rank order
		ranks     []int             // their ranks
		byProv    map[string]counts // province code -> counts
		byLevel   map[string]counts
		causes    [3]int // total stale, cert invalid, ruleset not ok
	}{
		{
			name:      "no gateways",
			total:     counts{8, 0, 0},
			provinces: []string{"000.00.00.H29", "000.00.00.H49"},
			ranks:     []int{1, 1},
			byProv:    map[string]counts{"000.00.00.H29": {4, 0, 0}, "000.00.00.H49": {2, 0, 0}},
			byLevel:   map[string]counts{"central": {1, 0, 0}, "province": {2, 0, 0}, "district": {4, 0, 0}, "commune": {1, 0, 0}},
		},
		{
			name: "healthy gateways, one re-parented",
			gateways: []gwSpec{
				{id: "gw-qn", agency: "000.00.00.H29"},
				{id: "gw-moved", agency: "000.00.07.H49"},
				{id: "gw-qnam", agency: "000.00.00.H49"},
				{id: "gw-tamky", agency: "000.00.01.H49"},
				{id: "gw-vpcp", agency: "000.00.00.G22"},
			},
			total:     counts{8, 5, 5},
			provinces: []string{"000.00.00.H49", "000.00.00.H29"},
			ranks:     []int{1, 2},
			byProv:    map[string]counts{"000.00.00.H29": {4, 2, 2}, "000.00.00.H49": {2, 2, 2}},
			byLevel:   map[string]counts{"central": {1, 1, 1}, "province": {2, 2, 2}, "district": {4, 2, 2}},
		},
		{
			name: "each cause of ill health",
			gateways: []gwSpec{
				{id: "gw-stale", agency: "000.00.00.H29", age: 6 * time.Minute},
				{id: "gw-silent", agency: "000.00.04.H29", noReport: true},
				{id: "gw-revoked", agency: "000.12.04.H29", cert: "revoked"},
				{id: "gw-expired", agency: "000.00.00.H49", cert: "expired"},
				{id: "gw-nocert", agency: "000.00.01.H49", cert: "missing"},
				{id: "gw-mismatch", agency: "000.00.07.H49", ruleset: api.RulesetMismatch},
				{id: "gw-pending", agency: "000.00.00.G22", ruleset: api.RulesetPending},
			},
			total:     counts{8, 7, 0},
			provinces: []string{"000.00.00.H29", "000.00.00.H49"},
			ranks:     []int{1, 1},
			byProv:    map[string]counts{"000.00.00.H29": {4, 4, 0}, "000.00.00.H49": {2, 2, 0}},
			causes:    [3]int{2, 3, 2},
		},
		{
			name: "not enrolled gateways do not count",
			gateways: []gwSpec{
				{id: "gw-pend", agency: "000.00.00.H29", status: api.StatusPending, noReport: true},
				{id: "gw-rev", agency: "000.00.00.H49", status: api.StatusRevoked, cert: "revoked"},
				{id: "gw-dec", agency: "000.00.01.H49", status: api.StatusDecommissioned},
			},
			total:  counts{8, 0, 0},
			byProv: map[string]counts{"000.00.00.H29": {4, 0, 0}, "000.00.00.H49": {2, 0, 0}},
		},
		{
			name: "one healthy gateway of two makes the agency healthy",
			gateways: []gwSpec{
				{id: "gw-1", agency: "000.00.00.H49", age: time.Hour},
				{id: "gw-2", agency: "000.00.00.H49"},
				{id: "gw-3", agency: "000.00.01.H49", age: 5 * time.Minute}, // exactly the window: still recent
			},
			total:     counts{8, 2, 2},
			provinces: []string{"000.00.00.H49", "000.00.00.H29"},
			ranks:     []int{1, 2},
			byProv:    map[string]counts{"000.00.00.H29": {4, 0, 0}, "000.00.00.H49": {2, 2, 2}},
			causes:    [3]int{1, 0, 0},
		},
		{
			name: "gateways of unknown and closed agencies are ignored",
			gateways: []gwSpec{
				{id: "gw-x", agency: "000.00.00.H01"},
				{id: "gw-old", agency: "000.00.00.H22"},
			},
			total: counts{8, 0, 0},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gws, certs := build(tc.gateways)
			rep := Coverage(CoverageInput{Agencies: coverageRegistry(), Gateways: gws, Certificates: certs, Now: now, Window: 5 * time.Minute})
			check := func(what string, got api.Coverage, want counts) {
				t.Helper()
				if got.Agencies != want.agencies || got.Enrolled != want.enrolled || got.Healthy != want.healthy {
					t.Errorf("%s: agencies/enrolled/healthy = %d/%d/%d, want %d/%d/%d", what,
						got.Agencies, got.Enrolled, got.Healthy, want.agencies, want.enrolled, want.healthy)
				}
				if want.agencies > 0 && got.Coverage != float64(want.healthy)/float64(want.agencies) {
					t.Errorf("%s: coverage %v", what, got.Coverage)
				}
			}
			check("total", rep.Total, tc.total)
			if rep.Window != "5m0s" || !rep.Generated.Equal(now) {
				t.Errorf("window %q generated %v", rep.Window, rep.Generated)
			}
			if len(rep.Provinces) != 2 {
				t.Fatalf("provinces: %+v", rep.Provinces)
			}
			for i, code := range tc.provinces {
				if rep.Provinces[i].Code != code || rep.Provinces[i].Rank != tc.ranks[i] {
					t.Errorf("province #%d: %s rank %d, want %s rank %d", i, rep.Provinces[i].Code, rep.Provinces[i].Rank, code, tc.ranks[i])
				}
			}
			for _, p := range rep.Provinces {
				if want, ok := tc.byProv[p.Code]; ok {
					check("province "+p.Code, p, want)
				}
				if p.Name == "" {
					t.Errorf("province %s has no name", p.Code)
				}
			}
			levels := map[string]api.Coverage{}
			var sum int
			for _, l := range rep.Levels {
				levels[l.Level] = l
				sum += l.Agencies
			}
			if sum != rep.Total.Agencies {
				t.Errorf("levels hold %d agencies, total %d", sum, rep.Total.Agencies)
			}
			if rep.Levels[0].Level != "central" || rep.Levels[len(rep.Levels)-1].Level != "commune" {
				t.Errorf("levels out of order: %+v", rep.Levels)
			}
			for lv, want := range tc.byLevel {
				check("level "+lv, levels[lv], want)
			}
			got := [3]int{rep.Total.Stale, rep.Total.CertInvalid, rep.Total.RulesetNotOK}
			if got != tc.causes {
				t.Errorf("stale/cert/ruleset = %v, want %v", got, tc.causes)
			}
			if rep.Total.HealthyGWs > rep.Total.Gateways {
				t.Errorf("healthy gateways %d of %d", rep.Total.HealthyGWs, rep.Total.Gateways)
			}
		})
	}
}

// TestCoverageParentLoop: a Parent chain that loops or breaks ends, and
// such agencies belong to no province.
func TestCoverageParentLoop(t *testing.T) {
	ags := []api.Agency{
		{Code: "000.00.01.H29", Name: "a", Level: "district", Parent: "000.00.02.H29"},
		{Code: "000.00.02.H29", Name: "b", Level: "district", Parent: "000.00.01.H29"},
		{Code: "000.00.03.H29", Name: "c", Level: "district", Parent: "000.00.00.H29"}, // parent not registered
	}
	rep := Coverage(CoverageInput{Agencies: ags, Now: time.Now(), Window: time.Minute})
	if rep.Total.Agencies != 3 || len(rep.Provinces) != 0 {
		t.Fatalf("total %+v provinces %+v", rep.Total, rep.Provinces)
	}
}
