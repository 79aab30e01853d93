package loadtest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/govnet/govnet/api"
	"github.com/govnet/govnet/ca"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Fleet is the simulated network: two national data exchange (NDXP)
// gateways at the Government Office, one gateway per province (its data
// centre) and commune gateways under the provinces. The policy lets every
// gateway reach NDXP on tcp/443, every commune its province's portal on
// tcp/8080, and NDXP monitor every gateway on one tcp port that each
// published version moves, so that a new version changes every view.
//
// So a commune's peers are the two NDXP gateways and its province's, a
// province's are NDXP and its communes, and NDXP's are everyone: the
// peers of a commune that a change to it must reach are known.
type Fleet struct {
	Provinces int
	Gateways  []FleetGateway
}

// FleetGateway is one gateway of the fleet.
type FleetGateway struct {
	ID, Agency string
	Province   int // 1..Provinces; 0 for NDXP
}

// NDXP is the Government Office, where the NDXP gateways are.
const NDXP = "000.00.00.G22"

// NewFleet lays out n gateways (n >= 4): 2 NDXP, one per province (one
// province per 100 gateways, 1 to 34), the rest communes.
func NewFleet(n int) (*Fleet, error) {
	if n < 4 {
		return nil, fmt.Errorf("gateways %d: want at least 4", n)
	}
	f := &Fleet{Provinces: min(34, max(1, n/100))}
	f.Gateways = append(f.Gateways, FleetGateway{ID: "gw-ndxp-1", Agency: NDXP}, FleetGateway{ID: "gw-ndxp-2", Agency: NDXP})
	for p := 1; p <= f.Provinces; p++ {
		f.Gateways = append(f.Gateways, FleetGateway{ID: fmt.Sprintf("gw-h%02d", p), Agency: province(p), Province: p})
	}
	for k := 0; len(f.Gateways) < n; k++ {
		p, j := 1+k%f.Provinces, k/f.Provinces
		d, c := 1+j/99, 1+j%99
		if d > 99 {
			return nil, fmt.Errorf("gateways %d: too many communes per province", n)
		}
		f.Gateways = append(f.Gateways, FleetGateway{
			ID:       fmt.Sprintf("gw-h%02d-d%02d-c%02d", p, d, c),
			Agency:   fmt.Sprintf("000.%02d.%02d.H%02d", c, d, p),
			Province: p,
		})
	}
	return f, nil
}

func province(p int) string { return fmt.Sprintf("000.00.00.H%02d", p) }

// Hub is the province gateway of province p.
func Hub(p int) string { return fmt.Sprintf("gw-h%02d", p) }

// PeersOf returns the gateways that have commune gateway g as a peer.
func (f *Fleet) PeersOf(g FleetGateway) []string {
	return []string{"gw-ndxp-1", "gw-ndxp-2", Hub(g.Province)}
}

// agencies are the rows to import: the Government Office, the provinces,
// and the districts and communes of the commune gateways, parents first.
func (f *Fleet) agencies() []api.AgencyRow {
	rows := []api.AgencyRow{{Code: NDXP, Name: "Văn phòng Chính phủ"}}
	for p := 1; p <= f.Provinces; p++ {
		rows = append(rows, api.AgencyRow{Code: province(p), Name: fmt.Sprintf("Ủy ban nhân dân tỉnh số %d", p)})
	}
	seen := map[string]bool{}
	for _, g := range f.Gateways {
		if !strings.HasPrefix(g.ID, "gw-h") || strings.Count(g.ID, "-") != 3 {
			continue
		}
		district := "000.00" + g.Agency[6:]
		if !seen[district] {
			seen[district] = true
			rows = append(rows, api.AgencyRow{Code: district, Name: "Ủy ban nhân dân huyện " + district[7:]})
		}
		rows = append(rows, api.AgencyRow{Code: g.Agency, Name: "Ủy ban nhân dân xã " + g.Agency})
	}
	return rows
}

