package controller

import (
	"cmp"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/govnet/govnet/agency"
	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
)

// maxCoverageWindow bounds the window a coverage report accepts: beyond a
// month "reported recently" means nothing.
const maxCoverageWindow = 31 * 24 * time.Hour

// CoverageInput is the registry a coverage report is computed from.
// Gateways must carry their ruleset attestation (Gateway.Ruleset).
type CoverageInput struct {
	Agencies     []api.Agency
	Gateways     []api.Gateway
	Certificates []api.Certificate
	Now          time.Time
	Window       time.Duration
}

// Coverage computes the coverage report: per province and per level, how
// many registered agencies have a healthy enrolled gateway. A gateway is
// healthy when it is enrolled, reported within in.Window of in.Now, its
// current certificate is in the inventory, valid and not expired, and its
// ruleset is attested ok. An agency belongs to the province its Parent
// chain leads to (the chain the registry stores, which mergers and
// re-parenting change), not the one its code spells.
func Coverage(in CoverageInput) *api.CoverageReport {
	agencies := map[string]*api.Agency{}
	for i := range in.Agencies {
		agencies[in.Agencies[i].Code] = &in.Agencies[i]
	}
	certs := map[string]*api.Certificate{}
	for i := range in.Certificates {
		certs[normSerial(in.Certificates[i].Serial)] = &in.Certificates[i]
	}

	// Per agency: its enrolled gateways, how many are healthy and why the
	// others are not.
	type gwCounts struct{ gateways, healthy, stale, cert, ruleset int }
	gwBy := map[string]*gwCounts{}
	for _, g := range in.Gateways {
		if g.Status != api.StatusEnrolled || agencies[g.Agency] == nil || !agencyActive(*agencies[g.Agency]) {
			continue
		}
		c := gwBy[g.Agency]
		if c == nil {
			c = &gwCounts{}
			gwBy[g.Agency] = c
		}
		c.gateways++
		stale := g.Report == nil || g.Report.At.IsZero() || in.Now.Sub(g.Report.At) > in.Window
		cert := certs[normSerial(g.CertSerial)]
		certBad := cert == nil || cert.Status != api.CertValid || !in.Now.Before(cert.NotAfter)
		rulesetBad := g.Ruleset != api.RulesetOK
		if stale {
			c.stale++
		}
		if certBad {
			c.cert++
		}
		if rulesetBad {
			c.ruleset++
		}
		if !stale && !certBad && !rulesetBad {
			c.healthy++
		}
	}

	rep := &api.CoverageReport{Generated: in.Now.UTC(), Window: in.Window.String(), Levels: []api.Coverage{}, Provinces: []api.Coverage{}}
	levels := map[string]*api.Coverage{}
	provinces := map[string]*api.Coverage{}
	add := func(row *api.Coverage, code string) {
		row.Agencies++
		if c := gwBy[code]; c != nil {
			row.Enrolled++ // c exists only for an enrolled gateway
			if c.healthy > 0 {
				row.Healthy++
			}
			row.Gateways += c.gateways
			row.HealthyGWs += c.healthy
			row.Stale += c.stale
			row.CertInvalid += c.cert
			row.RulesetNotOK += c.ruleset
		}
	}
	for _, a := range in.Agencies {
		if !agencyActive(a) {
			continue
		}
		add(&rep.Total, a.Code)
		lv := levels[a.Level]
		if lv == nil {
			lv = &api.Coverage{Level: a.Level}
			levels[a.Level] = lv
		}
		add(lv, a.Code)
		if p := provinceOf(a.Code, agencies); p != nil {
			row := provinces[p.Code]
			if row == nil {
				row = &api.Coverage{Code: p.Code, Name: p.Name}
				provinces[p.Code] = row
			}
			add(row, a.Code)
		}
	}
	for l := agency.Central; l <= agency.Unit; l++ {
		if row := levels[l.String()]; row != nil {
			rep.Levels = append(rep.Levels, *row)
			delete(levels, l.String())
		}
	}
	for _, name := range slices.Sorted(maps.Keys(levels)) { // levels this build does not know
		rep.Levels = append(rep.Levels, *levels[name])
	}
	for _, row := range provinces {
		rep.Provinces = append(rep.Provinces, *row)
	}
	setCoverage(&rep.Total)
	for i := range rep.Levels {
		setCoverage(&rep.Levels[i])
	}
	for i := range rep.Provinces {
		setCoverage(&rep.Provinces[i])
	}
	rankProvinces(rep.Provinces)
	return rep
}

func setCoverage(c *api.Coverage) {
	if c.Agencies > 0 {
		c.Coverage = float64(c.Healthy) / float64(c.Agencies)
	}
}

// rankProvinces sorts rows by coverage, best first, then by code, and
// ranks them: rows with equal coverage share a rank (1, 1, 3).
func rankProvinces(rows []api.Coverage) {
	// Compare the exact fractions, not the rounded floats.
	better := func(a, b api.Coverage) int {
		return cmp.Compare(b.Healthy*max(a.Agencies, 1), a.Healthy*max(b.Agencies, 1))
	}
	slices.SortFunc(rows, func(a, b api.Coverage) int {
		if c := better(a, b); c != 0 {
			return c
		}
		return cmp.Compare(a.Code, b.Code)
	})
	for i := range rows {
		if i > 0 && better(rows[i-1], rows[i]) == 0 {
			rows[i].Rank = rows[i-1].Rank
		} else {
			rows[i].Rank = i + 1
		}
	}
}

// provinceOf follows code's stored Parent chain to its top and returns
// that agency if it is a province (nil for central bodies and their
// units). A chain that loops or breaks ends where it does.
func provinceOf(code string, agencies map[string]*api.Agency) *api.Agency {
	a := agencies[code]
	seen := map[string]bool{}
	for a != nil && a.Parent != "" && !seen[a.Code] {
		seen[a.Code] = true
		p := agencies[a.Parent]
		if p == nil {
			break
		}
		a = p
	}
	if a == nil || a.Level != agency.Province.String() {
		return nil
	}
	return a
}

// agencyActive says whether an agency counts as registered; closed
// codes (merged away) stay in the registry for history only.
func agencyActive(a api.Agency) bool { return !a.Closed() }

// coverage computes the coverage report from this node's state.
func (n *Node) coverage(window time.Duration) *api.CoverageReport {
	st := n.State()
	index := st.Index()
	gws := st.Gateways()
	for i := range gws {
		n.attest(&gws[i])
	}
	rep := Coverage(CoverageInput{
		Agencies:     st.Agencies(),
		Gateways:     gws,
		Certificates: st.Certificates(CertFilter{}),
		Now:          n.now(),
		Window:       window,
	})
	rep.RaftIndex = index
	return rep
}

// handleCoverage serves the coverage report; ?window= is a Go duration
// (default api.DefaultCoverageWindow).
func (n *Node) handleCoverage(w http.ResponseWriter, r *http.Request, _ ca.Identity) {
	window := api.DefaultCoverageWindow
	if s := r.URL.Query().Get("window"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > maxCoverageWindow {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("window %q: want a duration above 0 and up to %s, e.g. 5m or 1h", s, maxCoverageWindow))
			return
		}
		window = d
	}
	writeJSON(w, http.StatusOK, n.coverage(window))
}
