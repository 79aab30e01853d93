package e2e

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/internal/netnstest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// agentMetricsAddr is where the agents of this test serve metrics, inside
// each gateway's own namespace.
const agentMetricsAddr = "127.0.0.1:9475"

// TestCoverageReport: `govnetctl report coverage` in json, csv and table
// counts what the registry holds (agencies registered, gateways enrolled,
// gateways healthy), follows a gateway that stops reporting, and the
// controller's and an agent's /metrics agree with it.
func TestCoverageReport(t *testing.T) {
	l := newLab(t)
	l.initController()
	// The test's window is seconds: the node commits the agents'
	// unchanged reports (every second here) at least as often.
	l.configure("report_flush: 500ms")
	l.startController()
	for _, a := range [][2]string{
		{"000.00.00.H29", "Ủy ban nhân dân tỉnh Quảng Ninh"},
		{"000.00.04.H29", "Ủy ban nhân dân thành phố Hạ Long"},
		{"000.12.04.H29", "Ủy ban nhân dân phường Hồng Gai"},
		{"000.00.00.H49", "Ủy ban nhân dân tỉnh Quảng Nam"},
		{"000.00.01.H49", "Ủy ban nhân dân thành phố Tam Kỳ"},
	} {
		l.mustCtl("op", "agency", "add", a[0], "--name", a[1])
	}
	a := l.addGateway("gw-a", "000.00.00.H29", "192.0.2.11")
	b := l.addGateway("gw-b", "000.00.00.H49", "192.0.2.12")
	// gw-a's agent again, now serving metrics.
	a.agent.Process.Signal(syscall.SIGTERM)
	a.agent.Wait()
	conf, err := os.ReadFile(l.path(a.id + ".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// enroll wrote the key, empty: metrics off.
	conf = regexp.MustCompile(`(?m)^metrics_addr:.*$`).ReplaceAll(conf, []byte("metrics_addr: "+agentMetricsAddr))
	if !strings.Contains(string(conf), agentMetricsAddr) {
		t.Fatalf("no metrics_addr key in the enrolled config:\n%s", conf)
	}
	if err := os.WriteFile(l.path(a.id+".yaml"), conf, 0o600); err != nil {
		t.Fatal(err)
	}
	l.startAgent(a)
	version := l.publish(policySSH)
	l.flows(a, b, true, false) // a handshake between the two
	// Registered after the publication (publish waits for every gateway
	// to report), never enrolled.
	l.mustCtl("op", "gateway", "add", "gw-c", "--agency", "000.00.04.H29")

	// The registry, as the CLI lists it, and what a report must say of it.
	var ags []api.Agency
	if err := json.Unmarshal([]byte(l.mustCtl("op", "agency", "list", "-o", "json")), &ags); err != nil {
		t.Fatal(err)
	}
	enrolledAt, healthyAt := map[string]bool{}, map[string]bool{}
	for _, g := range l.gateways() {
		if g.Status == api.StatusEnrolled {
			enrolledAt[g.Agency] = true
			if g.Ruleset == api.RulesetOK && g.Report != nil {
				healthyAt[g.Agency] = true
			}
		}
	}
	if len(ags) != 5 || len(enrolledAt) != 2 || len(healthyAt) != 2 {
		t.Fatalf("registry: %d agencies, enrolled at %v, healthy at %v", len(ags), enrolledAt, healthyAt)
	}

	var rep api.CoverageReport
	if err := json.Unmarshal([]byte(l.mustCtl("op", "report", "coverage", "-o", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Total.Agencies != len(ags) || rep.Total.Enrolled != len(enrolledAt) || rep.Total.Healthy != len(healthyAt) || rep.Window != "5m0s" {
		t.Fatalf("total %+v (window %s), want %d agencies, %d enrolled, %d healthy", rep.Total, rep.Window, len(ags), len(enrolledAt), len(healthyAt))
	}
	// Quảng Nam: 1 of 2 agencies covered; Quảng Ninh: 1 of 3.
	want := []api.Coverage{
		{Rank: 1, Code: "000.00.00.H49", Agencies: 2, Enrolled: 1, Healthy: 1},
		{Rank: 2, Code: "000.00.00.H29", Agencies: 3, Enrolled: 1, Healthy: 1},
	}
	if len(rep.Provinces) != len(want) {
		t.Fatalf("provinces %+v", rep.Provinces)
	}
	for i, w := range want {
		p := rep.Provinces[i]
		if p.Rank != w.Rank || p.Code != w.Code || p.Agencies != w.Agencies || p.Enrolled != w.Enrolled || p.Healthy != w.Healthy || p.Name == "" {
			t.Errorf("province #%d: %+v, want %+v", i, p, w)
		}
	}

	// The CSV carries the same rows.
	rows, err := csv.NewReader(strings.NewReader(l.mustCtl("op", "report", "coverage", "-o", "csv"))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < 2 || rows[0][0] != "scope" || rows[0][5] != "agencies" || rows[0][7] != "healthy" {
		t.Fatalf("csv header %v", rows)
	}
	var provinces []api.Coverage
	var total *api.Coverage
	for _, r := range rows[1:] {
		n := func(i int) int {
			v, err := strconv.Atoi(r[i])
			if err != nil {
				t.Fatalf("csv row %v column %d: %v", r, i, err)
			}
			return v
		}
		c := api.Coverage{Code: r[2], Agencies: n(5), Enrolled: n(6), Healthy: n(7)}
		switch r[0] {
		case "province":
			c.Rank = n(1)
			provinces = append(provinces, c)
		case "total":
			total = &c
		}
	}
	if total == nil || total.Agencies != rep.Total.Agencies || total.Enrolled != rep.Total.Enrolled || total.Healthy != rep.Total.Healthy {
		t.Errorf("csv total %+v, json %+v", total, rep.Total)
	}
	for i, w := range want {
		if i >= len(provinces) || provinces[i] != w {
			t.Errorf("csv provinces %+v, want %+v", provinces, want)
			break
		}
	}
	// The table names both provinces and the total.
	table := l.mustCtl("op", "report", "coverage")
	t.Logf("report coverage:\n%s", table)
	for _, s := range []string{"000.00.00.H49", "Ủy ban nhân dân tỉnh Quảng Ninh", "50.0%", "total"} {
		if !strings.Contains(table, s) {
			t.Errorf("table lacks %q:\n%s", s, table)
		}
	}
	// Bad input says what is wrong.
	if out, err := l.ctlctl("op", "report", "coverage", "--window", "-1m"); err == nil || !strings.Contains(out, "--window") {
		t.Errorf("negative window: %v %s", err, out)
	}
	if out, err := l.ctlctl("op", "report", "coverage", "--window", "2000h"); err == nil || !strings.Contains(out, "window") {
		t.Errorf("window too long: %v %s", err, out)
	}

	t.Run("metrics", func(t *testing.T) {
		// The controller's, over the API as an operator (govnetctl); its
		// plain-HTTP listener serves CRLs, OCSP and health only.
		ctl := parseMetrics(t, l.mustCtl("op", "report", "metrics"))
		if code, _ := getIn(t, l.ctl, ctlAddr+":7444", "/metrics"); code != http.StatusNotFound {
			t.Errorf("plain-HTTP /metrics answered %d, want 404", code)
		}
		for _, c := range []struct {
			name, label, value string
			want               float64
		}{
			{"govnet_gateways", "status", "enrolled", 2},
			{"govnet_gateways", "status", "pending", 1},
			{"govnet_gateway_rulesets", "state", "ok", 2},
			{"govnet_raft_state", "state", "leader", 1},
			{"govnet_policy_version", "", "", float64(version)},
			{"govnet_certificates_issued_total", "profile", "gateway", 2},
		} {
			if got, ok := sample(ctl, c.name, c.label, c.value); !ok || got != c.want {
				t.Errorf("controller %s{%s=%q} = %v (present %v), want %v", c.name, c.label, c.value, got, ok, c.want)
			}
		}
		ag := scrapeIn(t, a.ns, agentMetricsAddr)
		for _, c := range []struct {
			name string
			want float64
		}{
			{"govnet_agent_policy_version", float64(version)},
			{"govnet_agent_ruleset_ok", 1},
			{"govnet_agent_controller_connected", 1},
			{"govnet_agent_ready", 1},
		} {
			if got, ok := sample(ag, c.name, "", ""); !ok || got != c.want {
				t.Errorf("agent %s = %v (present %v), want %v", c.name, got, ok, c.want)
			}
		}
		if age, ok := sample(ag, "govnet_agent_wireguard_handshake_age_seconds", "peer", b.id); !ok || age < 0 || age > 300 {
			t.Errorf("handshake age with %s: %v (present %v)", b.id, age, ok)
		}
		if left, ok := sample(ag, "govnet_agent_certificate_expiry_seconds", "", ""); !ok || left < 3600 {
			t.Errorf("certificate expiry in %v s (present %v)", left, ok)
		}
		if code, _ := getIn(t, a.ns, agentMetricsAddr, "/readyz"); code != http.StatusOK {
			t.Errorf("agent /readyz: %d", code)
		}
	})

	// gw-b's agent stops: once its last report is older than the window,
	// Quảng Nam has no healthy gateway and drops below Quảng Ninh.
	b.agent.Process.Signal(syscall.SIGTERM)
	b.agent.Wait()
	eventually(t, 20*time.Second, "gw-b counted stale", func() error {
		var r api.CoverageReport
		if err := json.Unmarshal([]byte(l.mustCtl("op", "report", "coverage", "--window", "3s", "-o", "json")), &r); err != nil {
			return err
		}
		if r.Total.Healthy != 1 || r.Total.Stale != 1 || r.Provinces[0].Code != "000.00.00.H29" || r.Provinces[1].Healthy != 0 {
			return fmt.Errorf("total %+v provinces %+v", r.Total, r.Provinces)
		}
		return nil
	})
}

// getIn fetches http://addr+path from inside ns (the connection is opened
// in the namespace, then spoken over from here).
func getIn(t *testing.T, ns *netnstest.NS, addr, path string) (int, string) {
	t.Helper()
	var conn net.Conn
	if err := ns.Do(func() (err error) { conn, err = net.DialTimeout("tcp", addr, 5*time.Second); return err }); err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Close = true
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// scrapeIn fetches and parses /metrics at addr inside ns.
func scrapeIn(t *testing.T, ns *netnstest.NS, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := getIn(t, ns, addr, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("%s/metrics: %d %s", addr, code, body)
	}
	return parseMetrics(t, body)
}

// parseMetrics parses Prometheus text.
func parseMetrics(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// sample returns the value of family name's series whose label is value
// (any series when label is empty).
func sample(mfs map[string]*dto.MetricFamily, name, label, value string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.Metric {
		match := label == ""
		for _, lp := range m.Label {
			match = match || lp.GetName() == label && lp.GetValue() == value
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		}
	}
	return 0, false
}