// Policy is the fleet's policy; version moves NDXP's monitoring port.
func (f *Fleet) Policy(version int) string {
	var b strings.Builder
	b.WriteString("version: 1\ngroups:\n  ndxp-hosts:\n    agencies: [" + NDXP + "]\n")
	b.WriteString("  central:\n    level: central\n  provinces:\n    level: province\n  communes:\n    level: commune\n")
	b.WriteString("  everyone:\n    groups: [central, provinces, communes]\n")
	for p := 1; p <= f.Provinces; p++ {
		fmt.Fprintf(&b, "  p%02d:\n    subtree: %s\n", p, province(p))
	}
	fmt.Fprintf(&b, "services:\n  ndxp:\n    group: ndxp-hosts\n    ports: [tcp/443]\n  monitoring:\n    group: everyone\n    ports: [tcp/%d]\n", 9100+version%1000)
	for p := 1; p <= f.Provinces; p++ {
		fmt.Fprintf(&b, "  portal-%02d:\n    gateways: [%s]\n    ports: [tcp/8080]\n", p, Hub(p))
	}
	b.WriteString("rules:\n  - from: [everyone]\n    to: [ndxp]\n  - from: [ndxp-hosts]\n    to: [monitoring]\n")
	for p := 1; p <= f.Provinces; p++ {
		fmt.Fprintf(&b, "  - from: [p%02d]\n    to: [portal-%02d]\n", p, p)
	}
	return b.String()
}

// identity is an enrolled gateway's key and certificate, as the workers
// load them.
type identity struct {
	ID   string `json:"id"`
	Key  string `json:"key"`  // PEM
	Cert string `json:"cert"` // PEM chain
}

// endpoint is gateway i's transport address: the benchmarking range
// (RFC 2544); nothing is ever sent to it.
func endpoint(i int) string { return fmt.Sprintf("198.18.%d.%d:51820", i/250%250, 1+i%250) }

// register imports the agencies, then adds, issues a token for and
// enrolls every gateway of gws (parallel requests spread over the nodes),
// appending each identity to idFile. It returns how long it took.
func register(ctx context.Context, c *Cluster, f *Fleet, gws []FleetGateway, idFile string, parallel int, progress func(string)) (time.Duration, error) {
	start := time.Now()
	if rows := f.agencies(); len(rows) > 0 {
		if _, err := c.Operator.ImportAgencies(ctx, api.AgencyImport{Agencies: rows}); err != nil {
			return 0, fmt.Errorf("import %d agencies: %w", len(rows), err)
		}
	}
	out, err := os.OpenFile(idFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	w := bufio.NewWriter(out)
	var mu sync.Mutex
	var next, done atomic.Int64
	errs := make(chan error, parallel)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(gws) || ctx.Err() != nil {
					return
				}
				id, err := enrollOne(ctx, c, gws[i], i)
				if err != nil {
					errs <- err
					cancel()
					return
				}
				line, _ := json.Marshal(id)
				mu.Lock()
				w.Write(append(line, '\n'))
				mu.Unlock()
				if n := done.Add(1); n%1000 == 0 && progress != nil {
					progress(fmt.Sprintf("enrolled %d/%d gateways (%.0f/s)", n, len(gws), float64(n)/time.Since(start).Seconds()))
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	return time.Since(start), out.Sync()
}

// enrollOne does for one gateway what an operator, an officer and the
// agent's enroll command do: register it, issue its token, generate its
// keys and enroll (at node i mod 3).
func enrollOne(ctx context.Context, c *Cluster, g FleetGateway, i int) (*identity, error) {
	if _, err := c.Operator.AddGateway(ctx, api.Gateway{ID: g.ID, Agency: g.Agency, Endpoint: endpoint(i)}); err != nil {
		return nil, fmt.Errorf("add gateway %s: %w", g.ID, err)
	}
	node := i % len(c.nodes)
	tok, err := c.officerAt(node).IssueToken(ctx, g.ID, time.Hour)
	if err != nil {
		return nil, fmt.Errorf("token for %s: %w", g.ID, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	wgKey, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(key, "gateway")
	if err != nil {
		return nil, err
	}
	req := api.EnrollRequest{
		Token:     tok.Token,
		CSR:       string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})),
		PublicKey: wgKey.PublicKey().String(),
		Endpoint:  endpoint(i),
	}
	resp, err := c.enrollAt(node).Enroll(ctx, req)
	for try := 0; isUnknownToken(err) && try < 50; try++ {
		// The node answered the token request before applying it
		// itself; it will in a moment.
		time.Sleep(20 * time.Millisecond)
		resp, err = c.enrollAt(node).Enroll(ctx, req)
	}
	if err != nil {
		return nil, fmt.Errorf("enroll %s: %w", g.ID, err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &identity{ID: g.ID, Key: string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})), Cert: resp.Certificate}, nil
}

func isUnknownToken(err error) bool {
	var se *api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusForbidden && strings.Contains(se.Msg, "unknown enrollment token")
}

// loadIdentities reads an identities file.
func loadIdentities(path string) ([]identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []identity
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var id identity
		if err := json.Unmarshal(sc.Bytes(), &id); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		ids = append(ids, id)
	}
	return ids, sc.Err()
}
